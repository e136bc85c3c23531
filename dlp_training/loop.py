"""The one training loop of ``train-dlp`` and ``train-dynamics``.

A command builds a :class:`Task` (its model, data, loss and validation) and hands it to
:func:`train` with the schedule of its ``train:`` section (a :class:`ScheduleConfig`). The loop
owns the rest: the learning-rate schedule, per-step seeding, ``metrics.jsonl`` (train records
averaged over each log window, with the gradient norm; val records) and the same figures with
the evaluation pictures as TensorBoard event files beside it (:mod:`dlp_training.tensorboard_log`),
the progress bar,
validation every ``eval_every`` steps and at the end (after a time-limit stop too),
``checkpoints/{last,best}.pt`` (atomic) with the resume state (step, best score), the time limit
(every DDP rank stops at the same step) and the non-finite stop (:func:`optimisation_step`).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import yaml
from torch import Tensor, nn
from tqdm import tqdm

from dlp_ros.config_schema import check_fields, checked
from dlp_training import distributed as dist
from dlp_training.checkpoint import save_checkpoint
from dlp_training.runs import lr_at, optimisation_step
from dlp_training.tensorboard_log import TensorBoardLog

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScheduleConfig:
    """The optimisation schedule and bookkeeping every ``train:`` section shares (flat keys)."""

    # Items (images or clips) per optimisation step (per process under torchrun).
    batch_size: int = checked(32, ge=1)
    # Stop after this many steps...
    max_steps: int = checked(20000, ge=1)
    # ...or after this many minutes of training (0: no limit); the run can be resumed later.
    time_limit_min: float = checked(0.0, ge=0)
    # Peak learning rate of Adam; linear ramp over lr_ramp_steps, cosine decay to lr * lr_final.
    lr: float = checked(1e-3, gt=0)
    lr_ramp_steps: int = checked(200, ge=0)
    lr_final: float = checked(0.1, gt=0, le=1, say='in (0, 1]')
    # Gradient norm clip (0: none).
    grad_clip: float = checked(1.0, ge=0)
    # Validate every this many steps (and at the end).
    eval_every: int = checked(500, ge=1)
    # Write checkpoints/last.pt every this many steps (and at the end).
    checkpoint_every: int = checked(250, ge=1)
    # Log training metrics (averaged over the steps since the last log) every this many steps.
    log_every: int = checked(25, ge=1)
    # Seed of the model init and the batch sampling (and of the DLP's posterior noise).
    seed: int = 0
    # CPU threads for torch (0: torch's default).
    threads: int = checked(2, ge=0)

    def __post_init__(self) -> None:
        check_fields(self)


class Task(Protocol):
    """What a model brings to :func:`train`."""

    # The command ('train-dlp'): the progress bar and the closing line.
    name: str
    # The optimised parameters (``checkpoint['model']``), already on the device; the task's
    # ``loss`` runs them through DDP when distributed.
    model: nn.Module
    # Checkpoint key of the best validation score, and whether higher is better.
    score_key: str
    higher_is_better: bool
    # Seed torch before each step with (seed, step, rank) (the DLP's posterior noise).
    reseed: bool
    # ``run.yaml``: {'config': ..., where the data came from}.
    meta: dict[str, Any]

    def batch(self, step: int) -> Any:
        """The training batch of ``step`` on this rank, on the device."""

    def loss(self, batch: Any, step: int) -> tuple[Tensor, dict[str, float]]:
        """Scalar loss (with gradients) and float metrics of one batch."""

    def evaluate(self, step: int) -> tuple[dict[str, Any], float]:
        """Validation metrics (logged and stored in ``best.pt``) and their score (main rank)."""

    def train_fields(self, batch: Any, rate: float) -> dict[str, Any]:
        """Fields of a train record between ``lr`` and the metrics (``rate``: items/s)."""

    def val_fields(self) -> dict[str, Any]:
        """Fields of a val record between ``split`` and the metrics."""

    def postfix(self, metrics: dict[str, float], batch: Any, rate: float) -> dict[str, Any]:
        """The progress bar's postfix."""

    def checkpoint_fields(self) -> dict[str, Any]:
        """Entries of every checkpoint besides model, optimizer, step, score and metrics."""

    def best_text(self, best: float) -> str:
        """The best score in words, for the closing line."""

    def pictures(self) -> dict[str, np.ndarray]:
        """The pictures of the last ``evaluate`` (TensorBoard tag -> (H, W, 3) uint8 RGB)."""


