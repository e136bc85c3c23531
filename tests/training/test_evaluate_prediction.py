"""``evaluate-prediction`` on tiny runs: a balls dataset, a DLP and a dynamics model trained for a
few steps on it; the report, the charts and the GIF, the baselines, and bad input."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from dlp_training.__main__ import main
from dlp_training.checkpoint import load_checkpoint, save_checkpoint
from dlp_training.config import to_dict
from dlp_training.data.dataset import Dataset, write_manifest
from dlp_training.dlp_config import load_dlp
from dlp_training.dynamics_config import DynamicsRunConfig, load_dynamics
from dlp_training.flow_baseline import constant_flow
from dlp_training.models.dynamics import ParticleDynamics
from dlp_training.prediction import (
    TorchPredictor,
    action_window,
    constant_velocity,
    hold_last,
    select_clips,
)

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
DLP_TINY = ROOT / 'dlp_training' / 'configs' / 'dlp_tiny.yaml'
DYN_TINY = ROOT / 'dlp_training' / 'configs' / 'dynamics_tiny.yaml'
FRAMES = 20  # per episode; the test split is one episode
C, N = 3, 4  # context, horizon: two non-overlapping clips in the test episode
ACTION_NAMES = ['linear.x', 'linear.y', 'linear.z', 'angular.x', 'angular.y', 'angular.z']


@pytest.fixture(scope='module')
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """dataset (3 balls episodes x 20 frames: train, val, test), a DLP trained 6 steps (then
    its particles switched on), its latents and a dynamics model (dynamics_tiny: H = 2) trained
    6 steps on them."""
    root = tmp_path_factory.mktemp('predict')
    bags, data = root / 'bags', root / 'data'
    record = ['record-synthetic', 'balls', '--episodes', '3', '--frames', str(FRAMES)]
    assert main([*record, '--out', str(bags)]) == 0
    build = ['build-dataset', '--bags', *(str(p) for p in sorted(bags.glob('episode_*/')))]
    build += ['--topic', '/camera/image_raw', '--fps', '10', '--size', '64', '--no-progress']
    assert main([*build, '--out', str(data)]) == 0
    dlp, latents, dyn = root / 'dlp', root / 'latents', root / 'dyn'
    short = ['--set', 'train.max_steps=6', '--set', 'train.eval_every=6',
             '--set', 'train.checkpoint_every=6']  # fmt: skip
    assert main(['train-dlp', '--config', str(DLP_TINY), '--data', str(data), '--out', str(dlp),
                 '--no-progress', *short, '--set', 'train.warmup_steps=2',
                 '--set', 'train.threads=1']) == 0  # fmt: skip
    for name in ('best', 'last'):  # switch the particles on (transparency ~0.98) to match them
        path = dlp / 'checkpoints' / f'{name}.pt'
        state = load_checkpoint(path)
        head = [k for k in state['model'] if k.startswith('particle_encoder.head.')][-1]
        state['model'][head][6] += 4.0  # transparency logit (dlp_training.models.dlp)
        save_checkpoint(path, state)
    assert main(['encode-dataset', '--dlp', str(dlp), '--data', str(data), '--out', str(latents),
                 '--threads', '1', '--no-progress']) == 0  # fmt: skip
    assert main(['train-dynamics', '--config', str(DYN_TINY), '--latents', str(latents),
                 '--out', str(dyn), '--no-progress', *short]) == 0  # fmt: skip
    return {'root': root, 'data': data, 'dlp': dlp, 'dyn': dyn}


def evaluate(runs: dict[str, Path], out: Path, *extra: str, dyn: Path | None = None,
             data: Path | None = None, context: int = C, horizon: int = N) -> int:  # fmt: skip
    argv = ['evaluate-prediction', '--dlp', str(runs['dlp']), '--dynamics',
            str(dyn or runs['dyn']), '--data', str(data or runs['data']), '--context',
            str(context), '--horizon', str(horizon), '--out', str(out), '--threads', '1',
            '--no-progress']  # fmt: skip
    return main([*argv, *extra])


def derived_dynamics(runs: dict[str, Path], name: str, zero: bool = False,
                     **model: object) -> Path:  # fmt: skip
    """A dynamics run made from the trained one: its output layers zeroed, or a new model with
    other ``model`` fields (random weights, not the identity), trained on the same latents."""
    state = load_checkpoint(runs['dyn'] / 'checkpoints' / 'last.pt')
    dynamics, config, _ = load_dynamics(runs['dyn'], 'last')
    if model:
        train = config.train
        if 'action_dim' in model:
            train = replace(train, action_columns=list(range(int(model['action_dim']))))
        train = replace(train, burn_in=max(train.burn_in, int(model.get('history', 0))))
        config = DynamicsRunConfig(replace(config.model, identity_init=False, **model), train)
        torch.manual_seed(1)
        dynamics = ParticleDynamics(config.model)
    if zero:
        dynamics.zero_output_()
    latents = dict(state['latents'])
    if config.model.action_dim:
        latents['action_names'] = ACTION_NAMES[: config.model.action_dim]
    out = runs['root'] / name
    save_checkpoint(out / 'checkpoints' / 'last.pt', {
        'model': dynamics.state_dict(), 'step': state['step'], 'config': to_dict(config),
        'latents': latents,
    })  # fmt: skip
    return out


IMAGE_SERIES_EXPECTED = ('model', 'model_decoded', 'model_residual', 'model_gated', 'model_warped',
                         'model_warped_gated',
                         'last_frame', 'const_velocity', 'const_flow',
                         'last_frame_decoded')  # fmt: skip


def test_report_charts_and_gif(runs: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / 'report'
    assert evaluate(runs, out) == 0
    assert 'report ->' in capsys.readouterr().out
    report = json.loads((out / 'report.json').read_text())
    assert report['format'] == 'dlp_ros.prediction_evaluation' and report['version'] == 1
    assert report['predictor'] == 'torch' and report['bundle'] is None
    assert (report['context'], report['horizon'], report['history']) == (C, N, 2)
    assert report['split'] == 'test' and report['n_particles'] == 4 and report['dt'] == 0.1
    assert report['clips'] == 2 and report['windows'] == 2  # starts 0 and 7 of 20 frames
    assert [c['start'] for c in report['clip_list']] == [0, C + N]
    assert report['dynamics']['action_columns'] is None and report['action_dim'] == 0
    per_step = report['per_step']
    for metric in ('psnr_db', 'ssim'):
        assert set(per_step[metric]) == set(IMAGE_SERIES_EXPECTED)
    for metric in ('position_error_px', 'recall', 'particles_on'):
        assert set(per_step[metric]) == {'model', 'last_frame', 'const_velocity'}
    for metric, series in per_step.items():
        for name, values in series.items():
            assert len(values) == N, (metric, name)
            assert report['mean'][metric][name] is None or np.isfinite(
                report['mean'][metric][name]
            )
    assert all(-1 <= v <= 1 for v in per_step['ssim']['model'])
    assert all(0 <= v <= 1 for v in per_step['recall']['model'])
    assert all(v == 4 for v in per_step['particles_on']['last_frame'])  # all on: matched
    assert all(v >= 0 for v in per_step['position_error_px']['const_velocity'])
    # N < 10: no step-10 values, said so; the mean comparison is there
    assert report['step_10'] is None and 'step_10' in report['skipped']
    mean = report['comparison']['psnr_db']['const_velocity']['mean']
    assert mean['model'] == report['mean']['psnr_db']['model']
    assert mean['model_better'] == (mean['model'] > mean['baseline'])
    assert set(report['comparison']['psnr_db']) == {'last_frame', 'const_velocity', 'const_flow',
                                                    'last_frame_decoded'}  # fmt: skip
    best = report['best_baseline']['psnr_db']  # the highest mean of the three baselines
    means = {b: report['mean']['psnr_db'][b] for b in ('last_frame', 'const_velocity',
                                                        'const_flow')}  # fmt: skip
    assert best['series'] == max(means, key=means.__getitem__)
    assert best['mean'] == means[best['series']]
    assert best['model_minus_best'] == report['mean']['psnr_db']['model'] - best['mean']
    best_err = report['best_baseline']['position_error_px']  # lower is better; no flow series
    errs = {b: report['mean']['position_error_px'][b] for b in ('last_frame', 'const_velocity')}
    assert best_err['series'] == min(errs, key=errs.__getitem__)
    assert report['flow_baseline']['method'] == 'farneback'
    names = sorted(p.name for p in out.iterdir())
    assert names == ['position_error_px.png', 'prediction.gif', 'prediction.png', 'psnr_db.png',
                     'psnr_db_forms.png', 'recall.png', 'report.json', 'ssim.png',
                     'ssim_forms.png']  # no temporary files # fmt: skip
    chart = cv2.imread(str(out / 'psnr_db.png'))
    assert chart is not None and chart.shape == (400, 640, 3)
    ok, gif = cv2.imreadanimation(str(out / 'prediction.gif'))
    assert ok and len(gif.frames) == C + N  # context frames, then the predicted steps
    assert gif.frames[0].shape[1] == 4 * 128  # true | model | constant velocity | last frame
    assert cv2.imread(str(out / 'prediction.png')) is not None
    assert not list(tmp_path.glob('.report.*'))

    # an existing report is replaced only with --overwrite
    assert evaluate(runs, out) == 2
    assert 'already exists' in capsys.readouterr().err
    assert evaluate(runs, out, '--overwrite', '--gif-clips', '0', horizon=10) == 0
    report = json.loads((out / 'report.json').read_text())
    assert report['clips'] == 1 and not (out / 'prediction.gif').exists()
    for metric, series in report['per_step'].items():  # N >= 10: the step-10 values
        assert report['step_10'][metric] == {name: v[9] for name, v in series.items()}
    entry = report['comparison']['position_error_px']['last_frame']['step_10']
    assert entry['model'] == report['step_10']['position_error_px']['model']
    assert entry['model_better'] == (entry['model'] < entry['baseline'])  # lower is better


def test_last_frame_psnr_is_the_direct_computation(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / 'report'
    assert evaluate(runs, out, '--clips', '1', '--split', 'val') == 0
    report = json.loads((out / 'report.json').read_text())
    clip = report['clip_list'][0]
    frames = Dataset.open(runs['data']).frames(clip['episode']).astype(np.float64) / 255
    s = clip['start']
    last, future = frames[s + C - 1], frames[s + C : s + C + N]  # (S, S, 3), (N, S, S, 3)
    mse = ((future - last[None]) ** 2).reshape(N, -1).mean(-1)
    np.testing.assert_allclose(report['per_step']['psnr_db']['last_frame'],
                               10 * np.log10(1 / mse), rtol=1e-9)  # fmt: skip
    raw = Dataset.open(runs['data']).frames(clip['episode'])
    flow = constant_flow(raw[s + C - 2], raw[s + C - 1], N).astype(np.float64) / 255
    mse = ((future - flow) ** 2).reshape(N, -1).mean(-1)
    np.testing.assert_allclose(report['per_step']['psnr_db']['const_flow'],
                               10 * np.log10(1 / mse), rtol=1e-9)  # fmt: skip


def test_constant_velocity_extrapolates_exactly() -> None:
    k, t = 3, 4
    start = np.array([[0.25, -0.5], [0.0, 0.125], [-0.75, 0.5]], np.float32)  # (K, 2)
    velocity = np.array([[0.0625, 0.0], [-0.125, 0.03125], [0.25, -0.0625]], np.float32)
    steps = np.arange(t + 5, dtype=np.float32)[:, None, None]
    mu = start[None] + steps * velocity[None]  # (T + 5, K, 2), exact in float32
    observed = {'mu': mu[:t], 'logvar': np.zeros((t, k, 2), np.float32),
                'transparency': np.linspace(0, 1, t * k, dtype=np.float32).reshape(t, k, 1),
                'bg_features': np.arange(t * 2, dtype=np.float32).reshape(t, 2)}  # fmt: skip
    predicted = constant_velocity(observed, 5)
    np.testing.assert_array_equal(predicted['mu'], mu[t:])
    for name in ('logvar', 'transparency', 'bg_features'):  # held at the last observed frame
        np.testing.assert_array_equal(predicted[name], np.repeat(observed[name][-1:], 5, 0))
    np.testing.assert_array_equal(hold_last(observed, 2)['mu'], mu[[t - 1, t - 1]])
    with pytest.raises(ValueError, match='>= 2 observed frames'):
        constant_velocity({'mu': mu[:1]}, 3)


def test_zeroed_dynamics_is_the_last_frame_baseline(runs: dict[str, Path], tmp_path: Path) -> None:
    zeroed = derived_dynamics(runs, 'dyn_zero', zero=True)
    # the predictor itself: every predicted step is the last observed frame
    dlp, _, _ = load_dlp(runs['dlp'], 'best')
    predictor = TorchPredictor(dlp, load_dynamics(zeroed, 'last')[0])
    frames = Dataset.open(runs['data']).frames('episode_0001')[:C]
    observed = predictor.observe(frames)
    predicted = predictor.predict(observed, N, None)
    for name, value in hold_last(observed, N).items():
        np.testing.assert_array_equal(predicted[name], value, err_msg=name)

    out = tmp_path / 'report'
    assert evaluate(runs, out, dyn=zeroed) == 0
    per_step = json.loads((out / 'report.json').read_text())['per_step']
    for metric in ('position_error_px', 'recall', 'particles_on'):
        assert per_step[metric]['model'] == per_step[metric]['last_frame'], metric
    for metric in ('psnr_db', 'ssim'):  # the same frames (SSIM: up to float64 rounding)
        model, decoded = per_step[metric]['model'], per_step[metric]['last_frame_decoded']
        np.testing.assert_allclose(model, decoded, rtol=1e-12, err_msg=metric)
    assert all(v is not None for v in per_step['position_error_px']['model'])


def with_actions(runs: dict[str, Path], tmp_path: Path) -> Path:
    """The dataset with (T, 6) commands (entries 0 and 1 non-zero), invalid at frames 0, 1."""
    data = tmp_path / 'data_actions'
    shutil.copytree(runs['data'], data)
    rng = np.random.default_rng(0)
    for labels in (data / 'episodes').glob('*.labels.npz'):
        with np.load(labels) as f:
            arrays = dict(f)
        actions = np.zeros((FRAMES, 6), np.float32)
        actions[:, :2] = rng.uniform(-1, 1, (FRAMES, 2))
        np.savez(labels, **arrays, actions=actions, action_valid=np.arange(FRAMES) >= 2)
    manifest = yaml.safe_load((data / 'manifest.yaml').read_text())
    manifest['action'] = {'topic': '/cmd', 'type': 'geometry_msgs/msg/TwistStamped', 'dim': 6,
                          'names': ACTION_NAMES}  # fmt: skip
    write_manifest(data, manifest)
    return data


def test_actions_are_the_datasets_aligned(runs: dict[str, Path], tmp_path: Path) -> None:
    data = with_actions(runs, tmp_path)
    dataset = Dataset.open(data)
    history = 2
    selection = select_clips(dataset, 'test', C, N, history, 10, [0, 1])
    reads = action_window(C, N, history)  # clip frames 1 .. 5: the first window starting at
    assert (reads.start, reads.stop) == (1, C + N - 1)  # 0 reads frame 1, invalid
    assert [c.start for c in selection.clips] == [1, 1 + C + N]
    assert selection.left_out['invalid_action_starts'] == 1
    labels = dataset.labels(selection.clips[0].episode)
    for clip in selection.clips:  # actions[s] is the command at clip frame s
        np.testing.assert_array_equal(
            clip.actions, labels.actions[clip.start : clip.start + C + N - 1, :2]
        )
    dyn = derived_dynamics(runs, 'dyn_actions', action_dim=2)
    out = tmp_path / 'report'
    assert evaluate(runs, out, dyn=dyn, data=data) == 0
    report = json.loads((out / 'report.json').read_text())
    assert report['action_dim'] == 2 and report['dynamics']['action_columns'] == [0, 1]
    assert [c['start'] for c in report['clip_list']] == [1, 1 + C + N]
    # the actions reach the model: other commands, other predictions
    dlp, _, _ = load_dlp(runs['dlp'], 'best')
    predictor = TorchPredictor(dlp, load_dynamics(dyn, 'last')[0])
    clip = selection.clips[0]
    observed = predictor.observe(dataset.frames(clip.episode)[clip.start : clip.start + C])
    a = predictor.predict(observed, N, clip.actions)['mu']
    b = predictor.predict(observed, N, np.zeros_like(clip.actions))['mu']
    assert not np.allclose(a, b)


def test_bad_input_is_refused_without_a_report(runs: dict[str, Path], tmp_path: Path,
                                               capsys) -> None:  # fmt: skip
    out = tmp_path / 'report'

    def fails(*needles: str, **kwargs: object) -> None:
        extra = kwargs.pop('extra', ())
        assert evaluate(runs, out, *extra, **kwargs) == 2
        err = capsys.readouterr().err
        assert all(n in err for n in needles), err
        assert not out.exists()

    fails('--horizon must be >= 1', horizon=0)
    fails('--context must be >= 2', context=1)
    fails('--context 3 is shorter than the dynamics history H = 4',
          dyn=derived_dynamics(runs, 'dyn_h4', history=4))  # fmt: skip
    fails('shorter than context + horizon = 3 + 18 = 21 frames', 'longest has 20', horizon=18)
    k5 = derived_dynamics(runs, 'dyn_k5', K=5)
    fails('(K, F, Fb) = (5, 4, 4)', 'has (4, 4, 4)', dyn=k5)
    fails('takes actions but episode', dyn=derived_dynamics(runs, 'dyn_act', action_dim=2))
    fails('no checkpoint', dyn=tmp_path)
    fails('either --bundle or --dlp', extra=('--bundle', str(tmp_path)))


@pytest.mark.parametrize('actions', [False, True], ids=['no_actions', 'actions'])
def test_bundle_gives_the_torch_metrics(runs: dict[str, Path], tmp_path: Path,
                                        actions: bool) -> None:  # fmt: skip
    """The exported graphs through dlp_ros.runtime measure what the torch models measure."""
    dyn = derived_dynamics(runs, 'dyn_bundle_actions', action_dim=2) if actions else runs['dyn']
    data = with_actions(runs, tmp_path) if actions else runs['data']
    bundle = tmp_path / 'bundle'
    assert main(['export', '--dlp', str(runs['dlp']), '--dynamics', str(dyn), '--out',
                 str(bundle), '--checkpoint', 'last', '--val-frames', '0']) == 0  # fmt: skip
    reports = {}
    for name, source in (('torch', ['--dlp', str(runs['dlp']), '--dynamics', str(dyn)]),
                         ('onnx', ['--bundle', str(bundle)])):  # fmt: skip
        out = tmp_path / name
        argv = ['evaluate-prediction', *source, '--data', str(data), '--context', str(C),
                '--horizon', str(N), '--out', str(out), '--checkpoint', 'last', '--threads', '1',
                '--gif-clips', '0', '--no-progress', '--compositing', 'warped']  # fmt: skip
        assert main(argv) == 0
        reports[name] = json.loads((out / 'report.json').read_text())
    torch_report, onnx_report = reports['torch'], reports['onnx']
    assert onnx_report['predictor'] == 'onnx' and onnx_report['bundle']['provider']
    assert onnx_report['clip_list'] == torch_report['clip_list']
    assert onnx_report['action_dim'] == torch_report['action_dim'] == (2 if actions else 0)
    if actions:
        assert onnx_report['bundle']['action_columns'] == [0, 1]
    # ONNX vs torch float32: about 1e-5 here; an action window shifted by one frame: 2e-2 dB
    tolerance = {'psnr_db': 1e-3, 'ssim': 1e-4, 'position_error_px': 1e-3, 'recall': 0,
                 'particles_on': 0}  # fmt: skip
    for metric, series in torch_report['per_step'].items():
        for name, values in series.items():
            np.testing.assert_allclose(
                onnx_report['per_step'][metric][name],
                values,
                atol=tolerance[metric],
                err_msg=f'{metric} {name}',
            )


def test_a_dataset_all_in_the_test_split(runs: dict[str, Path], tmp_path: Path) -> None:
    """Fresh-seed evaluation: every episode in the test split (build-dataset --split 0,0,1)."""
    data = tmp_path / 'all_test'
    bags = sorted((runs['root'] / 'bags').glob('episode_*/'))
    build = ['build-dataset', '--bags', *(str(p) for p in bags), '--topic', '/camera/image_raw',
             '--fps', '10', '--size', '64', '--split', '0,0,1', '--no-progress']  # fmt: skip
    assert main([*build, '--out', str(data)]) == 0
    assert len(Dataset.open(data).episodes('test')) == 3
    assert not Dataset.open(data).episodes('train')
    out = tmp_path / 'report'
    assert evaluate(runs, out, data=data) == 0
    report = json.loads((out / 'report.json').read_text())
    assert report['episodes'] == 3 and report['clips'] == 6  # two windows of 7 in 20 frames each
    assert all(v is not None for v in report['mean']['psnr_db'].values())


def zero_command_data(runs: dict[str, Path], tmp_path: Path) -> Path:
    """The dataset with (T, 2) commands that are all zero and all valid."""
    data = tmp_path / 'data_zero_commands'
    shutil.copytree(runs['data'], data)
    for labels in (data / 'episodes').glob('*.labels.npz'):
        with np.load(labels) as f:
            arrays = dict(f)
        np.savez(labels, **arrays, actions=np.zeros((FRAMES, 2), np.float32),
                 action_valid=np.ones(FRAMES, bool))  # fmt: skip
    manifest = yaml.safe_load((data / 'manifest.yaml').read_text())
    manifest['action'] = {'topic': '/cmd', 'type': 'geometry_msgs/msg/TwistStamped', 'dim': 2,
                          'names': ACTION_NAMES[:2]}  # fmt: skip
    write_manifest(data, manifest)
    return data


def test_actions_zero_on_camera_only_data(runs: dict[str, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """A model taking actions on a dataset without any: an error naming --actions zero by
    default; with it, the prediction of all-zero recorded commands, stated in the report."""
    dyn = derived_dynamics(runs, 'dyn_zero_actions', action_dim=2)
    bundle = tmp_path / 'bundle'
    assert main(['export', '--dlp', str(runs['dlp']), '--dynamics', str(dyn), '--out',
                 str(bundle), '--checkpoint', 'last', '--val-frames', '0']) == 0  # fmt: skip
    capsys.readouterr()
    common = ['--context', str(C), '--horizon', str(N), '--checkpoint', 'last', '--threads', '1',
              '--gif-clips', '0', '--no-progress']  # fmt: skip

    def run(name: str, data: Path, *extra: str) -> int:
        argv = ['evaluate-prediction', '--bundle', str(bundle), '--data', str(data), '--out',
                str(tmp_path / name), *common, *extra]  # fmt: skip
        return main(argv)

    assert run('refused', runs['data']) == 2
    err = capsys.readouterr().err
    assert 'has none' in err and 'pass --actions zero' in err, err
    assert not (tmp_path / 'refused').exists()
    assert run('zero', runs['data'], '--actions', 'zero') == 0
    assert 'actions zero' in capsys.readouterr().out
    assert run('recorded', zero_command_data(runs, tmp_path)) == 0
    zero = json.loads((tmp_path / 'zero' / 'report.json').read_text())
    recorded = json.loads((tmp_path / 'recorded' / 'report.json').read_text())
    assert zero['actions'] == 'zero' and recorded['actions'] == 'dataset'
    assert zero['action_dim'] == 2 and zero['clip_list'] == recorded['clip_list']
    assert zero['per_step'] == recorded['per_step']
    argv = [
        'evaluate-prediction',
        '--dlp',
        str(runs['dlp']),
        '--dynamics',
        str(dyn),
        '--data',
        str(runs['data']),
        '--out',
        str(tmp_path / 'torch'),
        *common,
        '--actions',
        'zero',
    ]
    assert main(argv) == 0  # the torch models take the same choice
    torch_zero = json.loads((tmp_path / 'torch' / 'report.json').read_text())
    assert torch_zero['actions'] == 'zero'
    np.testing.assert_allclose(
        torch_zero['per_step']['psnr_db']['model_decoded'],
        zero['per_step']['psnr_db']['model_decoded'],
        atol=1e-3,
    )
    assert evaluate(runs, tmp_path / 'plain') == 0  # a model without actions: 'none'
    assert json.loads((tmp_path / 'plain' / 'report.json').read_text())['actions'] == 'none'
