"""Start the dlp_ros reference planner (``push_planner``) beside a running perception node.

    ros2 launch dlp_ros planner.launch.py
    ros2 launch dlp_ros planner.launch.py model:=no_action
    ros2 launch dlp_ros planner.launch.py predict_service:=/sim/predict_batch samples:=32

It reads dlp/particles (/dlp/particles: the planner runs in the root namespace) and the task on
/planning/goal (dlp_ros/PushGoal) and commands /tabletop/command (TwistStamped), one command per
particles message; the other parameters keep their defaults
(``ros2 param describe /push_planner <name>``).
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

PACKAGE = 'dlp_ros'
EXECUTABLE = 'push_planner'


def generate_launch_description() -> LaunchDescription:
    """The launch arguments and the planner node."""
    arguments = [
        DeclareLaunchArgument(
            'model',
            default_value='service',
            choices=['service', 'no_action', 'random'],
            description='service: the predictions of predict_service (learned dynamics or the '
            'simulator); no_action: particles held still; random: uniform random commands.',
        ),
        DeclareLaunchArgument(
            'predict_service',
            default_value='/perception_node/predict_batch',
            description='dlp_ros/PredictBatch service the planner calls (model:=service).',
        ),
        DeclareLaunchArgument(
            'samples', default_value='64', description='Candidate sequences per iteration.'
        ),
        DeclareLaunchArgument('horizon', default_value='10', description='Steps per candidate.'),
        DeclareLaunchArgument(
            'use_sim_time',
            default_value='false',
            choices=['true', 'false'],
            description='Use simulation time from /clock.',
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
        parameters=[
            {
                'model': LaunchConfiguration('model'),
                'predict_service': LaunchConfiguration('predict_service'),
                'samples': ParameterValue(LaunchConfiguration('samples'), value_type=int),
                'horizon': ParameterValue(LaunchConfiguration('horizon'), value_type=int),
                'use_sim_time': ParameterValue(
                    LaunchConfiguration('use_sim_time'), value_type=bool
                ),
            }
        ],
        arguments=['--ros-args', '--log-level', LaunchConfiguration('log_level')],
        output='screen',
        emulate_tty=True,
    )
    return LaunchDescription([*arguments, node])
