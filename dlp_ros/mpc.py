"""Sampling-based model-predictive control for pushing one object to a goal pixel (no ROS, no
torch): the maths of the reference planner node (:mod:`dlp_ros.planner_node`).

```python
config = PlannerConfig.from_values({'samples': 64, 'horizon': 10})
planner = CemPlanner(config, seed=0)
k = pick_particle(u, v, presence, start=(su, sv))       # the goal object's particle, once
plan = planner.plan(rollout, k, goal=(gu, gv))          # PlanResult; plan.command: (A,)
```

A ``rollout`` maps B candidate command sequences (B, N, A) to the predicted pixel positions and
presence of the K particles, each (B, N, K): the perception node's ``~/predict_batch``, or the
baselines of :func:`held_rollout` (nothing moves). :class:`CemPlanner` runs the cross-entropy
method: sample B sequences from a Gaussian per step and axis (clipped to +-max_speed), one
batched rollout, cost = sum over steps of the squared pixel distance of the object's particle
to the goal + ``action_weight`` x the squared commands + ``approach_weight`` x the squared
distance of the pushing particle to the contact point behind the object (:func:`approach_costs`:
without it, while no candidate touches the object, every candidate costs the same and the
pusher stays put), refit mean and std to the lowest-cost
``elites``; up to ``iterations`` times while the time budget allows. The mean is warm-started
from the previous plan shifted by one step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dlp_ros.errors import ConfigError
from dlp_ros.node_support import ParamSpec

logger = logging.getLogger(__name__)
MAX_SPEED = 0.3  # m/s: the tabletop pusher's command limit (dlp_training/data/tabletop.py)
# (B, N, A) commands -> (u, v, presence), each (B, N, K)
Rollout = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]

PLANNER_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec('model', 'service',
              "What predicts the candidates: 'service' (call predict_service, a "
              "dlp_ros/PredictBatch: the perception node's learned dynamics, or the simulator), "
              "'no_action' (every particle held where it is: what the dynamics buys), 'random' "
              '(uniform random commands, no planning: the lower bound).',
              choices=('service', 'no_action', 'random')),
    ParamSpec('predict_service', '/perception_node/predict_batch',
              'dlp_ros/PredictBatch service of model:=service.'),
    ParamSpec('samples', 64, 'Candidate command sequences per iteration (B).', 1, 256),
    ParamSpec('horizon', 10, 'Steps per candidate (N), at the model dt.', 1, 100),
    ParamSpec('iterations', 3, 'Most CEM iterations per decision (at least one runs).', 1, 20),
    ParamSpec('elites', 8, 'Lowest-cost candidates the CEM refits mean and std to.', 1, 256),
    ParamSpec('time_budget', 0.08,
              'Planning time per decision [s]: another CEM iteration starts only if the last '
              'one fits in what is left.', 0.0, 60.0),
    ParamSpec('max_speed', MAX_SPEED, 'Command bound per axis [m/s] (linear.x, linear.y).',
              0.0, 10.0),
    ParamSpec('init_std', 0.5, 'Initial std of the commands, as a fraction of max_speed.',
              0.0, 10.0),
    ParamSpec('action_weight', 10.0,
              'Action penalty [px^2 per (m/s)^2] per step, beside the squared distance [px^2].',
              0.0, 1e9),
    ParamSpec('approach_weight', 0.3,
              'Weight of the squared distance [px^2] of the pushing particle (the one the '
              'commands move most across the candidates) to the contact point behind the object '
              '(seen from the goal), per step: brings the pusher to the object when no candidate '
              'touches it yet. 0: off.', 0.0, 1e9),
    ParamSpec('contact_distance', 5.0,
              'Distance of that contact point behind the object centre [px].', 0.0, 1e4),
    ParamSpec('on_threshold', 0.5, 'Presence above which a particle is on.', 0.0, 1.0),
    ParamSpec('seed', 0, 'Seed of the sampler (reproducible runs).', 0, 2**31 - 1),
    ParamSpec('service_timeout', 5.0, 'Wait for a predict_service answer at most [s].',
              0.01, 600.0),
    ParamSpec('particles_topic', 'dlp/particles',
              'dlp_ros/ParticleArray input (relative: the perception node of the same '
              'namespace).'),
    ParamSpec('goal_topic', '/planning/goal', 'dlp_ros/PushGoal input (transient local).'),
    ParamSpec('command_topic', '/tabletop/command',
              'geometry_msgs/TwistStamped output: one per particles message, its stamp.'),
)  # fmt: skip
PLANNER_SPECS = {spec.name: spec for spec in PLANNER_PARAMS}


@dataclass(frozen=True)
class PlannerConfig:
    """The planner's parameters, validated (one field per :data:`PLANNER_PARAMS` entry)."""

    model: str
    predict_service: str
    samples: int
    horizon: int
    iterations: int
    elites: int
    time_budget: float
    max_speed: float
    init_std: float
    action_weight: float
    approach_weight: float
    contact_distance: float
    on_threshold: float
    seed: int
    service_timeout: float
    particles_topic: str
    goal_topic: str
    command_topic: str

    @classmethod
    def from_values(cls, values: dict[str, object]) -> PlannerConfig:
        """Validate ``values`` (missing names take the default).

        Raises:
            ConfigError: an unknown name, a bad value, or more elites than samples.
        """
        unknown = sorted(set(values) - set(PLANNER_SPECS))
        if unknown:
            raise ConfigError(f'unknown parameter(s) {unknown}; known: {sorted(PLANNER_SPECS)}')
        merged = {spec.name: values.get(spec.name, spec.default) for spec in PLANNER_PARAMS}
        for spec in PLANNER_PARAMS:
            if isinstance(spec.default, float) and isinstance(merged[spec.name], int):
                merged[spec.name] = float(merged[spec.name])  # type: ignore[arg-type]
            reason = spec.check(merged[spec.name])
            if reason:
                raise ConfigError(reason)
        config = cls(**merged)  # type: ignore[arg-type]
        if config.elites > config.samples:
            raise ConfigError(f'elites ({config.elites}) must be <= samples ({config.samples})')
        return config


