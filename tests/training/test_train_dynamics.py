"""train-dynamics on a hand-written latents cache: a tiny run (checkpoints, metrics, baselines,
curriculum), exact resume after a kill, a clean stop on a non-finite loss, actions + pixel loss,
clip selection, bad input, and two DDP processes (gloo, CPU) that stay in sync."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from dlp_training.__main__ import main
from dlp_training.checkpoint import load_checkpoint, save_checkpoint
from dlp_training.clips import ClipSource, mirror
from dlp_training.config import to_dict
from dlp_training.data.dataset import write_manifest
from dlp_training.distributed import parameter_digest
from dlp_training.dlp_config import DlpRunConfig
from dlp_training.dynamics_config import load_dynamics
from dlp_training.encode_dataset import StatsAccumulator
from dlp_training.latents import FORMAT, VERSION, LatentDataset, episode_file
from dlp_training.models.dlp import Dlp, DlpConfig

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / 'dlp_training' / 'configs' / 'dynamics_tiny.yaml'
K, F, FB, T = 4, 4, 4, 16  # sizes of dynamics_tiny.yaml; frames per episode
SPLITS = ('train', 'train', 'train', 'train', 'val', 'val')
ENV = {**os.environ, 'OMP_NUM_THREADS': '1'}


def write_latents(root: Path, actions: bool = False, dlp_run: Path | None = None) -> Path:
    """A LatentDataset cache of particles in uniform straight motion (constant velocity is exact).

    Train episode 0 re-seeds slot 0 at frame 8. With ``actions``: (T, 6) commands of which only
    the first 2 entries are non-zero, invalid at frames 0 and 1.
    """
    rng = np.random.default_rng(0)
    (root / 'episodes').mkdir(parents=True)
    stats, episodes = StatsAccumulator(), []
    for i, split in enumerate(SPLITS):
        t = np.arange(T, dtype=np.float32)[:, None, None]  # (T, 1, 1)
        start, velocity = rng.uniform(-0.5, 0.5, (1, K, 2)), rng.uniform(-0.03, 0.03, (1, K, 2))
        on = np.array([1.0, 1.0, 1.0, 0.1], np.float32)[None, :, None]  # slot 3 is off
        a = {
            'mu': (start + t * velocity).astype(np.float32),  # (T, K, 2)
            'logvar': np.full((T, K, 2), -6.0, np.float32),
            'scale': np.full((T, K, 2), -1.0, np.float32),
            'depth': np.zeros((T, K, 1), np.float32),
            'transparency': np.broadcast_to(on, (T, K, 1)).copy(),
            'features': np.broadcast_to(rng.normal(size=(1, K, F)), (T, K, F)).astype(np.float32),
            'bg_features': (rng.normal(size=(1, FB)) + 0.01 * t[:, 0]).astype(np.float32),
            'reseeded': np.zeros((T, K), bool),
            'stamps_ns': np.arange(T, dtype=np.int64) * 100_000_000,
        }
        a['grid_ns'], a['reseeded'][0] = a['stamps_ns'], True
        if i == 0:
            a['reseeded'][8, 0] = True
        if actions:
            a['actions'] = np.zeros((T, 6), np.float32)
            a['actions'][:, :2] = rng.uniform(-0.3, 0.3, (T, 2))
            a['action_valid'] = np.arange(T) >= 2
        name = f'episode_{i:04d}'
        np.savez(root / episode_file(name), **a)
        if split == 'train':
            stats.add(a)
        episodes.append({'name': name, 'split': split, 'frames': T})
    mean, std = stats.result()
    action = {'topic': '/cmd', 'type': 'geometry_msgs/msg/TwistStamped', 'dim': 6,
              'names': ['linear.x', 'linear.y', 'linear.z', 'angular.x', 'angular.y',
                        'angular.z']}  # fmt: skip
    write_manifest(root, {
        'format': FORMAT, 'version': VERSION, 'S': 64, 'K': K,
        'F': F, 'Fb': FB, 'fps': 10.0, 'ground_truth': False,
        'source': {'dataset': 'none', 'dlp_run': str(dlp_run or ''), 'checkpoint': 'last'},
        'tracking': {'method': 'test'}, 'action': action if actions else None,
        'stats': {'split': 'train', 'frames': stats.frames, 'mean': mean, 'std': std},
        'episodes': episodes,
    })  # fmt: skip
    return root


@pytest.fixture(scope='module')
def latents(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_latents(tmp_path_factory.mktemp('dyn') / 'latents')


@pytest.fixture(scope='module')
def tiny_run(latents: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp('run') / 'run'
    argv = ['train-dynamics', '--config', str(TINY), '--latents', str(latents), '--out', str(out)]
    assert main([*argv, '--no-progress']) == 0
    assert main([*argv, '--no-progress']) == 2  # a new run refuses a non-empty directory
    return out


def _metrics(out: Path, split: str) -> list[dict[str, Any]]:
    lines = [json.loads(x) for x in (out / 'metrics.jsonl').read_text().splitlines()]
    return [x for x in lines if x['split'] == split]


def _cmd(latents: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, '-m', 'dlp_training', 'train-dynamics', '--config', str(TINY),
            '--latents', str(latents), '--out', str(out), '--no-progress', *extra]  # fmt: skip


def test_tiny_run_writes_checkpoints_metrics_and_baselines(tiny_run: Path) -> None:
    train = _metrics(tiny_run, 'train')
    assert [x['step'] for x in train] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert all(x['clips_per_s'] > 0 and np.isfinite(x['loss']) for x in train)
    val = _metrics(tiny_run, 'val')
    assert [x['step'] for x in val] == [20, 40]
    for record in val:
        for name in ('position', 'const_velocity', 'last_frame'):
            assert len(record[f'{name}_rmse']) == 3  # full horizon, one value per step
        assert max(record['const_velocity_rmse']) < 1e-5  # straight motion: exact
        assert record['last_frame_rmse'][0] < record['last_frame_rmse'][-1]  # drift grows
    model, config, info = load_dynamics(tiny_run, 'last')
    assert info['step'] == 40 and config.model.K == K and not model.training
    assert info['latents']['fps'] == 10.0 and info['latents']['action_names'] == []
    best = load_checkpoint(tiny_run / 'checkpoints' / 'best.pt')
    assert best['metrics']['position_rmse_mean'] == min(x['position_rmse_mean'] for x in val)
    assert (tiny_run / 'config.yaml').is_file() and (tiny_run / 'run.yaml').is_file()
    # Tensors and plain values only: no class of this package is pickled (see test_train_dlp).
    for name in ('best', 'last'):
        torch.load(tiny_run / 'checkpoints' / f'{name}.pt', map_location='cpu', weights_only=True)


def test_curriculum_horizon_increases(tiny_run: Path) -> None:
    horizons = [x['horizon'] for x in _metrics(tiny_run, 'train')]  # ramp 1 -> 3 over 20 steps
    assert horizons == sorted(horizons) and horizons[0] == 1 and horizons[-1] == 3, horizons


def test_resume_after_kill_is_exact(latents: Path, tmp_path: Path) -> None:
    steps = ['--set', 'train.max_steps=200', '--set', 'train.checkpoint_every=4',
             '--set', 'train.eval_every=1000', '--set', 'train.batch_size=32']  # fmt: skip
    straight = tmp_path / 'straight'
    subprocess.run(_cmd(latents, straight, *steps), check=True, capture_output=True, env=ENV)

    killed = tmp_path / 'killed'
    proc = subprocess.Popen(_cmd(latents, killed, *steps), stderr=subprocess.PIPE, env=ENV)
    last = killed / 'checkpoints' / 'last.pt'
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if last.is_file() and load_checkpoint(last)['step'] >= 8:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = load_checkpoint(last)  # the kill never leaves a broken checkpoint
    assert 8 <= state['step'] < 200, state['step']

    resume = [sys.executable, '-m', 'dlp_training', 'train-dynamics', '--out', str(killed),
              '--resume', '--no-progress']  # fmt: skip
    subprocess.run(resume, check=True, capture_output=True, env=ENV)
    a, _, info_a = load_dynamics(straight, 'last')
    b, _, info_b = load_dynamics(killed, 'last')
    assert info_a['step'] == info_b['step'] == 200
    assert parameter_digest(a) == parameter_digest(b), 'resumed run diverged from the straight run'


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, out = write_latents(tmp_path / 'latents'), tmp_path / 'run'
    argv = ['train-dynamics', '--config', str(TINY), '--latents', str(data), '--out', str(out),
            '--no-progress', '--set', 'train.max_steps=10']  # fmt: skip
    assert main(argv) == 0
    for e in LatentDataset.open(data).episodes('train'):  # the latents go bad
        path = data / episode_file(e.name)
        arrays = dict(np.load(path))
        arrays['features'][:] = np.nan
        np.savez(path, **arrays)
    resume = ['train-dynamics', '--out', str(out), '--resume', '--no-progress',
              '--set', 'train.max_steps=20']  # fmt: skip
    capsys.readouterr()
    assert main(resume) == 2
    err = capsys.readouterr().err
    assert 'non-finite loss' in err and 'last good checkpoint' in err, err
    state = load_checkpoint(out / 'checkpoints' / 'last.pt')
    assert state['step'] == 10
    assert all(torch.isfinite(v).all() for v in state['model'].values() if v.is_floating_point())


def test_actions_and_pixel_loss(tmp_path: Path) -> None:
    tiny_dlp = DlpConfig(S=64, K=K, n_proposals=6, prior_channels=(8, 8),
                         glimpse_channels=(8, 16), hidden_dim=32, F=F,
                         Fb=FB, decoder_channels=(16, 8),
                         bg_encoder_channels=(8, 8, 16, 16),
                         bg_decoder_channels=(16, 8, 8, 8))  # fmt: skip
    torch.manual_seed(0)
    dlp_run = tmp_path / 'dlp'
    save_checkpoint(dlp_run / 'checkpoints' / 'last.pt', {'model': Dlp(tiny_dlp).state_dict(),
                    'step': 1, 'config': to_dict(DlpRunConfig(model=tiny_dlp))})  # fmt: skip
    data, out = write_latents(tmp_path / 'latents', actions=True, dlp_run=dlp_run), tmp_path / 'r'
    sets = ['model.action_dim=2', 'train.action_columns=[0, 1]', 'train.pixel_loss_weight=1.0',
            'train.max_steps=6', 'train.eval_every=3', 'train.log_every=2']  # fmt: skip
    argv = ['train-dynamics', '--config', str(TINY), '--latents', str(data), '--out', str(out),
            '--no-progress', *(x for s in sets for x in ('--set', s))]  # fmt: skip
    assert main(argv) == 0
    train = _metrics(out, 'train')
    assert len(train) == 3 and all(x['pixel'] > 0 for x in train)
    model, config, info = load_dynamics(out, 'last')
    assert model.action_encoder is not None and config.train.action_columns == [0, 1]
    assert info['latents']['action_names'] == ['linear.x', 'linear.y']

    latents = LatentDataset.open(data)
    # windows of 5 frames whose actions at frames 0..3 are valid: starts 2..11 of 16 frames
    clips = ClipSource(latents, 'val', 5, action_columns=[0, 1], action_from=0)
    assert clips.count == 2 * 10 and clips.left_out['invalid_actions'] == 2 * 2
    batch = clips.batch(3, seed=0, step=0)
    assert batch.actions.shape == (3, 5, 2) and batch.particles.mu.shape == (3, 5, K, 2)
    # episode 0 re-seeds slot 0 at frame 8: windows starting at 4..7 hold the jump
    skipped = ClipSource(latents, 'train', 5, reseeded='skip')
    assert skipped.left_out['reseeded'] == 4 and skipped.count == 4 * 12 - 4
    assert ClipSource(latents, 'train', 5, reseeded='keep').count == 4 * 12
    masked = ClipSource(latents, 'train', 5)  # the default: keep the clip, mask the slot
    assert masked.count == 4 * 12 and masked.left_out['reseeded'] == 0
    valid = masked.gather(np.arange(12)).slot_valid  # (12, K) the windows of episode 0
    assert valid[:, 1:].all() and valid[:, 0].tolist() == [
        float(not 4 <= s <= 7) for s in range(12)
    ]
    kept = ClipSource(latents, 'train', 5, reseeded='keep').gather(np.arange(12)).slot_valid
    assert kept.all()


def test_init_from_starts_at_another_runs_best_weights(
    latents: Path, tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """train.init_from: a fine-tune (another loss setting) starts at the source's best
    weights; another model, or a directory that is no run, is refused by name."""
    source = load_dynamics(tiny_run)[0].state_dict()
    base = ['train-dynamics', '--config', str(TINY), '--latents', str(latents), '--no-progress']
    tune = ['--set', f'train.init_from={tiny_run}', '--set', 'train.max_steps=1',
            '--set', 'train.lr=1e-12', '--set', 'train.loss.motion=2.0']  # fmt: skip
    assert main([*base, '--out', str(tmp_path / 'a'), *tune]) == 0
    tuned = load_dynamics(tmp_path / 'a', 'last')[0].state_dict()
    assert all(torch.allclose(tuned[k], v, atol=1e-6) for k, v in source.items())
    fresh = ['--set', 'train.max_steps=1', '--set', 'train.lr=1e-12']
    assert main([*base, '--out', str(tmp_path / 'b'), *fresh]) == 0
    other = load_dynamics(tmp_path / 'b', 'last')[0].state_dict()
    assert not all(torch.allclose(other[k], v, atol=1e-6) for k, v in source.items())
    capsys.readouterr()
    width = load_dynamics(tiny_run)[1].model.hidden_dim
    wider = ['--set', f'model.hidden_dim={width + 8}']
    assert main([*base, '--out', str(tmp_path / 'c'), *tune, *wider]) == 2
    err = capsys.readouterr().err
    assert 'train.init_from' in err and f'hidden_dim: {width} there, {width + 8} here' in err
    bad = ['--set', f'train.init_from={tmp_path}', '--set', 'train.max_steps=1']
    assert main([*base, '--out', str(tmp_path / 'd'), *bad]) == 2
    assert 'is not a train-dynamics run directory' in capsys.readouterr().err


def test_bad_input_errors(
    latents: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def fails(extra: list[str], *needles: str) -> None:
        out = tmp_path / f'out{len(list(tmp_path.iterdir()))}'
        argv = ['train-dynamics', '--config', str(TINY), '--latents', str(latents), '--out',
                str(out), '--no-progress', *extra]  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert all(n in err for n in needles), err

    fails(['--set', 'model.K=5'], 'model.K is 5', 'have K = 4')
    fails(['--set', 'model.n_particles=5'], 'model.K is 5', 'have K = 4')  # the old name
    fails(['--set', 'model.F=3'], 'model.F is 3', 'have F = 4')
    fails(['--set', 'train.nope=1'], 'unknown config key(s) train.nope')
    fails(['--set', 'model.history=3'], 'train.burn_in (2)', 'model.history (3)')
    fails(['--set', 'train.horizon=20'], 'no clip of 22 frames')
    assert main(['train-dynamics', '--out', str(tmp_path), '--resume']) == 2
    assert 'not a train-dynamics run directory' in capsys.readouterr().err


def test_camera_only_latents_train_without_actions(
    latents: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A config asking for actions (the tabletop config's action_dim 2, columns [0, 1]) on
    latents without actions trains a no-action model, saying so at INFO."""
    out = tmp_path / 'run'
    argv = ['train-dynamics', '--config', str(TINY), '--latents', str(latents), '--out', str(out),
            '--no-progress', '--set', 'model.action_dim=2', '--set', 'train.action_columns=[0, 1]',
            '--set', 'train.max_steps=5']  # fmt: skip
    with caplog.at_level(logging.INFO, logger='dlp_training.train_dynamics'):
        assert main(argv) == 0
    said = [r.getMessage() for r in caplog.records if 'camera-only' in r.getMessage()]
    assert len(said) == 1 and 'model.action_dim: 0' in said[0], said
    assert 'train.action_columns: null' in said[0] and r'action_dim 2' in said[0]
    config = yaml.safe_load((out / 'config.yaml').read_text())
    assert config['model']['action_dim'] == 0 and config['train']['action_columns'] is None
    resume = ['train-dynamics', '--out', str(out), '--resume', '--no-progress',
              '--set', 'train.max_steps=6']  # fmt: skip
    assert main(resume) == 0  # the saved config (no actions) resumes unchanged
    assert load_checkpoint(out / 'checkpoints' / 'last.pt')['step'] == 6