class Window:
    """Train metrics summed over the steps of one log window, and the items seen in it."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.items = 0
        self.start = time.monotonic()

    def add(self, metrics: dict[str, float], items: int) -> None:
        for key, value in metrics.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
            self.counts[key] = self.counts.get(key, 0) + 1
        self.items += items

    def means(self, keys: dict[str, float]) -> dict[str, float]:
        """The mean of each of ``keys`` over the steps of the window that had it."""
        return {key: self.sums[key] / self.counts[key] for key in keys}


class Trainer:
    """The state of one :func:`train` call on this rank."""

    def __init__(
        self,
        task: Task,
        schedule: ScheduleConfig,
        out: Path,
        ctx: dist.Context,
        state: dict[str, Any] | None,
    ) -> None:
        self.task, self.schedule, self.out, self.ctx = task, schedule, out, ctx
        trained = [p for p in task.model.parameters() if p.requires_grad]  # not the frozen
        self.optimizer = torch.optim.Adam(trained, lr=schedule.lr)
        self.step, self.evaluated = 0, -1
        self.best = -math.inf if task.higher_is_better else math.inf
        if state is not None:
            task.model.load_state_dict(state['model'])
            self.optimizer.load_state_dict(state['optimizer'])
            self.step, self.best = int(state['step']), float(state.get(task.score_key, self.best))
            logger.info('resuming %s at step %d', out, self.step)
        self.metrics: dict[str, float] = {}
        self.window = Window()
        self.log = (out / 'metrics.jsonl').open('a') if ctx.is_main else None
        self.board = TensorBoardLog(out) if ctx.is_main else None

    def write(self, record: dict[str, Any]) -> None:
        self.log.write(json.dumps(record) + '\n')
        self.log.flush()
        self.board.record(record)

    def checkpoint(self, name: str, metrics: dict[str, Any]) -> None:
        save_checkpoint(self.out / 'checkpoints' / f'{name}.pt', {
            'model': self.task.model.state_dict(), 'optimizer': self.optimizer.state_dict(),
            'step': self.step, **self.task.checkpoint_fields(), self.task.score_key: self.best,
            'metrics': metrics,
        })  # fmt: skip

    def time_is_up(self, start: float) -> bool:
        """Whether the time limit has passed on any rank (every rank gets the same answer)."""
        limit = self.schedule.time_limit_min
        if not limit:
            return False
        if dist.ranks_where(time.monotonic() - start > 60 * limit, self.ctx.device):
            logger.info('time limit of %.1f min reached at step %d', limit, self.step)
            return True
        return False

    def optimise(self) -> Any:
        """One optimisation step; its batch."""
        s, task = self.schedule, self.task
        for group in self.optimizer.param_groups:
            group['lr'] = lr_at(self.step, s)
        if task.reseed:
            torch.manual_seed(s.seed * 1_000_003 + self.step * 101 + self.ctx.rank)
        batch = task.batch(self.step)
        task.model.train()
        loss, metrics = task.loss(batch, self.step)
        last = self.out / 'checkpoints' / 'last.pt'
        grad_norm = optimisation_step(
            task.model, self.optimizer, loss, metrics, self.step, s.grad_clip, last
        )
        self.metrics = {**metrics, 'grad_norm': grad_norm}
        self.step += 1
        self.window.add(self.metrics, s.batch_size * self.ctx.world_size)
        return batch

    def log_window(self, batch: Any, bar: tqdm) -> None:
        """The train record of the log window that ends now (main rank)."""
        window, now = self.window, time.monotonic()
        rate = window.items / (now - window.start)
        metrics = window.means(self.metrics)
        self.window = Window()
        self.write({'step': self.step, 'split': 'train', 'lr': lr_at(self.step, self.schedule),
                    **self.task.train_fields(batch, rate), **metrics})  # fmt: skip
        bar.set_postfix(self.task.postfix(metrics, batch, rate))

    def validate(self) -> None:
        """Validation (main rank), and ``best.pt`` when its score improves."""
        self.evaluated = self.step
        if not self.ctx.is_main:
            return
        metrics, score = self.task.evaluate(self.step)
        self.write({'step': self.step, 'split': 'val', **self.task.val_fields(), **metrics})
        self.board.pictures(self.task.pictures(), self.step)
        if score > self.best if self.task.higher_is_better else score < self.best:
            self.best = score
            self.checkpoint('best', metrics)

    def run(self, progress: bool) -> None:
        """Steps until max_steps or the time limit, then the closing validation and last.pt."""
        s, main = self.schedule, self.ctx.is_main
        bar = tqdm(total=s.max_steps, initial=self.step, unit='step', file=sys.stderr,
                   disable=not progress or not main or None, desc=self.task.name)  # fmt: skip
        start = time.monotonic()
        self.window = Window()
        try:
            while self.step < s.max_steps and not self.time_is_up(start):
                batch = self.optimise()
                bar.update()
                if self.step % s.log_every == 0 and main:
                    self.log_window(batch, bar)
                if self.step % s.eval_every == 0 or self.step == s.max_steps:
                    self.validate()
                if self.step % s.checkpoint_every == 0 and main:
                    self.checkpoint('last', self.metrics)
        finally:
            bar.close()
        if self.evaluated != self.step:
            self.validate()
        if main:
            self.checkpoint('last', self.metrics)


def write_run_files(out: Path, meta: dict[str, Any]) -> None:
    """``run.yaml`` (config and data source) and ``config.yaml`` of a run directory."""
    out.mkdir(parents=True, exist_ok=True)
    (out / 'run.yaml').write_text(yaml.safe_dump(meta, sort_keys=False))
    (out / 'config.yaml').write_text(yaml.safe_dump(meta['config'], sort_keys=False))


def train(
    task: Task,
    schedule: ScheduleConfig,
    out: Path,
    ctx: dist.Context,
    state: dict[str, Any] | None = None,
    *,
    progress: bool = True,
) -> None:
    """Train ``task`` on this rank into run directory ``out`` (from ``state`` on resume)."""
    if ctx.is_main:
        write_run_files(out, task.meta)
    trainer = Trainer(task, schedule, out, ctx, state)
    try:
        trainer.run(progress)
    finally:
        if trainer.log is not None:
            trainer.log.close()
        if trainer.board is not None:
            trainer.board.close()
    dist.report_sync(task.model, ctx, out)
    dist.teardown(ctx)
    if ctx.is_main:
        best = task.best_text(trainer.best)
        print(f'{task.name}: step {trainer.step}/{schedule.max_steps}, {best} -> {out}')  # noqa: T201
