"""Clips of tracked particles from a latents cache, batches reproducible from (seed, step, rank).

A clip is ``length`` consecutive frames of one episode (``burn_in + horizon`` for
``train-dynamics``) with their actions. Batch ``step`` of process ``rank`` draws its clips from a
generator seeded with ``(seed, step, rank)`` (as :mod:`dlp_training.frames` does for images), so a
resumed run sees exactly the clips it would have seen.

Which windows are clips:

* the episode has at least ``length`` frames;
* a particle slot re-seeded (a new identity, ``reseeded[t, k]``) in frames 1 .. length - 1 of
  the window jumps, and a jump is not dynamics. ``reseeded='skip'`` leaves such windows out;
  ``'mask'`` keeps them and marks the slot invalid for that clip (``Clips.slot_valid``, which the
  losses and metrics use as a weight), so a clip still teaches the other slots; ``'keep'`` trains
  on the jumps too;
* with actions, ``action_valid`` holds for every action the rollout reads: frames
  ``action_from .. length - 2`` of the window (``action_from = burn_in - H``; the action at the
  last frame produces nothing). Windows with an invalid action are left out, never masked.

Features are *not* normalised: the model and the runtime work in the DLP's own latent units
(positions in [-1, 1], KL-regularised features of order 1), so the exported model needs no
statistics; the manifest's stats are only reported.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from dlp_ros.errors import DlpError
from dlp_training.latents import LatentDataset
from dlp_training.models.dlp import Particles

logger = logging.getLogger(__name__)
RESEEDED_MODES = ('skip', 'mask', 'keep')


class Clips(NamedTuple):
    """A batch of clips."""

    particles: Particles  # (B, L, K, ...) fields; bg_features (B, L, Fb)
    actions: Tensor | None  # (B, L, A) float32, actions[:, s] applied at clip frame s
    slot_valid: Tensor  # (B, K) float32: 1 if slot k is one identity over the whole clip, else 0

    def take(self, index: slice | Tensor, device: torch.device | str = 'cpu') -> Clips:
        """Clips ``index`` of the batch, on ``device``."""
        particles = Particles(*(x[index].to(device) for x in self.particles))
        actions = None if self.actions is None else self.actions[index].to(device)
        return Clips(particles, actions, self.slot_valid[index].to(device))

    def to(self, device: torch.device | str) -> Clips:
        """The whole batch on ``device``."""
        return self.take(slice(None), device)


class ClipSource:
    """All clips of one split of a latents cache (see the module docstring).

    Args:
        latents: an open :class:`LatentDataset`.
        split: 'train', 'val' or 'test'.
        length: frames per clip, L.
        action_columns: columns of the episodes' actions to return, or None for no actions.
        action_from: first clip frame whose action must be valid.
        reseeded: 'skip' (leave out windows with a re-seeded slot after their first frame),
            'mask' (keep them, the slot is invalid in ``Clips.slot_valid``) or 'keep'.
    """

    def __init__(
        self,
        latents: LatentDataset,
        split: str,
        length: int,
        action_columns: list[int] | None = None,
        action_from: int = 0,
        reseeded: str = 'mask',
    ) -> None:
        if reseeded not in RESEEDED_MODES:
            raise ValueError(f'reseeded must be one of {RESEEDED_MODES}, got {reseeded!r}')
        self.length = length
        self.mask_reseeded = reseeded == 'mask'
        episodes = latents.episodes(split)
        if not episodes:
            raise DlpError(f'latents {latents.root} have no {split!r} episodes')
        fields: list[list[np.ndarray]] = [[] for _ in Particles._fields]
        actions: list[np.ndarray] = []
        reseeds: list[np.ndarray] = []
        starts: list[np.ndarray] = []
        dropped_max = 0.0
        self.left_out = {'short_episodes': 0, 'reseeded': 0, 'invalid_actions': 0}
        offset = 0
        for e in episodes:
            arrays = latents.arrays(e.name)
            t = e.frames
            if t < length:
                self.left_out['short_episodes'] += 1
                continue
            s = np.arange(t - length + 1)  # (W,) window starts in the episode
            keep = np.ones(len(s), dtype=bool)
            reseeds.append(arrays['reseeded'].astype(bool))
            if reseeded == 'skip':
                jumps = np.concatenate([[0], np.cumsum(arrays['reseeded'].any(axis=1))])  # (T+1,)
                bad = jumps[s + length] - jumps[s + 1] > 0  # a re-seed in frames s+1 .. s+L-1
                self.left_out['reseeded'] += int((bad & keep).sum())
                keep &= ~bad
            if action_columns is not None:
                a, valid = _episode_actions(latents, e.name, arrays, action_columns)
                dropped = np.delete(arrays['actions'], action_columns, axis=1)  # (T, A0 - A)
                dropped_max = max(dropped_max, float(np.abs(dropped).max(initial=0.0)))
                invalid = np.concatenate([[0], np.cumsum(~valid)])  # (T+1,)
                bad = invalid[s + length - 1] - invalid[s + action_from] > 0
                self.left_out['invalid_actions'] += int((bad & keep).sum())
                keep &= ~bad
                actions.append(a)
            for i, name in enumerate(Particles._fields):
                fields[i].append(arrays[name])
            starts.append(offset + s[keep])
            offset += t
        self.count = int(sum(len(x) for x in starts))
        if not self.count:
            raise DlpError(
                f'the {split!r} split of latents {latents.root} has no clip of {length} frames '
                f'(left out: {self.left_out}); use shorter clips (train.burn_in, train.horizon) '
                'or train.skip_reseeded=false'
            )
        self._fields = [torch.from_numpy(np.concatenate(f)) for f in fields]  # (N, K, ...) each
        self._actions = torch.from_numpy(np.concatenate(actions)) if actions else None  # (N, A)
        self._starts = np.concatenate(starts)  # (count,) global frame index of each clip start
        # (N + 1, K) running count of re-seeds per slot over the concatenated episodes
        self._reseeds = np.concatenate(
            [np.zeros((1, self._fields[0].shape[1]), dtype=np.int64),
             np.cumsum(np.concatenate(reseeds), axis=0)]
        )  # fmt: skip
        if dropped_max > 0:
            logger.warning(
                'actions outside train.action_columns %s are not always zero in the %s split '
                '(max |value| %.3g): the model does not see them', action_columns, split,
                dropped_max,
            )  # fmt: skip
        logger.info('%s split: %d clips of %d frames from %d episodes (left out: %s)', split,
                    self.count, length, len(episodes), self.left_out)  # fmt: skip

    def gather(self, starts: np.ndarray) -> Clips:
        """The clips starting at global frame indices ``starts`` (B,)."""
        index = torch.from_numpy(starts[:, None] + np.arange(self.length))  # (B, L)
        particles = Particles(*(f[index] for f in self._fields))  # (B, L, ...) each
        actions = None if self._actions is None else self._actions[index]
        valid = np.ones((len(starts), self._fields[0].shape[1]), dtype=np.float32)  # (B, K)
        if self.mask_reseeded:
            # re-seeds of each slot in clip frames 1 .. L - 1
            jumps = self._reseeds[starts + self.length] - self._reseeds[starts + 1]  # (B, K)
            valid = (jumps == 0).astype(np.float32)
        return Clips(particles, actions, torch.from_numpy(valid))

    def batch(self, batch_size: int, seed: int, step: int, rank: int = 0) -> Clips:
        """Random clips for optimisation step ``step`` of process ``rank``."""
        rng = np.random.default_rng([seed, step, rank])
        return self.gather(self._starts[rng.integers(0, self.count, size=batch_size)])

    def evenly_spaced(self, n: int) -> Clips:
        """``n`` clips spread over the split (a fixed evaluation set)."""
        pick = np.linspace(0, self.count - 1, num=min(n, self.count)).astype(int)
        return self.gather(self._starts[pick])


def mirror(clips: Clips, flips: np.ndarray, action_axes: list[str] | None) -> Clips:
    """Clips mirrored across image axes: the mirror augmentation of ``train.flip``.

    Args:
        clips: a batch of B clips.
        flips: (B, 2) bool, whether clip b is mirrored across x (left-right) and across y.
        action_axes: per action entry, the image axis it points along ('x', 'y' or '');
            required when the clips have actions.

    Positions are negated along each mirrored axis ([-1, 1] units, the image centre fixed) and
    so are the action entries that point along it; sizes, depth, presence and appearance stay.
    """
    f = torch.from_numpy(np.where(flips, -1.0, 1.0).astype(np.float32))  # (B, 2)
    mu = clips.particles.mu * f[:, None, None, :]  # (B, L, K, 2)
    actions = clips.actions
    if actions is not None:
        if action_axes is None or len(action_axes) != actions.shape[-1]:
            raise ValueError(f'action_axes must name one axis per action entry '
                             f'({actions.shape[-1]}), got {action_axes}')  # fmt: skip
        columns = {'x': f[:, 0], 'y': f[:, 1], '': torch.ones(len(f))}
        sign = torch.stack([columns[a] for a in action_axes], dim=-1)  # (B, A)
        actions = actions * sign[:, None, :]  # (B, L, A)
    return Clips(clips.particles._replace(mu=mu), actions, clips.slot_valid)


def _episode_actions(
    latents: LatentDataset, name: str, arrays: dict[str, np.ndarray], columns: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Selected action columns (T, A) float32 and validity (T,) bool of one episode."""
    where = f'{latents.episode(name).path}'
    if 'actions' not in arrays:
        raise DlpError(f'{where} has no actions, but the model takes actions')
    a = arrays['actions']  # (T, A0)
    if a.ndim != 2 or len(a) != len(arrays['mu']) or max(columns) >= a.shape[1]:
        raise DlpError(
            f'{where}: actions are {a.shape}, cannot take columns {columns} of T = '
            f'{len(arrays["mu"])} frames'
        )
    valid = arrays.get('action_valid', np.ones(len(a), dtype=bool)).astype(bool)  # (T,)
    return a[:, columns].astype(np.float32), valid


