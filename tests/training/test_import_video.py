"""import-video turns a real video file (written here by OpenCV, lossless FFV1) into a real
rosbag2 camera recording that build-dataset reads, and refuses bad input without leaving
anything behind."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import Reader

from dlp_ros.image_codec import decode_compressed, decode_raw
from dlp_ros.offline.typestore import typestore
from dlp_training.__main__ import main
from dlp_training.data.dataset import Dataset

FPS = 5.0


def _video(path: Path, frames: int = 8, size: tuple[int, int] = (48, 36)) -> list[np.ndarray]:
    """Write ``frames`` random RGB frames (W, H = ``size``) losslessly; returns them."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'FFV1'), FPS, size)
    assert writer.isOpened(), 'this OpenCV cannot write FFV1'
    rng = np.random.default_rng(3)
    rgb = [rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8) for _ in range(frames)]
    for frame in rgb:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return rgb


def _images(bag: Path) -> list[tuple[int, object]]:
    store = typestore()
    with Reader(bag) as reader:
        return [(stamp, store.deserialize_cdr(raw, conn.msgtype))
                for conn, stamp, raw in reader.messages()]  # fmt: skip


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_every_frame_becomes_a_stamped_image(tmp_path: Path, storage: str) -> None:
    frames = _video(tmp_path / 'clip.avi')
    bag = tmp_path / 'bag'
    argv = ['import-video', str(tmp_path / 'clip.avi'), '--out', str(bag), '--storage', storage]
    assert main([*argv, '--frame-id', 'front', '--start-ns', '5000000000']) == 0
    images = _images(bag)
    assert len(images) == len(frames)
    stamps = [stamp for stamp, _ in images]
    assert stamps[0] == 5_000_000_000
    np.testing.assert_array_equal(np.diff(stamps), round(1e9 / FPS))
    for (stamp, msg), rgb in zip(images, frames, strict=True):
        assert msg.header.frame_id == 'front' and msg.encoding == 'rgb8'
        assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == stamp
        np.testing.assert_array_equal(
            decode_raw(msg.encoding, msg.height, msg.width, msg.step, msg.data), rgb
        )


def test_the_bag_builds_a_time_split_dataset(tmp_path: Path) -> None:
    frames = _video(tmp_path / 'clip.avi', frames=20)
    bag, data = tmp_path / 'bag', tmp_path / 'data'
    assert main(['import-video', str(tmp_path / 'clip.avi'), '--out', str(bag)]) == 0
    argv = ['build-dataset', '--bags', str(bag), '--topic', '/camera/image_raw', '--fps', '5',
            '--size', '16', '--split', '0.5,0.25,0.25', '--split-by', 'time']  # fmt: skip
    assert main([*argv, '--out', str(data), '--no-progress']) == 0
    dataset = Dataset.open(data)
    lengths = {split: sum(len(dataset.frames(ep.name)) for ep in dataset.episodes(split))
               for split in ('train', 'val', 'test')}  # fmt: skip
    assert lengths == {'train': 10, 'val': 5, 'test': 5}
    first = dataset.frames(dataset.episodes('train')[0].name)[0]
    expected = cv2.resize(frames[0], (16, 16), interpolation=cv2.INTER_AREA)
    assert np.abs(first.astype(int) - expected).max() <= 1


def test_shrunk_and_compressed(tmp_path: Path) -> None:
    _video(tmp_path / 'clip.avi', frames=3, size=(64, 32))
    bag = tmp_path / 'bag'
    argv = ['import-video', str(tmp_path / 'clip.avi'), '--out', str(bag), '--max-side', '32']
    assert main([*argv, '--compressed', 'png', '--topic', '/cam', '--fps', '2']) == 0
    store = typestore()
    with Reader(bag) as reader:
        assert [c.topic for c in reader.connections] == ['/cam/compressed']
        messages = [(s, store.deserialize_cdr(r, c.msgtype)) for c, s, r in reader.messages()]
    assert len(messages) == 3
    assert np.diff([s for s, _ in messages]).tolist() == [500_000_000] * 2  # --fps 2 wins
    assert decode_compressed(messages[0][1].format, messages[0][1].data).shape == (16, 32, 3)


@pytest.mark.parametrize(
    ('make', 'extra', 'message'),
    [
        (None, [], 'no such file'),
        ('text', [], 'OpenCV cannot open it'),
        ('video', ['--fps', '0'], '--fps must be'),
        ('video', ['--max-side', '2'], '--max-side must be >= 8'),
    ],
)
def test_bad_input_is_refused_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture, make: str | None, extra: list[str],
    message: str,
) -> None:  # fmt: skip
    video = tmp_path / 'clip.avi'
    if make == 'text':
        video.write_text('not a video')
    elif make == 'video':
        _video(video, frames=2)
    bag = tmp_path / 'bag'
    assert main(['import-video', str(video), '--out', str(bag), *extra]) == 2
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if make is None else ['clip.avi'])


def test_an_existing_bag_is_kept(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _video(tmp_path / 'clip.avi', frames=2)
    bag = tmp_path / 'bag'
    bag.mkdir()
    (bag / 'keep.txt').write_text('precious')
    assert main(['import-video', str(tmp_path / 'clip.avi'), '--out', str(bag)]) == 2
    assert 'already exists' in capsys.readouterr().err
    assert (bag / 'keep.txt').read_text() == 'precious'
    assert (
        main(['import-video', str(tmp_path / 'clip.avi'), '--out', str(bag), '--overwrite']) == 0
    )
    assert len(_images(bag)) == 2
