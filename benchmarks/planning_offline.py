"""Where closed-loop pushing fails: the planner's maths, the perception, or the dynamics.

The same loop as ``python -m dlp_training evaluate-planning`` (tabletop scene, lockstep at 10 Hz,
success = the object's centre within the task's tolerance of the goal, at most ``--steps``
commands, the push_planner's CEM of :mod:`dlp_ros.mpc` with its default parameters) run in one
process, without DDS, so that each part can be swapped for the truth:

- ``truth``: the planner sees the objects' true centres as particles (index = object id, 0 = the
  pusher) and plans on the simulator's own rollouts: the ceiling of the planning maths.
- ``perception``: the planner sees the bundle's tracked particles (its DLP and tracker, as
  /dlp/particles) and plans on the simulator's rollouts of them (each particle carried by the
  object it lies on, as /sim/predict_batch with a particles topic): what perception costs.
- ``learned``: the tracked particles and the bundle's dynamics (``~/predict_batch``'s batched
  rollout): the product as a planner would use it.

The followed particle is the one nearest the task's start pixel at the first frame, followed by
id (as push_planner). Per episode the script also reports how far the followed particle lies
from the object's true centre (start, median over the episode): a particle that lost its object
sends the planner after something else. Planning time is not the node's: no DDS, no camera, and
``time_budget`` is lifted so that every decision runs the same ``iterations`` (default 2, what
the node's 0.08 s budget allows on this CPU with the shipped bundle: its decisions over DDS take
64 ms p50 for 2 iterations; 1 before 2026-12-05, when the node's executor slowed the service).

    python benchmarks/planning_offline.py --mode truth perception learned --seed 10000 \
        --episodes 12 [--bundle bundles/tabletop64] [--steps 80] [--out report.json]

Prints one line per episode, a summary per mode, and the summaries as one JSON object on the
last line; ``--out`` writes every episode as JSON too.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dlp_ros.mpc import CemPlanner, PlannerConfig, Rollout, pick_particle  # noqa: E402
from dlp_ros.particles import ParticleFrame  # noqa: E402
from dlp_ros.pipeline import PerceptionPipeline  # noqa: E402
from dlp_ros.runtime import DlpRuntime  # noqa: E402
from dlp_ros.sim.lockstep import Frame, LockstepSim, carried_by_objects, object_uv  # noqa: E402

MODES = ('truth', 'perception', 'learned')


@dataclass
class EpisodeResult:
    mode: str
    seed: int
    success: bool
    steps: int
    final_px: float
    offset_start_px: float  # followed particle to the object's true centre, first frame
    offset_median_px: float  # the same, median over the episode
    planning_ms_median: float


def pixels(frame: ParticleFrame, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """u, v [px] and presence of a tracked frame, each (K,)."""
    u = (frame.mu[:, 0] + 1.0) / 2.0 * size
    v = (frame.mu[:, 1] + 1.0) / 2.0 * size
    return u, v, frame.transparency[:, 0]


def sim_rollout(sim: LockstepSim, frame: Frame, uv: np.ndarray | None,
                presence: np.ndarray | None) -> Rollout:  # fmt: skip
    """The simulator as the model: object centres (``uv`` None) or particles carried by them."""

    def rollout(actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        centres = sim.predict(actions)  # (B, N, K, 2)
        out = centres if uv is None else carried_by_objects(uv, frame.objects, centres)
        on = (
            np.ones(out.shape[:3])
            if presence is None
            else np.broadcast_to(presence, out.shape[:3])
        )
        return out[..., 0], out[..., 1], on

    return rollout


def learned_rollout(pipe: PerceptionPipeline, horizon: int, size: int) -> Rollout:
    """The bundle's dynamics from the pipeline's latest frame (one batched rollout)."""
    snap = pipe.snapshot(horizon)

    def rollout(actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        fields = pipe.predict_batch(snap, actions.astype(np.float32)).fields
        mu = fields['mu']  # (B, N, K, 2)
        u, v = (mu[..., 0] + 1.0) / 2.0 * size, (mu[..., 1] + 1.0) / 2.0 * size
        return u, v, fields['transparency'][..., 0]

    return rollout


def run_episode(mode: str, seed: int, sim: LockstepSim, pipe: PerceptionPipeline | None,
                config: PlannerConfig, steps: int) -> EpisodeResult:  # fmt: skip
    ep = sim.reset(seed)
    planner = CemPlanner(config)
    goal = (float(ep.task.goal_uv[0]), float(ep.task.goal_uv[1]))
    start = (float(ep.task.start_uv[0]), float(ep.task.start_uv[1]))
    command = np.zeros(2, np.float32)
    followed: int | None = None
    offsets: list[float] = []
    planning: list[float] = []
    t = 0
    for t in range(steps + 1):
        frame = sim.episode.frame
        centre = object_uv(frame.objects, ep.task.object_id)
        if mode == 'truth':
            followed = ep.task.object_id
            rollout = sim_rollout(sim, frame, None, None)
            offsets.append(0.0)
        else:
            u, v, presence = pixels(pipe.step(frame.rgb, frame.stamp_ns, command).frame, sim.size)
            if followed is None:
                followed = pick_particle(u, v, presence, start, config.on_threshold)
            offsets.append(math.hypot(u[followed] - centre[0], v[followed] - centre[1]))
            rollout = (sim_rollout(sim, frame, np.stack([u, v], -1), presence)
                       if mode == 'perception' else learned_rollout(pipe, config.horizon,
                                                                    sim.size))  # fmt: skip
        if sim.distance() <= ep.task.tolerance or t == steps:
            break
        t0 = time.perf_counter()
        command = planner.plan(rollout, followed, goal).command.astype(np.float32)
        planning.append((time.perf_counter() - t0) * 1e3)
        sim.step((float(command[0]), float(command[1])))
    return EpisodeResult(mode, seed, sim.distance() <= ep.task.tolerance, t,
                         round(sim.distance(), 2), round(offsets[0], 2),
                         round(float(np.median(offsets)), 2),
                         round(float(np.median(planning)) if planning else 0.0, 1))  # fmt: skip


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    add = parser.add_argument
    add('--mode', nargs='+', choices=MODES, default=list(MODES))
    add('--bundle', type=Path, default=ROOT / 'bundles' / 'tabletop64')
    add('--seed', type=int, default=10000, help='first episode seed (held out from dlp_training)')
    add('--episodes', type=int, default=12)
    add('--steps', type=int, default=80, help='most commands per episode')
    add('--iterations', type=int, default=2, help='CEM iterations per decision (the node: 2)')
    add('--samples', type=int, default=64, help='candidates per CEM iteration (B)')
    add('--horizon', type=int, default=10, help='steps per candidate (N)')
    add('--threads', type=int, default=1, help='onnxruntime threads')
    add('--out', type=Path, help='write the results as JSON here')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.WARNING)
    config = PlannerConfig.from_values({'time_budget': 60.0, 'iterations': args.iterations,
                                        'samples': args.samples, 'horizon': args.horizon,
                                        'elites': min(8, args.samples)})  # fmt: skip
    sim = LockstepSim()
    pipe = None
    if set(args.mode) - {'truth'}:
        pipe = PerceptionPipeline(DlpRuntime.load(args.bundle, 'cpu', threads=args.threads))
    results: list[EpisodeResult] = []
    summary: dict[str, dict[str, float]] = {}
    try:
        for mode in args.mode:
            done = []
            for seed in range(args.seed, args.seed + args.episodes):
                if pipe is not None:
                    pipe.reset()
                r = run_episode(mode, seed, sim, pipe, config, args.steps)
                done.append(r)
                print(f'{mode:10s} seed {seed}: {"success" if r.success else "failure"} '
                      f'after {r.steps} steps, final {r.final_px:.1f} px; followed particle '
                      f'{r.offset_start_px:.1f} px from the centre at the start, median '
                      f'{r.offset_median_px:.1f}; planning {r.planning_ms_median:.0f} ms',
                      flush=True)  # fmt: skip
            wins = sum(r.success for r in done)
            finals = [r.final_px for r in done]
            summary[mode] = {'successes': wins, 'episodes': len(done),
                             'final_px_median': float(np.median(finals))}  # fmt: skip
            print(f'{mode}: {wins} / {len(done)} successes', flush=True)
            results += done
    finally:
        sim.close()
    if args.out is not None:
        report = {'args': {k: str(v) for k, v in vars(args).items()}, 'summary': summary,
                  'episodes': [asdict(r) for r in results]}  # fmt: skip
        args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(summary))
    return 0


if __name__ == '__main__':
    sys.exit(main())
