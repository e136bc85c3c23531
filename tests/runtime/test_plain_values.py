from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from dlp_ros.plain_values import plain


@dataclass(frozen=True)
class _Inner:
    size: tuple[int, int] = (64, 64)
    path: Path = Path('/data/bags')


@dataclass(frozen=True)
class _Outer:
    inner: _Inner = _Inner()
    loss: float = float('nan')
    k: np.int64 = np.int64(10)


def test_dataclasses_tuples_paths_and_scalars_become_yaml_and_json_values() -> None:
    got = plain({1: _Outer(), 'xs': (np.float32(0.5), [Path('a')])})
    assert got['1']['inner'] == {'size': [64, 64], 'path': '/data/bags'}
    assert type(got['1']['k']) is int and got['xs'] == [0.5, ['a']]
    assert math.isnan(got['1']['loss'])  # kept unless finite=True
    finite = plain(_Outer(), finite=True)
    assert finite['loss'] is None
    assert yaml.safe_load(yaml.safe_dump(finite)) == finite
    assert json.loads(json.dumps(finite, allow_nan=False)) == finite


def test_arrays_and_unknown_objects_are_left_alone() -> None:
    arr = np.zeros(3)
    assert plain({'a': arr})['a'] is arr
    assert plain(None) is None and plain('text') == 'text' and plain(True) is True
