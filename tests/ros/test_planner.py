"""The reference planner ``push_planner`` over real ROS 2, beside the perception node on the
shipped tabletop bundle: camera frames in, particles to the planner, one command per particles
message back, stamped like it and within the command limits, for each planner model.

Both nodes are the installed executables (``lib/dlp_ros/perception_node``,
``lib/dlp_ros/push_planner``) in processes of their own, their topics under a unique prefix; the
planner's commands are the perception node's action topic, so the loop is closed through it.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip('rclpy')
pytest.importorskip('dlp_ros.srv')

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from geometry_msgs.msg import TwistStamped  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402

from dlp_ros import demo  # noqa: E402
from dlp_ros.conversions import stamp_ns  # noqa: E402
from dlp_ros.msg import PushGoal  # noqa: E402

pytestmark = pytest.mark.ros

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BUNDLE = ROOT / 'bundles' / 'tabletop64'
MAX_SPEED = 0.3
FRAMES = 6


import node_harness as harness  # noqa: E402  (tests/ros is on sys.path: no __init__.py)


def planner_executable() -> Path:
    from ament_index_python.packages import get_package_prefix

    path = Path(get_package_prefix('dlp_ros')) / 'lib' / 'dlp_ros' / 'push_planner'
    assert os.access(path, os.X_OK), f'{path} is missing or not executable: rebuild with colcon'
    return path


@pytest.fixture(scope='module')
def perception(
    tmp_path_factory: pytest.TempPathFactory, ros_domain_id: int
) -> Iterator[tuple[Any, Any]]:
    """The perception node on the shipped tabletop bundle, its action topic the planner's."""
    if not (BUNDLE / 'model_card.yaml').is_file():
        pytest.skip(f'no shipped bundle at {BUNDLE}')
    params = {'model_bundle': str(BUNDLE), 'threads': 1, 'prediction_rate': 0.0,
              'action_topic': '{prefix}/command', 'ood_every_n': 0}  # fmt: skip
    started = harness.started(tmp_path_factory.mktemp('planner_logs'), ros_domain_id, params)
    node, client = next(started)
    client.wait_outputs()
    yield node, client
    next(started, None)


class Planner:
    """A push_planner process wired to ``node``'s topics, and what it sends back."""

    def __init__(self, node: Any, client: Any, log_dir: Path, model: str) -> None:
        self.name = f'planner_{uuid.uuid4().hex[:8]}'
        self.goal_topic = f'{node.prefix}/goal'
        params = {'model': model, 'predict_service': f'/{node.name}/predict_batch',
                  'samples': 8, 'horizon': 3, 'iterations': 2, 'time_budget': 1.0,
                  'particles_topic': node.topics['particles'], 'goal_topic': self.goal_topic,
                  'command_topic': node.topics['action']}  # fmt: skip
        remaps = {'__node': self.name, '/diagnostics': f'{node.prefix}/{self.name}/diagnostics'}
        env = {**os.environ, 'PYTHONUNBUFFERED': '1'}
        self.process = demo.NodeProcess(params, remaps, env, log_dir / f'{self.name}.log',
                                        command=[str(planner_executable())])  # fmt: skip
        self.commands: list[TwistStamped] = []
        self.goals: Any = None
        self.diagnostics: list[DiagnosticArray] = []
        self.subs = [
            client.node.create_subscription(TwistStamped, node.topics['action'],
                                            self.commands.append, 100),
            client.node.create_subscription(DiagnosticArray, remaps['/diagnostics'],
                                            self.diagnostics.append, 10),
        ]  # fmt: skip

    def wait_matched(self, client: Any, camera: Any) -> None:
        """Until a probe frame's particles come back as a command: the planner's side of the
        particles topic is matched too (what arrives before that is lost without a trace)."""
        probe = f'probe_{uuid.uuid4().hex[:8]}'
        deadline = time.monotonic() + harness.TIMEOUT_S
        while not self.commands_of(probe):
            assert time.monotonic() < deadline, f'no command for a probe frame: {self.report()}'
            harness.send_processed(client, camera, [harness.raw_image(time.time_ns(), probe)])
            client.spin_until_or(lambda: bool(self.commands_of(probe)), 1.0)

    def report(self) -> str:
        return f'planner log:\n{self.process.log_tail(40)}'

    def latest_diagnostics(self) -> dict[str, str]:
        if not self.diagnostics:
            return {}
        status = self.diagnostics[-1].status[0]
        return {'message': status.message, **{kv.key: kv.value for kv in status.values}}

    def commands_of(self, frame_id: str) -> list[TwistStamped]:
        return [m for m in self.commands if m.header.frame_id == frame_id]


