"""record-synthetic writes real rosbag2 episodes (mcap and sqlite3) with ground truth beside them,
and never leaves a partial recording behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from rosbags.rosbag2 import Reader

from dlp_ros.image_codec import decode_compressed, decode_raw
from dlp_ros.offline.typestore import typestore
from dlp_training.__main__ import main
from dlp_training.data.balls import BallsScene
from dlp_training.data.ground_truth import gt_path, read_ground_truth


def _messages(bag: Path) -> dict[str, list[tuple[int, object]]]:
    store = typestore()
    out: dict[str, list[tuple[int, object]]] = {}
    with Reader(bag) as reader:
        for conn, stamp, raw in reader.messages():
            out.setdefault(conn.topic, []).append(
                (stamp, store.deserialize_cdr(raw, conn.msgtype))
            )
    return out


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_balls_bags_hold_the_scene_frames_and_ground_truth(tmp_path: Path, storage: str) -> None:
    out = tmp_path / 'rec'
    argv = ['record-synthetic', 'balls', '--episodes', '2', '--frames', '12', '--out', str(out)]
    assert main([*argv, '--storage', storage, '--seed', '4']) == 0
    summary = yaml.safe_load((out / 'record.yaml').read_text())
    assert summary['episodes'] == 2 and summary['storage'] == storage
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith('.')) == [
        'episode_0000', 'episode_0000.gt.csv', 'episode_0001', 'episode_0001.gt.csv',
        'record.yaml',
    ]  # fmt: skip
    suffix = '.mcap' if storage == 'mcap' else '.db3'
    assert (out / 'episode_0001' / f'episode_0001{suffix}').is_file()

    scene = BallsScene()
    scene.reset(np.random.default_rng(4 + 1))  # episode 1 uses seed + 1
    messages = _messages(out / 'episode_0001')
    assert list(messages) == ['/camera/image_raw']
    images = messages['/camera/image_raw']
    assert len(images) == 12
    truth = read_ground_truth(gt_path(out / 'episode_0001'))
    for t, (stamp, msg) in enumerate(images):
        frame = scene.step()
        assert msg.header.frame_id == 'camera' and msg.encoding == 'rgb8'
        assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == stamp
        rgb = decode_raw(msg.encoding, msg.height, msg.width, msg.step, msg.data)
        np.testing.assert_array_equal(rgb, frame.rgb)
        assert truth.stamps_ns[t] == stamp
        np.testing.assert_allclose(truth.xy[t], [(o.x, o.y) for o in frame.objects], atol=1e-3)
    assert np.allclose(np.diff([s for s, _ in images]), 1e8)  # 10 Hz


def test_compressed_recording(tmp_path: Path) -> None:
    out = tmp_path / 'rec'
    argv = ['record-synthetic', 'balls', '--episodes', '1', '--frames', '3', '--out', str(out)]
    assert main([*argv, '--compressed', 'png', '--size', '128']) == 0
    messages = _messages(out / 'episode_0000')
    (_, msg), *_ = messages['/camera/image_raw/compressed']
    assert msg.format == 'png'
    assert decode_compressed(msg.format, msg.data).shape == (128, 128, 3)


def test_existing_output_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / 'rec'
    out.mkdir()
    (out / 'keep.txt').write_text('precious')
    argv = ['record-synthetic', 'balls', '--episodes', '1', '--frames', '3', '--out', str(out)]
    assert main(argv) == 2
    assert 'already exists' in capsys.readouterr().err
    assert (out / 'keep.txt').read_text() == 'precious'


def test_failure_mid_recording_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {'n': 0}
    original = BallsScene.step

    def failing_step(self: BallsScene):  # a fault injected into the real scene
        calls['n'] += 1
        if calls['n'] == 15:
            raise RuntimeError('renderer died')
        return original(self)

    monkeypatch.setattr(BallsScene, 'step', failing_step)
    out = tmp_path / 'rec'
    argv = ['record-synthetic', 'balls', '--episodes', '3', '--frames', '10', '--out', str(out)]
    with pytest.raises(RuntimeError, match='renderer died'):
        main(argv)
    assert list(tmp_path.iterdir()) == [], 'a partial recording was left behind'


@pytest.mark.parametrize(
    ('extra', 'message'),
    [
        (['--episodes', '0'], '--episodes must be >= 1'),
        (['--frames', '1'], '--frames must be'),
        (['--command-noise', '0.1'], 'the balls scene takes no commands'),
        (['--command-noise', '-1'], '--command-noise must be finite and >= 0'),
        (['--branches', '2'], '--branches needs the tabletop scene'),
        (['--branches', '-1'], '--branches must be >= 0'),
        (['--branch-kinds', 'plan,push'], '--branch-kinds must be a comma-separated list of'),
    ],  # fmt: skip
)
def test_bad_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str
) -> None:
    argv = ['record-synthetic', 'balls', '--episodes', '1', '--out', str(tmp_path / 'r'), *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / 'r').exists()


def _branch_bag(bag: Path) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Images, commands (T, 2) and ground-truth centres (T, n, 2) of a recorded bag."""
    messages = _messages(bag)
    images = [decode_raw(m.encoding, m.height, m.width, m.step, m.data)
              for _, m in messages['/camera/image_raw']]  # fmt: skip
    commands = np.array([(m.twist.linear.x, m.twist.linear.y)
                         for _, m in messages['/tabletop/command']])  # fmt: skip
    return images, commands, read_ground_truth(gt_path(bag)).xy


