"""``evaluate-dlp`` end to end: a tiny balls dataset, an untrained small DLP run, the report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from dlp_training.__main__ import main
from dlp_training.checkpoint import save_checkpoint
from dlp_training.config import to_dict
from dlp_training.data.dataset import Dataset
from dlp_training.dlp_config import DlpRunConfig
from dlp_training.evaluate_dlp import Encoded, object_metrics, published
from dlp_training.export import export_random_bundle
from dlp_training.models.dlp import Dlp, DlpConfig
from dlp_training.models.dynamics import DynamicsConfig

ROOT = Path(__file__).resolve().parents[2]

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
    before = torch.get_num_threads()
    try:
        assert evaluate(make_run(tmp_path / 'run'), dataset, out, '--threads', '2') == 0
        assert torch.get_num_threads() == 2  # --threads reaches torch, as in the other commands
    finally:
        torch.set_num_threads(before)
    printed = capsys.readouterr().out
    assert 'report ->' in printed and 'IDF1' in printed and 'duplicates' in printed
    report = json.loads((out / 'report.json').read_text())
    assert report['format'] == 'dlp_ros.dlp_evaluation' and report['version'] == 1
    assert report['split'] == 'test' and report['fit_split'] == 'train'
    assert report['threads'] == 2
    assert report['image_size'] == 64 and report['n_particles'] == 4
    assert report['episodes'] == 1 and report['frames'] == 12 and report['step'] == 0
    rec = report['reconstruction']
    assert rec['frames'] == 12 and 0 < rec['psnr_db'] < 100 and -1 <= rec['ssim'] <= 1
    loc = report['localisation']
    assert loc['frames'] == 12 and loc['visible_objects'] == 36  # 3 balls, always visible
    assert 0 <= loc['mean_particles_on'] <= 4 and 0 <= loc['matched'] <= 36
    assert loc['recall'] is not None and 0 <= loc['recall'] <= 1
    assert loc['mean_error_px'] is None or loc['mean_error_px'] >= 0
    counts, identity = report['counts'], report['identity']
    assert counts['per_frame']['frames'] == counts['tracked']['frames'] == 12
    assert counts['per_frame']['particles_on'] == round(loc['mean_particles_on'] * 12)
    assert identity['object_frames'] == 36 and identity['episodes'] == 1
    assert identity['detections'] == counts['tracked']['particles_on']
    total = identity['object_frames'] + identity['detections']
    assert identity['idf1'] == pytest.approx(2 * identity['idtp'] / total)
    # balls have no pusher: skipped with a reason; the per-episode probe runs on each ball
    assert report['mafl']['pusher'] is None and 'pusher' in report['skipped']['mafl.pusher']
    per_episode = report['mafl']['per_episode']
    assert per_episode['pairs'] == 3 and per_episode['test_frames'] == 18
    assert per_episode['error_px'] >= 0
    assert per_episode['error_percent'] == pytest.approx(100 * per_episode['error_px'] / 64)
    figure = cv2.imread(str(out / 'report.png'))
    assert figure is not None and figure.shape[1] == 4 * 160 and figure.shape[0] > 4 * 160
    assert sorted(p.name for p in out.iterdir()) == ['report.json', 'report.png']  # no tmp files
    assert 'published' not in report
    # --nms-iou: the tracked particles as published, and a fifth column of them
    nms = tmp_path / 'nms'
    assert evaluate(tmp_path / 'run', dataset, nms, '--nms-iou', '0.3') == 0
    published = json.loads((nms / 'report.json').read_text())['published']
    assert published['nms_iou'] == 0.3
    assert published['counts']['frames'] == 12
    assert cv2.imread(str(nms / 'report.png')).shape[1] == 5 * 160


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
    assert evaluate(run, dataset, out, '--nms-iou', '1.5') == 2
    assert '--nms-iou must be >= 0 and <= 1, got 1.5' in capsys.readouterr().err
    assert not out.exists()


def test_object_metrics_of_particles_on_the_ground_truth(dataset: Path) -> None:
    """Particles placed exactly on the balls, one per ball, one identity each: no duplicates,
    the on-count equals the objects in view, IDF1 1 and no switch; a spare on particle far away
    is a duplicate and a false track."""
    data = Dataset.open(dataset)
    name = data.episodes('test')[0].name
    truth = data.labels(name).ground_truth
    t, n = truth.visible.shape
    mu = truth.xy / 64 * 2 - 1  # (T, 3, 2) model units
    reseeded = np.zeros((t, n), bool)
    reseeded[0] = True
    code = Encoded(name, mu, np.zeros_like(mu), np.ones((t, n)), truth, reseeded)
    skipped: dict[str, str | None] = {}
    out = object_metrics([code], [code], 64, skipped)
    assert not skipped
    for key in ('per_frame', 'tracked'):
        c = out['counts'][key]
        assert c['duplicate_fraction'] == 0.0 and c['particles_on'] == int(truth.visible.sum())
        assert c['on_ratio_mean'] == 1.0 and c['on_within_fraction'] == 1.0
    i = out['identity']
    assert i['idf1'] == 1.0 and i['id_switches'] == 0 and i['tracker_ids'] == n

    spare = np.concatenate([mu, np.full((t, 1, 2), 0.99)], axis=1)  # (T, 4, 2): a far corner
    code = Encoded(name, spare, np.zeros_like(spare), np.ones((t, n + 1)), truth,
                   np.concatenate([reseeded, reseeded[:, :1]], axis=1))  # fmt: skip
    out = object_metrics([code], [code], 64, {})
    c, i = out['counts']['tracked'], out['identity']
    assert c['duplicate_fraction'] == pytest.approx(1 / (n + 1))
    assert c['on_ratio_mean'] == pytest.approx((n + 1) / n) and c['on_within_fraction'] == 0.0
    assert i['idf1'] == pytest.approx(2 * n / (2 * n + 1)) and i['idfp'] == t


def test_published_metrics_suppress_a_copy_of_a_particle(dataset: Path) -> None:
    """With nms_iou, a second particle exactly on each ball (as two tracker slots on one
    spot) is published off: duplicates from 100 % to 0, IDF1 back to 1; without it the copies
    count."""
    data = Dataset.open(dataset)
    name = data.episodes('test')[0].name
    truth = data.labels(name).ground_truth
    t, n = truth.visible.shape
    mu = truth.xy / 64 * 2 - 1  # (T, 3, 2)
    both = np.concatenate([mu, mu], axis=1)  # (T, 6, 2): every ball twice
    reseeded = np.zeros((t, 2 * n), bool)
    reseeded[0] = True
    presence = np.concatenate([np.full((t, n), 0.9), np.full((t, n), 0.8)], axis=1)
    scale = np.full_like(both, -2.0)  # 7.6 px boxes, the balls 16 px apart or more
    code = Encoded(name, both, np.zeros_like(both), presence, truth, reseeded, scale)
    out = object_metrics([code], [code], 64, {}, published([code], 64, 0.3), 0.3)
    assert out['counts']['tracked']['duplicate_fraction'] == 1.0  # every one crowded
    assert out['counts']['tracked']['on_ratio_mean'] == pytest.approx(2.0)
    p = out['published']
    assert p['nms_iou'] == 0.3
    assert p['counts']['duplicate_fraction'] == 0.0 and p['counts']['on_ratio_mean'] == 1.0
    assert p['identity']['idf1'] == 1.0 and p['identity']['tracker_ids'] == n
    assert p['localisation']['mean_error_px'] == pytest.approx(0.0, abs=1e-6)
    assert 'published' not in object_metrics([code], [code], 64, {})


def test_bundle_gives_the_run_metrics(dataset: Path, tmp_path: Path) -> None:
    """evaluate-dlp --bundle (onnxruntime) measures what --run measures on the same weights."""
    dlp_cfg = yaml.safe_load((ROOT / 'dlp_training/configs/dlp_tiny.yaml').read_text())['model']
    dyn_cfg = yaml.safe_load((ROOT / 'dlp_training/configs/dynamics_tiny.yaml').read_text())[
        'model'
    ]
    bundle = tmp_path / 'bundle'
    dlp_config = DlpConfig.from_dict({**dlp_cfg, 'S': 64})
    _, dlp, _ = export_random_bundle(
        dlp_config, DynamicsConfig.from_dlp(dlp_config, **dyn_cfg), bundle
    )
    run = tmp_path / 'run'
    state = {'model': dlp.state_dict(), 'step': 0,
             'config': to_dict(DlpRunConfig(model=dlp.config))}  # fmt: skip
    save_checkpoint(run / 'checkpoints' / 'last.pt', state)
    reports = {}
    for name, source in (('run', ['--run', str(run)]), ('bundle', ['--bundle', str(bundle)])):
        argv = ['evaluate-dlp', *source, '--data', str(dataset), '--out', str(tmp_path / name),
                '--batch', '8', '--no-progress', '--checkpoint', 'last']  # fmt: skip
        assert main(argv) == 0
        reports[name] = json.loads((tmp_path / name / 'report.json').read_text())
    torch_report, onnx_report = reports['run'], reports['bundle']
    assert onnx_report['bundle'] == str(bundle.resolve())
    assert torch_report['bundle'] is None and onnx_report['n_particles'] == dlp.config.K
    for section, key in (('reconstruction', 'psnr_db'), ('reconstruction', 'ssim'),
                         ('localisation', 'mean_error_px')):  # fmt: skip
        assert onnx_report[section][key] == pytest.approx(torch_report[section][key], abs=1e-3)
    assert onnx_report['localisation']['matched'] == torch_report['localisation']['matched']
    for key in ('per_frame', 'tracked'):
        got, want = onnx_report['counts'][key], torch_report['counts'][key]
        assert got['particles_on'] == want['particles_on'], key
        assert want['particles_on'] > 0, key  # something to count
        assert got['duplicates'] == want['duplicates'], key
    assert torch_report['identity']['tracker_ids'] >= dlp.config.K
    for key in ('idtp', 'detections', 'id_switches', 'tracker_ids'):
        assert onnx_report['identity'][key] == torch_report['identity'][key], key


def test_a_dataset_all_in_the_test_split(dataset: Path, tmp_path: Path) -> None:
    """Fresh-seed evaluation (build-dataset --split 0,0,1): no train split to fit the pusher
    probe on, which is skipped with the reason; everything else is measured."""
    data = tmp_path / 'all_test'
    bags = sorted((dataset.parent / 'bags').glob('episode_*/'))
    build = ['build-dataset', '--bags', *(str(p) for p in bags), '--topic', '/camera/image_raw',
             '--fps', '10', '--size', '64', '--split', '0,0,1', '--no-progress']  # fmt: skip
    assert main([*build, '--out', str(data)]) == 0
    out = tmp_path / 'report'
    assert evaluate(make_run(tmp_path / 'run'), data, out) == 0
    report = json.loads((out / 'report.json').read_text())
    assert report['episodes'] == 3 and report['frames'] == 36
    assert report['identity']['object_frames'] == 3 * 36 and report['counts'] is not None
    assert 'mafl.pusher' in report['skipped']