@pytest.mark.parametrize('model', ['service', 'no_action', 'random'])
def test_one_command_per_particles_message(
    perception: tuple[Any, Any], tmp_path: Path, model: str
) -> None:
    node, client = perception
    planner = Planner(node, client, tmp_path, model)
    try:
        particles_topic = node.topics['particles']
        client.spin_until(lambda: client.node.count_subscribers(particles_topic) >= 2,
                          'the planner to subscribe to the particles')  # fmt: skip
        client.spin_until(lambda: planner.subs[0].get_publisher_count() > 0,
                          'the planner to publish commands')  # fmt: skip
        camera = client.camera()
        planner.wait_matched(client, camera)
        t0 = time.time_ns()
        goal_qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                              durability=DurabilityPolicy.TRANSIENT_LOCAL)  # fmt: skip
        goals = client.node.create_publisher(PushGoal, planner.goal_topic, goal_qos)
        planner.goals = goals
        frame_id = harness.unique_frame_id()
        goal = PushGoal(header=harness.header(t0, frame_id), object_id=1, start_u=10.0,
                        start_v=9.0, goal_u=40.0, goal_v=30.0, tolerance=3.0)  # fmt: skip
        goals.publish(goal)
        client.spin_until(
            lambda: planner.latest_diagnostics().get('goal') == '(40.0, 30.0)', 'the goal'
        )
        stamps = [t0 + i * 100_000_000 for i in range(FRAMES)]
        frames = [harness.raw_image(s, frame_id, i) for i, s in enumerate(stamps)]
        harness.send_processed(client, camera, frames)
        particles = client.particles_of(frame_id)
        client.spin_until_or(lambda: len(planner.commands_of(frame_id)) >= len(particles), 60.0)
        assert len(planner.commands_of(frame_id)) >= len(particles), planner.report()
        client.spin_for(0.3)  # no extra commands
        commands = planner.commands_of(frame_id)
        assert sorted(stamp_ns(c.header) for c in commands) == sorted(
            stamp_ns(p.header) for p in particles
        ), 'one command per particles message, stamped like it'
        assert {stamp_ns(c.header) for c in commands} == set(stamps)
        speeds = np.array([[c.twist.linear.x, c.twist.linear.y] for c in commands])
        assert np.all(np.abs(speeds) <= MAX_SPEED + 1e-6), speeds
        assert np.any(speeds != 0), 'every command is zero'
        seen = len(planner.diagnostics)
        client.spin_until(lambda: len(planner.diagnostics) > seen + 1, 'fresh diagnostics')
        diag = planner.latest_diagnostics()
        assert diag['model'] == model and diag['particle_id'] != '', diag
        assert diag['errors'] == '0', diag
        assert int(diag['plans']) >= (0 if model == 'random' else 1), diag
        assert float(diag['distance_px']) >= 0, diag
        assert planner.process.alive(), planner.process.log_tail()
    finally:
        for sub in planner.subs:
            client.node.destroy_subscription(sub)
        if planner.goals is not None:
            client.node.destroy_publisher(planner.goals)
        code = planner.process.stop()
    assert code == 0, planner.process.log_tail(40)


def test_a_bad_parameter_stops_the_planner_with_the_reason(tmp_path: Path) -> None:
    env = {**os.environ, 'PYTHONUNBUFFERED': '1'}
    params = {'samples': 4, 'elites': 8}
    process = demo.NodeProcess(params, {}, env, tmp_path / 'planner.log',
                               command=[str(planner_executable())])  # fmt: skip
    try:
        process.proc.wait(timeout=60.0)
    finally:
        process.stop()
    assert process.proc.returncode == 2
    assert 'elites (8) must be <= samples (4)' in process.log_tail(), process.log_tail()
