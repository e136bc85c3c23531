"""Does a bundle's dynamics rank a planner's candidates as the simulator does?

A sampling planner only needs its model to *order* the candidate command sequences correctly.
This script measures that, for one or more bundles on the same states: episodes of the tabletop
scene are driven by the push_planner's CEM planning on the simulator (the ``perception`` mode of
``planning_offline.py``: the first bundle's tracked particles, each carried by the object it lies
on), so the pusher approaches and pushes objects. Every ``--every`` decisions the planner's
candidates (``--samples`` sequences of ``--horizon`` commands around its warm-started plan) are
rolled out by the simulator and by each bundle's dynamics, from each bundle's own tracked
particles, and scored with the planner's own cost (:func:`dlp_ros.mpc.costs` plus the approach
term). Per bundle:

- ``rank_corr``: Spearman correlation of the model's costs with the simulator's (mean over
  decisions): 1 = the model orders the candidates as the world does, 0 = at random.
- ``regret``: the simulator's cost of the model's best candidate above the simulator's best, as
  a fraction of the simulator's cost range (0 = the best candidate); ``regret_random`` is a
  random pick's (the mean candidate's).
- ``followed_err_px``: median distance between the model's and the simulator's final position
  of the followed particle (the goal object's), over candidates and decisions.
- ``leak_px``: on particles that no candidate moves in the simulator (under 0.5 px), the RMS
  spread over the candidates of the model's final positions: motion the commands cannot cause,
  which a planner exploits (it steers objects it never touches); ``followed_leak_px`` the same
  for the followed particle alone, at the decisions where the simulator leaves it still.
- ``push_gain``: on the candidates that the simulator pushes the followed object with (its final
  displacement over ``PUSHED_PX``), the least-squares slope of the model's final displacement of
  the followed particle on the simulator's: 1 = the model pushes the object as far as the world
  does, 0 = it leaves it where it is (the no-action model), over 1 = it pushes too far.

    python benchmarks/dynamics_ranking.py --bundle bundles/tabletop64 OTHER_BUNDLE \
        --seed 20000 --episodes 6 [--steps 40] [--every 4]

A ``no_action`` row scores the no-action model (every particle held still, the first bundle's
particles) on the same candidates: what a model must beat to help the planner at all.

Prints one line per episode and, on the last line, one JSON object: bundle -> figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'benchmarks'))

from planning_offline import learned_rollout, pixels, sim_rollout  # noqa: E402

from dlp_ros.mpc import (  # noqa: E402
    CemPlanner,
    PlannerConfig,
    candidates,
    held_rollout,
    pick_particle,
    plan_costs,
)
from dlp_ros.pipeline import PerceptionPipeline  # noqa: E402
from dlp_ros.runtime import DlpRuntime  # noqa: E402
from dlp_ros.sim.lockstep import LockstepSim  # noqa: E402

NO_ACTION = 'no_action'
STILL_PX = 0.5  # a particle no candidate moves further than this in the simulator is still
PUSHED_PX = 2.0  # a candidate moving the followed object further than this pushes it


def ranks(x: np.ndarray) -> np.ndarray:
    """(B,) ranks 0 .. B - 1 of x (ties by order)."""
    r = np.empty(len(x))
    r[np.argsort(x, kind='stable')] = np.arange(len(x))
    return r


def compare(sim_uv: tuple[np.ndarray, np.ndarray], model_uv: tuple[np.ndarray, np.ndarray],
            start: tuple[np.ndarray, np.ndarray], index: int, goal: tuple[float, float],
            samples: np.ndarray, config: PlannerConfig) -> dict[str, float]:  # fmt: skip
    """One decision's figures (module docstring) for one model; ``start``: the (K,) particle
    positions the rollouts start from."""
    (su, sv), (mu, mv) = sim_uv, model_uv
    cs = plan_costs(su, sv, index, goal, samples, config)
    cm = plan_costs(mu, mv, index, goal, samples, config)
    span = max(float(np.ptp(cs)), 1e-9)
    out = {
        'regret': float((cs[np.argmin(cm)] - cs.min()) / span),
        'regret_random': float((cs.mean() - cs.min()) / span),
        'followed_err_px': float(np.median(np.hypot(su[:, -1, index] - mu[:, -1, index],
                                                    sv[:, -1, index] - mv[:, -1, index]))),
    }  # fmt: skip
    if np.ptp(cs) > 0 and np.ptp(cm) > 0:
        out['rank_corr'] = float(np.corrcoef(ranks(cs), ranks(cm))[0, 1])
    sim_d = np.stack([su[:, -1, index] - start[0][index], sv[:, -1, index] - start[1][index]], -1)
    pushed = np.hypot(*sim_d.T) > PUSHED_PX  # (B,)
    if pushed.any():
        model_d = np.stack([mu[:, -1, index] - start[0][index],
                            mv[:, -1, index] - start[1][index]], -1)  # fmt: skip
        out['push_gain'] = float((model_d[pushed] * sim_d[pushed]).sum()
                                 / np.square(sim_d[pushed]).sum())  # fmt: skip
    moved = np.hypot(su[:, -1] - su[:1, -1], sv[:, -1] - sv[:1, -1]).max(axis=0)  # (K,)
    still = moved < STILL_PX
    if still.any():
        spread = mu[:, -1].var(axis=0) + mv[:, -1].var(axis=0)  # (K,)
        out['leak_px'] = float(np.sqrt(spread[still].mean()))
        if still[index]:
            out['followed_leak_px'] = float(np.sqrt(spread[index]))
    return out


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    add = parser.add_argument
    add('--bundle', type=Path, nargs='+', default=[ROOT / 'bundles' / 'tabletop64'],
        help='bundles to compare; the first one\'s particles drive the episodes')  # fmt: skip
    add('--seed', type=int, default=20000, help='first episode seed')
    add('--episodes', type=int, default=6)
    add('--steps', type=int, default=40, help='decisions per episode')
    add('--every', type=int, default=4, help='compare the models every this many decisions')
    add('--samples', type=int, default=64, help='candidates per decision (B)')
    add('--horizon', type=int, default=10, help='steps per candidate (N)')
    add('--threads', type=int, default=1, help='onnxruntime threads')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.WARNING)
    config = PlannerConfig.from_values({'time_budget': 60.0, 'iterations': 1,
                                        'samples': args.samples, 'horizon': args.horizon,
                                        'elites': min(8, args.samples)})  # fmt: skip
    names = [str(b) for b in args.bundle]
    pipes = [PerceptionPipeline(DlpRuntime.load(b, 'cpu', threads=args.threads))
             for b in args.bundle]  # fmt: skip
    figures: dict[str, dict[str, list[float]]] = {n: {} for n in [*names, NO_ACTION]}
    rng = np.random.default_rng(args.seed)
    sim = LockstepSim()
    try:
        for seed in range(args.seed, args.seed + args.episodes):
            ep = sim.reset(seed)
            for pipe in pipes:
                pipe.reset()
            planner = CemPlanner(config)
            goal = (float(ep.task.goal_uv[0]), float(ep.task.goal_uv[1]))
            start = (float(ep.task.start_uv[0]), float(ep.task.start_uv[1]))
            command = np.zeros(2, np.float32)
            followed: list[int] = []
            for t in range(args.steps):
                frame = sim.episode.frame
                seen = [pixels(p.step(frame.rgb, frame.stamp_ns, command).frame, sim.size)
                        for p in pipes]  # fmt: skip
                if not followed:
                    followed = [pick_particle(u, v, on, start, config.on_threshold)
                                for u, v, on in seen]  # fmt: skip
                if sim.distance() <= ep.task.tolerance:
                    break
                if t % args.every == 0:
                    std = config.init_std * config.max_speed  # the CEM's first spread
                    samples = candidates(planner.warm_mean(), std, rng, config)  # (B, N, 2)
                    for name, pipe, (u, v, on), index in zip(names, pipes, seen, followed,
                                                             strict=True):  # fmt: skip
                        su, sv, _ = sim_rollout(sim, frame, np.stack([u, v], -1), on)(samples)
                        mu, mv, _ = learned_rollout(pipe, args.horizon, sim.size)(samples)
                        for key, value in compare((su, sv), (mu, mv), (u, v), index, goal,
                                                  samples, config).items():  # fmt: skip
                            figures[name].setdefault(key, []).append(value)
                        if name == names[0]:
                            hu, hv, _ = held_rollout(u, v, on)(samples)
                            for key, value in compare((su, sv), (hu, hv), (u, v), index, goal,
                                                      samples, config).items():  # fmt: skip
                                figures[NO_ACTION].setdefault(key, []).append(value)
                u, v, on = seen[0]
                rollout = sim_rollout(sim, frame, np.stack([u, v], -1), on)
                command = planner.plan(rollout, followed[0], goal).command.astype(np.float32)
                sim.step((float(command[0]), float(command[1])))
            print(f'seed {seed}: ' + '; '.join(
                f'{n}: ' + ', '.join(f'{k} {np.mean(x):.3f}' for k, x in figures[n].items())
                for n in [*names, NO_ACTION]), flush=True)  # fmt: skip
    finally:
        sim.close()
    summary = {
        n: {**{k: round(float(np.mean(x)), 3) for k, x in f.items()},
            'decisions': len(f.get('regret', []))}
        for n, f in figures.items()
    }  # fmt: skip
    print(json.dumps(summary))
    return 0


if __name__ == '__main__':
    sys.exit(main())
