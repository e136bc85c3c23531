"""encode-dataset: a tiny untrained DLP over a tiny balls dataset -> latents (shapes, manifest,
tracked particles equal to track_sequence, stats), the reader, atomic --overwrite, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dlp_training.__main__ import main
from dlp_training.checkpoint import save_checkpoint
from dlp_training.config import to_dict
from dlp_training.data.dataset import Dataset
from dlp_training.dlp_config import DlpRunConfig
from dlp_training.latents import LatentDataset, LatentsError
from dlp_training.models.dlp import Dlp, DlpConfig
from dlp_training.models.tracking import METHOD, track_sequence

torch.set_num_threads(1)
TINY = DlpConfig(S=64, K=4, n_proposals=6, prior_channels=(8, 8),
                 glimpse_channels=(8, 16), hidden_dim=32, F=4, Fb=4,
                 decoder_channels=(16, 8), bg_encoder_channels=(8, 8, 16, 16),
                 bg_decoder_channels=(16, 8, 8, 8))  # fmt: skip


@pytest.fixture(scope='module')
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Run directory of an untrained tiny DLP, 64 px and 32 px datasets of 3 balls episodes."""
    base = tmp_path_factory.mktemp('encode')
    assert main(['record-synthetic', 'balls', '--episodes', '3', '--frames', '12',
                 '--out', str(base / 'bags')]) == 0  # fmt: skip
    bags = [str(p) for p in sorted((base / 'bags').glob('episode_*/'))]
    build = ['build-dataset', '--bags', *bags, '--topic', '/camera/image_raw', '--fps', '10',
             '--split', '0.34,0.33,0.33', '--no-progress']  # fmt: skip
    assert main([*build, '--out', str(base / 'data')]) == 0
    assert main([*build, '--out', str(base / 'data32'), '--size', '32']) == 0
    torch.manual_seed(0)
    model = Dlp(TINY)
    config = to_dict(DlpRunConfig(model=TINY))
    save_checkpoint(base / 'run' / 'checkpoints' / 'last.pt',
                    {'model': model.state_dict(), 'step': 7, 'config': config})  # fmt: skip
    return {'base': base, 'run': base / 'run', 'data': base / 'data', 'data32': base / 'data32'}


def _encode(setup: dict[str, Path], out: Path, *extra: str) -> int:
    return main(['encode-dataset', '--dlp', str(setup['run']), '--data', str(setup['data']),
                 '--out', str(out), '--checkpoint', 'last', '--batch', '5', '--no-progress',
                 '--threads', '1', *extra])  # fmt: skip


