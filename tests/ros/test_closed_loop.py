"""One short closed-loop episode over ROS 2: simulator -> perception node -> push planner ->
simulator (dlp_ros.sim.evaluate, mode ``service``) moves the object toward its goal. Skipped
until the planner (``dlp_ros.planner_node``) is installed. Seed 10001: a task the planner solves
with the simulator as its model (seed 10000 it does not, with either model: docs/results.md), so
the test checks the loop and the learned model, not the planner's limits."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip('rclpy')
pytest.importorskip('dlp_ros.srv')
pytest.importorskip('mujoco')

from dlp_ros.sim import evaluate  # noqa: E402

pytestmark = [
    pytest.mark.ros,
    pytest.mark.skipif(importlib.util.find_spec(evaluate.PLANNER_MODULE) is None,
                       reason='the push planner (dlp_ros.planner_node) is not installed'),
]  # fmt: skip

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / 'bundles' / 'tabletop64'


def test_one_episode_moves_the_object_toward_the_goal(tmp_path: Path) -> None:
    if not (BUNDLE / 'model_card.yaml').is_file():
        pytest.skip('the shipped tabletop64 bundle is not in this checkout')
    out = tmp_path / 'loop'
    args = ['--bundle', str(BUNDLE), '--episodes', '1', '--seed', '10001', '--steps', '30',
            '--planner-model', 'service', '--no-video', '--out', str(out)]  # fmt: skip
    code = evaluate.main(args)
    logs = '\n'.join(p.read_text()[-3000:] for p in sorted((out / 'logs').rglob('*.log')))
    assert code == 0, logs
    (episode,) = json.loads((out / 'report.json').read_text())['modes']['service']['per_episode']
    assert episode['missed_steps'] == 0, logs
    assert len(episode['loop_ms']) == episode['steps'], 'the planner answered every frame'
    assert episode['final_distance'] < episode['initial_distance'] - 1.0, episode
