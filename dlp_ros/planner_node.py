"""The reference planner node ``push_planner``: pushes one object to a goal pixel with sampling MPC
over the perception node's batched predictions (torch-free; the maths is :mod:`dlp_ros.mpc`).

Run by ``ros2 run dlp_ros push_planner`` or the installed ``lib/dlp_ros/push_planner``:

- subscribes to ``particles_topic`` (dlp_ros/ParticleArray, default dlp/particles: the
  perception node's output in the planner's namespace, /dlp/particles in the root one) and
  ``goal_topic`` (dlp_ros/PushGoal, default /planning/goal, reliable + transient local);
- after a goal, at the first particles stamped at or after it, takes the on particle nearest
  to the goal's start pixel as the object and follows it by particle id;
- for every particles message publishes one command on ``command_topic``
  (geometry_msgs/TwistStamped: linear.x, linear.y = vx, vy; the header of the particles it
  answers, so a simulator can step in lockstep): the first command of a CEM plan (``model``
  ``service``: B candidates through one ``predict_service`` call per iteration;
  ``no_action``: particles held still; ``random``: uniform random commands), zero before a
  goal, when the object is not found or when planning fails (the reason is logged and counted).
  A particles message that is already followed by a newer one gets the next command of the
  current plan without replanning (counted as ``replans_skipped``), so the node keeps up;
- publishes /diagnostics at 1 Hz: planning time (last, p50, p99), cost, the chosen plan, the
  particle followed, its distance to the goal, counters and the last error.

Parameters are declared once with descriptions and ranges (:data:`dlp_ros.mpc.PLANNER_PARAMS`);
a bad value stops the node at start-up with the reason.
"""

from __future__ import annotations

import array
import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import TwistStamped
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Header

from dlp_ros.conversions import stamp_ns
from dlp_ros.errors import ConfigError, DlpError
from dlp_ros.mpc import (
    PLANNER_PARAMS,
    CemPlanner,
    PlannerConfig,
    Rollout,
    held_rollout,
    pick_particle,
)
from dlp_ros.msg import ParticleArray, PushGoal
from dlp_ros.node import descriptor
from dlp_ros.node_process import run_until_signal
from dlp_ros.node_support import LatencyWindow
from dlp_ros.service_call import call_service, sleep_poll
from dlp_ros.srv import PredictBatch

NODE_NAME = 'push_planner'
DIAGNOSTICS_PERIOD_S = 1.0


class PlanningError(DlpError):
    """A decision could not be planned (service missing, refused or late)."""


@dataclass
class PlannerStats:
    """What /diagnostics reports, written by the planning thread (under ``lock``)."""

    commands: int = 0
    plans: int = 0
    skipped: int = 0
    errors: int = 0
    last_error: str = ''
    cost: float = float('nan')
    iterations: int = 0
    plan: str = ''
    distance_px: float = float('nan')
    planning: LatencyWindow = field(default_factory=LatencyWindow)
    last_ms: float = float('nan')
    lock: threading.Lock = field(default_factory=threading.Lock)


