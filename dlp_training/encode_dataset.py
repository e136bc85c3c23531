"""``encode-dataset``: cache a frozen DLP's tracked particles for every episode of a dataset.

Every episode (all splits) is encoded once with :func:`dlp_training.models.tracking.track_sequence`
(posterior means; particle index = identity over time), or, with ``--bundle``, with an exported
bundle's ONNX encoder through :class:`dlp_ros.runtime.Tracker` (the same tracking as the node, so
a shipped bundle's dynamics can be trained again without its DLP run), and written as
``LATENTS/episodes/<name>.npz``, with ``LATENTS/manifest.yaml`` describing the source, the model
sizes, the tracking and per-attribute mean/std over the train split (format:
``dlp_training.latents``). The cache is built in a hidden sibling directory and renamed to
``--out`` only when complete; ``--overwrite`` replaces an existing cache only then.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

import dlp_ros
from dlp_ros.config_schema import checked, from_args
from dlp_ros.errors import ConfigError, DlpError
from dlp_ros.image_codec import to_model_input
from dlp_ros.offline.output_dir import check_out, publish
from dlp_training.checkpoint import run_checkpoint
from dlp_training.data.dataset import Dataset, EpisodeInfo, write_manifest
from dlp_training.dlp_config import load_dlp
from dlp_training.latents import EPISODES, FORMAT, MANIFEST, STATS, VERSION, episode_file
from dlp_training.models.dlp import Particles
from dlp_training.models.tracking import METHOD, ON_THRESHOLD, track_sequence

logger = logging.getLogger(__name__)


class EncodeError(DlpError):
    """The run, the dataset or the arguments cannot be encoded together."""


@dataclass(frozen=True)
class EncodeOptions:
    """The encode-dataset command line, validated (the fields are its options)."""

    dlp: Path | None
    data: Path
    out: Path
    bundle: Path | None = None
    checkpoint: str = checked('best', choices=('best', 'last'))
    batch: int = checked(64, ge=1)
    threads: int = checked(0, ge=0)
    device: str = 'cpu'
    overwrite: bool = False
    no_progress: bool = False


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--dlp', type=Path, help='train-dlp run directory (the frozen encoder)')
    source.add_argument(
        '--bundle', type=Path, help='or an exported bundle directory: its ONNX encoder, on the CPU'
    )
    add('--data', type=Path, required=True, help='dataset built by build-dataset')
    add('--out', type=Path, required=True, help='latents directory to write')
    add('--checkpoint', choices=['best', 'last'], default='best', help='which checkpoint')
    add('--batch', type=int, default=64, help='frames per batched forward pass')
    add('--threads', type=int, default=0, help='torch CPU threads (0: torch default)')
    add('--device', default='cpu', help="torch device of the encoder: 'cpu', 'cuda', 'cuda:1'")
    add('--overwrite', action='store_true', help='replace --out once the new cache is complete')
    add('--no-progress', action='store_true', help='no progress bar')


@dataclass
class FrozenEncoder:
    """What encodes the episodes: a train-dlp run (torch) or a bundle (ONNX), and its sizes.

    ``track(frames, progress)`` maps an episode's (T, S, S, 3) uint8 frames to its tracked
    particle arrays (``Particles`` fields and ``reseeded``); ``source`` is the manifest's
    description of the encoder.
    """

    track: Callable[[np.ndarray, Callable[[int], None] | None], dict[str, np.ndarray]]
    sizes: dict[str, int]  # S, K, F, Fb
    claim_radius: float
    source: dict[str, Any]
    label: str


def _run_encoder(opts: EncodeOptions) -> FrozenEncoder:
    if not Path(opts.dlp).is_dir():
        raise EncodeError(f'--dlp {opts.dlp}: no such run directory')
    checkpoint = run_checkpoint(opts.dlp, opts.checkpoint).resolve()
    model, _, info = load_dlp(opts.dlp, opts.checkpoint)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    try:
        model = model.to(torch.device(opts.device))
    except (RuntimeError, AssertionError) as exc:
        raise ConfigError(f'--device {opts.device!r}: {exc}') from exc

    def track(frames: np.ndarray, progress: Callable[[int], None] | None) -> dict[str, np.ndarray]:
        x = torch.from_numpy(to_model_input(frames)).to(next(model.parameters()).device)
        result = track_sequence(model, x, opts.batch, progress=progress)  # (T, 3, S, S) in
        arrays = {f: v.float().cpu().numpy() for f, v in result.particles._asdict().items()}
        arrays['reseeded'] = result.reseeded.numpy()  # (T, K) bool
        return arrays

    c = model.config
    source = {'dlp_run': str(Path(opts.dlp).resolve()), 'checkpoint': opts.checkpoint,
              'checkpoint_path': str(checkpoint), 'step': int(info.get('step', 0))}  # fmt: skip
    sizes = {'S': c.S, 'K': c.K, 'F': c.F, 'Fb': c.Fb}
    label = f'step {source["step"]} of {opts.dlp}'
    return FrozenEncoder(track, sizes, float(c.anchor_scale), source, label)


def _bundle_encoder(opts: EncodeOptions) -> FrozenEncoder:
    from dlp_ros.model_card import CARD_FILE  # noqa: PLC0415
    from dlp_ros.runtime import DlpRuntime  # noqa: PLC0415

    bundle = Path(opts.bundle)
    if not (bundle / CARD_FILE).is_file():
        raise EncodeError(f'--bundle {bundle}: not a bundle directory (no {CARD_FILE})')
    if opts.device != 'cpu':
        raise ConfigError(f'--device {opts.device!r}: --bundle encodes on the CPU only')
    rt = DlpRuntime.load(bundle, providers='cpu', threads=opts.threads)
    card = rt.card

    def track(frames: np.ndarray, progress: Callable[[int], None] | None) -> dict[str, np.ndarray]:
        tracker = rt.tracker()
        out = []
        for rgb in frames:  # (S, S, 3) uint8 each
            out.append(tracker.update(rt.preprocess(rgb)))
            if progress is not None:
                progress(1)
        arrays = {f: np.stack([getattr(p, f) for p in out]) for f in Particles._fields}
        arrays['reseeded'] = np.stack([p.reseeded for p in out])  # (T, K) bool
        return arrays

    p = card.particles
    source = {'bundle': str(bundle.resolve()), 'code_version': card.code_version,
              'created': card.created}  # fmt: skip
    sizes = {'S': card.image.size, 'K': p.K, 'F': p.F, 'Fb': p.Fb}
    return FrozenEncoder(track, sizes, float(card.tracking.claim_radius), source, str(bundle))


def _open(opts: EncodeOptions) -> tuple[FrozenEncoder, Dataset]:
    """Check the arguments, the encoder and the dataset before anything is computed or written."""
    check_out(Path(opts.out), opts.overwrite, MANIFEST, 'latents cache')
    encoder = _bundle_encoder(opts) if opts.bundle is not None else _run_encoder(opts)
    data = Dataset.open(opts.data)
    data.require_frame_size(encoder.sizes['S'], f'the model of {encoder.label}')
    if not len(data):
        raise EncodeError(f'dataset {opts.data} has no episodes')
    return encoder, data


def encode_episode(
    encoder: FrozenEncoder,
    data: Dataset,
    name: str,
    progress: Callable[[int], None] | None = None,
) -> dict[str, np.ndarray]:
    """One episode's arrays (``dlp_training.latents.ARRAYS`` and the optional labels)."""
    arrays = encoder.track(np.asarray(data.frames(name)), progress)
    labels = data.labels(name)
    arrays['stamps_ns'] = labels.stamps_ns.astype(np.int64)  # (T,)
    arrays['grid_ns'] = labels.grid_ns.astype(np.int64)  # (T,)
    if labels.actions is not None:
        arrays['actions'] = labels.actions.astype(np.float32)  # (T, A)
        if labels.action_valid is not None:
            arrays['action_valid'] = labels.action_valid.astype(bool)  # (T,)
    gt = labels.ground_truth
    if gt is not None:
        arrays.update(gt_xy=gt.xy, gt_radius=gt.radius, gt_visible=gt.visible, gt_ids=gt.ids,
                      gt_names=np.array(gt.names, dtype=str))  # fmt: skip
    return arrays


