"""Atomic checkpoints that carry the config that made them.

A run directory holds ``config.yaml`` (the resolved config), ``metrics.jsonl`` and
``checkpoints/{last,best}.pt``; each checkpoint is ``{'model', 'optimizer', 'step', 'config',
'metrics', 'code_version'}`` and is written to a temporary file in the same directory, flushed to
disk and renamed over the old one, so a kill at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

import dlp_ros
from dlp_ros.errors import DlpError

logger = logging.getLogger(__name__)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (tmp file + fsync + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {**state, 'code_version': dlp_ros.__version__}
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(fd, 'wb') as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (CPU tensors)."""
    if not path.is_file():
        raise DlpError(f'no checkpoint at {path}')
    try:
        state = torch.load(path, map_location='cpu', weights_only=False)
    except Exception as exc:  # a truncated or foreign file: say which
        raise DlpError(f'cannot read checkpoint {path}: {exc}') from exc
    for key in ('model', 'step', 'config'):
        if key not in state:
            raise DlpError(f'{path} is not a dlp_ros checkpoint (no {key!r})')
    return state


def run_checkpoint(run_dir: Path, which: str = 'best') -> Path:
    """Path of ``best`` (falling back to ``last``) or ``last`` checkpoint of a run directory."""
    folder = Path(run_dir) / 'checkpoints'
    for name in (which, 'last') if which == 'best' else (which,):
        if (folder / f'{name}.pt').is_file():
            return folder / f'{name}.pt'
    raise DlpError(f'{run_dir} has no checkpoint ({folder}/{which}.pt); is it a training run?')
