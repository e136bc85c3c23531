"""``train-dynamics``: train the particle dynamics on a latents cache made by ``encode-dataset``.

    python -m dlp_training train-dynamics --config dlp_training/configs/dynamics_balls64.yaml \\
        --latents LATENTS --out RUN
    python -m dlp_training train-dynamics --out RUN --resume      # continue after a stop or kill
    torchrun --nproc_per_node 2 -m dlp_training train-dynamics ...  # DDP (gloo CPU, nccl GPU)

Each step samples clips of ``burn_in + horizon`` tracked frames (:mod:`dlp_training.clips`), rolls
the model out from the burn-in over the curriculum's current horizon and minimises
:func:`~dlp_training.models.dynamics.rollout_loss` (particle space), plus optionally a pixel loss
through the frozen DLP decoder. Validation rolls out the full horizon on fixed val clips and logs
the position RMSE per step beside the last-frame and constant-velocity baselines.

The run directory gets ``config.yaml``, ``run.yaml``, ``metrics.jsonl`` (one JSON object per
log/eval line) and ``checkpoints/{last,best}.pt`` (atomic; best = lowest mean val position RMSE).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from dlp_ros.errors import ConfigError
from dlp_training import distributed as dist
from dlp_training.clips import Clips, ClipSource, baselines, mirror, squared_error_sums
from dlp_training.config import to_dict
from dlp_training.dlp_config import load_dlp
from dlp_training.dynamics_config import DynamicsRunConfig, DynamicsTrainConfig, load_dynamics
from dlp_training.latents import LatentDataset
from dlp_training.loop import train
from dlp_training.models.dlp import Dlp, Particles
from dlp_training.models.dynamics import (
    DynamicsConfig,
    ParticleDynamics,
    RolloutLossWeights,
    curriculum_horizon,
    frames,
    rollout_loss,
)
from dlp_training.runs import (
    RunOptions,
    add_run_arguments,
    initialise_from,
    resolve_run,
    take_sizes,
)

logger = logging.getLogger(__name__)
MOVING = 0.1  # normalised units (3.2 px of a 64 px image): a particle that moves, for validation
RESUMABLE = ('train.max_steps', 'train.time_limit_min', 'train.eval_every', 'train.log_every',
             'train.checkpoint_every', 'train.threads')  # fmt: skip


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser, 'latents', 'latents cache (encode-dataset)')


def resolve(opts: RunOptions) -> tuple[DynamicsRunConfig, Path, dict[str, Any] | None]:
    """Config, latents path and (on --resume) the last checkpoint."""
    return resolve_run(opts, DynamicsRunConfig, 'latents', 'train-dynamics', RESUMABLE,
                       lambda r: r['latents']['path'], latents_sizes, camera_only)  # fmt: skip


def camera_only(root: Path, mapping: dict[str, Any]) -> dict[str, Any]:
    """The config mapping for latents without actions (camera-only footage): a config asking
    for actions (``model.action_dim`` > 0, e.g. a copy of the tabletop config) gets
    ``model.action_dim: 0`` and ``train.action_columns: null``, logged at INFO."""
    model, train = mapping.get('model'), mapping.get('train') or {}
    if not isinstance(model, dict) or not isinstance(train, dict):
        return mapping  # from_dict refuses it by name
    dim = model.get('action_dim') or 0
    if not dim or LatentDataset.open(root).manifest.get('action'):
        return mapping
    logger.info(
        'latents %s have no actions (camera-only): training without actions, model.action_dim: '
        '0 and train.action_columns: null (the config asked for action_dim %s, columns %s); '
        'build the dataset with --action-topic to train with commands',
        root, dim, train.get('action_columns'),
    )  # fmt: skip
    return {**mapping, 'model': {**model, 'action_dim': 0},
            'train': {**train, 'action_columns': None}}  # fmt: skip


def latents_sizes(root: Path, model: dict[str, Any]) -> dict[str, Any]:
    """The ``model:`` mapping with K, F and Fb of the latents (a value given must agree)."""
    latents = LatentDataset.open(root)
    sizes = {k: latents.sizes[k] for k in ('K', 'F', 'Fb')}
    return take_sizes(model, DynamicsConfig.RENAMED, sizes, f'latents {latents.root}')


def check_latents(latents: LatentDataset, config: DynamicsRunConfig) -> list[int] | None:
    """Refuse latents whose actions do not fit the model (their sizes are the model's:
    :func:`latents_sizes`); the action columns to use."""
    m = config.model
    action = latents.manifest.get('action')
    if not m.action_dim:
        if action:
            logger.info('latents have actions %s; model.action_dim = 0 ignores them', action)
        return None
    if not action:
        raise ConfigError(f'model.action_dim is {m.action_dim} but latents {latents.root} '
                          'have no actions: set model.action_dim: 0 and train.action_columns: '
                          'null')  # fmt: skip
    dim = int(action['dim'])
    columns = config.train.action_columns or list(range(dim))
    if len(columns) != m.action_dim or max(columns) >= dim:
        raise ConfigError(
            f'model.action_dim is {m.action_dim} but the latents have {dim} action entries '
            f'{action.get("names")}; set train.action_columns to pick {m.action_dim} of them'
        )
    return columns


def load_decoder(latents: LatentDataset, config: DynamicsRunConfig) -> Dlp:
    """The frozen DLP of the pixel loss (parameters without gradients, eval mode)."""
    source = latents.manifest['source']
    run_dir = config.train.dlp_run or source.get('dlp_run')
    which = config.train.dlp_checkpoint or source.get('checkpoint', 'best')
    if not run_dir:
        raise ConfigError(
            'train.pixel_loss_weight > 0 needs train.dlp_run (the latents name none)'
        )
    dlp, dlp_config, _ = load_dlp(Path(run_dir), which)
    d = dlp_config.model
    got = (d.K, d.F, d.Fb)
    if got != (latents.sizes['K'], latents.sizes['F'], latents.sizes['Fb']):
        raise ConfigError(f'DLP {run_dir} has (K, F, Fb) = {got}, unlike latents {latents.root}')
    logger.info('pixel loss through the frozen decoder of %s (%s)', run_dir, which)
    return dlp.requires_grad_(False)


def predict(
    model: ParticleDynamics, clips: Clips, burn_in: int, horizon: int, weights: RolloutLossWeights
) -> tuple[Tensor, dict[str, float], Particles]:
    """``rollout_loss`` of the clips and the rollout it made, (B, horizon, K, ...) particles."""
    steps: list[Particles] = []
    hook = model.register_forward_hook(lambda _m, _i, out: steps.append(out))
    try:
        loss, metrics = rollout_loss(model, clips.particles, burn_in, horizon, clips.actions,
                                     weights, slot_mask=clips.slot_valid)  # fmt: skip
    finally:
        hook.remove()
    return loss, metrics, Particles(*(torch.stack(s, dim=1) for s in zip(*steps, strict=True)))


class Objective(nn.Module):
    """Loss of one batch (what DDP wraps): the rollout loss plus the optional pixel loss."""

    def __init__(self, model: ParticleDynamics, config: DynamicsRunConfig, decoder: Dlp | None):
        super().__init__()
        self.model = model
        self.train_config = config.train
        self._decoder = (decoder,)  # a tuple keeps the frozen DLP out of the parameters and DDP

    def forward(
        self, clips: Clips, horizon: int, pixel_pick: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        """``pixel_pick``: clip indices (P,) and predicted-step indices (P,) to decode."""
        tc, decoder = self.train_config, self._decoder[0]
        loss, metrics, pred = predict(self.model, clips, tc.burn_in, horizon, tc.loss)
        if decoder is not None and pixel_pick is not None:
            b, s = pixel_pick
            target = frames(clips.particles, slice(tc.burn_in, tc.burn_in + horizon))
            image = decoder.decode(Particles(*(x[b, s] for x in pred)))  # (P, 3, S, S)
            with torch.no_grad():
                reference = decoder.decode(Particles(*(x[b, s] for x in target)))
            pixel = (image - reference).pow(2).mean()
            loss = loss + tc.pixel_loss_weight * pixel
            metrics.update(pixel=float(pixel.detach()), loss=float(loss.detach()))
        return loss, metrics


def pixel_pick(
    tc: DynamicsTrainConfig, batch: int, horizon: int, step: int, rank: int
) -> tuple[Tensor, Tensor]:
    """Clips and predicted steps decoded by the pixel loss, seeded by (seed, step, rank)."""
    rng = np.random.default_rng([tc.seed, step, rank, 1])
    n_steps = min(tc.pixel_loss_steps, horizon)
    b = rng.choice(batch, size=min(tc.pixel_loss_clips, batch), replace=False)  # (P0,)
    s = np.stack([rng.choice(horizon, size=n_steps, replace=False) for _ in b])  # (P0, n)
    return torch.from_numpy(np.repeat(b, n_steps)), torch.from_numpy(s.reshape(-1))


def run(args: argparse.Namespace) -> int:
    """Train on this process, in the process group when started by torchrun: an error leaves the
    group without a barrier, so that no rank waits for one that stopped."""
    opts = RunOptions.from_args(args)
    with dist.process_group(opts.device) as ctx:
        return train_on(opts, ctx)


def train_on(opts: RunOptions, ctx: dist.Context) -> int:
    """The dynamics training of this process (rank ``ctx.rank``); 0 when done."""
    config, latents_dir, state = resolve(opts)
    dist.set_threads(config.train.threads, ctx)
    task = DynamicsTask(config, latents_dir, ctx)
    train(task, config.train, opts.out, ctx, state, progress=not opts.no_progress)
    return 0


class DynamicsBatch(NamedTuple):
    """One step's clips, the curriculum's horizon and the pixel loss's pick (or None)."""

    clips: Clips
    horizon: int
    pick: tuple[Tensor, Tensor] | None


