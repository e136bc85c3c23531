"""evaluate-planning end to end over real ROS 2 (dlp_ros.sim.evaluate): the simulator and the
perception node (tiny bundle with actions) as processes, the built-in random driver, two short
episodes; the report, the tasks (the same as the simulator draws offline) and the videos."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip('rclpy')
pytest.importorskip('dlp_ros.srv')
pytest.importorskip('mujoco')
cv2 = pytest.importorskip('cv2')

from dlp_ros.sim import evaluate  # noqa: E402
from dlp_ros.sim.lockstep import LockstepSim  # noqa: E402

pytestmark = pytest.mark.ros
HERE = Path(__file__).resolve().parent
BUNDLE = HERE.parents[1] / 'bundles' / 'tabletop64'


def frame_count(path: Path) -> int:
    if path.suffix == '.gif':
        ok, frames = cv2.imreadanimation(str(path))
        return len(frames.frames) if ok else 0
    cap = cv2.VideoCapture(str(path))
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    return count


def test_random_mode_two_episodes(tmp_path: Path, bundle_actions: Path) -> None:
    out = tmp_path / 'eval'
    args = ['--bundle', str(bundle_actions), '--episodes', '2', '--seed', '40', '--steps', '4',
            '--planner-model', 'random', '--out', str(out)]  # fmt: skip
    code = evaluate.main(args)
    logs = '\n'.join(p.read_text()[-2000:] for p in sorted((out / 'logs').rglob('*.log')))
    assert code == 0, logs
    report = json.loads((out / 'report.json').read_text())
    assert list(report['modes']) == ['random'] and report['seeds'] == [40, 41]
    row = report['modes']['random']
    assert row['episodes'] == 2 and row['missed_steps'] == 0, logs
    assert row['planning_ms']['n'] == 0 and row['planner_status'] == {}, 'no planner'
    sim = LockstepSim(size=64)
    try:
        for episode in row['per_episode']:
            task = sim.reset(episode['seed']).task
            assert episode['object_id'] == task.object_id
            assert np.allclose(episode['goal_uv'], task.goal_uv, atol=1e-4)
            assert np.allclose(episode['start_uv'], task.start_uv, atol=1e-4)
            assert episode['initial_distance'] == pytest.approx(
                np.hypot(*np.subtract(task.start_uv, task.goal_uv)), abs=1e-2)  # fmt: skip
            steps = episode['steps']
            assert steps == 4 or episode['success']
            assert len(episode['loop_ms']) == steps, 'a command for every frame but the last'
            assert all(0 < ms < 60_000 for ms in episode['loop_ms'])
            video = out / 'videos' / episode['video']
            assert frame_count(video) == steps + 1
    finally:
        sim.close()


def test_sim_mode_with_a_stand_in_planner(tmp_path: Path) -> None:
    """Planner mode over the simulator's /sim/predict_batch (the shipped bundle's particles,
    carried by the simulated objects), with the protocol-only stand-in planner
    (tests/ros/stand_in_planner.py): its commands close the loop in lockstep, its diagnostics
    give the planning times and the drawn path, and it pushes the object of seed 10001 to the
    goal (lockstep, a deterministic simulator and model: the same every run)."""
    if not (BUNDLE / 'model_card.yaml').is_file():
        pytest.skip('the shipped tabletop64 bundle is not in this checkout')
    out = tmp_path / 'eval'
    planner = f'{sys.executable} {HERE / "stand_in_planner.py"}'
    args = ['--bundle', str(BUNDLE), '--episodes', '1', '--seed', '10001',
            '--steps', '40', '--planner-model', 'sim', '--planner-command', planner,
            '--out', str(out)]  # fmt: skip
    code = evaluate.main(args)
    logs = '\n'.join(p.read_text()[-2000:] for p in sorted((out / 'logs').rglob('*.log')))
    assert code == 0, logs
    row = json.loads((out / 'report.json').read_text())['modes']['sim']
    (episode,) = row['per_episode']
    assert episode['success'] and row['success_rate'] == 1.0, (episode, logs)
    assert episode['final_distance'] <= 3.0 < episode['initial_distance']
    assert episode['missed_steps'] == 0
    assert len(episode['planning_ms']) == episode['steps'] > 0, 'one plan per command'
    assert len(json.loads(row['planner_status']['path_uv'])) == 5
    assert frame_count(out / 'videos' / episode['video']) == episode['steps'] + 1


@pytest.mark.skipif(importlib.util.find_spec(evaluate.PLANNER_MODULE) is not None,
                    reason='the planner is installed')  # fmt: skip
def test_planner_modes_need_the_planner(tmp_path: Path, bundle_actions: Path) -> None:
    code = evaluate.main(['--bundle', str(bundle_actions), '--episodes', '1', '--out',
                          str(tmp_path / 'eval'), '--planner-model', 'service'])  # fmt: skip
    assert code == 2
