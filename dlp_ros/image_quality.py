"""Peak signal-to-noise ratio: the one definition training, evaluation and the tools report.

.. math::
    \\mathrm{PSNR} = 10 \\log_{10} \\frac{\\mathrm{peak}^2}{\\max(\\mathrm{MSE},\\ 10^{-10}\\,
    \\mathrm{peak}^2)}

per image, the MSE over all its pixels and channels in float64. The floor makes identical images
:data:`PSNR_CAP_DB` (100 dB) instead of infinity, for any peak (1.0 for float images in [0, 1],
255 for uint8).
"""

from __future__ import annotations

import numpy as np

MSE_FLOOR = 1e-10  # relative to peak**2
PSNR_CAP_DB = 100.0  # the PSNR of identical images: -10 log10(MSE_FLOOR)


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 1.0) -> np.ndarray:
    """PSNR in dB of each image pair. (B, ...) x 2 -> (B,) float64.

    Raises:
        ValueError: the two batches differ in shape.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f'psnr needs images of one shape, got {a.shape} and {b.shape}')
    diff = a.astype(np.float64) - b.astype(np.float64)
    return psnr_from_mse((diff**2).reshape(len(diff), -1).mean(axis=1), peak)  # (B,)


def psnr_from_mse(mse: np.ndarray, peak: float = 1.0) -> np.ndarray:
    """PSNR in dB from per-image mean squared errors (for callers that computed the MSE where
    their images are, e.g. on a GPU). (B,) -> (B,) float64."""
    mse = np.asarray(mse, dtype=np.float64)
    return 10.0 * np.log10(peak**2 / np.maximum(mse, MSE_FLOOR * peak**2))
