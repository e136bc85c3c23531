"""A stand-in push planner for the closed-loop tests, run as a process of its own
(``python tests/ros/stand_in_planner.py --ros-args -p predict_service:=/sim/predict_batch``).

It speaks the planner's side of the protocol only: for each /dlp/particles message it asks the
PredictBatch service for a few constant-velocity candidates, scores each by the predicted
distance of the object to the goal (and of the pusher to the point behind the object), publishes
the best first command stamped like the frame on /tabletop/command, and reports on /diagnostics
(status 'stand_in_planner': stamp_ns, planning_ms, path_uv). The object is the service's
particle nearest the task's start pixel at the task's first frame (the frame stamped like the
task), followed by id; the pusher is the particle that moves most with the candidates. Not the
project's planner: a test fixture with no tuning.
"""

from __future__ import annotations

import json
import math
import queue
import sys
import threading
import time
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import TwistStamped
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

from dlp_ros.msg import ParticleArray, PushGoal
from dlp_ros.service_call import call_service, sleep_poll
from dlp_ros.srv import PredictBatch

SPEED = 0.3  # m/s
DIRECTIONS = 16
HORIZON = 5


class StandIn:
    def __init__(self) -> None:
        self.node = rclpy.create_node('stand_in_planner')
        self.service = self.node.declare_parameter('predict_service', '/sim/predict_batch').value
        self.node.declare_parameter('model', 'service')
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)  # fmt: skip
        self.goal: Any = None
        self.followed: tuple[Any, int] | None = None  # (the task, the object's particle id)
        self.frames: queue.Queue[Any] = queue.Queue()
        self.node.create_subscription(PushGoal, '/planning/goal', self._on_goal, latched)
        self.node.create_subscription(ParticleArray, '/dlp/particles', self.frames.put, reliable)
        self.command = self.node.create_publisher(TwistStamped, '/tabletop/command', reliable)
        self.diagnostics = self.node.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self.client = self.node.create_client(PredictBatch, self.service)

    def _on_goal(self, msg: Any) -> None:
        self.goal = msg

    def plan(self, frame: Any) -> None:
        goal = self.goal
        if goal is None:
            return
        t0 = time.perf_counter()
        angles = np.linspace(0, 2 * math.pi, DIRECTIONS, endpoint=False)
        velocities = np.concatenate([SPEED * np.stack([np.cos(angles), np.sin(angles)], -1),
                                     np.zeros((1, 2))])  # fmt: skip
        actions = np.repeat(velocities[:, None], HORIZON, axis=1).astype(np.float32)  # (B, N, 2)
        request = PredictBatch.Request(horizon=HORIZON, candidates=len(actions),
                                       actions=actions.ravel().tolist())  # fmt: skip
        response = call_service(self.client, request, sleep_poll, 60.0)
        if not response.success:
            return
        ids = [p.id for p in response.current.particles]
        first = response.header.stamp == goal.header.stamp
        if first or self.followed is None or self.followed[0] is not goal:
            start = np.array([goal.start_u, goal.start_v])
            uv0 = np.array([(p.u, p.v) for p in response.current.particles])
            far = np.array([p.transparency < 0.5 for p in response.current.particles]) * 1e6
            self.followed = (goal, ids[int(np.argmin(np.hypot(*(uv0 - start).T) + far))])
        followed = self.followed[1]
        k = len(ids)
        uv = np.stack([np.asarray(response.u), np.asarray(response.v)], -1).reshape(
            len(actions), HORIZON, k, 2)  # fmt: skip
        target = np.array([goal.goal_u, goal.goal_v])
        obj = uv[:, :, ids.index(followed)]  # (B, N, 2)
        to_goal = target - obj[:, -1]
        behind = obj[:, -1] - 4.0 * to_goal / np.maximum(np.hypot(*to_goal.T), 1e-6)[:, None]
        spread = np.ptp(uv[:, -1], axis=0)  # (K, 2): the pusher moves most with the command
        pusher = uv[:, -1, int(np.argmax(np.hypot(*spread.T)))]
        cost = 10 * np.hypot(*to_goal.T) + np.hypot(*(pusher - behind).T)
        best = int(np.argmin(cost))
        msg = TwistStamped()
        msg.header = frame.header
        msg.twist.linear.x, msg.twist.linear.y = (float(a) for a in actions[best, 0])
        self.command.publish(msg)
        self.report(frame, (time.perf_counter() - t0) * 1e3, obj[best])

    def report(self, frame: Any, ms: float, path: np.ndarray) -> None:
        stamp = frame.header.stamp.sec * 1_000_000_000 + frame.header.stamp.nanosec
        values = {'stamp_ns': str(stamp), 'planning_ms': f'{ms:.3f}',
                  'path_uv': json.dumps(np.round(path, 2).tolist())}  # fmt: skip
        status = DiagnosticStatus(
            name='stand_in_planner',
            message='planned',
            values=[KeyValue(key=k, value=v) for k, v in values.items()],
        )
        self.diagnostics.publish(DiagnosticArray(header=frame.header, status=[status]))


def main() -> int:
    rclpy.init(args=sys.argv)
    planner = StandIn()
    executor = SingleThreadedExecutor()
    executor.add_node(planner.node)
    threading.Thread(target=executor.spin, daemon=True).start()
    try:
        while rclpy.ok():
            try:
                planner.plan(planner.frames.get(timeout=0.5))
            except queue.Empty:
                continue
    except KeyboardInterrupt:
        pass
    finally:
        executor.shutdown()
        planner.node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
