"""What every training command shares: its command line, new-run vs ``--resume`` resolution, the
learning-rate schedule, and loading the trained model of a run directory.

A run directory holds ``run.yaml`` (``config`` + where the data came from), ``config.yaml``,
``metrics.jsonl`` and ``checkpoints/{last,best}.pt`` (see :mod:`dlp_training.checkpoint`).
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import yaml
from torch import Tensor, nn

from dlp_ros.config_schema import from_args, renamed_keys
from dlp_ros.errors import ConfigError, DlpError
from dlp_training.checkpoint import load_checkpoint, run_checkpoint
from dlp_training.config import (
    apply_overrides,
    from_dict,
    read_config,
    shipped_configs,
    to_dict,
)
from dlp_training.distributed import DEVICES, rank_and_size, ranks_where

logger = logging.getLogger(__name__)

C = TypeVar('C')
M = TypeVar('M', bound=nn.Module)


def add_run_arguments(parser: argparse.ArgumentParser, data_flag: str, data_help: str) -> None:
    """``--config --<data_flag> --out --set --resume --no-progress --device`` (the data path
    goes to :attr:`RunOptions.data` whatever its flag)."""
    parser.add_argument(
        '--config',
        type=Path,
        help='YAML config (model: ..., train: ...), or the name of a shipped one '
        f'({", ".join(shipped_configs())})',
    )
    parser.add_argument(f'--{data_flag}', dest='data', type=Path, help=data_help)
    parser.add_argument('--out', type=Path, required=True, help='run directory')
    parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                        help='override a config value, e.g. --set train.lr=1e-3')  # fmt: skip
    parser.add_argument('--resume', action='store_true', help='continue the run in --out')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')
    parser.add_argument('--device', choices=DEVICES, default='auto',
                        help='auto (a CUDA GPU when torch sees one, else the CPU), cpu or cuda; '
                        'the run logs the one it uses')  # fmt: skip


@dataclass(frozen=True)
class RunOptions:
    """The command line of a training command (:func:`add_run_arguments`), validated."""

    out: Path
    config: Path | None = None
    # The --data (train-dlp) or --latents (train-dynamics) path.
    data: Path | None = None
    set: tuple[str, ...] = ()
    resume: bool = False
    no_progress: bool = False
    device: str = 'auto'

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunOptions:
        return from_args(cls, args)


def resolve_run(
    opts: RunOptions,
    config_cls: type[C],
    data_flag: str,
    command: str,
    resumable: tuple[str, ...],
    saved_data: Callable[[dict[str, Any]], str],
    sizes: Callable[[Path, dict[str, Any]], dict[str, Any]],
    adapt: Callable[[Path, dict[str, Any]], dict[str, Any]] | None = None,
) -> tuple[C, Path, dict[str, Any] | None]:
    """Config, data path and (on ``--resume``) the last checkpoint of a training command.

    A new run needs an empty ``--out`` and ``--<data_flag>``; ``--resume`` takes the config from
    ``run.yaml`` (``saved_data`` reads the data path from it) and lets only ``resumable`` keys
    change. ``sizes(data_path, model_mapping)`` gives the ``model:`` mapping the sizes of the
    data (:func:`take_sizes`), on a new run and on a resumed one alike; ``adapt(data_path,
    mapping)``, if given, may then change the whole mapping to fit the data (it logs what).
    """
    out, data = opts.out, opts.data
    if not opts.resume:
        if out.exists() and any(out.iterdir()):
            raise DlpError(
                f'{out} is not empty; pass --resume to continue it or choose a new --out'
            )
        if data is None:
            raise ConfigError(f'--{data_flag} is required for a new run')
        mapping = _with_sizes(read_config(opts.config, list(opts.set)), data, sizes)
        mapping = adapt(data, mapping) if adapt is not None else mapping
        return from_dict(config_cls, mapping), data, None
    if opts.config is not None:
        raise ConfigError('--resume takes the config from the run directory; drop --config')
    bad = [s for s in opts.set if s.partition('=')[0] not in resumable]
    if bad:
        raise ConfigError(f'on --resume only {", ".join(resumable)} may change; got {bad}')
    if not (out / 'run.yaml').is_file():
        raise DlpError(f'{out} has no run.yaml: not a {command} run directory')
    saved = yaml.safe_load((out / 'run.yaml').read_text())
    data = Path(data or saved_data(saved))
    mapping = _with_sizes(apply_overrides(saved['config'], list(opts.set)), data, sizes)
    mapping = adapt(data, mapping) if adapt is not None else mapping
    config = from_dict(config_cls, mapping)
    last = out / 'checkpoints' / 'last.pt'
    state = load_checkpoint(last) if last.is_file() else None
    return config, data, state


def _with_sizes(
    mapping: dict[str, Any], data: Path, sizes: Callable[[Path, dict[str, Any]], dict[str, Any]]
) -> dict[str, Any]:
    model = mapping.get('model', {})
    if not isinstance(model, dict):
        return mapping  # from_dict refuses it by name
    return {**mapping, 'model': sizes(data, model)}


def take_sizes(
    model: dict[str, Any],
    renamed: dict[str, str],
    sizes: dict[str, int],
    source: str,
    hint: Callable[[str, Any, int], str] | None = None,
) -> dict[str, Any]:
    """The ``model:`` mapping with ``sizes`` (``{'K': 4, ...}``) of the data at ``source`` (e.g.
    ``latents runs/lat``): a size the config leaves out is the data's, one it gives must agree,
    else a ConfigError naming both (``hint(key, given, value)`` may say more). ``renamed``: the
    model config's old key names (:data:`dlp_ros.config_schema.RENAMED`)."""
    model = dict(renamed_keys(model, renamed, 'model.'))
    for key, value in sizes.items():
        given = model.setdefault(key, value)
        if given != value:
            more = hint(key, given, value) if hint else ''
            raise ConfigError(f'model.{key} is {given!r} in the config but {source} {has(source)} '
                              f'{key} = {value}{more}; leave model.{key} out: it is taken from '
                              'the data')  # fmt: skip
    return model


