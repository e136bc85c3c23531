"""The simulated robot end to end: the installed ``lib/dlp_ros/tabletop_sim`` in a process of its
own, driven over real rclpy + Fast DDS (this run's domain, loopback only) by
:class:`dlp_ros.sim.client.LoopClient` in lockstep: one frame per command with matching stamps,
the pusher moving as commanded, ground truth, the task and the clock published, missed steps
counted, /sim/predict_batch of the right shapes whose zero-command candidate is the real future.

The simulator's topics are absolute (/camera/image_raw, ...): this module runs one simulator at
a time, under the ROS test lock.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip('rclpy')
pytest.importorskip('dlp_ros.srv')
pytest.importorskip('mujoco')

from rosgraph_msgs.msg import Clock  # noqa: E402

from dlp_ros import demo  # noqa: E402
from dlp_ros.conversions import MESSAGE_INFO, stamp_ns  # noqa: E402
from dlp_ros.errors import DlpError  # noqa: E402
from dlp_ros.msg import PushGoal  # noqa: E402
from dlp_ros.sim.client import LoopClient  # noqa: E402
from dlp_ros.srv import PredictBatch  # noqa: E402

pytestmark = pytest.mark.ros

START_NS = 50 * 10**9  # the node's start_time
PERIOD_NS = 100_000_000  # 10 Hz
STEP_TIMEOUT_S = 1.5
TIMEOUT_S = 30.0
Loop = tuple[LoopClient, demo.NodeProcess, list[int]]  # client, simulator, /clock stamps


def executable() -> Path:
    from ament_index_python.packages import get_package_prefix

    path = Path(get_package_prefix('dlp_ros')) / 'lib' / 'dlp_ros' / 'tabletop_sim'
    assert os.access(path, os.X_OK), f'{path} is missing or not executable: rebuild with colcon'
    return path


def clock_ns(msg: Clock) -> int:
    return msg.clock.sec * 10**9 + msg.clock.nanosec


@pytest.fixture
def make_loop(tmp_path: Path, ros_domain_id: int) -> Iterator[Callable[..., Loop]]:
    """Starts the simulator (no episode until a reset; the defaults below, updated by the
    keyword arguments) and a client that records /clock; both stop at the end of the test, so
    one simulator runs at a time."""
    started: list[tuple[LoopClient, demo.NodeProcess]] = []

    def make(**overrides: object) -> Loop:
        params = {'autostart': False, 'start_time': START_NS / 1e9, 'frame_id': 'test_camera',
                  'step_timeout': STEP_TIMEOUT_S, 'first_step_timeout': STEP_TIMEOUT_S,
                  'drain_timeout': 0.0, **overrides}  # fmt: skip
        env = {**os.environ, 'PYTHONUNBUFFERED': '1'}
        log = tmp_path / f'tabletop_sim_{len(started)}.log'
        node = demo.NodeProcess(params, {}, env, log, command=[str(executable())])
        client = LoopClient(env, f'sim_test_client_{len(started)}')
        started.append((client, node))
        clock: list[int] = []
        client.session.node.create_subscription(
            Clock, '/clock', lambda m: clock.append(clock_ns(m)), 50)  # fmt: skip
        return client, node, clock

    yield make
    for client, node in started:
        client.close()
        code = node.stop()
        assert code == 0, f'tabletop_sim exited with {code}:\n{node.log_tail(40)}'


class Episode:
    """An episode's frames by index (its first frame's stamp is the task's)."""

    def __init__(self, client: LoopClient, goal: object) -> None:
        self.client, self.goal = client, goal
        self.start = stamp_ns(goal.header)  # type: ignore[attr-defined]

    def stamp(self, index: int) -> int:
        return self.start + index * PERIOD_NS

    def wait(self, index: int) -> int:
        return self.client.wait_frame(index, self.start, PERIOD_NS, TIMEOUT_S)

    def frames_after(self, index: int) -> list[int]:
        with self.client.lock:
            return sorted(s for s in self.client.seen.frame_times if s > self.stamp(index))

    def truth(self, index: int) -> np.ndarray:
        with self.client.lock:
            return self.client.seen.truth[self.stamp(index)].copy()  # (K, 2)