def test_two_ddp_processes_stay_in_sync(latents: Path, tmp_path: Path) -> None:
    out = tmp_path / 'ddp'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
           '--master_port', str(29500 + os.getpid() % 1000 + 7), '-m', 'dlp_training',
           'train-dynamics', '--config', str(TINY), '--latents', str(latents), '--out', str(out),
           '--no-progress', '--set', 'train.max_steps=6']  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    digests = [json.loads((out / 'sync' / f'rank_{r}.json').read_text())['digest'] for r in (0, 1)]
    assert digests[0] == digests[1], 'DDP ranks ended with different parameters'
    model, _, info = load_dynamics(out, 'last')
    assert info['step'] == 6 and parameter_digest(model) == digests[0]
    assert yaml.safe_load((out / 'run.yaml').read_text())['latents']['fps'] == 10.0


def _run(latents: Path) -> Callable[[Path, list[str]], None]:
    def run(out: Path, extra: list[str]) -> None:
        argv = ['train-dynamics', '--config', str(TINY), '--latents', str(latents), '--out',
                str(out), '--no-progress']  # fmt: skip
        assert main([*argv, *extra]) == 0

    return run


def test_train_records_average_the_log_window(latents: Path, check_window_means: Callable) -> None:
    check_window_means(_run(latents))


