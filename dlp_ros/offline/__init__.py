"""Offline ROS tooling without torch or rclpy: rosbag2 reading and writing (rosbags, with
dlp_ros's own message types), ``dlp-replay`` (the node's pipeline on a bag), the perception
outputs (output bag, overlay video, prediction strip, summary) and particle manipulation.

These modules use the runtime (:mod:`dlp_ros.pipeline`, :mod:`dlp_ros.runtime`, ...) and never
import torch, rclpy, ``dlp_training`` or the ROS face (:mod:`dlp_ros.node`,
:mod:`dlp_ros.conversions`, :mod:`dlp_ros.demo`); ``tests/test_architecture.py`` checks it.
"""

try:
    import rosbags  # noqa: F401 - the one dependency beyond the runtime's
except ImportError as exc:  # e.g. a robot's install with the [cpu] extra only
    raise ModuleNotFoundError(
        'dlp_ros.offline (dlp-replay, manipulate, the bag tools) needs rosbags: pip install '
        "'dlp-ros[offline]' (in a ROS install: pip install rosbags)",
        name='rosbags',
    ) from exc
