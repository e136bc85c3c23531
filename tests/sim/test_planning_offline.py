"""benchmarks/planning_offline.py: the push planner's maths closes the loop on true positions,
and the perception mode follows the shipped bundle's particles (no ROS)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip('mujoco')
pytest.importorskip('onnxruntime')

from dlp_ros.mpc import PlannerConfig  # noqa: E402
from dlp_ros.pipeline import PerceptionPipeline  # noqa: E402
from dlp_ros.runtime import DlpRuntime  # noqa: E402
from dlp_ros.sim.lockstep import LockstepSim  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        'planning_offline', ROOT / 'benchmarks' / 'planning_offline.py'
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def sim() -> Iterator[LockstepSim]:
    s = LockstepSim()
    yield s
    s.close()


def test_true_positions_reach_the_goal(sim: LockstepSim) -> None:
    bench = load()
    config = PlannerConfig.from_values({'time_budget': 60.0, 'iterations': 1})
    result = bench.run_episode('truth', 30002, sim, None, config, steps=40)
    assert result.success and result.final_px <= 3.0, result
    assert result.offset_start_px == 0.0


def test_perception_follows_a_tracked_particle(sim: LockstepSim) -> None:
    bench = load()
    rt = DlpRuntime.load(ROOT / 'bundles' / 'tabletop64', 'cpu', threads=1)
    config = PlannerConfig.from_values({'time_budget': 60.0, 'iterations': 1, 'samples': 8})
    for mode in ('perception', 'learned'):
        result = bench.run_episode(mode, 30002, sim, PerceptionPipeline(rt), config, steps=2)
        assert result.steps == 2 and not result.success
        assert 0.0 < result.offset_start_px < 64.0  # a real particle, somewhere in the image
