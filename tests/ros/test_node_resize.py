"""The node with a crop or pad model (the card's image.resize), over real DDS: particles in the
input image's pixels, the mapping logged once, a resize_mode other than the card's refused at
configure with both named.

The installed ``lib/dlp_ros/perception_node`` in a process of its own (tests/ros/node_harness.py),
a tiny random-weight bundle whose card says crop or pad, 64x48 camera frames.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip('rclpy')
pytest.importorskip('dlp_ros.srv')

from dlp_ros.runtime import DlpRuntime  # noqa: E402

pytestmark = pytest.mark.ros

T0_NS = 1_732_000_000_987_654_321  # before the probe frame's stamp: tracking restarts here


import node_harness as harness  # noqa: E402  (tests/ros is on sys.path: no __init__.py)

WIDTH, HEIGHT = harness.WIDTH, harness.HEIGHT  # 64x48: not square, so the modes differ


def bundle_with_resize(plain: Path, out: Path, mode: str) -> Path:
    """A copy of the tiny bundle whose model card says ``image.resize: mode``."""
    shutil.copytree(plain, out)
    card = yaml.safe_load((out / 'model_card.yaml').read_text())
    card['image']['resize'] = mode
    (out / 'model_card.yaml').write_text(yaml.safe_dump(card, sort_keys=False))
    return out


@pytest.mark.parametrize(('mode', 'param'), [('crop', 'crop'), ('pad', '')])
def test_particles_are_in_input_pixels_with_a_crop_or_pad_model(
    tmp_path: Path, ros_domain_id: int, bundle_plain: Path, mode: str, param: str
) -> None:
    """A frame's particles come back in pixels of the 64x48 input through the card's mode
    (resize_mode given equal to the card's, or empty), exactly as the runtime maps them here,
    and not where the squash mapping would put them."""
    bundle = bundle_with_resize(bundle_plain, tmp_path / mode, mode)
    params = {'model_bundle': str(bundle), 'threads': 1, 'prediction_rate': 0.0,
              'resize_mode': param}  # fmt: skip
    started = harness.started(tmp_path, ros_domain_id, params)
    node, client = next(started)
    try:
        client.wait_outputs()
        pub = client.camera()
        frame_id = harness.unique_frame_id()
        harness.send_processed(client, pub, [harness.raw_image(T0_NS, frame_id, 3)])
        msg = client.particles_of(frame_id)[0]  # the first: tracking restarted at it
        assert (msg.image_width, msg.image_height) == (WIDTH, HEIGHT)
        uv = np.array([[p.u, p.v] for p in msg.particles])
        scale = np.array([p.scale for p in msg.particles])
        rt = DlpRuntime.load(bundle, providers='cpu', threads=1)
        assert rt.card.image.resize == mode
        frame = rt.tracker().update(rt.preprocess(harness.rgb_frame(3)))
        np.testing.assert_allclose(uv, frame.pixels(WIDTH, HEIGHT, mode), atol=1e-3)
        np.testing.assert_allclose(scale, frame.scale_px(WIDTH, HEIGHT, mode), rtol=1e-4)
        squashed = frame.pixels(WIDTH, HEIGHT)  # what the mode changes
        assert np.abs(uv - squashed).max() > 1.0
        line = f'input {WIDTH}x{HEIGHT} -> model 64x64 by {mode}'
        assert node.log().count(line) == 1, node.log()  # logged once, at the first frame
    finally:
        next(started, None)


def test_a_resize_mode_other_than_the_cards_fails_configure(
    tmp_path: Path, ros_domain_id: int, bundle_plain: Path
) -> None:
    bundle = bundle_with_resize(bundle_plain, tmp_path / 'crop', 'crop')
    params = {
        'model_bundle': str(bundle),
        'threads': 1,
        'resize_mode': 'pad',
        'exit_on_configure_failure': False,
    }  # stays up, unconfigured
    started = harness.started(tmp_path, ros_domain_id, params)
    node, client = next(started)
    try:
        reason = (f"configure failed: resize_mode is 'pad' but the model card of {bundle} says "
                  "image.resize 'crop'")  # fmt: skip
        client.spin_until(lambda: reason in node.log(), 'the refusal')
        client.spin_until(lambda: 'autostart: configure failed' in node.log(), 'autostart')
        assert 'active:' not in node.log()
    finally:
        next(started, None)
