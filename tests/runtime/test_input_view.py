"""The resize modes (squash, crop, pad) and the mapping of model coordinates back to the input
image's pixels (dlp_ros.input_view): a 640x480 frame with a drawn dot, in each mode."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from dlp_ros.errors import ConfigError
from dlp_ros.image_codec import resize_rgb
from dlp_ros.input_view import RESIZE_MODES, InputView, resize_frame
from dlp_ros.particles import ParticleFrame

W, H, S = 640, 480, 64
DOT = (400.0, 150.0)  # input pixels (u, v): inside the centred 480x480 crop too


def frame_with_dot(u: float = DOT[0], v: float = DOT[1], radius: int = 12) -> np.ndarray:
    """(480, 640, 3) uint8: a grey frame with a white dot centred at input pixel (u, v)."""
    rgb = np.full((H, W, 3), 40, np.uint8)
    centre = (round(u * 16 - 8), round(v * 16 - 8))  # pixel (0, 0) covers [0, 1)^2
    cv2.circle(rgb, centre, radius * 16, (255, 255, 255), -1, cv2.LINE_AA, shift=4)
    return rgb


def dot_in_model_pixels(model: np.ndarray) -> np.ndarray:
    """(2,) intensity centroid of the dot in model pixel coordinates (x, y; corner origin)."""
    weight = np.clip(model[..., 0].astype(np.float64) - 40.0, 0.0, None)  # background out
    ys, xs = np.mgrid[0 : model.shape[0], 0 : model.shape[1]] + 0.5  # pixel centres
    return np.array([(weight * xs).sum(), (weight * ys).sum()]) / weight.sum()


@pytest.mark.parametrize('mode', RESIZE_MODES)
def test_the_dot_maps_back_to_its_input_pixel(mode: str) -> None:
    model = resize_frame(frame_with_dot(), S, mode)
    assert model.shape == (S, S, 3) and model.dtype == np.uint8
    xy = dot_in_model_pixels(model)  # model pixels
    mu = xy / S * 2.0 - 1.0  # normalised, as the DLP reports positions
    uv = InputView(W, H, mode).to_pixels(mu)
    step = np.array(InputView(W, H, mode).region[2:]) / S  # input pixels per model pixel
    np.testing.assert_allclose(uv, DOT, atol=0.25 * step.max())
    frame = ParticleFrame(mu[None], np.zeros((1, 2)), np.zeros((1, 2)), np.zeros((1, 1)),
                          np.ones((1, 1)), np.zeros((1, 2)), np.zeros(2))  # fmt: skip
    np.testing.assert_array_equal(frame.pixels(W, H, mode)[0], uv)  # the message path
    assert frame.message_fields(W, H, mode)['particles'][0]['u'] == pytest.approx(uv[0])


def test_the_modes_differ_where_they_should() -> None:
    uv = {m: InputView(W, H, m).to_pixels(np.array([0.5, -0.5])) for m in RESIZE_MODES}
    np.testing.assert_allclose(uv['squash'], [480, 120])  # (0.75 W, 0.25 H)
    np.testing.assert_allclose(uv['crop'], [80 + 360, 0 + 120])  # 480 px square from x = 80
    np.testing.assert_allclose(uv['pad'], [480, -80 + 160])  # 640 px square from y = -80


def test_crop_and_pad_images() -> None:
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:, :80] = (255, 0, 0)  # left strip: outside the centred crop
    rgb[:, 80:] = (0, 200, 0)
    crop = resize_frame(rgb, S, 'crop')
    assert (crop == (0, 200, 0)).all()  # the strip is not seen
    pad = resize_frame(np.full((H, W, 3), 200, np.uint8), S, 'pad')
    bar = S * 80 // 640  # 80 black rows above and below at 640 -> 8 model rows
    assert (pad[:bar] == 0).all() and (pad[-bar:] == 0).all()
    assert (pad[bar:-bar] == 200).all()
    np.testing.assert_array_equal(resize_frame(rgb, S, 'squash'), resize_rgb(rgb, S))


@pytest.mark.parametrize('mode', RESIZE_MODES)
@pytest.mark.parametrize('size', [(640, 480), (480, 640), (64, 64), (101, 57)])
def test_to_normalised_inverts_to_pixels(mode: str, size: tuple[int, int]) -> None:
    view = InputView(*size, mode)
    mu = np.random.default_rng(0).uniform(-1, 1, (10, 2))
    np.testing.assert_allclose(view.to_normalised(view.to_pixels(mu)), mu, atol=1e-5)
    if size[0] == size[1]:  # a square frame: every mode is squash
        np.testing.assert_array_equal(view.to_pixels(mu), InputView(*size).to_pixels(mu))


def test_squash_is_the_old_linear_mapping() -> None:
    mu = np.random.default_rng(1).uniform(-1, 1, (7, 2)).astype(np.float32)
    old = ((mu + 1.0) / 2.0 * np.array([W, H], np.float32)).astype(np.float32)
    np.testing.assert_array_equal(InputView(W, H).to_pixels(mu), old)


def test_model_image_back_over_the_input() -> None:
    model = np.full((S, S, 3), 100, np.uint8)
    crop = InputView(W, H, 'crop').model_image_to_input(model)
    assert crop.shape == (H, W, 3)
    assert (crop[:, 80:560] == 100).all()
    assert (crop[:, :80] == 0).all() and (crop[:, 560:] == 0).all()
    pad = InputView(W, H, 'pad').model_image_to_input(model)
    assert (pad == 100).all()


def test_describe_and_bad_modes() -> None:
    line = InputView(W, H, 'crop').describe(S)
    assert line.startswith('input 640x480 -> model 64x64 by crop')
    assert 'u = 80 + 7.5 * x, v = 0 + 7.5 * y' in line
    assert 'u = 0 + 10 * x, v = -80 + 10 * y' in InputView(W, H, 'pad').describe(S)
    with pytest.raises(ConfigError, match=r"resize mode must be one of \['squash', 'crop', 'pad'"):
        InputView(W, H, 'stretch')
