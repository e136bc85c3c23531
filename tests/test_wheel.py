"""The wheel (``pip wheel .``): both packages, the training configs and the shipped bundles, no
top-level name that can collide in a user's environment, OpenCV only in the non-ROS extras."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What setup.py builds from; copied so that the build leaves nothing in the checkout (its build/
# folder is colcon's).
SOURCES = ('setup.py', 'pyproject.toml', 'dlp_ros', 'dlp_training', 'bundles')
DATA = 'dlp_ros-0.1.0.data/data/share/dlp_ros/bundles'


@pytest.fixture(scope='module')
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    pytest.importorskip('setuptools')
    src, out = tmp_path_factory.mktemp('src'), tmp_path_factory.mktemp('wheels')
    ignore = shutil.ignore_patterns('__pycache__', '*.pyc', '*.egg-info')
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    cmd = [sys.executable, '-m', 'pip', 'wheel', str(src), '--no-deps', '--no-build-isolation',
           '--no-index', '-q', '-w', str(out)]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout + run.stderr
    (built,) = out.glob('dlp_ros-0.1.0-*.whl')
    return zipfile.ZipFile(built)


def test_the_wheel_has_both_packages_and_no_other_top_level_name(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    tops = {n.split('/')[0] for n in names}
    assert tops == {'dlp_ros', 'dlp_training', 'dlp_ros-0.1.0.dist-info', 'dlp_ros-0.1.0.data'}
    for module in ('dlp_ros/runtime.py', 'dlp_ros/bundle_paths.py', 'dlp_ros/offline/replay.py',
                   'dlp_ros/sim/tabletop.py', 'dlp_training/__main__.py',
                   'dlp_training/models/dlp.py'):  # fmt: skip
        assert module in names, module
    assert not any(n.startswith(('training/', 'tests/', 'benchmarks/')) for n in names)


def test_the_wheel_carries_every_training_config(wheel: zipfile.ZipFile) -> None:
    configs = sorted(p.name for p in (ROOT / 'dlp_training' / 'configs').glob('*.yaml'))
    assert 'dlp_balls64.yaml' in configs and 'dynamics_tabletop64.yaml' in configs
    inside = sorted(
        n.rsplit('/', 1)[1] for n in wheel.namelist() if n.startswith('dlp_training/configs/')
    )
    assert inside == configs


def test_the_wheel_carries_the_shipped_bundles_as_share_data(wheel: zipfile.ZipFile) -> None:
    """Installed, they land in <prefix>/share/dlp_ros/bundles/<name>/, like colcon's."""
    names = set(wheel.namelist())
    bundles = sorted(p.parent for p in (ROOT / 'bundles').glob('*/model_card.yaml'))
    assert {b.name for b in bundles} >= {'tabletop64', 'balls64'}
    for bundle in bundles:
        files = sorted(p.name for p in bundle.iterdir() if p.is_file())
        assert 'model_card.yaml' in files and 'encoder.onnx' in files and 'dynamics.onnx' in files
        for name in files:
            member = f'{DATA}/{bundle.name}/{name}'
            assert member in names, member
            assert wheel.read(member) == (bundle / name).read_bytes(), member


def test_the_wheel_entry_points_and_requirements(wheel: zipfile.ZipFile) -> None:
    """dlp-train runs dlp_training; OpenCV is no unconditional requirement and no ros-* extra's
    (a ROS install has python3-opencv from rosdep); each non-ROS runtime extra brings it."""
    points = wheel.read('dlp_ros-0.1.0.dist-info/entry_points.txt').decode()
    assert 'dlp-train = dlp_training.__main__:main' in points
    assert 'dlp-replay = dlp_ros.offline.replay:main' in points
    meta = Parser().parsestr(wheel.read('dlp_ros-0.1.0.dist-info/METADATA').decode())
    requires = meta.get_all('Requires-Dist')
    plain = [r for r in requires if 'extra ==' not in r]
    assert not any('opencv' in r for r in plain), plain
    extras = {}
    for req in requires:
        if 'extra ==' in req:
            extra = req.split('extra ==')[1].strip().strip('"\'')
            extras.setdefault(extra, []).append(req)
    for extra in ('cpu', 'gpu', 'train', 'offline', 'sim'):
        assert sum('opencv' in r for r in extras[extra]) == 1, (extra, extras[extra])
    for extra in ('ros-cpu', 'ros-gpu', 'ros-train'):
        assert extras[extra] and not any('opencv' in r for r in extras[extra]), extras[extra]
    assert not any('torch' in r for extra in ('cpu', 'gpu') for r in extras[extra])


def test_the_offline_tools_name_their_extra_when_rosbags_is_missing() -> None:
    """dlp-replay is installed with every extra; without rosbags (a robot's [cpu] install) it
    says what to install instead of a bare import error deep in the bag reader."""
    code = "import sys; sys.modules['rosbags'] = None; import dlp_ros.offline.replay"
    run = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode != 0
    assert "needs rosbags: pip install 'dlp-ros[offline]'" in run.stderr, run.stderr
