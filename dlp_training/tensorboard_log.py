"""TensorBoard event files beside a run's ``metrics.jsonl``: ``tensorboard --logdir RUN``.

The training loop hands every record it writes to ``metrics.jsonl`` to :class:`TensorBoardLog`
(each number as the scalar ``<split>/<name>`` at the record's step) and the evaluation pictures
of each validation (``add_image``). It writes through ``torch.utils.tensorboard`` when the
``tensorboard`` package is installed (``pip install tensorboard``, in the ``train`` extra);
without it, it says once per process that TensorBoard output is off and does nothing.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)
NOT_SCALARS = ('step', 'split', 'wall_s')  # record fields that are no metric
_said_off = False


def summary_writer_class() -> type | None:
    """``torch.utils.tensorboard.SummaryWriter``, or None when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415
    except ImportError:
        return None
    return SummaryWriter


class TensorBoardLog:
    """The event file of one run directory (the main rank's; None-safe when off)."""

    def __init__(self, out: Path) -> None:
        global _said_off
        writer = summary_writer_class()
        self.writer = None if writer is None else writer(log_dir=str(out))
        if self.writer is None and not _said_off:
            _said_off = True
            logger.info(
                'TensorBoard output is off: the tensorboard package is not installed '
                '(pip install tensorboard; metrics.jsonl has the same figures)'
            )

    def record(self, record: dict[str, Any]) -> None:
        """Every finite number of a metrics.jsonl record as ``<split>/<name>`` at its step."""
        if self.writer is None:
            return
        step, split = int(record['step']), record['split']
        for key, value in record.items():
            if key in NOT_SCALARS or isinstance(value, bool):
                continue
            if isinstance(value, int | float) and math.isfinite(value):
                self.writer.add_scalar(f'{split}/{key}', value, step)
        self.writer.flush()

    def pictures(self, pictures: dict[str, np.ndarray], step: int) -> None:
        """Pictures (tag -> (H, W, 3) uint8 RGB) at ``step``."""
        if self.writer is None:
            return
        for tag, rgb in pictures.items():
            self.writer.add_image(tag, np.asarray(rgb), step, dataformats='HWC')
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