def start(client: LoopClient, seed: int) -> Episode:
    """A new episode: sim time restarts at start_time (or a period before the previous
    episode's only frame, when that one never stepped)."""
    ep = Episode(client, client.reset(seed=seed, timeout=TIMEOUT_S))
    assert ep.start in (START_NS, START_NS - PERIOD_NS, START_NS - 2 * PERIOD_NS), ep.start
    ep.wait(0)
    return ep


def test_reset_publishes_the_task_and_the_first_frame(make_loop: Callable[..., Loop]) -> None:
    client, node, _ = make_loop()
    ep = start(client, seed=5)
    goal = ep.goal
    assert goal.object_id >= 1 and ep.start == START_NS, 'the first episode starts at start_time'
    assert goal.header.frame_id == 'test_camera' and goal.tolerance == pytest.approx(3.0)
    client.session.wait_for('the latched task', lambda: client.seen.goal is not None, TIMEOUT_S)
    assert (client.seen.goal.goal_u, client.seen.goal.goal_v) == (goal.goal_u, goal.goal_v)
    xy = ep.truth(0)
    assert len(xy) >= 4, 'pusher and 3..5 objects'
    assert np.allclose(xy[goal.object_id], (goal.start_u, goal.start_v), atol=1e-4)
    assert 6.0 < np.hypot(goal.goal_u - goal.start_u, goal.goal_v - goal.start_v) < 25.0
    with client.lock:
        assert client.seen.frames[START_NS].shape == (64, 64, 3)
    with pytest.raises(DlpError, match='refused'):
        client.reset(seed=5, object_id=1, goal_uv=(10.0, 99.0), timeout=TIMEOUT_S)
    client.reset(seed=5, timeout=TIMEOUT_S)  # the refused reset left no episode behind


