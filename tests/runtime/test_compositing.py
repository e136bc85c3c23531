"""Predicted frames drawn over the observed frame (dlp_ros.compositing)."""

from __future__ import annotations

import numpy as np
import pytest

from dlp_ros.compositing import MODES, Motion, compose, from_uint8, particle_flow, to_uint8

S = 32


def _square(u: int, v: int, side: int = 6, colour: float = 0.9) -> np.ndarray:
    """(3, S, S) grey background with a square whose top-left pixel is (u, v)."""
    img = np.full((3, S, S), 0.2, np.float32)
    img[:, v : v + side, u : u + side] = colour
    return img


def _motion(start: tuple[float, float], ends: list[tuple[float, float]]) -> Motion:
    return Motion(start=np.array([start], float), end=np.array([[e] for e in ends], float),
                  radius=np.array([4.0]), weight=np.array([1.0]))  # fmt: skip


def test_where_nothing_moves_every_form_but_decoded_returns_the_observed_frame() -> None:
    rng = np.random.default_rng(0)
    observed = rng.uniform(0, 1, (3, S, S)).astype(np.float32)
    decoded_observed = rng.uniform(0, 1, (3, S, S)).astype(np.float32)  # a poor reconstruction
    decoded = np.repeat(decoded_observed[None], 2, axis=0)  # nothing predicted to change
    still = _motion((10.0, 10.0), [(10.0, 10.0), (10.0, 10.0)])
    for mode in ('residual', 'gated', 'warped', 'warped_gated'):
        out = compose(mode, observed, decoded, decoded_observed, still)
        np.testing.assert_allclose(out, np.repeat(observed[None], 2, 0), atol=1e-6, err_msg=mode)
    np.testing.assert_array_equal(compose('decoded', observed, decoded, decoded_observed), decoded)


def test_warped_moves_the_observed_object_with_its_particle() -> None:
    # the camera frame has a texture the decoder cannot draw; the decoder draws flat squares
    observed = _square(8, 8)
    observed[:, 9, 9] = 0.5  # a detail inside the square
    decoded_observed = _square(8, 8, colour=0.8)
    decoded = np.stack([_square(14, 8, colour=0.8)])  # the particle moved 6 px right
    motion = _motion((11.0, 11.0), [(17.0, 11.0)])  # centre of the 6 px square
    out = compose('warped', observed, decoded, decoded_observed, motion)[0]
    assert out[0, 9, 15] == pytest.approx(0.5, abs=0.02), 'the detail moved with the object'
    np.testing.assert_allclose(out[:, 10:12, 16:19], 0.9, atol=0.02)  # camera colour, not 0.8
    # uncovered: the decoded background plus the decoder's error on the object (0.9 - 0.8), no
    # ghost of the object left behind
    np.testing.assert_allclose(out[:, 10:13, 10:12], 0.3, atol=0.05)
    residual = compose('residual', observed, decoded, decoded_observed)[0]
    assert abs(residual[0, 9, 15] - 0.5) > 0.2, 'the residual form redraws it instead'


def test_warped_gated_moves_the_camera_pixels_and_takes_the_decoder_only_where_it_differs() -> (
    None
):
    observed = _square(8, 8)
    observed[:, 9, 9] = 0.5
    decoded_observed = _square(8, 8, colour=0.8)
    decoded = np.stack([_square(14, 8, colour=0.8)])
    motion = _motion((11.0, 11.0), [(17.0, 11.0)])
    out = compose('warped_gated', observed, decoded, decoded_observed, motion)[0]
    assert out[0, 9, 15] == pytest.approx(0.5, abs=0.02), 'the detail moved with the object'
    np.testing.assert_allclose(out[:, 10:12, 16:19], 0.9, atol=0.02)  # camera colour
    # uncovered: the decoder's background (0.2) alone, not the warped form's added error
    np.testing.assert_allclose(out[:, 10:13, 9:11], 0.2, atol=0.02)
    np.testing.assert_allclose(out[:, 25:, 25:], observed[:, 25:, 25:])  # far pixels: observed
    # the same prediction without motion is the gated form
    still = _motion((11.0, 11.0), [(11.0, 11.0)])
    np.testing.assert_allclose(compose('warped_gated', observed, decoded, decoded_observed, still),
                               compose('gated', observed, decoded, decoded_observed))  # fmt: skip


def test_particle_flow_is_the_displacement_near_a_particle_and_zero_far_away() -> None:
    flow = particle_flow(_motion((10.0, 10.0), [(13.0, 8.0)]), S)  # (1, S, S, 2)
    np.testing.assert_allclose(flow[0, 7, 12], [3.0, -2.0], atol=0.01)  # pixel centre 12.5, 7.5
    np.testing.assert_allclose(flow[0, 28, 28], [0.0, 0.0], atol=1e-6)
    off = Motion(start=np.array([[10.0, 10.0]]), end=np.array([[[13.0, 8.0]]]),
                 radius=np.array([4.0]), weight=np.array([0.0]))  # fmt: skip
    np.testing.assert_allclose(particle_flow(off, S), 0.0)  # a switched-off particle moves nothing


def test_bad_input_is_refused_with_the_reason() -> None:
    img = np.zeros((3, S, S), np.float32)
    with pytest.raises(ValueError, match='must be one of'):
        compose('blend', img, img[None], img)
    for mode in ('warped', 'warped_gated'):
        with pytest.raises(ValueError, match=f"'{mode}' needs the particles"):
            compose(mode, img, img[None], img)
    with pytest.raises(ValueError, match=r'\(3, S, S\)'):
        compose('residual', img[:, :8], img[None], img)
    assert set(MODES) == {'decoded', 'residual', 'gated', 'warped', 'warped_gated'}


def test_uint8_round_trip() -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (2, S, S, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_uint8(from_uint8(rgb)), rgb)
