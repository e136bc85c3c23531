"""``dlp-replay``: the node's pipeline over a bag, offline, into a new bag, a video, a strip and a
summary; deterministic."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from rosbags.rosbag2 import Reader

from dlp_ros.errors import ConfigError, EpisodeError
from dlp_ros.offline.bag_writer import BagWriter
from dlp_ros.offline.perception_outputs import PARTICLES_TOPIC, PREDICTION_TOPIC
from dlp_ros.offline.replay import ReplayConfig, action_columns, main, replay
from dlp_ros.offline.typestore import typestore
from dlp_ros.runtime import DlpRuntime

ROOT = Path(__file__).resolve().parents[2]
CAMERA = '/camera/image'  # the topic of tests/training/conftest.py's camera bags
ACTIONS = '/robot/command'
HEIGHT, WIDTH = 48, 64  # input frames: not square, not the model's 64 x 64
DT = 0.1  # export_random_bundle's card dt
NS = 1_000_000_000


@pytest.fixture(scope='module')
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight bundle (dlp_training/configs/*_tiny.yaml sizes, S = 64) with 2
    actions."""
    torch = pytest.importorskip('torch')
    from dlp_training.export import export_random_bundle
    from dlp_training.models.dlp import DlpConfig
    from dlp_training.models.dynamics import DynamicsConfig

    torch.set_num_threads(1)
    dlp = yaml.safe_load((ROOT / 'dlp_training/configs/dlp_tiny.yaml').read_text())['model']
    dyn = yaml.safe_load((ROOT / 'dlp_training/configs/dynamics_tiny.yaml').read_text())['model']
    path = tmp_path_factory.mktemp('replay') / 'bundle'
    export_random_bundle(
        DlpConfig.from_dict(dlp),
        DynamicsConfig.from_dlp(DlpConfig.from_dict(dlp), **{**dyn, 'action_dim': 2}),
        path,
        dt=DT,
    )
    return path


def write_commands(writer: BagWriter) -> None:
    """TwistStamped commands at 5 Hz on ACTIONS (the camera runs at 10 Hz)."""
    types = writer.store.types
    vec = types['geometry_msgs/msg/Vector3']
    for i in range(5):
        stamp = NS + i * 2 * NS // 10
        twist = types['geometry_msgs/msg/Twist'](
            linear=vec(x=0.1 * i, y=-0.05 * i, z=0.0), angular=vec(x=0.0, y=0.0, z=0.0)
        )
        msg = types['geometry_msgs/msg/TwistStamped'](
            header=writer.header(stamp, 't'), twist=twist
        )
        writer.write(ACTIONS, stamp, msg)


def read_bag(path: Path) -> dict[str, list[tuple[int, bytes, Any]]]:
    """topic -> [(bag time, CDR, rosbags message)] in bag order."""
    store = typestore()
    out: dict[str, list[tuple[int, bytes, Any]]] = {}
    with Reader(path) as reader:
        for conn, t, raw in reader.messages():
            msg = store.deserialize_cdr(raw, conn.msgtype)
            out.setdefault(conn.topic, []).append((t, bytes(raw), msg))
    return out


def stamp_of(header: Any) -> int:
    return header.stamp.sec * NS + header.stamp.nanosec


