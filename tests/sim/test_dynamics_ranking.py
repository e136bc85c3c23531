"""benchmarks/dynamics_ranking.py: its figures on hand-made rollouts (a perfect model, one
that leaks the command into a still particle, one that pushes the object half as far), and one
short run of the script."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

pytest.importorskip('mujoco')
pytest.importorskip('onnxruntime')

from dlp_ros.mpc import PlannerConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def load() -> ModuleType:
    sys.path.insert(0, str(ROOT / 'benchmarks'))
    spec = importlib.util.spec_from_file_location(
        'dynamics_ranking', ROOT / 'benchmarks' / 'dynamics_ranking.py'
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_figures_of_a_perfect_and_a_leaking_model() -> None:
    ranking = load()
    config = PlannerConfig.from_values({})
    rng = np.random.default_rng(0)
    samples = rng.uniform(-0.3, 0.3, (16, 5, 2)).astype(np.float32)  # (B, N, 2)
    u = np.tile(np.array([10.0, 30.0, 50.0]), (16, 5, 1))  # (B, N, K): particle 0 the pusher
    v = np.full((16, 5, 3), 32.0)
    u[:, :, 0] += np.cumsum(samples[:, :, 0], axis=1) * 20.0  # the commands move the pusher
    v[:, :, 0] += np.cumsum(samples[:, :, 1], axis=1) * 20.0
    goal = (40.0, 20.0)
    start = (u[0, 0].copy(), v[0, 0].copy())
    start[0][0] -= samples[0, 0, 0] * 20.0  # the pusher before the first command
    start[1][0] -= samples[0, 0, 1] * 20.0
    same = ranking.compare((u, v), (u, v), start, 1, goal, samples, config)
    assert same['regret'] == 0.0 and same['rank_corr'] == pytest.approx(1.0)
    assert same['followed_err_px'] == 0.0 and same['leak_px'] == 0.0
    assert same['followed_leak_px'] == 0.0 and 0.0 < same['regret_random'] < 1.0
    leaky_u = u.copy()
    leaky_u[:, :, 1] += u[:, :, 0] - u[:, :1, 0]  # the followed object moves with the pusher
    leaky = ranking.compare((u, v), (leaky_u, v), start, 1, goal, samples, config)
    assert leaky['followed_leak_px'] > 1.0 and leaky['followed_err_px'] > 0.0
    assert leaky['rank_corr'] < 0.99
    assert 'push_gain' not in same  # the simulator never moves the followed object here


def test_push_gain_is_how_far_the_model_pushes_against_the_simulator() -> None:
    ranking = load()
    config = PlannerConfig.from_values({})
    samples = np.random.default_rng(1).uniform(-0.3, 0.3, (16, 5, 2)).astype(np.float32)
    u = np.tile(np.array([10.0, 30.0]), (16, 5, 1))  # (B, N, K): particle 1 is pushed
    v = np.full((16, 5, 2), 32.0)
    push = np.linspace(0.0, 8.0, 16)[:, None]  # (B, 1) px: half the candidates push it > 2 px
    u[:, :, 1] += push * np.linspace(0.2, 1.0, 5)
    start = (np.array([10.0, 30.0]), np.array([32.0, 32.0]))
    half_u = u.copy()
    half_u[:, :, 1] = 30.0 + 0.5 * (u[:, :, 1] - 30.0)
    goal = (50.0, 32.0)
    assert ranking.compare((u, v), (u, v), start, 1, goal, samples, config)['push_gain'] == (
        pytest.approx(1.0))  # fmt: skip
    half = ranking.compare((u, v), (half_u, v), start, 1, goal, samples, config)
    assert half['push_gain'] == pytest.approx(0.5)
    held = np.broadcast_to(start[0], u.shape), np.broadcast_to(start[1], v.shape)
    assert ranking.compare((u, v), held, start, 1, goal, samples, config)['push_gain'] == 0.0


def test_script_prints_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    ranking = load()
    bundle = ROOT / 'bundles' / 'tabletop64'
    assert ranking.main(['--bundle', str(bundle), '--episodes', '1', '--steps', '3',
                         '--every', '2', '--samples', '8', '--horizon', '3']) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(summary) == {str(bundle), 'no_action'}
    assert summary[str(bundle)]['decisions'] == 2 and 0.0 <= summary[str(bundle)]['regret'] <= 1.0
    assert summary['no_action']['leak_px'] == 0.0
