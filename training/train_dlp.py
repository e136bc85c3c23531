"""``train-dlp``: train Deep Latent Particles on a dataset made by ``build-dataset``.

    python -m training train-dlp --config config/train/dlp_balls64.yaml --data DATA --out RUN
    python -m training train-dlp --out RUN --resume            # continue after a stop or a kill
    torchrun --nproc_per_node 2 -m training train-dlp ...        # DDP (gloo on CPU, nccl on GPU)

The run directory gets ``config.yaml``, ``metrics.jsonl`` (one JSON object per log/eval line),
``eval/step_NNNNNN.png`` grids and ``checkpoints/{last,best}.pt`` (atomic; best = validation PSNR).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import yaml
from tqdm import tqdm

from training import distributed as dist
from training.checkpoint import save_checkpoint
from training.config import to_dict
from training.data.dataset import Dataset
from training.dlp_config import DlpRunConfig
from training.frames import FrameSource
from training.models.dlp import Dlp
from training.runs import add_run_arguments, lr_at, optimisation_step, resolve_run
from training.visualize import dlp_grid

logger = logging.getLogger(__name__)
RESUMABLE = ('train.max_steps', 'train.time_limit_min', 'train.eval_every', 'train.log_every')


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser, 'data', 'dataset directory (build-dataset)')


def resolve(args: argparse.Namespace) -> tuple[DlpRunConfig, Path, dict[str, Any] | None]:
    """Config, dataset path and (on --resume) the last checkpoint."""
    return resolve_run(args, DlpRunConfig, 'data', 'train-dlp', RESUMABLE, lambda r: r['data'])


def run(args: argparse.Namespace) -> int:
    """Train on this process, in the process group when started by torchrun: an error leaves the
    group without a barrier, so that no rank waits for one that stopped."""
    with dist.process_group() as ctx:
        return train_on(args, ctx)


def train_on(args: argparse.Namespace, ctx: dist.Context) -> int:
    """The DLP training of this process (rank ``ctx.rank``); 0 when done."""
    config, data_dir, state = resolve(args)
    tc = config.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    data = Dataset.open(data_dir)
    data.require_frame_size(config.model.image_size, 'the configured model (model.image_size)')
    train, val = FrameSource(data, 'train'), FrameSource(data, 'val')
    torch.manual_seed(tc.seed)
    model = Dlp(config.model).to(ctx.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr)
    step, best = 0, -math.inf
    if state is not None:
        model.load_state_dict(state['model'])
        optimizer.load_state_dict(state['optimizer'])
        step, best = int(state['step']), float(state.get('best_psnr', -math.inf))
        logger.info('resuming %s at step %d', args.out, step)
    ddp_model = dist.wrap(model, ctx)
    out: Path = args.out
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        meta = {'config': to_dict(config), 'data': str(Path(data_dir).resolve())}
        (out / 'run.yaml').write_text(yaml.safe_dump(meta, sort_keys=False))
        (out / 'config.yaml').write_text(yaml.safe_dump(meta['config'], sort_keys=False))
    eval_images = val.evenly_spaced(tc.eval_images)
    log = (out / 'metrics.jsonl').open('a') if ctx.is_main else None
    bar = tqdm(total=tc.max_steps, initial=step, unit='step', file=sys.stderr,
               disable=args.no_progress or not ctx.is_main or None, desc='train-dlp')  # fmt: skip
    start, seen, window = time.monotonic(), 0, time.monotonic()

    def checkpoint(name: str, metrics: dict[str, float], best_psnr: float) -> None:
        save_checkpoint(out / 'checkpoints' / f'{name}.pt', {
            'model': model.state_dict(), 'optimizer': optimizer.state_dict(), 'step': step,
            'config': to_dict(config), 'best_psnr': best_psnr, 'metrics': metrics,
        })  # fmt: skip

    metrics: dict[str, float] = {}
    try:
        while step < tc.max_steps:
            if tc.time_limit_min and time.monotonic() - start > 60 * tc.time_limit_min:
                logger.info('time limit of %.1f min reached at step %d', tc.time_limit_min, step)
                break
            for group in optimizer.param_groups:
                group['lr'] = lr_at(step, tc)
            torch.manual_seed(tc.seed * 1_000_003 + step * 101 + ctx.rank)  # posterior noise
            images = train.batch(tc.batch_size, tc.seed, step, ctx.rank).to(ctx.device)
            model.train()
            loss, metrics = ddp_model(images, warmup=step < tc.warmup_steps)
            optimisation_step(model, optimizer, loss, metrics, step, tc.grad_clip,
                              out / 'checkpoints' / 'last.pt')  # fmt: skip
            step += 1
            seen += tc.batch_size * ctx.world_size
            bar.update()
            if step % tc.log_every == 0 and ctx.is_main:
                now = time.monotonic()
                rate = seen / (now - window)
                seen, window = 0, now
                record = {'step': step, 'split': 'train', 'lr': lr_at(step, tc),
                          'images_per_s': rate, 'wall_s': time.time(), **metrics}  # fmt: skip
                log.write(json.dumps(record) + '\n')
                log.flush()
                bar.set_postfix(loss=f'{metrics["loss"]:.1f}', psnr=f'{metrics["psnr"]:.1f}',
                                img_s=f'{rate:.0f}')  # fmt: skip
            if step % tc.eval_every == 0 or step == tc.max_steps:
                best = evaluate(model, eval_images, step, out, log, ctx, best, checkpoint)
            if step % tc.checkpoint_every == 0 and ctx.is_main:
                checkpoint('last', metrics, best)
    finally:
        bar.close()
    if ctx.is_main:
        checkpoint('last', metrics, best)
        log.close()
    dist.report_sync(model, ctx, out)
    dist.teardown(ctx)
    if ctx.is_main:
        print(f'train-dlp: step {step}/{tc.max_steps}, best val PSNR {best:.2f} dB -> {out}')  # noqa: T201
    return 0


def evaluate(
    model: Dlp,
    images: torch.Tensor,
    step: int,
    out: Path,
    log: Any,
    ctx: dist.Context,
    best: float,
    checkpoint: Any,
) -> float:
    """Validation loss/PSNR (posterior means), the PNG grid, and ``best.pt`` on improvement."""
    if not ctx.is_main:
        return best
    model.eval()
    totals: dict[str, float] = {}
    with torch.no_grad():
        chunks = images.to(ctx.device).split(64)
        for chunk in chunks:
            _, metrics = model(chunk, deterministic=True)
            for key, value in metrics.items():
                totals[key] = totals.get(key, 0.0) + value * len(chunk) / len(images)
        write_eval_grid(model, images[:6].to(ctx.device), out / 'eval' / f'step_{step:06d}.png')
    record = {'step': step, 'split': 'val', 'wall_s': time.time(), **totals}
    log.write(json.dumps(record) + '\n')
    log.flush()
    logger.info('step %d: val loss %.2f, PSNR %.2f dB', step, totals['loss'], totals['psnr'])
    if totals['psnr'] > best:
        best = totals['psnr']
        checkpoint('best', totals, best)
    return best


def write_eval_grid(model: Dlp, images: torch.Tensor, path: Path) -> None:
    """PNG grid: input, reconstruction, particles with 2-sigma ellipses, decoded background."""
    size = model.config.image_size
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
