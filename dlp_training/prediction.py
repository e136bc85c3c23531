"""Video prediction from frames: evaluation clips, the particle baselines, and *predictors*.

A :class:`Predictor` turns the C context frames of a clip into tracked particles
(:meth:`~Predictor.observe`, the future frames are never shown to it), rolls the dynamics out for
N steps (:meth:`~Predictor.predict`) and decodes particles into frames
(:meth:`~Predictor.render`). Two implementations run the same model two ways:

* :class:`TorchPredictor`: a ``train-dlp`` run and a ``train-dynamics`` run in PyTorch
  (:func:`~dlp_training.models.tracking.track_sequence`,
  :func:`~dlp_training.models.dynamics.rollout`,
  :meth:`Dlp.decode <dlp_training.models.dlp.Dlp.decode>`);
* :class:`BundlePredictor`: an exported bundle through the torch-free runtime
  (``dlp_ros.runtime.DlpRuntime``: ``tracker.update``, ``predict``, ``render``).

Particles travel between them as numpy arrays, a dict ``field -> (T, K, ...)`` (``bg_features``
(T, Fb)) with the fields of :class:`~dlp_training.models.dlp.Particles` (:data:`FIELDS`).

Actions are *clip-aligned*: ``actions[s]`` (A,) is the command applied at clip frame s (as in
:mod:`dlp_training.latents`); a rollout of N steps after C context frames reads frames
``C - H .. C + N - 2`` (:func:`action_window`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from dlp_ros.errors import DlpError
from dlp_training.data.dataset import Dataset
from dlp_training.models.dlp import Dlp, Particles
from dlp_training.models.dynamics import ParticleDynamics, rollout
from dlp_training.models.tracking import track_sequence

logger = logging.getLogger(__name__)
FIELDS = Particles._fields  # mu, logvar, scale, depth, transparency, features, bg_features
ParticleArrays = dict[str, np.ndarray]  # field -> (T, K, ...) (bg_features (T, Fb))


class PredictionError(DlpError):
    """The models, the dataset or the arguments cannot be evaluated together."""


# ----------------------------------------------------------------------------- clips


@dataclass(frozen=True)
class PredictionClip:
    """C + N consecutive frames of one episode: ``start .. start + C + N - 1``."""

    episode: str
    start: int
    actions: np.ndarray | None = None  # (C + N - 1, A) float32, clip-aligned (module docstring)


@dataclass
class ClipSelection:
    """The evaluation clips and what was left out choosing them."""

    clips: list[PredictionClip]
    candidates: int  # non-overlapping windows available before subsampling
    episodes: int  # episodes of the split that gave at least one window
    left_out: dict[str, int] = field(default_factory=dict)


def action_window(context: int, horizon: int, history: int) -> slice:
    """Clip frames whose actions a rollout of ``horizon`` steps from ``context`` frames reads."""
    return slice(context - history, context + horizon - 1)


def select_clips(
    data: Dataset,
    split: str,
    context: int,
    horizon: int,
    history: int,
    max_clips: int,
    action_columns: list[int] | None = None,
) -> ClipSelection:
    """Up to ``max_clips`` non-overlapping windows of ``context + horizon`` frames, evenly spread.

    Each episode of ``split`` is scanned from its first frame; a window is taken when every
    action the rollout reads is valid (``action_valid``; always, without actions) and the scan
    continues after it. ``max_clips`` of all windows are then picked evenly (first and last
    included).

    Args:
        action_columns: columns of the dataset's actions the model takes, or None (no actions).

    Raises:
        PredictionError: no episode of the split holds one valid window (names the reason).
    """
    length = context + horizon
    episodes = data.episodes(split)
    if not episodes:
        raise PredictionError(f'dataset {data.root} has no {split!r} episodes')
    reads = action_window(context, horizon, history)
    found: list[PredictionClip] = []
    left_out = {'short_episodes': 0, 'invalid_action_starts': 0}
    used = 0
    for info in episodes:
        if info.frames < length:
            left_out['short_episodes'] += 1
            continue
        actions = None
        valid = np.ones(info.frames, dtype=bool)
        if action_columns is not None:
            labels = data.labels(info.name)
            if labels.actions is None:
                raise PredictionError(
                    f'the dynamics model takes actions but episode {info.name} of dataset '
                    f'{data.root} has none (no --action-topic at build-dataset?); pass '
                    '--actions zero to predict with zero actions, as the node and dlp-replay '
                    'do without an action topic'
                )
            if max(action_columns) >= labels.actions.shape[1]:
                raise PredictionError(
                    f'the dynamics model takes action columns {action_columns} but episode '
                    f'{info.name} has {labels.actions.shape[1]} action entries'
                )
            actions = labels.actions[:, action_columns].astype(np.float32)  # (T, A)
            if labels.action_valid is not None:
                valid = labels.action_valid.astype(bool)
        before = len(found)
        s = 0
        while s + length <= info.frames:
            if valid[s + reads.start : s + reads.stop].all():
                a = None if actions is None else actions[s : s + length - 1].copy()
                found.append(PredictionClip(info.name, s, a))
                s += length
            else:
                left_out['invalid_action_starts'] += 1
                s += 1
        used += len(found) > before
    if not found:
        longest = max(e.frames for e in episodes)
        if longest < length:
            raise PredictionError(
                f'every {split!r} episode of {data.root} is shorter than context + horizon = '
                f'{context} + {horizon} = {length} frames (the longest has {longest}); use a '
                'shorter --context or --horizon'
            )
        raise PredictionError(
            f'no window of {length} frames in the {split!r} split of {data.root} has valid '
            f'actions at clip frames {reads.start} .. {reads.stop - 1}'
        )
    pick = np.unique(np.linspace(0, len(found) - 1, num=min(max_clips, len(found))).round())
    clips = [found[int(i)] for i in pick]
    logger.info('%d clips of %d + %d frames from %d %s episodes (%d windows; left out: %s)',
                len(clips), context, horizon, used, split, len(found), left_out)  # fmt: skip
    return ClipSelection(clips, len(found), used, left_out)


# ----------------------------------------------------------------------------- baselines


def hold_last(observed: ParticleArrays, horizon: int) -> ParticleArrays:
    """Last-frame baseline: the last observed particles repeated ``horizon`` times (N, K, ...)."""
    return {n: np.repeat(v[-1:], horizon, axis=0) for n, v in observed.items()}


def constant_velocity(observed: ParticleArrays, horizon: int) -> ParticleArrays:
    """Constant-velocity baseline: positions keep moving by the last observed displacement,
    ``mu[C - 1] + n (mu[C - 1] - mu[C - 2])`` for n = 1 .. N; every other attribute is held at
    the last frame. Needs C >= 2 observed frames. Returns (N, K, ...) arrays."""
    mu = observed['mu']  # (C, K, 2)
    if len(mu) < 2:
        raise ValueError(f'constant velocity needs >= 2 observed frames, got {len(mu)}')
    out = hold_last(observed, horizon)
    n = np.arange(1, horizon + 1, dtype=mu.dtype)[:, None, None]  # (N, 1, 1)
    out['mu'] = mu[-1][None] + n * (mu[-1] - mu[-2])[None]  # (N, K, 2)
    return out


def concat(*parts: ParticleArrays) -> ParticleArrays:
    """Particle arrays joined along time."""
    return {n: np.concatenate([p[n] for p in parts]) for n in FIELDS}


# ----------------------------------------------------------------------------- predictors


class Predictor(Protocol):
    """What the evaluation needs from a model (see the module docstring)."""

    kind: str  # 'torch' | 'onnx'
    image_size: int  # S
    n_particles: int  # K
    history: int  # H
    action_dim: int  # A

    def observe(self, frames: np.ndarray) -> ParticleArrays:
        """Context frames (C, S, S, 3) uint8 RGB -> tracked particles (C, K, ...)."""
        ...

    def predict(
        self, observed: ParticleArrays, horizon: int, actions: np.ndarray | None
    ) -> ParticleArrays:
        """Particles (C, K, ...) and clip-aligned actions (C + N - 1, A) or None -> (N, K, ...)."""
        ...

    def render(self, particles: ParticleArrays) -> np.ndarray:
        """Particles (T, K, ...) -> decoded frames (T, S, S, 3) uint8 RGB."""
        ...


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(T, 3, S, S) floats in [0, 1] -> (T, S, S, 3) uint8, rounded as the runtime does."""
    return images.clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).numpy()