@pytest.mark.parametrize(('storage', 'encoding'), [('mcap', 'rgb8'), ('sqlite3', 'jpeg')])
def test_replay_writes_one_message_per_frame_with_the_input_headers(
    bundle: Path, make_camera_bag: Any, tmp_path: Path, storage: str, encoding: str
) -> None:
    """Image or CompressedImage, mcap or sqlite3 in; the same storage out with one
    ParticleArray per frame carrying the frame's header, and one Prediction per frame whose
    steps and frames are stamped t + k*dt; video, strip and summary beside it."""
    bag = make_camera_bag(
        storage=storage, encoding=encoding, n=8, size=(HEIGHT, WIDTH),
        topics={ACTIONS: 'geometry_msgs/msg/TwistStamped'}, extra=write_commands,
    )  # fmt: skip
    out = tmp_path / 'replay'
    summary = replay(ReplayConfig(bag=bag.path, bundle=bundle, out=out, topic=CAMERA, horizon=3))

    suffix = {'mcap': '.mcap', 'sqlite3': '.db3'}[storage]
    assert [p.suffix for p in (out / 'bag').iterdir() if p.name != 'metadata.yaml'] == [suffix]
    topics = read_bag(out / 'bag')
    assert sorted(topics) == [PARTICLES_TOPIC, PREDICTION_TOPIC]
    particles, predictions = topics[PARTICLES_TOPIC], topics[PREDICTION_TOPIC]
    assert [stamp_of(m.header) for _, _, m in particles] == bag.stamps_ns
    assert [t for t, _, _ in particles] == bag.stamps_ns
    rt = DlpRuntime.load(bundle, providers='cpu', threads=1)
    k = rt.card.particles.K
    for _, _, msg in particles:
        assert msg.header.frame_id == 'cam'
        assert (msg.image_width, msg.image_height) == (WIDTH, HEIGHT)
        assert [p.id for p in msg.particles] == list(range(k))
        assert msg.decode_ms == msg.encode_ms == 0.0  # reproducible unless --stamp-timings
    # the first frame's particles are the runtime's own, in pixels of the input
    frame = rt.tracker().update(rt.preprocess(bag.frames[0]))
    if encoding == 'rgb8':
        uv = np.array([[p.u, p.v] for p in particles[0][2].particles], np.float32)
        np.testing.assert_array_equal(uv, frame.pixels(WIDTH, HEIGHT))
    assert [stamp_of(m.header) for _, _, m in predictions] == bag.stamps_ns
    for _, _, msg in predictions:
        t = stamp_of(msg.header)
        want = [t + round(kk * DT * NS) for kk in (1, 2, 3)]
        assert msg.dt == pytest.approx(DT)
        assert [stamp_of(s.header) for s in msg.steps] == want
        assert [stamp_of(f.header) for f in msg.frames] == want
        assert all(f.header.frame_id == 'cam' for f in msg.frames)
        assert all((f.width, f.height, f.encoding) == (64, 64, 'rgb8') for f in msg.frames)
        assert all((s.image_width, s.image_height) == (WIDTH, HEIGHT) for s in msg.steps)

    on_disk = json.loads((out / 'summary.json').read_text())
    assert on_disk == summary
    assert summary['frames_in'] == summary['particles_out'] == summary['predictions_out'] == 8
    assert summary['action_topic'] == ACTIONS and summary['storage'] == storage
    assert summary['latency_ms']['p50'] > 0 and summary['latency_ms']['p99'] > 0
    psnr = summary['psnr_db_per_step']
    assert len(psnr) == 3 and all(isinstance(v, float) for v in psnr)
    assert (out / summary['outputs']['video']).stat().st_size > 0
    assert (out / 'prediction_strip.png').stat().st_size > 0
    assert not list(tmp_path.glob('.replay*'))  # no staging directory left


def test_two_runs_give_byte_identical_messages(
    bundle: Path, make_camera_bag: Any, tmp_path: Path
) -> None:
    bag = make_camera_bag(n=6, size=(HEIGHT, WIDTH))
    runs = []
    for name in ('a', 'b'):
        replay(ReplayConfig(bag=bag.path, bundle=bundle, out=tmp_path / name, topic=CAMERA,
                            horizon=2, storage='sqlite3'))  # fmt: skip
        runs.append(read_bag(tmp_path / name / 'bag'))
    for topic in (PARTICLES_TOPIC, PREDICTION_TOPIC):
        a = [(t, raw) for t, raw, _ in runs[0][topic]]
        b = [(t, raw) for t, raw, _ in runs[1][topic]]
        assert len(a) == 6 and a == b, f'{topic} differs between two runs'


