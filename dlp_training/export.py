"""``export``: a trained DLP run + a trained dynamics run -> a model bundle for the runtime.

```
python -m dlp_training export --dlp RUN --dynamics RUN --out BUNDLE_DIR [--checkpoint best|last]
    [--opset 17] [--val-frames 200] [--overwrite]
python -m dlp_training export --from-bundle BUNDLE --dynamics RUN --out BUNDLE_DIR
```

The bundle (``dlp_ros.model_card`` describes it) holds four ONNX graphs, exported with the
legacy TorchScript exporter (``dynamo=False``) and a dynamic batch axis named ``B``:
``encoder.onnx`` (:class:`~dlp_training.models.tracking.DlpTrackingEncoder`), ``background.onnx``
(:class:`~dlp_training.models.tracking.DlpBackgroundEncoder`), ``dynamics.onnx``
(:class:`~dlp_training.models.dynamics.DynamicsStep`), ``decoder.onnx``
(:class:`~dlp_training.models.dlp.DlpDecoder`), and ``model_card.yaml``. Each graph passes
``onnx.checker`` and is compared with the torch module on sample inputs (the largest absolute
difference is recorded in ``validation.export_parity``). ``validation.recon_mse`` is measured
with the bundle itself (``dlp_ros.runtime``, CPU) on consecutive frames of the DLP run's
validation split, when its data set (``run.yaml`` ``data``) is on this machine, with the mean
number of particles on per frame (``validation.particles_on_mean``). The command prints which
checkpoint step of each run it exports with that step's validation figures, and a WARNING when a
run's best checkpoint is its first validation or when most particles are off.

``--from-bundle`` keeps an existing bundle's encoder, background and decoder graphs (and their
card entries: image, particles, tracking, the DLP's training and validation) and exports only a
new dynamics graph beside them (:mod:`dlp_training.bundle_dynamics`): a dynamics trained on the
latents of ``encode-dataset --bundle`` replaces a shipped bundle's without its DLP run.

Everything is written to a hidden temporary sibling of ``--out`` and renamed into place at the
end (``dlp_ros.offline.output_dir``): a failed export leaves nothing, an existing bundle is
replaced only with ``--overwrite``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

import dlp_ros
from dlp_ros.compositing import MODES as COMPOSITING_MODES
from dlp_ros.config_schema import checked, from_args
from dlp_ros.errors import DlpError
from dlp_ros.input_view import DEFAULT_RESIZE
from dlp_ros.model_card import (
    BACKGROUND,
    BATCH,
    CARD_FILE,
    DECODER,
    DYNAMICS,
    ENCODER,
    SCHEMA_VERSION,
    DynamicsSpec,
    ImageSpec,
    ModelCard,
    ParticleSpec,
    PredictionSpec,
    TrackingSpec,
    ValidationSpec,
    expected_graphs,
    write_model_card,
)
from dlp_ros.offline.output_dir import check_out, publish
from dlp_ros.tracking import ON_THRESHOLD
from dlp_training.checkpoint import run_checkpoint
from dlp_training.dlp_config import load_dlp
from dlp_training.dynamics_config import load_dynamics
from dlp_training.models.dlp import Dlp, DlpConfig, DlpDecoder
from dlp_training.models.dynamics import DynamicsConfig, DynamicsStep, ParticleDynamics
from dlp_training.models.tracking import METHOD, DlpBackgroundEncoder, DlpTrackingEncoder

logger = logging.getLogger(__name__)
KIND = 'model bundle'
# Predicted frames: the observed frame, the decoder's pixels only where the prediction changes
# the decoded frame (docs/results.md, issue 12: the best form within the speed targets on the
# validation seeds of the tabletop scene and of real footage).
DEFAULT_COMPOSITING = 'gated'
PARITY_LIMIT = 1e-3  # largest |onnxruntime - torch| accepted at export time


class ExportError(DlpError):
    """The runs cannot be exported together, or an exported graph is wrong."""


@dataclass
class BundleInfo:
    """What the card says besides the graphs: data, metrics, time step, action names."""

    dt: float = 0.1
    action_names: tuple[str, ...] = ()
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    resize: str = DEFAULT_RESIZE  # the data set's (build-dataset --resize): image.resize


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--dlp', type=Path, help='train-dlp run directory')
    source.add_argument(
        '--from-bundle',
        type=Path,
        help='or a bundle whose DLP graphs to keep (only the dynamics is new)',
    )
    add('--dynamics', type=Path, required=True, help='train-dynamics run directory')
    add('--out', type=Path, required=True, help='bundle directory to write')
    add('--checkpoint', choices=['best', 'last'], default='best',
        help='checkpoint of both runs (best falls back to last)')  # fmt: skip
    add('--opset', type=int, default=17, help='ONNX opset (legacy exporter)')
    add('--val-frames', type=int, default=200,
        help='validation frames for validation.recon_mse (0: skip)')  # fmt: skip
    add(
        '--val-data',
        type=Path,
        help="dataset for validation.recon_mse (default: the DLP run's own, when on this machine)",
    )
    add(
        '--compositing',
        choices=COMPOSITING_MODES,
        help='how the runtime draws predicted frames (the model card records it; default '
        f"{DEFAULT_COMPOSITING}, or the --from-bundle card's)",
    )
    add('--overwrite', action='store_true', help='replace an existing bundle at --out')


@dataclass(frozen=True)
class ExportOptions:
    """The export command line, validated (the fields are its options)."""

    dlp: Path | None
    dynamics: Path
    out: Path
    from_bundle: Path | None = None
    checkpoint: str = checked('best', choices=('best', 'last'))
    opset: int = checked(17, ge=1)
    val_frames: int = checked(200, ge=0)
    val_data: Path | None = None
    compositing: str | None = checked(None, choices=(None, *COMPOSITING_MODES))
    overwrite: bool = False


def run(args: argparse.Namespace) -> int:
    return export(from_args(ExportOptions, args))


def export(opts: ExportOptions) -> int:
    """:func:`run` with its options."""
    check_out(opts.out, opts.overwrite, CARD_FILE, KIND)  # fail before any work
    if opts.from_bundle is not None:
        from dlp_training.bundle_dynamics import export_from_bundle  # noqa: PLC0415

        return export_from_bundle(opts)
    dlp, dlp_cfg, dlp_state = load_dlp(opts.dlp, opts.checkpoint)
    dyn, dyn_cfg, dyn_state = load_dynamics(opts.dynamics, opts.checkpoint)
    info = describe_runs(opts, dlp_cfg, dlp_state, dyn_cfg, dyn_state)
    for line in checkpoint_report(opts.dlp, 'DLP', dlp_state, VAL_FIGURES['DLP']):
        print(line)  # noqa: T201
    for line in checkpoint_report(opts.dynamics, 'dynamics', dyn_state, VAL_FIGURES['dynamics']):
        print(line)  # noqa: T201
    frames, note = validation_frames(opts.dlp, dlp.config.S, opts.val_frames, opts.val_data)
    card = export_bundle(dlp, dyn, opts.out, info, opset=opts.opset, overwrite=opts.overwrite,
                         val_frames=frames, val_note=note,
                         compositing=opts.compositing or DEFAULT_COMPOSITING)  # fmt: skip
    print_summary(opts.out, card)
    return 0


def print_summary(out: Path, card: ModelCard) -> None:
    """The export's last lines: sizes, recon_mse, parity, and the particles warning if any."""
    v = card.validation
    recon = 'omitted' if v.recon_mse is None else f'{v.recon_mse:.3g}'
    parity = v.details.get('export_parity')
    line = (f'export: {out} S={card.image.size} K={card.particles.K} '
            f'H={card.dynamics.history} A={card.dynamics.action_dim}, recon_mse {recon}, '
            f'max |ort - torch| {parity}')  # fmt: skip
    print(line)  # noqa: T201
    for warning in particles_warning(card):
        print(warning)  # noqa: T201


