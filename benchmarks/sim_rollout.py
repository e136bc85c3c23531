"""Benchmark the simulator as the planner's model: ``TabletopScene.rollout`` (what
/sim/predict_batch runs) for B candidate command sequences of N steps from one state, plus one
real step with rendering (what the lockstep loop does per command).

Each figure is the median and p90 over ``--repeats`` calls on ``--scenes`` seeded scenes (3-5
objects), random commands; one thread (the node's frame thread).

    python benchmarks/sim_rollout.py [--candidates 16 64 256] [--horizon 10] [--repeats 5]

Prints one line per B, then one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault('MUJOCO_GL', 'egl')

from dlp_ros.sim.tabletop import MAX_SPEED, TabletopScene  # noqa: E402


def measure(scene: TabletopScene, fn: object, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--candidates', type=int, nargs='+', default=[16, 64, 256])
    parser.add_argument('--horizon', type=int, default=10)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--scenes', type=int, default=3)
    args = parser.parse_args()
    scene = TabletopScene(size=64)
    rng = np.random.default_rng(0)
    rows: dict[str, dict[str, float]] = {}
    step_ms: list[float] = []
    for seed in range(args.scenes):
        scene.reset(np.random.default_rng(seed))
        step_ms += measure(scene, lambda: (scene.apply(np.array([0.1, 0.0])), scene.render(),
                                           scene.objects()), args.repeats)  # fmt: skip
    for n_b in args.candidates:
        times = []
        for seed in range(args.scenes):
            scene.reset(np.random.default_rng(seed))
            actions = rng.uniform(-MAX_SPEED, MAX_SPEED, (n_b, args.horizon, 2)) / np.sqrt(2)
            times += measure(scene, lambda a=actions: scene.rollout(a), args.repeats)
        rows[str(n_b)] = {'median_ms': round(float(np.median(times)), 1),
                          'p90_ms': round(float(np.percentile(times, 90)), 1)}  # fmt: skip
        print(f'B={n_b:4d} N={args.horizon}: rollout median {rows[str(n_b)]["median_ms"]:8.1f} ms'
              f'  p90 {rows[str(n_b)]["p90_ms"]:8.1f} ms')  # fmt: skip
    scene.close()
    step = {'median_ms': round(float(np.median(step_ms)), 2)}
    print(f'one lockstep step (apply + render + ground truth): median {step["median_ms"]} ms')
    load = os.getloadavg()[0]
    print(json.dumps({'horizon': args.horizon, 'rollout': rows, 'step': step, 'load1': load,
                      'cpus': os.cpu_count()}))  # fmt: skip
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
