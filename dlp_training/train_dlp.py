"""``train-dlp``: train Deep Latent Particles on a dataset made by ``build-dataset``.

    python -m dlp_training train-dlp --config dlp_balls64 --data DATA --out RUN  # a shipped config
    python -m dlp_training train-dlp --out RUN --resume        # continue after a stop or a kill
    torchrun --nproc_per_node 2 -m dlp_training train-dlp ...  # DDP (gloo on CPU, nccl on GPU)

The run directory gets ``config.yaml``, ``metrics.jsonl`` (one JSON object per log/eval line),
``eval/step_NNNNNN.png`` grids and ``checkpoints/{last,best}.pt`` (atomic; best = validation PSNR).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from dlp_training import distributed as dist
from dlp_training.config import to_dict
from dlp_training.data.dataset import Dataset
from dlp_training.dlp_config import DlpRunConfig, load_dlp
from dlp_training.frames import FrameSource
from dlp_training.loop import train
from dlp_training.models.dlp import Dlp, DlpConfig
from dlp_training.runs import (
    RunOptions,
    add_run_arguments,
    initialise_from,
    resolve_run,
    take_sizes,
)
from dlp_training.visualize import dlp_grid

logger = logging.getLogger(__name__)
# Training frames whose per-pixel median starts a static background (model.static_background).
STATIC_BACKGROUND_FRAMES = 256
RESUMABLE = ('train.max_steps', 'train.time_limit_min', 'train.eval_every', 'train.log_every',
             'train.threads')  # fmt: skip


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser, 'data', 'dataset directory (build-dataset)')


def resolve(opts: RunOptions) -> tuple[DlpRunConfig, Path, dict[str, Any] | None]:
    """Config, dataset path and (on --resume) the last checkpoint."""
    return resolve_run(opts, DlpRunConfig, 'data', 'train-dlp', RESUMABLE, lambda r: r['data'],
                       dataset_sizes)  # fmt: skip


def dataset_sizes(data_dir: Path, model: dict[str, Any]) -> dict[str, Any]:
    """The ``model:`` mapping with S, the side of the dataset's frames (a model.S given must
    agree)."""
    data = Dataset.open(data_dir)
    s = int(data.frame_shape[0])

    def hint(_key: str, given: Any, value: int) -> str:
        return (f' ({value}x{value} frames; the model takes {given}x{given} images: build the '
                f'dataset with --size {given} for it)')  # fmt: skip

    return take_sizes(model, DlpConfig.RENAMED, {'S': s}, f'dataset {data.root}', hint)


def run(args: argparse.Namespace) -> int:
    """Train on this process, in the process group when started by torchrun: an error leaves the
    group without a barrier, so that no rank waits for one that stopped."""
    opts = RunOptions.from_args(args)
    with dist.process_group(opts.device) as ctx:
        return train_on(opts, ctx)


def train_on(opts: RunOptions, ctx: dist.Context) -> int:
    """The DLP training of this process (rank ``ctx.rank``); 0 when done."""
    config, data_dir, state = resolve(opts)
    dist.set_threads(config.train.threads, ctx)
    task = DlpTask(config, data_dir, opts.out, ctx)
    train(task, config.train, opts.out, ctx, state, progress=not opts.no_progress)
    return 0


class DlpTask:
    """:class:`dlp_training.loop.Task` of the DLP: frames in, the VAE loss, validation PSNR."""

    name = 'train-dlp'
    score_key = 'best_psnr'
    higher_is_better = True
    reseed = True  # posterior noise

    def __init__(self, config: DlpRunConfig, data_dir: Path, out: Path, ctx: dist.Context):
        self.config, self.out, self.ctx = config, out, ctx
        data = Dataset.open(data_dir)
        data.require_frame_size(config.model.S, 'the configured model (model.S)')
        self.frames, val = FrameSource(data, 'train'), FrameSource(data, 'val')
        torch.manual_seed(config.train.seed)
        self.model = Dlp(config.model)
        if config.train.init_from:
            initialise_from(self.model, Path(config.train.init_from), self.name, load_dlp,
                            DlpConfig.LOSS_FIELDS)  # fmt: skip
        elif config.model.static_background:
            picked = self.frames.evenly_spaced(STATIC_BACKGROUND_FRAMES)  # (n, 3, S, S)
            self.model.bg_decoder.set_image(picked.median(dim=0).values)  # resumed: its own
            logger.info('static background: the per-pixel median of %d training frames',
                        len(picked))  # fmt: skip
        if config.train.trainable == 'decoder':
            self.model.train_only_decoder()
        self.model.to(ctx.device)
        self.forward = dist.wrap(self.model, ctx)
        self.meta = {'config': to_dict(config), 'data': str(Path(data_dir).resolve())}
        self.eval_images = val.evenly_spaced(config.train.eval_images)
        self.grid: np.ndarray | None = None  # the last evaluation's picture

    def batch(self, step: int) -> torch.Tensor:
        """Images (B, 3, S, S), or clips (B, T, 3, S, S), of ``step`` on this rank."""
        tc = self.config.train
        if tc.clip_length > 1:
            clips = self.frames.clip_batch(tc.batch_size, tc.clip_length, tc.seed, step,
                                           self.ctx.rank)  # fmt: skip
            return clips.to(self.ctx.device)
        return self.frames.batch(tc.batch_size, tc.seed, step, self.ctx.rank).to(self.ctx.device)

    def loss(self, batch: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        tc = self.config.train
        warmup = step < tc.warmup_steps and tc.trainable == 'all'  # a decoder fine-tune: none
        return self.forward(batch, warmup=warmup,
                            deterministic=tc.decodes_means,
                            track_feature_weight=tc.track_feature_weight)  # fmt: skip

    def evaluate(self, step: int) -> tuple[dict[str, float], float]:
        """Validation loss/PSNR (posterior means) and the PNG grid; the score is the PSNR."""
        totals, self.grid = evaluate(self.model, self.eval_images, step, self.out,
                                     self.ctx.device)  # fmt: skip
        return totals, totals['psnr']

    def pictures(self) -> dict[str, np.ndarray]:
        return {} if self.grid is None else {'val/grid': self.grid}

    def train_fields(self, batch: torch.Tensor, rate: float) -> dict[str, Any]:
        return {'images_per_s': rate * self.config.train.clip_length, 'wall_s': time.time()}

    def val_fields(self) -> dict[str, Any]:
        return {'wall_s': time.time()}

    def postfix(self, metrics: dict[str, float], batch: torch.Tensor, rate: float) -> dict:
        return {'loss': f'{metrics["loss"]:.1f}', 'psnr': f'{metrics["psnr"]:.1f}',
                'img_s': f'{rate * self.config.train.clip_length:.0f}'}  # fmt: skip

    def checkpoint_fields(self) -> dict[str, Any]:
        return {'config': to_dict(self.config)}

    def best_text(self, best: float) -> str:
        return f'best val PSNR {best:.2f} dB'


def evaluate(
    model: Dlp, images: torch.Tensor, step: int, out: Path, device: torch.device
) -> tuple[dict[str, float], np.ndarray]:
    """Validation loss/PSNR (posterior means, ``images`` (N, 3, S, S)) and the grid (written
    as a PNG, and returned (H, W, 3) uint8 RGB)."""
    model.eval()
    totals: dict[str, float] = {}
    with torch.no_grad():
        chunks = images.to(device).split(64)
        for chunk in chunks:
            _, metrics = model(chunk, deterministic=True)
            for key, value in metrics.items():
                totals[key] = totals.get(key, 0.0) + value * len(chunk) / len(images)
        grid = write_eval_grid(model, images[:6].to(device), out / 'eval' / f'step_{step:06d}.png')
    logger.info('step %d: val loss %.2f, PSNR %.2f dB', step, totals['loss'], totals['psnr'])
    return totals, grid


def write_eval_grid(model: Dlp, images: torch.Tensor, path: Path) -> np.ndarray:
    """PNG grid: input, reconstruction, particles with 2-sigma ellipses, decoded background;
    returns it, (H, W, 3) uint8 RGB."""
    size = model.config.S
    particles = model.encode(images)
    recon = model.decode(particles)
    background = model.bg_decoder(particles.bg_features)  # (N, 3, S, S)

    def to_uint8(x: torch.Tensor) -> np.ndarray:
        return (x.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()

    xy = ((particles.mu + 1) / 2 * size).cpu().numpy()  # (N, K, 2) px
    std = (torch.exp(0.5 * particles.logvar) * size / 2).cpu().numpy()  # (N, K, 2) px
    grid = dlp_grid(to_uint8(images), to_uint8(recon), to_uint8(background), xy, std,
                    particles.transparency[..., 0].cpu().numpy())  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.partial.png')
    cv2.imwrite(str(tmp), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    os.replace(tmp, path)
    return grid
