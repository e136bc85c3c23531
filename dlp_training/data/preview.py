"""``preview-dataset``: one PNG showing a dataset: a row of frames per episode, ground truth drawn.

Rows are episodes (first ``--episodes`` of each split), columns evenly spaced frames; ground-truth
objects are circled and the pusher's command (when the dataset has actions) is drawn as an arrow.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from dlp_ros.config_schema import checked, from_args
from dlp_training.data.dataset import Dataset

logger = logging.getLogger(__name__)
CELL = 96  # px per frame in the sheet


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--data', type=Path, required=True, help='dataset built by build-dataset')
    parser.add_argument('--out', type=Path, required=True, help='PNG to write')
    parser.add_argument('--episodes', type=int, default=4, help='rows (episodes) to show')
    parser.add_argument('--columns', type=int, default=8, help='frames per row')


def contact_sheet(data: Dataset, episodes: int, columns: int) -> np.ndarray:
    """(rows * CELL, columns * CELL, 3) uint8 RGB sheet."""
    rows = []
    for info in data.episodes()[:episodes]:
        frames = data.frames(info.name)  # (T, S, S, 3)
        labels = data.labels(info.name)
        picks = np.linspace(0, len(frames) - 1, num=min(columns, len(frames))).round().astype(int)
        cells = [_cell(frames[t], labels, t) for t in picks]
        cells += [np.zeros_like(cells[0])] * (columns - len(cells))
        row = np.concatenate(cells, axis=1)
        cv2.putText(row, f'{info.name} [{info.split}]', (3, 11), cv2.FONT_HERSHEY_PLAIN, 0.8,
                    (255, 255, 255), 1, cv2.LINE_AA)  # fmt: skip
        rows.append(row)
    return np.concatenate(rows, axis=0)


def _cell(frame: np.ndarray, labels: object, t: int) -> np.ndarray:
    size = frame.shape[0]
    scale = CELL / size
    cell = cv2.resize(np.ascontiguousarray(frame), (CELL, CELL), interpolation=cv2.INTER_NEAREST)
    truth = labels.ground_truth
    if truth is not None:
        for n in range(len(truth.ids)):
            if not truth.visible[t, n]:
                continue
            x, y = truth.xy[t, n] * scale
            r = max(2, round(truth.radius[t, n] * scale))
            cv2.circle(cell, (round(x), round(y)), r, (255, 255, 255), 1, cv2.LINE_AA)
    return cell


@dataclass(frozen=True)
class PreviewOptions:
    """The preview-dataset command line, validated (the fields are its options)."""

    data: Path
    out: Path
    episodes: int = checked(4, ge=1)
    columns: int = checked(8, ge=1)


def run(args: argparse.Namespace) -> int:
    opts = from_args(PreviewOptions, args)
    data = Dataset.open(opts.data)
    sheet = contact_sheet(data, opts.episodes, opts.columns)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = opts.out.with_name(f'.{opts.out.name}.partial.png')
    cv2.imwrite(str(tmp), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    os.replace(tmp, opts.out)
    print(f'preview of {opts.data} -> {opts.out}')  # noqa: T201
    return 0
