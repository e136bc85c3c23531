"""Config loading refuses unknown keys and wrong types by their dotted name."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dlp_ros.errors import ConfigError
from dlp_training.config import config_file, load_config, read_config, shipped_configs, to_dict

ROOT_DIR = Path(__file__).resolve().parents[2]


@dataclass
class Inner:
    lr: float = 1e-3
    channels: tuple[int, ...] = (16, 32)

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f'lr must be > 0, got {self.lr}')


@dataclass
class Outer:
    name: str = 'x'
    steps: int = 10
    limit: float | None = None
    inner: Inner = field(default_factory=Inner)


def test_yaml_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / 'c.yaml'
    path.write_text('steps: 5\ninner:\n  lr: 2\n  channels: [8, 8, 8]\n')
    cfg = load_config(Outer, path, ['inner.lr=3e-4', 'limit=1.5', 'name=balls'])
    assert cfg == Outer('balls', 5, 1.5, Inner(3e-4, (8, 8, 8)))
    assert to_dict(cfg)['inner']['channels'] == [8, 8, 8]
    assert load_config(Outer, None) == Outer()


@pytest.mark.parametrize(
    ('overrides', 'message'),
    [
        (['inner.lrr=1'], r'unknown config key\(s\) inner.lrr'),
        (['steps=1.5'], 'steps: expected int'),
        (['inner.lr=fast'], 'inner.lr: expected a number'),
        (['inner.lr=-1'], 'lr must be > 0'),
        (['inner.channels=3'], 'inner.channels: expected a list'),
        (['steps'], 'expects key=value'),
    ],
)
def test_bad_values_are_named(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(Outer, None, overrides)


@pytest.mark.parametrize('path', sorted((ROOT_DIR / 'dlp_training' / 'configs').glob('*.yaml')),
                         ids=lambda p: p.name)  # fmt: skip
def test_every_committed_training_config_loads(path: Path) -> None:
    """The configs the docs tell users to run are valid (a typo is caught here, not after data
    was built); S comes from the dataset, K/F/Fb of dynamics from the latents."""
    from dlp_training.train_dlp import DlpRunConfig
    from dlp_training.train_dynamics import DynamicsRunConfig

    cls = DynamicsRunConfig if path.name.startswith('dynamics') else DlpRunConfig
    config = load_config(cls, path, [])
    assert config.train.max_steps >= 1


def test_a_shipped_config_is_found_by_name_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--config dlp_balls64`` works from a checkout and from an installed wheel alike: the
    configs are package data (dlp_training/configs), not files beside the checkout."""
    monkeypatch.chdir(tmp_path)
    assert {'dlp_balls64', 'dlp_tiny', 'dynamics_tiny', 'dynamics_tabletop64'} <= set(
        shipped_configs()
    )
    shipped = ROOT_DIR / 'dlp_training' / 'configs' / 'dlp_tiny.yaml'
    assert config_file('dlp_tiny') == shipped.resolve()
    assert config_file('dlp_tiny.yaml') == shipped.resolve()
    assert read_config(Path('dlp_tiny'), ['train.lr=0.5'])['train']['lr'] == 0.5


def test_a_file_wins_over_a_shipped_name_and_paths_are_taken_as_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path('dlp_tiny.yaml').write_text('train: {lr: 0.25}\n')
    assert read_config(Path('dlp_tiny.yaml'))['train'] == {'lr': 0.25}
    with pytest.raises(ConfigError, match=r'cannot read config .*shipped config: .*dlp_tiny'):
        read_config(Path('config/train/dlp_tiny.yaml'))  # a folder: never a shipped name
    with pytest.raises(ConfigError, match='cannot read config no_such_config'):
        read_config(Path('no_such_config'))
