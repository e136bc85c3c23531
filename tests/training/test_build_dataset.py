"""build-dataset on real rosbag2 bags (mcap and sqlite3) written with BagWriter."""

from __future__ import annotations

import logging
import sqlite3
import struct
import zlib
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.enums import CompressionFormat, CompressionMode
from rosbags.rosbag2.storage_mcap import ChunkInfo, McapReader

from dlp_ros.image_codec import resize_rgb
from dlp_ros.input_view import resize_frame
from dlp_ros.offline.bag_writer import BagWriter
from dlp_ros.offline.typestore import typestore
from dlp_training.__main__ import main
from dlp_training.data.dataset import Dataset, DatasetError
from dlp_training.data.episode_plan import assign_splits

CAMERA = '/camera/image'  # the topic make_camera_bag writes (conftest.py)
NS = 1_000_000_000
MakeBag = Callable[..., Any]  # conftest.make_camera_bag
# the encodings make_camera_bag writes as a camera driver would (conftest.camera_bytes)
CAMERA_ENCODINGS = ('yuv422', 'uyvy', 'yuv422_yuy2', 'yuyv', 'bayer_rggb8', 'bayer_bggr8',
                    'bayer_gbrg8', 'bayer_grbg8', 'mono16', '16UC1')  # fmt: skip
STORAGES = ('mcap', 'sqlite3')
RAW = ('rgb8', 'bgr8', 'mono8', 'rgba8', 'bgra8')


def build(*args: object) -> int:
    return main(['build-dataset', *(str(a) for a in args), '--no-progress'])


def build_bag(bag_path: Path, out: Path, *extra: object, fps: float = 10, size: int = 32) -> int:
    return build('--bags', bag_path, '--topic', CAMERA, '--size', size, '--fps', fps, '--out', out,
                 *extra)  # fmt: skip


def only_episode(out: Path) -> tuple[Dataset, str]:
    ds = Dataset.open(out)
    (info,) = ds.episodes()
    return ds, info.name


def expected_pixels(rgb: np.ndarray, encoding: str) -> np.ndarray:
    if encoding == 'mono8':
        return np.repeat(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=-1)
    return rgb


@pytest.mark.parametrize('storage', STORAGES)
@pytest.mark.parametrize('encoding', (*RAW, 'png', 'jpeg'))
def test_frames_equal_source_pixels(
    make_camera_bag: MakeBag, tmp_path: Path, storage: str, encoding: str
) -> None:
    bag = make_camera_bag(storage=storage, encoding=encoding, n=8)
    assert build_bag(bag.path, tmp_path / 'ds') == 0
    ds, name = only_episode(tmp_path / 'ds')
    frames = ds.frames(name)  # (8, 32, 32, 3)
    assert frames.shape == (8, 32, 32, 3) and frames.dtype == np.uint8
    for got, src in zip(frames, bag.frames, strict=True):
        want = expected_pixels(src, encoding)
        if encoding == 'jpeg':
            diff = np.abs(got.astype(int) - want)
            assert diff.mean() < 2.0 and diff.max() < 40
        else:
            np.testing.assert_array_equal(got, want)
    assert ds.labels(name).stamps_ns.tolist() == bag.stamps_ns
    compressed = encoding in ('png', 'jpeg')
    assert ds.message_type == f'sensor_msgs/msg/{"CompressedImage" if compressed else "Image"}'
    assert ds.manifest['sources'][0]['storage'] == storage
    assert ds.manifest['sources'][0]['encoding'] == encoding


@pytest.mark.parametrize('encoding', CAMERA_ENCODINGS)
def test_camera_encodings_are_decoded(
    make_camera_bag: MakeBag, tmp_path: Path, encoding: str
) -> None:
    """4:2:2, Bayer and 16-bit frames (real bytes: tests/training/conftest.camera_bytes) go
    through the builder to close to their source pixels (grey for the 16-bit ones)."""
    bag = make_camera_bag(encoding=encoding, n=3)
    assert build_bag(bag.path, tmp_path / 'ds') == 0
    ds, name = only_episode(tmp_path / 'ds')
    assert ds.manifest['sources'][0]['encoding'] == encoding
    for got, src in zip(ds.frames(name), bag.frames, strict=True):
        want = expected_pixels(src, 'mono8' if encoding in ('mono16', '16UC1') else 'rgb8')
        inner = (slice(2, -2), slice(2, -2))  # demosaicing guesses at the border
        assert np.abs(got[inner].astype(int) - want[inner]).max() <= 12


@pytest.mark.parametrize('mode', ['squash', 'crop', 'pad'])
def test_resize_mode_is_applied_and_recorded(
    make_camera_bag: MakeBag, tmp_path: Path, mode: str
) -> None:
    """--resize makes the frames as the runtime does (dlp_ros.input_view.resize_frame) and goes
    into the manifest, whence export puts it in the model card."""
    bag = make_camera_bag(size=(48, 64), n=3)
    extra = () if mode == 'squash' else ('--resize', mode)  # squash is the default
    assert build_bag(bag.path, tmp_path / 'ds', *extra, size=24) == 0
    ds, name = only_episode(tmp_path / 'ds')
    assert ds.manifest['resize'] == ds.resize == mode
    for got, src in zip(ds.frames(name), bag.frames, strict=True):
        np.testing.assert_array_equal(got, resize_frame(src, 24, mode))
    if mode == 'pad':  # 8 black rows of 64 above and below: 3 of 24
        assert (ds.frames(name)[:, :3] == 0).all() and (ds.frames(name)[:, -3:] == 0).all()