@dataclass(frozen=True)
class PlanResult:
    """One decision."""

    command: np.ndarray  # (A,) the first command of the plan
    plan: np.ndarray  # (N, A) the mean sequence after the last iteration
    cost: float  # the lowest cost of the last iteration's candidates
    iterations: int
    planning_ms: float


def pick_particle(
    u: np.ndarray, v: np.ndarray, presence: np.ndarray, start: tuple[float, float], on: float
) -> int:
    """Index of the on particle (presence >= ``on``) nearest to ``start`` (u, v) [px]; of all
    particles when none is on. u, v, presence: (K,)."""
    d2 = (np.asarray(u, np.float64) - start[0]) ** 2 + (np.asarray(v, np.float64) - start[1]) ** 2
    candidates = np.asarray(presence) >= on
    if not candidates.any():
        candidates = np.ones_like(candidates, dtype=bool)
    return int(np.flatnonzero(candidates)[np.argmin(d2[candidates])])


def costs(
    u: np.ndarray,
    v: np.ndarray,
    index: int,
    goal: tuple[float, float],
    actions: np.ndarray,
    action_weight: float,
) -> np.ndarray:
    """(B,) sum over steps of the squared distance [px^2] of particle ``index`` to ``goal``, plus
    ``action_weight`` x the summed squared commands. u, v: (B, N, K); actions (B, N, A)."""
    du = u[:, :, index].astype(np.float64) - goal[0]
    dv = v[:, :, index].astype(np.float64) - goal[1]
    effort = np.square(actions.astype(np.float64)).sum(axis=(1, 2))
    return (du**2 + dv**2).sum(axis=1) + action_weight * effort


def pushing_particle(u: np.ndarray, v: np.ndarray, index: int) -> int | None:
    """The particle other than ``index`` whose predicted position varies most across the B
    candidates (the one the commands move: the pusher), or None when none moves. u, v (B, N, K)."""
    spread = u.astype(np.float64).var(axis=0).sum(axis=0) + v.astype(np.float64).var(axis=0).sum(
        axis=0
    )  # (K,)
    spread[index] = -1.0
    k = int(np.argmax(spread))
    return k if spread[k] > 1e-6 else None


def approach_costs(
    u: np.ndarray, v: np.ndarray, index: int, goal: tuple[float, float], contact: float
) -> np.ndarray:
    """(B,) sum over steps of the squared distance [px^2] of the pushing particle to the point
    ``contact`` px behind particle ``index`` on the line from the goal; zeros when nothing moves.
    u, v: (B, N, K)."""
    pusher = pushing_particle(u, v, index)
    if pusher is None:
        return np.zeros(u.shape[0])
    obj = np.stack([u[:, :, index], v[:, :, index]], -1).astype(np.float64)  # (B, N, 2)
    away = obj - np.asarray(goal, np.float64)  # (B, N, 2) from the goal to the object
    away /= np.maximum(np.linalg.norm(away, axis=-1, keepdims=True), 1e-6)
    behind = obj + contact * away
    push = np.stack([u[:, :, pusher], v[:, :, pusher]], -1).astype(np.float64)
    return np.square(push - behind).sum(axis=(1, 2))


