"""Config loading refuses unknown keys and wrong types by their dotted name."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dlp_ros.errors import ConfigError
from training.config import load_config, to_dict

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


@pytest.mark.parametrize('path', sorted((ROOT_DIR / 'config' / 'train').glob('*.yaml')),
                         ids=lambda p: p.name)  # fmt: skip
def test_every_committed_training_config_loads(path: Path) -> None:
    """The configs the docs tell users to run are valid (a typo is caught here, not after data
    was built); S comes from the dataset, K/F/Fb of dynamics from the latents."""
    from training.train_dlp import DlpRunConfig
    from training.train_dynamics import DynamicsRunConfig

    cls = DynamicsRunConfig if path.name.startswith('dynamics') else DlpRunConfig
    config = load_config(cls, path, [])
    assert config.train.max_steps >= 1