class TorchPredictor:
    """A DLP and a dynamics model in PyTorch (CPU, eval mode, deterministic)."""

    kind = 'torch'

    def __init__(self, dlp: Dlp, dynamics: ParticleDynamics, batch: int = 64) -> None:
        self.dlp, self.dynamics, self.batch = dlp.eval(), dynamics.eval(), batch
        self.image_size = dlp.config.S
        self.n_particles = dlp.config.K
        self.history = dynamics.config.history
        self.action_dim = dynamics.config.action_dim

    def observe(self, frames: np.ndarray) -> ParticleArrays:
        x = torch.from_numpy(np.array(frames)).permute(0, 3, 1, 2).float().div_(255.0)
        track = track_sequence(self.dlp, x, self.batch)  # (C, K, ...)
        return {n: v.numpy() for n, v in track.particles._asdict().items()}

    @torch.inference_mode()
    def predict(
        self, observed: ParticleArrays, horizon: int, actions: np.ndarray | None
    ) -> ParticleArrays:
        history = Particles(*(torch.from_numpy(observed[n])[None] for n in FIELDS))  # (1, C, ..)
        a = None if actions is None else torch.from_numpy(np.asarray(actions, np.float32))[None]
        out = rollout(self.dynamics, history, horizon, a)  # (1, N, K, ...)
        return {n: v[0].numpy() for n, v in out._asdict().items()}

    @torch.inference_mode()
    def render(self, particles: ParticleArrays) -> np.ndarray:
        t = len(particles['mu'])
        out = []
        for i in range(0, t, self.batch):
            p = Particles(*(torch.from_numpy(particles[n][i : i + self.batch]) for n in FIELDS))
            out.append(to_uint8(self.dlp.decode(p)))
        return np.concatenate(out)


