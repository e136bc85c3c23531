"""Dependency rules between the parts of this package, checked on the source (every import,
those inside functions included, followed through this project's own modules) and, for the parts
that must load without ROS, in fresh interpreters (nothing leaks in from other tests):

1. the runtime core (``dlp_ros`` less the ROS face and ``dlp_ros.offline``) imports neither torch,
   ROS client libraries (rclpy, message packages), rosbags nor ``dlp_training``, nor the ROS face
   or ``dlp_ros.offline``;
2. ``dlp_ros.offline`` (torch-free offline ROS tooling) imports neither torch, ROS client libraries
   nor ``dlp_training``, nor the ROS face;
3. ``dlp_training`` imports no ROS client library and no ROS-face module;
4. the ROS face (``dlp_ros.node``, ``dlp_ros.planner_node``, ``dlp_ros.conversions``,
   ``dlp_ros.markers``, ``dlp_ros.demo``, ``dlp_ros.dds_shm`` and the simulator's ROS modules
   ``dlp_ros.sim.node``, ``.client``, ``.evaluate``) imports neither torch nor ``dlp_training``;
5. the simulation (``dlp_ros.sim`` less its ROS modules: the MuJoCo scene) imports neither torch,
   ROS client libraries, rosbags nor ``dlp_training``, nor the ROS face or ``dlp_ros.offline``;
   and the runtime core imports neither the simulation nor mujoco (a robot runs the node without
   them).

The planner's maths (``dlp_ros.mpc``) is part of the runtime core: rule 1 holds for it.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ('dlp_ros', 'dlp_training')
ROS_FACE = frozenset({
    'dlp_ros.node', 'dlp_ros.node_process', 'dlp_ros.executor', 'dlp_ros.planner_node',
    'dlp_ros.conversions', 'dlp_ros.markers', 'dlp_ros.demo', 'dlp_ros.dds_shm',
    'dlp_ros.sim.node', 'dlp_ros.sim.client', 'dlp_ros.sim.evaluate',
})  # fmt: skip
OFFLINE = 'dlp_ros.offline'
SIM = 'dlp_ros.sim'
TORCH = frozenset({'torch', 'torch_geometric', 'torchvision'})
ROS_CLIENT = frozenset({
    'rclpy', 'builtin_interfaces', 'ament_index_python', 'rcl_interfaces', 'rosidl_runtime_py',
    'launch', 'launch_ros',
})  # fmt: skip
GENERATED = ('dlp_ros.msg', 'dlp_ros.srv')  # rosidl-generated: a ROS dependency


def _under(name: str, package: str) -> bool:
    return name == package or name.startswith(f'{package}.')


def is_torch(name: str) -> bool:
    return name.split('.')[0] in TORCH


def is_ros_client(name: str) -> bool:
    """rclpy, a ROS message/interface package or dlp_ros's generated messages."""
    top = name.split('.')[0]
    return top in ROS_CLIENT or top.endswith('_msgs') or any(_under(name, g) for g in GENERATED)


def is_training(name: str) -> bool:
    return _under(name, 'dlp_training')


def is_ros_face(name: str) -> bool:
    return any(_under(name, m) for m in ROS_FACE)


def is_offline(name: str) -> bool:
    return _under(name, OFFLINE)


def is_sim(name: str) -> bool:
    """The simulation part: ``dlp_ros.sim`` less its ROS modules (those are the ROS face)."""
    return _under(name, SIM) and not is_ros_face(name)


def is_core(name: str) -> bool:
    return (_under(name, 'dlp_ros') and not is_ros_face(name) and not is_offline(name)
            and not _under(name, SIM))  # fmt: skip


def core_forbids(name: str) -> bool:
    return (is_torch(name) or is_ros_client(name) or _under(name, 'rosbags') or is_training(name)
            or is_ros_face(name) or is_offline(name) or _under(name, SIM)
            or _under(name, 'mujoco'))  # fmt: skip


