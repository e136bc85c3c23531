"""The rclpy side of a closed loop around ``tabletop_sim``: what the evaluation and the tests
watch and send. It keeps the current episode's camera frames, ground truth, /dlp/particles and
the commands by frame stamp, the latest task, and the diagnostics of the simulator and of a
planner; it publishes commands and calls /sim/reset and /sim/predict_batch.

Everything is received on the background executor of a :class:`dlp_ros.demo.RosSession`; the
stores are read under ``lock``.

Sim time restarts with every episode, so the old episode's last messages (the frame in flight
when the reset came, its particles and command) carry the stamps of the new episode's frames. A
message is kept only when it was published after the latest task (the DDS source timestamp
against the task's: the simulator publishes the task before the episode's first frame); what
came before the task is dropped when the task comes. Without the message info (rclpy before
Iron) nothing is filtered.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseArray, TwistStamped
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from dlp_ros.conversions import MESSAGE_INFO, image_to_rgb, stamp_ns
from dlp_ros.demo import RosSession, set_stamp
from dlp_ros.errors import DlpError
from dlp_ros.msg import ParticleArray, PushGoal
from dlp_ros.service_call import call_service
from dlp_ros.sim.node import NODE_NAME, TOPICS
from dlp_ros.srv import PredictBatch, ResetEpisode

PARTICLES_TOPIC = '/dlp/particles'
PLANNER_STATUS = 'planner'  # a diagnostics status whose name holds this is the planner's
# the stores of Observed kept by frame stamp, and the receive-time store beside each
STAMPED = {'frames': 'frame_times', 'truth': None, 'particles': None, 'commands': 'command_times',
           'sim_frames': None, 'planner': None}  # fmt: skip


def _source_ns(info: dict[str, int] | None) -> int:
    """The DDS source timestamp [ns] of a message's info; 0 without one."""
    return int(info.get('source_timestamp', 0)) if info else 0


def _with_info(callback: Any) -> Any:
    """``callback`` as rclpy must see it to hand it the message info (two arguments)."""
    if not MESSAGE_INFO:
        return callback
    return lambda msg, info: callback(msg, info)


@dataclass
class Observed:
    """What came in for the current episode, by frame stamp [ns]."""

    frames: dict[int, np.ndarray] = field(default_factory=dict)  # (S, S, 3) uint8
    frame_times: dict[int, float] = field(default_factory=dict)  # receive time, monotonic s
    truth: dict[int, np.ndarray] = field(default_factory=dict)  # (K, 2) px, index = scene id
    particles: dict[int, Any] = field(default_factory=dict)  # dlp_ros/ParticleArray
    commands: dict[int, tuple[float, float]] = field(default_factory=dict)  # vx, vy [m/s]
    command_times: dict[int, float] = field(default_factory=dict)  # receive time, monotonic s
    sim_status: dict[str, str] = field(default_factory=dict)  # the latest of tabletop_sim
    sim_frames: dict[int, dict[str, str]] = field(default_factory=dict)  # its status by stamp
    planner: dict[int, dict[str, str]] = field(default_factory=dict)  # by 'stamp_ns' value
    planner_latest: dict[str, str] = field(default_factory=dict)  # the planner's latest status
    goal: Any = None  # the latest dlp_ros/PushGoal
    # DDS source timestamp [ns] of what each (store, stamp) entry was made from
    sources: dict[tuple[str, int], int] = field(default_factory=dict)

    def drop_older(self, since_ns: int) -> None:
        """Drop the entries made from messages published before ``since_ns``."""
        old = [key for key, source in self.sources.items() if source < since_ns]
        for name, stamp in old:
            getattr(self, name).pop(stamp, None)
            if STAMPED[name]:
                getattr(self, STAMPED[name]).pop(stamp, None)
            del self.sources[(name, stamp)]


