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
    ],  # fmt: skip
)
def test_bad_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str
) -> None:
    argv = ['record-synthetic', 'balls', '--episodes', '1', '--out', str(tmp_path / 'r'), *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / 'r').exists()