def test_frames_are_resized(make_camera_bag: MakeBag, tmp_path: Path) -> None:
    bag = make_camera_bag(size=(48, 64), n=3)
    assert build_bag(bag.path, tmp_path / 'ds', size=24) == 0
    ds, name = only_episode(tmp_path / 'ds')
    assert ds.frame_shape == (24, 24, 3)
    for got, src in zip(ds.frames(name), bag.frames, strict=True):
        np.testing.assert_array_equal(got, resize_rgb(src, 24))


@pytest.mark.parametrize('storage', STORAGES)
def test_resample_30_to_10_keeps_every_third_frame(
    make_camera_bag: MakeBag, tmp_path: Path, storage: str
) -> None:
    bag = make_camera_bag(storage=storage, n=30, fps=30)
    assert build_bag(bag.path, tmp_path / 'ds', fps=10) == 0
    ds, name = only_episode(tmp_path / 'ds')
    labels = ds.labels(name)
    assert labels.source_index.tolist() == list(range(0, 30, 3))
    assert labels.grid_ns.tolist() == [NS + k * NS // 10 for k in range(10)]
    for k, got in enumerate(ds.frames(name)):
        np.testing.assert_array_equal(got, bag.frames[3 * k])
    assert ds.manifest['sources'][0]['fps'] == pytest.approx(30, rel=1e-3)
    assert ds.manifest['episodes'][0]['source_fps'] == pytest.approx(30, rel=1e-3)


def test_slower_source_repeats_frames_and_says_so(
    make_camera_bag: MakeBag, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bag = make_camera_bag(n=5, fps=5)
    with caplog.at_level(logging.INFO):
        assert build_bag(bag.path, tmp_path / 'ds', fps=10) == 0
    ds, name = only_episode(tmp_path / 'ds')
    assert ds.labels(name).source_index.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4]
    assert ds.manifest['episodes'][0]['repeated_frames'] == 4
    assert (
        'slower than --fps 10' in caplog.text and 'repeats a source frame in 4 of 9' in caplog.text
    )


def test_drops_are_reported(
    make_camera_bag: MakeBag, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stamps = [NS + k * NS // 10 for k in range(20) if k not in (8, 9, 10)]
    bag = make_camera_bag(stamps_ns=stamps)
    with caplog.at_level(logging.INFO):
        assert build_bag(bag.path, tmp_path / 'ds') == 0
    assert 'about 3 dropped frames' in caplog.text and '~10.00 fps' in caplog.text
    ds, name = only_episode(tmp_path / 'ds')
    assert ds.episode(name).frames == 20
    assert ds.manifest['sources'][0]['dropped_frames'] == 3


def test_gap_splits_episodes(
    make_camera_bag: MakeBag, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stamps = [NS + k * NS // 10 for k in range(6)] + [4 * NS + k * NS // 10 for k in range(4)]
    bag = make_camera_bag(stamps_ns=stamps)
    with caplog.at_level(logging.INFO):
        assert build_bag(bag.path, tmp_path / 'ds', '--split-gap', 0.5) == 0
    assert 'dropped' not in caplog.text and '2 episode(s)' in caplog.text
    eps = Dataset.open(tmp_path / 'ds').episodes()
    assert [(e.name, e.frames, e.start_ns, e.end_ns) for e in eps] == [
        ('ep_000', 6, stamps[0], stamps[5]),
        ('ep_001', 4, stamps[6], stamps[9]),
    ]
    assert build_bag(bag.path, tmp_path / 'one') == 0  # no --split-gap: one episode over the gap
    assert only_episode(tmp_path / 'one')[0].episodes()[0].frames == 34  # 1.0 s .. 4.3 s


@pytest.mark.parametrize(
    ('storage', 'marker_type'),
    [('mcap', 'std_msgs/msg/Empty'), ('sqlite3', 'std_msgs/msg/Header')],
)
def test_marker_topic_splits_episodes(
    make_camera_bag: MakeBag, tmp_path: Path, storage: str, marker_type: str
) -> None:
    stamps = [NS + k * NS // 10 for k in range(12)]
    marks = [stamps[0] - 50_000_000, stamps[4] - 10_000_000, stamps[9]]

    def markers(w: BagWriter) -> None:
        for t in marks:  # Empty: the bag time counts; Header: its stamp (bag time differs)
            msg = (
                w.store.types[marker_type]() if marker_type.endswith('Empty') else w.header(t, '')
            )
            w.write('/episode_start', t if marker_type.endswith('Empty') else t + 7 * NS, msg)

    topics = {'/episode_start': marker_type}
    bag = make_camera_bag(storage=storage, stamps_ns=stamps, topics=topics, extra=markers)
    assert build_bag(bag.path, tmp_path / 'ds', '--marker-topic', '/episode_start') == 0
    ds = Dataset.open(tmp_path / 'ds')
    got = [ds.labels(e.name).source_index.tolist() for e in ds.episodes()]
    assert got == [[0, 1, 2, 3], [4, 5, 6, 7, 8], [9, 10, 11]]


def _action_msg(w: BagWriter, msgtype: str, t: int, k: int) -> object:
    types = w.store.types
    if msgtype.startswith('geometry_msgs'):
        vec = types['geometry_msgs/msg/Vector3']
        twist = types['geometry_msgs/msg/Twist'](linear=vec(x=k, y=0, z=0), angular=vec(0, 0, -k))
        if msgtype.endswith('Stamped'):
            return types[msgtype](header=w.header(t, 'base'), twist=twist)
        return twist
    layout = types['std_msgs/msg/MultiArrayLayout'](dim=[], data_offset=0)
    dtype = np.float32 if '32' in msgtype else np.float64
    return types[msgtype](layout=layout, data=np.array([k, 2 * k, 3 * k], dtype=dtype))


@pytest.mark.parametrize(
    'action_type',
    [
        'geometry_msgs/msg/TwistStamped',
        'geometry_msgs/msg/Twist',
        'std_msgs/msg/Float32MultiArray',
        'std_msgs/msg/Float64MultiArray',
    ],
)
def test_ground_truth_and_actions_follow_kept_frames(
    make_camera_bag: MakeBag, tmp_path: Path, action_type: str
) -> None:
    times = [NS + 20_000_000 + k * NS // 20 for k in range(30)]  # 20 Hz commands, 20 ms late

    def actions(w: BagWriter) -> None:
        for k, t in enumerate(times):
            w.write('/cmd', t, _action_msg(w, action_type, t, k))

    bag = make_camera_bag(n=45, fps=30, gt=True, topics={'/cmd': action_type}, extra=actions)
    assert build_bag(bag.path, tmp_path / 'ds', '--action-topic', '/cmd') == 0
    ds, name = only_episode(tmp_path / 'ds')
    labels = ds.labels(name)
    kept = list(range(0, 45, 3))
    assert labels.source_index.tolist() == kept
    gt = labels.ground_truth
    assert gt is not None and gt.names == ['red', 'blue'] and gt.ids.tolist() == [0, 1]
    for row, src in enumerate(kept):
        objs = bag.objects[src]
        np.testing.assert_allclose(gt.xy[row], [[o.x, o.y] for o in objs])
        assert gt.visible[row].tolist() == [o.visible for o in objs]
        last = max((k for k, t in enumerate(times) if t <= bag.stamps_ns[src]), default=None)
        assert labels.action_valid[row] == (last is not None)
        if last is not None:
            want = (
                [last, 0, 0, 0, 0, -last] if 'Twist' in action_type else [last, 2 * last, 3 * last]
            )
            np.testing.assert_allclose(labels.actions[row], want)
    assert not labels.action_valid[0] and labels.action_valid[1:].all()
    assert ds.manifest['action']['dim'] == (6 if 'Twist' in action_type else 3)
    assert ds.manifest['ground_truth'] is True


def test_split_is_deterministic_by_episode(make_camera_bag: MakeBag, tmp_path: Path) -> None:
    stamps = [NS * (1 + 3 * e) + k * NS // 10 for e in range(10) for k in range(2)]
    bag = make_camera_bag(stamps_ns=stamps)

    def splits(out: str, seed: int) -> dict[str, str]:
        assert build_bag(bag.path, tmp_path / out, '--split-gap', 1, '--seed', seed) == 0
        return {e.name: e.split for e in Dataset.open(tmp_path / out).episodes()}

    first, again = splits('a', 0), splits('b', 0)
    assert first == again and len(first) == 10
    assert sorted(first.values()) == ['test'] + ['train'] * 8 + ['val']
    assert any(splits(f's{seed}', seed) != first for seed in (1, 2, 3))
    names = ['c', 'a', 'b']
    three = assign_splits(names, (0.8, 0.1, 0.1), seed=0)
    assert sorted(three.values()) == ['test', 'train', 'val']
    assert assign_splits(names[::-1], (0.8, 0.1, 0.1), seed=0) == three
    assert assign_splits(['x'], (0.8, 0.1, 0.1), seed=0) == {'x': 'train'}


def test_split_by_time_cuts_each_recording(make_camera_bag: MakeBag, tmp_path: Path) -> None:
    """--split-by time: per bag, the first 60 % of its frames train, then 20 % val, then 20 %
    test, the frames and stamps in order; an episode inside one part keeps its name."""
    a = make_camera_bag('a', n=20)
    b = make_camera_bag('b', storage='sqlite3', n=10)
    assert (
        build(
            '--bags',
            a.path,
            b.path,
            '--topic',
            CAMERA,
            '--fps',
            10,
            '--size',
            32,
            '--split',
            '0.6,0.2,0.2',
            '--split-by',
            'time',
            '--out',
            tmp_path / 'ds',
        )
        == 0
    )
    ds = Dataset.open(tmp_path / 'ds')
    got = [(e.name, e.split, e.frames) for e in ds.episodes()]
    assert got == [
        ('a_train', 'train', 12),
        ('a_val', 'val', 4),
        ('a_test', 'test', 4),
        ('b_train', 'train', 6),
        ('b_val', 'val', 2),
        ('b_test', 'test', 2),
    ]
    for bag, name in ((a, 'a'), (b, 'b')):
        frames = np.concatenate([ds.frames(f'{name}_{s}') for s in ('train', 'val', 'test')])
        np.testing.assert_array_equal(frames, np.stack(bag.frames))
        stamps = np.concatenate([ds.labels(f'{name}_{s}').stamps_ns
                                 for s in ('train', 'val', 'test')])  # fmt: skip
        assert stamps.tolist() == bag.stamps_ns
    assert ds.manifest['split'] == {'by': 'time', 'fractions': [0.6, 0.2, 0.2]}

    stamps = [NS + k * NS // 10 for k in range(10)] + [3 * NS + k * NS // 10 for k in range(10)]
    gap = make_camera_bag('gap', stamps_ns=stamps)  # two episodes of one recording
    assert build_bag(gap.path, tmp_path / 'gap', '--split-gap', 0.5, '--split', '0.5,0.25,0.25',
                     '--split-by', 'time') == 0  # fmt: skip
    got = [(e.name, e.split, e.frames) for e in Dataset.open(tmp_path / 'gap').episodes()]
    assert got == [('gap_000', 'train', 10), ('gap_001_val', 'val', 5),
                   ('gap_001_test', 'test', 5)]  # fmt: skip


def test_split_by_episode_names(
    make_camera_bag: MakeBag, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    b = make_camera_bag('ep_b', storage='sqlite3', n=4)
    bags = [make_camera_bag('ep_a', n=3).path, b.path, make_camera_bag('ep_c', n=3).path]
    names = tmp_path / 'names.yaml'

    def with_file(text: str, out: str, *extra: object) -> int:
        names.write_text(text)
        return build('--bags', *bags, '--topic', CAMERA, '--fps', 10, '--split-file', names,
                     '--out', tmp_path / out, *extra)  # fmt: skip

    assert with_file('train: [ep_a, ep_c]\ntest: [ep_b]\n', 'ds') == 0
    ds = Dataset.open(tmp_path / 'ds')
    assert {e.name: e.split for e in ds.episodes()} == {
        'ep_a': 'train', 'ep_b': 'test', 'ep_c': 'train'}  # fmt: skip
    assert ds.manifest['split'] == {'by': 'names', 'file': str(names.resolve())}
    assert with_file('test: [ep_b]\nrest: train\n', 'rest') == 0
    assert {e.name: e.split for e in Dataset.open(tmp_path / 'rest').episodes()} == {
        'ep_a': 'train', 'ep_b': 'test', 'ep_c': 'train'}  # fmt: skip
    for text, needle in (
        (
            'train: [ep_a, ep_c, ep_x]\ntest: [ep_b]',
            'no episode named ep_x; the episodes are ep_a, ep_b, ep_c',
        ),
        ('train: [ep_a]\ntest: [ep_b]', 'episode(s) ep_c in no split'),
        ('train: [ep_a]\nrest: training', 'rest must be one of train, val, test'),
        ('train: [ep_a, ep_b]\nval: [ep_c]\ntest: [ep_b]', "'ep_b' is listed in train and test"),
        ('training: [ep_a]', 'expected a mapping of train, val and test'),
        ('train: ep_a', 'train must be a list of episode names'),
    ):
        assert with_file(text, 'bad') == 2
        assert_fails(capsys, tmp_path / 'bad', needle)
    assert with_file('train: [ep_a, ep_b, ep_c]', 'bad', '--split-by', 'time') == 2
    assert_fails(capsys, tmp_path / 'bad', 'drop --split-by')


def test_manifest_statistics(make_camera_bag: MakeBag, tmp_path: Path) -> None:
    a = make_camera_bag('a', n=5, fps=5)  # upsampled: repeated frames count as often as kept
    b = make_camera_bag('b', storage='sqlite3', encoding='bgr8', n=7)
    assert build('--bags', a.path, b.path, '--topic', CAMERA, '--size', 16, '--fps', 10,
                 '--out', tmp_path / 'ds') == 0  # fmt: skip
    ds = Dataset.open(tmp_path / 'ds')
    pixels = np.concatenate([ds.frames(e.name).reshape(-1, 3) for e in ds.episodes()]) / 255.0
    np.testing.assert_allclose(ds.mean, pixels.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(ds.std, pixels.std(axis=0), rtol=1e-4)
    assert ds.manifest['stats']['frames'] == 9 + 7
    assert ds.manifest['args']['fps'] == 10 and ds.manifest['frame_shape'] == [16, 16, 3]
    assert [s['bag'] for s in ds.manifest['sources']] == [str(a.path), str(b.path)]


def test_dataset_reader_validates(make_camera_bag: MakeBag, tmp_path: Path) -> None:
    bag = make_camera_bag(n=4)
    out = tmp_path / 'ds'
    assert build_bag(bag.path, out) == 0
    ds, name = only_episode(out)
    assert len(ds) == 1 and ds.episodes('train')[0].name == name and ds.episodes('test') == []
    assert ds.labels(name).ground_truth is None and ds.labels(name).actions is None
    manifest_path = out / 'manifest.yaml'
    good = yaml.safe_load(manifest_path.read_text())
    with pytest.raises(DatasetError, match='manifest.yaml does not exist'):
        Dataset.open(tmp_path)
    for change, message in [
        ({'version': 99}, 'dataset version 99 not supported'),
        ({'fps': 'fast'}, "field 'fps' has the wrong type"),
        ({'frame_shape': [8, 8]}, r'frame_shape must be \[S, S, 3\]'),
        ({'episodes': [{'name': name}]}, r"episodes\[0\]: missing field 'bag'"),
    ]:
        manifest_path.write_text(yaml.safe_dump({**good, **change}))
        with pytest.raises(DatasetError, match=message):
            Dataset.open(out)
    manifest_path.write_text(yaml.safe_dump({k: v for k, v in good.items() if k != 'fps'}))
    with pytest.raises(DatasetError, match=r"manifest.yaml: missing field 'fps'"):
        Dataset.open(out)
    manifest_path.write_text(yaml.safe_dump(good))
    np.save(out / 'episodes' / f'{name}.frames.npy', np.zeros((3, 32, 32, 3), np.uint8))
    with pytest.raises(DatasetError, match=rf'{name}.frames.npy: frames are uint8 \(3, 32'):
        Dataset.open(out)


# --- bad input: a clear error, exit code 2, and nothing left at --out -------------------------


def assert_fails(capsys: pytest.CaptureFixture, out: Path, *parts: str) -> str:
    err = capsys.readouterr().err
    for part in parts:
        assert part in err
    assert not out.exists()
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f'.{out.name}.')]
    return err


def test_missing_and_wrong_topics(
    make_camera_bag: MakeBag, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bag = make_camera_bag(topics={'/odom': 'nav_msgs/msg/Odometry'})
    out = tmp_path / 'ds'
    assert build('--bags', bag.path, '--topic', '/nope', '--fps', 10, '--out', out) == 2
    assert_fails(capsys, out, "no camera topic '/nope'", f'{CAMERA} (sensor_msgs/msg/Image)',
                 '/odom (nav_msgs/msg/Odometry)')  # fmt: skip
    assert build('--bags', bag.path, '--topic', '/odom', '--fps', 10, '--out', out) == 2
    assert_fails(capsys, out, 'has type nav_msgs/msg/Odometry', 'sensor_msgs/msg/CompressedImage')
    assert build_bag(bag.path, out, '--action-topic', '/cmd') == 2
    assert_fails(capsys, out, "no action topic '/cmd'")


def test_empty_bag(
    make_camera_bag: MakeBag, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bag = make_camera_bag(n=0)
    assert build_bag(bag.path, tmp_path / 'ds') == 2
    assert_fails(capsys, tmp_path / 'ds', f'bag {bag.path} is empty', CAMERA)
    with BagWriter(tmp_path / 'bare', 'sqlite3', {}):
        pass
    assert build_bag(tmp_path / 'bare', tmp_path / 'ds') == 2
    assert_fails(capsys, tmp_path / 'ds', f'bag {tmp_path / "bare"} is empty: it has no topics')


@pytest.mark.parametrize(('storage', 'suffix'), [('mcap', '.mcap'), ('sqlite3', '.db3')])
@pytest.mark.parametrize('keep', [0.5, 0.97])
def test_truncated_bag(
    make_camera_bag: MakeBag,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    storage: str,
    suffix: str,
    keep: float,
) -> None:
    bag = make_camera_bag(storage=storage, n=40)
    (file,) = bag.path.glob(f'*{suffix}')
    data = file.read_bytes()
    file.write_bytes(data[: int(len(data) * keep)])
    assert build_bag(bag.path, tmp_path / 'ds') == 2
    assert_fails(capsys, tmp_path / 'ds', f'bag {bag.path} is truncated or corrupt', file.name)


# --- damage in the middle of a bag: an error naming the file and time range, or skipped ----------


def flip(file: Path, offset: int, count: int = 64) -> None:
    """Invert ``count`` bytes of ``file`` from ``offset`` (in place)."""
    data = bytearray(file.read_bytes())
    data[offset : offset + count] = bytes(b ^ 0xFF for b in data[offset : offset + count])
    file.write_bytes(bytes(data))


def mcap_chunks(file: Path) -> list[ChunkInfo]:
    """The chunk index of an mcap file (rosbags writes ~1 MiB uncompressed chunks, CRC 0)."""
    reader = McapReader(file)
    reader.open()
    try:
        return list(reader.chunks)
    finally:
        reader.close()


def add_chunk_crcs(file: Path) -> None:
    """Fill in every chunk's uncompressed_crc, as the rosbag2 mcap plugin writes them."""
    data = bytearray(file.read_bytes())
    for chunk in mcap_chunks(file):
        assert chunk.compression == ''  # the records are stored as they are
        records = chunk.chunk_start_offset + 9 + 40  # opcode, length, header, '' and its size
        crc = zlib.crc32(data[records : records + chunk.uncompressed_size])
        struct.pack_into('<I', data, chunk.chunk_start_offset + 9 + 24, crc)
    file.write_bytes(bytes(data))


def indexed_message(file: Path, chunk: ChunkInfo, k: int) -> tuple[int, int]:
    """(file offset, log time) of the message that entry ``k`` of the chunk's index names."""
    data = file.read_bytes()
    pos = chunk.chunk_start_offset + chunk.chunk_length  # the message index records follow
    assert data[pos] == 0x07
    log_time, offset = struct.unpack_from('<QQ', data, pos + 15 + 16 * k)
    return chunk.chunk_start_offset + 9 + 40 + offset, log_time


@pytest.mark.parametrize(
    ('damage', 'reason'),
    [
        ('crc', 'CRC mismatch'),
        ('record', 'bad record (opcode 0xfa'),
        ('channel', 'the messages do not match the message index'),
    ],
)
def test_damaged_mcap_chunk(
    make_camera_bag: MakeBag,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
    damage: str,
    reason: str,
) -> None:
    bag = make_camera_bag(n=90, size=(96, 128))  # ~37 kB frames: 4 chunks
    (file,) = bag.path.glob('*.mcap')
    chunks = mcap_chunks(file)
    assert len(chunks) >= 3
    middle = chunks[1]
    if damage == 'crc':  # pixel bytes in the middle of the chunk: only its CRC can tell
        add_chunk_crcs(file)
        flip(file, middle.chunk_start_offset + middle.chunk_length // 2)
    elif damage == 'record':  # no CRC (as rosbags writes): a message record's header
        flip(file, indexed_message(file, middle, 10)[0])
    else:  # no CRC: just its channel id (rosbags would drop the message without a word)
        flip(file, indexed_message(file, middle, 10)[0] + 9, count=2)
    start, end = middle.message_start_time, middle.message_end_time
    lost = [s for s in bag.stamps_ns if start <= s + 1000 <= end]  # bag time = stamp + 1 us
    assert 20 < len(lost) == sum(middle.channel_count.values())
    out = tmp_path / 'ds'
    assert build_bag(bag.path, out) == 2
    err = assert_fails(capsys, out, f'bag {bag.path} is truncated or corrupt', file.name,
                       f'from {start} ns to {end} ns', f'messages lost: {len(lost)}',
                       '--skip-bad-frames')  # fmt: skip
    assert reason in err
    with caplog.at_level(logging.WARNING):
        assert build_bag(bag.path, out, '--skip-bad-frames') == 0
    assert f'{file.name} is damaged from {start} ns to {end} ns' in caplog.text
    ds, name = only_episode(out)
    kept = [s for s in bag.stamps_ns if s not in lost]
    assert sorted(set(ds.labels(name).stamps_ns.tolist())) == kept
    (bad,) = ds.manifest['sources'][0]['bad_ranges']
    assert bad['bag'] == str(bag.path) and bad['file'] == file.name
    assert (bad['start_ns'], bad['end_ns'], bad['messages']) == (start, end, len(lost))
    assert f'mcap chunk at byte {middle.chunk_start_offset}' in bad['reason']


def write_zstd_bag(path: Path, mode: CompressionMode, n: int = 90) -> list[int]:
    """An mcap bag with zstd chunks (STORAGE) or zstd messages (MESSAGE); returns the bag times.

    Written with rosbags' Writer directly: BagWriter does not compress.
    """
    store = typestore()
    types = store.types
    writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
    writer.set_compression(mode, CompressionFormat.ZSTD)
    writer.open()
    conn = writer.add_connection(CAMERA, 'sensor_msgs/msg/Image', typestore=store)
    times = []
    for k in range(n):
        stamp = NS + k * NS // 10
        rgb = np.full((96, 128, 3), k, dtype=np.uint8)  # (H, W, 3), compresses well
        header = types['std_msgs/msg/Header'](
            stamp=types['builtin_interfaces/msg/Time'](sec=stamp // NS, nanosec=stamp % NS),
            frame_id='cam',
        )
        msg = types['sensor_msgs/msg/Image'](
            header=header, height=96, width=128, encoding='rgb8', is_bigendian=0, step=384,
            data=rgb.reshape(-1),
        )  # fmt: skip
        writer.write(conn, stamp + 1000, store.serialize_cdr(msg, conn.msgtype))
        times.append(stamp + 1000)
    writer.close()
    return times


@pytest.mark.parametrize('mode', ['chunk', 'message'])
def test_zstd_that_does_not_decompress(
    tmp_path: Path, capsys: pytest.CaptureFixture, mode: str
) -> None:
    path = tmp_path / 'zstd'
    times = write_zstd_bag(
        path, CompressionMode.STORAGE if mode == 'chunk' else CompressionMode.MESSAGE
    )
    (file,) = path.glob('*.mcap')
    chunks = mcap_chunks(file)
    if mode == 'chunk':  # the zstd frame header of a middle chunk's records
        middle = chunks[1]
        assert len(chunks) >= 3 and middle.compression == 'zstd'
        flip(file, middle.chunk_start_offset + 9 + 40 + len('zstd'))
        start, end = middle.message_start_time, middle.message_end_time
        lost = sum(middle.channel_count.values())
    else:  # the zstd frame header of the data of message #45 (one small chunk)
        assert [c.compression for c in chunks] == ['']
        offset, start = indexed_message(file, chunks[0], 45)
        flip(file, offset + 9 + 22, count=8)
        end, lost = start, 1
        assert start == times[45]
    assert build_bag(path, tmp_path / 'ds') == 2
    assert_fails(capsys, tmp_path / 'ds', f'from {start} ns to {end} ns',
                 f'messages lost: {lost}', 'Zstandard')  # fmt: skip
    assert build_bag(path, tmp_path / 'ds', '--skip-bad-frames') == 0
    (bad,) = Dataset.open(tmp_path / 'ds').manifest['sources'][0]['bad_ranges']
    assert (bad['start_ns'], bad['end_ns'], bad['messages']) == (start, end, lost)
    assert start in times and end in times


def test_clean_mcap_with_crcs_reads_as_written(make_camera_bag: MakeBag, tmp_path: Path) -> None:
    bag = make_camera_bag(n=60, size=(96, 128))
    (file,) = bag.path.glob('*.mcap')
    add_chunk_crcs(file)
    assert build_bag(bag.path, tmp_path / 'ds') == 0
    ds, name = only_episode(tmp_path / 'ds')
    assert ds.labels(name).stamps_ns.tolist() == bag.stamps_ns
    assert ds.manifest['sources'][0]['bad_ranges'] == []


def damage_sqlite3_row(file: Path, damage: str, index: int) -> tuple[int, int]:
    """Damage the row of message ``index``; return its (id, bag time).

    blob: garbage over its CDR header and first pixels (SQL UPDATE); overflow: the first bytes of
    an overflow page of its blob (the next-page pointer), so reading the blob fails; leaf: the
    b-tree page that holds the start of the row.
    """
    with closing(sqlite3.connect(file)) as db, db:
        row_id, bag_ns, blob = db.execute(
            'SELECT id, timestamp, data FROM messages ORDER BY timestamp LIMIT 1 OFFSET ?',
            (index,),
        ).fetchone()
        if damage == 'blob':
            garbage = bytes(b ^ 0xFF for b in blob[4:68])
            db.execute('UPDATE messages SET data = ? WHERE id = ?',
                       (blob[:4] + garbage + blob[68:], row_id))  # fmt: skip
        page_size = db.execute('PRAGMA page_size').fetchone()[0]
    if damage != 'blob':
        assert damage == 'overflow' or len(blob) < page_size - 100  # leaf: the row fits a page
        part = blob[2000:2100] if damage == 'overflow' else blob[:100]
        data = file.read_bytes()
        where = data.find(part)
        assert where > 0 and data.find(part, where + 1) < 0
        flip(file, where // page_size * page_size)
    return row_id, bag_ns


@pytest.mark.parametrize(('damage', 'size'), [('blob', (32, 32)), ('overflow', (64, 64))])
def test_damaged_sqlite3_row(
    make_camera_bag: MakeBag,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
    damage: str,
    size: tuple[int, int],
) -> None:
    bag = make_camera_bag(storage='sqlite3', n=30, size=size)
    (file,) = bag.path.glob('*.db3')
    row_id, bag_ns = damage_sqlite3_row(file, damage, 14)
    assert bag_ns == bag.stamps_ns[14] + 1000
    out = tmp_path / 'ds'
    assert build_bag(bag.path, out) == 2
    err = assert_fails(capsys, out, f'bag {bag.path} is truncated or corrupt', file.name,
                       f'from {bag_ns} ns to {bag_ns} ns', 'messages lost: 1',
                       '--skip-bad-frames')  # fmt: skip
    assert ('cannot be decoded' if damage == 'blob' else f'row(s) {row_id} cannot be read') in err
    with caplog.at_level(logging.WARNING):
        assert build_bag(bag.path, out, '--skip-bad-frames') == 0
    assert f'{file.name} is damaged from {bag_ns} ns to {bag_ns} ns' in caplog.text
    ds, name = only_episode(out)
    kept = bag.stamps_ns[:14] + bag.stamps_ns[15:]
    assert sorted(set(ds.labels(name).stamps_ns.tolist())) == kept
    (bad,) = ds.manifest['sources'][0]['bad_ranges']
    assert (bad['bag'], bad['file']) == (str(bag.path), file.name)
    assert (bad['start_ns'], bad['end_ns'], bad['messages']) == (bag_ns, bag_ns, 1)


def test_sqlite3_row_that_fails_the_open(
    make_camera_bag: MakeBag, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bag = make_camera_bag(storage='sqlite3', n=30)
    (file,) = bag.path.glob('*.db3')
    _, bag_ns = damage_sqlite3_row(file, 'leaf', 14)
    for extra in ((), ('--skip-bad-frames',)):  # rosbags reads every row's topic on open
        assert build_bag(bag.path, tmp_path / 'ds', *extra) == 2
        assert_fails(capsys, tmp_path / 'ds', f'bag {bag.path} is truncated or corrupt',
                     f'{file.name}: 1 row(s) from {bag_ns} ns to {bag_ns} ns',
                     'cannot be skipped')  # fmt: skip


@pytest.mark.parametrize('storage', STORAGES)
def test_clean_bag_has_no_bad_ranges(
    make_camera_bag: MakeBag, tmp_path: Path, storage: str, caplog: pytest.LogCaptureFixture
) -> None:
    bag = make_camera_bag(storage=storage, n=20)
    with caplog.at_level(logging.WARNING):
        assert build_bag(bag.path, tmp_path / 'ds', '--skip-bad-frames') == 0
    assert 'damaged' not in caplog.text
    assert Dataset.open(tmp_path / 'ds').manifest['sources'][0]['bad_ranges'] == []


def test_unsupported_encoding(
    make_camera_bag: MakeBag, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bag = make_camera_bag(encoding='32FC1')
    assert build_bag(bag.path, tmp_path / 'ds') == 2
    assert_fails(capsys, tmp_path / 'ds', "unsupported Image encoding '32FC1'",
                 'rgb8, bgr8, mono8, rgba8, bgra8, yuv422', 'bayer_rggb8', 'mono16, 16UC1',
                 'jpeg, png')  # fmt: skip


def test_stamps_going_backwards(
    make_camera_bag: MakeBag,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stamps = [NS + k * NS // 10 for k in range(12)]
    stamps[4], stamps[8] = stamps[2], stamps[1]  # two frames go back in time
    bag = make_camera_bag(stamps_ns=stamps)
    out = tmp_path / 'ds'
    assert build_bag(bag.path, out) == 2
    assert_fails(capsys, out, '2 of 12 header stamps', 'message #4', 'nothing was written',
                 '--backwards drop')  # fmt: skip
    assert build_bag(bag.path, out, '--backwards', 'drop') == 0
    ds, name = only_episode(out)
    assert 4 not in ds.labels(name).source_index and 8 not in ds.labels(name).source_index
    assert ds.manifest['sources'][0]['backwards_dropped'] == 2
    assert 'dropped them (--backwards drop)' in caplog.text


def test_paths_that_are_not_bags(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / 'plain').mkdir()
    (tmp_path / 'file.txt').write_text('hello')
    out = tmp_path / 'ds'
    for path, message in [
        (tmp_path / 'plain', 'is not a rosbag2 directory'),
        (tmp_path / 'file.txt', 'is not a rosbag2 directory'),
        (tmp_path / 'missing', 'does not exist'),
    ]:
        assert build_bag(path, out) == 2
        assert_fails(capsys, out, f'{path} {message}')


@pytest.mark.parametrize(('storage', 'encoding'), [('mcap', 'png'), ('sqlite3', 'rgb8')])
def test_corrupt_frame(
    make_camera_bag: MakeBag,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    storage: str,
    encoding: str,
) -> None:
    bag = make_camera_bag(storage=storage, encoding=encoding, corrupt=(5,))
    out = tmp_path / 'ds'
    assert build_bag(bag.path, out) == 2
    assert_fails(capsys, out, 'frame #5', f'(stamp {bag.stamps_ns[5]} ns)', '--skip-bad-frames')
    assert build_bag(bag.path, out, '--skip-bad-frames') == 0
    ds, name = only_episode(out)
    labels = ds.labels(name)
    assert labels.source_index.tolist() == [0, 1, 2, 3, 4, 4, 6, 7, 8, 9, 10, 11]
    assert labels.stamps_ns[5] == bag.stamps_ns[4]
    np.testing.assert_array_equal(ds.frames(name)[5], bag.frames[4])


def test_existing_output_is_kept_unless_overwrite(
    make_camera_bag: MakeBag, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bag = make_camera_bag(n=3)
    other = tmp_path / 'other'
    other.mkdir()
    (other / 'keep.txt').write_text('not a dataset')
    assert build_bag(bag.path, other, '--overwrite') == 2
    assert 'refusing to replace' in capsys.readouterr().err and (other / 'keep.txt').exists()
    out = tmp_path / 'ds'
    assert build_bag(bag.path, out, fps=5) == 0
    assert build_bag(bag.path, out) == 2
    assert 'already exists; pass --overwrite' in capsys.readouterr().err
    assert build_bag(bag.path, out, '--topic', '/nope', '--overwrite') == 2  # a failed rebuild
    assert Dataset.open(out).fps == 5
    assert build_bag(bag.path, out, '--overwrite') == 0
    assert Dataset.open(out).fps == 10 and Dataset.open(out).episodes()[0].frames == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.ds.')]


@pytest.mark.parametrize(
    ('args', 'message'),
    [
        (['--fps', '0'], '--fps must be positive'),
        (['--split', '0.5,0.5'], 'three non-negative fractions'),
        (['--size', '-3'], '--size must be positive'),
    ],
)
def test_bad_arguments(
    make_camera_bag: MakeBag,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    args: list[str],
    message: str,
) -> None:
    bag = make_camera_bag(n=3)
    assert build_bag(bag.path, tmp_path / 'ds', *args) == 2
    assert_fails(capsys, tmp_path / 'ds', message)


def test_bags_with_the_same_name_and_mixed_types(
    make_camera_bag: MakeBag, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    a, b = make_camera_bag('x/ep', n=3), make_camera_bag('y/ep', storage='sqlite3', n=4)
    assert build('--bags', a.path, b.path, '--topic', CAMERA, '--fps', 10,
                 '--out', tmp_path / 'ds') == 0  # fmt: skip
    assert [e.name for e in Dataset.open(tmp_path / 'ds').episodes()] == ['ep', 'ep-2']
    c = make_camera_bag('z/ep', encoding='png', n=3)
    assert build('--bags', a.path, c.path, '--topic', CAMERA, '--fps', 10,
                 '--out', tmp_path / 'mixed') == 2  # fmt: skip
    assert_fails(capsys, tmp_path / 'mixed', 'different types')


def test_a_folder_of_bags_is_every_bag_below_it_in_path_order(
    make_camera_bag: MakeBag, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a = make_camera_bag('rec/day2/ep_b', n=3)
    b = make_camera_bag('rec/day1/ep_a', storage='sqlite3', n=4)
    hidden = make_camera_bag('rec/.ep_c.partial', n=5)  # a bag still being written
    assert hidden.path.is_dir()
    with caplog.at_level(logging.INFO):
        assert build('--bags', a.path.parents[1], '--topic', CAMERA, '--fps', 10,
                     '--out', tmp_path / 'ds') == 0  # fmt: skip
    episodes = Dataset.open(tmp_path / 'ds').episodes()
    assert [(e.name, e.frames) for e in episodes] == [('ep_a', 4), ('ep_b', 3)]
    assert f'{a.path.parents[1]}: 2 bag(s) found below it' in caplog.text
    assert b.path.parent.name == 'day1'


def test_an_empty_folder_of_bags_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / 'recordings'
    (empty / 'notes').mkdir(parents=True)  # folders, but no bag below them
    assert build('--bags', empty, '--topic', CAMERA, '--fps', 10, '--out', tmp_path / 'ds') == 2
    assert_fails(capsys, tmp_path / 'ds', f'{empty} is not a rosbag2 directory and holds none',
                 'no metadata.yaml in it or below it')  # fmt: skip
