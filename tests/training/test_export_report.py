"""What ``export`` says about the checkpoints it exports, on real tiny runs: the step and its
validation figures, a warning when a run never improved on its first validation, and one when
most particles are off on the validation frames."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dlp_ros.model_card import load_model_card
from dlp_training.__main__ import main
from dlp_training.checkpoint import load_checkpoint, save_checkpoint

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
DLP_TINY = ROOT / 'dlp_training' / 'configs' / 'dlp_tiny.yaml'
DYN_TINY = ROOT / 'dlp_training' / 'configs' / 'dynamics_tiny.yaml'
# A learning rate too small to change a float32 weight: every validation scores the same, so
# the best checkpoint stays the first validation's, as in a run that never improved.
FROZEN = ['--set', 'train.lr=1e-12', '--set', 'train.max_steps=6', '--set', 'train.eval_every=2',
          '--set', 'train.checkpoint_every=2', '--set', 'train.threads=1']  # fmt: skip


@pytest.fixture(scope='module')
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A balls dataset (3 episodes x 12 frames), a DLP and a dynamics run that never improve."""
    root = tmp_path_factory.mktemp('export_report')
    bags, data = root / 'bags', root / 'data'
    argv = ['record-synthetic', 'balls', '--episodes', '3', '--frames', '12', '--out', str(bags)]
    assert main(argv) == 0
    assert main(['build-dataset', '--bags', str(bags), '--topic', '/camera/image_raw', '--fps',
                 '10', '--size', '64', '--split', '0.34,0.33,0.33', '--no-progress',
                 '--out', str(data)]) == 0  # fmt: skip
    dlp, latents, dyn = root / 'dlp', root / 'latents', root / 'dyn'
    assert main(['train-dlp', '--config', str(DLP_TINY), '--data', str(data), '--out', str(dlp),
                 '--no-progress', '--set', 'train.warmup_steps=0', *FROZEN]) == 0  # fmt: skip
    assert main(['encode-dataset', '--dlp', str(dlp), '--data', str(data), '--out', str(latents),
                 '--threads', '1', '--no-progress']) == 0  # fmt: skip
    assert main(['train-dynamics', '--config', str(DYN_TINY), '--latents', str(latents),
                 '--out', str(dyn), '--no-progress', '--set', 'train.burn_in=2',
                 '--set', 'train.horizon=2', *FROZEN]) == 0  # fmt: skip
    return {'root': root, 'dlp': dlp, 'dyn': dyn}


def with_presence(dlp: Path, out: Path, logit: float) -> Path:
    """A copy of the DLP run whose best checkpoint's transparency logits are shifted."""
    (out / 'checkpoints').mkdir(parents=True)
    for name in ('run.yaml', 'config.yaml', 'metrics.jsonl'):
        (out / name).write_bytes((dlp / name).read_bytes())
    for name in ('best', 'last'):
        state = load_checkpoint(dlp / 'checkpoints' / f'{name}.pt')
        head = [k for k in state['model'] if k.startswith('particle_encoder.head.')][-1]
        state['model'][head][6] += logit  # transparency logit (dlp_training.models.dlp)
        save_checkpoint(out / 'checkpoints' / f'{name}.pt', state)
    return out


def export(runs: dict[str, Path], dlp: Path, out: Path, capsys: pytest.CaptureFixture) -> str:
    argv = ['export', '--dlp', str(dlp), '--dynamics', str(runs['dyn']), '--out', str(out),
            '--val-frames', '12']  # fmt: skip
    assert main(argv) == 0
    return capsys.readouterr().out


def test_export_names_the_step_and_warns(runs: dict[str, Path], capsys) -> None:
    off = with_presence(runs['dlp'], runs['root'] / 'dlp_off', -10.0)
    printed = export(runs, off, runs['root'] / 'bundle_off', capsys)
    assert f'DLP: {off}, step 2 of 6: val PSNR' in printed, printed
    assert f'dynamics: {runs["dyn"]}, step 2 of 6: val position RMSE' in printed, printed
    for what in ('DLP', 'dynamics'):
        assert (
            f'WARNING: the exported {what} checkpoint is its first validation (step 2); '
            'the 2 later ones did not improve on it' in printed
        ), printed
    assert 'WARNING: most particles are off on the validation frames: 0.00 of K = 4 on' in printed

    on = with_presence(runs['dlp'], runs['root'] / 'dlp_on', 10.0)
    printed = export(runs, on, runs['root'] / 'bundle_on', capsys)
    assert 'most particles are off' not in printed, printed
    card = load_model_card(runs['root'] / 'bundle_on', check_graphs=False)
    assert card.validation.details['particles_on_mean'] == 4.0
