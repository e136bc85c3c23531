"""``tabletop_sim``: the simulated tabletop robot as a ROS 2 node, stepped in lockstep with its
controller, so a closed loop is reproducible on a busy machine.

Publishes (each frame, in this order; every header stamp = the frame's sim time):
    /clock              rosgraph_msgs/Clock, the sim time
    /sim/ground_truth   geometry_msgs/PoseArray, header = the camera frame's; poses[i].position
                        x, y = object i's centre [px] (i = scene id, 0 = pusher). For scoring
                        only: a planner must not read it.
    /camera/image_raw   sensor_msgs/Image rgb8, size x size, reliable
    /diagnostics        diagnostic_msgs/DiagnosticArray, status 'tabletop_sim': episode, seed,
                        step, stamp_ns, missed_steps (this episode), missed_total, predict_ms,
                        command_ms (wall-clock ms from publishing the episode's previous frame
                        to taking its command: the whole loop as the robot sees it; empty at
                        an episode's first frame and after a missed step)
    /planning/goal      dlp_ros/PushGoal at each new episode (transient local: a late joiner gets
                        the current task), acknowledged by its subscribers (up to 2 s) before
                        the episode's first frame is published
Subscribes:
    /tabletop/command   geometry_msgs/TwistStamped (reliable): linear.x, linear.y = pusher
                        velocity (vx, vy) [m/s, world frame], norm clipped to 0.3 m/s.
Serves:
    /sim/predict_batch  dlp_ros/PredictBatch: the simulator as the planner's model (each
                        candidate simulated from a copy of the current state, without rendering).
                        Particles: the true objects (id = scene id, presence 1), or with
                        ``particles_topic`` the perception's particles of the current frame (its
                        ids and presence), each carried by the object it lies on
    /sim/reset          dlp_ros/ResetEpisode: a new episode (sim time goes back to start_time).
                        The frame in flight is answered first: the loop stops stepping and
                        waits (up to ``drain_timeout``) for that frame's command, so no message
                        of the old episode is still on its way when time restarts

Lockstep: after publishing frame t the node waits for a command whose header.stamp equals frame
t's stamp, applies it for 1/fps s of sim time and publishes frame t + 1. After ``step_timeout``
wall-clock seconds (``first_step_timeout`` for an episode's first frame: model warm-up) it applies
a zero command and counts the step as missed.

Why a reset drains: sim time restarts with every episode, so a stamp alone cannot tell the old
episode's last frame from the new episode's frames. Without the drain the perception's particles
of the old last frame can reach a planner after the new task (it would pick its object in the old
scene), and the planner's command for it would wait in the gate until the new episode reached
that stamp.
"""

from __future__ import annotations

import array
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Pose, PoseArray, TwistStamped
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from dlp_ros.conversions import rgb_to_image, stamp_ns
from dlp_ros.errors import ConfigError
from dlp_ros.executor import PoolExecutor
from dlp_ros.msg import Particle, ParticleArray, PushGoal
from dlp_ros.node_process import run_until_signal
from dlp_ros.node_support import ParamSpec
from dlp_ros.sim.lockstep import (
    NS,
    CommandGate,
    Episode,
    Frame,
    LockstepSim,
    carried_by_objects,
    check_tolerance,
)
from dlp_ros.srv import PredictBatch, ResetEpisode

logger = logging.getLogger(__name__)
NODE_NAME = 'tabletop_sim'
TOPICS = {
    'camera': '/camera/image_raw',
    'clock': '/clock',
    'goal': '/planning/goal',
    'ground_truth': '/sim/ground_truth',
    'command': '/tabletop/command',
    'diagnostics': '/diagnostics',
    'predict_batch': '/sim/predict_batch',
    'reset': '/sim/reset',
}
MAX_HORIZON = 100
GOAL_ACK_S = 2.0  # s, most wait for the subscribers to acknowledge a new task

PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec('size', 64, 'Camera image side [px] (square, rgb8).', 16, 1024),
    ParamSpec(
        'fps', 10.0, 'Camera rate in sim time [Hz]: a command acts for 1/fps s.', 1.0, 1000.0
    ),
    ParamSpec('frame_id', 'tabletop_camera', 'frame_id of the camera (and ground-truth) header.'),
    ParamSpec(
        'autostart', True, 'Start an episode from `seed` at start-up; false = wait for /sim/reset.'
    ),
    ParamSpec(
        'seed', 0, 'Seed of the episode started at start-up (scene and task).', 0, 2**31 - 1
    ),
    ParamSpec(
        'tolerance', 3.0, 'Success radius [px] of a task when /sim/reset gives 0.', 0.1, 1e3
    ),
    ParamSpec(
        'goal_min_distance', 0.06, 'Least distance [m] of a drawn goal from the object.', 0.0, 1.0
    ),
    ParamSpec(
        'goal_max_distance',
        0.16,
        'Largest distance [m] of a drawn goal from the object.',
        0.01,
        1.0,
    ),
    ParamSpec(
        'step_timeout',
        2.0,
        'Wall-clock time [s] to wait for the command of a frame; '
        'then a zero command is applied and the step counts as missed.',
        0.001,
        3600.0,
    ),
    ParamSpec(
        'first_step_timeout',
        30.0,
        'As step_timeout, for the first frame of an episode (the controller warms up).',
        0.001,
        3600.0,
    ),
    ParamSpec(
        'drain_timeout',
        2.0,
        'Wall-clock time [s] /sim/reset waits for the command of the frame in flight before the '
        'new episode (the loop does not step meanwhile); 0 = start at once. A controller that '
        'answers every frame (the push planner) makes it a short wait.',
        0.0,
        3600.0,
    ),
    ParamSpec(
        'start_time',
        1000.0,
        "Sim time [s] of every episode's first frame (time restarts "
        'at each reset, so perception starts new particle identities).',
        1.0,
        1e9,
    ),
    ParamSpec(
        'horizon', 10, 'Steps of /sim/predict_batch requests with horizon 0.', 1, MAX_HORIZON
    ),
    ParamSpec(
        'max_candidates', 256, 'Most candidates B of one /sim/predict_batch request.', 1, 4096
    ),
    ParamSpec(
        'particles_topic',
        '',
        'dlp_ros/ParticleArray topic (e.g. /dlp/particles) whose particles /sim/predict_batch '
        'predicts, with their ids (PredictBatch: same ids as /dlp/particles): each moves with '
        'the simulated object it lies on. Empty = the true objects as particles (id = scene id).',
    ),
    ParamSpec(
        'particles_timeout',
        2.0,
        'Wall-clock time [s] /sim/predict_batch waits for the particles of the current frame '
        '(particles_topic set) before it refuses.',
        0.001,
        60.0,
    ),
)


def header(stamp: int, frame_id: str) -> Header:
    sec, nanosec = divmod(int(stamp), NS)
    return Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=frame_id)


def _f32(values: np.ndarray) -> array.array:
    """A float array, row-major, as the array.array rclpy keeps float32[] fields in."""
    return array.array('f', np.ascontiguousarray(values, dtype=np.float32).tobytes())


def ground_truth_message(frame: Frame, head: Header) -> PoseArray:
    """Object centres [px] as poses (index = scene id)."""
    poses = []
    for obj in sorted(frame.objects, key=lambda o: o.id):
        pose = Pose()
        pose.position.x, pose.position.y = float(obj.x), float(obj.y)
        pose.orientation.w = 1.0
        poses.append(pose)
    return PoseArray(header=head, poses=poses)


def goal_message(ep: Episode, frame_id: str, start_ns: int) -> PushGoal:
    task = ep.task
    return PushGoal(header=header(start_ns, frame_id), object_id=task.object_id,
                    start_u=task.start_uv[0], start_v=task.start_uv[1], goal_u=task.goal_uv[0],
                    goal_v=task.goal_uv[1], tolerance=task.tolerance)  # fmt: skip