def has(source: str) -> str:
    """'have' for plural sources (latents), else 'has'."""
    return 'have' if source.startswith('latents') else 'has'


def lr_at(step: int, c: Any) -> float:
    """Linear ramp, then cosine decay from lr to lr * lr_final at max_steps."""
    if step < c.lr_ramp_steps:
        return c.lr * (step + 1) / c.lr_ramp_steps
    progress = min(1.0, (step - c.lr_ramp_steps) / max(1, c.max_steps - c.lr_ramp_steps))
    return c.lr * (c.lr_final + (1 - c.lr_final) * 0.5 * (1 + math.cos(math.pi * progress)))


def load_run_model(
    run_dir: Path, which: str, config_cls: type[C], build: Callable[[C], M]
) -> tuple[M, C, dict[str, Any]]:
    """The trained model of a run directory, in eval mode, on the CPU.

    Returns the model (``build(config)`` with the checkpoint's weights), its run config and the
    checkpoint's other entries (step, metrics, ...).
    """
    state = load_checkpoint(run_checkpoint(run_dir, which))
    config = from_dict(config_cls, state['config'])
    model = build(config)
    model.load_state_dict(state['model'])
    model.eval()
    return model, config, {k: v for k, v in state.items() if k not in ('model', 'optimizer')}


def initialise_from(
    model: nn.Module,
    run_dir: Path,
    command: str,
    load: Callable[[Path], tuple[nn.Module, Any, dict[str, Any]]],
    loss_fields: Collection[str] = (),
) -> None:
    """Copy the best weights of the ``command`` run ``run_dir`` into ``model``
    (``train.init_from``, fine-tuning).

    ``load(run_dir)``: the source's model, run config and checkpoint entries (``load_dlp``,
    ``load_dynamics``). A source whose ``model:`` config differs from ``model.config`` is refused,
    naming the fields, except in ``loss_fields`` (fine-tuning with another loss is what it is
    for).
    """
    if not (run_dir / 'checkpoints').is_dir():
        raise ConfigError(f'train.init_from: {run_dir} is not a {command} run directory (no '
                          'checkpoints/)')  # fmt: skip
    source, config, info = load(run_dir)
    ours, theirs = to_dict(model.config), to_dict(config.model)
    differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
    loss_only = [k for k in differ if k in loss_fields]
    differ = [k for k in differ if k not in loss_fields]
    if differ:
        pairs = ', '.join(f'{k}: {theirs.get(k)!r} there, {ours.get(k)!r} here' for k in differ)
        raise ConfigError(f'train.init_from: the model of {run_dir} differs from this config '
                          f'({pairs}); start from a run with the same model: section')  # fmt: skip
    model.load_state_dict(source.state_dict())
    logger.info('weights from %s (step %d)', run_dir, int(info.get('step', 0)))
    for k in loss_only:
        logger.info('loss setting %s: %r there, %r here', k, theirs.get(k), ours.get(k))


def optimisation_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss: Tensor,
    metrics: dict[str, float],
    step: int,
    grad_clip: float,
    last_checkpoint: Path,
) -> float:
    """Backward pass, optional gradient-norm clip and optimizer step; the total gradient norm
    before clipping.

    A non-finite loss stops the run with a DlpError naming the step and the last good checkpoint;
    nothing is updated. Under DDP the ranks first agree (one tiny all-reduce, before backward)
    on which of them have a non-finite loss, and if any has, every rank raises: a rank that
    stopped alone would leave the others blocked in the gradient all-reduce of ``backward``.
    """
    if bad := ranks_where(not bool(torch.isfinite(loss.detach()).all()), loss.device):
        raise non_finite_error(loss, metrics, step, bad, last_checkpoint)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    else:
        norm = torch.nn.utils.get_total_norm(
            [p.grad for p in model.parameters() if p.grad is not None]
        )
    optimizer.step()
    return float(norm)


def non_finite_error(
    loss: Tensor, metrics: dict[str, float], step: int, bad: list[int], last_checkpoint: Path
) -> DlpError:
    """The error every rank raises when the loss of ranks ``bad`` is non-finite at ``step``."""
    if last_checkpoint.is_file():
        kept = f'The last good checkpoint is {last_checkpoint}'
    else:
        kept = f'There is no last good checkpoint yet ({last_checkpoint} was not written)'
    value = loss.detach().float().mean().item()
    rank, world = rank_and_size()
    if world == 1:
        return DlpError(f'non-finite loss {value} at step {step} ({metrics}); stopped. {kept}')
    return DlpError(
        f'non-finite loss at step {step} on rank(s) {", ".join(map(str, bad))} of {world}; '
        f'every rank stopped (rank {rank}: loss {value}, {metrics}). {kept}'
    )
