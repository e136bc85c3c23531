"""The pictures of evaluate-prediction keep their labels in margins: every tile region holds
exactly the (upscaled) frame it shows, and the label bands carry text."""

from __future__ import annotations

import numpy as np

from dlp_training.prediction import PredictionClip
from dlp_training.prediction_figures import (
    CELL,
    STILL_CELL,
    Strip,
    gif_frames,
    still,
    still_steps,
)
from dlp_training.visualize import CAPTION, upscale

HEADER = 20  # prediction_figures._header
C, N, S = 3, 4, 16


def strip(seed: int) -> Strip:
    """A clip of random frames (every tile differs from its neighbours)."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (C + N, S, S, 3), dtype=np.uint8)
    model = rng.integers(0, 256, (N, S, S, 3), dtype=np.uint8)
    velocity = rng.integers(0, 256, (N, S, S, 3), dtype=np.uint8)
    decoded = rng.integers(0, 256, (S, S, 3), dtype=np.uint8)
    return Strip(PredictionClip(f'ep{seed}', 5), frames, model, velocity, decoded)


def test_still_tiles_are_the_frames_and_labels_sit_above() -> None:
    strips = [strip(0), strip(1)]
    picture = still(strips, C, N)
    steps = still_steps(N)
    rows_px = HEADER + CAPTION + 4 * (CAPTION + STILL_CELL)  # one clip's block
    assert picture.shape == (2 * rows_px, STILL_CELL * (1 + len(steps)), 3)
    for b, s in enumerate(strips):
        last = s.truth[C - 1]
        rows = [[last, *(s.truth[C + k - 1] for k in steps)],
                [s.decoded_last, *(s.model[k - 1] for k in steps)],
                [s.decoded_last, *(s.const_velocity[k - 1] for k in steps)],
                [last] * (1 + len(steps))]  # fmt: skip
        top = b * rows_px + HEADER
        assert picture[top : top + CAPTION].any(), 'the column labels are missing'
        for r, cells in enumerate(rows):
            band = top + CAPTION + r * (CAPTION + STILL_CELL)
            assert picture[band : band + CAPTION].any(), f'row {r} has no label'
            y = band + CAPTION
            for j, frame in enumerate(cells):
                tile = picture[y : y + STILL_CELL, j * STILL_CELL : (j + 1) * STILL_CELL]
                np.testing.assert_array_equal(tile, upscale(frame, STILL_CELL),
                                              err_msg=f'clip {b} row {r} column {j}')  # fmt: skip


def test_gif_tiles_are_the_frames_and_labels_sit_above() -> None:
    strips = [strip(2), strip(3)]
    pictures = gif_frames(strips, C, N)
    assert len(pictures) == C + N
    for t, picture in enumerate(pictures):
        assert picture.shape == (HEADER + 2 * (CAPTION + CELL), 4 * CELL, 3)
        for i, s in enumerate(strips):
            n = t - C
            cells = [s.truth[t]] * 4 if t < C else [s.truth[t], s.model[n], s.const_velocity[n],
                                                     s.truth[C - 1]]  # fmt: skip
            band = HEADER + i * (CAPTION + CELL)
            assert picture[band : band + CAPTION].any()
            y = band + CAPTION
            for j, frame in enumerate(cells):
                tile = picture[y : y + CELL, j * CELL : (j + 1) * CELL]
                np.testing.assert_array_equal(
                    tile, upscale(frame, CELL), err_msg=f'frame {t} clip {i} column {j}'
                )