def true_particles(frame: Frame, head: Header, size: int) -> ParticleArray:
    """The true objects as particles: id = scene id, position = centre, scale = diameter."""
    particles = [
        Particle(id=o.id, u=float(o.x), v=float(o.y), scale=float(2 * o.radius), depth=0.0,
                 transparency=1.0)
        for o in sorted(frame.objects, key=lambda o: o.id)
    ]  # fmt: skip
    return ParticleArray(header=head, image_width=size, image_height=size, particles=particles)


def read_params(node: Node) -> dict[str, Any]:
    """Declare :data:`PARAMS` (read-only, with descriptions) and return their checked values.

    Raises:
        ConfigError: a value of the wrong type or out of range.
    """
    values: dict[str, Any] = {}
    for spec in PARAMS:
        desc = ParameterDescriptor(name=spec.name, description=spec.description,
                                   read_only=True, dynamic_typing=True)  # fmt: skip
        if spec.low is not None:
            desc.additional_constraints = f'{spec.low:g} .. {spec.high:g}'
        value = node.declare_parameter(spec.name, spec.default, desc).value
        if isinstance(spec.default, float) and isinstance(value, int) and value is not True:
            value = float(value)
        reason = spec.check(value)
        if reason:
            raise ConfigError(reason)
        values[spec.name] = value
    if values['goal_min_distance'] >= values['goal_max_distance']:
        raise ConfigError('goal_min_distance must be below goal_max_distance')
    return values


class ParticleStore:
    """The perception's particle messages of the current episode's frames, by stamp
    (thread-safe), for /sim/predict_batch.

    Sim time restarts with every episode, so a stamp alone does not name a frame: a message is
    kept only when its frame was published in this episode before it came (``expect``), which
    drops the late particles of the previous episode's last frame.
    """

    def __init__(self, keep: int = 32) -> None:
        self._cond = threading.Condition()
        self._msgs: dict[int, ParticleArray] = {}
        self._expected: set[int] = set()
        self._keep = keep

    def restart(self) -> None:
        """A new episode: nothing kept, nothing expected."""
        with self._cond:
            self._msgs.clear()
            self._expected.clear()

    def expect(self, stamp: int) -> None:
        """The frame stamped ``stamp`` is being published."""
        with self._cond:
            self._expected.add(stamp)

    def put(self, msg: ParticleArray) -> None:
        stamp = stamp_ns(msg.header)
        with self._cond:
            if stamp not in self._expected:
                return
            self._msgs[stamp] = msg
            while len(self._msgs) > self._keep:
                self._msgs.pop(next(iter(self._msgs)))
            self._cond.notify_all()

    def wait(self, stamp: int, timeout: float) -> ParticleArray | None:
        with self._cond:
            self._cond.wait_for(lambda: stamp in self._msgs, timeout)
            return self._msgs.get(stamp)


@dataclass
class Job:
    """Work for the frame thread (which owns the scene and its GL context), and its outcome."""

    run: Callable[[], Any]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: Exception | None = None