def test_tabletop_branches_share_the_trunk_and_differ_by_command(tmp_path: Path) -> None:
    """--branches: K bags per branch point, each the trunk's frames up to the point (those of
    the plain recording of the same seed) then frames of its own commands, physically
    consistent: a branch replayed from the same state with its recorded commands is met."""
    from dlp_ros.sim.tabletop import MAX_SPEED, TabletopScene
    from dlp_training.data.branches import CONTEXT

    plain, branched = tmp_path / 'plain', tmp_path / 'branched'
    argv = ['record-synthetic', 'tabletop', '--episodes', '1', '--frames', '16', '--seed', '7']
    assert main([*argv, '--out', str(plain)]) == 0
    assert main([*argv, '--out', str(branched), '--branches', '3', '--branch-every', '8',
                 '--branch-frames', '5']) == 0  # fmt: skip
    summary = yaml.safe_load((branched / 'record.yaml').read_text())
    assert summary['branches']['points'] == [8] and summary['branches']['bags'] == 3
    bags = sorted(p.name for p in branched.iterdir() if p.is_dir())
    assert bags == ['episode_0000_t008_b0', 'episode_0000_t008_b1', 'episode_0000_t008_b2']

    trunk_images, trunk_commands, trunk_xy = _branch_bag(plain / 'episode_0000')
    branches = [_branch_bag(branched / name) for name in bags]
    first = 8 - CONTEXT  # the trunk frame each branch starts at
    for images, commands, xy in branches:
        assert len(images) == len(commands) == CONTEXT + 1 + 5
        for t in range(CONTEXT + 1):  # the shared past: the trunk's frames, the point included
            np.testing.assert_array_equal(images[t], trunk_images[first + t])
        np.testing.assert_allclose(commands[:CONTEXT], trunk_commands[first:8], atol=1e-6)
        np.testing.assert_allclose(xy[: CONTEXT + 1], trunk_xy[first : 8 + 1], atol=1e-3)
        assert np.all(np.hypot(*commands.T) <= MAX_SPEED + 1e-6)
    # The branches' commands differ from each other from the point on, and so do their pushers.
    after = np.stack([c[CONTEXT:] for _, c, _ in branches])  # (3, 6, 2)
    assert np.min(np.abs(after[0] - after[1]).sum(axis=-1)) > 0
    pushers = np.stack([xy[-1, 0] for _, _, xy in branches])  # (3, 2) px, id 0
    assert np.max(np.hypot(*(pushers[:, None] - pushers[None]).reshape(-1, 2).T)) > 1.0

    # Each branch is the simulator's answer to its commands: replay from the trunk's state.
    scene = TabletopScene(size=64)
    try:
        scene.reset(np.random.default_rng(7))
        for _ in range(8 + 1):
            scene.step()
        state = scene.get_state()
        for images, commands, xy in branches:
            scene.set_state(state)
            for j in range(5):
                scene.apply(commands[CONTEXT + j])
            np.testing.assert_array_equal(scene.render(), images[-1])
            np.testing.assert_allclose([(o.x, o.y) for o in scene.objects()], xy[-1], atol=1e-3)
    finally:
        scene.close()


