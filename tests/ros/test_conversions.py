"""dlp_ros.conversions: rclpy messages <-> numpy (no DDS, no node)."""

from __future__ import annotations

import array

import numpy as np
import pytest

pytest.importorskip('rclpy')
pytest.importorskip('dlp_ros.msg')

from geometry_msgs.msg import TwistStamped  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402

from dlp_ros import conversions  # noqa: E402
from dlp_ros.errors import ImageError  # noqa: E402
from dlp_ros.image_codec import encode_compressed  # noqa: E402
from dlp_ros.particles import ParticleFrame  # noqa: E402

pytestmark = pytest.mark.ros


def _frame(k: int = 5, f: int = 3, fb: int = 4, seed: int = 0) -> ParticleFrame:
    rng = np.random.default_rng(seed)
    scale = rng.normal(-1.0, 0.5, (k, 1)).repeat(2, axis=1)  # square boxes survive the message
    return ParticleFrame(
        mu=rng.uniform(-0.9, 0.9, (k, 2)),
        logvar=rng.uniform(-6, -2, (k, 2)),
        scale=scale,
        depth=rng.normal(size=(k, 1)),
        transparency=rng.uniform(0, 1, (k, 1)),
        features=rng.normal(size=(k, f)),
        bg_features=rng.normal(size=fb),
    )


def test_particle_array_round_trips_through_particle_frame(ros_msgs: object) -> None:
    frame = _frame()
    header = ros_msgs.header(ros_msgs.T0_NS)
    msg = conversions.particle_array(frame, header, 640, 480, decode_ms=1.5, encode_ms=2.5)
    assert msg.header == header and (msg.image_width, msg.image_height) == (640, 480)
    assert [p.id for p in msg.particles] == list(range(5))
    np.testing.assert_allclose([[p.u, p.v] for p in msg.particles], frame.pixels(640, 480))
    assert isinstance(msg.particles[0].features, array.array)
    back = conversions.particle_frame(msg, n_particles=5, n_features=3, n_bg_features=4)
    for name, want in frame.arrays().items():
        np.testing.assert_allclose(getattr(back, name), want, rtol=1e-4, atol=1e-5, err_msg=name)


def test_on_is_the_transparency_above_the_threshold(ros_msgs: object) -> None:
    frame = _frame(k=8)
    transparency = frame.transparency[:, 0]
    assert 0 < int((transparency > 0.5).sum()) < 8  # both kinds present
    header = ros_msgs.header(ros_msgs.T0_NS)
    msg = conversions.particle_array(frame, header, 64, 64)
    assert [p.on for p in msg.particles] == (transparency > 0.5).tolist()
    assert all(type(p.on) is bool for p in msg.particles)
    low = conversions.particle_array(frame, header, 64, 64, on_threshold=0.1)
    assert [p.on for p in low.particles] == (transparency > 0.1).tolist()
    pred = conversions.prediction(header, (64, 64), 0.1, [frame, frame], on_threshold=0.1)
    assert all([p.on for p in s.particles] == (transparency > 0.1).tolist() for s in pred.steps)


def test_particle_frame_fills_missing_slots_and_rejects_misfits(ros_msgs: object) -> None:
    msg = conversions.particle_array(_frame(k=3), ros_msgs.header(0), 64, 64)
    back = conversions.particle_frame(msg, n_particles=6, n_features=3, n_bg_features=4)
    assert back.n_particles == 6 and np.all(back.transparency[3:] == 0)
    with pytest.raises(ValueError, match='needs 5'):
        conversions.particle_frame(msg, 6, 5, 4)
    with pytest.raises(ValueError, match='background_features has 4 values, the model needs 2'):
        conversions.particle_frame(msg, 6, 3, 2)
    with pytest.raises(ValueError, match='ids are slots 0..1'):
        conversions.particle_frame(msg, 2, 3, 4)
    msg.image_width = 0
    with pytest.raises(ValueError, match='image_width'):
        conversions.particle_frame(msg, 6, 3, 4)