def test_the_camera_topic_defaults_to_the_bags_only_image_topic(
    bundle: Path, make_camera_bag: Any, tmp_path: Path
) -> None:
    bag = make_camera_bag(n=3, size=(HEIGHT, WIDTH))
    summary = replay(ReplayConfig(bag=bag.path, bundle=bundle, out=tmp_path / 'one', horizon=1))
    assert summary['topic'] == CAMERA and summary['particles_out'] == 3
    two = make_camera_bag('two', n=3, topics={'/camera/depth': 'sensor_msgs/msg/Image'})
    with pytest.raises(ConfigError, match='several image topics .*/camera/depth.*--topic'):
        replay(ReplayConfig(bag=two.path, bundle=bundle, out=tmp_path / 'two', horizon=1))
    assert not (tmp_path / 'two').exists()


def test_the_camera_topic_defaults_to_the_model_cards(
    bundle: Path, make_camera_bag: Any, tmp_path: Path
) -> None:
    """A bag with several image topics: the card's camera topic (its training data's) when the
    bag has it, else an error listing the image topics."""
    card_bundle = tmp_path / 'card_bundle'
    shutil.copytree(bundle, card_bundle)
    card = yaml.safe_load((card_bundle / 'model_card.yaml').read_text())
    card.setdefault('training', {})['dlp'] = {'dataset': {'topic': CAMERA}}
    (card_bundle / 'model_card.yaml').write_text(yaml.safe_dump(card))
    extra = {'/camera/depth': 'sensor_msgs/msg/Image', '/aaa/image': 'sensor_msgs/msg/Image'}
    bag = make_camera_bag('three', n=3, topics=extra)
    summary = replay(ReplayConfig(bag=bag.path, bundle=card_bundle, out=tmp_path / 'card',
                                  horizon=1))  # fmt: skip
    assert summary['topic'] == CAMERA and summary['particles_out'] == 3
    with pytest.raises(ConfigError) as info:  # the card names none: which one is unclear
        replay(ReplayConfig(bag=bag.path, bundle=bundle, out=tmp_path / 'plain', horizon=1))
    assert f'/aaa/image, /camera/depth, {CAMERA}' in str(info.value)
    assert 'none recorded' in str(info.value) and '--topic' in str(info.value)
    assert not (tmp_path / 'plain').exists()


def test_action_columns_follow_the_card_names() -> None:
    twist = ['linear.x', 'linear.y', 'linear.z', 'angular.x', 'angular.y', 'angular.z']
    assert action_columns(twist, ('linear.y', 'angular.z'), 2) == [1, 5]
    assert action_columns(twist, ('a0', 'a1'), 2) == [0, 1]  # unnamed: by position
    with pytest.raises(ConfigError, match='takes 3 actions'):
        action_columns(['data[0]', 'data[1]'], ('a', 'b', 'c'), 3)


def test_errors_name_the_input(bundle: Path, make_camera_bag: Any, tmp_path: Path) -> None:
    bag = make_camera_bag(n=3)
    with pytest.raises(EpisodeError, match=r"no camera topic '/nope'.*/camera/image"):
        replay(ReplayConfig(bag=bag.path, bundle=bundle, out=tmp_path / 'o', topic='/nope'))
    assert not (tmp_path / 'o').exists()
    (tmp_path / 'taken').mkdir()
    (tmp_path / 'taken' / 'x').write_text('')
    with pytest.raises(ConfigError, match='already exists'):
        replay(ReplayConfig(bag=bag.path, bundle=bundle, out=tmp_path / 'taken', topic=CAMERA))
    with pytest.raises(ConfigError, match='--horizon must be >= 1'):
        replay(ReplayConfig(bag=bag.path, bundle=bundle, out=tmp_path / 'h', horizon=0))