class StatsAccumulator:
    """Per-dimension mean and std of each particle attribute over all frames and particles."""

    def __init__(self) -> None:
        self.n: dict[str, int] = {}
        self.sum: dict[str, np.ndarray] = {}  # name -> (D,) float64
        self.sq: dict[str, np.ndarray] = {}
        self.frames = 0

    def add(self, arrays: dict[str, np.ndarray]) -> None:
        self.frames += len(arrays['mu'])
        for name in STATS:
            a = arrays[name].astype(np.float64)
            a = a.reshape(-1, a.shape[-1])  # (T K, D) or (T, Fb)
            self.n[name] = self.n.get(name, 0) + len(a)
            self.sum[name] = self.sum.get(name, 0.0) + a.sum(0)
            self.sq[name] = self.sq.get(name, 0.0) + (a * a).sum(0)

    def result(self) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
        """(mean, std) by attribute, lists of floats; std >= 1e-6."""
        mean = {k: self.sum[k] / self.n[k] for k in STATS}
        var = {k: np.maximum(self.sq[k] / self.n[k] - mean[k] ** 2, 0.0) for k in STATS}
        std = {k: np.maximum(np.sqrt(v), 1e-6) for k, v in var.items()}
        return ({k: v.tolist() for k, v in mean.items()}, {k: v.tolist() for k, v in std.items()})


