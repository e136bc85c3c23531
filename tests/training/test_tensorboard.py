"""TensorBoard event files of real tiny training runs, read back with tensorboard's
EventAccumulator: the scalars of metrics.jsonl and the DLP's evaluation grids; without the
tensorboard package, one log line and no event file."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from dlp_training import tensorboard_log
from dlp_training.__main__ import main

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
DLP_TINY = ROOT / 'dlp_training' / 'configs' / 'dlp_tiny.yaml'
DYN_TINY = ROOT / 'dlp_training' / 'configs' / 'dynamics_tiny.yaml'
SHORT = ['--set', 'train.max_steps=10', '--set', 'train.log_every=5',
         '--set', 'train.eval_every=5', '--set', 'train.checkpoint_every=5',
         '--set', 'train.threads=1']  # fmt: skip


@pytest.fixture(scope='module')
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A balls dataset (3 episodes x 12 frames), a tiny DLP trained on it and its latents."""
    root = tmp_path_factory.mktemp('tensorboard')
    bags = root / 'bags'
    argv = ['record-synthetic', 'balls', '--episodes', '3', '--frames', '12', '--out', str(bags)]
    assert main(argv) == 0
    assert main(['build-dataset', '--bags', str(bags), '--topic', '/camera/image_raw', '--fps',
                 '10', '--split', '0.34,0.33,0.33', '--no-progress',
                 '--out', str(root / 'data')]) == 0  # fmt: skip
    assert main(['train-dlp', '--config', str(DLP_TINY), '--data', str(root / 'data'), '--out',
                 str(root / 'dlp'), '--no-progress', *SHORT]) == 0  # fmt: skip
    assert main(['encode-dataset', '--dlp', str(root / 'dlp'), '--data', str(root / 'data'),
                 '--out', str(root / 'latents'), '--threads', '1',
                 '--no-progress']) == 0  # fmt: skip
    return {'root': root, 'dlp': root / 'dlp', 'latents': root / 'latents'}


def read_events(run: Path) -> tuple[dict[str, dict[int, float]], dict[str, list[int]]]:
    """The run directory's events: scalars {tag: {step: value}} and images {tag: [steps]}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert list(run.glob('events.out.tfevents.*')), f'no event file in {run}'
    acc = EventAccumulator(str(run), size_guidance={'scalars': 0, 'images': 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = {t: {e.step: e.value for e in acc.Scalars(t)} for t in tags['scalars']}
    images = {t: [e.step for e in acc.Images(t)] for t in tags['images']}
    return scalars, images


def metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / 'metrics.jsonl').read_text().splitlines()]


def test_train_dlp_writes_scalars_and_grids(data: dict[str, Path]) -> None:
    pytest.importorskip('tensorboard')
    scalars, images = read_events(data['dlp'])
    for tag in ('train/loss', 'train/lr', 'train/grad_norm', 'train/images_per_s', 'val/psnr',
                'val/loss'):  # fmt: skip
        assert tag in scalars, sorted(scalars)
    for record in metrics(data['dlp']):
        tag = f'{record["split"]}/loss'
        assert scalars[tag][record['step']] == pytest.approx(record['loss'], rel=1e-6)
    assert 'train/wall_s' not in scalars and 'train/step' not in scalars
    assert images == {'val/grid': [5, 10]}


def test_train_dynamics_writes_scalars(data: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip('tensorboard')
    run = tmp_path / 'dyn'
    assert main(['train-dynamics', '--config', str(DYN_TINY), '--latents', str(data['latents']),
                 '--out', str(run), '--no-progress', *SHORT]) == 0  # fmt: skip
    scalars, images = read_events(run)
    assert sorted(scalars['train/loss']) == [5, 10] and sorted(scalars['train/horizon']) == [5, 10]
    rmse = [r['position_rmse_mean'] for r in metrics(run) if r['split'] == 'val']
    assert [scalars['val/position_rmse_mean'][s] for s in (5, 10)] == pytest.approx(rmse)
    assert not images


def test_without_tensorboard_it_says_so_once(
    data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    monkeypatch.setattr(tensorboard_log, 'summary_writer_class', lambda: None)
    monkeypatch.setattr(tensorboard_log, '_said_off', False)
    with caplog.at_level(logging.INFO, logger='dlp_training.tensorboard_log'):
        for name in ('a', 'b'):
            assert main(['train-dynamics', '--config', str(DYN_TINY), '--latents',
                         str(data['latents']), '--out', str(tmp_path / name), '--no-progress',
                         *SHORT]) == 0  # fmt: skip
    said = [r for r in caplog.records if 'TensorBoard output is off' in r.getMessage()]
    assert len(said) == 1
    assert not list(tmp_path.glob('*/events.out.tfevents.*'))
    assert (tmp_path / 'a' / 'metrics.jsonl').is_file()