def sim_forbids(name: str) -> bool:
    return (is_torch(name) or is_ros_client(name) or _under(name, 'rosbags') or is_training(name)
            or is_ros_face(name) or is_offline(name))  # fmt: skip


def offline_forbids(name: str) -> bool:
    return is_torch(name) or is_ros_client(name) or is_training(name) or is_ros_face(name)


def training_forbids(name: str) -> bool:
    return is_ros_client(name) or is_ros_face(name)


def ros_face_forbids(name: str) -> bool:
    return is_torch(name) or is_training(name)


@dataclass(frozen=True)
class Rule:
    """Modules ``applies`` selects must not import, even indirectly, what ``forbidden`` flags."""

    name: str
    applies: Callable[[str], bool]
    forbidden: Callable[[str], bool]


RULES = (
    Rule('runtime core: no torch, ROS client, rosbags, training, ROS face, dlp_ros.offline, '
         'dlp_ros.sim or mujoco', is_core, core_forbids),
    Rule('dlp_ros.sim: no torch, ROS client, rosbags, training, ROS face or dlp_ros.offline',
         is_sim, sim_forbids),
    Rule('dlp_ros.offline: no torch, ROS client, training or ROS face', is_offline,
         offline_forbids),
    Rule('training: no ROS client or ROS face', is_training, training_forbids),
    Rule('ROS face: no torch or training', is_ros_face, ros_face_forbids),
)  # fmt: skip


@dataclass(frozen=True)
class Import:
    """One import statement's target, absolute (``pkg.mod`` for ``from pkg import mod``)."""

    target: str
    line: int


