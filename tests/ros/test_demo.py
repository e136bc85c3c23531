"""The demo's ROS half (dlp_ros/demo.py) against the real node, and against dlp-replay.

A tiny bundle and a 10-frame bag with commands; the demo starts the node as a process, plays
the bag over Fast DDS (loopback, this run's domain) and records what comes back. The recorded
messages, stamped back to the bag's time, must be exactly what the offline replay writes for the
same bag (timing fields aside): the node and dlp-replay run the same pipeline.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

pytest.importorskip('rclpy')
pytest.importorskip('dlp_ros.msg')

from rosbags.rosbag2 import Reader  # noqa: E402

from dlp_ros.demo import main as demo_main  # noqa: E402
from dlp_ros.offline.bag_writer import BagWriter  # noqa: E402
from dlp_ros.offline.perception_outputs import PARTICLES_TOPIC, PREDICTION_TOPIC  # noqa: E402
from dlp_ros.offline.replay import ReplayConfig, replay  # noqa: E402
from dlp_ros.offline.typestore import typestore  # noqa: E402

pytestmark = pytest.mark.ros

ROOT = Path(__file__).resolve().parents[2]
CAMERA, COMMAND = '/camera/image_raw', '/tabletop/command'
NS = 1_000_000_000
T0 = 1_700_000_000 * NS
FRAMES = 10


@pytest.fixture(scope='module')
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight bundle taking 2 actions (S = 64, K = 4, H = 2)."""
    torch = pytest.importorskip('torch')
    from dlp_training.export import export_random_bundle
    from dlp_training.models.dlp import DlpConfig
    from dlp_training.models.dynamics import DynamicsConfig

    torch.set_num_threads(1)
    dlp = yaml.safe_load((ROOT / 'dlp_training/configs/dlp_tiny.yaml').read_text())['model']
    dyn = yaml.safe_load((ROOT / 'dlp_training/configs/dynamics_tiny.yaml').read_text())['model']
    path = tmp_path_factory.mktemp('demo') / 'bundle'
    export_random_bundle(
        DlpConfig.from_dict(dlp),
        DynamicsConfig.from_dlp(DlpConfig.from_dict(dlp), **{**dyn, 'action_dim': 2}),
        path,
    )
    return path


def episode_bag(path: Path, commands: bool = True) -> list[int]:
    """A tabletop-like bag: 64x64 rgb8 frames at 10 Hz (a disc moving right) and a
    TwistStamped command with each frame (same stamp; none without ``commands``: camera-only
    footage). Returns the frame stamps."""
    yy, xx = np.mgrid[0:64, 0:64] + 0.5
    stamps = []
    topics = {CAMERA: 'sensor_msgs/msg/Image'}
    if commands:
        topics[COMMAND] = 'geometry_msgs/msg/TwistStamped'
    with BagWriter(path, 'mcap', topics) as w:
        types = w.store.types
        vec = types['geometry_msgs/msg/Vector3']
        for i in range(FRAMES):
            stamp = T0 + i * NS // 10
            rgb = np.full((64, 64, 3), 90, np.uint8)
            rgb[(xx - 12 - 4 * i) ** 2 + (yy - 30) ** 2 <= 49] = (240, 30, 30)
            w.write(CAMERA, stamp, w.image(stamp, 'camera', rgb))
            stamps.append(stamp)
            if not commands:
                continue
            twist = types['geometry_msgs/msg/Twist'](
                linear=vec(x=0.2, y=0.01 * i, z=0.0), angular=vec(x=0.0, y=0.0, z=0.0)
            )
            cmd = types['geometry_msgs/msg/TwistStamped'](header=w.header(stamp, 't'), twist=twist)
            w.write(COMMAND, stamp, cmd)
    return stamps


def messages(bag: Path) -> dict[str, dict[int, Any]]:
    """topic -> {header stamp: rosbags message}."""
    store = typestore()
    out: dict[str, dict[int, Any]] = {}
    with Reader(bag) as reader:
        for conn, _, raw in reader.messages():
            msg = store.deserialize_cdr(raw, conn.msgtype)
            stamp = msg.header.stamp.sec * NS + msg.header.stamp.nanosec
            out.setdefault(conn.topic, {})[stamp] = msg
    return out