def held_rollout(u: np.ndarray, v: np.ndarray, presence: np.ndarray) -> Rollout:
    """The no-action model: every particle stays at its (K,) position over the horizon."""

    def rollout(actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        shape = (*actions.shape[:2], len(u))
        return tuple(np.broadcast_to(np.asarray(x, np.float32), shape) for x in (u, v, presence))

    return rollout


def plan_costs(
    u: np.ndarray,
    v: np.ndarray,
    index: int,
    goal: tuple[float, float],
    actions: np.ndarray,
    config: PlannerConfig,
) -> np.ndarray:
    """(B,) the planner's cost of candidates ``actions`` (B, N, A) whose rollout is u, v
    (B, N, K): :func:`costs`, plus ``config.approach_weight`` x :func:`approach_costs`."""
    cost = costs(u, v, index, goal, actions, config.action_weight)
    if config.approach_weight:
        cost = cost + config.approach_weight * approach_costs(u, v, index, goal,
                                                              config.contact_distance)  # fmt: skip
    return cost


def candidates(
    mean: np.ndarray, std: np.ndarray | float, rng: np.random.Generator, config: PlannerConfig
) -> np.ndarray:
    """(B, N, A) float32 candidate commands: ``mean`` (N, A) plus Gaussian noise of ``std``,
    B = ``config.samples``, clipped to +-``config.max_speed``."""
    noise = rng.standard_normal((config.samples, *mean.shape))
    bound = config.max_speed
    return np.clip(mean + std * noise, -bound, bound).astype(np.float32)


class CemPlanner:
    """Cross-entropy-method MPC over (vx, vy) command sequences; see the module docstring.

    Args:
        config: the parameters (samples, horizon, iterations, elites, budget, bounds, weights).
        action_dim: A, the command size (2: linear.x, linear.y).
    """

    def __init__(self, config: PlannerConfig, action_dim: int = 2) -> None:
        self.config = config
        self.action_dim = action_dim
        self.rng = np.random.default_rng(config.seed)
        self._mean = np.zeros((config.horizon, action_dim))

    def reset(self) -> None:
        """Forget the previous plan (a new goal)."""
        self._mean = np.zeros((self.config.horizon, self.action_dim))

    def random_command(self) -> np.ndarray:
        """(A,) uniform within +-max_speed: the random baseline."""
        bound = self.config.max_speed
        return self.rng.uniform(-bound, bound, self.action_dim).astype(np.float32)

    def warm_mean(self) -> np.ndarray:
        """(N, A) the warm start of the next decision: the current plan shifted by one step,
        its last command held."""
        return np.concatenate([self._mean[1:], self._mean[-1:]])

    def next_command(self) -> np.ndarray:
        """(A,) the next command of the current plan, which shifts by one step (no replanning:
        a decision that is already late)."""
        self._mean = self.warm_mean()
        bound = self.config.max_speed
        return np.clip(self._mean[0], -bound, bound).astype(np.float32)

    def plan(self, rollout: Rollout, index: int, goal: tuple[float, float]) -> PlanResult:
        """Plan from the warm-started mean; returns the first command and the plan.

        Raises:
            whatever ``rollout`` raises (a failed service call): the plan is left unchanged.
        """
        c = self.config
        t0 = time.perf_counter()
        mean = self.warm_mean()
        std = np.full_like(mean, c.init_std * c.max_speed)
        best, best_cost, done, last = mean, float('inf'), 0, 0.0
        while done < c.iterations:
            start = time.perf_counter()
            samples = candidates(mean, std, self.rng, c)
            samples[0] = np.clip(mean, -c.max_speed, c.max_speed)  # the mean itself
            u, v, _ = rollout(samples)
            cost = plan_costs(u, v, index, goal, samples, c)
            order = np.argsort(cost)
            elites = samples[order[: c.elites]].astype(np.float64)
            mean, std = elites.mean(axis=0), elites.std(axis=0) + 1e-3 * c.max_speed
            best, best_cost = samples[order[0]], float(cost[order[0]])
            done += 1
            last = time.perf_counter() - start
            if time.perf_counter() - t0 + last > c.time_budget:
                break
        self._mean = np.asarray(best, np.float64)
        plan = np.asarray(best, np.float32)
        ms = (time.perf_counter() - t0) * 1e3
        return PlanResult(plan[0].copy(), plan, best_cost, done, ms)
