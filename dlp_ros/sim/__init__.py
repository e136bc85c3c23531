"""The simulated tabletop robot: the MuJoCo scene the synthetic episodes are recorded from
(:mod:`dlp_ros.sim.tabletop`, with :mod:`dlp_ros.sim.scene` and the plain-Python
:mod:`dlp_ros.sim.lockstep`: mujoco and numpy, no ROS), the ROS node that runs it in lockstep
with a controller (:mod:`dlp_ros.sim.node`, ``tabletop_sim``) and the closed-loop planning
evaluation (:mod:`dlp_ros.sim.evaluate`). docs/architecture.md gives the import rules.
"""