class BundlePredictor:
    """An exported bundle through ``dlp_ros.runtime.DlpRuntime`` (ONNX, no torch inside)."""

    kind = 'onnx'

    def __init__(self, bundle: Path, providers: str = 'cpu', threads: int = 0) -> None:
        from dlp_ros.runtime import DlpRuntime  # the runtime is optional for torch-only use

        self.rt = DlpRuntime.load(bundle, providers=providers, threads=threads)
        card = self.rt.card
        self.image_size = int(card.image.size)
        self.n_particles = int(card.particles.K)
        self.history = int(card.dynamics.history)
        self.action_dim = int(card.dynamics.action_dim)
        self.action_names = list(card.dynamics.action_names or [])
        self.dt = float(card.dynamics.dt)
        self.provider = self.rt.provider
        self.compositing = card.prediction.compositing  # how the runtime draws predicted frames

    def observe(self, frames: np.ndarray) -> ParticleArrays:
        tracker = self.rt.tracker()
        seen = [tracker.update(self.rt.preprocess(np.asarray(f))) for f in frames]
        return _arrays(seen)

    def predict(
        self, observed: ParticleArrays, horizon: int, actions: np.ndarray | None
    ) -> ParticleArrays:
        c, h = len(observed['mu']), self.history
        history = _frames(observed)[c - h :]
        a = None
        if self.action_dim:  # the runtime takes the H history frames' actions onwards
            a = np.ascontiguousarray(np.asarray(actions, np.float32)[c - h :])
        return _arrays(self.rt.predict(history, horizon, actions=a))

    def render(self, particles: ParticleArrays) -> np.ndarray:
        return np.asarray(self.rt.render(_frames(particles)), dtype=np.uint8)


def _arrays(frames: list) -> ParticleArrays:
    """list of ``dlp_ros.particles.ParticleFrame`` -> particle arrays (T, K, ...)."""
    from dlp_ros.particles import stack

    return stack(frames)


def _frames(particles: ParticleArrays) -> list:
    """Particle arrays (T, K, ...) -> list of ``dlp_ros.particles.ParticleFrame``."""
    from dlp_ros.particles import ParticleFrame

    return [ParticleFrame.from_arrays(particles, t) for t in range(len(particles['mu']))]