def particles_warning(card: ModelCard) -> list[str]:
    """A WARNING line (also logged) when most particles are off on the validation frames."""
    on, k = card.validation.details.get('particles_on_mean'), card.particles.K
    if on is None or on >= k / 2:
        return []
    warning = (
        f'WARNING: most particles are off on the validation frames: {on:.2f} of K = {k} on '
        f'(transparency > {card.tracking.on_threshold:g}) per frame on average; the DLP may have '
        'left the objects to the background (train longer, or see docs/your-data.md)'
    )
    logger.warning(warning)
    return [warning]


# ----------------------------------------------------------------------------- the bundle


def export_bundle(
    dlp: Dlp,
    dynamics: ParticleDynamics,
    out: Path,
    info: BundleInfo | None = None,
    opset: int = 17,
    overwrite: bool = False,
    val_frames: list[np.ndarray] | None = None,
    val_note: dict[str, Any] | None = None,
    compositing: str = DEFAULT_COMPOSITING,
) -> ModelCard:
    """Export the four graphs and the card into ``out``, atomically.

    Args:
        dlp, dynamics: trained models (their configs must agree on K, F, Fb).
        out: bundle directory; must not exist unless ``overwrite`` (then it must be a bundle).
        info: dt, action names, training summary and metrics for the card.
        val_frames: episodes of (T, S, S, 3) uint8 consecutive frames for
            ``validation.recon_mse`` (None: omitted, ``val_note`` says why).
        val_note: extra entries of the card's ``validation`` section (data set, split).
        compositing: how the runtime draws predicted frames (``dlp_ros.compositing.MODES``).

    Returns:
        The written card (``directory`` = ``out``).
    """
    info = info or BundleInfo()
    out = Path(out)
    check_out(out, overwrite, CARD_FILE, KIND)
    c, d = dlp.config, dynamics.config
    sizes = ((c.K, d.K, 'K'), (c.F, d.F, 'F'),
             (c.Fb, d.Fb, 'Fb'))  # fmt: skip
    for a, b, name in sizes:
        if a != b:
            raise ExportError(f'the DLP has {name} = {a} but the dynamics model {name} = {b}: '
                              'they were not trained together')  # fmt: skip
    names = action_names(info.action_names, d.action_dim)
    with staged_bundle(out, overwrite) as tmp:
        parity = _export_graphs(dlp, dynamics, tmp, opset)
        dims = (c.K, c.F, c.Fb, d.history, d.action_dim)
        graphs = expected_graphs(c.S, *dims)
        card = ModelCard(
            image=ImageSpec(c.S, resize=info.resize),
            particles=ParticleSpec(c.K, c.F, c.Fb),
            dynamics=DynamicsSpec(d.history, d.action_dim, names, float(info.dt)),
            tracking=TrackingSpec(METHOD, ON_THRESHOLD, float(c.anchor_scale)),
            files=graphs,
            opset=opset,
            training=info.training,
            metrics=info.metrics,
            validation=ValidationSpec(None, {**(val_note or {}), 'export_parity': parity}),
            prediction=PredictionSpec(compositing),
            code_version=code_version(),
            created=time.strftime('%Y-%m-%dT%H:%M:%S%z'),
            schema_version=SCHEMA_VERSION,
        )
        write_model_card(card, tmp)
        if val_frames:
            card = _with_recon_mse(card, tmp, val_frames, val_note or {}, parity)
            write_model_card(card, tmp)
    logger.info('exported %s', out)
    from dlp_ros.model_card import load_model_card  # noqa: PLC0415

    return load_model_card(out, check_graphs=False)