def baselines(mu: Tensor, burn_in: int, horizon: int) -> dict[str, Tensor]:
    """Particle-space baseline predictions of positions from the observed frames.

    Args:
        mu: (B, L, K, 2) positions of the clips, L >= burn_in + horizon, burn_in >= 2.

    Returns:
        ``last_frame`` (stay at frame burn_in - 1) and ``const_velocity`` (keep moving by the
        last observed displacement), each (B, horizon, K, 2).
    """
    last = mu[:, burn_in - 1].unsqueeze(1)  # (B, 1, K, 2)
    velocity = last - mu[:, burn_in - 2].unsqueeze(1)  # (B, 1, K, 2) per frame
    n = torch.arange(1, horizon + 1, dtype=mu.dtype, device=mu.device).view(1, -1, 1, 1)
    return {'last_frame': last.expand(-1, horizon, -1, -1), 'const_velocity': last + n * velocity}


def squared_error_sums(pred: Tensor, target: Tensor, presence: Tensor) -> tuple[Tensor, Tensor]:
    """Presence-weighted sums of squared position errors per predicted step.

    Args:
        pred, target: (B, S, K, 2) positions.
        presence: (B, S, K) weights (target transparency, or ones).

    Returns:
        (S,) sum of presence x squared error (mean over x, y) and (S,) sum of presence; their
        ratio's square root is the RMS error per coordinate (as ``rollout_loss`` reports it).
    """
    err = (pred - target).pow(2).mean(-1)  # (B, S, K)
    return (err * presence).sum(dim=(0, 2)), presence.sum(dim=(0, 2))
