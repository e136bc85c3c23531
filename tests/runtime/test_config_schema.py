"""The one validator (dlp_ros.config_schema): unknown keys, types, ranges, nesting, None."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dlp_ros.config_schema import Check, check_fields, checked, fail, from_args, from_mapping
from dlp_ros.errors import ConfigError


@dataclass(frozen=True)
class Model:
    K: int = checked(8, ge=1)
    beta: float = checked(0.1, ge=0, finite=True)
    channels: tuple[int, ...] = checked((16, 32), min_len=1, items=Check(ge=1))
    aggregation: str = checked('sum', choices=('sum', 'mean'))
    limit: float | None = checked(None, gt=0)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.K > 64:
            raise fail(self, 'K', f'must be <= 64 patches, got {self.K}')


@dataclass(frozen=True)
class Run:
    model: Model = field(default_factory=Model)
    name: str = 'x'
    columns: list[int] | None = None
    table: dict[str, Model] = field(default_factory=dict)


@dataclass(frozen=True)
class Required:
    size: int = checked(ge=1)
    path: Path = Path('.')


def _refused(data: dict, *fragments: str, cls: type = Run) -> str:
    with pytest.raises(ConfigError) as info:
        from_mapping(cls, data)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))
    return str(info.value)


def test_a_good_mapping_is_built_and_normalised() -> None:
    run = from_mapping(Run, {'model': {'K': 4, 'beta': 1, 'channels': [8]}, 'columns': [0, 1]})
    assert run == Run(Model(4, 1.0, (8,)), columns=[0, 1])
    assert isinstance(run.model.beta, float) and isinstance(run.model.channels, tuple)
    assert from_mapping(Run, {}) == Run()
    assert from_mapping(Required, {'size': 3, 'path': 'a/b'}).path == Path('a/b')


def test_unknown_keys_name_the_key_and_the_allowed_ones() -> None:
    message = _refused({'model': {'k': 3}}, 'model.k', 'known: K, aggregation, beta')
    assert 'unknown config key(s)' in message
    _refused({'nope': 1}, 'unknown config key(s) nope', 'columns, model, name, table')


@pytest.mark.parametrize(
    ('data', 'fragment'),
    [
        ({'model': {'K': 'x'}}, "model.K: expected int, got 'x'"),
        ({'model': {'K': True}}, 'model.K: expected int, got True'),
        ({'model': {'K': 2.5}}, 'model.K: expected int, got 2.5'),
        ({'model': {'beta': 'fast'}}, "model.beta: expected a number, got 'fast'"),
        ({'model': {'channels': 3}}, 'model.channels: expected a list, got 3'),
        ({'model': {'channels': [8, 'a']}}, "model.channels[1]: expected int, got 'a'"),
        ({'model': 3}, 'model: expected a mapping'),
        ({'name': 1}, 'name: expected str, got 1'),
        ({'columns': ['a']}, "columns[0]: expected int, got 'a'"),
        ({'table': {'a': {'K': 'x'}}}, "table.a.K: expected int, got 'x'"),
    ],
)
def test_wrong_types_name_the_field(data: dict, fragment: str) -> None:
    _refused(data, fragment)


@pytest.mark.parametrize(
    ('data', 'fragment'),
    [
        ({'K': 0}, 'model.K must be >= 1, got 0'),
        ({'K': 65}, 'model.K must be <= 64 patches, got 65'),
        ({'beta': -1}, 'model.beta must be finite and >= 0, got -1.0'),
        ({'beta': float('inf')}, 'model.beta must be finite and >= 0, got inf'),
        ({'channels': []}, 'model.channels must be at least 1 entries long'),
        ({'channels': [8, 0]}, 'model.channels must be at least 1 entries long and with '
                               'entries >= 1, got (8, 0)'),
        ({'aggregation': 'max'}, "model.aggregation must be one of ['sum', 'mean'], got 'max'"),
        ({'limit': 0}, 'model.limit must be > 0, got 0.0'),
    ],
)  # fmt: skip
def test_ranges_name_the_nested_field(data: dict, fragment: str) -> None:
    _refused({'model': data}, fragment)


def test_none_only_where_the_type_allows_it() -> None:
    assert from_mapping(Run, {'columns': None, 'model': {'limit': None}}) == Run()
    assert from_mapping(Run, {'model': {'limit': 2}}).model.limit == 2.0
    _refused({'name': None}, 'name: expected str, got None')


def test_missing_required_field() -> None:
    _refused({}, 'size: missing', cls=Required)
    _refused({'size': 0}, 'size must be >= 1, got 0', cls=Required)


def test_direct_construction_is_checked_and_named_by_class() -> None:
    with pytest.raises(ConfigError, match=r"Model.K must be an int, got 'x'"):
        Model(K='x')  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match='Model.K must be >= 1, got 0'):
        Model(K=0)
    with pytest.raises(ConfigError, match='Model.beta must be finite and >= 0'):
        Model(beta=-0.5)
    assert Model(channels=[4, 4]).channels == (4, 4)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Options:
    out: Path
    batch_size: int = checked(64, ge=1)
    fps: float = checked(10.0, gt=0, say='positive')


def test_command_line_options_name_the_flag() -> None:
    args = argparse.Namespace(out=Path('o'), batch_size=8, fps=5.0, command='x', verbose=False)
    assert from_args(Options, args) == Options(Path('o'), 8, 5.0)
    with pytest.raises(ConfigError, match='--batch-size must be >= 1, got 0'):
        from_args(Options, argparse.Namespace(out=Path('o'), batch_size=0))
    with pytest.raises(ConfigError, match='--fps must be positive, got 0'):
        from_args(Options, argparse.Namespace(out=Path('o'), fps=0.0))
    with pytest.raises(ConfigError, match=r'unknown config key\(s\) --extra'):
        from_args(Options, argparse.Namespace(out=Path('o'), extra=1))
