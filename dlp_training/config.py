"""Configs as dataclasses loaded from YAML: unknown keys and wrong types are refused by name.

``load_config(cls, path, overrides)`` reads a YAML file into the dataclass ``cls`` (nested
dataclasses become nested mappings), applies ``--set section.key=value`` overrides (values parsed
as YAML) and validates it with :func:`dlp_ros.config_schema.from_mapping` (types, the ranges in
the fields' metadata, each dataclass's ``__post_init__``).

The shipped configs live in this package (``dlp_training/configs/*.yaml``), so a checkout and an
installed wheel have them alike; ``--config`` takes a file or one of their names
(``dlp_balls64``, see :func:`config_file`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml

from dlp_ros.config_schema import from_mapping
from dlp_ros.errors import ConfigError
from dlp_ros.plain_values import plain

T = TypeVar('T')

CONFIG_DIR = Path(__file__).resolve().parent / 'configs'


def shipped_configs() -> list[str]:
    """Names of the configs shipped in the package (``dlp_balls64``, ``dynamics_tiny``, ...)."""
    return sorted(p.stem for p in CONFIG_DIR.glob('*.yaml'))


def config_file(value: str | Path) -> Path:
    """The YAML file ``value`` names: an existing path as given; otherwise a bare name
    (``dlp_balls64`` or ``dlp_balls64.yaml``, no folder) of a shipped config is that config."""
    path = Path(value)
    if path.exists() or path.parent != Path('.'):
        return path
    shipped = CONFIG_DIR / f'{path.stem}.yaml'
    return shipped if path.suffix in ('', '.yaml') and shipped.is_file() else path


def from_dict(cls: type[T], data: Any, where: str = '') -> T:
    """Build dataclass ``cls`` from ``data``; errors name the dotted field (``train.lr``).

    The one validator of dlp_ros (:func:`dlp_ros.config_schema.from_mapping`)."""
    return from_mapping(cls, data, where)


def to_dict(obj: Any) -> dict[str, Any]:
    """Dataclass -> plain dict (tuples become lists) for YAML and checkpoints."""
    return plain(obj)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``['model.K=8', 'train.lr=3e-4']`` to a nested dict (values parsed as YAML)."""
    for item in overrides:
        key, sep, raw = item.partition('=')
        if not sep or not key:
            raise ConfigError(f'--set expects key=value, got {item!r}')
        node = data
        parts = key.split('.')
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f'--set {key}: {part} is not a section')
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def read_config(path: Path | None, overrides: list[str] | None = None) -> dict[str, Any]:
    """The mapping of the YAML at ``path`` (a file or a shipped config's name, see
    :func:`config_file`; empty without one) with the overrides applied."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(config_file(path).read_text()) or {}
        except OSError as exc:
            raise ConfigError(
                f'cannot read config {path}: {exc} (a YAML file, or the name of a shipped config: '
                f'{", ".join(shipped_configs())})'
            ) from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f'cannot read config {path}: {exc}') from exc
    return apply_overrides(data, overrides or [])


def load_config(cls: type[T], path: Path | None, overrides: list[str] | None = None) -> T:
    """Read YAML at ``path`` (or start from the defaults), apply overrides, build ``cls``."""
    return from_dict(cls, read_config(path, overrides))
