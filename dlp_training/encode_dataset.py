"""``encode-dataset``: cache a frozen DLP's tracked particles for every episode of a dataset.

Every episode (all splits) is encoded once with :func:`dlp_training.models.tracking.track_sequence`
(posterior means; particle index = identity over time) and written as
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
from dlp_training.models.dlp import Dlp
from dlp_training.models.tracking import METHOD, ON_THRESHOLD, track_sequence

logger = logging.getLogger(__name__)


class EncodeError(DlpError):
    """The run, the dataset or the arguments cannot be encoded together."""


@dataclass(frozen=True)
class EncodeOptions:
    """The encode-dataset command line, validated (the fields are its options)."""

    dlp: Path
    data: Path
    out: Path
    checkpoint: str = checked('best', choices=('best', 'last'))
    batch: int = checked(64, ge=1)
    threads: int = checked(0, ge=0)
    device: str = 'cpu'
    overwrite: bool = False
    no_progress: bool = False


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add('--dlp', type=Path, required=True, help='train-dlp run directory (the frozen encoder)')
    add('--data', type=Path, required=True, help='dataset built by build-dataset')
    add('--out', type=Path, required=True, help='latents directory to write')
    add('--checkpoint', choices=['best', 'last'], default='best', help='which checkpoint')
    add('--batch', type=int, default=64, help='frames per batched forward pass')
    add('--threads', type=int, default=0, help='torch CPU threads (0: torch default)')
    add('--device', default='cpu', help="torch device of the encoder: 'cpu', 'cuda', 'cuda:1'")
    add('--overwrite', action='store_true', help='replace --out once the new cache is complete')
    add('--no-progress', action='store_true', help='no progress bar')


def _open(opts: EncodeOptions) -> tuple[Dlp, dict[str, Any], Path, Dataset]:
    """Check the arguments, the run and the dataset before anything is computed or written."""
    check_out(Path(opts.out), opts.overwrite, MANIFEST, 'latents cache')
    if not Path(opts.dlp).is_dir():
        raise EncodeError(f'--dlp {opts.dlp}: no such run directory')
    checkpoint = run_checkpoint(opts.dlp, opts.checkpoint).resolve()
    model, _, info = load_dlp(opts.dlp, opts.checkpoint)
    data = Dataset.open(opts.data)
    data.require_frame_size(model.config.S, f'the model of {opts.dlp}')
    if not len(data):
        raise EncodeError(f'dataset {opts.data} has no episodes')
    return model, info, checkpoint, data


def encode_episode(
    model: Dlp,
    data: Dataset,
    name: str,
    batch: int,
    progress: Callable[[int], None] | None = None,
) -> dict[str, np.ndarray]:
    """One episode's arrays (``dlp_training.latents.ARRAYS`` and the optional labels)."""
    x = torch.from_numpy(to_model_input(np.asarray(data.frames(name))))  # (T, 3, S, S)
    x = x.to(next(model.parameters()).device)
    track = track_sequence(model, x, batch, progress=progress)
    arrays = {f: v.float().cpu().numpy() for f, v in track.particles._asdict().items()}
    arrays['reseeded'] = track.reseeded.numpy()  # (T, K) bool
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
    model: Dlp,
    info: dict[str, Any],
    checkpoint: Path,
    data: Dataset,
    episodes: list[EpisodeInfo],
    stats: StatsAccumulator,
    stats_split: str,
    ground_truth: bool,
) -> dict[str, Any]:
    c = model.config
    mean, std = stats.result()
    return {
        'format': FORMAT,
        'version': VERSION,
        'created_by': f'dlp_ros {dlp_ros.__version__}',
        'created': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
        'source': {
            'dataset': str(Path(opts.data).resolve()),
            'dlp_run': str(Path(opts.dlp).resolve()),
            'checkpoint': opts.checkpoint,
            'checkpoint_path': str(checkpoint),
            'step': int(info.get('step', 0)),
        },
        'S': c.S,
        'K': c.K,
        'F': c.F,
        'Fb': c.Fb,
        'fps': float(data.fps),
        'tracking': {
            'method': METHOD,
            'posterior': 'means',
            'on_threshold': ON_THRESHOLD,
            'claim_radius': c.anchor_scale,
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
    model, info, checkpoint, data = _open(opts)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    try:
        model = model.to(torch.device(opts.device))
    except (RuntimeError, AssertionError) as exc:
        raise ConfigError(f'--device {opts.device!r}: {exc}') from exc
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
            arrays = encode_episode(model, data, e.name, opts.batch, bar.update)
            np.savez(tmp / episode_file(e.name), **arrays)
            if stats_split == 'all' or e.split == stats_split:
                stats.add(arrays)
            ground_truth = ground_truth or 'gt_xy' in arrays
        write_manifest(tmp, manifest(opts, model, info, checkpoint, data, episodes, stats,
                                     stats_split, ground_truth))  # fmt: skip
        publish(tmp, out, opts.overwrite, MANIFEST, 'latents cache')
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        bar.close()
    logger.info('wrote %s: %d episodes, %d frames, K=%d, step %d of %s, in %.1f s', out,
                len(episodes), total, model.config.K, int(info.get('step', 0)),
                opts.dlp, time.monotonic() - started)  # fmt: skip
    return 0
