"""``evaluate-dlp``: measure a trained DLP on a dataset split; writes report.json and report.png.

Measured on the posterior means (deterministic), see ``docs/architecture.md`` (Measuring):

* ``reconstruction``: mean per-frame PSNR (dB) and SSIM of the decoded frames;
* ``localisation``: per frame, visible ground-truth objects Hungarian-matched to the particles
  that are on (transparency > 0.5): mean matched error (px), recall (matched closer than the
  object's radius; unmatched objects are misses), mean particles on, frames;
* ``mafl``: the linear-probe protocol of the DLP paper, a map without intercept from all K
  particle positions (flattened (K * 2), centred units [-1, 1]) to an object's position in the
  same units, error in px and % of the image side. ``pusher``: fitted on ``--fit-split`` frames
  where the object named 'pusher' is visible, tested on the evaluation split; ``plus`` adds the
  position log-variances to the inputs. ``per_episode``: each object of each evaluation episode,
  fitted on the first half of the frames where it is visible and tested on the second half, on
  particles *tracked* through the episode (``dlp_training.models.tracking``: slot k stays on one
  object; ``per_episode_untracked`` repeats it on per-frame encodings, whose slot order is a
  per-frame score rank);
* ``counts``: one particle per object? (:mod:`dlp_training.particle_counts`) the fraction of on
  particles that are duplicates (matched to no visible object within its radius, or within 2 px
  of another on particle) and the on-count against the objects in view (mean ratio, fraction of
  frames within 10 %), for the per-frame (``per_frame``) and the tracked (``tracked``) encodings;
* ``identity``: IDF1 and CLEAR-MOT identity switches per 100 visible object-frames of the tracked
  particles against the ground-truth object ids (:mod:`dlp_training.identity_metrics`); a slot's id
  changes when it is re-seeded; the gate is the object's radius, as for the recall.

The DLP is a ``--run`` (PyTorch) or the encoder, background encoder and decoder of an exported
``--bundle`` through ``dlp_ros.runtime`` (:mod:`dlp_training.dlp_sources`); ``run``, ``checkpoint``
and ``step`` then come from the bundle's model card, and ``bundle`` names it.

report.json: ``format``, ``version``, ``code_version``, ``created``, ``run``, ``checkpoint``,
``step``, ``bundle`` (null for a run), ``data``, ``split``, ``fit_split``, ``image_size``,
``n_particles``, ``episodes``, ``frames``, the five sections above and ``skipped`` ({section:
why}): whatever the dataset cannot provide (no ground truth, no pusher) is ``null`` and
``skipped`` says why.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

import dlp_ros
from dlp_ros.config_schema import checked, from_args
from dlp_ros.duplicates import DuplicateFilter, particle_boxes
from dlp_ros.errors import DlpError
from dlp_ros.plain_values import plain
from dlp_training import metrics
from dlp_training.checkpoint import run_checkpoint
from dlp_training.data.dataset import SPLITS, Dataset
from dlp_training.data.ground_truth import GroundTruth
from dlp_training.dlp_config import load_dlp
from dlp_training.dlp_sources import BundleDlpSource, DlpSource, TorchDlpSource
from dlp_training.identity_metrics import IdentityAccumulator, track_ids
from dlp_training.particle_counts import CountAccumulator
from dlp_training.visualize import PALETTE, draw_particles, label, upscale

logger = logging.getLogger(__name__)
FORMAT = 'dlp_ros.dlp_evaluation'
VERSION = 1
CELL = 160  # px per figure cell
PUSHER = 'pusher'


class EvaluationError(DlpError):
    """The run, the dataset or the arguments cannot be evaluated together."""


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add('--run', type=Path, help='train-dlp run directory (or --bundle)')
    add('--bundle', type=Path, help='exported bundle directory instead of --run (onnxruntime)')
    add('--providers', default='cpu', help="--bundle: 'auto', 'cpu', 'cuda' or 'tensorrt'")
    add('--threads', type=int, default=0, help='torch / onnxruntime threads (0: default)')
    add('--data', type=Path, required=True, help='dataset built by build-dataset')
    add('--out', type=Path, required=True, help='report directory (report.json, report.png)')
    add('--split', choices=SPLITS, default='test', help='evaluation split')
    add('--fit-split', choices=SPLITS, default='train', help='split the pusher probe is fit on')
    add('--checkpoint', choices=['best', 'last'], default='best', help='which checkpoint')
    add('--max-frames', type=int, help='at most N frames: the first N/E of each of E episodes')
    add('--max-fit-frames', type=int, default=5000, help='subsample of the probe fit frames')
    add('--batch', type=int, default=64, help='frames per forward pass')
    add('--figure-rows', type=int, default=4, help='frames drawn in report.png')
    add('--seed', type=int, default=0, help='seed of the fit-frame subsample')
    add(
        '--nms-iou',
        type=float,
        default=1.0,
        help='also measure the tracked particles as the node publishes them with nms_iou (an '
        "on particle whose box overlaps a kept one's by more than this is off): 'published' in "
        'the report and a column in report.png; 1 (default): not',
    )
    add('--no-progress', action='store_true', help='no progress bar')  # fmt: skip


@dataclass(frozen=True)
class EvaluateDlpOptions:
    """The evaluate-dlp command line, validated (the fields are its options)."""

    data: Path
    out: Path
    run: Path | None = None
    bundle: Path | None = None
    providers: str = 'cpu'
    threads: int = checked(0, ge=0)
    split: str = checked('test', choices=SPLITS)
    fit_split: str = checked('train', choices=SPLITS)
    checkpoint: str = checked('best', choices=('best', 'last'))
    max_frames: int | None = checked(None, ge=1)
    max_fit_frames: int = checked(5000, ge=1)
    batch: int = checked(64, ge=1)
    figure_rows: int = checked(4, ge=1)
    seed: int = 0
    nms_iou: float = checked(1.0, ge=0, le=1)
    no_progress: bool = False


@dataclass
class Encoded:
    """Posterior means of the evaluated frames of one episode."""

    name: str
    mu: np.ndarray  # (T, K, 2) model units, [-1, 1] = image edges
    logvar: np.ndarray  # (T, K, 2) model units
    presence: np.ndarray  # (T, K) transparency
    truth: GroundTruth | None  # the rows of the T frames
    reseeded: np.ndarray | None = None  # (T, K) bool, tracked encodings: slot k re-seeded at t
    scale: np.ndarray | None = None  # (T, K, 2) scale latent, tracked encodings


def _encode(
    model: DlpSource, frames: np.ndarray, batch: int, bar: tqdm, keep: dict[int, Any] | None = None
) -> dict[str, np.ndarray]:
    """(T, S, S, 3) uint8 -> mu, logvar (T, K, 2), presence (T, K) and, when ``keep`` is given,
    psnr, ssim (T,) with the (S, S, 3) uint8 reconstructions of the frames ``keep`` names."""
    return model.encode(frames, batch, bar, keep)


def _tracked(
    model: DlpSource, frames: np.ndarray, batch: int, name: str, truth: GroundTruth | None
) -> Encoded:
    """Particles of one episode tracked frame to frame (slot k stays on one object)."""
    p = model.track(frames, batch)
    return Encoded(name, p['mu'], p['logvar'], p['presence'], truth, p['reseeded'], p['scale'])


def _counts(lengths: list[int], max_frames: int | None) -> list[int]:
    """Frames per episode: all, or equal shares of ``max_frames`` (the first ones get the rest)."""
    if max_frames is None:
        return lengths
    share, rest = divmod(max_frames, len(lengths))
    return [min(n, share + (i < rest)) for i, n in enumerate(lengths)]


def _to_unit(xy_px: np.ndarray, size: int) -> np.ndarray:
    """Pixels (centre of pixel 0 = 0.5) -> model units ([-1, 1] = image edges)."""
    return xy_px * (2.0 / size) - 1.0


def _error(err_units: float, size: int) -> dict[str, float]:
    px = err_units * size / 2
    return {'error_px': px, 'error_percent': 100 * px / size}


def _pusher_probe(
    model: DlpSource, data: Dataset, codes: list[Encoded], args: EvaluateDlpOptions, bar: tqdm
) -> tuple[dict[str, Any] | None, str | None]:
    """MAFL protocol (a): the pusher across episodes; (entry, None) or (None, why skipped)."""
    size = model.image_size
    test_x, test_lv, test_y = [], [], []
    for c in codes:
        if c.truth is not None and PUSHER in c.truth.names:
            n = c.truth.names.index(PUSHER)
            v = c.truth.visible[:, n]  # (T,)
            test_x.append(c.mu[v])
            test_lv.append(c.logvar[v])
            test_y.append(_to_unit(c.truth.xy[v, n], size))
    if not test_x or not sum(len(x) for x in test_x):
        return None, f'no visible object named {PUSHER!r} in the {args.split} split'
    picks = []  # (episode, frame)
    for info in data.episodes(args.fit_split):
        truth = data.labels(info.name).ground_truth
        if truth is not None and PUSHER in truth.names:
            v = np.flatnonzero(truth.visible[:, truth.names.index(PUSHER)])
            picks += [(info.name, int(t), truth) for t in v]
    if not picks:
        return None, f'no visible object named {PUSHER!r} in the {args.fit_split} split'
    rng = np.random.default_rng(args.seed)
    chosen = np.sort(rng.choice(len(picks), min(len(picks), args.max_fit_frames), replace=False))
    bar.reset(total=len(chosen))
    bar.set_description(f'encode {args.fit_split}')
    fit_x, fit_lv, fit_y = [], [], []
    for name in dict.fromkeys(picks[i][0] for i in chosen):
        rows = [picks[i] for i in chosen if picks[i][0] == name]
        t = np.array([r[1] for r in rows])
        truth = rows[0][2]
        enc = _encode(model, data.frames(name)[t], args.batch, bar)
        fit_x.append(enc['mu'])
        fit_lv.append(enc['logvar'])
        fit_y.append(_to_unit(truth.xy[t, truth.names.index(PUSHER)], size))
    fx, fl, fy = np.concatenate(fit_x), np.concatenate(fit_lv), np.concatenate(fit_y)
    tx, tl, ty = np.concatenate(test_x), np.concatenate(test_lv), np.concatenate(test_y)
    base = metrics.linear_probe(fx, fy, tx, ty)
    plus = metrics.linear_probe(np.concatenate([fx, fl], -1), fy, np.concatenate([tx, tl], -1), ty)
    entry = {**_error(base.mean_error, size), 'plus': _error(plus.mean_error, size),
             'fit_frames': len(fx), 'test_frames': len(tx), 'ridge': metrics.RIDGE}  # fmt: skip
    return entry, None


def _episode_probe(codes: list[Encoded], size: int) -> tuple[dict[str, Any] | None, str | None]:
    """MAFL protocol (b): each object within an episode, first half of its frames -> second."""
    found = [
        metrics.split_half_probe(c.mu, _to_unit(c.truth.xy[:, n], size), c.truth.visible[:, n])
        for c in codes if c.truth is not None for n in range(len(c.truth.ids))
    ]  # fmt: skip
    errors = [e for e in found if e is not None]
    if not errors:
        why = 'visible in at least 4 frames' if found else 'in the ground truth (none)'
        return None, f'no object {why} of the evaluated episodes'
    err = np.concatenate(errors)
    entry = {**_error(float(err.mean()), size), 'pairs': len(errors), 'test_frames': len(err),
             'skipped_pairs': len(found) - len(errors), 'ridge': metrics.RIDGE}  # fmt: skip
    return entry, None


def _truth_cell(frame: np.ndarray, code: Encoded, t: int, size: int) -> np.ndarray:
    """Ground truth circled (grey when hidden), matched particles joined to their object."""
    cell, k = upscale(frame, CELL), CELL / size
    truth = code.truth
    if truth is None:
        return label(cell, 'no ground truth')
    xy = (code.mu[t] + 1) / 2 * size  # (K, 2) px
    m = metrics.match_frame(xy, code.presence[t], truth.xy[t], truth.radius[t], truth.visible[t])
    for n in range(len(truth.ids)):
        colour = (255, 255, 255) if truth.visible[t, n] else (128, 128, 128)
        centre = tuple(int(v) for v in np.round(truth.xy[t, n] * k))
        cv2.circle(cell, centre, max(2, round(truth.radius[t, n] * k)), colour, 1, cv2.LINE_AA)
    for n, j in zip(m.objects, m.particles, strict=True):
        a = tuple(int(v) for v in np.round(truth.xy[t, n] * k))
        b = tuple(int(v) for v in np.round(xy[j] * k))
        colour = tuple(int(c) for c in PALETTE[j % len(PALETTE)])
        cv2.line(cell, a, b, colour, 1, cv2.LINE_AA)
        cv2.circle(cell, b, 3, colour, -1, cv2.LINE_AA)
    return cell


def _figure(rows: list[tuple[np.ndarray, np.ndarray, Encoded, int]], lines: list[str],
            size: int, published_rows: list[Encoded] | None = None) -> np.ndarray:  # fmt: skip
    """(header + rows * CELL, C * CELL, 3) uint8 RGB: input, reconstruction, particles, truth
    and, with ``published_rows`` (the tracked episode of each row as published), the
    published particles (C = 5; else 4)."""
    body = []
    columns = 4 if published_rows is None else 5
    for i, (frame, rec, code, t) in enumerate(rows):
        std = np.exp(0.5 * code.logvar[t]) * size / 2  # (K, 2) px
        cells = [
            upscale(frame, CELL),
            upscale(rec, CELL),
            draw_particles(frame, (code.mu[t] + 1) / 2 * size, std, code.presence[t], size, CELL),
            _truth_cell(frame, code, t, size),
        ]
        names = ['input', 'reconstruction', 'particles (2 sigma)', 'ground truth']
        if published_rows is not None:
            pub = published_rows[i]
            pub_std = np.exp(0.5 * pub.logvar[t]) * size / 2  # (K, 2) px
            cells.append(draw_particles(frame, (pub.mu[t] + 1) / 2 * size, pub_std,
                                        pub.presence[t], size, CELL))  # fmt: skip
            names.append('tracked, as published')
        names = [f'{code.name} t={t}'] if i else [f'input {code.name} t={t}', *names[1:]]
        cells = [label(c, n) for c, n in zip(cells, names, strict=False)] + cells[len(names) :]
        body.append(np.concatenate(cells, axis=1))
    header = np.zeros((8 + 16 * len(lines), columns * CELL, 3), np.uint8)
    for i, text in enumerate(lines):
        cv2.putText(header, text, (4, 16 + 16 * i), cv2.FONT_HERSHEY_PLAIN, 1.0,
                    (255, 255, 255), 1, cv2.LINE_AA)  # fmt: skip
    return np.concatenate([header, *body], axis=0)


def _num(value: float | None, spec: str) -> str:
    return 'n/a' if value is None else format(value, spec)


def _headline(report: dict[str, Any]) -> list[str]:
    """Two or three short lines of the headline numbers."""
    r, loc, mafl = report['reconstruction'], report['localisation'], report['mafl']
    name = Path(report['bundle'] or report['run']).name
    head = f'{name} step {report["step"]} | {report["split"]}'
    lines = [f'{head}: {report["frames"]} frames | PSNR {_num(r["psnr_db"], ".2f")} dB, '
             f'SSIM {_num(r["ssim"], ".3f")}']  # fmt: skip
    if loc is not None:
        err, recall = _num(loc['mean_error_px'], '.2f'), _num(loc['recall'], '.2f')
        lines.append(f'localisation {err} px, recall {recall}, on {loc["mean_particles_on"]:.1f}')
    probe = []
    if mafl['pusher'] is not None:
        p = mafl['pusher']
        probe.append(f'pusher {_num(p["error_percent"], ".2f")}% '
                     f'(+ {_num(p["plus"]["error_percent"], ".2f")}%)')  # fmt: skip
    if mafl['per_episode'] is not None:
        probe.append(f'per episode {_num(mafl["per_episode"]["error_percent"], ".2f")}%')
    if probe:
        lines.append('MAFL ' + ', '.join(probe))
    lines += _object_lines(report)
    return lines


def _object_lines(report: dict[str, Any]) -> list[str]:
    """Duplicates, on-count and identity headline lines (none without ground truth)."""
    lines = []
    for key, what in (('per_frame', 'per frame'), ('tracked', 'tracked')):
        c = (report.get('counts') or {}).get(key)
        if c is not None:
            dup = _num(None if c['duplicate_fraction'] is None else 100 * c['duplicate_fraction'],
                       '.1f')  # fmt: skip
            within = _num(None if c['on_within_fraction'] is None
                          else 100 * c['on_within_fraction'], '.0f')  # fmt: skip
            ratio = _num(c['on_ratio_mean'], '.2f')
            lines.append(f'{what}: duplicates {dup}%, on/objects {ratio} (within 10%: {within}% '
                         'of frames)')  # fmt: skip
    i = report.get('identity')
    if i is not None:
        lines.append(f'identity: IDF1 {_num(i["idf1"], ".3f")}, ID switches '
                     f'{_num(i["id_switches_per_100"], ".2f")} per 100 object-frames')  # fmt: skip
    p = report.get('published')
    if p is not None:
        c, i, loc = p['counts'], p['identity'] or {}, p['localisation'] or {}
        dup = None if c['duplicate_fraction'] is None else 100 * c['duplicate_fraction']
        within = None if c['on_within_fraction'] is None else 100 * c['on_within_fraction']
        lines.append(
            f'published (nms IoU {p["nms_iou"]:g}): duplicates {_num(dup, ".1f")}%, '
            f'on/objects {_num(c["on_ratio_mean"], ".2f")} (within 10%: {_num(within, ".0f")}%), '
            f'IDF1 {_num(i.get("idf1"), ".3f")}'
        )
        lines.append(
            f'published: localisation {_num(loc.get("mean_error_px"), ".2f")} px, recall '
            f'{_num(loc.get("recall"), ".2f")} (tracked particles)'
        )
    return lines


def published(tracked: list[Encoded], size: int, iou: float) -> list[Encoded]:
    """The tracked episodes as the node publishes them with ``nms_iou`` = ``iou``
    (:class:`dlp_ros.duplicates.DuplicateFilter`): suppressed particles get presence 0."""
    out = []
    for c in tracked:
        if c.scale is None:
            raise EvaluationError(f'{c.name}: tracked encodings without scale')
        dedup = DuplicateFilter(iou)
        presence = c.presence.copy()
        for t in range(len(presence)):
            new = None if c.reseeded is None else c.reseeded[t]
            centre, half = particle_boxes(c.mu[t], c.scale[t], size)
            presence[t][dedup(centre, half, c.presence[t], new)] = 0.0
        out.append(dataclasses.replace(c, presence=presence))
    return out


def object_metrics(codes: list[Encoded], tracked: list[Encoded], size: int,
                   skipped: dict[str, str | None], shown: list[Encoded] | None = None,
                   nms_iou: float = 1.0) -> dict[str, Any]:  # fmt: skip
    """``counts`` (per frame and tracked) and ``identity`` (tracked) of the episodes with ground
    truth, None and a ``skipped`` reason without any; with ``shown``, the tracked episodes as
    the node publishes them with ``nms_iou`` (:func:`published`), also ``published``: their
    counts, identity and localisation."""
    counts = {'per_frame': CountAccumulator(), 'tracked': CountAccumulator()}
    ids = IdentityAccumulator()
    for key, encoded in (('per_frame', codes), ('tracked', tracked)):
        for c in (c for c in encoded if c.truth is not None):
            g = c.truth
            counts[key].add((c.mu + 1) / 2 * size, c.presence, g.xy, g.radius, g.visible)
    on_threshold = counts['tracked'].threshold
    for c in (c for c in tracked if c.truth is not None and c.reseeded is not None):
        g = c.truth
        on = c.presence > on_threshold
        ids.add(track_ids(c.reseeded), (c.mu + 1) / 2 * size, on, g.xy, g.visible, g.radius)
    if not ids.episodes:
        skipped['counts'] = skipped['identity'] = 'the evaluated episodes have no ground truth'
        return {'counts': None, 'identity': None}
    identity = {**ids.summary(), 'gate': 'object radius (px), as the localisation recall',
                'on_threshold': on_threshold}  # fmt: skip
    out = {'counts': {k: v.summary() for k, v in counts.items()}, 'identity': identity}
    if shown is not None:
        out['published'] = {**_published_metrics(shown, size), 'nms_iou': nms_iou}
    return out


def _published_metrics(episodes: list[Encoded], size: int) -> dict[str, Any]:
    """Counts, identity and localisation of tracked episodes with ground truth."""
    counts, ids, loc = CountAccumulator(), IdentityAccumulator(), metrics.LocalisationAccumulator()
    for c in (c for c in episodes if c.truth is not None):
        g, xy = c.truth, (c.mu + 1) / 2 * size
        counts.add(xy, c.presence, g.xy, g.radius, g.visible)
        loc.add(xy, c.presence, g.xy, g.radius, g.visible)
        if c.reseeded is not None:
            on = c.presence > counts.threshold
            ids.add(track_ids(c.reseeded), xy, on, g.xy, g.visible, g.radius)
    return {'counts': counts.summary(), 'identity': ids.summary() if ids.episodes else None,
            'localisation': loc.summary() if loc.frames else None}  # fmt: skip


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _open_source(args: EvaluateDlpOptions) -> DlpSource:
    """The DLP of --run (PyTorch) or of --bundle (onnxruntime), checked."""
    if (args.run is None) == (args.bundle is None):
        raise EvaluationError('give either --run or --bundle')
    if args.run is None:
        if not args.bundle.is_dir():
            raise EvaluationError(f'--bundle {args.bundle}: no such bundle directory')
        return BundleDlpSource(args.bundle, args.providers, args.threads)
    checkpoint = run_checkpoint(args.run, args.checkpoint).resolve()
    model, _, state = load_dlp(args.run, args.checkpoint)
    description = {'run': str(args.run.resolve()), 'checkpoint': str(checkpoint),
                   'step': int(state.get('step', 0)), 'bundle': None}  # fmt: skip
    return TorchDlpSource(model, description)


def _open(args: EvaluateDlpOptions) -> tuple[DlpSource, Dataset]:
    """Check the arguments, the model and the dataset before anything is computed or written."""
    if args.out.exists() and not args.out.is_dir():
        raise EvaluationError(f'--out {args.out} exists and is not a directory')
    model = _open_source(args)
    data = Dataset.open(args.data)
    data.require_frame_size(model.image_size, f'the model of {args.run or args.bundle}')
    n = len(data.episodes(args.split))
    if not n:
        raise EvaluationError(f'dataset {args.data} has no {args.split!r} episodes')
    if args.max_frames is not None and args.max_frames < n:
        raise EvaluationError(f'--max-frames {args.max_frames} is fewer than the {n} '
                              f'{args.split} episodes')  # fmt: skip
    return model, data


def run(args: argparse.Namespace) -> int:
    return evaluate_dlp(from_args(EvaluateDlpOptions, args))


def evaluate_dlp(args: EvaluateDlpOptions) -> int:
    """:func:`run` with its options."""
    if args.threads:  # the torch model, and the metrics on either path
        torch.set_num_threads(args.threads)
    model, data = _open(args)
    size, episodes = model.image_size, data.episodes(args.split)
    counts = _counts([e.frames for e in episodes], args.max_frames)
    starts = np.cumsum([0, *counts])  # (E + 1,) first global frame index of each episode
    total = int(starts[-1])
    figure_at = set(
        np.linspace(0, total - 1, num=min(args.figure_rows, total)).round().astype(int)
    )
    bar = tqdm(total=total, unit='frame', desc=f'evaluate {args.split}', file=sys.stderr,
               disable=args.no_progress or None)  # fmt: skip
    codes, tracked, psnrs, ssims, kept, skipped = [], [], [], [], {}, {}
    try:
        for info, n, s0 in zip(episodes, counts, starts, strict=False):
            keep = {int(g - s0): None for g in sorted(figure_at) if s0 <= g < s0 + n}
            enc = _encode(model, data.frames(info.name)[:n], args.batch, bar, keep)
            truth = data.labels(info.name).ground_truth
            if truth is not None:  # the rows of the n evaluated frames
                cut = {k: getattr(truth, k)[:n] for k in ('stamps_ns', 'xy', 'radius', 'visible')}
                truth = dataclasses.replace(truth, **cut)
            codes.append(Encoded(info.name, enc['mu'], enc['logvar'], enc['presence'], truth))
            tracked.append(
                _tracked(model, data.frames(info.name)[:n], args.batch, info.name, truth)
            )
            psnrs.append(enc['psnr'])
            ssims.append(enc['ssim'])
            kept.update({(len(codes) - 1, t): img for t, img in keep.items()})
        loc = metrics.LocalisationAccumulator()
        for c in (c for c in codes if c.truth is not None):
            loc.add((c.mu + 1) / 2 * size, c.presence, c.truth.xy, c.truth.radius, c.truth.visible)
        if not loc.frames:
            skipped['localisation'] = f'the {args.split} split has no ground truth'
        pusher, skipped['mafl.pusher'] = _pusher_probe(model, data, codes, args, bar)
        # identities must hold within an episode: particles tracked from frame to frame
        per_episode, skipped['mafl.per_episode'] = _episode_probe(tracked, size)
        untracked, _ = _episode_probe(codes, size)
        # the tracked episodes as the node publishes them: measured, and drawn in report.png
        shown = published(tracked, size, args.nms_iou) if args.nms_iou < 1 else None
        objects = object_metrics(codes, tracked, size, skipped, shown, args.nms_iou)
    finally:
        bar.close()
    report = plain({
        'format': FORMAT, 'version': VERSION, 'code_version': dlp_ros.__version__,
        'created': time.strftime('%Y-%m-%dT%H:%M:%S%z'), **model.description,
        'data': str(args.data.resolve()), 'split': args.split, 'fit_split': args.fit_split,
        'image_size': size, 'n_particles': model.n_particles, 'episodes': len(codes),
        'frames': total, 'threads': torch.get_num_threads(),
        'reconstruction': {'psnr_db': float(np.concatenate(psnrs).mean()),
                           'ssim': float(np.concatenate(ssims).mean()), 'frames': total},
        'localisation': loc.summary() if loc.frames else None, **objects,
        'mafl': {'pusher': pusher, 'per_episode': per_episode,
                 'per_episode_untracked': untracked},
        'skipped': {k: v for k, v in skipped.items() if v},
    }, finite=True)  # fmt: skip
    lines = _headline(report)
    rows = [(data.frames(codes[e].name)[t], img, codes[e], t) for (e, t), img in kept.items()]
    pub = None if shown is None else [shown[e] for e, _ in kept]
    figure = _figure(rows, lines, size, pub)
    ok, png = cv2.imencode('.png', cv2.cvtColor(figure, cv2.COLOR_RGB2BGR))
    if not ok:
        raise EvaluationError('cannot encode report.png')
    args.out.mkdir(parents=True, exist_ok=True)
    _write_atomic(args.out / 'report.png', png.tobytes())
    _write_atomic(args.out / 'report.json', (json.dumps(report, indent=2) + '\n').encode())
    for line in [*lines, *(f'skipped {k}: {v}' for k, v in report['skipped'].items())]:
        print(line)  # noqa: T201
    print(f'report -> {args.out / "report.json"}, figure -> {args.out / "report.png"}')  # noqa: T201
    return 0