def test_time_limit_stop_validates(latents: Path, check_time_limit_validates: Callable) -> None:
    check_time_limit_validates(_run(latents))


def test_mirror_augmentation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """train.flip mirrors positions and the actions along the mirrored axes, nothing else."""
    data = write_latents(tmp_path / 'latents', actions=True)
    clips = ClipSource(LatentDataset.open(data), 'train', 5, action_columns=[0, 1], action_from=2)
    batch = clips.batch(4, seed=0, step=0)
    flips = np.array([[False, False], [True, False], [False, True], [True, True]])
    out = mirror(batch, flips, ['x', 'y'])
    sign = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]])  # (B, 2)
    assert torch.equal(out.particles.mu, batch.particles.mu * sign[:, None, None, :])
    assert torch.equal(out.actions, batch.actions * sign[:, None, :])
    for name in ('logvar', 'scale', 'transparency', 'features', 'bg_features'):
        assert torch.equal(getattr(out.particles, name), getattr(batch.particles, name)), name
    swapped = mirror(batch, flips, ['y', ''])  # entry 0 points along y, entry 1 along neither
    assert torch.equal(swapped.actions[:, :, 0], batch.actions[:, :, 0] * sign[:, None, 1])
    assert torch.equal(swapped.actions[:, :, 1], batch.actions[:, :, 1])
    with pytest.raises(ValueError, match='action_axes'):
        mirror(batch, flips, None)

    base = ['train-dynamics', '--config', str(TINY), '--latents', str(data), '--no-progress',
            '--set', 'model.action_dim=2', '--set', 'train.action_columns=[0, 1]',
            '--set', 'train.max_steps=4', '--set', 'train.eval_every=2']  # fmt: skip
    assert main([*base, '--out', str(tmp_path / 'bad'), '--set', 'train.flip=[x]']) == 2
    assert 'train.action_axes' in capsys.readouterr().err
    assert main([*base, '--out', str(tmp_path / 'bad2'), '--set', 'train.flip=[z]',
                 '--set', 'train.action_axes=[x, y]']) == 2  # fmt: skip
    assert 'train.flip' in capsys.readouterr().err
    out = tmp_path / 'run'
    flip = ['--set', 'train.flip=[x, y]', '--set', 'train.action_axes=[x, y]']
    assert main([*base, '--out', str(out), *flip]) == 0
    _, config, _ = load_dynamics(out, 'last')
    assert config.train.flip == ['x', 'y'] and config.train.action_axes == ['x', 'y']
