"""launch/sim.launch.py without ``ros2 launch``: every launch argument is declared with a default
and a description and sets the node parameter of its name, with that parameter's type, and the
node is the installed ``tabletop_sim`` (checked on the file and against the real launch_ros
where it is installed)."""

from __future__ import annotations

import ast
import importlib.util
import types
from pathlib import Path

import pytest

from dlp_ros.sim.node import PARAMS

ROOT = Path(__file__).resolve().parents[2]
LAUNCH_FILE = ROOT / 'launch' / 'sim.launch.py'


def _arguments() -> dict[str, tuple[str, str, str]]:
    """The file's ARGUMENTS table: name -> (default, type name, description)."""
    tree = ast.parse(LAUNCH_FILE.read_text(), filename=str(LAUNCH_FILE))
    (table,) = [n.value for n in tree.body if isinstance(n, ast.Assign)
                and getattr(n.targets[0], 'id', '') == 'ARGUMENTS']  # fmt: skip
    assert isinstance(table, ast.Dict)
    out = {}
    for key, value in zip(table.keys, table.values, strict=True):
        assert isinstance(key, ast.Constant) and isinstance(value, ast.Tuple)
        default, kind, desc = value.elts
        text = desc.value if isinstance(desc, ast.Constant) else ast.unparse(desc)
        out[key.value] = (default.value, kind.id, text)
    return out


def test_arguments_match_the_node_parameters() -> None:
    specs = {p.name: p for p in PARAMS}
    arguments = _arguments()
    assert {'seed', 'autostart', 'step_timeout'} <= set(arguments)
    for name, (default, kind, description) in arguments.items():
        assert name in specs, f'{name} is no parameter of tabletop_sim'
        spec = specs[name]
        assert kind == type(spec.default).__name__, name
        parsed = {'bool': lambda s: s == 'true', 'int': int, 'float': float}[kind](default)
        assert parsed == spec.default, f'{name}: launch default {default} != {spec.default}'
        assert description, name


def test_generate_launch_description_with_launch_ros() -> None:
    pytest.importorskip('launch_ros', reason='launch_ros is not installed (not on PyPI)')
    from launch.actions import DeclareLaunchArgument
    from launch_ros.actions import Node

    spec = importlib.util.spec_from_file_location('sim_launch_real', LAUNCH_FILE)
    assert spec is not None and spec.loader is not None
    module = types.ModuleType('sim_launch_real')
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    names = {e.name for e in description.entities if isinstance(e, DeclareLaunchArgument)}
    assert names == {*_arguments(), 'log_level'}
    nodes = [e for e in description.entities if isinstance(e, Node)]
    assert len(nodes) == 1 and nodes[0].node_executable == 'tabletop_sim'