def action_names(names: tuple[str, ...] | list[str], action_dim: int) -> tuple[str, ...]:
    """The card's action names: ``names`` when there is one per action entry, else none."""
    names = tuple(names)
    if names and len(names) != action_dim:
        logger.warning('%d action names %s for action_dim %d: dropped', len(names), names,
                       action_dim)  # fmt: skip
        return ()
    return names


@contextlib.contextmanager
def staged_bundle(out: Path, overwrite: bool) -> Iterator[Path]:
    """A hidden temporary sibling of ``out`` to write a bundle into: when the block ends, the
    bundle is loaded by the runtime (CPU) to validate it and renamed into place; on any error
    (or an invalid bundle) it is removed and ``out`` is untouched."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{out.name}.', suffix='.tmp', dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; a bundle is as readable as any dir
    try:
        yield tmp
        from dlp_ros.runtime import DlpRuntime  # noqa: PLC0415 - validates the finished bundle

        DlpRuntime.load(tmp, providers='cpu', threads=1)
        publish(tmp, out, overwrite, CARD_FILE, KIND)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _views(dlp: Dlp, dynamics: ParticleDynamics) -> dict[str, nn.Module]:
    return {
        ENCODER: DlpTrackingEncoder(dlp).eval(),
        BACKGROUND: DlpBackgroundEncoder(dlp).eval(),
        DYNAMICS: DynamicsStep(dynamics).eval(),
        DECODER: DlpDecoder(dlp).eval(),
    }


def sample_inputs(dlp: Dlp, dynamics: ParticleDynamics, batch: int = 2, seed: int = 0) -> dict:
    """Plausible inputs of every graph (name -> tuple of tensors), from the models themselves:
    random images through the encoder give the particles the other graphs read."""
    c, d = dlp.config, dynamics.config
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, c.S, c.S, generator=g)
    anchors = torch.rand(batch, c.K, 2, generator=g) * 1.6 - 0.8
    with torch.inference_mode():
        enc = DlpTrackingEncoder(dlp)(image, anchors)
    p = [x[:, : c.K].clone() for x in enc]  # (B, K, ...) each
    bg = torch.randn(batch, c.Fb, generator=g)
    steps = d.history
    jitter = [0.02 * torch.randn(batch, steps, *x.shape[1:], generator=g) for x in p]
    hist = [x[:, None] + j for x, j in zip(p, jitter, strict=True)]  # (B, H, K, ...)
    hist[4] = hist[4].clamp(0, 1)  # transparency
    hist.append(bg[:, None] + 0.02 * torch.randn(batch, steps, c.Fb, generator=g))
    dyn = tuple(hist) + ((torch.randn(batch, steps, d.action_dim, generator=g),)
                         if d.action_dim else ())  # fmt: skip
    named = dict(zip(('mu', 'logvar', 'scale', 'depth', 'transparency', 'features'), p,
                     strict=True))  # fmt: skip
    dec = tuple(named[n] for n in DlpDecoder.INPUT_NAMES[:-1]) + (bg,)
    return {
        ENCODER: (image, anchors),
        BACKGROUND: (image, named['mu'], named['transparency']),
        DYNAMICS: dyn,
        DECODER: dec,
    }


def _export_graphs(dlp: Dlp, dynamics: ParticleDynamics, folder: Path, opset: int) -> dict:
    """Write the four graphs into ``folder``; check them; returns max |ort - torch| per graph."""
    inputs = sample_inputs(dlp, dynamics)
    check_inputs = sample_inputs(dlp, dynamics, batch=3, seed=1)  # another batch size
    return export_graphs(_views(dlp, dynamics), inputs, check_inputs, folder, opset)


def export_graphs(
    views: dict[str, nn.Module], inputs: dict, check_inputs: dict, folder: Path, opset: int
) -> dict[str, float]:
    """Export each module of ``views`` (graph name -> module with INPUT_NAMES and OUTPUT_NAMES)
    on ``inputs`` into ``folder``, check it with onnx.checker and against torch on
    ``check_inputs`` (another batch size); returns max |ort - torch| per graph."""
    import onnx  # noqa: PLC0415 - export-time dependency
    import onnxruntime as ort  # noqa: PLC0415

    parity = {}
    for name, module in views.items():
        path = folder / name
        in_names, out_names = list(module.INPUT_NAMES), list(module.OUTPUT_NAMES)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter('ignore')
            torch.onnx.export(
                module,
                inputs[name],
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=in_names,
                output_names=out_names,
                dynamic_axes={n: {0: BATCH} for n in in_names + out_names},
                do_constant_folding=True,
            )
        try:
            onnx.checker.check_model(str(path), full_check=True)
        except onnx.checker.ValidationError as exc:
            raise ExportError(f'{name} fails onnx.checker: {exc}') from exc
        session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
        args = check_inputs[name]
        got = session.run(None, {n: a.numpy() for n, a in zip(in_names, args, strict=True)})
        with torch.inference_mode():
            want = module(*args)
        want = want if isinstance(want, tuple) else (want,)
        err = max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want, strict=True))
        if not err <= PARITY_LIMIT:
            raise ExportError(f'{name}: onnxruntime differs from torch by {err:.3g} '
                              f'(> {PARITY_LIMIT})')  # fmt: skip
        parity[name] = float(f'{err:.3g}')
        logger.info('%s: exported, onnx.checker ok, max |ort - torch| = %.2g', name, err)
    return parity


def _with_recon_mse(
    card: ModelCard, folder: Path, episodes: list[np.ndarray], note: dict, parity: dict
) -> ModelCard:
    """``validation.recon_mse`` measured with the bundle in ``folder`` (tracked, CPU)."""
    from dlp_ros.runtime import DlpRuntime  # noqa: PLC0415

    rt = DlpRuntime.load(folder, providers='cpu', threads=1)
    threshold = rt.card.tracking.on_threshold
    errors, on = [], []
    for frames in episodes:
        tracker = rt.tracker()
        for rgb in frames:
            x = rt.preprocess(np.asarray(rgb))
            frame = tracker.update(x)
            errors.append(rt.recon_mse(x, frame))
            on.append(int((frame.transparency[:, 0] > threshold).sum()))
    e = np.array(errors)
    details = {**note, 'frames': len(e), 'episodes': len(episodes),
               'recon_mse_p95': float(f'{np.percentile(e, 95):.4g}'),
               'recon_mse_max': float(f'{e.max():.4g}'),
               'particles_on_mean': float(f'{np.mean(on):.4g}'),
               'export_parity': parity}  # fmt: skip
    logger.info('validation recon_mse %.4g (p95 %.4g) on %d frames', e.mean(),
                details['recon_mse_p95'], len(e))  # fmt: skip
    validation = ValidationSpec(float(f'{e.mean():.4g}'), details)
    return dataclasses.replace(card, validation=validation)


# ----------------------------------------------------------------------------- run metadata


def validation_frames(
    dlp_run: Path, image_size: int, n: int, data: Path | None = None
) -> tuple[list[np.ndarray] | None, dict[str, Any]]:
    """Up to ``n`` consecutive frames of the val split (whole episodes first) of ``data``, or
    of the data set named in the DLP run's run.yaml; (None, why) when it is not available."""
    if n == 0:
        return None, {'note': 'recon_mse omitted: --val-frames 0'}
    if data is not None:
        if not Path(data).is_dir():
            raise ExportError(f'--val-data {data}: no such dataset directory')
        return _frames_of(Path(data), image_size, n)
    try:
        saved = yaml.safe_load((Path(dlp_run) / 'run.yaml').read_text()) or {}
    except (OSError, yaml.YAMLError):
        saved = {}
    data = saved.get('data')
    if not data or not Path(data).is_dir():
        why = f'recon_mse omitted: the DLP run names no data set on this machine ({data!r})'
        logger.warning(why)
        return None, {'note': why}
    return _frames_of(Path(data), image_size, n)


