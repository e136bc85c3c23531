"""Image and keypoint metrics: PSNR, SSIM, Hungarian localisation, the linear probe."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dlp_ros import image_quality
from dlp_training.metrics import (
    LocalisationAccumulator,
    fit_linear_map,
    gaussian_window,
    linear_probe,
    match_frame,
    psnr,
    split_half_probe,
    ssim,
)


def _images(b: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    """(B, 3, size, size) smooth-ish random images in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, size // 4, size // 4, generator=g)
    return torch.nn.functional.interpolate(x, size=size, mode='bilinear', align_corners=False)


def test_psnr_identical_and_constant_offset() -> None:
    x = _images().clamp(0, 0.8)
    assert torch.allclose(psnr(x + 0.1, x), torch.full((2,), 20.0), atol=1e-3)  # -20 log10(0.1)
    assert torch.allclose(psnr(x + 0.01, x), torch.full((2,), 40.0), atol=1e-3)
    assert torch.all(psnr(x, x) >= 99.0)  # MSE floored at 1e-10 -> 100 dB, finite


def test_one_psnr_for_float_and_uint8_images() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-9, 10, a.shape), 0, 255).astype(np.uint8)
    on_uint8 = image_quality.psnr(a, b, 255.0)  # (2,)
    on_float = psnr(torch.from_numpy(a / 255.0), torch.from_numpy(b / 255.0)).numpy()
    np.testing.assert_allclose(on_float, on_uint8, rtol=1e-9)
    assert image_quality.psnr(a, a, 255.0).tolist() == [image_quality.PSNR_CAP_DB] * 2
    with pytest.raises(ValueError, match='one shape'):
        image_quality.psnr(a, b[:, :4])


def test_ssim_identical_is_one_and_symmetric() -> None:
    x, y = _images(seed=0), _images(seed=1)
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-6)
    assert torch.allclose(ssim(x, y), ssim(y, x), atol=1e-7)
    assert torch.all(ssim(x, y) < 0.99)


def test_ssim_decreases_monotonically_with_noise() -> None:
    x = _images(b=1)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    values = [float(ssim((x + s * noise).clamp(0, 1), x)) for s in (0.0, 0.02, 0.05, 0.1, 0.2)]
    assert values[0] == pytest.approx(1.0, abs=1e-6)
    assert all(a > b for a, b in zip(values, values[1:], strict=False)), values


def test_ssim_of_constant_images_by_hand() -> None:
    # Constant images: every window has sigma = cov = 0, so SSIM = (2ab + C1) / (a^2 + b^2 + C1).
    a, b = 0.3, 0.6
    c1 = 0.01**2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    x, y = torch.full((1, 3, 16, 16), a), torch.full((1, 3, 16, 16), b)
    assert float(ssim(x, y)) == pytest.approx(expected, rel=1e-6)


def test_ssim_matches_the_reference_formula_on_one_window() -> None:
    # An 11 x 11 image has one valid window: the Gaussian-weighted statistics of Wang et al.
    rng = np.random.default_rng(0)
    x, y = rng.random((11, 11)), rng.random((11, 11))
    w = gaussian_window().numpy()
    assert w.sum() == pytest.approx(1.0) and w[5, 5] == w.max()
    mx, my = (w * x).sum(), (w * y).sum()
    vx, vy = (w * (x - mx) ** 2).sum(), (w * (y - my) ** 2).sum()
    cxy = (w * (x - mx) * (y - my)).sum()
    c1, c2 = 0.01**2, 0.03**2
    ref = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    got = ssim(torch.from_numpy(x)[None, None].float(), torch.from_numpy(y)[None, None].float())
    assert float(got) == pytest.approx(ref, abs=1e-5)


def test_ssim_refuses_small_or_mismatched_images() -> None:
    with pytest.raises(ValueError, match='at least 11'):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match='one shape'):
        ssim(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 17))


GT_XY = np.array([[10.0, 10.0], [30.0, 40.0], [50.0, 20.0]])  # (N, 2) px
RADIUS = np.array([4.0, 4.0, 4.0])


def test_perfect_match_has_zero_error_and_full_recall() -> None:
    xy = GT_XY[[2, 0, 1]]  # particles in another order
    m = match_frame(xy, np.ones(3), GT_XY, RADIUS, np.ones(3, bool))
    assert m.hits == 3 and m.visible == 3 and m.on == 3
    assert np.allclose(m.distances, 0.0)
    assert sorted(zip(m.objects.tolist(), m.particles.tolist(), strict=True)) == [
        (0, 1), (1, 2), (2, 0)
    ]  # fmt: skip