def test_dlp_replay_command(
    bundle: Path, make_camera_bag: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bag = make_camera_bag(n=4)
    out = tmp_path / 'cli'
    args = ['--bag', str(bag.path), '--bundle', str(bundle), '--topic', CAMERA, '--out', str(out)]
    assert main([*args, '--horizon', '2', '--no-frames']) == 0
    printed = capsys.readouterr().out
    assert 'frames in 4, particle messages out 4' in printed and 'p50' in printed
    predictions = read_bag(out / 'bag')[PREDICTION_TOPIC]
    assert all(len(m.steps) == 2 and not m.frames for _, _, m in predictions)
    assert main(args) == 2  # --out exists
    assert 'already exists' in capsys.readouterr().err
    assert main([*args[:-1], str(tmp_path / 'x'), '--bag', str(tmp_path / 'nobag')]) == 2
    assert 'nobag does not exist' in capsys.readouterr().err


def test_bad_frames_are_counted_and_skipped(
    bundle: Path, make_camera_bag: Any, tmp_path: Path
) -> None:
    """Like the node: an undecodable frame is logged, counted and skipped."""
    bag = make_camera_bag(n=5, corrupt=(2,))
    summary = replay(ReplayConfig(bag=bag.path, bundle=bundle, out=tmp_path / 'o', topic=CAMERA,
                                  horizon=2))  # fmt: skip
    assert (summary['frames_in'], summary['bad_frames'], summary['particles_out']) == (5, 1, 4)
    stamps = [stamp_of(m.header) for _, _, m in read_bag(tmp_path / 'o' / 'bag')[PARTICLES_TOPIC]]
    assert stamps == [s for i, s in enumerate(bag.stamps_ns) if i != 2]


@pytest.mark.parametrize('encoding', ['yuv422', 'bayer_grbg8', 'mono16'])
def test_camera_encodings_replay(
    bundle: Path, make_camera_bag: Any, tmp_path: Path, encoding: str
) -> None:
    """4:2:2, Bayer and 16-bit frames (real bytes) are replayed like rgb8 ones: every frame
    decoded, none bad, particles in the input's pixels."""
    bag = make_camera_bag(n=3, size=(HEIGHT, WIDTH), encoding=encoding)
    summary = replay(ReplayConfig(bag=bag.path, bundle=bundle, out=tmp_path / 'o', topic=CAMERA,
                                  horizon=2))  # fmt: skip
    assert (summary['frames_in'], summary['bad_frames'], summary['particles_out']) == (3, 0, 3)
    for _, _, msg in read_bag(tmp_path / 'o' / 'bag')[PARTICLES_TOPIC]:
        assert (msg.image_width, msg.image_height) == (WIDTH, HEIGHT)


def test_the_summary_scores_out_of_distribution_frames(
    make_camera_bag: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every ood_every_n-th frame is scored as the node scores it (reconstruction MSE over the
    card's validation recon_mse); frames above ood_warn are counted and one WARN is logged."""
    shipped = Path(__file__).resolve().parents[2] / 'bundles' / 'tabletop64'
    bag = make_camera_bag(n=12, size=(HEIGHT, WIDTH))
    with caplog.at_level(logging.WARNING, logger='dlp_ros.offline.replay'):
        summary = replay(ReplayConfig(bag=bag.path, bundle=shipped, out=tmp_path / 'out',
                                      topic=CAMERA, horizon=2))  # fmt: skip
    ood = summary['ood']
    rt = DlpRuntime.load(shipped, providers='cpu', threads=1)
    x = rt.preprocess(bag.frames[0])
    want = rt.recon_mse(x, rt.tracker().update(x)) / rt.card.validation.recon_mse
    assert ood['frames_scored'] == 2  # frames 0 and 10
    assert ood['max'] >= round(want, 3) - 1e-3 >= 0  # frame 0's score is one of the two
    assert (ood['frames_above_warn'] > 0) == (ood['max'] > ood['warn_above'])
    warned = [r for r in caplog.records if 'out of distribution' in r.getMessage()]
    assert len(warned) == (1 if ood['frames_above_warn'] else 0)
