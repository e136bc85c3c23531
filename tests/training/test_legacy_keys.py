"""Runs, checkpoints, latents and bundles written with the old size names (image_size,
n_particles, feature_dim, bg_feature_dim) still load, read as S, K, F, Fb with a deprecation
note; the sizes a config gives must agree with its data."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from dlp_ros.config_schema import renamed_keys
from dlp_ros.errors import ConfigError
from dlp_training.config import from_dict
from dlp_training.dlp_config import DlpRunConfig
from dlp_training.dynamics_config import DynamicsRunConfig
from dlp_training.models.dlp import DlpConfig
from dlp_training.models.dynamics import DynamicsConfig
from dlp_training.runs import take_sizes

ROOT = Path(__file__).resolve().parents[2]
OLD_DLP = {'image_size': 64, 'n_particles': 4, 'n_proposals': 6, 'feature_dim': 4,
           'bg_feature_dim': 4}  # fmt: skip


def test_renamed_keys_maps_old_names_and_notes_it(caplog: pytest.LogCaptureFixture) -> None:
    renames = {'n_particles': 'K'}
    with caplog.at_level(logging.WARNING):
        assert renamed_keys({'n_particles': 3, 'x': 1}, renames, 'where.') == {'x': 1, 'K': 3}
    assert 'where.n_particles is deprecated: read as where.K' in caplog.text
    assert renamed_keys({'K': 3, 'n_particles': 3}, renames) == {'K': 3}  # the same value
    with pytest.raises(ConfigError, match=r'n_particles \(the old name of K\) is 3 but K is 4'):
        renamed_keys({'K': 4, 'n_particles': 3}, renames)


def test_an_old_run_config_loads_with_the_new_names() -> None:
    """run.yaml / checkpoint['config'] as the code before the rename wrote them."""
    dlp = from_dict(DlpRunConfig, {'model': OLD_DLP, 'train': {'max_steps': 5}})
    assert (dlp.model.S, dlp.model.K, dlp.model.F, dlp.model.Fb) == (64, 4, 4, 4)
    old_dyn = {'n_particles': 4, 'feature_dim': 4, 'bg_feature_dim': 4, 'history': 2}
    dyn = from_dict(DynamicsRunConfig, {'model': old_dyn, 'train': {'burn_in': 2}})
    assert (dyn.model.K, dyn.model.F, dyn.model.Fb) == (4, 4, 4)
    assert DlpConfig.from_dict(OLD_DLP) == DlpConfig(S=64, K=4, n_proposals=6, F=4, Fb=4)
    with pytest.raises(ConfigError, match='model.n_particles'):
        from_dict(DlpRunConfig, {'model': {'n_particles': 4, 'K': 5}})


@pytest.mark.parametrize('name', ['balls64', 'tabletop64'])
def test_the_shipped_bundles_configs_load(name: str) -> None:
    """The cards of bundles/ keep the configs of runs made before the rename (not edited)."""
    card = yaml.safe_load((ROOT / 'bundles' / name / 'model_card.yaml').read_text())
    dlp = DlpConfig.from_dict(card['training']['dlp']['model'])
    dyn = DynamicsConfig.from_dict(card['training']['dynamics']['model'])
    assert (dlp.S, dlp.K, dlp.F, dlp.Fb) == (
        card['image']['size'],
        *(card['particles'][k] for k in ('K', 'F', 'Fb')),
    )
    assert (dyn.K, dyn.F, dyn.Fb) == (dlp.K, dlp.F, dlp.Fb)


def test_sizes_come_from_the_data_and_a_disagreeing_one_is_named() -> None:
    sizes = {'K': 4, 'F': 4, 'Fb': 4}
    assert take_sizes({'history': 2}, DynamicsConfig.RENAMED, sizes, 'latents L') == {
        'history': 2,
        **sizes,
    }
    assert take_sizes({'K': 4}, DynamicsConfig.RENAMED, sizes, 'latents L')['F'] == 4
    with pytest.raises(ConfigError, match='model.K is 5 in the config but latents L have K = 4'):
        take_sizes({'K': 5}, DynamicsConfig.RENAMED, sizes, 'latents L')
    with pytest.raises(ConfigError, match='model.F is 3 in the config but latents L have F = 4'):
        take_sizes({'feature_dim': 3}, DynamicsConfig.RENAMED, sizes, 'latents L')
    with pytest.raises(ConfigError, match='model.S is 32 in the config but dataset D has S = 64'):
        take_sizes({'image_size': 32}, DlpConfig.RENAMED, {'S': 64}, 'dataset D')