def test_latents_shapes_manifest_and_tracking(setup: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / 'latents'
    assert _encode(setup, out) == 0
    data, latents = Dataset.open(setup['data']), LatentDataset.open(out)
    m = latents.manifest
    assert m['format'] == 'dlp_ros.latents' and m['version'] == 1
    assert m['source']['dataset'] == str(setup['data'].resolve())
    assert m['source']['dlp_run'] == str(setup['run'].resolve()) and m['source']['step'] == 7
    assert (m['S'], m['K'], m['F'], m['Fb']) == (
        64, 4, 4, 4)  # fmt: skip
    assert m['fps'] == 10.0 and m['tracking']['method'] == METHOD and m['ground_truth'] is True
    assert [(e.name, e.split, e.frames) for e in latents.episodes()] == [
        (e.name, e.split, e.frames) for e in data.episodes()
    ]
    train = latents.episodes('train')
    assert train and m['stats']['split'] == 'train'
    assert m['stats']['frames'] == sum(e.frames for e in train)
    assert not list(tmp_path.glob('.latents*'))  # no temporary directory left behind

    model = Dlp(TINY)
    model.load_state_dict(torch.load(setup['run'] / 'checkpoints' / 'last.pt')['model'])
    model.eval()
    feats = []
    for e in latents.episodes():
        a = latents.arrays(e.name)
        t = e.frames
        assert a['mu'].shape == (t, 4, 2) and a['features'].shape == (t, 4, 4)
        assert a['bg_features'].shape == (t, 4) and a['reseeded'].shape == (t, 4)
        assert a['gt_xy'].shape[0] == t and a['gt_names'].dtype.kind == 'U'
        labels = data.labels(e.name)
        assert np.array_equal(a['stamps_ns'], labels.stamps_ns)
        frames = torch.from_numpy(np.array(data.frames(e.name))).permute(0, 3, 1, 2) / 255.0
        track = track_sequence(model, frames.float())  # the cached particles are the tracked ones
        for name in ('mu', 'transparency', 'features', 'bg_features'):
            assert np.allclose(a[name], getattr(track.particles, name).numpy(), atol=1e-5), name
        assert np.array_equal(a['reseeded'], track.reseeded.numpy())
        with torch.no_grad():  # frame 0 is the untracked encode
            assert np.allclose(a['mu'][0], model.encode(frames[:1].float()).mu[0], atol=1e-5)
        if e.split == 'train':
            feats.append(a['features'].reshape(-1, 4))
    mean = np.concatenate(feats).mean(0)
    assert np.allclose(latents.mean['features'], mean, atol=1e-4)
    p = latents.particles(train[0].name)
    assert p.mu.shape == (train[0].frames, 4, 2) and p.bg_features.dtype == torch.float32


def test_bundle_encodes_as_the_run_it_was_exported_from(
    setup: dict[str, Path], tmp_path: Path
) -> None:
    """--bundle: the ONNX encoder through the runtime's tracker gives the run's latents."""
    from dlp_training.export import export_bundle  # noqa: PLC0415
    from dlp_training.models.dynamics import DynamicsConfig, ParticleDynamics  # noqa: PLC0415

    model = Dlp(TINY)
    model.load_state_dict(torch.load(setup['run'] / 'checkpoints' / 'last.pt')['model'])
    model.eval()
    bundle = tmp_path / 'bundle'
    export_bundle(model, ParticleDynamics(DynamicsConfig.from_dlp(TINY, history=2)), bundle)
    assert _encode(setup, tmp_path / 'from_run') == 0
    argv = ['encode-dataset', '--bundle', str(bundle), '--data', str(setup['data']), '--out',
            str(tmp_path / 'from_bundle'), '--no-progress', '--threads', '1']  # fmt: skip
    assert main(argv) == 0
    run, onnx = (
        LatentDataset.open(tmp_path / 'from_run'),
        LatentDataset.open(tmp_path / 'from_bundle'),
    )
    m = onnx.manifest
    assert m['source']['bundle'] == str(bundle.resolve()) and 'dlp_run' not in m['source']
    assert (m['S'], m['K'], m['F'], m['Fb']) == (64, 4, 4, 4)
    assert m['tracking'] == run.manifest['tracking']
    for e in run.episodes():
        a, b = run.arrays(e.name), onnx.arrays(e.name)
        assert np.array_equal(a['reseeded'], b['reseeded'])
        assert np.array_equal(a['stamps_ns'], b['stamps_ns'])
        for name in ('mu', 'logvar', 'scale', 'transparency', 'features', 'bg_features'):
            assert np.allclose(a[name], b[name], atol=1e-4), name


def test_overwrite_replaces_only_a_latents_cache(setup: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / 'latents'
    assert _encode(setup, out) == 0
    (out / 'stale.txt').write_text('old')
    assert _encode(setup, out) == 2  # exists, no --overwrite
    assert _encode(setup, out, '--overwrite') == 0
    assert not (out / 'stale.txt').exists()
    other = tmp_path / 'other'
    other.mkdir()
    (other / 'keep.txt').write_text('precious')
    assert _encode(setup, other, '--overwrite') == 2  # not a latents cache: refused
    assert (other / 'keep.txt').read_text() == 'precious'


def test_bad_input_errors(
    setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def fails(argv: list[str], *needles: str) -> None:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert all(n in err for n in needles), err

    base = ['encode-dataset', '--out', str(tmp_path / 'out'), '--checkpoint', 'last',
            '--no-progress']  # fmt: skip
    run, data = ['--dlp', str(setup['run'])], ['--data', str(setup['data'])]
    fails([*base, '--dlp', str(tmp_path / 'nope'), *data], 'no such run directory')
    fails([*base, '--dlp', str(tmp_path), *data], 'has no checkpoint')
    fails([*base, *run, '--data', str(tmp_path)], 'is not a dataset')
    fails([*base, *run, '--data', str(setup['data32'])], '32x32', '64x64')
    fails([*base, *run, *data, '--batch', '0'], '--batch must be >= 1')
    fails([*base, '--bundle', str(tmp_path), *data], '--bundle', 'not a bundle directory')
    for argv, needle in (
        ([*base, *run, '--bundle', str(tmp_path), *data], 'not allowed with'),
        ([*base, *data], 'one of the arguments --dlp --bundle is required'),
    ):
        with pytest.raises(SystemExit):  # argparse: usage and the reason on stderr
            main(argv)
        assert needle in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()


def test_reader_refuses_bad_caches(setup: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(LatentsError, match='not a latents cache'):
        LatentDataset.open(tmp_path)
    out = tmp_path / 'latents'
    assert _encode(setup, out) == 0
    manifest = yaml.safe_load((out / 'manifest.yaml').read_text())
    name = manifest['episodes'][0]['name']
    np.savez(out / 'episodes' / f'{name}.npz', mu=np.zeros((3, 4, 2), np.float32))
    with pytest.raises(LatentsError, match="array 'mu'"):
        LatentDataset.open(out).arrays(name)
    del manifest['stats']['mean']['features']
    (out / 'manifest.yaml').write_text(yaml.safe_dump(manifest))
    with pytest.raises(LatentsError, match='features'):
        LatentDataset.open(out)
    manifest['format'] = 'something.else'
    (out / 'manifest.yaml').write_text(yaml.safe_dump(manifest))
    with pytest.raises(LatentsError, match='format'):
        LatentDataset.open(out)
