"""Constant optical-flow baseline: the last frame carried on by the flow of the last two frames.

A baseline for video prediction that knows nothing of particles (``evaluate-prediction``'s
``const_flow`` series). What it computes, exactly:

1. ``g = Farneback(last, prev)``: OpenCV's dense Farneback flow (:class:`FlowParams`) of the
   grey-scale frames, *from the last observed frame to the one before it*, so that
   ``last(x) ~ prev(x + g(x))``: the pixel at ``x`` of the last frame came from ``x + g(x)``.
2. Constant flow: the motion field is held fixed in image coordinates, so every future frame
   relates to the one before it as the last does to ``prev``: ``F_k(x) = F_{k-1}(x + g(x))``
   with ``F_0 = last``, i.e. ``F_k = last ∘ φ^k`` with ``φ(x) = x + g(x)``.
3. The k-fold map ``φ^k`` is composed on coordinates, ``M_1 = φ``, ``M_k = M_{k-1} ∘ φ``
   (``M_{k-1}`` resampled bilinearly at ``φ(x)`` with ``cv2.remap``), and the last frame is
   backward-warped once per step, ``F_k = remap(last, M_k)`` (bilinear, border replicated), so
   the image is resampled once per step and its blur does not build up with k.

Because ``g`` lives on the last frame's grid, the leading edge of a moving object (pixels that
were background in the last frame) is carried by the flow found there, which Farneback's
smoothing spreads a few pixels past the object. Two identical frames mean no motion: ``g = 0``
and exactly the last frame at every step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np


@dataclass(frozen=True)
class FlowParams:
    """``cv2.calcOpticalFlowFarneback`` parameters (OpenCV's names)."""

    pyr_scale: float = 0.5
    levels: int = 3
    winsize: int = 9
    iterations: int = 3
    poly_n: int = 5
    poly_sigma: float = 1.1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def farneback_flow(src: np.ndarray, dst: np.ndarray, params: FlowParams | None = None
                   ) -> np.ndarray:  # fmt: skip
    """Dense flow of two (S, S, 3) uint8 RGB frames: (S, S, 2) float32 ``g`` (x, y) with
    ``src(x) ~ dst(x + g(x))``."""
    p = params or FlowParams()
    a = cv2.cvtColor(np.ascontiguousarray(src), cv2.COLOR_RGB2GRAY)
    b = cv2.cvtColor(np.ascontiguousarray(dst), cv2.COLOR_RGB2GRAY)
    flow = cv2.calcOpticalFlowFarneback(a, b, None, p.pyr_scale, p.levels, p.winsize,
                                        p.iterations, p.poly_n, p.poly_sigma, 0)  # fmt: skip
    return flow.astype(np.float32)


def _identity_grid(height: int, width: int) -> np.ndarray:
    """(H, W, 2) float32 pixel coordinates (x, y)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.stack([xs, ys], axis=-1)


def _remap(image: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """``image`` sampled bilinearly at ``coords`` (H, W, 2) float32 (x, y), border replicated."""
    return cv2.remap(image, coords[..., 0], coords[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)  # fmt: skip


def compose_maps(flow: np.ndarray, steps: int) -> list[np.ndarray]:
    """The maps ``M_1 .. M_steps`` (each (H, W, 2) float32 coordinates) of ``φ(x) = x + g(x)``
    composed k times: ``M_k = M_{k-1} ∘ φ``."""
    phi = _identity_grid(*flow.shape[:2]) + flow  # (H, W, 2)
    maps = [phi]
    for _ in range(steps - 1):
        maps.append(_remap(maps[-1], phi))
    return maps


def constant_flow(prev: np.ndarray, last: np.ndarray, horizon: int,
                  params: FlowParams | None = None) -> np.ndarray:  # fmt: skip
    """Predict ``horizon`` frames after ``last`` by constant flow (module docstring).

    Args:
        prev, last: (S, S, 3) uint8 RGB, the last two observed frames.
        horizon: N >= 1 steps.

    Returns:
        (N, S, S, 3) uint8 RGB, step k at index k - 1.
    """
    if prev.shape != last.shape or last.ndim != 3 or last.shape[2] != 3:
        raise ValueError(f'constant_flow needs two (S, S, 3) frames, got {prev.shape}, '
                         f'{last.shape}')  # fmt: skip
    if horizon < 1:
        raise ValueError(f'horizon must be >= 1, got {horizon}')
    if np.array_equal(prev, last):  # nothing moved: no flow (Farneback leaves ~1e-2 px noise)
        return np.repeat(last[None], horizon, axis=0)
    flow = farneback_flow(last, prev, params)
    warped = [_remap(np.ascontiguousarray(last), m) for m in compose_maps(flow, horizon)]
    return np.stack(warped).astype(np.uint8)