def _frames_of(data: Path, image_size: int, n: int) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Up to ``n`` consecutive frames of ``data``'s val split (else test, else train)."""
    from dlp_training.data.dataset import Dataset  # noqa: PLC0415

    dataset = Dataset.open(data)
    dataset.require_frame_size(image_size, 'the exported DLP')
    split = 'val' if dataset.episodes('val') else 'test' if dataset.episodes('test') else 'train'
    episodes, left = [], n
    for e in dataset.episodes(split):
        if left <= 0:
            break
        episodes.append(np.array(dataset.frames(e.name)[:left]))
        left -= len(episodes[-1])
    return episodes, {'data': str(data), 'split': split}


def describe_runs(
    opts: ExportOptions,
    dlp_cfg: Any,
    dlp_state: dict[str, Any],
    dyn_cfg: Any,
    dyn_state: dict[str, Any],
) -> BundleInfo:
    """Training summary, metrics, dt and action names from the two runs."""
    dlp_run = _run_yaml(opts.dlp)
    dyn_training, dyn_metrics, latents = describe_dynamics(opts, dyn_cfg, dyn_state)
    fps = float(latents.get('fps') or 0.0)
    data = dlp_run.get('data')
    dataset = _dataset_summary(data)
    if not fps:
        fps = float(dataset.get('fps') or 10.0)
        logger.warning('no fps in the dynamics run: dt = 1 / %g', fps)
    encoder_run = encoder_source(opts.dlp, dataclasses.asdict(dlp_cfg.train))
    if latents.get('dlp_run') and Path(latents['dlp_run']).resolve() != encoder_run:
        logger.warning('the dynamics run was trained on latents of %s, not of %s',
                       latents['dlp_run'], opts.dlp)  # fmt: skip
    training = {
        'dlp': {
            'run': str(opts.dlp),
            'checkpoint': str(run_checkpoint(opts.dlp, opts.checkpoint)),
            'step': int(dlp_state.get('step', 0)),
            'data': str(data) if data else None,
            'dataset': dataset,
            'model': dlp_cfg.model.to_dict(),
            'trainable': dlp_cfg.train.trainable,
            'init_from': dlp_cfg.train.init_from,
        },
        'dynamics': dyn_training,
    }
    metrics = {
        'dlp': {**(dlp_state.get('metrics') or {}),
                **({'best_psnr': dlp_state['best_psnr']} if 'best_psnr' in dlp_state else {})},
        'dynamics': dyn_metrics,
    }  # fmt: skip
    return BundleInfo(
        dt=1.0 / fps,
        action_names=tuple(latents.get('action_names') or ()),
        training=training,
        metrics=metrics,
        resize=str(dataset.get('resize') or DEFAULT_RESIZE),  # a data set without it: squash
    )


