"""package.xml declares the ROS packages the installed code imports (rosdep installs from it),
and no ROS package that nothing uses."""

from __future__ import annotations

import ast
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# what a robot runs: the ROS face, the runtime and the launch file (training is pip-installed)
INSTALLED = [*sorted((ROOT / 'dlp_ros').rglob('*.py')), *sorted((ROOT / 'launch').glob('*.py'))]
ROS_PACKAGES = {'rclpy', 'rcl_interfaces', 'builtin_interfaces', 'ament_index_python', 'launch',
                'launch_ros'}  # fmt: skip
# needed at run time without an import of their own: the generated messages' runtime, and the
# lifecycle services rclpy's LifecycleNode serves
IMPLIED = {'rosidl_default_runtime', 'lifecycle_msgs'}


def is_ros_package(name: str) -> bool:
    return name in ROS_PACKAGES or name.endswith(('_msgs', '_srvs'))


def imported_ros_packages(files: list[Path]) -> dict[str, Path]:
    """Top-level ROS package -> the first file importing it (imports inside functions too)."""
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
                if is_ros_package(top):
                    found.setdefault(top, path)
    return found


def declared() -> set[str]:
    root = ET.parse(ROOT / 'package.xml').getroot()
    tags = ('depend', 'exec_depend', 'build_depend')
    return {e.text.strip() for tag in tags for e in root.iter(tag) if e.text}


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


def test_the_checker_sees_lazy_imports(tmp_path: Path) -> None:
    code = 'def f():\n    from visualization_msgs.msg import MarkerArray\n    import rclpy.node\n'
    (tmp_path / 'm.py').write_text(code)
    assert set(imported_ros_packages([tmp_path / 'm.py'])) == {'visualization_msgs', 'rclpy'}
