"""Configs as dataclasses loaded from YAML: unknown keys and wrong types are refused by name.

``load_config(cls, path, overrides)`` reads a YAML file into the dataclass ``cls`` (nested
dataclasses become nested mappings), applies ``--set section.key=value`` overrides (values parsed
as YAML), and lets each dataclass's ``__post_init__`` validate ranges.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from dlp_ros.errors import ConfigError
from dlp_ros.plain_values import plain

T = TypeVar('T')


def from_dict(cls: type[T], data: dict[str, Any], where: str = '') -> T:
    """Build dataclass ``cls`` from ``data``; errors name the dotted field (``train.lr``)."""
    if not isinstance(data, dict):
        raise ConfigError(f'{where or "config"}: expected a mapping, got {type(data).__name__}')
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        names = ', '.join(f'{where}{k}' for k in unknown)
        raise ConfigError(f'unknown config key(s) {names}; known: {", ".join(sorted(fields))}')
    hints = typing.get_type_hints(cls)
    kwargs = {name: _coerce(hints[name], value, f'{where}{name}') for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f'{where or cls.__name__}: {exc}') from exc


def _coerce(hint: Any, value: Any, name: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _coerce(option, value, name)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f'{name}: bad value {value!r}')
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, f'{name}.')
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ConfigError(f'{name}: expected a list, got {value!r}')
        args = typing.get_args(hint)
        item = args[0] if args else Any
        items = [_coerce(item, v, f'{name}[{i}]') for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and type(value) is not hint:
        raise ConfigError(f'{name}: expected {hint.__name__}, got {value!r}')
    if hint is float:
        try:  # YAML 1.1 reads 3e-4 (no dot) as a string
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f'{name}: expected a number, got {value!r}') from None
    return value


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


def load_config(cls: type[T], path: Path | None, overrides: list[str] | None = None) -> T:
    """Read YAML at ``path`` (or start from the defaults), apply overrides, build ``cls``."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f'cannot read config {path}: {exc}') from exc
    return from_dict(cls, apply_overrides(data, overrides or []))