def test_shifted_header_carries_nanoseconds_into_seconds(ros_msgs: object) -> None:
    header = ros_msgs.header(1_000_000_000 * 7 + 987_654_321)
    for k in (1, 2, 3, 20):
        offset = conversions.step_offset_ns(k, 0.05)
        assert offset == k * 50_000_000
        shifted = conversions.shifted_header(header, offset)
        assert conversions.stamp_ns(shifted) == conversions.stamp_ns(header) + offset
        assert 0 <= shifted.stamp.nanosec < 1_000_000_000
        assert shifted.frame_id == header.frame_id


def test_image_to_rgb_raw_and_compressed(ros_msgs: object) -> None:
    image = ros_msgs.image(width=20, height=10)
    rgb = conversions.image_to_rgb(image)
    assert rgb.shape == (10, 20, 3) and rgb.dtype == np.uint8
    back = conversions.rgb_to_image(rgb, image.header)
    assert bytes(back.data) == bytes(image.data) and back.encoding == 'rgb8' and back.step == 60
    png = CompressedImage(format='png', data=encode_compressed(rgb, 'png'))
    np.testing.assert_array_equal(conversions.image_to_rgb(png), rgb)


@pytest.mark.parametrize(
    ('msg', 'match'),
    [
        (Image(height=2, width=2, encoding='32FC1', step=8, data=bytes(16)), 'unsupported'),
        (Image(height=0, width=0, encoding='rgb8', step=0), 'zero size'),
        (Image(height=4, width=4, encoding='rgb8', step=12, data=bytes(20)), 'truncated'),
        (CompressedImage(format='jpeg', data=b'\xff\xd8\xff\xe0garbage'), 'corrupt'),
        (CompressedImage(format='jpeg', data=b''), 'no data'),
        (CompressedImage(format='theora', data=b'abc'), 'unsupported'),
    ],
)
def test_image_to_rgb_bad_frames_raise_image_error(msg: object, match: str) -> None:
    with pytest.raises(ImageError, match=match):
        conversions.image_to_rgb(msg)


def test_twist_to_action_follows_the_card_names() -> None:
    msg = TwistStamped()
    msg.twist.linear.x, msg.twist.linear.y, msg.twist.angular.z = 0.5, -0.25, 2.0
    np.testing.assert_array_equal(
        conversions.twist_to_action(msg, ['linear.x', 'linear.y'], 2), [0.5, -0.25]
    )
    np.testing.assert_array_equal(
        conversions.twist_to_action(msg, ['angular.z', 'linear.x'], 2), [2.0, 0.5]
    )
    np.testing.assert_array_equal(conversions.twist_to_action(msg, [], 2), [0.5, -0.25])


def test_batch_response_packs_pixels_as_particle_array_does(ros_msgs: object) -> None:
    """u, v of each (candidate, step) are exactly the particles /dlp/particles would carry for
    that frame; presence is the transparency; all B x N x K row-major."""
    from dlp_ros.particles import FIELDS, stack
    from dlp_ros.srv import PredictBatch

    b, n, k, width, height = 2, 3, 5, 640, 480
    frames = [[_frame(k, seed=10 * i + j) for j in range(n)] for i in range(b)]
    fields = {name: np.stack([stack(row)[name] for row in frames]) for name in FIELDS}
    header = ros_msgs.header(ros_msgs.T0_NS)
    current = conversions.particle_array(_frame(k), header, width, height)
    answer = conversions.batch_response(PredictBatch.Response(), current, 0.1, fields)
    assert (answer.candidates, answer.horizon, answer.particles, answer.dt) == (b, n, k, 0.1)
    assert answer.header == header and answer.current == current
    u, v, p = (np.asarray(x).reshape(b, n, k) for x in (answer.u, answer.v, answer.presence))
    for i in range(b):
        for j in range(n):
            msg = conversions.particle_array(frames[i][j], header, width, height)
            assert u[i, j].tolist() == [q.u for q in msg.particles]
            assert v[i, j].tolist() == [q.v for q in msg.particles]
            assert p[i, j].tolist() == [q.transparency for q in msg.particles]
