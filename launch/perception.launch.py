"""Start the dlp_ros perception node.

    ros2 launch dlp_ros perception.launch.py camera_topic:=/camera/color/image_raw
    ros2 launch dlp_ros perception.launch.py image_transport:=compressed \\
        camera_topic:=/camera/color/image_raw model_bundle:=/path/to/bundle   # .../compressed

The node configures and activates itself (parameter ``autostart``, on in config/perception.yaml);
with autostart off, drive it through its lifecycle services (``~/change_state``). The launch
arguments ``model_bundle`` and ``image_transport`` take precedence over the params file. Two
cameras: one launch per camera, each with its own ``namespace`` (``namespace:=cam1`` publishes
/cam1/dlp/particles ...). A failed start-up configure (e.g. a missing bundle) ends the process
with status 2 (parameter ``exit_on_configure_failure``), which a ``respawn`` sees.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

PACKAGE = 'dlp_ros'
EXECUTABLE = 'perception_node'


def generate_launch_description() -> LaunchDescription:
    """The launch arguments and the perception node."""
    share = FindPackageShare(PACKAGE)
    arguments = [
        DeclareLaunchArgument(
            'camera_topic',
            default_value='/camera/image_raw',
            description="Base camera topic (remaps the node's `image`): raw subscribes it, "
            'image_transport:=compressed subscribes <camera_topic>/compressed, as image_transport '
            'names them (e.g. /camera/image_raw and /camera/image_raw/compressed).',
        ),
        DeclareLaunchArgument(
            'image_transport',
            default_value='raw',
            choices=['raw', 'compressed'],
            description='Input transport: raw (sensor_msgs/Image on camera_topic) or '
            'compressed (sensor_msgs/CompressedImage, jpeg/png, on camera_topic/compressed).',
        ),
        DeclareLaunchArgument(
            'model_bundle',
            default_value=PathJoinSubstitution([share, 'bundles', 'tabletop64']),
            description='Model bundle directory (model_card.yaml + encoder/background/dynamics/'
            'decoder .onnx, from `python -m dlp_training export`).',
        ),
        DeclareLaunchArgument(
            'params_file',
            default_value=PathJoinSubstitution([share, 'config', 'perception.yaml']),
            description='YAML file with the node parameters (ros__parameters).',
        ),
        DeclareLaunchArgument(
            'namespace',
            default_value='',
            description='Namespace of the node and its outputs: dlp/particles, dlp/prediction, '
            'dlp/prediction/image and dlp/markers resolve to <namespace>/dlp/... (one namespace '
            'per camera), ~/overlay, ~/predict ... to <namespace>/perception_node/...; '
            '/diagnostics stays global. Empty = /, giving /dlp/particles.',
        ),
        DeclareLaunchArgument(
            'use_sim_time',
            default_value='false',
            choices=['true', 'false'],
            description='Use simulation time from /clock (e.g. ros2 bag play --clock).',
        ),
        DeclareLaunchArgument(
            'log_level',
            default_value='info',
            choices=['debug', 'info', 'warn', 'error', 'fatal'],
            description='Logging level of the node.',
        ),
    ]
    node = Node(
        package=PACKAGE,
        executable=EXECUTABLE,
        name=EXECUTABLE,
        namespace=LaunchConfiguration('namespace'),
        parameters=[
            LaunchConfiguration('params_file'),
            {
                'model_bundle': LaunchConfiguration('model_bundle'),
                'image_transport': LaunchConfiguration('image_transport'),
                'use_sim_time': ParameterValue(
                    LaunchConfiguration('use_sim_time'), value_type=bool
                ),
            },
        ],
        remappings=[('image', LaunchConfiguration('camera_topic'))],
        arguments=['--ros-args', '--log-level', LaunchConfiguration('log_level')],
        output='screen',
        emulate_tty=True,
    )
    return LaunchDescription([*arguments, node])