def particle_arrays(msg: ParticleArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """u, v, presence of a ParticleArray, indexed by particle id (absent ids: off, at 0)."""
    size = max((int(p.id) for p in msg.particles), default=-1) + 1
    u, v, presence = np.zeros(size, np.float32), np.zeros(size, np.float32), np.zeros(size)
    for p in msg.particles:
        u[p.id], v[p.id], presence[p.id] = p.u, p.v, p.transparency
    return u, v, presence


class PushPlanner(Node):
    """The planner node; see the module docstring."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        for spec in PLANNER_PARAMS:
            self.declare_parameter(spec.name, spec.default, descriptor(spec))
        values = {spec.name: self.get_parameter(spec.name).value for spec in PLANNER_PARAMS}
        self.config = PlannerConfig.from_values(values)  # ConfigError: main reports it
        c = self.config
        self.planner = CemPlanner(c)
        self.stats = PlannerStats()
        self._goal: PushGoal | None = None
        self._particle_id: int | None = None
        self._planned_goal: PushGoal | None = None  # the goal of the planner's state (thread)
        self._lock = threading.Lock()
        self._queue: queue.Queue[ParticleArray | None] = queue.Queue()
        goal_qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                              durability=DurabilityPolicy.TRANSIENT_LOCAL)  # fmt: skip
        self.create_subscription(PushGoal, c.goal_topic, self._on_goal, goal_qos)
        self.create_subscription(ParticleArray, c.particles_topic, self._queue.put, 10)
        self._command_pub = self.create_publisher(TwistStamped, c.command_topic, 10)
        self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._client = None
        if c.model == 'service':
            self._client = self.create_client(PredictBatch, c.predict_service)
        self.create_timer(DIAGNOSTICS_PERIOD_S, self._publish_diagnostics)
        self._thread = threading.Thread(target=self._work, name='planner', daemon=True)
        self._thread.start()
        self.get_logger().info(
            f'model {c.model}: {c.samples} samples x {c.horizon} steps, <= {c.iterations} CEM '
            f'iterations in {c.time_budget:g} s, |v| <= {c.max_speed:g} m/s; '
            f'{c.particles_topic} + {c.goal_topic} -> {c.command_topic}'
        )

    # ------------------------------------------------------------------------- input

    def _on_goal(self, msg: PushGoal) -> None:
        """A new task: forget the object and the plan; the next particles pick the object."""
        with self._lock:
            self._goal, self._particle_id = msg, None
        self.get_logger().info(
            f'goal: object {msg.object_id} from ({msg.start_u:.1f}, {msg.start_v:.1f}) to '
            f'({msg.goal_u:.1f}, {msg.goal_v:.1f}) px'
        )

    def stop(self) -> None:
        """Stop the planning thread (after the decision in progress)."""
        self._queue.put(None)
        self._thread.join(timeout=30.0)

    # ------------------------------------------------------------------------- planning

    def _work(self) -> None:
        """Planning thread: one command per particles message, in order; never raises."""
        while True:
            msg = self._queue.get()
            if msg is None:
                return
            replan = self._queue.empty()  # else a newer message waits: keep up
            try:
                command = self._decide(msg, replan)
            except PlanningError as exc:
                command = np.zeros(2, np.float32)
                self._count_error(str(exc))
            except Exception as exc:  # noqa: BLE001 - a decision must never stop the node
                command = np.zeros(2, np.float32)
                self._count_error(f'{type(exc).__name__}: {exc}')
            out = TwistStamped(header=msg.header)
            out.twist.linear.x, out.twist.linear.y = float(command[0]), float(command[1])
            self._command_pub.publish(out)
            with self.stats.lock:
                self.stats.commands += 1

    def _decide(self, msg: ParticleArray, replan: bool) -> np.ndarray:
        """The (2,) command answering ``msg``."""
        with self._lock:
            goal, pid = self._goal, self._particle_id
        zero = np.zeros(2, np.float32)
        if goal is None or stamp_ns(msg.header) < stamp_ns(goal.header) or not msg.particles:
            return zero
        if goal is not self._planned_goal:
            self.planner.reset()
            self._planned_goal = goal
        u, v, presence = particle_arrays(msg)
        if pid is None:
            pid = int(pick_particle(u, v, presence, (goal.start_u, goal.start_v),
                                    self.config.on_threshold))  # fmt: skip
            with self._lock:
                self._particle_id = pid if self._goal is goal else None
            self.get_logger().info(f'following particle {pid} at ({u[pid]:.1f}, {v[pid]:.1f})')
        if pid >= len(u):
            raise PlanningError(f'particle {pid} is missing from {self.config.particles_topic}')
        target = (float(goal.goal_u), float(goal.goal_v))
        with self.stats.lock:
            self.stats.distance_px = float(np.hypot(u[pid] - target[0], v[pid] - target[1]))
        if self.config.model == 'random':
            return self.planner.random_command()
        if not replan:
            with self.stats.lock:
                self.stats.skipped += 1
            return self.planner.next_command()
        rollout = self._service_rollout() if self._client else held_rollout(u, v, presence)
        result = self.planner.plan(rollout, pid, target)
        with self.stats.lock:
            s = self.stats
            s.plans += 1
            s.cost, s.iterations, s.last_ms = result.cost, result.iterations, result.planning_ms
            s.planning.add(result.planning_ms)
            s.plan = ' '.join(f'({a[0]:+.2f},{a[1]:+.2f})' for a in result.plan[:5])
        return result.command

    def _service_rollout(self) -> Rollout:
        """B candidates through one ``predict_service`` call; arrays indexed by particle id."""
        client, c = self._client, self.config

        def rollout(actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            if client is None or not client.service_is_ready():
                raise PlanningError(f'service {c.predict_service} is not available')
            b, n = actions.shape[:2]
            flat = array.array('f', np.ascontiguousarray(actions, np.float32).tobytes())
            request = PredictBatch.Request(horizon=n, candidates=b, actions=flat)
            try:  # a reply lost to discovery is asked for again (dlp_ros.service_call)
                answer = call_service(client, request, sleep_poll, c.service_timeout)
            except DlpError as exc:
                raise PlanningError(f'{c.predict_service}: {exc} (service_timeout '
                                    f'{c.service_timeout:g} s)') from exc  # fmt: skip
            if answer is None or not answer.success:
                why = answer.message if answer is not None else 'no answer'
                raise PlanningError(f'{c.predict_service} refused: {why}')
            ids = [int(p.id) for p in answer.current.particles]
            k = max(ids, default=-1) + 1
            out = []
            for values in (answer.u, answer.v, answer.presence):
                got = np.asarray(values, np.float32).reshape(b, n, len(ids))
                full = np.zeros((b, n, k), np.float32)
                full[:, :, ids] = got
                out.append(full)
            return out[0], out[1], out[2]

        return rollout

    def _count_error(self, reason: str) -> None:
        with self.stats.lock:
            self.stats.errors += 1
            first = self.stats.last_error != reason
            self.stats.last_error = reason
        if first:
            self.get_logger().error(f'planning failed, commanding zero: {reason}')

    # ------------------------------------------------------------------------- diagnostics

    def _publish_diagnostics(self) -> None:
        s, c = self.stats, self.config
        with self._lock:
            goal, pid = self._goal, self._particle_id
        with s.lock:
            p50, p99 = s.planning.percentiles(50, 99)
            values = {
                'model': c.model, 'samples': str(c.samples), 'horizon': str(c.horizon),
                'goal': '' if goal is None else f'({goal.goal_u:.1f}, {goal.goal_v:.1f})',
                'particle_id': '' if pid is None else str(pid),
                'distance_px': f'{s.distance_px:.2f}', 'commands_published': str(s.commands),
                'plans': str(s.plans), 'replans_skipped': str(s.skipped),
                'planning_ms_last': f'{s.last_ms:.2f}', 'planning_ms_p50': f'{p50:.2f}',
                'planning_ms_p99': f'{p99:.2f}', 'cost': f'{s.cost:.2f}',
                'iterations': str(s.iterations), 'plan': s.plan,
                'errors': str(s.errors), 'last_error': s.last_error,
            }  # fmt: skip
            errors = s.errors
        level, message = DiagnosticStatus.OK, 'planning'
        if goal is None:
            level, message = DiagnosticStatus.WARN, 'no goal yet: commanding zero'
        elif errors:
            level, message = DiagnosticStatus.ERROR, f'{errors} planning errors'
        status = DiagnosticStatus(
            level=level, name=f'{self.get_name()}: push planner', message=message,
            hardware_id=c.model, values=[KeyValue(key=k, value=v) for k, v in values.items()],
        )  # fmt: skip
        header = Header(stamp=self.get_clock().now().to_msg())
        self._diag_pub.publish(DiagnosticArray(header=header, status=[status]))


def main(args: list[str] | None = None) -> int:
    """Run the planner until SIGINT/SIGTERM; 2 on a bad parameter, else 0."""
    logging.basicConfig(level=logging.INFO, format='[%(levelname)s] [%(name)s]: %(message)s')
    errors = (ConfigError, InvalidParameterTypeException, InvalidParameterValueException)
    return run_until_signal(args, PushPlanner, SingleThreadedExecutor, PushPlanner.stop,
                            usage_errors=errors)  # fmt: skip


if __name__ == '__main__':
    raise SystemExit(main())
