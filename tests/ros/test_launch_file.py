"""launch/perception.launch.py without ``ros2 launch``.

``launch``/``launch_ros`` are not on PyPI (the README: ROS 2 from PyPI wheels), so the file is
checked three ways: parsed with ``ast`` (always), ``generate_launch_description()`` run against
small recording stand-ins for the launch classes (always), and against the real classes where
``launch_ros`` is installed (skipped otherwise).
"""

from __future__ import annotations

import ast
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml

from dlp_ros.node_support import PARAMS

ROOT = Path(__file__).resolve().parents[2]
LAUNCH_FILE = ROOT / 'launch' / 'perception.launch.py'
PARAMS_FILE = ROOT / 'config' / 'perception.yaml'
ARGUMENTS = {'camera_topic', 'image_transport', 'model_bundle', 'params_file', 'namespace',
             'use_sim_time', 'log_level'}  # fmt: skip


def _load(name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, LAUNCH_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- ast -----------------------------------------------------------------------------------------
def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [
        n for n in ast.walk(tree)
        if isinstance(n, ast.Call) and getattr(n.func, 'id', getattr(n.func, 'attr', '')) == name
    ]  # fmt: skip


def test_launch_file_declares_the_arguments_and_starts_the_installed_executable() -> None:
    tree = ast.parse(LAUNCH_FILE.read_text(), filename=str(LAUNCH_FILE))
    assigned = {
        t.id: n.value.value
        for n in tree.body if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)
        for t in n.targets if isinstance(t, ast.Name)
    }  # fmt: skip
    declared = {}
    for call in _calls(tree, 'DeclareLaunchArgument'):
        assert isinstance(call.args[0], ast.Constant), ast.dump(call)
        keywords = {k.arg for k in call.keywords}
        assert {'default_value', 'description'} <= keywords, call.args[0].value
        declared[call.args[0].value] = call
    assert set(declared) == ARGUMENTS
    (node,) = _calls(tree, 'Node')
    kw = {k.arg: k.value for k in node.keywords}
    value = {
        name: assigned[v.id] if isinstance(v, ast.Name) else getattr(v, 'value', None)
        for name, v in kw.items() if name in ('package', 'executable')
    }  # fmt: skip
    assert value == {'package': 'dlp_ros', 'executable': 'perception_node'}
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)}
    assert {'config', 'perception.yaml', 'image'} <= strings


# --- stand-ins -----------------------------------------------------------------------------------
class Recorded:
    """Records its constructor arguments; equal to another with the same class and arguments."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and (self.args, self.kwargs) == (
            other.args,  # type: ignore[attr-defined]
            other.kwargs,  # type: ignore[attr-defined]
        )

    def __repr__(self) -> str:
        return f'{type(self).__name__}{self.args}{self.kwargs}'


class LaunchDescription(Recorded): ...


class DeclareLaunchArgument(Recorded): ...


class LaunchConfiguration(Recorded): ...


class PathJoinSubstitution(Recorded): ...


class Node(Recorded): ...


class ParameterValue(Recorded): ...


class FindPackageShare(Recorded): ...


@pytest.fixture
def stub_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    modules = {
        'launch': {'LaunchDescription': LaunchDescription},
        'launch.actions': {'DeclareLaunchArgument': DeclareLaunchArgument},
        'launch.substitutions': {
            'LaunchConfiguration': LaunchConfiguration,
            'PathJoinSubstitution': PathJoinSubstitution,
        },
        'launch_ros': {},
        'launch_ros.actions': {'Node': Node},
        'launch_ros.parameter_descriptions': {'ParameterValue': ParameterValue},
        'launch_ros.substitutions': {'FindPackageShare': FindPackageShare},
    }
    for name, attrs in modules.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, module)


def test_generate_launch_description_with_stand_ins(stub_launch: None) -> None:
    description = _load('perception_launch_stub').generate_launch_description()
    assert isinstance(description, LaunchDescription)
    (entities,) = description.args
    arguments = {e.args[0]: e.kwargs for e in entities if isinstance(e, DeclareLaunchArgument)}
    assert set(arguments) == ARGUMENTS
    assert all(kw['description'] and 'default_value' in kw for kw in arguments.values())
    share = FindPackageShare('dlp_ros')
    params_default = arguments['params_file']['default_value']
    assert params_default == PathJoinSubstitution([share, 'config', 'perception.yaml'])
    assert PARAMS_FILE.is_file()
    (node,) = [e for e in entities if isinstance(e, Node)]
    kw = node.kwargs
    assert (kw['package'], kw['executable'], kw['name']) == ('dlp_ros', 'perception_node',
                                                             'perception_node')  # fmt: skip
    assert kw['namespace'] == LaunchConfiguration('namespace')
    assert kw['remappings'] == [('image', LaunchConfiguration('camera_topic'))]
    params_file, overrides = kw['parameters']
    assert params_file == LaunchConfiguration('params_file')
    assert set(overrides) <= {p.name for p in PARAMS} | {'use_sim_time'}
    assert overrides['use_sim_time'] == ParameterValue(
        LaunchConfiguration('use_sim_time'), value_type=bool
    )
    assert LaunchConfiguration('log_level') in kw['arguments']
    assert {c.args[0] for c in _configurations(kw)} == ARGUMENTS  # every argument is used


def _configurations(value: Any) -> list[LaunchConfiguration]:
    """Every LaunchConfiguration inside ``value`` (nested lists, tuples, dicts, Recorded)."""
    if isinstance(value, LaunchConfiguration):
        return [value]
    if isinstance(value, Recorded):
        return _configurations([*value.args, value.kwargs])
    if isinstance(value, dict):
        return [c for v in value.values() for c in _configurations(v)]
    if isinstance(value, list | tuple):
        return [c for v in value for c in _configurations(v)]
    return []


def test_params_file_is_for_every_node_name() -> None:
    data = yaml.safe_load(PARAMS_FILE.read_text())
    assert list(data) == ['/**'] and 'ros__parameters' in data['/**']


# --- the real launch_ros -------------------------------------------------------------------------
def test_generate_launch_description_with_launch_ros() -> None:
    pytest.importorskip('launch_ros', reason='launch_ros is not installed (not on PyPI)')
    from launch.actions import DeclareLaunchArgument as RealArgument
    from launch_ros.actions import Node as RealNode

    description = _load('perception_launch_real').generate_launch_description()
    arguments = [e for e in description.entities if isinstance(e, RealArgument)]
    assert {a.name for a in arguments} == ARGUMENTS
    assert all(a.description for a in arguments)
    nodes = [e for e in description.entities if isinstance(e, RealNode)]
    assert len(nodes) == 1 and nodes[0].node_package == 'dlp_ros'
    assert nodes[0].node_executable == 'perception_node'
