"""Start the simulated tabletop robot (``tabletop_sim``, dlp_ros.sim.node).

    ros2 launch dlp_ros sim.launch.py seed:=3 step_timeout:=5.0

It publishes /camera/image_raw, /clock, /sim/ground_truth and /planning/goal, waits for a
/tabletop/command stamped like each frame (lockstep), and serves /sim/predict_batch and
/sim/reset. Every node parameter can be set as ``-p`` through ``ros2 run dlp_ros tabletop_sim``;
the launch arguments below are the common ones.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

PACKAGE = 'dlp_ros'
EXECUTABLE = 'tabletop_sim'
# launch argument -> (default, type, description); each sets the node parameter of its name
ARGUMENTS = {
    'seed': ('0', int, 'Seed of the episode started at start-up (scene and task).'),
    'autostart': ('true', bool, 'Start an episode at start-up; false = wait for /sim/reset.'),
    'size': ('64', int, 'Camera image side [px].'),
    'fps': ('10.0', float, 'Camera rate in sim time [Hz]; a command acts for 1/fps s.'),
    'step_timeout': ('2.0', float, 'Wall-clock time [s] to wait for the command of a frame '
                     'before a zero command is applied (a missed step).'),
    'tolerance': ('3.0', float, 'Success radius [px] of the tasks.'),
}  # fmt: skip


def generate_launch_description() -> LaunchDescription:
    """The launch arguments and the simulator node."""
    arguments = [
        DeclareLaunchArgument(name, default_value=default, description=description)
        for name, (default, _, description) in ARGUMENTS.items()
    ]
    arguments.append(DeclareLaunchArgument(
        'log_level', default_value='info', choices=['debug', 'info', 'warn', 'error', 'fatal'],
        description='Logging level of the node.'))  # fmt: skip
    params = {
        name: ParameterValue(LaunchConfiguration(name), value_type=kind)
        for name, (_, kind, _) in ARGUMENTS.items()
    }
    node = Node(
        package=PACKAGE,
        executable=EXECUTABLE,
        name=EXECUTABLE,
        parameters=[params],
        arguments=['--ros-args', '--log-level', LaunchConfiguration('log_level')],
        output='screen',
        emulate_tty=True,
    )
    return LaunchDescription([*arguments, node])