def without_timings(msg: Any, msgtype: str) -> bytes:
    """CDR of a ParticleArray or Prediction with its timing fields zeroed."""
    if hasattr(msg, 'predict_ms'):
        msg.predict_ms = 0.0
        for step in msg.steps:
            step.decode_ms = step.encode_ms = 0.0
    else:
        msg.decode_ms = msg.encode_ms = 0.0
    return bytes(typestore().serialize_cdr(msg, msgtype))


def test_demo_over_ros_records_what_the_offline_replay_computes(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stamps = episode_bag(tmp_path / 'episode')
    out = tmp_path / 'demo'
    args = ['--bag', str(tmp_path / 'episode'), '--bundle', str(bundle), '--out', str(out),
            '--providers', 'cpu', '--horizon', '3', '--lockstep']  # fmt: skip
    assert demo_main(args) == 0, (out.with_name('.demo.partial') / 'node.log').read_text()
    printed = capsys.readouterr().out
    assert 'frames in 10' in printed and 'latency' in printed

    summary = json.loads((out / 'summary.json').read_text())
    assert summary['frames_in'] == FRAMES
    assert summary['action_topic'] == COMMAND
    assert summary['node_parameters']['action_topic'] == COMMAND
    assert summary['latency_ms']['p50'] is not None
    assert summary['node_diagnostics'].get('provider') == 'CPUExecutionProvider'
    assert summary['particles_out'] == FRAMES and summary['dropped_frames'] == 0, summary
    assert summary['messages_with_unknown_stamps'] == 0, summary
    assert (out / summary['outputs']['video']).stat().st_size > 0
    assert (out / 'prediction_strip.png').is_file() and (out / 'node.log').is_file()

    demo = messages(out / 'bag')
    assert set(demo[PARTICLES_TOPIC]) <= set(stamps)  # stamped back to the bag's time
    replay(ReplayConfig(bag=tmp_path / 'episode', bundle=bundle, out=tmp_path / 'replay',
                        topic=CAMERA, horizon=3))  # fmt: skip
    offline = messages(tmp_path / 'replay' / 'bag')
    types = {
        PARTICLES_TOPIC: 'dlp_ros/msg/ParticleArray',
        PREDICTION_TOPIC: 'dlp_ros/msg/Prediction',
    }
    for topic, msgtype in types.items():
        assert demo[topic], f'nothing recorded on {topic}'
        for stamp, msg in demo[topic].items():
            want = offline[topic][stamp]
            assert without_timings(msg, msgtype) == without_timings(want, msgtype), (
                f'{topic} at frame {stamps.index(stamp)}: the node and dlp-replay differ'
            )
    first = demo[PREDICTION_TOPIC][min(demo[PREDICTION_TOPIC])]
    assert len(first.frames) == 3  # publish_frames on, no rate limit


def test_demo_on_a_camera_only_bag(
    bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """A bag without an action topic (camera-only footage) and a model taking actions: the node
    starts with an empty action_topic (zero actions) and serves every frame; the demo names the
    final node log, not the temporary one."""
    episode_bag(tmp_path / 'camera_only', commands=False)
    out = tmp_path / 'demo'
    args = ['--bag', str(tmp_path / 'camera_only'), '--bundle', str(bundle), '--out', str(out),
            '--providers', 'cpu', '--horizon', '2', '--lockstep']  # fmt: skip
    with caplog.at_level(logging.INFO, logger='dlp_ros.demo'):
        assert demo_main(args) == 0, (out.with_name('.demo.partial') / 'node.log').read_text()
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['action_topic'] is None and summary['node_parameters']['action_topic'] == ''
    assert summary['particles_out'] == FRAMES and summary['dropped_frames'] == 0, summary
    assert f'node log: {out / "node.log"}' in capsys.readouterr().out
    started = [r.getMessage() for r in caplog.records if 'node started' in r.getMessage()]
    assert len(started) == 1 and f'log {out / "node.log"} (at ' in started[0], started
    assert 'predicting with zero actions' in (out / 'node.log').read_text()