class TabletopSimNode(Node):
    """The lockstep simulator node (module docstring).

    One thread, the frame thread, does everything with the scene (resets, stepping, rendering,
    rollouts: an EGL context works in the thread that made it); the service callbacks hand it
    :class:`Job` objects and wait for them.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.params = p = read_params(self)
        self.sim = LockstepSim(p['size'], p['fps'], round(p['start_time'] * NS),
                               (p['goal_min_distance'], p['goal_max_distance']))  # fmt: skip
        self.gate = CommandGate()
        self._jobs: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self._running = True
        self._missed_total, self._episodes, self._predict_ms = 0, 0, 0.0
        self._command_ms: float | None = None  # the previous frame's wait for its command
        # a reset in progress: the loop stops stepping (``_hold``) and, once the frame in flight
        # is answered or ``_hold_until`` passed, says so (``_held``)
        self._hold, self._held = threading.Event(), threading.Event()
        self._hold_until = 0.0
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)  # fmt: skip
        self._pubs = {
            'camera': self.create_publisher(Image, TOPICS['camera'], reliable),
            'clock': self.create_publisher(Clock, TOPICS['clock'], reliable),
            'goal': self.create_publisher(PushGoal, TOPICS['goal'], latched),
            'ground_truth': self.create_publisher(PoseArray, TOPICS['ground_truth'], reliable),
            'diagnostics': self.create_publisher(DiagnosticArray, TOPICS['diagnostics'], 10),
        }
        # services wait for the frame thread; messages keep coming meanwhile (another group);
        # a reset waits for a command, which may need a /sim/predict_batch call (a third group)
        services, inputs = MutuallyExclusiveCallbackGroup(), MutuallyExclusiveCallbackGroup()
        resets = MutuallyExclusiveCallbackGroup()
        self.create_subscription(TwistStamped, TOPICS['command'], self._on_command, reliable,
                                 callback_group=inputs)  # fmt: skip
        self.particles = ParticleStore()
        if p['particles_topic']:
            self.create_subscription(ParticleArray, p['particles_topic'], self.particles.put,
                                     reliable, callback_group=inputs)  # fmt: skip
        self.create_service(PredictBatch, TOPICS['predict_batch'], self._on_predict_batch,
                            callback_group=services)  # fmt: skip
        self.create_service(ResetEpisode, TOPICS['reset'], self._on_reset,
                            callback_group=resets)  # fmt: skip
        if p['autostart']:
            self._jobs.put(Job(lambda: self._start(p['seed'], 0, None, p['tolerance'])))
        self._thread = threading.Thread(target=self._loop, name='sim_frames', daemon=True)
        self._thread.start()

    def _submit(self, run: Callable[[], Any]) -> Any:
        """Run ``run`` in the frame thread; its result (its exception is raised here)."""
        job = Job(run)
        self._jobs.put(job)
        self.gate.poke()
        while not job.done.wait(1.0):
            if not self._thread.is_alive():
                raise RuntimeError('the frame thread has stopped')
        if job.error is not None:
            raise job.error
        return job.result

    def _run_jobs(self) -> None:
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            try:
                job.result = job.run()
            except Exception as exc:  # noqa: BLE001 - handed to the waiting callback
                job.error = exc
            job.done.set()

    # ------------------------------------------------------------------------- episodes
    def _start(self, seed: int, object_id: int, goal: tuple[float, float] | None,
               tolerance: float) -> PushGoal:  # fmt: skip
        """Frame thread: a new episode; its task is published on /planning/goal."""
        ep = self.sim.reset(seed, object_id, goal, tolerance)
        self._episodes += 1
        self.gate.restart()
        self.particles.restart()
        msg = goal_message(ep, self.params['frame_id'], ep.frame.stamp_ns)
        self._pubs['goal'].publish(msg)
        # every subscriber has the task before the first frame (DDS orders no two topics)
        if not self._pubs['goal'].wait_for_all_acked(Duration(seconds=GOAL_ACK_S)):
            logger.warning('the task was not acknowledged by every subscriber within %g s',
                           GOAL_ACK_S)  # fmt: skip
        return msg

    def _on_reset(self, request: Any, response: Any) -> Any:
        goal = None if request.random_goal else (float(request.goal_u), float(request.goal_v))
        tolerance = float(request.tolerance) or self.params['tolerance']
        seed, object_id = int(request.seed), int(request.object_id)
        try:
            check_tolerance(tolerance)  # before the loop is held: a discovery probe is refused
            self._drain()
            response.goal = self._submit(lambda: self._start(seed, object_id, goal, tolerance))
        except ValueError as exc:
            response.success, response.message = False, str(exc)
            return response
        finally:
            self._hold.clear()
            self._held.clear()
            self.gate.poke()
        response.success, response.message = True, f'episode {self._episodes}'
        return response

    def _drain(self) -> None:
        """Stop the loop at the frame in flight once its command came (or ``drain_timeout``
        passed): nothing of the old episode is on its way when the new one starts."""
        wait = self.params['drain_timeout']
        self._hold_until = time.monotonic() + wait
        self._held.clear()
        self._hold.set()
        self.gate.poke()
        if not self._held.wait(wait + 10.0):  # the frame thread is busy with a long job
            logger.warning('the frame loop did not stop within %g s of a reset', wait + 10.0)

    def _on_command(self, msg: TwistStamped) -> None:
        command = (float(msg.twist.linear.x), float(msg.twist.linear.y))
        if not self.gate.offer(stamp_ns(msg.header), command):
            logger.debug('stale command for %d ns ignored', stamp_ns(msg.header))

    # ------------------------------------------------------------------------- frame loop
    def _loop(self) -> None:
        """Frame thread: jobs first; publish the current frame once, wait for its command (or
        its timeout: a missed step), step."""
        published: tuple[int, int] | None = None  # (episode, frame index) last published
        deadline = published_at = 0.0
        try:
            while self._running:
                self._run_jobs()
                ep = self.sim.episode
                if ep is None or self._held.is_set():
                    if self._hold.is_set():
                        self._held.set()
                    self.gate.wait(-1, 0.25)  # nothing to step: wait for a job
                    continue
                frame = ep.frame
                if published != (self._episodes, frame.index):
                    if frame.index == 0:
                        self._command_ms = None
                    published_at = time.monotonic()
                    self._publish(ep, frame)
                    published = (self._episodes, frame.index)
                    key = 'first_step_timeout' if frame.index == 0 else 'step_timeout'
                    deadline = published_at + self.params[key]
                holding = self._hold.is_set()
                until = min(deadline, self._hold_until) if holding else deadline
                command = self.gate.wait(frame.stamp_ns, max(0.0, until - time.monotonic()))
                if holding and (command is not None or time.monotonic() >= self._hold_until):
                    self._held.set()  # the frame is answered (or given up): no step, a reset
                    continue
                if command is None and (time.monotonic() < deadline or not self._running):
                    continue  # a job, a reset or shutdown woke the wait
                answered = command is not None
                self._command_ms = (time.monotonic() - published_at) * 1e3 if answered else None
                if not answered:
                    self._missed_total += 1
                    logger.warning('no command for frame %d of episode %d in time: zero '
                                   'command', frame.index, self._episodes)  # fmt: skip
                self.sim.step(command)
        finally:
            self.sim.close()

    def _publish(self, ep: Episode, frame: Frame) -> None:
        head = header(frame.stamp_ns, self.params['frame_id'])
        self.particles.expect(frame.stamp_ns)
        self._pubs['clock'].publish(Clock(clock=head.stamp))
        self._pubs['ground_truth'].publish(ground_truth_message(frame, head))
        self._pubs['camera'].publish(rgb_to_image(frame.rgb, head))
        values = {
            'episode': self._episodes, 'seed': ep.seed, 'object_id': ep.task.object_id,
            'step': frame.index, 'stamp_ns': frame.stamp_ns, 'missed_steps': ep.missed,
            'missed_total': self._missed_total, 'predict_ms': round(self._predict_ms, 3),
            'command_ms': '' if self._command_ms is None else round(self._command_ms, 3),
        }  # fmt: skip
        status = DiagnosticStatus(
            level=DiagnosticStatus.WARN if ep.missed else DiagnosticStatus.OK, name=NODE_NAME,
            message=f'episode {self._episodes} step {frame.index}, {ep.missed} missed',
            hardware_id='mujoco',
            values=[KeyValue(key=k, value=str(v)) for k, v in values.items()],
        )  # fmt: skip
        self._pubs['diagnostics'].publish(DiagnosticArray(header=head, status=[status]))

    # ------------------------------------------------------------------------- predict_batch
    def _check_batch(self, request: Any) -> tuple[int, int, np.ndarray, str | None]:
        """(B, N, actions, None) of a valid request, else the reason it is not."""
        n_b = int(request.candidates)
        n_steps = int(request.horizon) or self.params['horizon']
        actions = np.asarray(request.actions, dtype=np.float64)
        reason = None
        if not 1 <= n_b <= self.params['max_candidates']:
            reason = f'candidates must be 1..{self.params["max_candidates"]}, got {n_b}'
        elif not 1 <= n_steps <= MAX_HORIZON:
            reason = f'horizon must be 0..{MAX_HORIZON}, got {n_steps}'
        elif actions.size != n_b * n_steps * 2:
            reason = (
                f'actions must hold B x N x 2 = {n_b * n_steps * 2} values, got {actions.size}'
            )
        return n_b, n_steps, actions, reason

    def _rollout(self, actions: np.ndarray) -> tuple[Frame, np.ndarray]:
        """Frame thread: the current frame and (B, N, K, 2) predicted object centres."""
        if self.sim.episode is None:
            raise ValueError('no episode yet (call /sim/reset)')
        t0 = time.perf_counter()
        uv = self.sim.predict(actions)
        self._predict_ms = (time.perf_counter() - t0) * 1e3
        return self.sim.episode.frame, uv

    def _fill_particles(self, response: Any, frame: Frame, head: Header, uv: np.ndarray) -> None:
        """``current``, u, v, presence: the true objects, or the perception's particles of the
        frame carried by the objects (``particles_topic``).

        Raises:
            ValueError: no particles of the frame came within ``particles_timeout``.
        """
        topic = self.params['particles_topic']
        if not topic:
            response.current = true_particles(frame, head, self.sim.size)
            presence = np.ones(uv.shape[:3])
        else:
            msg = self.particles.wait(frame.stamp_ns, self.params['particles_timeout'])
            if msg is None:
                raise ValueError(f'no particles on {topic} for the frame stamped '
                                 f'{frame.stamp_ns} ns')  # fmt: skip
            here = np.array([(q.u, q.v) for q in msg.particles], np.float64).reshape(-1, 2)
            uv = carried_by_objects(here, frame.objects, uv)  # (B, N, P, 2)
            on = np.array([q.transparency for q in msg.particles], np.float64)
            response.current, presence = msg, np.broadcast_to(on, uv.shape[:3])
        response.particles = uv.shape[2]
        response.u, response.v = _f32(uv[..., 0]), _f32(uv[..., 1])
        response.presence = _f32(presence)

    def _on_predict_batch(self, request: Any, response: Any) -> Any:
        n_b, n_steps, actions, reason = self._check_batch(request)
        if reason is None:
            try:
                frame, uv = self._submit(lambda: self._rollout(actions.reshape(n_b, n_steps, 2)))
            except ValueError as exc:
                reason = str(exc)
        if reason is not None:
            response.success, response.message = False, reason
            return response
        head = header(frame.stamp_ns, self.params['frame_id'])
        try:
            self._fill_particles(response, frame, head, uv)
        except ValueError as exc:
            response.success, response.message = False, str(exc)
            return response
        response.success, response.message, response.header = True, '', head
        response.dt = 1.0 / self.sim.fps
        response.candidates, response.horizon = n_b, n_steps
        return response

    # ------------------------------------------------------------------------- shutdown
    def stop(self) -> None:
        """Stop the frame thread (it closes the scene) before the node is destroyed."""
        self._running = False
        self.gate.poke()
        self._thread.join(timeout=10.0)


def main(args: list[str] | None = None) -> int:
    """Run the node until SIGINT/SIGTERM; 2 on a bad parameter, else 0 (see
    :mod:`dlp_ros.node_process`)."""
    logging.basicConfig(level=logging.INFO, format='[%(levelname)s] [%(name)s]: %(message)s')
    return run_until_signal(args, TabletopSimNode, lambda: PoolExecutor(num_threads=3),
                            TabletopSimNode.stop, usage_errors=(ConfigError,))  # fmt: skip


if __name__ == '__main__':
    raise SystemExit(main())
