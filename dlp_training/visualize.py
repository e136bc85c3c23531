"""Pictures of particles: drawn on frames with their uncertainty, and DLP training grids."""

from __future__ import annotations

import cv2
import numpy as np

PALETTE = np.array(
    [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
     (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
     (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0)],
    dtype=np.uint8,
)  # fmt: skip


def upscale(rgb: np.ndarray, cell: int) -> np.ndarray:
    """(S, S, 3) -> (cell, cell, 3) with nearest-neighbour pixels (crisp at 64 px)."""
    return cv2.resize(np.ascontiguousarray(rgb), (cell, cell), interpolation=cv2.INTER_NEAREST)


def draw_particles(
    rgb: np.ndarray,
    xy: np.ndarray,
    std: np.ndarray,
    presence: np.ndarray,
    image_size: int,
    cell: int = 192,
) -> np.ndarray:
    """Particles on an upscaled copy of ``rgb``: a dot and the 2-sigma ellipse per particle.

    Args:
        rgb: (S, S, 3) uint8 frame.
        xy: (K, 2) positions, pixels of the S x S frame (x right, y down, centre of pixel 0 = 0.5).
        std: (K, 2) position standard deviations, pixels.
        presence: (K,) transparency in [0, 1]; particles are blended by it (off = invisible).
        image_size: S.
        cell: side of the returned picture, pixels.

    Returns:
        (cell, cell, 3) uint8.
    """
    base = upscale(rgb, cell).astype(np.float32)
    k = cell / image_size
    for i, ((x, y), (sx, sy), alpha) in enumerate(zip(xy, std, presence, strict=True)):
        layer = base.copy()
        colour = tuple(int(c) for c in PALETTE[i % len(PALETTE)])
        centre = (round(x * k * 16), round(y * k * 16))  # 4 fractional bits
        axes = (max(48, round(2 * sx * k * 16)), max(48, round(2 * sy * k * 16)))
        cv2.ellipse(layer, centre, axes, 0, 0, 360, colour, 2, cv2.LINE_AA, 4)
        cv2.circle(layer, centre, 3 * 16, colour, -1, cv2.LINE_AA, 4)
        cv2.circle(layer, centre, 3 * 16, (0, 0, 0), 1, cv2.LINE_AA, 4)
        a = float(np.clip(alpha, 0.0, 1.0))
        base = (1 - a) * base + a * layer
    return base.clip(0, 255).astype(np.uint8)


def label(cell: np.ndarray, text: str) -> np.ndarray:
    """Write ``text`` in the top-left corner of a picture (white on a dark band)."""
    out = cell.copy()
    cv2.rectangle(out, (0, 0), (out.shape[1], 13), (0, 0, 0), -1)
    cv2.putText(out, text, (3, 10), cv2.FONT_HERSHEY_PLAIN, 0.8, (255, 255, 255), 1, cv2.LINE_AA)
    return out


CAPTION = 14  # px of a caption band (:func:`caption_band`)


def caption_band(width: int, texts: list[str], cell: int, height: int = CAPTION) -> np.ndarray:
    """A dark (height, width, 3) band with ``texts[i]`` at the left of column i (columns
    ``cell`` px wide): labels in a margin above a row of tiles, never over them."""
    band = np.zeros((height, width, 3), np.uint8)
    for i, text in enumerate(texts):
        cv2.putText(band, text, (i * cell + 3, height - 4), cv2.FONT_HERSHEY_PLAIN, 0.8,
                    (255, 255, 255), 1, cv2.LINE_AA)  # fmt: skip
    return band


def dlp_grid(
    images: np.ndarray,
    reconstructions: np.ndarray,
    backgrounds: np.ndarray,
    xy: np.ndarray,
    std: np.ndarray,
    presence: np.ndarray,
    cell: int = 160,
) -> np.ndarray:
    """Rows of (input, reconstruction, particles with uncertainty, decoded background).

    Args:
        images, reconstructions, backgrounds: (N, S, S, 3) uint8.
        xy, std: (N, K, 2) pixels. presence: (N, K).

    Returns:
        (N * cell, 4 * cell, 3) uint8 RGB.
    """
    size = images.shape[1]
    rows = []
    for n in range(len(images)):
        cells = [
            upscale(images[n], cell),
            upscale(reconstructions[n], cell),
            draw_particles(images[n], xy[n], std[n], presence[n], size, cell),
            upscale(backgrounds[n], cell),
        ]
        if n == 0:
            names = ('input', 'reconstruction', 'particles (2 sigma)', 'background')
            cells = [label(c, t) for c, t in zip(cells, names, strict=True)]
        rows.append(np.concatenate(cells, axis=1))
    return np.concatenate(rows, axis=0)