def describe_dynamics(
    opts: ExportOptions, dyn_cfg: Any, dyn_state: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The card's ``training.dynamics`` and ``metrics.dynamics`` of the dynamics run, and the
    latents it was trained on (path, fps, action names, source)."""
    dyn_run = _run_yaml(opts.dynamics)
    latents = dict(dyn_state.get('latents') or dyn_run.get('latents') or {})
    training = {
        'run': str(opts.dynamics),
        'checkpoint': str(run_checkpoint(opts.dynamics, opts.checkpoint)),
        'step': int(dyn_state.get('step', 0)),
        'latents': latents,
        'model': dyn_cfg.model.to_dict(),
    }
    return training, dict(dyn_state.get('metrics') or {}), latents


VAL_FIGURES = {  # the validation figures a report quotes, as (metrics.jsonl key, label)
    'DLP': (('psnr', 'val PSNR {:.2f} dB'), ('loss', 'val loss {:.4g}')),
    'dynamics': (('position_rmse_mean', 'val position RMSE {:.4f}'),
                 ('last_frame_rmse_mean', '(repeat the last frame: {:.4f})')),
}  # fmt: skip


def val_records(run_dir: Path) -> list[dict[str, Any]]:
    """The validation records of a run's metrics.jsonl, in order (none when it has no log)."""
    path = Path(run_dir) / 'metrics.jsonl'
    if not path.is_file():
        return []
    records = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return [r for r in records if r.get('split') == 'val']


def checkpoint_report(
    run_dir: Path, what: str, state: dict[str, Any], figures: tuple[tuple[str, str], ...]
) -> list[str]:
    """Which checkpoint step of a run is exported with that step's validation figures, and a
    WARNING line (also logged) when the run never improved on its first validation."""
    step, vals = int(state.get('step', 0)), val_records(run_dir)
    at = next((r for r in vals if r.get('step') == step), None)
    quoted = [label.format(at[key]) for key, label in figures if at and key in at]
    steps = f'step {step} of {vals[-1]["step"]}' if vals else f'step {step}'
    lines = [f'{what}: {run_dir}, {steps}: ' + (', '.join(quoted) or 'no validation at this step')]
    if len(vals) > 1 and step == vals[0].get('step'):
        warning = (
            f'WARNING: the exported {what} checkpoint is its first validation (step {step}); '
            f'the {len(vals) - 1} later ones did not improve on it: did {run_dir} train?'
        )
        logger.warning(warning)
        lines.append(warning)
    return lines


def encoder_source(dlp_run: Path, train: dict[str, Any]) -> Path:
    """The run whose encoder a train-dlp run carries: itself, or, through decoder fine-tunes
    (``train.trainable: decoder``), the first run of the chain (a run directory without a
    readable run.yaml ends it)."""
    run, seen = Path(dlp_run).resolve(), set()
    while train.get('trainable') == 'decoder' and train.get('init_from') and run not in seen:
        seen.add(run)
        run = Path(train['init_from']).resolve()
        train = (_run_yaml(run).get('config') or {}).get('train') or {}
    return run


def _run_yaml(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / 'run.yaml'
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text()) or {}


def _dataset_summary(data: str | None) -> dict[str, Any]:
    if not data or not (Path(data) / 'manifest.yaml').is_file():
        return {}
    m = yaml.safe_load((Path(data) / 'manifest.yaml').read_text()) or {}
    splits: dict[str, dict[str, int]] = {}
    for e in m.get('episodes', []):
        s = splits.setdefault(e.get('split', '?'), {'episodes': 0, 'frames': 0})
        s['episodes'] += 1
        s['frames'] += int(e.get('frames', 0))
    keys = ('fps', 'frame_shape', 'resize', 'topic', 'message_type', 'action', 'ground_truth')
    return {**{k: m.get(k) for k in keys if k in m}, 'splits': splits}


def code_version() -> str:
    """dlp_ros version + ``git describe`` of the source tree when it is a checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        git = subprocess.run(
            ['git', 'describe', '--always', '--dirty', '--tags'],
            cwd=root, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        git = ''
    return f'{dlp_ros.__version__}+{git}' if git else dlp_ros.__version__


# ----------------------------------------------------------------------------- random weights


def random_models(
    dlp_config: DlpConfig, dynamics_config: DynamicsConfig, seed: int = 0, noise: float = 0.05
) -> tuple[Dlp, ParticleDynamics]:
    """Untrained models whose every weight is perturbed by ``noise`` * N(0, 1), so that no
    output is trivial (the heads start at their biases, the dynamics at the identity)."""
    torch.manual_seed(seed)
    dlp, dyn = Dlp(dlp_config).eval(), ParticleDynamics(dynamics_config).eval()
    with torch.no_grad():
        for p in (*dlp.parameters(), *dyn.parameters()):
            p.add_(noise * torch.randn_like(p))
    return dlp, dyn


def export_random_bundle(
    dlp_config: DlpConfig,
    dynamics_config: DynamicsConfig,
    out: Path,
    seed: int = 0,
    noise: float = 0.05,
    dt: float = 0.1,
) -> tuple[ModelCard, Dlp, ParticleDynamics]:
    """A bundle of :func:`random_models` (tests and benchmarks): the card and the models."""
    dlp, dyn = random_models(dlp_config, dynamics_config, seed, noise)
    names = tuple(f'a{i}' for i in range(dynamics_config.action_dim))
    info = BundleInfo(dt=dt, action_names=names, training={'random_weights': {'seed': seed}})
    card = export_bundle(dlp, dyn, out, info, val_note={'note': 'random weights, no data'})
    return card, dlp, dyn
