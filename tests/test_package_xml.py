"""package.xml against the imports: it declares the ROS packages and the Python libraries (by
their rosdep keys) that the installed code imports (rosdep installs from it), what the tests import
as test_depend, every dependency once, and no ROS package that nothing uses."""

from __future__ import annotations

import ast
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# what a robot runs: the ROS face, the runtime and the launch file (training is pip-installed)
INSTALLED = [*sorted((ROOT / 'dlp_ros').rglob('*.py')), *sorted((ROOT / 'launch').glob('*.py'))]
ROS_PACKAGES = {'rclpy', 'rcl_interfaces', 'builtin_interfaces', 'ament_index_python', 'launch',
                'launch_ros'}  # fmt: skip
# needed at run time without an import of their own: the generated messages' runtime, and the
# lifecycle services rclpy's LifecycleNode serves
IMPLIED = {'rosidl_default_runtime', 'lifecycle_msgs'}
TESTS = sorted((ROOT / 'tests').rglob('*.py'))
# this project's packages and the tests' own modules (conftest, tests/ros/node_harness, ...)
FIRST_PARTY = {'dlp_ros', 'dlp_training'} | {path.stem for path in TESTS}
# Python libraries with a rosdep key: import name -> key
ROSDEP_KEYS = {'numpy': 'python3-numpy', 'cv2': 'python3-opencv', 'yaml': 'python3-yaml',
               'pytest': 'python3-pytest', 'catkin_pkg': 'python3-catkin-pkg'}  # fmt: skip
# Imported, but installed by pip (setup.py extras: the ONNX runtime, the offline bag tools, the
# simulator, training), never by rosdep: the README's install steps say so.
PIP_ONLY = {'onnxruntime', 'rosbags', 'apsw', 'compression', 'backports', 'PIL', 'imageio',
            'mujoco', 'torch', 'torch_geometric', 'tensorboard'}  # fmt: skip


def is_ros_package(name: str) -> bool:
    return name in ROS_PACKAGES or name.endswith(('_msgs', '_srvs'))


def imported_packages(files: list[Path]) -> dict[str, Path]:
    """Top-level imported package (not the standard library, not relative) -> the first file
    importing it (imports inside functions too)."""
    found: dict[str, Path] = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split('.')[0]
                if top not in sys.stdlib_module_names:
                    found.setdefault(top, path)
    return found


def imported_ros_packages(files: list[Path]) -> dict[str, Path]:
    """Top-level ROS package -> the first file importing it (imports inside functions too)."""
    return {k: v for k, v in imported_packages(files).items() if is_ros_package(k)}


def dependencies(tags: tuple[str, ...]) -> list[str]:
    """The package.xml entries of these tags, in order, repeats kept."""
    root = ET.parse(ROOT / 'package.xml').getroot()
    return [e.text.strip() for tag in tags for e in root.iter(tag) if e.text]


def declared() -> set[str]:
    """What the installed code may use at run time (depend, exec_depend, build_depend)."""
    return set(dependencies(('depend', 'exec_depend', 'build_depend')))


def rosdep_key(name: str) -> str | None:
    """The package.xml entry an imported top-level name needs (None: first party or pip only)."""
    if name in FIRST_PARTY or name in PIP_ONLY:
        return None
    if is_ros_package(name):
        return name
    return ROSDEP_KEYS.get(name, f'<no rosdep key known for {name}>')


def message_dependencies() -> set[str]:
    """Packages whose types our .msg/.srv files use (``pkg/Type``, or a bare Header/Image)."""
    used = set()
    for path in [*(ROOT / 'msg').glob('*.msg'), *(ROOT / 'srv').glob('*.srv')]:
        for line in path.read_text().splitlines():
            field = line.split('#')[0].split()
            if len(field) >= 2 and '/' in field[0]:
                used.add(field[0].split('/')[0])
    return used


def test_every_imported_ros_package_is_declared() -> None:
    missing = {pkg: str(path.relative_to(ROOT))
               for pkg, path in imported_ros_packages(INSTALLED).items()
               if pkg not in declared()}  # fmt: skip
    assert not missing, f'imported but not in package.xml (package: first importer): {missing}'


def test_every_declared_ros_package_is_used() -> None:
    used = set(imported_ros_packages(INSTALLED)) | message_dependencies() | IMPLIED
    unused = {d for d in declared() if is_ros_package(d) and d not in used}
    assert not unused, f'in package.xml but imported by nothing installed: {sorted(unused)}'


def test_every_imported_python_library_is_declared_by_its_rosdep_key() -> None:
    """numpy, cv2, yaml ... as python3-numpy, python3-opencv, python3-yaml; a library new to the
    code must be added here (its key) or to PIP_ONLY, with a reason."""
    missing = {name: f'{rosdep_key(name)} ({path.relative_to(ROOT)})'
               for name, path in imported_packages(INSTALLED).items()
               if rosdep_key(name) is not None and rosdep_key(name) not in declared()}  # fmt: skip
    assert not missing, f'imported but not declared in package.xml: {missing}'


def test_what_the_tests_import_is_declared_for_the_tests() -> None:
    everything = set(dependencies(('depend', 'exec_depend', 'build_depend', 'test_depend')))
    missing = {name: f'{rosdep_key(name)} ({path.relative_to(ROOT)})'
               for name, path in imported_packages(TESTS).items()
               if rosdep_key(name) is not None and rosdep_key(name) not in everything}  # fmt: skip
    assert not missing, f'imported by the tests but no (test_)depend in package.xml: {missing}'
    tests_only = set(dependencies(('test_depend',))) - declared()
    used = {rosdep_key(name) for name in imported_packages(TESTS)}
    assert tests_only <= used, f'test_depend that no test imports: {sorted(tests_only - used)}'


def test_every_dependency_is_declared_once() -> None:
    """One entry per package (opencv too: a rosdep install gets one cv2)."""
    tags = ('depend', 'exec_depend', 'build_depend', 'buildtool_depend', 'test_depend')
    twice = [name for name, n in Counter(dependencies(tags)).items() if n > 1]
    assert not twice, f'declared more than once in package.xml: {twice}'
    opencv = [d for d in dependencies(tags) if 'opencv' in d or d == 'cv_bridge']
    assert opencv == ['python3-opencv'], opencv


def test_the_checker_sees_lazy_imports(tmp_path: Path) -> None:
    code = 'def f():\n    from visualization_msgs.msg import MarkerArray\n    import rclpy.node\n'
    (tmp_path / 'm.py').write_text(code)
    assert set(imported_ros_packages([tmp_path / 'm.py'])) == {'visualization_msgs', 'rclpy'}


def test_the_checker_maps_libraries_to_rosdep_keys(tmp_path: Path) -> None:
    code = 'import os\nimport numpy as np\nimport cv2\nfrom onnxruntime import InferenceSession\n'
    (tmp_path / 'm.py').write_text(code)
    found = imported_packages([tmp_path / 'm.py'])
    assert set(found) == {'numpy', 'cv2', 'onnxruntime'}  # os: the standard library
    assert [rosdep_key(n) for n in sorted(found)] == ['python3-opencv', 'python3-numpy', None]
    assert rosdep_key('scipy') == '<no rosdep key known for scipy>'