class DynamicsTask:
    """:class:`dlp_training.loop.Task` of the dynamics: latent clips in, the rollout loss (plus the
    optional pixel loss), validation position RMSE (lower is better)."""

    name = 'train-dynamics'
    score_key = 'best_rmse'
    higher_is_better = False
    reseed = False

    def __init__(self, config: DynamicsRunConfig, latents_dir: Path, ctx: dist.Context):
        tc, mc = config.train, config.model
        self.config, self.ctx = config, ctx
        latents = LatentDataset.open(latents_dir)
        columns = check_latents(latents, config)
        source = {'length': tc.burn_in + tc.horizon, 'action_columns': columns,
                  'action_from': tc.burn_in - mc.history,
                  'reseeded': tc.reseeded}  # fmt: skip
        self.clips, val = (
            ClipSource(latents, 'train', **source),
            ClipSource(latents, 'val', **source),
        )
        decoder = load_decoder(latents, config).to(ctx.device) if tc.pixel_loss_weight else None
        self.pixel = decoder is not None
        torch.manual_seed(tc.seed)
        self.model = ParticleDynamics(config.model)
        if tc.init_from:
            initialise_from(self.model, Path(tc.init_from), self.name, load_dynamics)
        self.model.to(ctx.device)
        self.forward = dist.wrap(Objective(self.model, config, decoder), ctx)
        self.meta = {'config': to_dict(config), 'latents': latents_source(latents, columns)}
        self.eval_clips = val.evenly_spaced(tc.eval_clips)

    def batch(self, step: int) -> DynamicsBatch:
        tc, rank = self.config.train, self.ctx.rank
        horizon = curriculum_horizon(step, tc.horizon, tc.horizon_ramp_steps, tc.horizon_start)
        clips = self.clips.batch(tc.batch_size, tc.seed, step, rank)
        if tc.flip:
            rng = np.random.default_rng([tc.seed, step, rank, 2])
            axes = [a in tc.flip for a in ('x', 'y')]
            flips = (rng.random((tc.batch_size, 2)) < 0.5) & np.array(axes)  # (B, 2)
            clips = mirror(clips, flips, tc.action_axes)
        clips = clips.to(self.ctx.device)
        pick = pixel_pick(tc, tc.batch_size, horizon, step, rank) if self.pixel else None
        return DynamicsBatch(clips, horizon, pick)

    def loss(self, batch: DynamicsBatch, step: int) -> tuple[Tensor, dict[str, float]]:
        return self.forward(batch.clips, batch.horizon, batch.pick)

    def evaluate(self, step: int) -> tuple[dict[str, Any], float]:
        """Full-horizon validation; the score is the mean position RMSE."""
        record = evaluate(self.model, self.eval_clips, self.config, self.ctx.device)
        logger.info('step %d: val position RMSE %.4f (constant velocity %.4f, last frame %.4f); '
                    'moving particles %.4f (%.4f, %.4f)', step, record['position_rmse_mean'],
                    record['const_velocity_rmse_mean'], record['last_frame_rmse_mean'],
                    record['moving_position_rmse_mean'],
                    record['moving_const_velocity_rmse_mean'],
                    record['moving_last_frame_rmse_mean'])  # fmt: skip
        return record, record['position_rmse_mean']

    def train_fields(self, batch: DynamicsBatch, rate: float) -> dict[str, Any]:
        return {'horizon': batch.horizon, 'clips_per_s': rate}

    def val_fields(self) -> dict[str, Any]:
        return {}

    def postfix(self, metrics: dict[str, float], batch: DynamicsBatch, rate: float) -> dict:
        return {'loss': f'{metrics["loss"]:.4f}', 'horizon': batch.horizon,
                'rmse': f'{metrics["position_rmse_last"]:.4f}',
                'clip_s': f'{rate:.0f}'}  # fmt: skip

    def checkpoint_fields(self) -> dict[str, Any]:
        return {'config': to_dict(self.config), 'latents': self.meta['latents']}

    def best_text(self, best: float) -> str:
        return f'best val position RMSE {best:.4f}'

    def pictures(self) -> dict[str, np.ndarray]:
        return {}  # validation is figures only


