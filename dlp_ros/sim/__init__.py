"""The simulated tabletop robot.

Simulation (mujoco, numpy, OpenCV; no ROS): :mod:`dlp_ros.sim.tabletop` (the MuJoCo scene the
synthetic episodes are recorded from, also driven by a controller), :mod:`dlp_ros.sim.scene`,
:mod:`dlp_ros.sim.lockstep` (episodes one command per frame) and :mod:`dlp_ros.sim.report`
(episode scores and video frames). ROS modules: :mod:`dlp_ros.sim.node` (``tabletop_sim``),
:mod:`dlp_ros.sim.client` (the loop's rclpy client) and :mod:`dlp_ros.sim.evaluate`
(``evaluate-planning``). docs/architecture.md gives the import rules.
"""