def test_lockstep_frames_follow_commands(make_loop: Callable[..., Loop]) -> None:
    """Each frame waits for the command of the one before; stamps, clock and ground truth
    match; zero commands keep the pusher still, +x moves it right, +y moves it up."""
    client, node, clock = make_loop()
    ep = start(client, seed=11)
    commands = [(0.0, 0.0), (0.3, 0.0), (0.3, 0.0), (0.3, 0.0), (0.0, 0.3), (0.0, 0.3)]
    for t, (vx, vy) in enumerate(commands):
        time.sleep(0.3)
        assert ep.frames_after(t) == [], f'frame {t + 1} came without its command'
        client.command(ep.stamp(t) - PERIOD_NS // 2, vx, vy)  # another frame's stamp: ignored
        time.sleep(0.2)
        assert ep.frames_after(t) == []
        client.command(ep.stamp(t), vx, vy)
        ep.wait(t + 1)
    pusher = np.array([ep.truth(t)[0] for t in range(len(commands) + 1)])  # (T, 2)
    step = np.diff(pusher, axis=0)  # (T - 1, 2) px per command
    assert np.abs(step[0]).max() < 0.05, f'zero command moved the pusher {step[0]}'
    assert np.all(step[1:4, 0] > 1.0), f'+x: {step[1:4]}'
    assert np.all(step[5:, 1] < -1.0), f'+y (image up): {step[4:]}'
    assert {ep.stamp(t) for t in range(len(commands) + 1)} <= set(clock)

    def waits() -> list[str] | None:  # command_ms of each frame, sent with the next one
        with client.lock:
            got = [client.seen.sim_frames.get(ep.stamp(t), {}) for t in range(len(commands) + 1)]
        return [v['command_ms'] for v in got] if all(got) else None

    client.session.wait_for('diagnostics of every frame', lambda: waits() is not None, TIMEOUT_S)
    first, *rest = waits()
    assert first == '', 'no wait before an episode'
    assert all(450.0 <= float(w) < 10_000.0 for w in rest), (
        f'each command came ~0.5 s late: {rest}'
    )
    node.check_alive()


def test_a_missing_command_is_a_missed_step(make_loop: Callable[..., Loop]) -> None:
    client, node, _ = make_loop()
    ep = start(client, seed=12)
    t0 = time.monotonic()
    ep.wait(1)
    assert time.monotonic() - t0 >= STEP_TIMEOUT_S - 0.3
    assert np.allclose(ep.truth(1)[0], ep.truth(0)[0], atol=0.05), 'a zero command'

    def missed() -> bool:
        with client.lock:
            status = client.seen.sim_status
        return status.get('step') == '1' and status.get('missed_steps') == '1'

    client.session.wait_for('diagnostics with the missed step', missed, TIMEOUT_S)
    with client.lock:
        assert client.seen.sim_status['command_ms'] == '', 'a missed step has no wait'


def test_a_reset_waits_for_the_command_of_the_frame_in_flight(
    make_loop: Callable[..., Loop],
) -> None:
    """/sim/reset holds the loop until the frame in flight has its command and does not step on
    it: no frame of the old episode follows the new task, which starts a period before the old
    episode's only frame (the old one never stepped)."""
    client, node, _ = make_loop(step_timeout=TIMEOUT_S, first_step_timeout=TIMEOUT_S,
                                drain_timeout=TIMEOUT_S)  # fmt: skip
    ep = start(client, seed=14)
    answer: dict[str, object] = {}
    reset = threading.Thread(
        target=lambda: answer.update(goal=client.reset(seed=15, timeout=TIMEOUT_S)))  # fmt: skip
    reset.start()
    time.sleep(1.5)
    assert reset.is_alive() and not answer, 'the reset did not wait for the frame in flight'
    sent = time.monotonic()
    client.command(ep.start, 0.3, 0.0)
    reset.join(TIMEOUT_S)
    waited = time.monotonic() - sent
    assert 'goal' in answer, f'no new episode {waited:.1f} s after the command'
    assert waited < TIMEOUT_S / 2, f'the reset took {waited:.1f} s after the command came'
    new = Episode(client, answer['goal'])
    assert new.start == START_NS - PERIOD_NS, 'the old episode stepped on the drained command'
    new.wait(0)
    with client.lock:
        assert sorted(client.seen.frame_times) == [new.start], 'only the new first frame'
    node.check_alive()


@pytest.mark.skipif(not MESSAGE_INFO, reason='rclpy without message info (before Iron)')
def test_the_client_keeps_only_what_was_published_after_the_task(
    make_loop: Callable[..., Loop],
) -> None:
    """Sim time restarts with every episode: a message of the old episode that the client takes
    after the new task carries a stamp of the new episode. It is dropped by its DDS source
    time, whether it is taken before the task (dropped when the task comes) or after."""
    from geometry_msgs.msg import Pose, PoseArray

    client, node, _ = make_loop()
    ep = start(client, seed=5)
    client.command(ep.start, 0.1, 0.0)
    ep.wait(1)
    task_source = client._task_source
    assert task_source > 0, 'the task came without a source timestamp'

    def truth(stamp: int, source: int) -> None:
        msg = PoseArray(poses=[Pose()])
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 10**9)
        client._on_truth(msg, {'source_timestamp': source})

    stale, fresh = ep.stamp(5), ep.stamp(6)
    truth(stale, task_source - 1)  # the old episode's, taken after the task
    truth(fresh, task_source + 1)
    with client.lock:
        assert stale not in client.seen.truth and fresh in client.seen.truth
        real = sorted(client.seen.truth)
    assert real == [ep.stamp(0), ep.stamp(1), fresh]
    # taken before the next task, published before it: the task drops them
    goal = PushGoal()
    client._on_goal(goal, {'source_timestamp': time.time_ns()})
    with client.lock:
        assert not client.seen.truth and not client.seen.frame_times, 'old entries kept'
        assert client.seen.goal is goal
    node.check_alive()