def module_names(root: Path) -> dict[str, Path]:
    """This project's modules under ``root`` (dotted name -> file)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob('*.py')):
            parts = path.relative_to(root).with_suffix('').parts
            found['.'.join(parts[:-1] if parts[-1] == '__init__' else parts)] = path
    return found


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ''
    base = module.split('.')[: len(module.split('.')) - node.level + int(is_package)]
    return '.'.join([*base, *([node.module] if node.module else [])])


def imports_of(module: str, path: Path, known: set[str]) -> list[Import]:
    """Every import in ``path``, at any depth of the file; ``from a import b`` is ``a.b`` when that
    is one of the ``known`` modules, else ``a``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [Import(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, path.name == '__init__.py', node)
            for alias in node.names:
                sub = f'{base}.{alias.name}'
                found.append(Import(sub if sub in known else base, node.lineno))
    return found


def _loaded(target: str, known: set[str]) -> list[str]:
    """The project modules that importing ``target`` runs: its packages and itself."""
    parts = target.split('.')
    return [m for m in ('.'.join(parts[:i]) for i in range(1, len(parts) + 1)) if m in known]


def _reachable(
    start: str, graph: dict[str, list[Import]], stop: Callable[[str], bool]
) -> Iterator[tuple[list[str], Import]]:
    """Each import reachable from ``start``, with the chain of modules that leads to it; the
    modules an import that ``stop`` flags would load are not followed."""
    known = set(graph)
    chains, queue = {start: [start]}, [start]
    while queue:
        module = queue.pop(0)
        for imp in graph[module]:
            yield chains[module], imp
            for loaded in [] if stop(imp.target) else _loaded(imp.target, known):
                if loaded not in chains:
                    chains[loaded] = [*chains[module], loaded]
                    queue.append(loaded)


def violations(root: Path) -> list[str]:
    """One line per import that breaks a rule, naming the module, the import and the path to it."""
    files = module_names(root)
    known = set(files)
    graph = {m: imports_of(m, p, known) for m, p in files.items()}
    found: dict[str, None] = {}  # ordered, without repeats
    for rule in RULES:
        for module in sorted(m for m in files if rule.applies(m)):
            for chain, imp in _reachable(module, graph, rule.forbidden):
                if not rule.forbidden(imp.target):
                    continue
                where = f'{files[chain[-1]].relative_to(root)}:{imp.line}'
                via = f' via {" -> ".join(chain)}' if len(chain) > 1 else ''
                found[f'{module} imports {imp.target} ({where}{via}) [{rule.name}]'] = None
    return list(found)


def test_dependency_rules_hold() -> None:
    found = violations(ROOT)
    assert not found, 'dependency rules broken:\n' + '\n'.join(found)


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_checker_catches_violations(tmp_path: Path) -> None:
    """The checker on a small tree that breaks each rule, twice through a lazy import one module
    away; clean modules and allowed imports are not reported."""
    _write(tmp_path, {
        'dlp_ros/__init__.py': '',
        'dlp_ros/core.py': 'import numpy\nfrom dlp_ros import util\n',
        'dlp_ros/util.py': 'def f():\n    import torch\n',
        'dlp_ros/reader.py': 'from dlp_ros.offline import tool\n',
        'dlp_ros/clean.py': 'import numpy\nfrom dlp_ros import errors\n',
        'dlp_ros/errors.py': 'import cv2\n',
        'dlp_ros/node.py': 'import rclpy\nfrom dlp_ros.msg import Particle\nimport torch.nn\n',
        'dlp_ros/demo.py': 'from dlp_training import tools\n',
        'dlp_ros/offline/__init__.py': '',
        'dlp_ros/offline/tool.py': 'import rosbags\nfrom . import helper\n',
        'dlp_ros/offline/helper.py': 'def f():\n    from dlp_training.data import build\n',
        'dlp_ros/offline/ros.py': 'import rclpy\n',
        'dlp_training/__init__.py': '',
        'dlp_training/tools.py': '',
        'dlp_training/data/__init__.py': '',
        'dlp_training/data/build.py': 'import torch\nfrom dlp_ros.offline import tool\n',
        'dlp_training/ros_user.py': 'from dlp_ros import node\n',
        'dlp_training/bag.py': 'def f():\n    from geometry_msgs.msg import Twist\n',
        'dlp_training/record.py': 'from dlp_ros.sim import scene\n',
        'dlp_ros/sim/__init__.py': '',
        'dlp_ros/sim/scene.py': 'import mujoco\nimport numpy\nfrom dlp_ros import errors\n',
        'dlp_ros/sim/ros_user.py': 'from sensor_msgs.msg import Image\n',
        'dlp_ros/sim/node.py': (
            'import rclpy\nfrom dlp_ros.sim import scene\nimport dlp_training\n'
        ),
        'dlp_ros/physics.py': 'import mujoco\n',
        'dlp_ros/sim_user.py': 'def f():\n    from dlp_ros.sim.scene import Scene\n',
    })  # fmt: skip
    lines = violations(tmp_path)
    found = '\n'.join(lines)
    expected = [
        'dlp_ros.core imports torch (dlp_ros/util.py:2 via dlp_ros.core -> dlp_ros.util) [runtime',
        'dlp_ros.util imports torch (dlp_ros/util.py:2) [runtime core',
        'dlp_ros.reader imports dlp_ros.offline.tool (dlp_ros/reader.py:1) [runtime core',
        'dlp_ros.offline.tool imports dlp_training.data.build (dlp_ros/offline/helper.py:2 via '
        'dlp_ros.offline.tool -> dlp_ros.offline.helper) [dlp_ros.offline',
        'dlp_ros.offline.ros imports rclpy (dlp_ros/offline/ros.py:1) [dlp_ros.offline',
        'dlp_training.ros_user imports dlp_ros.node (dlp_training/ros_user.py:1) [training',
        'dlp_training.bag imports geometry_msgs.msg (dlp_training/bag.py:2) [training',
        'dlp_ros.node imports torch.nn (dlp_ros/node.py:3) [ROS face',
        'dlp_ros.demo imports dlp_training.tools (dlp_ros/demo.py:1) [ROS face',
        'dlp_ros.sim.ros_user imports sensor_msgs.msg (dlp_ros/sim/ros_user.py:1) [dlp_ros.sim',
        'dlp_ros.sim.node imports dlp_training (dlp_ros/sim/node.py:3) [ROS face',
        'dlp_ros.physics imports mujoco (dlp_ros/physics.py:1) [runtime core',
        'dlp_ros.sim_user imports dlp_ros.sim.scene (dlp_ros/sim_user.py:2) [runtime core',
    ]
    for line in expected:
        assert line in found, f'missing {line!r} in:\n{found}'
    for allowed in ('dlp_ros.clean ', 'dlp_ros.errors ', 'dlp_training.data.build ',
                    'dlp_ros.offline.tool imports rosbags', 'dlp_ros.node imports rclpy',
                    'dlp_ros.node imports dlp_ros.msg', 'dlp_training.record ',
                    'dlp_ros.sim.scene ', 'dlp_ros.sim.node imports rclpy',
                    'dlp_ros.sim.node imports dlp_ros.sim.scene'):  # fmt: skip
        assert not any(line.startswith(allowed) for line in lines), f'{allowed!r} in:\n{found}'


def _loads(modules: list[str], roots: list[str]) -> dict[str, list[str]]:
    """Import ``modules`` one after another in a fresh interpreter: module -> the modules under
    ``roots`` that its import loaded first."""
    code = (
        'import importlib, json, sys\n'
        f'roots, out = {roots!r}, {{}}\n'
        'def hits():\n'
        '    return {m for m in sys.modules\n'
        "            if any(m == r or m.startswith(r + '.') for r in roots)}\n"
        f'for name in {modules!r}:\n'
        '    before = hits()\n'
        '    importlib.import_module(name)\n'
        '    out[name] = sorted(hits() - before)\n'
        'print(json.dumps(out))\n'
    )
    run = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def _part(select: Callable[[str], bool]) -> list[str]:
    return sorted(m for m in module_names(ROOT) if select(m))


@pytest.mark.parametrize(
    ('select', 'roots'),
    [
        (
            is_core,
            ['torch', 'torch_geometric', 'dlp_training', 'rclpy', 'rosbags', 'mujoco', OFFLINE,
             SIM, *ROS_FACE],
        ),
        (is_offline, ['torch', 'torch_geometric', 'dlp_training', 'rclpy', *ROS_FACE]),
        (is_sim, ['torch', 'torch_geometric', 'dlp_training', 'rclpy', 'rosbags', OFFLINE,
                  *ROS_FACE]),
    ],
    ids=['runtime core', 'dlp_ros.offline', 'dlp_ros.sim'],
)  # fmt: skip
def test_importing_loads_nothing_forbidden(
    select: Callable[[str], bool], roots: list[str]
) -> None:
    if select is is_sim and importlib.util.find_spec('mujoco') is None:
        pytest.skip('the simulation needs mujoco (the [train] extra)')
    loaded = {m: hits for m, hits in _loads(_part(select), roots).items() if hits}
    assert not loaded, f'importing these modules pulled in forbidden ones: {loaded}'


def test_importing_the_ros_face_loads_no_torch_or_training() -> None:
    if (
        importlib.util.find_spec('rclpy') is None
        or importlib.util.find_spec('dlp_ros.msg') is None
    ):
        pytest.skip('needs rclpy and the built dlp_ros messages (source scripts/env.sh)')
    loaded = {m: h for m, h in _loads(_part(is_ros_face), ['torch', 'dlp_training']).items() if h}
    assert not loaded, f'importing the ROS face pulled in: {loaded}'


def test_the_planner_is_cut_like_the_perception_node() -> None:
    """Its maths is runtime core (no rclpy: testable and reusable without ROS), its node is ROS
    face."""
    modules = module_names(ROOT)
    assert 'dlp_ros.mpc' in modules and is_core('dlp_ros.mpc')
    assert 'dlp_ros.planner_node' in modules and is_ros_face('dlp_ros.planner_node')
