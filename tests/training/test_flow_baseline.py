"""The constant optical-flow baseline (``dlp_training.flow_baseline``) on synthetic motion."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from dlp_ros.image_quality import psnr_from_mse
from dlp_training.flow_baseline import compose_maps, constant_flow, farneback_flow

S, SIDE = 64, 14


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2) / 255.0**2
    return float(psnr_from_mse(np.array([mse]), 1.0)[0])


@pytest.fixture(scope='module')
def square_frames() -> list[np.ndarray]:
    """12 frames (S, S, 3) uint8: a textured square moving (+2, +1) px per frame over a textured,
    static background."""
    rng = np.random.default_rng(0)
    bg = cv2.GaussianBlur((rng.random((S, S, 3)) * 60 + 40).astype(np.uint8), (0, 0), 1.0)
    tex = cv2.GaussianBlur((rng.random((SIDE, SIDE, 3)) * 255).astype(np.uint8), (0, 0), 1.0)
    frames = []
    for t in range(12):
        f = bg.copy()
        x, y = 10 + 2 * t, 12 + t
        f[y : y + SIDE, x : x + SIDE] = tex
        frames.append(f)
    return frames


def test_flow_of_a_translating_square(square_frames: list[np.ndarray]) -> None:
    g = farneback_flow(square_frames[1], square_frames[0])  # last -> prev: minus the motion
    inside = g[15:22, 14:22].reshape(-1, 2).mean(axis=0)  # inside the square of frame 1
    np.testing.assert_allclose(inside, [-2.0, -1.0], atol=0.3)


def test_flow_beats_the_last_frame_on_a_translating_square(
    square_frames: list[np.ndarray],
) -> None:
    pred = constant_flow(square_frames[0], square_frames[1], 10)
    assert pred.shape == (10, S, S, 3) and pred.dtype == np.uint8
    flow = [_psnr(pred[k], square_frames[k + 2]) for k in range(10)]
    last = [_psnr(square_frames[1], square_frames[k + 2]) for k in range(10)]
    assert all(f > g + 1.0 for f, g in zip(flow, last, strict=True)), (flow, last)
    assert flow[0] > 38.0  # step 1 almost exact
    assert np.mean(flow) > np.mean(last) + 5.0


def test_static_image_gives_exactly_the_last_frame(square_frames: list[np.ndarray]) -> None:
    pred = constant_flow(square_frames[3], square_frames[3], 5)
    assert pred.shape == (5, S, S, 3)
    assert all(np.array_equal(p, square_frames[3]) for p in pred)


def test_maps_compose_a_uniform_shift() -> None:
    flow = np.zeros((S, S, 2), np.float32)
    flow[..., 0] = 1.5  # every pixel comes from 1.5 px to the right
    maps = compose_maps(flow, 4)
    xs = np.arange(S, dtype=np.float32)
    for k, m in enumerate(maps, start=1):  # away from the replicated right border
        np.testing.assert_allclose(m[10, : S - 8, 0], xs[: S - 8] + 1.5 * k, atol=1e-3)
        np.testing.assert_allclose(m[10, :, 1], 10.0, atol=1e-3)


def test_bad_input() -> None:
    f = np.zeros((S, S, 3), np.uint8)
    with pytest.raises(ValueError, match='horizon'):
        constant_flow(f, f, 0)
    with pytest.raises(ValueError, match='two'):
        constant_flow(f, np.zeros((S, S + 1, 3), np.uint8), 3)