class LoopClient:
    """Subscriptions, a command publisher and the two service clients of the simulator.

    Args:
        env: environment with ROS_DOMAIN_ID (:func:`dlp_ros.demo.ros_environment`).
        name: this client's node name.
        keep_frames: keep the camera images (for videos); off keeps only their stamps.
    """

    def __init__(self, env: dict[str, str], name: str = 'dlp_loop_client',
                 keep_frames: bool = True) -> None:  # fmt: skip
        self.session = RosSession(env, name)
        self.keep_frames = keep_frames
        self.lock = threading.Lock()
        self.seen = Observed()
        node = self.session.node
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)  # fmt: skip
        self._task_source = 0  # DDS source timestamp [ns] of the latest task
        self._subs = [
            node.create_subscription(Image, TOPICS['camera'], _with_info(self._on_image),
                                     reliable),
            node.create_subscription(PoseArray, TOPICS['ground_truth'],
                                     _with_info(self._on_truth), reliable),
            node.create_subscription(PushGoal, TOPICS['goal'], _with_info(self._on_goal),
                                     latched),
            node.create_subscription(TwistStamped, TOPICS['command'],
                                     _with_info(self._on_command), reliable),
            node.create_subscription(ParticleArray, PARTICLES_TOPIC,
                                     _with_info(self._on_particles), reliable),
            node.create_subscription(DiagnosticArray, TOPICS['diagnostics'],
                                     _with_info(self._on_diag), 50),
        ]  # fmt: skip
        self.command_pub = node.create_publisher(TwistStamped, TOPICS['command'], reliable)
        self.reset_client = node.create_client(ResetEpisode, TOPICS['reset'])
        self.predict_client = node.create_client(PredictBatch, TOPICS['predict_batch'])

    # ------------------------------------------------------------------------- callbacks
    def _keep(self, name: str, stamp: int, info: dict[str, int] | None) -> bool:
        """Under ``lock``: whether a message for ``stamp`` of store ``name`` belongs to the
        current task (published after it); notes its source time."""
        source = _source_ns(info)
        if source and source < self._task_source:
            return False
        if source:
            self.seen.sources[(name, stamp)] = source
        return True

    def _on_image(self, msg: Image, info: dict[str, int] | None = None) -> None:
        stamp, now = stamp_ns(msg.header), time.monotonic()
        rgb = image_to_rgb(msg) if self.keep_frames else np.empty(0, np.uint8)
        with self.lock:
            if self._keep('frames', stamp, info):
                self.seen.frames[stamp], self.seen.frame_times[stamp] = rgb, now

    def _on_truth(self, msg: PoseArray, info: dict[str, int] | None = None) -> None:
        xy = np.array([(p.position.x, p.position.y) for p in msg.poses], dtype=np.float64)
        stamp = stamp_ns(msg.header)
        with self.lock:
            if self._keep('truth', stamp, info):
                self.seen.truth[stamp] = xy.reshape(-1, 2)

    def _on_goal(self, msg: PushGoal, info: dict[str, int] | None = None) -> None:
        with self.lock:
            self.seen.goal = msg
            source = _source_ns(info)
            if source > self._task_source:
                self._task_source = source
                self.seen.drop_older(source)

    def _on_command(self, msg: TwistStamped, info: dict[str, int] | None = None) -> None:
        stamp, now = stamp_ns(msg.header), time.monotonic()
        with self.lock:
            if self._keep('commands', stamp, info):
                self.seen.commands[stamp] = (float(msg.twist.linear.x), float(msg.twist.linear.y))
                self.seen.command_times.setdefault(stamp, now)

    def _on_particles(self, msg: ParticleArray, info: dict[str, int] | None = None) -> None:
        stamp = stamp_ns(msg.header)
        with self.lock:
            if self._keep('particles', stamp, info):
                self.seen.particles[stamp] = msg

    def _on_diag(self, msg: DiagnosticArray, info: dict[str, int] | None = None) -> None:
        for status in msg.status:
            values = {kv.key: kv.value for kv in status.values}
            stamp_text = values.get('stamp_ns', '')
            with self.lock:
                if status.name == NODE_NAME:
                    self.seen.sim_status = values
                    if stamp_text.isdigit() and self._keep('sim_frames', int(stamp_text), info):
                        self.seen.sim_frames[int(stamp_text)] = values
                elif PLANNER_STATUS in status.name:
                    self.seen.planner_latest = values
                    if stamp_text.isdigit() and self._keep('planner', int(stamp_text), info):
                        self.seen.planner[int(stamp_text)] = values

    # ------------------------------------------------------------------------- actions
    def clear(self) -> None:
        """Forget the episode's observations (before a reset)."""
        with self.lock:
            self.seen = Observed(goal=None)

    def command(self, stamp: int, vx: float, vy: float) -> None:
        """Publish the command for the frame stamped ``stamp`` [ns]."""
        msg = TwistStamped()
        set_stamp(msg.header, stamp)
        msg.header.frame_id = 'table'
        msg.twist.linear.x, msg.twist.linear.y = float(vx), float(vy)
        self.command_pub.publish(msg)

    def _call(self, client: Any, request: Any, timeout: float, probe: Any = None) -> Any:
        """:func:`dlp_ros.service_call.call_service` while this client's executor spins."""
        return call_service(client, request, self.session.poll, timeout, probe=probe)

    def reset(self, seed: int, object_id: int = 0, goal_uv: tuple[float, float] | None = None,
              tolerance: float = 0.0, timeout: float = 60.0) -> Any:  # fmt: skip
        """A new episode (the observations are cleared first); returns its dlp_ros/PushGoal.

        Raises:
            DlpError: the simulator refused the task, or no answer within ``timeout`` s.
        """
        request = ResetEpisode.Request(
            seed=int(seed),
            object_id=int(object_id),
            random_goal=goal_uv is None,
            tolerance=float(tolerance),
        )
        if goal_uv is not None:
            request.goal_u, request.goal_v = float(goal_uv[0]), float(goal_uv[1])
        self.clear()
        # the probe, an invalid tolerance, is refused before the scene is touched
        probe = ResetEpisode.Request(seed=0, random_goal=True, tolerance=-1.0)
        response = self._call(self.reset_client, request, timeout, probe)
        if not response.success:
            raise DlpError(f'/sim/reset refused seed {seed}: {response.message}')

        def task_came() -> bool:
            with self.lock:
                return self.seen.goal is not None

        # the task drops what the old episode left (published before it); it comes before
        # the episode's first frame
        self.session.wait_for(f'the task of seed {seed} on {TOPICS["goal"]}', task_came, timeout)
        return response.goal

    def predict_batch(self, actions: np.ndarray, timeout: float = 60.0) -> Any:
        """/sim/predict_batch for (B, N, 2) commands; the response."""
        actions = np.asarray(actions, dtype=np.float32)
        request = PredictBatch.Request(horizon=actions.shape[1], candidates=actions.shape[0])
        request.actions = actions.ravel().tolist()
        return self._call(self.predict_client, request, timeout)

    def wait_frame(self, index: int, start_ns: int, period_ns: int, timeout: float) -> int:
        """Wait for frame ``index`` of the episode (its stamp = start + index * period) and its
        ground truth; returns the stamp."""
        stamp = start_ns + index * period_ns

        def ready() -> bool:
            with self.lock:
                return stamp in self.seen.frame_times and stamp in self.seen.truth

        self.session.wait_for(f'frame {index} (stamp {stamp})', ready, timeout)
        return stamp

    def planner_values(self, stamp: int) -> dict[str, str]:
        with self.lock:
            return dict(self.seen.planner.get(stamp, {}))

    def close(self) -> None:
        self.session.close()


def planner_path(values: dict[str, str]) -> np.ndarray | None:
    """The object's predicted path a planner published in its diagnostics (``path_uv``: JSON
    [[u, v], ...] px), (N, 2), or None."""
    text = values.get('path_uv')
    if not text:
        return None
    try:
        path = np.asarray(json.loads(text), dtype=np.float64)
    except (ValueError, TypeError):
        return None
    return path if path.ndim == 2 and path.shape[1] == 2 else None
