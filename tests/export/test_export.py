"""``export``: the bundle's graphs against the torch models (onnxruntime parity on frames, decoded
frames and a 10-step rollout, at 64 and 128 px), onnx.checker, the card round trip, atomicity."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from dlp_ros.errors import ConfigError
from dlp_ros.model_card import (
    CARD_FILE,
    GRAPH_FILES,
    load_model_card,
    parse_model_card,
    write_model_card,
)
from dlp_ros.particles import FIELDS, ParticleFrame, stack
from dlp_ros.runtime import DlpRuntime
from dlp_training import export
from dlp_training.__main__ import main
from dlp_training.checkpoint import save_checkpoint
from dlp_training.config import to_dict
from dlp_training.dlp_config import DlpRunConfig
from dlp_training.dynamics_config import DynamicsRunConfig, DynamicsTrainConfig
from dlp_training.models.dlp import Particles
from dlp_training.models.dynamics import rollout
from dlp_training.models.tracking import DlpTrackingEncoder, track_sequence

onnx = pytest.importorskip('onnx')
SIZES = (64, 128)


def _x(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0


@pytest.mark.parametrize('size', SIZES)
def test_graphs_pass_onnx_checker(bundles: dict[int, Any], size: int) -> None:
    b = bundles[size]
    assert sorted(p.name for p in b.path.iterdir()) == sorted([*GRAPH_FILES, CARD_FILE])
    for name in GRAPH_FILES:
        model = onnx.load(str(b.path / name))
        onnx.checker.check_model(model, full_check=True)
        assert model.opset_import[0].version == 17
        batch = model.graph.input[0].type.tensor_type.shape.dim[0]
        assert batch.dim_param == 'B', name  # dynamic batch axis
    parity = b.card.validation.details['export_parity']
    assert set(parity) == set(GRAPH_FILES) and max(parity.values()) <= 1e-4


@pytest.mark.parametrize('size', SIZES)
def test_tracked_particles_match_torch(
    bundles: dict[int, Any], blob_frames: Callable, size: int
) -> None:
    b = bundles[size]
    rt = DlpRuntime.load(b.path, providers='cpu', threads=1)
    frames = blob_frames(size, t_len=8)
    tracker = rt.tracker()
    got = stack([tracker.update(rt.preprocess(f)) for f in frames], reseeded=True)
    track = track_sequence(b.dlp, _x(frames))
    assert np.array_equal(got['reseeded'], track.reseeded.numpy())
    for name in FIELDS:
        err = np.abs(got[name] - getattr(track.particles, name).numpy()).max()
        assert err <= 1e-4, (name, err)
    # one encoder call at another batch size, against the torch export view
    x = rt.preprocess(frames[0]).repeat(3, 0)
    anchors = np.random.default_rng(0).uniform(-0.8, 0.8, (3, b.card.particles.K, 2))
    anchors = anchors.astype(np.float32)
    out = rt.encode_pair(x, anchors)
    with torch.inference_mode():
        want = DlpTrackingEncoder(b.dlp)(torch.from_numpy(x), torch.from_numpy(anchors))
    for name, w in zip(DlpTrackingEncoder.OUTPUT_NAMES, want, strict=True):
        assert np.abs(out[name] - w.numpy()).max() <= 1e-4, name


@pytest.mark.parametrize('size', SIZES)
def test_decoded_frames_match_torch(
    bundles: dict[int, Any], blob_frames: Callable, size: int
) -> None:
    b = bundles[size]
    rt = DlpRuntime.load(b.path, providers='cpu', threads=1)
    frames = blob_frames(size, t_len=3, seed=1)
    with torch.inference_mode():
        p = b.dlp.encode(_x(frames))
        want = b.dlp.decode(p).numpy()  # (T, 3, S, S)
    particle_frames = [
        ParticleFrame(*(getattr(p, n)[t].numpy() for n in FIELDS)) for t in range(len(frames))
    ]
    got = rt.decode(particle_frames)
    assert got.shape == want.shape and np.abs(got - want).max() <= 1e-3
    images = rt.render(particle_frames)
    assert images.shape == (3, size, size, 3) and images.dtype == np.uint8
    ref = np.round(np.clip(want, 0, 1) * 255).astype(np.uint8).transpose(0, 2, 3, 1)
    assert np.abs(images.astype(int) - ref).max() <= 1


@pytest.mark.parametrize('size', SIZES)
def test_ten_step_prediction_matches_rollout(
    bundles: dict[int, Any], blob_frames: Callable, size: int
) -> None:
    b = bundles[size]
    rt = DlpRuntime.load(b.path, providers='cpu', threads=1)
    tracker = rt.tracker()
    for f in blob_frames(size, t_len=5, seed=2):
        tracker.update(rt.preprocess(f))
    history, h, a = tracker.history, b.card.dynamics.history, b.card.dynamics.action_dim
    assert len(history) == h
    actions = np.random.default_rng(3).normal(size=(h + 9, a)).astype(np.float32) if a else None
    preds = rt.predict(history, 10, actions)
    window = Particles(**{k: torch.from_numpy(v[None]) for k, v in stack(history).items()})
    with torch.inference_mode():
        want = rollout(b.dynamics, window, 10, None if a == 0 else torch.from_numpy(actions)[None])
    got = stack(preds)
    for name in FIELDS:
        err = np.abs(got[name] - getattr(want, name)[0].numpy()).max()
        assert err <= 1e-3, (name, err)
    moved = np.abs(got['mu'][-1] - history[-1].mu).max()
    assert moved > 1e-3  # the random dynamics is not the identity: the test means something


def test_model_card_round_trip(bundles: dict[int, Any], tmp_path: Path) -> None:
    card = load_model_card(bundles[64].path)
    assert card.schema_version == 1 and card.opset == 17
    assert (card.image.size, card.particles.K, card.dynamics.action_dim) == (64, 4, 2)
    assert card.dynamics.action_names == ('a0', 'a1')
    assert card.tracking.claim_radius == bundles[64].dlp.config.anchor_scale
    file = write_model_card(card, tmp_path / 'card.yaml')
    again = parse_model_card(yaml.safe_load(file.read_text()), file)
    assert again == card and again.to_dict() == card.to_dict()


def test_export_is_atomic(
    bundles: dict[int, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.set_num_threads(1)
    dlp, dyn = bundles[64].dlp, bundles[64].dynamics
    out = tmp_path / 'bundle'

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError('disk full')

    with monkeypatch.context() as m:
        m.setattr(export, 'write_model_card', broken)
        with pytest.raises(RuntimeError, match='disk full'):
            export.export_bundle(dlp, dyn, out)
    assert list(tmp_path.iterdir()) == []  # neither the bundle nor a temporary left

    export.export_bundle(dlp, dyn, out)
    digest = _digest(out)
    with pytest.raises(ConfigError, match='--overwrite'):
        export.export_bundle(dlp, dyn, out)
    assert _digest(out) == digest  # not clobbered
    with monkeypatch.context() as m:
        m.setattr(export, 'write_model_card', broken)
        with pytest.raises(RuntimeError):
            export.export_bundle(dlp, dyn, out, overwrite=True)
    assert _digest(out) == digest  # a failed overwrite keeps the old bundle
    export.export_bundle(dlp, dyn, out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['bundle']
    other = tmp_path / 'notes'
    other.mkdir()
    (other / 'todo.txt').write_text('mine')
    with pytest.raises(ConfigError, match='not a model bundle'):
        export.export_bundle(dlp, dyn, other, overwrite=True)


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_export_mismatched_models_is_refused(bundles: dict[int, Any], tmp_path: Path) -> None:
    with pytest.raises(export.ExportError, match='K = 4 but the dynamics model K = 5'):
        dyn_cfg = dataclasses.replace(bundles[64].dynamics.config, K=5)
        _, dyn = export.random_models(bundles[64].dlp.config, dyn_cfg)
        export.export_bundle(bundles[64].dlp, dyn, tmp_path / 'x')
    assert not (tmp_path / 'x').exists()


def test_export_command_from_run_directories(
    bundles: dict[int, Any], tiny_configs: Callable, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The CLI reads two run directories (as train-dlp / train-dynamics write them)."""
    torch.set_num_threads(1)
    dlp_cfg, dyn_cfg = tiny_configs(64, 2)
    b = bundles[64]
    dlp_run, dyn_run = tmp_path / 'dlp', tmp_path / 'dyn'
    dlp_config = DlpRunConfig(model=dlp_cfg)
    save_checkpoint(dlp_run / 'checkpoints' / 'best.pt', {
        'model': b.dlp.state_dict(), 'step': 7, 'config': to_dict(dlp_config),
        'metrics': {'psnr': 30.0}, 'best_psnr': 30.0})  # fmt: skip
    run_yaml = {'config': to_dict(dlp_config), 'data': str(tmp_path / 'gone')}
    (dlp_run / 'run.yaml').write_text(yaml.safe_dump(run_yaml))
    dyn_train = DynamicsTrainConfig(burn_in=max(dyn_cfg.history, 2))  # frozen: set when made
    dyn_config = DynamicsRunConfig(model=dyn_cfg, train=dyn_train)
    latents = {'path': 'x', 'fps': 5.0, 'image_size': 64, 'dlp_run': str(dlp_run),
               'action_names': ['linear.x', 'linear.y']}  # fmt: skip
    save_checkpoint(dyn_run / 'checkpoints' / 'last.pt', {
        'model': b.dynamics.state_dict(), 'step': 9, 'config': to_dict(dyn_config),
        'metrics': {'position_rmse_last': 0.1}, 'latents': latents})  # fmt: skip
    vals = [{'step': 7, 'split': 'val', 'psnr': 30.0, 'loss': 12.0},
            {'step': 14, 'split': 'val', 'psnr': 29.5, 'loss': 12.5}]  # fmt: skip
    (dlp_run / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in vals))
    out = tmp_path / 'bundle'
    argv = ['export', '--dlp', str(dlp_run), '--dynamics', str(dyn_run), '--out', str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert 'recon_mse omitted' in printed
    assert f'DLP: {dlp_run}, step 7 of 14: val PSNR 30.00 dB, val loss 12' in printed
    assert 'WARNING: the exported DLP checkpoint is its first validation (step 7)' in printed
    assert f'dynamics: {dyn_run}, step 9: no validation at this step' in printed
    assert 'WARNING: the exported dynamics' not in printed
    card = load_model_card(out)
    assert card.dynamics.dt == pytest.approx(0.2)
    assert card.dynamics.action_names == ('linear.x', 'linear.y')
    assert card.training['dlp']['step'] == 7 and card.training['dynamics']['step'] == 9
    assert card.metrics['dlp']['psnr'] == 30.0
    assert card.validation.recon_mse is None and 'no data set' in card.validation.details['note']
    assert card.prediction.compositing == 'gated'  # the default form
    assert main(argv) == 2  # exists, no --overwrite: a clear error, not a traceback
    assert '--overwrite' in capsys.readouterr().err
    runs = ['export', '--dlp', str(dlp_run), '--dynamics', str(dyn_run), '--out']
    assert main([*runs, str(tmp_path / 'b2'), '--val-data', str(tmp_path / 'nope')]) == 2
    assert f'--val-data {tmp_path / "nope"}: no such dataset' in capsys.readouterr().err
    assert not (tmp_path / 'b2').exists()
    assert main([*runs, str(tmp_path / 'b3'), '--compositing', 'warped']) == 0
    assert load_model_card(tmp_path / 'b3').prediction.compositing == 'warped'
    assert card.image.resize == 'squash'  # no data set to say otherwise: squash
    # the DLP's data set was built with --resize pad: the card says so
    data = tmp_path / 'padded'
    data.mkdir()
    (data / 'manifest.yaml').write_text(yaml.safe_dump({'fps': 5.0, 'resize': 'pad',
                                                        'frame_shape': [64, 64, 3]}))  # fmt: skip
    (dlp_run / 'run.yaml').write_text(yaml.safe_dump({**run_yaml, 'data': str(data)}))
    assert main([*runs, str(tmp_path / 'b4'), '--val-frames', '0']) == 0
    padded = load_model_card(tmp_path / 'b4')
    assert padded.image.resize == 'pad'
    assert padded.training['dlp']['dataset']['resize'] == 'pad'


def test_recon_mse_is_measured_on_given_frames(
    bundles: dict[int, Any], blob_frames: Callable, tmp_path: Path
) -> None:
    torch.set_num_threads(1)
    frames = [blob_frames(64, t_len=4, seed=5)]
    card = export.export_bundle(bundles[64].dlp, bundles[64].dynamics, tmp_path / 'b',
                                val_frames=frames, val_note={'split': 'val'})  # fmt: skip
    v = card.validation
    assert v.recon_mse is not None and v.recon_mse > 0
    assert v.details['frames'] == 4 and v.details['split'] == 'val'
    rt = DlpRuntime.load(tmp_path / 'b', providers='cpu', threads=1)
    tracker = rt.tracker()
    errors = [rt.recon_mse(x, tracker.update(x)) for x in map(rt.preprocess, frames[0])]
    assert v.recon_mse == pytest.approx(np.mean(errors), rel=1e-3)


def test_export_from_bundle_keeps_its_dlp_and_exports_the_new_dynamics(
    bundles: dict[int, Any], tiny_configs: Callable, blob_frames: Callable, tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:  # fmt: skip
    """--from-bundle: the source's DLP graphs byte for byte, a new dynamics that predicts as the
    torch model does, and a card naming both; sizes that differ are refused."""
    from dlp_training.models.dynamics import ParticleDynamics  # noqa: PLC0415

    torch.set_num_threads(1)
    b = bundles[64]
    _, dyn_cfg = tiny_configs(64, 2)
    torch.manual_seed(5)
    dynamics = ParticleDynamics(dataclasses.replace(dyn_cfg, identity_init=False)).eval()
    dyn_run = tmp_path / 'dyn'
    train = DynamicsTrainConfig(burn_in=max(dyn_cfg.history, 2))
    config = DynamicsRunConfig(model=dynamics.config, train=train)
    latents = {'path': 'x', 'fps': 5.0, 'image_size': 64, 'dlp_run': None,
               'source': {'bundle': str(b.path)},
               'action_names': ['linear.x', 'linear.y']}  # fmt: skip
    save_checkpoint(dyn_run / 'checkpoints' / 'last.pt', {
        'model': dynamics.state_dict(), 'step': 3, 'config': to_dict(config),
        'metrics': {'position_rmse_last': 0.2}, 'latents': latents})  # fmt: skip
    out = tmp_path / 'bundle'
    argv = ['export', '--from-bundle', str(b.path), '--dynamics', str(dyn_run), '--out', str(out)]
    assert main(argv) == 0
    assert f'dynamics: {dyn_run}, step 3' in capsys.readouterr().out
    for name in ('encoder.onnx', 'background.onnx', 'decoder.onnx'):
        assert (out / name).read_bytes() == (b.path / name).read_bytes(), name
    assert (out / 'dynamics.onnx').read_bytes() != (b.path / 'dynamics.onnx').read_bytes()
    card = load_model_card(out)
    assert card.training['dlp']['bundle'] == str(b.path)
    assert card.training['dynamics']['step'] == 3 and card.metrics['dynamics']
    assert card.dynamics.dt == pytest.approx(0.2) and card.image == b.card.image
    assert card.prediction == b.card.prediction and card.tracking == b.card.tracking
    assert card.validation.recon_mse == b.card.validation.recon_mse

    rt = DlpRuntime.load(out, providers='cpu', threads=1)
    tracker = rt.tracker()
    for f in blob_frames(64, t_len=4, seed=4):
        tracker.update(rt.preprocess(f))
    history, h = tracker.history, card.dynamics.history
    actions = np.random.default_rng(6).normal(size=(h + 4, 2)).astype(np.float32)
    got = stack(rt.predict(history, 5, actions))
    window = Particles(**{k: torch.from_numpy(v[None]) for k, v in stack(history).items()})
    with torch.inference_mode():
        want = rollout(dynamics, window, 5, torch.from_numpy(actions)[None])
    for name in FIELDS:
        assert np.abs(got[name] - getattr(want, name)[0].numpy()).max() <= 1e-3, name

    assert main(argv) == 2  # exists: refused, the bundle kept
    assert '--overwrite' in capsys.readouterr().err
    wrong = dataclasses.replace(dyn_cfg, K=dyn_cfg.K + 1)
    bad_run = tmp_path / 'bad'
    save_checkpoint(bad_run / 'checkpoints' / 'last.pt', {
        'model': ParticleDynamics(wrong).state_dict(), 'step': 1,
        'config': to_dict(DynamicsRunConfig(model=wrong, train=config.train))})  # fmt: skip
    bad = ['export', '--from-bundle', str(b.path), '--dynamics', str(bad_run), '--out']
    assert main([*bad, str(tmp_path / 'b2')]) == 2
    assert f'has K = {dyn_cfg.K} but the dynamics model K = {dyn_cfg.K + 1}' in (
        capsys.readouterr().err)  # fmt: skip
    assert main(['export', '--from-bundle', str(tmp_path), '--dynamics', str(dyn_run),
                 '--out', str(tmp_path / 'b4')]) == 2  # fmt: skip
    assert '--from-bundle' in capsys.readouterr().err
    assert not any((tmp_path / n).exists() for n in ('b2', 'b4'))