def test_branch_commands_follow_the_plan_or_hold_a_heading() -> None:
    from dlp_ros.sim.tabletop import MAX_SPEED
    from dlp_training.data.branches import branch_commands

    rng = np.random.default_rng(0)
    planned = np.array([[0.1, 0.0], [0.2, 0.1], [0.5, 0.0]])  # the last one over the limit
    plan = branch_commands(rng, planned, 'plan', noise=0.0)
    np.testing.assert_allclose(plan[:2], planned[:2])
    np.testing.assert_allclose(plan[2], [MAX_SPEED, 0.0])
    heading = branch_commands(rng, planned, 'heading', noise=0.0)
    assert np.allclose(heading, heading[0]) and np.hypot(*heading[0]) <= MAX_SPEED
    noisy = branch_commands(rng, planned, 'heading', noise=0.1)
    assert np.all(np.hypot(*noisy.T) <= MAX_SPEED + 1e-9) and not np.allclose(noisy, noisy[0])
    with pytest.raises(ValueError, match='unknown branch kind'):
        branch_commands(rng, planned, 'spiral', noise=0.0)


def test_branches_without_a_branch_point_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / 'r'
    argv = ['record-synthetic', 'tabletop', '--episodes', '1', '--frames', '6', '--out', str(out)]
    assert main([*argv, '--branches', '2']) == 2
    assert '--branches has no branch point in 6 frames' in capsys.readouterr().err
    assert not out.exists()


def test_graze_commands_aim_beside_an_object() -> None:
    """graze: a held velocity from the pusher toward a point beside a (near) object, offset
    across the approach by up to GRAZE_SPAN contact distances: head-on, grazing and missing
    pushes on both sides, at speeds within [GRAZE_SPEED, MAX_SPEED]."""
    pytest.importorskip('mujoco')
    from dlp_ros.sim.tabletop import MAX_SPEED
    from dlp_training.data.branches import GRAZE_SPAN, GRAZE_SPEED, branch_commands

    xy = np.array([[0.0, 0.0], [0.2, 0.0], [0.0, -0.4]])  # m: pusher, a near and a far object
    radii = np.array([0.035, 0.03, 0.03])
    contact = radii[0] + radii[1]
    rng = np.random.default_rng(0)
    offsets, speeds, near = [], [], 0
    for _ in range(400):
        v = branch_commands(rng, np.zeros((5, 2)), 'graze', 0.0, (xy, radii))  # (5, 2)
        assert np.allclose(v, v[0]), 'one velocity held'
        speeds.append(np.hypot(*v[0]))
        if v[0, 0] > abs(v[0, 1]):  # toward the near object (+x): its offset there
            near += 1
            offsets.append(0.2 * v[0, 1] / v[0, 0] / contact)
    offsets = np.array(offsets)
    assert near > 0.6 * 400, 'the near object is aimed at more often'
    assert np.all(np.abs(offsets) <= GRAZE_SPAN + 1e-6)
    assert (offsets < -1).any() and (offsets > 1).any(), 'misses on both sides'
    assert (np.abs(offsets) < 0.5).any() and (
        (np.abs(offsets) > 0.7) & (np.abs(offsets) < 1)
    ).any()
    assert min(speeds) >= GRAZE_SPEED - 1e-9 and max(speeds) <= MAX_SPEED + 1e-9
    with pytest.raises(ValueError, match='layout'):
        branch_commands(rng, np.zeros((5, 2)), 'graze', 0.0)
