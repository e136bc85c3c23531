"""Particles drawn over the camera frame they came from (for RViz, replays and reports)."""

from __future__ import annotations

import cv2
import numpy as np

from dlp_ros.errors import ImageError
from dlp_ros.input_view import DEFAULT_RESIZE
from dlp_ros.particles import ParticleFrame
from dlp_ros.tracking import ON_THRESHOLD

# id -> RGB colour (cycled): the 20 distinct colours of Sasha Trubetskoy's list
PALETTE = np.array(
    [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
     (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
     (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
     (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128)],
    dtype=np.uint8,
)  # fmt: skip


def colour(particle_id: int) -> tuple[int, int, int]:
    """RGB colour of a particle id."""
    return tuple(int(c) for c in PALETTE[particle_id % len(PALETTE)])


def draw_overlay(
    rgb: np.ndarray,
    frame: ParticleFrame,
    on_threshold: float = ON_THRESHOLD,
    labels: bool = True,
    resize: str = DEFAULT_RESIZE,
) -> np.ndarray:
    """Particles that are on (transparency > ``on_threshold``, not ``suppressed``: the
    message's ``on``) drawn on a copy of ``rgb``.

    Each particle: a dot at its mean, an ellipse of 2 standard deviations (at least 2 px) and
    its id, in the id's colour, at the input frame's own resolution.

    Args:
        rgb: (H, W, 3) uint8 RGB, the frame the particles were encoded from (any size).
        frame: its particles.
        resize: how the model saw ``rgb`` (the model card's ``image.resize``).

    Returns:
        (H, W, 3) uint8 RGB.
    """
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3:
        got = rgb.shape if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise ImageError(f'draw_overlay expects an (H, W, 3) uint8 RGB array, got {got}')
    if rgb.dtype != np.uint8:
        raise ImageError(f'draw_overlay expects uint8 RGB, got dtype {rgb.dtype}')
    h, w = rgb.shape[:2]
    out = np.ascontiguousarray(rgb).copy()
    uv = frame.pixels(w, h, resize)  # (K, 2)
    std = frame.pixel_std(w, h, resize)  # (K, 2)
    thick = max(1, round(min(h, w) / 256))
    font = max(0.3, min(h, w) / 400)
    for k in np.flatnonzero((frame.transparency[:, 0] > on_threshold) & ~frame.suppressed):
        if not np.isfinite(uv[k]).all():
            continue
        c = colour(int(k))
        centre = (int(round(uv[k, 0])), int(round(uv[k, 1])))
        axes = tuple(int(min(max(2.0, 2.0 * s), 4.0 * max(h, w))) for s in std[k])
        cv2.ellipse(out, centre, axes, 0, 0, 360, c, thick, cv2.LINE_AA)
        cv2.circle(out, centre, max(1, thick + 1), c, -1, cv2.LINE_AA)
        if labels:
            at = (centre[0] + axes[0] // 2 + 2, centre[1] - axes[1] // 2 - 2)
            cv2.putText(out, str(int(k)), at, cv2.FONT_HERSHEY_SIMPLEX, font, c, thick,
                        cv2.LINE_AA)  # fmt: skip
    return out
