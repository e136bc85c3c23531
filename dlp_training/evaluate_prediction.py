"""``evaluate-prediction``: condition on C frames, predict N, compare with the true next N frames.

    python -m dlp_training evaluate-prediction --dlp DLP_RUN --dynamics DYN_RUN --data DATA \\
        --context 3 --horizon 10 --out REPORT
    python -m dlp_training evaluate-prediction --bundle BUNDLE --data DATA --context 3 \\
        --horizon 10 --out REPORT                       # the exported ONNX graphs, no torch model

Clips are non-overlapping windows of C + N frames of the split's episodes, evenly spread, at
most ``--clips`` (:func:`dlp_training.prediction.select_clips`). Per clip the predictor
(:mod:`dlp_training.prediction`) tracks the C context frames only, rolls the dynamics out N steps
(with the dataset's actions when the model takes them, or zero actions with ``--actions zero``:
what the node and ``dlp-replay`` do without an action topic) and decodes the predicted particles.
Measured per prediction step n = 1 .. N on the predicted frames only (``docs/architecture.md``):

* ``psnr_db``, ``ssim``: the decoded prediction against the true frame C - 1 + n;
* ``position_error_px``, ``recall``, ``particles_on``: the particles that are on (transparency >
  0.5) Hungarian-matched to the visible ground-truth objects (as ``evaluate-dlp``: mean matched
  error in px pooled over the clips; recall = matched closer than the object's radius).

Series: ``model``; baselines ``last_frame`` (the last observed frame repeated for the image
metrics, the last observed particles for the positions) and ``const_velocity`` (the particles'
last displacement continued, :func:`~dlp_training.prediction.constant_velocity`, decoded by the
same decoder), ``const_flow`` (the last observed frame carried on by the Farneback optical flow of
the last two observed frames, :mod:`dlp_training.flow_baseline`; image metrics only); and
``last_frame_decoded`` (the last observed particles decoded: image metrics only,
the decoder's share of the error).

Output directory (whole or not at all, :mod:`dlp_ros.offline.output_dir`): ``report.json`` (config,
``per_step[metric][series]`` lists of N values, ``mean``, ``step_10``, ``comparison`` of the
model with each baseline, ``best_baseline`` per metric, ``flow_baseline`` (the Farneback
parameters)), ``<metric>.png`` charts, ``prediction.gif`` (true | model | constant
velocity | last frame, a few clips) and ``prediction.png`` (the same as a still).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

import dlp_ros
from dlp_ros.compositing import MODES as COMPOSITING_MODES
from dlp_ros.compositing import Motion, compose, from_uint8, to_uint8
from dlp_ros.config_schema import checked, from_args
from dlp_ros.offline.output_dir import check_out, publish
from dlp_ros.offline.plots import encode_gif, gif_writer, line_plot
from dlp_ros.plain_values import plain
from dlp_training import metrics
from dlp_training.checkpoint import run_checkpoint
from dlp_training.data.dataset import SPLITS, Dataset
from dlp_training.dlp_config import load_dlp
from dlp_training.dynamics_config import load_dynamics
from dlp_training.flow_baseline import FlowParams, constant_flow
from dlp_training.prediction import (
    BundlePredictor,
    ClipSelection,
    PredictionClip,
    PredictionError,
    Predictor,
    TorchPredictor,
    concat,
    constant_velocity,
    hold_last,
    select_clips,
)
from dlp_training.prediction_figures import Strip, gif_frames, png_bytes, still

logger = logging.getLogger(__name__)
FORMAT = 'dlp_ros.prediction_evaluation'
VERSION = 1
REPORT = 'report.json'
# 'model' is the served form (the bundle card's compositing, or --compositing); every form is
# also reported as model_<form> (dlp_ros.compositing).
IMAGE_SERIES = (
    'model',
    *(f'model_{mode}' for mode in COMPOSITING_MODES),
    'last_frame',
    'const_velocity',
    'const_flow',
    'last_frame_decoded',
)
POSITION_SERIES = ('model', 'last_frame', 'const_velocity')
BASELINES = ('last_frame', 'const_velocity', 'const_flow')  # what a prediction must beat
# metric -> (chart title, higher is better)
METRICS = {
    'psnr_db': ('PSNR (dB)', True),
    'ssim': ('SSIM', True),
    'position_error_px': ('matched position error (px)', False),
    'recall': ('recall (matched within the object radius)', True),
}
COMPARE_STEP = 10
ACTION_MODES = ('dataset', 'zero')


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add('--dlp', type=Path, help='train-dlp run directory (with --dynamics)')
    add('--dynamics', type=Path, help='train-dynamics run directory (with --dlp)')
    add('--bundle', type=Path, help='exported bundle directory instead of --dlp/--dynamics')
    add('--data', type=Path, required=True, help='dataset built by build-dataset')
    add('--context', type=int, required=True, metavar='C', help='observed frames per clip')
    add('--horizon', type=int, required=True, metavar='N', help='predicted frames per clip')
    add('--out', type=Path, required=True, help='report directory to write')
    add('--split', choices=SPLITS, default='test', help='evaluation split')
    add('--clips', type=int, default=200, help='at most this many clips (evenly spread)')
    add('--checkpoint', choices=['best', 'last'], default='best', help='which checkpoints')
    add('--gif-clips', type=int, default=3, help='clips drawn in prediction.gif / .png')
    add('--batch', type=int, default=64, help='frames per batched forward pass (torch)')
    add('--threads', type=int, default=0, help='torch / onnxruntime threads (0: default)')
    add('--providers', default='cpu', help="--bundle: 'auto', 'cpu', 'cuda' or 'tensorrt'")
    add('--compositing', choices=['card', *COMPOSITING_MODES], default='card',
        help="form of the 'model' frames: the bundle card's ('decoded' for runs) or the one "
             'named; every form is also reported as model_<form>')  # fmt: skip
    add('--actions', choices=ACTION_MODES, default='dataset',
        help="a model taking actions: the dataset's ('dataset', an error if it has none) or "
             "'zero' (as the node and dlp-replay without an action topic)")  # fmt: skip
    add('--overwrite', action='store_true', help='replace --out once the new report is complete')
    add('--no-progress', action='store_true', help='no progress bar')


@dataclass(frozen=True)
class PredictionOptions:
    """The evaluate-prediction command line, validated (the fields are its options)."""

    data: Path
    context: int = checked(
        ge=2, say='>= 2 (the constant-velocity baseline needs two observed frames)'
    )
    horizon: int = checked(ge=1)
    out: Path
    dlp: Path | None = None
    dynamics: Path | None = None
    bundle: Path | None = None
    split: str = checked('test', choices=SPLITS)
    clips: int = checked(200, ge=1)
    checkpoint: str = checked('best', choices=('best', 'last'))
    gif_clips: int = checked(3, ge=0)
    batch: int = checked(64, ge=1)
    threads: int = checked(0, ge=0)
    providers: str = 'cpu'
    compositing: str = checked('card', choices=('card', *COMPOSITING_MODES))
    actions: str = checked('dataset', choices=ACTION_MODES)
    overwrite: bool = False
    no_progress: bool = False


# ----------------------------------------------------------------------------- opening


@dataclass
class Setup:
    """Everything checked before a clip is evaluated."""

    predictor: Predictor
    data: Dataset
    selection: ClipSelection
    source: dict[str, Any]  # what was evaluated (runs and checkpoints, or the bundle)
    action_columns: list[int] | None
    dt: float
    compositing: str = 'decoded'  # the form of the 'model' series
    actions: str = 'none'  # 'dataset', 'zero' or 'none' (the model takes no actions)


def _check_args(args: PredictionOptions) -> None:
    if args.bundle is not None and (args.dlp is not None or args.dynamics is not None):
        raise PredictionError('give either --bundle or --dlp and --dynamics, not both')
    if args.bundle is None and (args.dlp is None or args.dynamics is None):
        raise PredictionError('need --dlp and --dynamics (or --bundle)')
    check_out(args.out, args.overwrite, REPORT, 'prediction report')


def _open_torch(args: PredictionOptions, data: Dataset) -> tuple[Predictor, dict, list | None]:
    """The torch predictor of --dlp/--dynamics, its description and the action columns."""
    for flag in ('dlp', 'dynamics'):
        if not getattr(args, flag).is_dir():
            raise PredictionError(f'--{flag} {getattr(args, flag)}: no such run directory')
    dlp_ckpt = run_checkpoint(args.dlp, args.checkpoint).resolve()
    dyn_ckpt = run_checkpoint(args.dynamics, args.checkpoint).resolve()
    dlp, _, dlp_info = load_dlp(args.dlp, args.checkpoint)
    dynamics, dyn_config, dyn_info = load_dynamics(args.dynamics, args.checkpoint)
    d, m = dlp.config, dynamics.config
    got, want = (m.K, m.F, m.Fb), (
        d.K, d.F, d.Fb)  # fmt: skip
    if got != want:
        raise PredictionError(
            f'dynamics run {args.dynamics} has (K, F, Fb) = {got} but the DLP of {args.dlp} '
            f"has {want}: the dynamics must be trained on this DLP's latents"
        )
    latents = dyn_info.get('latents') or {}
    if latents.get('image_size') not in (None, d.S):
        raise PredictionError(
            f'dynamics run {args.dynamics} was trained on {latents["image_size"]} px latents, '
            f'the DLP of {args.dlp} takes {d.S} px'
        )
    fps = latents.get('fps')
    if fps is not None and not math.isclose(float(fps), data.fps, rel_tol=1e-6):
        raise PredictionError(
            f'dynamics run {args.dynamics} was trained at {fps} fps but dataset {args.data} is '
            f'at {data.fps} fps: one predicted step would not be one frame'
        )
    trained_on = latents.get('dlp_run')
    if trained_on and Path(trained_on).resolve() != args.dlp.resolve():
        logger.warning('dynamics run %s was trained on the latents of %s, not of --dlp %s',
                       args.dynamics, trained_on, args.dlp)  # fmt: skip
    columns = None
    if m.action_dim:
        columns = list(dyn_config.train.action_columns or range(m.action_dim))
        if len(columns) != m.action_dim:
            raise PredictionError(f'dynamics run {args.dynamics}: action_columns {columns} do '
                                  f'not give action_dim {m.action_dim} entries')  # fmt: skip
    source = {
        'predictor': 'torch',
        'dlp': {'run': str(args.dlp.resolve()), 'checkpoint': str(dlp_ckpt),
                'step': int(dlp_info.get('step', 0))},
        'dynamics': {'run': str(args.dynamics.resolve()), 'checkpoint': str(dyn_ckpt),
                     'step': int(dyn_info.get('step', 0)), 'action_columns': columns,
                     'action_names': latents.get('action_names') or []},
        'bundle': None,
    }  # fmt: skip
    return TorchPredictor(dlp, dynamics, args.batch), source, columns


def _open_bundle(args: PredictionOptions, data: Dataset) -> tuple[Predictor, dict, list | None]:
    """The runtime predictor of --bundle, its description and the action columns."""
    if not args.bundle.is_dir():
        raise PredictionError(f'--bundle {args.bundle}: no such bundle directory')
    predictor = BundlePredictor(args.bundle, args.providers, args.threads)
    if not math.isclose(predictor.dt * data.fps, 1.0, rel_tol=1e-3):
        raise PredictionError(
            f'bundle {args.bundle} predicts steps of dt = {predictor.dt} s but dataset '
            f'{args.data} is at {data.fps} fps: one predicted step would not be one frame'
        )
    columns = None
    if predictor.action_dim:  # the card's action names picked from the dataset's by name
        names = list((data.manifest.get('action') or {}).get('names') or [])
        wanted = predictor.action_names
        if names and wanted:
            if any(n not in names for n in wanted):
                raise PredictionError(f'bundle {args.bundle} takes actions {wanted} but dataset '
                                      f'{args.data} has {names}')  # fmt: skip
            columns = [names.index(n) for n in wanted]
        else:
            columns = list(range(predictor.action_dim))
            logger.warning(
                'actions without names (bundle %s, dataset %s): the model takes the first %d '
                'action entries', wanted, names, predictor.action_dim,
            )  # fmt: skip
    source = {
        'predictor': 'onnx', 'dlp': None, 'dynamics': None,
        'bundle': {'path': str(args.bundle.resolve()), 'provider': predictor.provider,
                   'action_names': predictor.action_names, 'action_columns': columns},
    }  # fmt: skip
    return predictor, source, columns


def open_setup(args: PredictionOptions) -> Setup:
    """Check the arguments, models and dataset before anything is computed or written."""
    _check_args(args)
    data = Dataset.open(args.data)
    if args.bundle is not None:
        predictor, source, columns = _open_bundle(args, data)
        consumer = f'bundle {args.bundle}'
    else:
        predictor, source, columns = _open_torch(args, data)
        consumer = f'the model of {args.dlp}'
    data.require_frame_size(predictor.image_size, consumer)
    if args.context < predictor.history:
        raise PredictionError(
            f'--context {args.context} is shorter than the dynamics history H = '
            f'{predictor.history}: the model needs at least H observed frames'
        )
    actions = args.actions if predictor.action_dim else 'none'
    if actions == 'zero':
        columns = None
        logger.info('--actions zero: the model (action_dim %d) predicts with zero actions',
                    predictor.action_dim)  # fmt: skip
    selection = select_clips(data, args.split, args.context, args.horizon, predictor.history,
                             args.clips, columns)  # fmt: skip
    if actions == 'zero':
        selection = zero_actions(selection, args.context + args.horizon - 1, predictor.action_dim)
    mode = args.compositing
    if mode == 'card':
        mode = getattr(predictor, 'compositing', 'decoded')
    return Setup(predictor, data, selection, source, columns, 1.0 / data.fps, mode, actions)


def zero_actions(selection: ClipSelection, length: int, action_dim: int) -> ClipSelection:
    """The clips with zero actions, (length = C + N - 1, A) each."""
    zeros = np.zeros((length, action_dim), np.float32)
    clips = [replace(c, actions=zeros.copy()) for c in selection.clips]
    return replace(selection, clips=clips)


# ----------------------------------------------------------------------------- evaluation


@dataclass
class Accumulator:
    """Per-step metrics of every series summed over the clips."""

    horizon: int
    images: dict[str, list[np.ndarray]] = field(default_factory=dict)  # 'series.metric' -> (N,)s
    positions: dict[str, list[metrics.LocalisationAccumulator]] = field(default_factory=dict)

    def add_images(self, series: str, pred: np.ndarray, truth: np.ndarray) -> None:
        """pred, truth: (N, S, S, 3) uint8."""
        x = torch.from_numpy(np.asarray(pred)).permute(0, 3, 1, 2).double().div(255.0)
        y = torch.from_numpy(np.asarray(truth)).permute(0, 3, 1, 2).double().div(255.0)
        self.images.setdefault(f'{series}.psnr_db', []).append(metrics.psnr(x, y).numpy())
        self.images.setdefault(f'{series}.ssim', []).append(metrics.ssim(x, y).numpy())

    def add_positions(self, series: str, xy: np.ndarray, presence: np.ndarray, truth: Any,
                      rows: np.ndarray) -> None:  # fmt: skip
        """xy (N, K, 2) px, presence (N, K); ``truth`` the episode's GroundTruth, ``rows`` (N,)
        its frames of the predicted steps."""
        steps = self.positions.setdefault(
            series, [metrics.LocalisationAccumulator() for _ in range(self.horizon)]
        )
        for n, acc in enumerate(steps):
            r = rows[n : n + 1]
            acc.add(xy[n : n + 1], presence[n : n + 1], truth.xy[r], truth.radius[r],
                    truth.visible[r])  # fmt: skip

    def per_step(self) -> dict[str, dict[str, list[float | None]]]:
        """metric -> series -> N values (None where undefined)."""
        out: dict[str, dict[str, list[float | None]]] = {}
        for key, values in self.images.items():
            series, metric = key.split('.')
            out.setdefault(metric, {})[series] = np.mean(values, axis=0).tolist()
        keys = {'position_error_px': 'mean_error_px', 'recall': 'recall',
                'particles_on': 'mean_particles_on'}  # fmt: skip
        for series, steps in self.positions.items():
            summaries = [acc.summary() for acc in steps]
            for metric, key in keys.items():
                out.setdefault(metric, {})[series] = [s[key] for s in summaries]
        return out


def evaluate_clip(
    predictor: Predictor,
    frames: np.ndarray,
    clip: PredictionClip,
    context: int,
    horizon: int,
    compositing: str = 'decoded',
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]:
    """One clip: the predicted frames of every image series (N, S, S, 3) uint8 and the particles
    of every position series (mu (N, K, 2), transparency (N, K, 1)); 'model' is the
    ``compositing`` form."""
    observed = predictor.observe(frames[:context])  # the model never sees the future frames
    predicted = predictor.predict(observed, horizon, clip.actions)
    velocity = constant_velocity(observed, horizon)
    last = hold_last(observed, horizon)
    decoded = predictor.render(concat(predicted, velocity, hold_last(observed, 1)))
    images = {
        'last_frame': np.repeat(frames[context - 1 : context], horizon, axis=0),
        'const_velocity': decoded[horizon : 2 * horizon],
        'const_flow': constant_flow(frames[context - 2], frames[context - 1], horizon),
        'last_frame_decoded': np.repeat(decoded[2 * horizon :], horizon, axis=0),
    }
    observed_x = from_uint8(frames[context - 1])  # (3, S, S)
    decoded_x = from_uint8(decoded)  # (2N + 1, 3, S, S)
    motion = Motion.from_particles(observed['mu'][-1], predicted['mu'], observed['scale'][-1],
                                   observed['transparency'][-1], frames.shape[1])  # fmt: skip
    for mode in COMPOSITING_MODES:
        images[f'model_{mode}'] = to_uint8(
            compose(mode, observed_x, decoded_x[:horizon], decoded_x[2 * horizon], motion)
        )
    images['model'] = images[f'model_{compositing}']
    particles = {'model': predicted, 'last_frame': last, 'const_velocity': velocity}
    return images, particles


def evaluate(setup: Setup, context: int, horizon: int, gif_clips: int, bar: tqdm
             ) -> tuple[Accumulator, list[Strip], bool]:  # fmt: skip
    """All clips: the accumulated metrics, the drawn strips and whether ground truth was used."""
    clips, size = setup.selection.clips, setup.predictor.image_size
    drawn = set(np.unique(np.linspace(0, len(clips) - 1, num=min(gif_clips, len(clips))).round()
                          .astype(int)).tolist()) if gif_clips else set()  # fmt: skip
    acc, strips, with_truth = Accumulator(horizon), [], False
    for i, clip in enumerate(clips):
        frames = np.array(setup.data.frames(clip.episode)[clip.start : clip.start + context
                                                          + horizon])  # fmt: skip
        images, particles = evaluate_clip(setup.predictor, frames, clip, context, horizon,
                                          setup.compositing)  # fmt: skip
        truth = frames[context:]
        for series in IMAGE_SERIES:
            acc.add_images(series, images[series], truth)
        gt = setup.data.labels(clip.episode).ground_truth
        if gt is not None:
            with_truth = True
            rows = clip.start + context + np.arange(horizon)  # (N,) episode frames
            for series in POSITION_SERIES:
                p = particles[series]
                acc.add_positions(series, (p['mu'] + 1) / 2 * size, p['transparency'][..., 0],
                                  gt, rows)  # fmt: skip
        if i in drawn:
            strips.append(Strip(clip, frames, images['model'], images['const_velocity'],
                                images['last_frame_decoded'][0]))  # fmt: skip
        bar.update()
    return acc, strips, with_truth


# ----------------------------------------------------------------------------- report


def _mean(values: list[float | None]) -> float | None:
    good = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(good)) if good else None


def _comparison(per_step: dict, mean: dict, horizon: int) -> dict[str, Any]:
    """metric -> baseline -> {'step_10': ..., 'mean': ...} of the model against it."""

    def entry(model: float | None, base: float | None, higher: bool) -> dict[str, Any] | None:
        if model is None or base is None:
            return None
        better = model > base if higher else model < base
        return {'model': model, 'baseline': base, 'difference': model - base,
                'model_better': bool(better)}  # fmt: skip

    out: dict[str, Any] = {}
    for metric, series in per_step.items():
        if metric not in METRICS:
            continue
        higher = METRICS[metric][1]
        out[metric] = {
            name: {
                f'step_{COMPARE_STEP}': entry(series['model'][COMPARE_STEP - 1],
                                              values[COMPARE_STEP - 1], higher)
                if horizon >= COMPARE_STEP else None,
                'mean': entry(mean[metric]['model'], mean[metric][name], higher),
            }
            for name, values in series.items() if not name.startswith('model')
        }  # fmt: skip
    return out


def best_baselines(per_step: dict, mean: dict, horizon: int) -> dict[str, Any]:
    """metric -> the best of :data:`BASELINES` by the mean over the steps: ``series``, its
    ``mean`` and step-10 value, ``model_minus_best`` (mean) and ``per_step`` differences of the
    model from it, ``model_beats_every_step``."""
    out: dict[str, Any] = {}
    for metric, series in per_step.items():
        if metric not in METRICS or 'model' not in series:
            continue
        higher = METRICS[metric][1]
        means = {b: mean[metric][b] for b in BASELINES if mean[metric].get(b) is not None}
        if not means or mean[metric]['model'] is None:
            out[metric] = None
            continue
        best = (max if higher else min)(means, key=means.__getitem__)
        diff = [None if m is None or b is None else m - b
                for m, b in zip(series['model'], series[best], strict=True)]  # fmt: skip
        sign = 1.0 if higher else -1.0
        out[metric] = {
            'series': best, 'mean': means[best],
            f'step_{COMPARE_STEP}': series[best][COMPARE_STEP - 1] if horizon >= COMPARE_STEP
            else None,
            'model_minus_best': mean[metric]['model'] - means[best], 'per_step': diff,
            'model_beats_every_step': all(d is not None and sign * d > 0 for d in diff),
        }  # fmt: skip
    return out


def build_report(args: PredictionOptions, setup: Setup, acc: Accumulator, with_truth: bool
                 ) -> dict[str, Any]:  # fmt: skip
    c, n, p = args.context, args.horizon, setup.predictor
    per_step = acc.per_step()
    mean = {m: {s: _mean(v) for s, v in series.items()} for m, series in per_step.items()}
    at = None
    if n >= COMPARE_STEP:
        at = {m: {s: v[COMPARE_STEP - 1] for s, v in ser.items()} for m, ser in per_step.items()}
    skipped = {}
    if not with_truth:
        skipped['positions'] = f'the {args.split} split of {args.data} has no ground truth'
    if n < COMPARE_STEP:
        skipped[f'step_{COMPARE_STEP}'] = f'--horizon {n} < {COMPARE_STEP}'
    sel = setup.selection
    return plain({
        'format': FORMAT, 'version': VERSION, 'code_version': dlp_ros.__version__,
        'created': time.strftime('%Y-%m-%dT%H:%M:%S%z'), **setup.source,
        'data': str(args.data.resolve()), 'split': args.split, 'image_size': p.image_size,
        'n_particles': p.n_particles, 'history': p.history, 'action_dim': p.action_dim,
        'context': c, 'horizon': n, 'fps': setup.data.fps, 'dt': setup.dt,
        'clips': len(sel.clips), 'windows': sel.candidates, 'episodes': sel.episodes,
        'left_out': sel.left_out,
        'clip_list': [{'episode': x.episode, 'start': x.start} for x in sel.clips],
        'series': {'image': list(IMAGE_SERIES), 'position': list(POSITION_SERIES)},
        'compositing': setup.compositing, 'actions': setup.actions,
        'per_step': per_step, 'mean': mean,
        f'step_{COMPARE_STEP}': at,
        'comparison': _comparison(per_step, mean, n),
        'best_baseline': best_baselines(per_step, mean, n),
        'flow_baseline': {'method': 'farneback', **FlowParams().as_dict()},
        'skipped': skipped,
    }, finite=True)  # fmt: skip


def _fmt(value: float | None, spec: str) -> str:
    return 'n/a' if value is None else format(value, spec)


def headline(report: dict[str, Any]) -> list[str]:
    """A few lines of the main numbers (model vs baselines, mean and step 10)."""
    src = report['bundle']['path'] if report['bundle'] else report['dynamics']['run']
    lines = [f'{Path(src).name} ({report["predictor"]}) on {report["split"]}: {report["clips"]} '
             f'clips, context {report["context"]}, horizon {report["horizon"]}, actions '
             f'{report["actions"]}']  # fmt: skip
    step = report[f'step_{COMPARE_STEP}']
    for metric, spec in (('psnr_db', '.2f'), ('ssim', '.3f'), ('position_error_px', '.2f'),
                         ('recall', '.2f')):  # fmt: skip
        if metric not in report['mean']:
            continue
        names = [s for s in ('model', *BASELINES) if s in report['mean'][metric]]
        parts = []
        for name in names:
            text = _fmt(report['mean'][metric].get(name), spec)
            if step is not None:
                text += f' ({_fmt(step[metric].get(name), spec)} @{COMPARE_STEP})'
            parts.append(f'{name} {text}')
        lines.append(f'{metric}: ' + ', '.join(parts))
    forms = report['mean'].get('psnr_db', {})
    by_form = ', '.join(f'{m} {_fmt(forms.get(f"model_{m}"), ".2f")}' for m in COMPOSITING_MODES)
    lines.append(f'psnr_db by compositing form (model = {report.get("compositing")}): {by_form}')
    best = (report.get('best_baseline') or {}).get('psnr_db')
    if best is not None:
        lines.append(f'psnr_db best baseline {best["series"]}: model - best = '
                     f'{best["model_minus_best"]:+.2f} dB mean, model above it at every step: '
                     f'{"yes" if best["model_beats_every_step"] else "no"}')  # fmt: skip
    return lines


# ----------------------------------------------------------------------------- figures


def charts(report: dict[str, Any]) -> dict[str, np.ndarray]:
    """File name -> chart (RGB) of each metric against the prediction step: the served model
    against the baselines, and for the image metrics the compositing forms (``<metric>_forms``)."""
    steps = list(range(1, report['horizon'] + 1))
    name = Path(report['bundle']['path'] if report['bundle'] else report['dynamics']['run']).name
    out = {}
    for metric, (title, _) in METRICS.items():
        series = report['per_step'].get(metric)
        if series is None:
            continue
        main = {k: v for k, v in series.items() if not k.startswith('model_')}
        out[f'{metric}.png'] = line_plot(
            steps, main, f'{title} vs prediction step ({name}, {report["clips"]} clips)',
            'prediction step', title,
        )  # fmt: skip
        forms = {k: v for k, v in series.items() if k.startswith('model_')}
        if forms:
            forms |= {k: series[k] for k in ('last_frame',) if k in series}
            out[f'{metric}_forms.png'] = line_plot(
                steps, forms, f'{title}: compositing forms ({name}, {report["clips"]} clips)',
                'prediction step', title,
            )  # fmt: skip
    return out


# ----------------------------------------------------------------------------- command


def write_outputs(tmp: Path, report: dict[str, Any], strips: list[Strip], context: int,
                  horizon: int) -> list[str]:  # fmt: skip
    """Write the report, charts and strips into ``tmp``; the names written."""
    written = []
    for name, chart in charts(report).items():
        (tmp / name).write_bytes(png_bytes(chart))
        written.append(name)
    if strips:
        (tmp / 'prediction.png').write_bytes(png_bytes(still(strips, context, horizon)))
        written.append('prediction.png')
        writer = gif_writer()
        if writer is None:
            report['skipped']['gif'] = 'no GIF writer installed (OpenCV >= 4.11, Pillow, imageio)'
            logger.warning('no GIF writer installed: prediction.gif not written')
        else:
            (tmp / 'prediction.gif').write_bytes(encode_gif(gif_frames(strips, context, horizon)))
            written.append('prediction.gif')
    (tmp / REPORT).write_text(json.dumps(report, indent=2) + '\n')
    return [REPORT, *written]


def run(args: argparse.Namespace) -> int:
    return evaluate_prediction(from_args(PredictionOptions, args))


def evaluate_prediction(args: PredictionOptions) -> int:
    """:func:`run` with its options."""
    if args.threads:  # the torch models, and the metrics on either path
        torch.set_num_threads(args.threads)
    setup = open_setup(args)
    c, n = args.context, args.horizon
    out: Path = args.out
    bar = tqdm(total=len(setup.selection.clips), unit='clip', desc=f'predict {args.split}',
               file=sys.stderr, disable=args.no_progress or None)  # fmt: skip
    try:
        acc, strips, with_truth = evaluate(setup, c, n, args.gif_clips, bar)
    finally:
        bar.close()
    report = build_report(args, setup, acc, with_truth)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f'.{out.name}.{os.getpid()}-{time.time_ns()}.partial'
    try:
        tmp.mkdir()
        written = write_outputs(tmp, report, strips, c, n)
        publish(tmp, out, args.overwrite, REPORT, 'prediction report')
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for line in headline(report):
        print(line)  # noqa: T201
    print(f'report -> {out / REPORT} ({", ".join(written[1:])})')  # noqa: T201
    return 0
