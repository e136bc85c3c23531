"""The tabletop driven by a controller: commands, state copies, rollouts, tasks, the lockstep
episode and the command gate (no ROS)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

pytest.importorskip('mujoco')

from dlp_ros.sim.lockstep import NS, CommandGate, LockstepSim  # noqa: E402
from dlp_ros.sim.tabletop import HALF, MAX_SPEED, TabletopScene, clip_command  # noqa: E402


@pytest.fixture
def scene() -> Iterator[TabletopScene]:
    s = TabletopScene(size=64)
    s.reset(np.random.default_rng(3))
    yield s
    s.close()


@pytest.fixture
def sim() -> Iterator[LockstepSim]:
    s = LockstepSim(size=64, fps=10.0, start_time_ns=5 * NS)
    yield s
    s.close()


def uv(scene: TabletopScene) -> np.ndarray:
    return np.array([(o.x, o.y) for o in scene.objects()])  # (K, 2)


def test_clip_command() -> None:
    assert np.allclose(clip_command(np.array([0.1, -0.2])), [0.1, -0.2])
    fast = clip_command(np.array([3.0, 4.0]))
    assert np.hypot(*fast) == pytest.approx(MAX_SPEED)
    assert np.allclose(fast / np.hypot(*fast), [0.6, 0.8])
    assert np.allclose(clip_command(np.array([np.nan, 0.1])), [0.0, 0.1])


@pytest.mark.parametrize(('command', 'axis', 'sign'),
                         [((0.2, 0.0), 0, 1), ((-0.2, 0.0), 0, -1), ((0.0, 0.2), 1, -1),
                          ((0.0, -0.2), 1, 1)])  # fmt: skip
def test_pusher_follows_the_command(scene: TabletopScene, command: tuple, axis: int,
                                    sign: int) -> None:  # fmt: skip
    """World +x is image right, world +y is image up; 0.2 m/s for 0.3 s moves it pixels."""
    before = uv(scene)[0]
    for _ in range(3):
        applied = scene.apply(np.array(command))
        assert np.allclose(applied, command)
    moved = uv(scene)[0] - before
    assert sign * moved[axis] > 2.0, moved
    assert abs(moved[1 - axis]) < 0.5 * abs(moved[axis]), moved


def test_rollout_matches_real_steps_and_leaves_the_scene(scene: TabletopScene) -> None:
    rng = np.random.default_rng(0)
    actions = rng.uniform(-0.3, 0.3, (4, 5, 2))  # (B, N, 2)
    actions[1] = 0.0
    state = scene.get_state()
    predicted = scene.rollout(actions)  # (B, N, K, 2)
    assert predicted.shape == (4, 5, len(scene.objects()), 2)
    assert np.array_equal(scene.get_state(), state), 'the rollout changed the scene'
    for b in (0, 1):
        scene.set_state(state)
        for n in range(5):
            scene.apply(actions[b, n])
            assert np.array_equal(uv(scene), predicted[b, n]), (b, n)
    assert not np.allclose(predicted[0, -1, 0], predicted[1, -1, 0]), 'commands had no effect'


def test_state_round_trip_continues_identically(scene: TabletopScene) -> None:
    state = scene.get_state()
    for _ in range(3):
        scene.apply(np.array([0.25, 0.1]))
    after = uv(scene)
    scene.set_state(state)
    for _ in range(3):
        scene.apply(np.array([0.25, 0.1]))
    assert np.array_equal(uv(scene), after)


def test_pixel_and_point_are_inverse(scene: TabletopScene) -> None:
    for xy in ([0.0, 0.0], [0.2, -0.1], [-0.17, 0.22]):
        z = 0.03
        px = scene.pixel_of(np.array(xy), z)
        assert np.allclose(scene.point_at(px, z), xy, atol=1e-9)
    centre = scene.centre(1)
    assert np.allclose(scene.pixel_of(centre[:2], centre[2]), uv(scene)[1])


def test_tasks_are_reachable_and_seeded() -> None:
    """Over many scenes: the object and the goal lie inside the workspace, clear of the walls,
    the goal is 6..16 cm away and clear of the other objects; the same seed, the same task."""
    scene = TabletopScene(size=64)
    try:
        for seed in range(40):
            scene.reset(np.random.default_rng(seed))
            task = scene.sample_task(np.random.default_rng(1000 + seed))
            xyz = np.array([scene.centre(i) for i in range(len(scene.objects()))])  # (K, 3)
            assert task.object_id >= 1
            assert np.max(np.abs(xyz[task.object_id, :2])) < HALF - 0.02
            assert np.max(np.abs(task.goal_xy)) < HALF - 0.02
            assert 0.06 <= np.hypot(*(task.goal_xy - xyz[task.object_id, :2])) <= 0.16
            others = [j for j in range(1, len(xyz)) if j != task.object_id]
            assert all(np.hypot(*(task.goal_xy - xyz[j, :2])) > 0.05 for j in others)
            assert np.all((task.goal_uv > 2) & (task.goal_uv < 62)), task.goal_uv
            assert np.allclose(task.start_uv, uv(scene)[task.object_id])
            again = scene.sample_task(np.random.default_rng(1000 + seed))
            assert np.array_equal(again.goal_uv, task.goal_uv)
        with pytest.raises(ValueError, match='object_id'):
            scene.sample_task(np.random.default_rng(0), object_id=99)
    finally:
        scene.close()


def test_episode_steps_and_time(sim: LockstepSim) -> None:
    ep = sim.reset(seed=7)
    first = ep.frame
    assert first.index == 0 and first.stamp_ns == 5 * NS
    assert ep.frame.rgb.shape == (64, 64, 3)
    start = np.array(ep.task.start_uv)
    assert np.allclose(start, [(o.x, o.y) for o in ep.frame.objects][ep.task.object_id])
    assert sim.distance() == pytest.approx(np.hypot(*(start - ep.task.goal_uv)))
    frame = sim.step((0.3, 0.0))
    assert (frame.index, frame.stamp_ns) == (1, 5 * NS + 100_000_000)
    frame = sim.step(None)
    assert frame.stamp_ns == 5 * NS + 200_000_000
    assert ep.missed == 1 and ep.commands == [(0.3, 0.0), (0.0, 0.0)]
    assert ep.frame is frame
    assert not np.array_equal(frame.rgb, first.rgb), 'the pusher moved: the image changed'
    again = sim.reset(seed=7)
    assert again.frame.stamp_ns == 5 * NS, 'time restarts with an episode'
    assert again.task == ep.task
    rgb = again.frame.rgb.copy()
    # that episode never stepped: the next one starts a period earlier (time still goes back)
    third = sim.reset(seed=7)
    assert third.frame.stamp_ns == 5 * NS - 100_000_000
    assert np.array_equal(third.frame.rgb, rgb)
    sim.step((0.0, 0.0))
    assert sim.reset(seed=8).frame.stamp_ns == 5 * NS - 100_000_000, 'last frame was at 5 s'
    sim.step((0.0, 0.0))
    sim.step((0.0, 0.0))
    assert sim.reset(seed=8).frame.stamp_ns == 5 * NS


def test_episode_with_a_given_goal(sim: LockstepSim) -> None:
    ep = sim.reset(seed=2, object_id=1, goal_uv=(20.0, 30.0), tolerance=4.0)
    assert (ep.task.object_id, ep.task.goal_uv, ep.task.tolerance) == (1, (20.0, 30.0), 4.0)
    with pytest.raises(ValueError, match='object_id'):
        sim.reset(seed=2, object_id=0, goal_uv=(20.0, 30.0))
    with pytest.raises(ValueError, match='goal'):
        sim.reset(seed=2, object_id=1, goal_uv=(20.0, 80.0))
    with pytest.raises(ValueError, match='tolerance'):
        sim.reset(seed=2, tolerance=0.0)


def test_predict_zero_candidate_is_the_next_frame(sim: LockstepSim) -> None:
    sim.reset(seed=4)
    sim.step((0.1, 0.1))
    actions = np.zeros((3, 2, 2))
    actions[0] = 0.3
    predicted = sim.predict(actions)  # (3, 2, K, 2)
    frame = sim.step((0.0, 0.0))
    assert np.array_equal(predicted[1, 0], [(o.x, o.y) for o in frame.objects])
    assert not np.array_equal(predicted[0, 0], predicted[1, 0])


def test_gate_hands_over_the_command_of_the_frame() -> None:
    gate = CommandGate()
    assert gate.offer(200, (0.1, 0.0)) and gate.offer(100, (0.2, 0.0))
    assert gate.wait(100, 0.01) == (0.2, 0.0)
    assert gate.wait(200, 0.01) == (0.1, 0.0)
    assert not gate.offer(150, (0.3, 0.0)), 'a command for an older frame is stale'
    t0 = time.monotonic()
    assert gate.wait(300, 0.05) is None
    assert time.monotonic() - t0 >= 0.05
    late = threading.Timer(0.05, gate.offer, args=(400, (0.0, 0.1)))
    late.start()
    assert gate.wait(400, 5.0) == (0.0, 0.1)


def test_gate_poke_wakes_the_waiter_and_restart_forgets() -> None:
    gate = CommandGate()
    gate.offer(600, (0.1, 0.1))
    timer = threading.Timer(0.05, gate.poke)
    timer.start()
    t0 = time.monotonic()
    assert gate.wait(700, 5.0) is None
    assert time.monotonic() - t0 < 2.0
    gate.poke()
    t0 = time.monotonic()
    assert gate.wait(700, 5.0) is None, 'a poke before the wait counts'
    assert time.monotonic() - t0 < 1.0
    assert not gate.offer(100, (0.2, 0.2))
    gate.offer(800, (0.3, 0.3))
    gate.restart()
    assert gate.offer(100, (0.2, 0.2)), 'time restarted: an early stamp is not stale'
    assert gate.wait(100, 0.01) == (0.2, 0.2)
    assert gate.wait(800, 0.01) is None, 'commands of the old episode are gone'


def test_particles_move_with_the_object_under_them() -> None:
    from dlp_ros.sim.lockstep import carried_by_objects
    from dlp_ros.sim.scene import ObjectState

    objects = [ObjectState(0, 'pusher', 10.0, 10.0, 4.0, True),
               ObjectState(1, 'box', 30.0, 10.0, 5.0, True)]  # fmt: skip
    predicted = np.zeros((2, 3, 2, 2))  # (B, N, K, 2)
    predicted[:, :, 0] = (10.0, 10.0)
    predicted[:, :, 1] = (30.0, 10.0)
    predicted[1, :, 0] = [(12.0, 10.0), (14.0, 10.0), (16.0, 10.0)]  # candidate 1 moves the pusher
    predicted[1, 2, 1] = (31.0, 12.0)  # ... and at the last step the box
    particles = np.array([[11.0, 9.0], [34.0, 11.0], [50.0, 50.0], [20.0, 10.0]])
    out = carried_by_objects(particles, objects, predicted)  # (B, N, P, 2)
    assert out.shape == (2, 3, 4, 2)
    assert np.array_equal(out[0], np.broadcast_to(particles, (3, 4, 2))), 'nothing moves'
    assert np.allclose(out[1, :, 0], [(13.0, 9.0), (15.0, 9.0), (17.0, 9.0)]), 'on the pusher'
    assert np.allclose(out[1, :, 1], [(34.0, 11.0), (34.0, 11.0), (35.0, 13.0)]), 'on the box'
    assert np.allclose(out[1, :, 2:], np.broadcast_to(particles[2:], (3, 2, 2))), 'on nothing'
