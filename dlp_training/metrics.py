r"""Image and keypoint metrics: PSNR, SSIM, Hungarian localisation, linear probe (MAFL protocol).

Pure torch / numpy / scipy, no model code: reused by ``evaluate-dlp`` and by video prediction.

* :func:`psnr` and :func:`ssim` take images (B, C, H, W) in [0, ``data_range``] and return one
  value per image. SSIM (Wang et al., 2004) uses an 11 x 11 Gaussian window of std 1.5, the
  constants :math:`C_1 = (0.01 L)^2`, :math:`C_2 = (0.03 L)^2`, is computed per channel on the
  *valid* part of the image (no padding, as the reference implementation) and averaged over
  positions and channels.
* :func:`match_frame` matches the visible ground-truth objects of one frame to the particles that
  are on (Hungarian algorithm on pixel distances); :class:`LocalisationAccumulator` sums frames.
* :func:`linear_probe` fits a linear map without intercept from inputs to 2-D targets with
  ``numpy.linalg.lstsq`` and reports the Euclidean error on held-out samples;
  :func:`split_half_probe` does so within one sequence (fit on its first half, test on the rest).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from dlp_ros import image_quality

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
RIDGE = 1e-6  # default ridge of linear_probe, relative to the mean squared input (see there)


# ------------------------------------------------------------------------------------- images


def psnr(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """PSNR in dB of each image pair (:func:`dlp_ros.image_quality.psnr_from_mse`; the MSE in
    float64 where the images are, only the (B,) MSEs go to the CPU). (B, ...) x 2 -> (B,) in
    ``x``'s dtype, on the CPU."""
    mse = ((x.detach().double() - y.detach().double()) ** 2).flatten(1).mean(-1)  # (B,)
    db = image_quality.psnr_from_mse(mse.cpu().numpy(), data_range)  # (B,)
    return torch.from_numpy(db).to(x.dtype)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> Tensor:
    """(size, size) float64 Gaussian window that sums to 1."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim_map(
    x: Tensor,
    y: Tensor,
    data_range: float = 1.0,
    window: int = SSIM_WINDOW,
    sigma: float = SSIM_SIGMA,
) -> Tensor:
    """SSIM at every valid window position. (B, C, H, W) x 2 -> (B, C, H - w + 1, W - w + 1)."""
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f'ssim needs two (B, C, H, W) tensors of one shape, got {x.shape}, '
                         f'{y.shape}')  # fmt: skip
    if min(x.shape[-2:]) < window:
        raise ValueError(f'ssim needs images of at least {window} px, got {tuple(x.shape[-2:])}')
    c = x.shape[1]
    x, y = x.double(), y.double()
    kernel = gaussian_window(window, sigma).expand(c, 1, window, window)  # (C, 1, w, w)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, kernel, groups=c)  # (B, C, H', W')

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return num / den


def ssim(
    x: Tensor,
    y: Tensor,
    data_range: float = 1.0,
    window: int = SSIM_WINDOW,
    sigma: float = SSIM_SIGMA,
) -> Tensor:
    """Mean SSIM of each image pair over positions and channels. (B, C, H, W) x 2 -> (B,)."""
    return ssim_map(x, y, data_range, window, sigma).flatten(1).mean(-1).to(x.dtype)


# ------------------------------------------------------------------------------- localisation


@dataclass(frozen=True)
class FrameMatch:
    """The Hungarian matching of one frame."""

    distances: np.ndarray  # (M,) px, one per matched (object, particle) pair
    objects: np.ndarray  # (M,) int, index of each matched object among all N objects
    particles: np.ndarray  # (M,) int, index of each matched particle among all K particles
    hits: int  # visible objects whose matched particle is closer than the object's radius
    visible: int  # visible objects
    on: int  # particles on


def match_frame(
    xy: np.ndarray,
    presence: np.ndarray,
    gt_xy: np.ndarray,
    gt_radius: np.ndarray,
    gt_visible: np.ndarray,
    threshold: float = 0.5,
) -> FrameMatch:
    """Match visible objects to particles that are on (presence > ``threshold``).

    Args:
        xy: (K, 2) particle positions, px. presence: (K,) transparency in [0, 1].
        gt_xy: (N, 2) object positions, px. gt_radius: (N,) px. gt_visible: (N,) bool.

    Returns:
        :class:`FrameMatch`; with fewer particles on than visible objects, the objects left over
        are unmatched and count as misses.
    """
    on = np.flatnonzero(np.asarray(presence).reshape(-1) > threshold)  # (K',)
    seen = np.flatnonzero(np.asarray(gt_visible, dtype=bool))  # (N',)
    if len(on) == 0 or len(seen) == 0:
        none = np.zeros(0, dtype=np.int64)
        return FrameMatch(np.zeros(0), none, none, 0, len(seen), len(on))
    particles = np.asarray(xy, dtype=np.float64)[on]  # (K', 2)
    objects = np.asarray(gt_xy, dtype=np.float64)[seen]  # (N', 2)
    cost = np.linalg.norm(objects[:, None, :] - particles[None, :, :], axis=-1)  # (N', K')
    rows, cols = linear_sum_assignment(cost)
    distances = cost[rows, cols]  # (M,)
    hits = int(np.sum(distances < np.asarray(gt_radius, dtype=np.float64)[seen[rows]]))
    return FrameMatch(distances, seen[rows], on[cols], hits, len(seen), len(on))


@dataclass
class LocalisationAccumulator:
    """Sums :func:`match_frame` over frames; :meth:`summary` gives the report entry."""

    threshold: float = 0.5
    frames: int = 0
    visible: int = 0
    hits: int = 0
    on: int = 0
    distances: list[np.ndarray] = field(default_factory=list)

    def add(
        self,
        xy: np.ndarray,
        presence: np.ndarray,
        gt_xy: np.ndarray,
        gt_radius: np.ndarray,
        gt_visible: np.ndarray,
    ) -> None:
        """Add frames: xy (T, K, 2) px, presence (T, K), gt_xy (T, N, 2), radius/visible (T, N)."""
        for t in range(len(xy)):
            m = match_frame(xy[t], presence[t], gt_xy[t], gt_radius[t], gt_visible[t],
                            self.threshold)  # fmt: skip
            self.frames += 1
            self.visible += m.visible
            self.hits += m.hits
            self.on += m.on
            self.distances.append(m.distances)

    def summary(self) -> dict[str, float | int | None]:
        """``mean_error_px`` (None without any match), ``recall`` (None without visible
        objects), ``mean_particles_on``, ``frames``, ``visible_objects``, ``matched``."""
        d = np.concatenate(self.distances) if self.distances else np.zeros(0)
        return {
            'mean_error_px': float(d.mean()) if len(d) else None,
            'recall': self.hits / self.visible if self.visible else None,
            'mean_particles_on': self.on / self.frames if self.frames else None,
            'frames': self.frames,
            'visible_objects': self.visible,
            'matched': len(d),
        }


# ------------------------------------------------------------------------------- linear probe


def fit_linear_map(inputs: np.ndarray, targets: np.ndarray, ridge: float = RIDGE) -> np.ndarray:
    r"""W (D, T) minimising :math:`\|XW - Y\|^2 + \lambda M \overline{x^2} \|W\|^2`, no intercept.

    The tiny ridge (``lambda`` relative to the mean squared input, ``ridge=0`` for none) keeps the
    solution stable when inputs are collinear (particles that never move, fewer samples than
    inputs); it is solved with ``numpy.linalg.lstsq`` on the augmented system ``[X; sqrt(r) I]``.

    Args:
        inputs: (M, D). targets: (M, T).
    """
    x = np.asarray(inputs, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f'fit_linear_map needs (M, D) and (M, T), got {x.shape}, {y.shape}')
    if ridge > 0:
        r = ridge * len(x) * max(float(np.mean(x**2)), 1e-12)
        x = np.concatenate([x, math.sqrt(r) * np.eye(x.shape[1])])  # (M + D, D)
        y = np.concatenate([y, np.zeros((x.shape[1], y.shape[1]))])  # (M + D, T)
    weights, *_ = np.linalg.lstsq(x, y, rcond=None)
    return weights


@dataclass(frozen=True)
class ProbeResult:
    """A linear probe: its weights and the errors on the test samples."""

    weights: np.ndarray  # (D, 2J)
    errors: np.ndarray  # (M_test, J) Euclidean error per sample and point, target units

    @property
    def mean_error(self) -> float:
        return float(self.errors.mean())


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    ridge: float = RIDGE,
) -> ProbeResult:
    """Fit inputs -> 2-D points on the train samples, measure the Euclidean error on the test ones.

    Args:
        train_x: (M, D) inputs (e.g. all particle positions flattened). train_y: (M, J, 2) or
            (M, 2) target points. test_x: (M', D). test_y: like train_y.
    """
    train_y = np.asarray(train_y, dtype=np.float64).reshape(len(train_y), -1)  # (M, 2J)
    test_y = np.asarray(test_y, dtype=np.float64).reshape(len(test_y), -1)  # (M', 2J)
    weights = fit_linear_map(np.asarray(train_x).reshape(len(train_x), -1), train_y, ridge)
    pred = np.asarray(test_x, dtype=np.float64).reshape(len(test_x), -1) @ weights  # (M', 2J)
    errors = np.linalg.norm((pred - test_y).reshape(len(test_y), -1, 2), axis=-1)  # (M', J)
    return ProbeResult(weights, errors)


def split_half_probe(
    inputs: np.ndarray,
    targets: np.ndarray,
    valid: np.ndarray,
    min_samples: int = 4,
    ridge: float = RIDGE,
) -> np.ndarray | None:
    """Linear probe within one sequence: fit on the first half of its valid samples (in order),
    test on the second half.

    Args:
        inputs: (T, ...) per-step inputs, flattened to (T, D). targets: (T, 2) points.
        valid: (T,) bool, the steps to use (e.g. where the object is visible).
        min_samples: fewer valid steps than this give None.

    Returns:
        (M_test,) Euclidean errors on the second half, or None.
    """
    v = np.flatnonzero(np.asarray(valid, dtype=bool))
    if len(v) < max(min_samples, 2):
        return None
    fit, test = v[: len(v) // 2], v[len(v) // 2 :]
    x = np.asarray(inputs).reshape(len(inputs), -1)  # (T, D)
    return linear_probe(x[fit], targets[fit], x[test], targets[test], ridge).errors[:, 0]
