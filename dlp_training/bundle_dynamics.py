"""``export --from-bundle``: an existing bundle's DLP graphs with a newly trained dynamics.

A bundle's encoder, background and decoder graphs are copied unchanged (with the card entries
that describe them: image, particles, tracking, the DLP's training record and validation); the
dynamics run is exported as ``dynamics.onnx`` and checked against torch; the new card names both
sources. Together with ``encode-dataset --bundle`` this retrains the dynamics of a shipped
bundle on new episodes without its DLP run. Written to a hidden temporary sibling of ``--out``
and renamed into place, as :mod:`dlp_training.export` does.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from dlp_ros.model_card import (
    BACKGROUND,
    CARD_FILE,
    DECODER,
    DYNAMICS,
    ENCODER,
    DynamicsSpec,
    ModelCard,
    ModelCardError,
    PredictionSpec,
    ValidationSpec,
    expected_graphs,
    load_model_card,
    write_model_card,
)
from dlp_ros.offline.output_dir import check_out
from dlp_training.dynamics_config import load_dynamics
from dlp_training.export import (
    KIND,
    VAL_FIGURES,
    ExportError,
    ExportOptions,
    checkpoint_report,
    code_version,
    describe_dynamics,
    export_graphs,
    print_summary,
    staged_bundle,
)
from dlp_training.export import action_names as export_action_names
from dlp_training.models.dynamics import DynamicsConfig, DynamicsStep, ParticleDynamics

logger = logging.getLogger(__name__)
KEPT = (ENCODER, BACKGROUND, DECODER)  # the DLP's graphs, copied from the source bundle


def dynamics_inputs(config: DynamicsConfig, batch: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Plausible inputs of ``DynamicsStep``: H frames of K particles (positions inside the
    image, small log-variances, presences in [0, 1]) and actions when the model takes them."""
    g = torch.Generator().manual_seed(seed)
    b, h, k = batch, config.history, config.K

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    inputs = (
        rand(b, h, k, 2) * 1.6 - 0.8,  # mu
        randn(b, h, k, 2) - 4.0,  # logvar
        randn(b, h, k, 2) - 2.0,  # scale
        randn(b, h, k, 1),  # depth
        rand(b, h, k, 1),  # transparency
        randn(b, h, k, config.F),  # features
        randn(b, h, config.Fb),  # bg_features
    )
    return inputs + ((0.2 * randn(b, h, config.action_dim),) if config.action_dim else ())


def export_from_bundle(opts: ExportOptions) -> int:
    """``export --from-bundle``: load, report, write; 0 when done."""
    source = Path(opts.from_bundle)
    try:
        card = load_model_card(source)
    except ModelCardError as exc:
        raise ExportError(f'--from-bundle {source}: {exc}') from exc
    dynamics, dyn_cfg, dyn_state = load_dynamics(opts.dynamics, opts.checkpoint)
    for line in checkpoint_report(opts.dynamics, 'dynamics', dyn_state, VAL_FIGURES['dynamics']):
        print(line)  # noqa: T201
    training, metrics, latents = describe_dynamics(opts, dyn_cfg, dyn_state)
    encoded_by = (latents.get('source') or {}).get('bundle')
    if not encoded_by or Path(encoded_by).resolve() != source.resolve():
        logger.warning(
            'the dynamics run %s was trained on latents of %s, not of --from-bundle %s',
            opts.dynamics, encoded_by or latents.get('dlp_run'), source,
        )  # fmt: skip
    fps = float(latents.get('fps') or 0.0) or 1.0 / card.dynamics.dt
    new = with_dynamics(
        card, dynamics, opts.out, fps, tuple(latents.get('action_names') or ()),
        {'training': training, 'metrics': metrics}, opts.opset, opts.overwrite,
        opts.compositing or card.prediction.compositing,
    )  # fmt: skip
    print_summary(opts.out, new)
    return 0


def with_dynamics(
    card: ModelCard,
    dynamics: ParticleDynamics,
    out: Path,
    fps: float,
    action_names: tuple[str, ...],
    record: dict[str, Any],
    opset: int = 17,
    overwrite: bool = False,
    compositing: str | None = None,
) -> ModelCard:
    """Write a bundle at ``out``: the DLP graphs of ``card``'s bundle and ``dynamics``.

    Args:
        card: the source bundle's card (read from its directory).
        dynamics: the new model; its K, F and Fb must be the card's.
        fps: frames per second of its training latents (the card's dt = 1 / fps).
        action_names: names of its action entries (dropped unless there are action_dim of them).
        record: ``training`` and ``metrics`` of the dynamics run (the card's ``dynamics`` keys).
        compositing: the card's ``prediction.compositing`` (None: the source card's).

    Returns:
        The written card (``directory`` = ``out``).
    """
    out = Path(out)
    check_out(out, overwrite, CARD_FILE, KIND)
    d, p = dynamics.config, card.particles
    for name, want, got in (('K', p.K, d.K), ('F', p.F, d.F), ('Fb', p.Fb, d.Fb)):
        if want != got:
            raise ExportError(f'the bundle {card.directory} has {name} = {want} but the dynamics '
                              f'model {name} = {got}: not trained on its latents')  # fmt: skip
    names = export_action_names(action_names, d.action_dim)
    with staged_bundle(out, overwrite) as tmp:
        for name in KEPT:
            shutil.copy2(card.path(name), tmp / name)
        view = {DYNAMICS: DynamicsStep(dynamics.eval()).eval()}
        parity = export_graphs(view, {DYNAMICS: dynamics_inputs(d, 2, 0)},
                               {DYNAMICS: dynamics_inputs(d, 3, 1)}, tmp, opset)  # fmt: skip
        old = dict(card.validation.details.get('export_parity') or {})
        details = {**card.validation.details, 'export_parity': {**old, **parity}}
        training = {'dlp': {**(card.training.get('dlp') or {}), 'bundle': str(card.directory)},
                    'dynamics': record['training']}  # fmt: skip
        metrics = {'dlp': card.metrics.get('dlp') or {}, 'dynamics': record['metrics']}
        new = dataclasses.replace(
            card,
            dynamics=DynamicsSpec(d.history, d.action_dim, names, 1.0 / fps),
            files=expected_graphs(card.image.size, p.K, p.F, p.Fb, d.history, d.action_dim),
            opset=opset,
            training=training,
            metrics=metrics,
            validation=ValidationSpec(card.validation.recon_mse, details),
            prediction=PredictionSpec(compositing or card.prediction.compositing),
            code_version=code_version(),
            created=time.strftime('%Y-%m-%dT%H:%M:%S%z'),
            directory=None,
        )
        write_model_card(new, tmp)
    logger.info('exported %s (the DLP of %s, a new dynamics)', out, card.directory)
    return load_model_card(out, check_graphs=False)
