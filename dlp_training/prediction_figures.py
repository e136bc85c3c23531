"""The pictures of ``evaluate-prediction``: predicted vs true frames of a few clips, as an
animation (:func:`gif_frames`, one picture per clip frame) and as a still (:func:`still`)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from dlp_training.prediction import PredictionClip
from dlp_training.visualize import caption_band, upscale

CELL = 128  # px per cell of the GIF
STILL_CELL = 96  # px per cell of the PNG still
STILL_STEPS = 10  # predicted steps shown in the still at most


@dataclass
class Strip:
    """Frames of one clip drawn in the GIF and the still: (L, S, S, 3) truth, (N, S, S, 3) the
    rest."""

    clip: PredictionClip
    truth: np.ndarray
    model: np.ndarray
    const_velocity: np.ndarray
    decoded_last: np.ndarray  # (S, S, 3) the last observed frame's particles decoded


def png_bytes(rgb: np.ndarray) -> bytes:
    """(H, W, 3) uint8 RGB -> PNG file bytes."""
    ok, buf = cv2.imencode('.png', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError('cannot encode a PNG')
    return buf.tobytes()


def _header(width: int, text: str, height: int = 20) -> np.ndarray:
    """A black (height, width, 3) band with white ``text``."""
    band = np.zeros((height, width, 3), np.uint8)
    cv2.putText(band, text, (4, height - 6), cv2.FONT_HERSHEY_PLAIN, 1.0, (255, 255, 255), 1,
                cv2.LINE_AA)  # fmt: skip
    return band


COLUMNS = ('true', 'model', 'const velocity', 'last frame')


def gif_frames(strips: list[Strip], context: int, horizon: int) -> list[np.ndarray]:
    """One picture per clip frame: rows = clips, columns = ``COLUMNS`` (context frames are
    the true frames in every column). Each row of tiles has its labels in a band above it."""
    pictures = []
    for t in range(context + horizon):
        rows = []
        for strip in strips:
            if t < context:
                cells = [strip.truth[t]] * 4
            else:
                n = t - context
                cells = [strip.truth[t], strip.model[n], strip.const_velocity[n],
                         strip.truth[context - 1]]  # fmt: skip
            tiles = np.concatenate([upscale(c, CELL) for c in cells], axis=1)
            names = [f'{strip.clip.episode} t={strip.clip.start + t}', *COLUMNS[1:]]
            rows += [caption_band(tiles.shape[1], names, CELL), tiles]
        body = np.concatenate(rows, axis=0)
        what = f'context {t + 1}/{context}' if t < context else f'step {t - context + 1}/{horizon}'
        pictures.append(np.concatenate([_header(body.shape[1], f'{what}  |  columns: '
                                                + ', '.join(COLUMNS)), body]))  # fmt: skip
    return pictures


def still_steps(horizon: int) -> np.ndarray:
    """The predicted steps (1-based) the still shows: at most ``STILL_STEPS``, evenly spread."""
    return np.unique(np.linspace(1, horizon, num=min(horizon, STILL_STEPS)).round().astype(int))


def still(strips: list[Strip], context: int, horizon: int) -> np.ndarray:
    """Per clip, rows ``COLUMNS`` x columns: the last observed frame (true; decoded for the
    model and constant velocity rows), then up to ``STILL_STEPS`` predicted steps. Under the
    clip's title, a band names the columns (n = prediction step), and a band above each row of
    tiles names the row: no label is drawn over a tile."""
    steps = still_steps(horizon)
    blocks = []
    for strip in strips:
        last = strip.truth[context - 1]
        rows = [[last] + [strip.truth[context + s - 1] for s in steps],
                [strip.decoded_last] + [strip.model[s - 1] for s in steps],
                [strip.decoded_last] + [strip.const_velocity[s - 1] for s in steps],
                [last] * (1 + len(steps))]  # fmt: skip
        width = STILL_CELL * (1 + len(steps))
        c = strip.clip
        title = (f'{c.episode}: frames {c.start}..{c.start + context - 1} observed (first column: '
                 'the last one), n = prediction step')  # fmt: skip
        lines = [
            _header(width, title),
            caption_band(width, ['observed', *(f'n={s}' for s in steps)], STILL_CELL),
        ]
        for name, cells in zip(COLUMNS, rows, strict=True):
            lines.append(caption_band(width, [name], width))
            lines.append(np.concatenate([upscale(x, STILL_CELL) for x in cells], axis=1))
        blocks.append(np.concatenate(lines, axis=0))
    return np.concatenate(blocks, axis=0)