def test_missing_particle_lowers_recall_and_offsets_are_measured() -> None:
    xy = np.array([[13.0, 14.0], [30.0, 41.0]])  # 5 px and 1 px from objects 0 and 1; none at 2
    acc = LocalisationAccumulator()
    acc.add(xy[None], np.ones((1, 2)), GT_XY[None], RADIUS[None], np.ones((1, 3), bool))
    s = acc.summary()
    assert s['recall'] == pytest.approx(1 / 3)  # 5 px > radius 4: a miss; object 2 unmatched
    assert s['mean_error_px'] == pytest.approx(3.0)
    assert s['frames'] == 1 and s['visible_objects'] == 3 and s['matched'] == 2
    assert s['mean_particles_on'] == 2.0


def test_transparent_particles_and_invisible_objects_are_ignored() -> None:
    # particle 1 sits on object 1 but is off (0.5 is not > 0.5); object 2 is hidden
    xy = np.array([[10.0, 11.0], [30.0, 40.0], [50.0, 20.0]])
    presence = np.array([0.9, 0.5, 0.2])
    visible = np.array([True, True, False])
    m = match_frame(xy, presence, GT_XY, RADIUS, visible)
    assert m.on == 1 and m.visible == 2 and m.hits == 1
    assert m.distances.tolist() == [1.0] and m.particles.tolist() == [0]
    acc = LocalisationAccumulator()
    acc.add(xy[None], np.zeros((1, 3)), GT_XY[None], RADIUS[None], np.zeros((1, 3), bool))
    s = acc.summary()
    assert s['mean_error_px'] is None and s['recall'] is None and s['mean_particles_on'] == 0


def test_linear_probe_recovers_a_known_map() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(8, 2))  # K = 4 particles (x, y) -> one point
    x_train, x_test = rng.uniform(-1, 1, (200, 8)), rng.uniform(-1, 1, (50, 8))
    assert np.allclose(fit_linear_map(x_train, x_train @ w, ridge=0.0), w, atol=1e-10)
    result = linear_probe(x_train, x_train @ w, x_test, x_test @ w)  # default tiny ridge
    assert np.allclose(result.weights, w, atol=1e-4)
    assert result.errors.shape == (50, 1) and result.mean_error < 1e-4
    # a shifted test target is off by exactly the shift: 3-4-5
    shifted = linear_probe(x_train, x_train @ w, x_test, x_test @ w + [3.0, 4.0], ridge=0.0)
    assert shifted.mean_error == pytest.approx(5.0)
    # several points per sample: (M, J, 2) targets give (M, J) errors
    w2 = rng.normal(size=(8, 4))
    multi = linear_probe(x_train, (x_train @ w2).reshape(-1, 2, 2), x_test,
                         (x_test @ w2).reshape(-1, 2, 2))  # fmt: skip
    assert multi.errors.shape == (50, 2) and multi.mean_error < 1e-4


def test_linear_probe_is_stable_with_collinear_inputs() -> None:
    x = np.ones((10, 4))  # every input the same: lstsq + ridge gives a finite, minimal answer
    result = linear_probe(x, np.full((10, 2), 0.5), x, np.full((10, 2), 0.5))
    assert np.all(np.isfinite(result.weights)) and result.mean_error < 1e-4
    assert math.isfinite(result.mean_error)
    with pytest.raises(ValueError, match='needs'):
        fit_linear_map(np.zeros((0, 2)), np.zeros((0, 2)))


def test_split_half_probe_fits_the_first_half_and_tests_the_second() -> None:
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (20, 3, 2))  # (T, K, 2) particle positions
    y = x[:, 1] * 0.5  # the object follows particle 1 at half scale
    y[15:] += [0.6, 0.8]  # ...until step 15, where it jumps: only the test half sees it
    valid = np.ones(20, bool)
    valid[[0, 19]] = False
    errors = split_half_probe(x, y, valid)
    assert errors.shape == (9,)  # 18 valid steps: fit on 9, test on 9
    assert np.allclose(errors[:5], 0.0, atol=1e-4) and np.allclose(errors[5:], 1.0, atol=1e-4)
    assert split_half_probe(x, y, np.arange(20) < 3) is None  # fewer than 4 valid steps
