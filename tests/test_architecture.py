"""Dependency rules of DESIGN §1: the runtime never imports torch or training, and only the node
and message conversions import rclpy. Checked in fresh interpreters, so nothing leaks in from other
tests."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROS_MODULES = {'node.py', 'conversions.py'}
RUNTIME_MODULES = sorted(
    f'dlp_ros.{p.stem}'
    for p in (ROOT / 'dlp_ros').glob('*.py')
    if p.name != '__init__.py' and p.name not in ROS_MODULES
)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split('.')[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split('.')[0])
    return names


@pytest.mark.parametrize('module', ['dlp_ros', *RUNTIME_MODULES])
def test_runtime_module_imports_no_torch_training_or_ros(module: str) -> None:
    code = (
        f'import json, sys; import {module}; '
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'training', 'rclpy', 'torch_geometric', 'rosbags'))))"
    )
    out = subprocess.run(
        [sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    leaked = json.loads(out.stdout.strip().splitlines()[-1])
    assert leaked == [], f'importing {module} pulled in {leaked}'


def test_no_runtime_source_imports_forbidden_packages() -> None:
    for path in (ROOT / 'dlp_ros').glob('*.py'):
        used = _imports(path)
        assert not used & {'torch', 'training', 'torch_geometric'}, path
        if path.name not in ROS_MODULES:
            assert 'rclpy' not in used, f'{path.name} imports rclpy (only node/conversions may)'
            assert not any(n.endswith('_msgs') or n == 'builtin_interfaces' for n in used), (
                f'{path.name} imports ROS message types'
            )


def test_training_is_not_imported_by_runtime_sources() -> None:
    for path in (ROOT / 'dlp_ros').rglob('*.py'):
        assert 'training' not in _imports(path), path
