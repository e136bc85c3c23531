"""dlp_ros.mpc: the planner's parameters, the object's particle, the cost and the CEM (no ROS)."""

from __future__ import annotations

import numpy as np
import pytest

from dlp_ros.errors import ConfigError
from dlp_ros.mpc import (
    MAX_SPEED,
    PLANNER_PARAMS,
    CemPlanner,
    PlannerConfig,
    approach_costs,
    costs,
    held_rollout,
    pick_particle,
    pushing_particle,
)

GAIN = 20.0  # px per (m/s) per step of the toy model below


def linear_rollout(u0: np.ndarray, v0: np.ndarray, pushed: int):
    """A toy model: particle ``pushed`` moves GAIN px per (m/s) per step, the others stay."""

    def rollout(actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        b, n, _ = actions.shape
        u = np.broadcast_to(u0, (b, n, len(u0))).copy()
        v = np.broadcast_to(v0, (b, n, len(v0))).copy()
        u[:, :, pushed] += GAIN * np.cumsum(actions[:, :, 0], axis=1)
        v[:, :, pushed] += GAIN * np.cumsum(actions[:, :, 1], axis=1)
        return u, v, np.ones_like(u)

    return rollout


def test_config_defaults_and_refusals() -> None:
    config = PlannerConfig.from_values({})
    assert config.model == 'service' and config.max_speed == MAX_SPEED == 0.3
    assert all(spec.description for spec in PLANNER_PARAMS)
    assert PlannerConfig.from_values({'time_budget': 1}).time_budget == 1.0  # int for a float
    for values, match in (
        ({'model': 'oracle'}, 'must be one of'),
        ({'samples': 0}, 'must be >= 1'),
        ({'samples': 4, 'elites': 8}, r'elites \(8\) must be <= samples \(4\)'),
        ({'speed': 1.0}, 'unknown parameter'),
    ):
        with pytest.raises(ConfigError, match=match):
            PlannerConfig.from_values(values)


def test_pick_particle_takes_the_nearest_on_particle() -> None:
    u, v = np.array([10.0, 30.0, 31.0]), np.array([10.0, 30.0, 30.0])
    assert pick_particle(u, v, np.array([1.0, 1.0, 1.0]), (30.4, 30.0), 0.5) == 1
    assert pick_particle(u, v, np.array([1.0, 0.1, 1.0]), (30.4, 30.0), 0.5) == 2  # 1 is off
    assert pick_particle(u, v, np.zeros(3), (12.0, 9.0), 0.5) == 0  # none on: all count


def test_cost_is_squared_pixel_distance_plus_action_penalty() -> None:
    u = np.array([[[0.0, 3.0], [0.0, 6.0]]])  # (B=1, N=2, K=2)
    v = np.array([[[0.0, 4.0], [0.0, 8.0]]])
    actions = np.array([[[0.1, 0.2], [0.0, 0.3]]])
    got = costs(u, v, 1, (0.0, 0.0), actions, 10.0)
    assert got == pytest.approx([25.0 + 100.0 + 10.0 * (0.01 + 0.04 + 0.09)])


def test_cem_pushes_the_particle_toward_the_goal_within_limits() -> None:
    config = PlannerConfig.from_values({'samples': 64, 'horizon': 5, 'iterations': 4,
                                        'time_budget': 10.0, 'seed': 1})  # fmt: skip
    planner = CemPlanner(config)
    u0, v0 = np.array([10.0, 32.0]), np.array([10.0, 32.0])
    result = planner.plan(linear_rollout(u0, v0, pushed=1), 1, (52.0, 12.0))
    assert result.iterations == 4 and result.planning_ms > 0
    assert result.plan.shape == (5, 2) and np.all(np.abs(result.plan) <= MAX_SPEED)
    assert result.command[0] > 0.15 and result.command[1] < -0.15, result.command  # +u, -v
    still = costs(*linear_rollout(u0, v0, 1)(np.zeros((1, 5, 2), np.float32))[:2], 1,
                  (52.0, 12.0), np.zeros((1, 5, 2)), config.action_weight)  # fmt: skip
    assert result.cost < 0.5 * still[0]
    shifted = planner.next_command()
    np.testing.assert_allclose(shifted, result.plan[1])


def test_no_action_model_costs_only_effort_and_budget_limits_iterations() -> None:
    config = PlannerConfig.from_values({'samples': 16, 'horizon': 3, 'iterations': 5,
                                        'time_budget': 0.0})  # fmt: skip
    planner = CemPlanner(config)
    u, v = np.array([5.0, 6.0]), np.array([7.0, 8.0])
    result = planner.plan(held_rollout(u, v, np.ones(2)), 0, (40.0, 40.0))
    assert result.iterations == 1  # the budget is spent after the first
    held = costs(*held_rollout(u, v, np.ones(2))(np.zeros((1, 3, 2)))[:2], 0, (40.0, 40.0),
                 np.zeros((1, 3, 2)), 0.0)  # fmt: skip
    effort = np.square(result.plan.astype(np.float64)).sum() * config.action_weight
    assert result.cost == pytest.approx(held[0] + effort)
    random = planner.random_command()
    assert random.shape == (2,) and np.all(np.abs(random) <= MAX_SPEED)


def test_the_approach_term_brings_the_pusher_behind_the_object() -> None:
    """Particle 0 is moved by the commands (1 px per step per 0.1 m/s), particle 1 (the object)
    stays: the candidate that heads for the contact point behind the object costs least."""
    b, n = 3, 4
    actions = np.zeros((b, n, 2), np.float32)
    actions[1, :, 0] = 0.1  # towards +u: behind the object (object at u=20, goal at u=40)
    actions[2, :, 0] = -0.1  # away from it
    u = np.zeros((b, n, 2), np.float32)
    v = np.full((b, n, 2), 10.0, np.float32)
    u[:, :, 0] = 10.0 + np.cumsum(actions[:, :, 0] * 10.0, axis=1)
    u[:, :, 1] = 20.0
    assert pushing_particle(u, v, 1) == 0
    cost = approach_costs(u, v, 1, (40.0, 10.0), contact=5.0)
    assert cost[1] < cost[0] < cost[2]
    still = np.zeros_like(u) + 5.0
    assert pushing_particle(still, still, 1) is None  # nothing moves: no pusher, no term
    np.testing.assert_array_equal(approach_costs(still, still, 1, (40.0, 10.0), 5.0), 0.0)
