"""One camera sequence, with a frame size change and a stamp going back, through the perception
node over ROS and through ``dlp-replay`` (``dlp_ros.offline.replay.replay``) on a bag of the same
frames: the particles are identical, frame for frame, so both restart tracking at the same frames
(both run :class:`dlp_ros.pipeline.PerceptionPipeline`).
"""

from __future__ import annotations

import array
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip('rclpy')
pytest.importorskip('dlp_ros.srv')

from rosbags.rosbag2 import Reader  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from dlp_ros.conversions import stamp_ns  # noqa: E402
from dlp_ros.offline.bag_writer import BagWriter  # noqa: E402
from dlp_ros.offline.perception_outputs import PARTICLES_TOPIC  # noqa: E402
from dlp_ros.offline.replay import ReplayConfig, replay  # noqa: E402
from dlp_ros.offline.typestore import typestore  # noqa: E402
from dlp_ros.runtime import DlpRuntime  # noqa: E402

pytestmark = pytest.mark.ros

CAMERA = '/camera/image'
T0_NS = 1_732_000_000_987_654_321
STEP_NS = 33_333_333
# (k of the picture, width, height, stamp): the size changes at frame 3, time goes back at frame
# 6 (to a stamp of its own: the client waits for each frame's particles by stamp)
SEQUENCE = [
    (0, 64, 48, T0_NS),
    (1, 64, 48, T0_NS + STEP_NS),
    (2, 64, 48, T0_NS + 2 * STEP_NS),
    (3, 80, 60, T0_NS + 3 * STEP_NS),
    (4, 80, 60, T0_NS + 4 * STEP_NS),
    (5, 80, 60, T0_NS + 5 * STEP_NS),
    (6, 80, 60, T0_NS + STEP_NS + 7),
    (7, 80, 60, T0_NS + 2 * STEP_NS + 7),
    (8, 80, 60, T0_NS + 3 * STEP_NS + 7),
]
RESETS = {3: 'frame size changed', 6: 'time went back'}


import node_harness as harness  # noqa: E402  (tests/ros is on sys.path: no __init__.py)


def frames() -> list[np.ndarray]:
    """The (H, W, 3) uint8 RGB pictures of SEQUENCE."""
    return [harness.rgb_frame(k, width, height) for k, width, height, _ in SEQUENCE]


def image_message(rgb: np.ndarray, stamp: int, frame_id: str) -> Image:
    height, width = rgb.shape[:2]
    data = array.array('B', rgb.tobytes())
    return Image(header=harness.header(stamp, frame_id), height=height, width=width,
                 encoding='rgb8', step=width * 3, data=data)  # fmt: skip


def through_node(
    log_dir: Path, domain_id: int, bundle: Path, frame_id: str
) -> tuple[dict[int, Any], str]:
    """{stamp: ParticleArray} of the node for SEQUENCE, and the node's log.

    The camera and the node's subscription are reliable and each frame is published once its
    predecessor's particles are back, so the node sees every frame once, in order.
    """
    params = {'model_bundle': str(bundle), 'providers': 'cpu', 'threads': 1,
              'input_reliability': 'reliable', 'prediction_rate': 0.0, 'ood_every_n': 0,
              'overlay': False}  # fmt: skip
    started = harness.started(log_dir, domain_id, params)
    node, client = next(started)
    try:
        client.wait_outputs()
        pub = client.camera()  # its probe frame is stamped now: the sequence goes back from it
        for rgb, (_, _, _, stamp) in zip(frames(), SEQUENCE, strict=True):
            pub.publish(image_message(rgb, stamp, frame_id))
            client.spin_until(
                lambda s=stamp: any(
                    stamp_ns(m.header) == s for m in client.particles_of(frame_id)
                ),
                f'the particles of the frame stamped {stamp}',
            )
        got = {stamp_ns(m.header): m for m in client.particles_of(frame_id)}
        log = node.log()
    finally:
        next(started, None)
    return got, log


def through_replay(
    tmp_path: Path, bundle: Path, frame_id: str
) -> tuple[dict[int, Any], list[str]]:
    """{stamp: ParticleArray (rosbags)} of dlp-replay on a bag of SEQUENCE, and its reset logs."""
    bag = tmp_path / 'bag'
    with BagWriter(bag, 'mcap', {CAMERA: 'sensor_msgs/msg/Image'}) as writer:
        for i, (rgb, (_, _, _, stamp)) in enumerate(zip(frames(), SEQUENCE, strict=True)):
            writer.write(
                CAMERA, T0_NS + i * STEP_NS, writer.image(stamp, frame_id, rgb)
            )  # bag order
    handler = _Records()
    logging.getLogger('dlp_ros.pipeline').addHandler(handler)
    try:
        replay(ReplayConfig(bag=bag, bundle=bundle, out=tmp_path / 'out', topic=CAMERA,
                            horizon=1, frames=False))  # fmt: skip
    finally:
        logging.getLogger('dlp_ros.pipeline').removeHandler(handler)
    store, got = typestore(), {}
    with Reader(tmp_path / 'out' / 'bag') as reader:
        for conn, _, raw in reader.messages():
            if conn.topic == PARTICLES_TOPIC:
                msg = store.deserialize_cdr(raw, conn.msgtype)
                got[stamp_ns(msg.header)] = msg
    return got, handler.messages


class _Records(logging.Handler):
    """Keeps the messages of the records it gets (at INFO and above)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_node_and_replay_give_identical_particles_through_resets(
    tmp_path: Path, ros_domain_id: int, bundle_plain: Path, ros_msgs: Any
) -> None:
    frame_id = harness.unique_frame_id()
    logger = logging.getLogger('dlp_ros.pipeline')
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        offline, resets = through_replay(tmp_path, bundle_plain, frame_id)
    finally:
        logger.setLevel(level)
    online, log = through_node(tmp_path, ros_domain_id, bundle_plain, frame_id)

    stamps = [stamp for *_, stamp in SEQUENCE]
    assert sorted(offline) == sorted(stamps) and sorted(online) == sorted(stamps)
    for stamp in stamps:
        msg = online[stamp]
        msg.decode_ms = msg.encode_ms = 0.0  # the replay writes no timings
        ros_msgs.assert_equal(msg, offline[stamp])
    assert resets == [f'{RESETS[i]}: tracking starts new particle identities' for i in (3, 6)]
    # both restarted at those frames: their particles are a fresh tracker's first ones
    rt = DlpRuntime.load(bundle_plain, providers='cpu', threads=1)
    for i in RESETS:
        rgb, (_, width, height, stamp) = frames()[i], SEQUENCE[i]
        first = rt.tracker().update(rt.preprocess(rgb))
        uv = np.array([[p.u, p.v] for p in offline[stamp].particles], np.float32)
        np.testing.assert_array_equal(uv, first.pixels(width, height))
    # the node logged them through its logger (so also on /rosout); its probe frame came first
    assert log.count('dlp_ros.pipeline: frame size changed') == 1, log
    assert log.count('dlp_ros.pipeline: time went back') == 2, log
