"""``evaluate-dlp`` end to end: a tiny balls dataset, an untrained small DLP run, the report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from training.__main__ import main
from training.checkpoint import save_checkpoint
from training.config import to_dict
from training.dlp_config import DlpRunConfig
from training.models.dlp import Dlp, DlpConfig

SMALL = {
    'K': 4,
    'n_proposals': 6,
    'prior_channels': (8, 8),
    'glimpse_channels': (8, 8),
    'hidden_dim': 32,
    'decoder_channels': (8, 8),
    'bg_encoder_channels': (8, 8, 8, 8),
    'bg_decoder_channels': (8, 8, 8, 8),
}


@pytest.fixture(scope='module')
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 balls episodes x 12 frames at 64 px: one train, one val, one test episode."""
    root = tmp_path_factory.mktemp('eval_data')
    bags, data = root / 'bags', root / 'data'
    record = ['record-synthetic', 'balls', '--episodes', '3', '--frames', '12']
    assert main([*record, '--out', str(bags)]) == 0
    build = ['build-dataset', '--bags', *(str(p) for p in sorted(bags.glob('episode_*/')))]
    build += ['--topic', '/camera/image_raw', '--fps', '10', '--size', '64', '--no-progress']
    assert main([*build, '--out', str(data)]) == 0
    return data


def make_run(path: Path, image_size: int = 64) -> Path:
    """A run directory holding an untrained small DLP as checkpoints/last.pt."""
    torch.manual_seed(0)
    config = DlpRunConfig(model=DlpConfig(S=image_size, **SMALL))
    model = Dlp(config.model)
    state = {'model': model.state_dict(), 'step': 0, 'config': to_dict(config)}
    save_checkpoint(path / 'checkpoints' / 'last.pt', state)
    return path


def evaluate(run: Path, data: Path, out: Path, *extra: str) -> int:
    argv = ['evaluate-dlp', '--run', str(run), '--data', str(data), '--out', str(out)]
    return main([*argv, '--batch', '8', '--no-progress', *extra])


def test_report_of_an_untrained_run(dataset: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / 'report'
    assert evaluate(make_run(tmp_path / 'run'), dataset, out) == 0
    assert 'report ->' in capsys.readouterr().out
    report = json.loads((out / 'report.json').read_text())
    assert report['format'] == 'dlp_ros.dlp_evaluation' and report['version'] == 1
    assert report['split'] == 'test' and report['fit_split'] == 'train'
    assert report['image_size'] == 64 and report['n_particles'] == 4
    assert report['episodes'] == 1 and report['frames'] == 12 and report['step'] == 0
    rec = report['reconstruction']
    assert rec['frames'] == 12 and 0 < rec['psnr_db'] < 100 and -1 <= rec['ssim'] <= 1
    loc = report['localisation']
    assert loc['frames'] == 12 and loc['visible_objects'] == 36  # 3 balls, always visible
    assert 0 <= loc['mean_particles_on'] <= 4 and 0 <= loc['matched'] <= 36
    assert loc['recall'] is not None and 0 <= loc['recall'] <= 1
    assert loc['mean_error_px'] is None or loc['mean_error_px'] >= 0
    # balls have no pusher: skipped with a reason; the per-episode probe runs on each ball
    assert report['mafl']['pusher'] is None and 'pusher' in report['skipped']['mafl.pusher']
    per_episode = report['mafl']['per_episode']
    assert per_episode['pairs'] == 3 and per_episode['test_frames'] == 18
    assert per_episode['error_px'] >= 0
    assert per_episode['error_percent'] == pytest.approx(100 * per_episode['error_px'] / 64)
    figure = cv2.imread(str(out / 'report.png'))
    assert figure is not None and figure.shape[1] == 4 * 160 and figure.shape[0] > 4 * 160
    assert sorted(p.name for p in out.iterdir()) == ['report.json', 'report.png']  # no tmp files


def test_pusher_probe_and_max_frames(dataset: Path, tmp_path: Path) -> None:
    data = tmp_path / 'data'
    shutil.copytree(dataset, data)
    for labels in (data / 'episodes').glob('*.labels.npz'):  # call ball 0 the pusher
        with np.load(labels) as f:
            arrays = dict(f)
        arrays['gt_names'] = np.array(['pusher', *arrays['gt_names'][1:].tolist()])
        np.savez(labels, **arrays)
    out = tmp_path / 'report'
    run = make_run(tmp_path / 'run')
    assert (
        evaluate(run, data, out, '--split', 'val', '--max-frames', '6', '--figure-rows', '2') == 0
    )
    report = json.loads((out / 'report.json').read_text())
    assert report['split'] == 'val' and report['frames'] == 6 and 'skipped' in report
    pusher = report['mafl']['pusher']
    assert pusher['fit_frames'] == 12 and pusher['test_frames'] == 6
    for entry in (pusher, pusher['plus']):
        assert entry['error_px'] >= 0
        assert entry['error_percent'] == pytest.approx(100 * entry['error_px'] / 64)
    assert report['mafl']['per_episode']['test_frames'] == 9  # 3 balls x 3 of 6 frames
    assert cv2.imread(str(out / 'report.png')).shape[0] < 3 * 160


def test_bad_inputs_are_refused_without_a_report(dataset: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / 'report'
    (tmp_path / 'empty_run').mkdir()
    assert evaluate(tmp_path / 'empty_run', dataset, out) == 2
    assert 'no checkpoint' in capsys.readouterr().err
    assert not out.exists()

    assert evaluate(make_run(tmp_path / 'run32', image_size=32), dataset, out) == 2
    err = capsys.readouterr().err
    assert '64x64' in err and '32x32' in err and '--size 32' in err
    assert not out.exists()

    run = make_run(tmp_path / 'run')
    assert evaluate(run, tmp_path / 'nowhere', out) == 2
    assert 'not a dataset' in capsys.readouterr().err
    assert evaluate(run, dataset, out, '--batch', '0') == 2
    assert '--batch must be >= 1' in capsys.readouterr().err
    assert not out.exists()