def manifest(
    opts: EncodeOptions,
    encoder: FrozenEncoder,
    data: Dataset,
    episodes: list[EpisodeInfo],
    stats: StatsAccumulator,
    stats_split: str,
    ground_truth: bool,
) -> dict[str, Any]:
    mean, std = stats.result()
    return {
        'format': FORMAT,
        'version': VERSION,
        'created_by': f'dlp_ros {dlp_ros.__version__}',
        'created': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
        'source': {'dataset': str(Path(opts.data).resolve()), **encoder.source},
        **encoder.sizes,
        'fps': float(data.fps),
        'tracking': {
            'method': METHOD,
            'posterior': 'means',
            'on_threshold': ON_THRESHOLD,
            'claim_radius': encoder.claim_radius,
        },
        'action': data.manifest.get('action'),
        'ground_truth': ground_truth,
        'stats': {'split': stats_split, 'frames': stats.frames, 'mean': mean, 'std': std},
        'episodes': [{'name': e.name, 'split': e.split, 'frames': e.frames} for e in episodes],
    }


def run(args: argparse.Namespace) -> int:
    """Encode the dataset; raise a DlpError on bad input, leaving nothing at --out."""
    return encode(from_args(EncodeOptions, args))


def encode(opts: EncodeOptions) -> int:
    """:func:`run` with its options."""
    encoder, data = _open(opts)
    started = time.monotonic()
    out = Path(opts.out)
    episodes = data.episodes()
    stats_split = 'train' if data.episodes('train') else 'all'
    if stats_split == 'all':
        logger.warning('dataset %s has no train episodes: stats over all episodes', opts.data)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f'.{out.name}.{os.getpid()}-{time.time_ns()}.partial'
    total = sum(e.frames for e in episodes)
    bar = tqdm(total=total, unit='frame', desc='encode', file=sys.stderr,
               disable=opts.no_progress or None)  # fmt: skip
    try:
        (tmp / EPISODES).mkdir(parents=True)
        stats, ground_truth = StatsAccumulator(), False
        for e in episodes:
            arrays = encode_episode(encoder, data, e.name, bar.update)
            np.savez(tmp / episode_file(e.name), **arrays)
            if stats_split == 'all' or e.split == stats_split:
                stats.add(arrays)
            ground_truth = ground_truth or 'gt_xy' in arrays
        write_manifest(tmp, manifest(opts, encoder, data, episodes, stats, stats_split,
                                     ground_truth))  # fmt: skip
        publish(tmp, out, opts.overwrite, MANIFEST, 'latents cache')
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        bar.close()
    logger.info('wrote %s: %d episodes, %d frames, K=%d, %s, in %.1f s', out, len(episodes),
                total, encoder.sizes['K'], encoder.label, time.monotonic() - started)  # fmt: skip
    return 0