def latents_source(latents: LatentDataset, columns: list[int] | None) -> dict[str, Any]:
    """Where the training latents came from (``run.yaml`` and every checkpoint)."""
    action = latents.manifest.get('action') or {}
    return {'path': str(latents.root.resolve()), 'fps': latents.fps,
            'image_size': latents.sizes['S'], 'dlp_run': latents.manifest['source'].get('dlp_run'),
            'source': latents.manifest['source'],
            'action_names': [action['names'][c] for c in columns] if columns else []}  # fmt: skip


@torch.no_grad()
def evaluate(
    model: ParticleDynamics, clips: Clips, config: DynamicsRunConfig, device: torch.device
) -> dict[str, Any]:
    """Full-horizon rollout on the val clips: mean loss terms and position RMSE per step.

    ``position_rmse``, ``const_velocity_rmse`` and ``last_frame_rmse`` are lists over the
    predicted steps 1 .. horizon (RMS error per coordinate, normalised units: a 64 px image is 2
    wide, weighted by the target transparency as the loss is); ``*_mean`` average them.
    ``moving_*`` are the same over the particles that move (their target goes at least
    ``MOVING`` from the last observed frame within the horizon): what pushing is about.
    """
    tc = config.train
    model.eval()
    n = len(clips.particles.mu)
    totals: dict[str, float] = {}
    sums: dict[str, list[Tensor]] = {}  # name -> [squared error sums (S,), weight sums (S,)]
    for i in range(0, n, tc.batch_size):
        chunk = clips.take(slice(i, i + tc.batch_size), device)
        _, metrics, pred = predict(model, chunk, tc.burn_in, tc.horizon, tc.loss)
        b = len(chunk.particles.mu)
        for key, value in metrics.items():
            if not key.startswith('position_rmse'):
                totals[key] = totals.get(key, 0.0) + value * b / n
        target = frames(chunk.particles, slice(tc.burn_in, tc.burn_in + tc.horizon))
        valid = chunk.slot_valid[:, None, :]  # (B, 1, K)
        presence = target.transparency[..., 0] * valid  # (B, S, K)
        if not tc.loss.presence_weighted:
            presence = valid.expand_as(presence)
        last = chunk.particles.mu[:, tc.burn_in - 1 : tc.burn_in]  # (B, 1, K, 2)
        moving = (target.mu - last).norm(dim=-1).amax(dim=1, keepdim=True) >= MOVING  # (B, 1, K)
        guesses = {'position': pred.mu, **baselines(chunk.particles.mu, tc.burn_in, tc.horizon)}
        for name, guess in guesses.items():
            for key, weights in ((name, presence), (f'moving_{name}', presence * moving)):
                err, weight = squared_error_sums(guess, target.mu, weights)
                acc = sums.setdefault(key, [torch.zeros_like(err), torch.zeros_like(weight)])
                acc[0] += err
                acc[1] += weight
    record: dict[str, Any] = {'clips': n, 'horizon': tc.horizon, **totals}
    for name, (err, weight) in sums.items():
        rmse = (err / weight.clamp(min=1e-12)).sqrt().tolist()
        record[f'{name}_rmse'] = rmse
        record[f'{name}_rmse_mean'] = float(np.mean(rmse))
    return record
