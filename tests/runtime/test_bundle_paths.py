"""Shipped bundles by name, for installs without the ament index (a pip-installed wheel puts them
in <prefix>/share/dlp_ros/bundles, a checkout has bundles/)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from dlp_ros import bundle_paths
from dlp_ros.bundle_paths import bundle_path, shipped_bundle

ROOT = Path(__file__).resolve().parents[2]


def _wheel_prefix(tmp_path: Path, name: str) -> Path:
    bundle = tmp_path / 'share' / 'dlp_ros' / 'bundles' / name
    bundle.mkdir(parents=True)
    (bundle / 'model_card.yaml').write_text('schema_version: 1\n')
    return bundle


def test_the_wheel_prefix_comes_first_then_the_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, 'prefix', str(tmp_path))
    installed = _wheel_prefix(tmp_path, 'tabletop64')
    assert shipped_bundle() == installed
    assert shipped_bundle('balls64') == ROOT / 'bundles' / 'balls64'  # not in the prefix
    assert shipped_bundle('no_such_bundle') is None


def test_without_a_checkout_only_the_prefix_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, 'prefix', str(tmp_path / 'venv'))
    monkeypatch.setattr(bundle_paths, 'CHECKOUT_BUNDLES', tmp_path / 'nowhere')
    assert shipped_bundle('tabletop64') is None
    assert bundle_path('tabletop64') == Path('tabletop64')  # the loader says what is missing
    installed = _wheel_prefix(tmp_path / 'venv', 'tabletop64')
    assert bundle_path('tabletop64') == installed


def test_a_path_is_taken_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path('tabletop64').mkdir()  # a directory of that name here wins over the shipped one
    assert bundle_path('tabletop64') == Path('tabletop64')
    assert bundle_path('runs/tabletop64') == Path('runs/tabletop64')  # a folder: never a name
    assert bundle_path('balls64') == ROOT / 'bundles' / 'balls64'


@pytest.mark.parametrize(
    ('module', 'required'),
    [('dlp_ros.offline.replay', ['--bag', 'b']), ('dlp_ros.offline.manipulate', ['--image', 'i'])],
)
def test_the_offline_tools_take_a_shipped_bundle_by_name(module: str, required: list[str]) -> None:
    import argparse
    import importlib

    pytest.importorskip('rosbags')
    parser = argparse.ArgumentParser()
    importlib.import_module(module).configure_parser(parser)
    known = parser.parse_args(['--bundle', 'tabletop64', '--out', 'o', *required])
    assert known.bundle == ROOT / 'bundles' / 'tabletop64'