def test_predict_batch_is_the_simulated_future(make_loop: Callable[..., Loop]) -> None:
    client, node, _ = make_loop()
    ep = start(client, seed=13)
    n_b, n_steps = 3, 4
    actions = np.zeros((n_b, n_steps, 2), np.float32)
    actions[1, :, 0], actions[2, :, 1] = 0.3, -0.3
    response = client.predict_batch(actions, timeout=TIMEOUT_S)
    assert response.success, response.message
    k = len(ep.truth(0))
    assert (response.candidates, response.horizon, response.particles) == (n_b, n_steps, k)
    assert stamp_ns(response.header) == ep.start and response.dt == pytest.approx(0.1)
    u = np.asarray(response.u).reshape(n_b, n_steps, k)
    v = np.asarray(response.v).reshape(n_b, n_steps, k)
    assert np.all(np.asarray(response.presence) == 1.0) and len(response.presence) == u.size
    current = response.current.particles
    assert [p.id for p in current] == list(range(k))
    assert np.allclose([(p.u, p.v) for p in current], ep.truth(0), atol=1e-4)
    assert np.all(u[1, -1, 0] > u[0, -1, 0] + 2) and np.all(v[2, -1, 0] > v[0, -1, 0] + 2)
    for t in range(n_steps):  # the zero-command candidate is what really happens
        client.command(ep.stamp(t), 0.0, 0.0)
        ep.wait(t + 1)
        real = ep.truth(t + 1)
        assert np.allclose(np.stack([u[0, t], v[0, t]], -1), real, atol=1e-3), t
    request = PredictBatch.Request(horizon=3, candidates=2, actions=[0.0] * 5)
    future = client.predict_client.call_async(request)
    client.session.wait_for('the refused request', future.done, TIMEOUT_S)
    assert not future.result().success and 'actions' in future.result().message


def test_predict_batch_carries_the_perceptions_particles(make_loop: Callable[..., Loop]) -> None:
    """With particles_topic, /sim/predict_batch predicts the particles published for the current
    frame, with their ids and presence: one on the pusher moves with it, one on the empty table
    stays; without particles for the frame it refuses."""
    from dlp_ros.msg import Particle, ParticleArray

    topic = '/sim_test_particles'
    client, node, _ = make_loop(step_timeout=30.0, first_step_timeout=30.0,
                                particles_topic=topic, particles_timeout=1.0)  # fmt: skip
    ep = start(client, seed=21)
    xy = ep.truth(0)  # (K, 2)
    grid = [(u, v) for u in range(4, 61, 2) for v in range(4, 61, 2)]
    empty = max(grid, key=lambda g: np.hypot(*(xy - g).T).min())
    assert np.hypot(*(xy - empty).T).min() > 10.0
    refused = client.predict_batch(np.zeros((1, 2, 2)), timeout=TIMEOUT_S)
    assert not refused.success and topic in refused.message
    publisher = client.session.node.create_publisher(ParticleArray, topic, 10)
    particles = [
        Particle(id=7, u=float(xy[0, 0]) + 1.0, v=float(xy[0, 1]), transparency=0.9),
        Particle(id=9, u=float(empty[0]), v=float(empty[1]), transparency=0.6),
    ]
    msg = ParticleArray(header=ep.goal.header, image_width=64, image_height=64,
                        particles=particles)  # fmt: skip
    client.session.wait_for('the simulator to subscribe',
                            lambda: publisher.get_subscription_count() > 0, TIMEOUT_S)  # fmt: skip
    publisher.publish(msg)
    actions = np.zeros((2, 3, 2), np.float32)
    actions[1, :, 0] = 0.3
    response = client.predict_batch(actions, timeout=TIMEOUT_S)
    assert response.success, response.message
    assert [p.id for p in response.current.particles] == [7, 9] and response.particles == 2
    u = np.asarray(response.u).reshape(2, 3, 2)
    presence = np.asarray(response.presence).reshape(2, 3, 2)
    assert np.allclose(presence, [0.9, 0.6])
    assert np.allclose(u[0, :, 0], xy[0, 0] + 1.0, atol=0.1), 'zero command: the pusher stays'
    assert u[1, -1, 0] > u[1, 0, 0] + 2.0 > xy[0, 0] + 3.0, '+x moves the pusher particle'
    assert np.allclose(u[:, :, 1], empty[0]), 'the table does not move'
    node.check_alive()
