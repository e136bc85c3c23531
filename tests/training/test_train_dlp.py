"""train-dlp: a real (tiny) run, exact resume after a kill, a clean stop on a non-finite loss,
and two DDP processes (gloo, CPU) that stay in sync."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from dlp_ros.errors import DlpError
from dlp_training.__main__ import main
from dlp_training.checkpoint import load_checkpoint
from dlp_training.data.dataset import Dataset
from dlp_training.distributed import parameter_digest
from dlp_training.dlp_config import DlpTrainConfig, load_dlp
from dlp_training.export import encoder_source

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / 'dlp_training' / 'configs' / 'dlp_tiny.yaml'


@pytest.fixture(scope='module')
def balls_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp('balls')
    assert main(['record-synthetic', 'balls', '--episodes', '4', '--frames', '20',
                 '--out', str(base / 'bags')]) == 0  # fmt: skip
    bags = [str(p) for p in sorted((base / 'bags').glob('episode_*/'))]
    assert main(['build-dataset', '--bags', *bags, '--topic', '/camera/image_raw', '--fps', '10',
                 '--out', str(base / 'data'), '--no-progress']) == 0  # fmt: skip
    return base / 'data'


def _train_cmd(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, '-m', 'dlp_training', 'train-dlp', '--config', str(TINY), '--data',
            str(data), '--out', str(out), '--no-progress', *extra]  # fmt: skip


def test_tiny_run_writes_checkpoints_metrics_and_grids(balls_data: Path, tmp_path: Path) -> None:
    out = tmp_path / 'run'
    argv = ['train-dlp', '--config', str(TINY), '--data', str(balls_data), '--out', str(out)]
    assert main([*argv, '--no-progress', '--set', 'train.max_steps=20']) == 0
    lines = [json.loads(x) for x in (out / 'metrics.jsonl').read_text().splitlines()]
    train = [x for x in lines if x['split'] == 'train']
    assert [x['step'] for x in train] == [5, 10, 15, 20]
    assert all(x['images_per_s'] > 0 for x in train)
    assert sorted(p.name for p in (out / 'eval').iterdir()) == ['step_000020.png']
    model, config, info = load_dlp(out)
    assert info['step'] == 20 and config.train.max_steps == 20
    assert config.model.K == 4
    # Tensors and plain values only (weights_only loads them): no class of this package is
    # pickled, so runs stay loadable whatever its modules are called (it was `training` once).
    checkpoints = sorted((out / 'checkpoints').glob('*.pt'))
    assert checkpoints
    for path in checkpoints:
        assert torch.load(path, map_location='cpu', weights_only=True)['step'] == 20
    # a new run refuses a non-empty directory
    assert main([*argv, '--no-progress']) == 2


def test_a_static_background_starts_at_the_training_median(
    balls_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / 'run'
    argv = ['train-dlp', '--config', str(TINY), '--data', str(balls_data), '--out', str(out)]
    extra = ['--set', 'model.static_background=true', '--set', 'train.max_steps=1']
    assert main([*argv, '--no-progress', *extra]) == 0
    model, config, _ = load_dlp(out)
    assert config.model.static_background
    data = Dataset.open(balls_data)
    frames = np.concatenate([np.asarray(data.frames(e.name)) for e in data.episodes('train')])
    picked = frames[np.linspace(0, len(frames) - 1, num=min(256, len(frames))).astype(int)]
    median = torch.from_numpy(picked).float().div(255).permute(0, 3, 1, 2).median(dim=0).values
    with torch.no_grad():
        background = torch.sigmoid(model.bg_decoder.image_logit)
    # one optimiser step (Adam moves a logit by about the learning rate) after the start
    torch.testing.assert_close(background, median.clamp(0.5 / 255, 1 - 0.5 / 255), atol=2e-3,
                               rtol=0)  # fmt: skip
    assert (background - 0.5).abs().max() > 0.2  # not the zero logit: the scene was set


def test_a_clip_run_trains_on_clips_within_episodes(balls_data: Path, tmp_path: Path) -> None:
    """train.clip_length > 1: batches of consecutive frames of one episode, the tracked loss
    (its appearance-change metric logged), images counted per frame."""
    from dlp_training.data.dataset import Dataset
    from dlp_training.frames import FrameSource

    source = FrameSource(Dataset.open(balls_data), 'train')
    starts = source.clip_starts(4)
    ends = np.cumsum(source._lengths)  # (E,) one past each episode's last frame
    assert not np.isin(starts[:, None] + np.arange(1, 4), ends).any()  # no clip crosses one
    assert len(starts) == source.count - 3 * len(ends)
    clips = source.clip_batch(3, 4, seed=0, step=0)
    assert clips.shape == (3, 4, 3, source.size, source.size)
    assert torch.equal(clips, source.clip_batch(3, 4, seed=0, step=0))
    with pytest.raises(DlpError, match='clip_length'):
        source.clip_starts(10_000)
    out = tmp_path / 'clips'
    argv = ['train-dlp', '--config', str(TINY), '--data', str(balls_data), '--out', str(out),
            '--no-progress', '--set', 'train.max_steps=10', '--set', 'train.clip_length=3',
            '--set', 'train.batch_size=2', '--set', 'train.track_feature_weight=0.5']  # fmt: skip
    assert main(argv) == 0
    lines = [json.loads(x) for x in (out / 'metrics.jsonl').read_text().splitlines()]
    train = [x for x in lines if x['split'] == 'train']
    assert train and all('feature_change' in x and x['images_per_s'] > 0 for x in train)
    assert load_dlp(out)[1].train.clip_length == 3


def test_init_from_starts_from_another_runs_weights(
    balls_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """train.init_from: fine-tuning starts at the source run's best weights; a run with another
    model, or a directory that is no run, is refused by name."""
    base = ['train-dlp', '--config', str(TINY), '--data', str(balls_data), '--no-progress']
    assert main([*base, '--out', str(tmp_path / 'a'), '--set', 'train.max_steps=5']) == 0
    source = load_dlp(tmp_path / 'a')[0].state_dict()
    tune = ['--set', f'train.init_from={tmp_path / "a"}', '--set', 'train.max_steps=1',
            '--set', 'train.lr=1e-12', '--set', 'train.clip_length=2']  # fmt: skip
    # another loss (overlap penalty) on the same model is a fine-tune, not another model
    assert main([*base, '--out', str(tmp_path / 'b'), *tune,
                 '--set', 'model.overlap_weight=2.0']) == 0  # fmt: skip
    tuned = load_dlp(tmp_path / 'b')[0].state_dict()
    assert all(torch.allclose(tuned[k], v, atol=1e-6) for k, v in source.items())
    fresh = load_dlp(tmp_path / 'a', 'last')[0]  # not a copy of a random init
    assert main([*base, '--out', str(tmp_path / 'c'), '--set', 'train.max_steps=1',
                 '--set', 'train.seed=7']) == 0  # fmt: skip
    other = load_dlp(tmp_path / 'c')[0].state_dict()
    assert not all(torch.allclose(other[k], v) for k, v in fresh.state_dict().items())
    capsys.readouterr()
    assert main([*base, '--out', str(tmp_path / 'd'), *tune, '--set', 'model.K=3']) == 2
    assert 'train.init_from' in (err := capsys.readouterr().err) and 'K: 4 there, 3 here' in err
    bad = ['--set', f'train.init_from={tmp_path}', '--set', 'train.max_steps=1']
    assert main([*base, '--out', str(tmp_path / 'e'), *bad]) == 2
    assert 'is not a train-dlp run directory' in capsys.readouterr().err


def test_a_decoder_fine_tune_keeps_the_particles(
    balls_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """train.trainable=decoder: the prior and encoders are exactly the source run's (so are the
    particles of every frame), the decoders learn; without init_from it is refused by name."""
    base = ['train-dlp', '--config', str(TINY), '--data', str(balls_data), '--no-progress']
    assert main([*base, '--out', str(tmp_path / 'a'), '--set', 'train.max_steps=5']) == 0
    source = load_dlp(tmp_path / 'a')[0]
    tune = ['--set', f'train.init_from={tmp_path / "a"}', '--set', 'train.trainable=decoder',
            '--set', 'train.max_steps=6', '--set', 'train.warmup_steps=100',
            '--set', 'train.eval_every=3', '--set', 'train.log_every=1']  # fmt: skip
    assert main([*base, '--out', str(tmp_path / 'b'), *tune]) == 0
    lines = [json.loads(x) for x in (tmp_path / 'b' / 'metrics.jsonl').read_text().splitlines()]
    train = [x for x in lines if x['split'] == 'train']
    assert len(train) == 6 and not any('glimpse_rec' in x for x in train)  # no warm-up phase
    tuned = load_dlp(tmp_path / 'b', 'last')[0]
    before, after = source.state_dict(), tuned.state_dict()
    decoders = ('glimpse_decoder.', 'bg_decoder.')
    kept = [k for k in before if not k.startswith(decoders)]
    assert kept and all(torch.equal(after[k], before[k]) for k in kept)
    assert any(not torch.equal(after[k], before[k]) for k in before if k.startswith(decoders))
    images = torch.rand(3, 3, source.config.S, source.config.S)
    with torch.no_grad():
        for a, b in zip(source.encode(images), tuned.encode(images), strict=True):
            assert torch.equal(a, b)
    # resumed, it goes on from its own last checkpoint with the encoder still the source's
    resume = ['train-dlp', '--out', str(tmp_path / 'b'), '--resume', '--no-progress',
              '--set', 'train.max_steps=8']  # fmt: skip
    assert main(resume) == 0
    resumed, _, info = load_dlp(tmp_path / 'b', 'last')
    assert info['step'] == 8
    again = resumed.state_dict()
    assert all(torch.equal(again[k], before[k]) for k in kept)
    assert any(not torch.equal(again[k], after[k]) for k in after if k.startswith(decoders))
    # a decoder fine-tune of a decoder fine-tune still encodes as the first run ('a') does
    twice = ['--set', f'train.init_from={tmp_path / "b"}', '--set', 'train.trainable=decoder',
             '--set', 'train.max_steps=1']  # fmt: skip
    assert main([*base, '--out', str(tmp_path / 'e'), *twice]) == 0
    for run in ('a', 'b', 'e'):
        train = dataclasses.asdict(load_dlp(tmp_path / run)[1].train)
        assert encoder_source(tmp_path / run, train) == (tmp_path / 'a').resolve()
    # what the decoder reads: means for a decoder fine-tune, samples otherwise, unless said
    assert load_dlp(tmp_path / 'b')[1].train.decodes_means
    assert not DlpTrainConfig().decodes_means and DlpTrainConfig(posterior='means').decodes_means
    assert not DlpTrainConfig(
        init_from='a', trainable='decoder', posterior='samples'
    ).decodes_means
    capsys.readouterr()
    assert main([*base, '--out', str(tmp_path / 'c'), '--set', 'train.trainable=decoder']) == 2
    assert "train.trainable: 'decoder' needs train.init_from" in capsys.readouterr().err
    assert main([*base, '--out', str(tmp_path / 'd'), '--set', 'train.trainable=encoder']) == 2
    assert 'train.trainable' in capsys.readouterr().err
    assert not (tmp_path / 'c').exists() and not (tmp_path / 'd').exists()  # refused, none made


def test_the_device_is_chosen_and_logged(
    balls_data: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture,
) -> None:
    argv = ['train-dlp', '--config', str(TINY), '--data', str(balls_data), '--no-progress',
            '--set', 'train.max_steps=2']  # fmt: skip
    with caplog.at_level(logging.INFO, logger='dlp_training.distributed'):
        assert main([*argv, '--out', str(tmp_path / 'cpu'), '--device', 'cpu']) == 0
    assert any(r.getMessage().startswith('training on cpu') for r in caplog.records)
    if not torch.cuda.is_available():
        assert main([*argv, '--out', str(tmp_path / 'cuda'), '--device', 'cuda']) == 2
        assert '--device cuda: torch sees no CUDA GPU' in capsys.readouterr().err


def test_resume_after_kill_is_exact(balls_data: Path, tmp_path: Path) -> None:
    steps = ['--set', 'train.max_steps=30', '--set', 'train.checkpoint_every=4']
    straight = tmp_path / 'straight'
    subprocess.run(_train_cmd(balls_data, straight, *steps), check=True, capture_output=True)

    killed = tmp_path / 'killed'
    proc = subprocess.Popen(_train_cmd(balls_data, killed, *steps), stderr=subprocess.PIPE)
    last = killed / 'checkpoints' / 'last.pt'
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if last.is_file() and load_checkpoint(last)['step'] >= 8:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = load_checkpoint(last)  # the kill never leaves a broken checkpoint
    assert 8 <= state['step'] < 30, state['step']

    resume = [sys.executable, '-m', 'dlp_training', 'train-dlp', '--out', str(killed), '--resume',
              '--no-progress']  # fmt: skip
    subprocess.run(resume, check=True, capture_output=True)
    a, _, info_a = load_dlp(straight, 'last')
    b, _, info_b = load_dlp(killed, 'last')
    assert info_a['step'] == info_b['step'] == 30
    assert parameter_digest(a) == parameter_digest(b), 'resumed run diverged from the straight run'


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(
    balls_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / 'run'
    sets = [
        'train.lr=1e8',
        'train.grad_clip=0',
        'train.checkpoint_every=1',
        'train.lr_ramp_steps=0',
    ]
    cmd = _train_cmd(balls_data, out, *(x for s in sets for x in ('--set', s)))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert 'non-finite loss' in proc.stderr and 'last good checkpoint' in proc.stderr
    state = load_checkpoint(out / 'checkpoints' / 'last.pt')
    assert all(torch.isfinite(v).all() for v in state['model'].values() if v.is_floating_point())


def test_two_ddp_processes_stay_in_sync(balls_data: Path, tmp_path: Path) -> None:
    out = tmp_path / 'ddp'
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
           '--master_port', str(29500 + os.getpid() % 1000), '-m', 'dlp_training', 'train-dlp',
           '--config', str(TINY), '--data', str(balls_data), '--out', str(out), '--no-progress',
           '--set', 'train.max_steps=6', '--set', 'train.threads=1']  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    digests = [json.loads((out / 'sync' / f'rank_{r}.json').read_text())['digest'] for r in (0, 1)]
    assert digests[0] == digests[1], 'DDP ranks ended with different parameters'
    model, _, info = load_dlp(out, 'last')
    assert info['step'] == 6 and parameter_digest(model) == digests[0]


def test_frame_size_mismatch_is_refused(
    balls_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / 'run'
    argv = ['train-dlp', '--config', str(TINY), '--data', str(balls_data), '--out', str(out),
            '--no-progress', '--set', 'model.image_size=32']  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert '64x64 frames' in err and '32x32 images' in err and '--size 32' in err
    assert not (out / 'checkpoints').exists()


def _run(balls_data: Path) -> Callable[[Path, list[str]], None]:
    def run(out: Path, extra: list[str]) -> None:
        argv = ['train-dlp', '--config', str(TINY), '--data', str(balls_data), '--out', str(out)]
        assert main([*argv, '--no-progress', *extra]) == 0

    return run


def test_train_records_average_the_log_window(
    balls_data: Path, check_window_means: Callable
) -> None:
    check_window_means(_run(balls_data))


def test_time_limit_stop_validates(balls_data: Path, check_time_limit_validates: Callable) -> None:
    check_time_limit_validates(_run(balls_data))
