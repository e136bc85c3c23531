"""Small figures without matplotlib: line charts drawn with OpenCV, and animated GIFs.

:func:`line_plot` draws a few series against a common integer x axis (e.g. the prediction step);
missing values (None or non-finite) break a line. :func:`encode_gif` writes frames as an
animated GIF with OpenCV's animation codec (OpenCV >= 4.11), or Pillow, or imageio, whichever is
installed first; :func:`gif_writer` names it, or says why there is none.
"""

from __future__ import annotations

import importlib.util
import io
import math
from collections.abc import Sequence

import cv2
import numpy as np

# RGB colours of the series, in order
SERIES_COLOURS = ((230, 25, 75), (0, 130, 200), (60, 180, 75), (245, 130, 48), (145, 30, 180),
                  (70, 240, 240), (128, 128, 0), (0, 0, 0))  # fmt: skip
FONT = cv2.FONT_HERSHEY_SIMPLEX


def _nice_step(span: float, ticks: int = 5) -> float:
    """A 1-2-5 tick spacing that splits ``span`` into about ``ticks`` intervals."""
    raw = max(span, 1e-12) / ticks
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.4,
          colour: tuple[int, int, int] = (40, 40, 40), anchor: str = 'left') -> None:  # fmt: skip
    """Put ``text`` with its baseline at ``org``; anchor 'left', 'right' or 'centre'."""
    (w, _), _ = cv2.getTextSize(text, FONT, scale, 1)
    x = org[0] - (w if anchor == 'right' else w // 2 if anchor == 'centre' else 0)
    cv2.putText(img, text, (x, org[1]), FONT, scale, colour, 1, cv2.LINE_AA)


def line_plot(
    x: Sequence[float],
    series: dict[str, Sequence[float | None]],
    title: str,
    x_label: str,
    y_label: str,
    size: tuple[int, int] = (640, 400),
) -> np.ndarray:
    """A line chart of ``series`` (name -> values at ``x``), with axes, grid and legend.

    Args:
        x: (N,) x positions shared by every series.
        series: name -> (N,) values; None or non-finite values are left out (the line breaks).
        size: (width, height) of the picture, pixels.

    Returns:
        (height, width, 3) uint8 RGB.
    """
    width, height = size
    img = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 64, 16, 34, 44
    x0, x1, y0, y1 = left, width - right, top, height - bottom  # plot area, pixels
    xs = np.asarray(x, dtype=np.float64)
    values = {
        name: np.array([np.nan if v is None else float(v) for v in vals], dtype=np.float64)
        for name, vals in series.items()
    }
    finite = np.concatenate([v[np.isfinite(v)] for v in values.values()] + [np.zeros(0)])
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5 * max(abs(lo), 1.0) * 0.1, hi + 0.5 * max(abs(hi), 1.0) * 0.1
    pad = 0.06 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    xlo, xhi = (float(xs.min()), float(xs.max())) if xs.size else (0.0, 1.0)
    if xhi - xlo < 1e-9:
        xlo, xhi = xlo - 1, xhi + 1

    def px(xv: float, yv: float) -> tuple[int, int]:
        u = x0 + (xv - xlo) / (xhi - xlo) * (x1 - x0)
        v = y1 - (yv - lo) / (hi - lo) * (y1 - y0)
        return round(u), round(v)

    step = _nice_step(hi - lo)
    for k in range(math.ceil(lo / step), math.floor(hi / step) + 1):
        yv = k * step
        _, v = px(xlo, yv)
        cv2.line(img, (x0, v), (x1, v), (225, 225, 225), 1)
        label = f'{yv:.{max(0, -math.floor(math.log10(step)))}f}'
        _text(img, label, (x0 - 6, v + 4), anchor='right')
    xstep = max(1, round(_nice_step(xhi - xlo, 10)))
    for xv in range(math.ceil(xlo), math.floor(xhi) + 1):
        if (xv - math.ceil(xlo)) % xstep == 0:
            u, _ = px(xv, lo)
            cv2.line(img, (u, y1), (u, y1 + 4), (80, 80, 80), 1)
            _text(img, str(xv), (u, y1 + 16), anchor='centre')
    cv2.rectangle(img, (x0, y0), (x1, y1), (80, 80, 80), 1)
    for i, (name, vals) in enumerate(values.items()):
        colour = SERIES_COLOURS[i % len(SERIES_COLOURS)]
        points = [px(a, b) if math.isfinite(b) else None for a, b in zip(xs, vals, strict=True)]
        for a, b in zip(points, points[1:], strict=False):
            if a is not None and b is not None:
                cv2.line(img, a, b, colour, 2, cv2.LINE_AA)
        for p in points:
            if p is not None:
                cv2.circle(img, p, 3, colour, -1, cv2.LINE_AA)
        ly = y0 + 14 + 16 * i
        cv2.line(img, (x1 - 150, ly - 4), (x1 - 128, ly - 4), colour, 2, cv2.LINE_AA)
        _text(img, name, (x1 - 122, ly))
    _text(img, title, (width // 2, 22), 0.55, (0, 0, 0), 'centre')
    _text(img, x_label, ((x0 + x1) // 2, height - 10), 0.45, anchor='centre')
    # y label: drawn horizontally above the axis (no rotated text in OpenCV)
    _text(img, y_label, (4, y0 - 8), 0.4)
    return img


def gif_writer() -> str | None:
    """'cv2', 'PIL' or 'imageio': the first installed library that writes animated GIFs."""
    if hasattr(cv2, 'imencodeanimation') and hasattr(cv2, 'Animation'):
        return 'cv2'
    for name in ('PIL', 'imageio'):
        if importlib.util.find_spec(name) is not None:
            return name
    return None


def encode_gif(frames: Sequence[np.ndarray], duration_ms: int = 250) -> bytes:
    """Frames (H, W, 3) uint8 RGB -> the bytes of a looping animated GIF.

    Raises:
        RuntimeError: no GIF writer is installed (:func:`gif_writer`) or encoding failed.
    """
    writer = gif_writer()
    frames = [np.ascontiguousarray(f) for f in frames]
    if writer == 'cv2':
        animation = cv2.Animation()
        animation.frames = [cv2.cvtColor(f, cv2.COLOR_RGB2BGR) for f in frames]
        animation.durations = [int(duration_ms)] * len(frames)
        animation.loop_count = 0
        ok, buf = cv2.imencodeanimation('.gif', animation)
        if not ok:
            raise RuntimeError('OpenCV could not encode the GIF')
        return bytes(buf)
    if writer == 'PIL':
        from PIL import Image

        images = [Image.fromarray(f) for f in frames]
        out = io.BytesIO()
        images[0].save(out, format='GIF', save_all=True, append_images=images[1:],
                       duration=int(duration_ms), loop=0)  # fmt: skip
        return out.getvalue()
    if writer == 'imageio':
        import imageio.v2 as imageio

        return imageio.mimwrite('<bytes>', frames, format='GIF', duration=duration_ms / 1000,
                                loop=0)  # fmt: skip
    raise RuntimeError('no GIF writer installed (OpenCV >= 4.11, Pillow or imageio)')
