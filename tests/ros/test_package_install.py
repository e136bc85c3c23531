"""The colcon install: generated messages and the hand-written runtime side by side."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from catkin_pkg.package import parse_package

ROOT = Path(__file__).resolve().parents[2]


def test_package_xml_is_format_3_ament_cmake() -> None:
    pkg = parse_package(str(ROOT / 'package.xml'))
    assert pkg.name == 'dlp_ros' and pkg.package_format == 3
    assert pkg.get_build_type() == 'ament_cmake'
    assert 'rosidl_interface_packages' in [g.name for g in pkg.member_of_groups]


def test_installed_package_has_messages_and_runtime(tmp_path: Path) -> None:
    """From a directory outside the checkout, only the colcon install provides dlp_ros."""
    code = (
        'import dlp_ros, dlp_ros.msg, dlp_ros.image_codec, dlp_ros.errors\n'
        'from dlp_ros.msg import Particle, ParticleArray, Prediction\n'
        'print(dlp_ros.msg.__file__); print(dlp_ros.image_codec.__file__)\n'
        'print(sorted(ParticleArray.get_fields_and_field_types()))\n'
    )
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONSAFEPATH'}
    out = subprocess.run(
        [sys.executable, '-c', code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    msg_file, codec_file, fields = out.stdout.strip().splitlines()[-3:]
    install = str(ROOT / 'install')
    assert msg_file.startswith(install), msg_file
    assert codec_file.startswith(install), f'hand-written module not installed: {codec_file}'
    assert "'particles'" in fields and "'header'" in fields


def test_installed_package_has_offline_tools_and_demo(tmp_path: Path) -> None:
    """dlp_ros.offline (a subpackage), the demo and the shared-memory cleanup are installed; the
    installed bag tools find the message definitions in the install's share/dlp_ros/msg."""
    code = (
        'import dlp_ros.dds_shm, dlp_ros.demo, dlp_ros.offline.replay\n'
        'from dlp_ros.offline.typestore import msg_dir\n'
        'for m in (dlp_ros.dds_shm, dlp_ros.demo, dlp_ros.offline.replay): print(m.__file__)\n'
        'print(msg_dir())\n'
    )
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONSAFEPATH'}
    out = subprocess.run(
        [sys.executable, '-c', code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    *files, msg = out.stdout.strip().splitlines()[-4:]
    install = str(ROOT / 'install')
    for file in files:
        assert file.startswith(install), f'not installed: {file}'
    assert Path(msg) == Path(install) / 'dlp_ros' / 'share' / 'dlp_ros' / 'msg', msg


def test_install_share_has_message_definitions() -> None:
    share = ROOT / 'install' / 'dlp_ros' / 'share' / 'dlp_ros'
    for name in ('Particle', 'ParticleArray', 'Prediction'):
        assert (share / 'msg' / f'{name}.msg').read_text() == (
            ROOT / 'msg' / f'{name}.msg'
        ).read_text()


def test_install_has_services_node_executable_launch_and_config() -> None:
    """colcon installs srv/, lib/dlp_ros/perception_node and push_planner (executables, this
    build's Python), the launch files and config/perception.yaml."""
    prefix = ROOT / 'install' / 'dlp_ros'
    share = prefix / 'share' / 'dlp_ros'
    for name in ('Predict', 'PredictBatch', 'Render'):
        assert (share / 'srv' / f'{name}.srv').read_text() == (
            ROOT / 'srv' / f'{name}.srv'
        ).read_text()
    for rel in (
        'launch/perception.launch.py',
        'launch/planner.launch.py',
        'config/perception.yaml',
    ):
        assert (share / rel).read_text() == (ROOT / rel).read_text(), f'{rel}: rebuild'
    for executable in ('perception_node', 'push_planner'):
        node = prefix / 'lib' / 'dlp_ros' / executable
        assert os.access(node, os.X_OK), node
        shebang = node.read_text().splitlines()[0]
        assert shebang.startswith('#!') and Path(shebang[2:]).exists(), shebang
    code = 'from dlp_ros.srv import Predict, Render; import dlp_ros.node, dlp_ros.planner_node'
    out = subprocess.run(
        [sys.executable, '-c', code], cwd=ROOT / 'install', capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr


def test_install_has_the_simulator() -> None:
    """colcon installs lib/dlp_ros/tabletop_sim (this build's Python), srv/ResetEpisode.srv and
    launch/sim.launch.py; the installed modules import, and the executable refuses a bad
    parameter with exit code 2 (it runs dlp_ros.sim.node:main)."""
    prefix = ROOT / 'install' / 'dlp_ros'
    share = prefix / 'share' / 'dlp_ros'
    for rel in ('srv/ResetEpisode.srv', 'launch/sim.launch.py'):
        assert (share / rel).read_text() == (ROOT / rel).read_text(), f'{rel}: rebuild'
    sim = prefix / 'lib' / 'dlp_ros' / 'tabletop_sim'
    assert os.access(sim, os.X_OK), sim
    shebang = sim.read_text().splitlines()[0]
    assert shebang.startswith('#!') and Path(shebang[2:]).exists(), shebang
    out = subprocess.run(
        [sys.executable, '-c', 'from dlp_ros.srv import ResetEpisode; import dlp_ros.sim.node'],
        cwd=ROOT / 'install', capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    bad = subprocess.run([str(sim), '--ros-args', '-p', 'goal_min_distance:=0.5', '-p',
                          'goal_max_distance:=0.2'], capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert 'goal_min_distance must be below goal_max_distance' in bad.stdout + bad.stderr
