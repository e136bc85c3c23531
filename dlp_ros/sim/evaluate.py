"""Closed-loop planning evaluation over real ROS 2: the simulated robot, the perception node and
the push planner as separate processes, episodes scored from the simulator's ground truth.

```
python -m dlp_training evaluate-planning --bundle DIR --episodes 20 --seed S --out DIR
    [--planner-model service sim no_action random] [--steps 150] [--tolerance 3]
python -m dlp_ros.sim.evaluate ...                      (the same program)
```

For each mode (a row of the report) it starts, on a ROS_DOMAIN_ID of its own with discovery on
loopback, ``tabletop_sim`` (``python -m dlp_ros.sim.node``, no episode until a reset), the
perception node on the bundle (``python -m dlp_ros.node``, reliable camera input, the pusher
commands as its action topic) and, except for ``random``, the planner
(``python -m dlp_ros.planner_node``):

- ``service``: the planner's model is the perception node's ``/perception_node/predict_batch``;
- ``sim``: the planner's model is ``/sim/predict_batch``, the simulator itself (the ceiling):
  the perception node's particles, each carried by the simulated object under it;
- ``no_action``: the planner's ``no_action`` model (what the learned dynamics buys);
- ``random``: no planner; this program sends uniformly random commands (the lower bound).

Then one unscored warm-up episode, and episode i = seed S + i (the same seeds in every mode):
``/sim/reset``, then each frame until the object's true centre is within the tolerance of the
goal (success) or ``--steps`` commands were applied. The simulator steps in lockstep with the
commands; a command that does not come within ``--step-timeout`` s is a missed step (zero
command), counted from the simulator's diagnostics.

Writes OUT/report.json (after each mode, so an interrupted run keeps the finished rows): per mode
success rate, final distance, steps to success, planning time per step (the planner's
``planning_ms`` diagnostics value) and the loop time (the simulator's ``command_ms``: from
publishing a frame to taking its command, wall clock),
missed steps, the planner's last diagnostics values (and its own ``planning_ms_p50/p99``
there), and every episode;
OUT/videos/<mode>_seed<S>.mp4 (or .gif): the camera with the goal, the object's true centre, the
followed particle with its trail and the planner's predicted path (its ``path_uv`` diagnostics
value, JSON [[u, v], ...]); OUT/logs/<mode>/*.log.

A planner reports on /diagnostics with a status whose name contains 'planner' and the values
``stamp_ns`` (the frame it planned for), ``planning_ms`` and optionally ``path_uv``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dlp_ros import dds_shm
from dlp_ros.conversions import stamp_ns
from dlp_ros.demo import NodeProcess, ros_environment
from dlp_ros.errors import ConfigError, DlpError
from dlp_ros.offline.cli import main_of
from dlp_ros.offline.perception_outputs import VideoOut
from dlp_ros.sim.client import LoopClient, planner_path
from dlp_ros.sim.report import (
    ON,
    EpisodeResult,
    distance,
    draw_frame,
    followed_particle,
    format_report,
    planner_percentiles,
    summarise,
)
from dlp_ros.sim.tabletop import MAX_SPEED

logger = logging.getLogger(__name__)
MODES = ('service', 'sim', 'no_action', 'random')
NS = 1_000_000_000
PLANNER_MODULE = 'dlp_ros.planner_node'
PERCEPTION_SERVICE = '/perception_node/predict_batch'
SIM_SERVICE = '/sim/predict_batch'
WARMUP_SEED = 999_999
WARMUP_STEPS = 3
WARMUP_TRIES = 5
FIRST_STEP_TIMEOUT_S = 120.0  # the simulator's wait for an episode's first command


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add('--bundle', type=Path, required=True, help='model bundle of the perception node')
    add('--episodes', type=int, default=20, help='scored episodes per mode')
    add('--seed', type=int, default=0, help='episode i uses seed S + i (scene and task)')
    add('--out', type=Path, required=True, help='output directory (new, or --overwrite)')
    add('--planner-model', nargs='+', choices=MODES, default=list(MODES), metavar='MODE',
        help=f'modes to run, in order ({", ".join(MODES)}; default all)')  # fmt: skip
    add('--steps', type=int, default=150, help='most commands per episode')
    add('--tolerance', type=float, default=3.0, help='success radius [px]')
    add('--size', type=int, default=64, help='camera image side [px]')
    add('--fps', type=float, default=10.0, help='camera rate in sim time [Hz]')
    add('--step-timeout', type=float, default=5.0,
        help='wall-clock s the simulator waits for a command before a missed step')  # fmt: skip
    add('--providers', default='cpu', help='perception node providers (cpu, auto, cuda, ...)')
    add('--threads', type=int, default=1, help='perception node onnxruntime threads')
    add(
        '--planner-command',
        default=None,
        metavar='CMD',
        help=f'the planner program, split like a shell (default: this Python -m {PLANNER_MODULE})',
    )
    add('--planner-arg', action='append', default=[], metavar='NAME:=VALUE',
        help='more planner parameters (repeatable)')  # fmt: skip
    add('--node-arg', action='append', default=[], metavar='NAME:=VALUE',
        help='more perception node parameters (repeatable)')  # fmt: skip
    add('--no-video', action='store_true', help='write no episode videos')
    add('--overwrite', action='store_true', help='replace an existing --out')


def _name_values(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition(':=')
        if not sep or not name:
            raise ConfigError(f'{flag} {item!r}: expected NAME:=VALUE')
        out[name] = value
    return out


@dataclass
class Processes:
    """The ROS processes of one mode."""

    sim: NodeProcess
    perception: NodeProcess
    planner: NodeProcess | None

    def all(self) -> list[NodeProcess]:
        return [p for p in (self.sim, self.perception, self.planner) if p is not None]

    def check_alive(self) -> None:
        for proc in self.all():
            proc.check_alive()

    def stop(self) -> None:
        for proc in reversed(self.all()):
            proc.stop()


def start_processes(mode: str, args: argparse.Namespace, env: dict[str, str],
                    logs: Path) -> Processes:  # fmt: skip
    """Start the simulator, the perception node and (except for random) the planner."""
    py = sys.executable
    sim_params = {'autostart': False, 'size': args.size, 'fps': float(args.fps),
                  'tolerance': float(args.tolerance), 'step_timeout': float(args.step_timeout),
                  'first_step_timeout': FIRST_STEP_TIMEOUT_S,
                  # only the simulator-as-model row reads the particles; with the subscription
                  # the simulator's executor busy-waited (92 % of a core, docs/results.md)
                  'particles_topic': '/dlp/particles' if mode == 'sim' else '',
                  # a reset waits for the planner's answer to the frame in flight; random
                  # commands come from this process, which leaves the last frame unanswered
                  'drain_timeout': 0.0 if mode == 'random' else float(args.step_timeout),
                  }  # fmt: skip
    perception_params: dict[str, Any] = {
        'model_bundle': str(Path(args.bundle).resolve()), 'action_topic': '/tabletop/command',
        'input_reliability': 'reliable', 'prediction_rate': 0.0, 'overlay': False,
        'providers': args.providers, 'threads': args.threads,
        **_name_values(args.node_arg, '--node-arg'),
    }  # fmt: skip
    sim = NodeProcess(sim_params, {}, env, logs / 'sim.log', [py, '-m', 'dlp_ros.sim.node'])
    perception = NodeProcess(perception_params, {'image': '/camera/image_raw'}, env,
                             logs / 'perception.log', [py, '-m', 'dlp_ros.node'])  # fmt: skip
    planner = None
    if mode != 'random':
        params = {'model': 'no_action' if mode == 'no_action' else 'service',
                  'predict_service': SIM_SERVICE if mode == 'sim' else PERCEPTION_SERVICE,
                  **_name_values(args.planner_arg, '--planner-arg')}  # fmt: skip
        command = (shlex.split(args.planner_command) if args.planner_command
                   else [py, '-m', PLANNER_MODULE])  # fmt: skip
        planner = NodeProcess(params, {}, env, logs / 'planner.log', command)
    return Processes(sim, perception, planner)


def wait_ready(client: LoopClient, procs: Processes, timeout: float = 180.0) -> None:
    """Until every end is matched: the camera reaches the perception node, the particles and
    the task reach the planner, the planner's commands reach the simulator."""
    node, planner = client.session.node, procs.planner is not None

    def ready() -> bool:
        procs.check_alive()
        return (
            node.count_subscribers('/camera/image_raw') >= 2
            and node.count_publishers('/dlp/particles') >= 1
            and (not planner or node.count_subscribers('/dlp/particles') >= 2)
            and (not planner or node.count_publishers('/tabletop/command') >= 2)
            and client.reset_client.service_is_ready()
        )

    client.session.wait_for('the simulator, perception node and planner to connect', ready,
                            timeout)  # fmt: skip


@dataclass
class Trace:
    """What one episode left in the client, copied out at its end."""

    stamps: list[int]
    truth: list[np.ndarray]  # (K, 2) per frame
    frames: list[np.ndarray]
    particles: list[Any]  # ParticleArray or None per frame
    planner: list[dict[str, str]]
    loop_ms: list[float]


def random_command(rng: np.random.Generator) -> tuple[float, float]:
    """Uniform over the disc of allowed pusher velocities [m/s]."""
    angle, speed = rng.uniform(0, 2 * np.pi), MAX_SPEED * np.sqrt(rng.uniform())
    return float(speed * np.cos(angle)), float(speed * np.sin(angle))


def run_episode(client: LoopClient, procs: Processes, seed: int, args: argparse.Namespace,
                drive: bool, steps: int) -> tuple[EpisodeResult, Trace]:  # fmt: skip
    """One episode: reset, then each frame until success or ``steps`` commands."""
    goal = client.reset(seed, tolerance=args.tolerance)
    start, period = stamp_ns(goal.header), round(NS / args.fps)
    target = (float(goal.goal_u), float(goal.goal_v))
    rng = np.random.default_rng([seed, 7])
    dists, success_at, t = [], None, 0
    for t in range(steps + 1):
        # the simulator waits FIRST_STEP_TIMEOUT_S for the first command, step_timeout after
        timeout = FIRST_STEP_TIMEOUT_S + 30.0 if t <= 1 else 2 * args.step_timeout + 30.0
        stamp = client.wait_frame(t, start, period, timeout)
        procs.check_alive()
        with client.lock:
            uv = client.seen.truth[stamp][goal.object_id]
        dists.append(distance(uv, target))
        if dists[-1] <= goal.tolerance:
            success_at = t
            break
        if t < steps and drive:
            client.command(stamp, *random_command(rng))
    trace = _trace(client, start, period, t)
    missed = _missed(client, seed, t, trace.stamps)
    result = EpisodeResult(
        seed=seed, object_id=int(goal.object_id),
        start_uv=(float(goal.start_u), float(goal.start_v)), goal_uv=target,
        tolerance=float(goal.tolerance), success=success_at is not None, steps=t,
        steps_to_success=success_at, initial_distance=round(dists[0], 3),
        final_distance=round(dists[-1], 3), min_distance=round(min(dists), 3),
        missed_steps=missed, loop_ms=trace.loop_ms,
        planning_ms=[float(v['planning_ms']) for v in trace.planner if 'planning_ms' in v],
    )  # fmt: skip
    return result, trace


def warm_up(client: LoopClient, procs: Processes, args: argparse.Namespace, drive: bool,
            wait_s: float = 20.0) -> None:  # fmt: skip
    """Unscored episodes until one runs WARMUP_STEPS steps: the models load, and every
    subscription is matched (a topic counted in the graph may not be matched yet, and a reliable
    message published before that is lost, e.g. the first particles to the planner)."""
    period = round(NS / args.fps)
    for attempt in range(WARMUP_TRIES):
        goal = client.reset(WARMUP_SEED + attempt, tolerance=args.tolerance)
        start, rng = stamp_ns(goal.header), np.random.default_rng(attempt)
        client.wait_frame(0, start, period, FIRST_STEP_TIMEOUT_S)
        for t in range(WARMUP_STEPS):
            if drive:
                client.command(start + t * period, *random_command(rng))
            following = start + (t + 1) * period
            if not client.session.poll(lambda s=following: _has_frame(client, s), wait_s):
                logger.info('warm-up %d: no frame %d within %g s; again', attempt, t + 1, wait_s)
                break
        else:
            return
        procs.check_alive()
    raise DlpError(f'the loop did not run {WARMUP_STEPS} steps in {WARMUP_TRIES} warm-up '
                   f'episodes; logs in {procs.sim.log.parent}')  # fmt: skip


def _has_frame(client: LoopClient, stamp: int) -> bool:
    with client.lock:
        return stamp in client.seen.frame_times


def _missed(client: LoopClient, seed: int, step: int, stamps: list[int],
            timeout: float = 5.0) -> int:  # fmt: skip
    """The simulator's missed steps of the episode, from its diagnostics of the last frame; where
    those do not come, counted here: frames whose command was not seen before the next frame."""

    def latest() -> dict[str, str]:
        with client.lock:
            return dict(client.seen.sim_status)

    def ready() -> bool:
        status = latest()
        return status.get('seed') == str(seed) and status.get('step') == str(step)

    if client.session.poll(ready, timeout):
        return int(latest()['missed_steps'])
    with client.lock:
        seen = client.seen
        late = sum(
            1
            for s, after in zip(stamps[:-1], stamps[1:], strict=True)
            if seen.command_times.get(s, np.inf) > seen.frame_times.get(after, 0.0)
        )
    logger.warning('no simulator diagnostics for step %d of seed %d: %d missed steps counted '
                   'from the commands seen here', step, seed, late)  # fmt: skip
    return late


def _trace(client: LoopClient, start: int, period: int, last: int) -> Trace:
    stamps = [start + i * period for i in range(last + 1)]
    with client.lock:
        seen = client.seen
        # the simulator's wait for each frame's command, sent with the frame after it
        waits = [seen.sim_frames.get(s, {}).get('command_ms', '') for s in stamps[1:]]
        loop_ms = [float(w) for w in waits if w]
        return Trace(stamps, [seen.truth[s] for s in stamps],
                     [seen.frames.get(s, np.zeros((1, 1, 3), np.uint8)) for s in stamps],
                     [seen.particles.get(s) for s in stamps],
                     [dict(seen.planner.get(s, {})) for s in stamps], loop_ms)  # fmt: skip


def write_video(path_stem: Path, mode: str, result: EpisodeResult, trace: Trace,
                fps: float) -> str | None:  # fmt: skip
    """The episode's video (module docstring); its file name."""
    video = VideoOut(path_stem, fps)
    followed, trail = None, []
    for t, (rgb, truth, msg, values) in enumerate(zip(trace.frames, trace.truth,
                                                      trace.particles, trace.planner,
                                                      strict=True)):  # fmt: skip
        particle, others = None, []
        if msg is not None:
            parts = [(p.id, p.u, p.v, p.transparency) for p in msg.particles]
            if followed is None:
                followed = followed_particle(parts, result.start_uv)
            particle = next(((u, v) for pid, u, v, _ in parts if pid == followed), None)
            others = [(u, v) for pid, u, v, on in parts if on > ON and pid != followed]
        if particle is not None:
            trail.append(particle)
        uv = truth[result.object_id]
        caption = f'{mode} seed {result.seed} t={t} d={distance(uv, result.goal_uv):.1f}px' + (
            ' OK' if result.success and t == len(trace.frames) - 1 else ''
        )
        video.write(draw_frame(rgb, result.goal_uv, result.tolerance, uv, particle, trail,
                               planner_path(values), others, caption))  # fmt: skip
    path = video.close()
    return path.name if path is not None else None


def run_mode(mode: str, args: argparse.Namespace, env: dict[str, str],
             out: Path) -> tuple[list[EpisodeResult], dict[str, str]]:  # fmt: skip
    """Start the processes of one mode, warm up, run the episodes, stop; the results and the
    planner's last diagnostics values (whatever it reports, for the report)."""
    if (
        mode != 'random'
        and not args.planner_command
        and not importlib.util.find_spec(PLANNER_MODULE)
    ):
        raise ConfigError(f'mode {mode} needs the planner ({PLANNER_MODULE}), not installed')
    logs = out / 'logs' / mode
    procs = start_processes(mode, args, env, logs)
    client, results, planner_status = None, [], {}
    try:
        client = LoopClient(env, f'evaluate_{mode}', keep_frames=not args.no_video)
        wait_ready(client, procs)
        warm_up(client, procs, args, mode == 'random')
        for i in range(args.episodes):
            result, trace = run_episode(client, procs, args.seed + i, args, mode == 'random',
                                        args.steps)  # fmt: skip
            if not args.no_video:
                stem = out / 'videos' / f'{mode}_seed{result.seed}'
                result.video = write_video(stem, mode, result, trace, args.fps)
            logger.info('%s seed %d: %s in %d steps, final distance %.1f px, %d missed', mode,
                        result.seed, 'success' if result.success else 'failure', result.steps,
                        result.final_distance, result.missed_steps)  # fmt: skip
            results.append(result)
            with client.lock:
                planner_status = dict(client.seen.planner_latest)
    finally:
        if client is not None:
            client.close()
        procs.stop()
    return results, planner_status


def run(args: argparse.Namespace) -> int:
    if args.episodes < 1 or args.steps < 1:
        raise ConfigError('--episodes and --steps must be >= 1')
    if not (Path(args.bundle) / 'model_card.yaml').is_file():
        raise ConfigError(f'no model bundle at {args.bundle} (model_card.yaml missing)')
    out: Path = args.out
    if out.exists():
        if not args.overwrite:
            raise ConfigError(f'{out} already exists; choose a new --out or pass --overwrite')
        shutil.rmtree(out)
    (out / 'videos').mkdir(parents=True)
    env = ros_environment()
    dds_shm.clean_stale()
    report: dict[str, Any] = {
        'tool': 'evaluate-planning (dlp_ros/sim/evaluate.py)', 'bundle': str(args.bundle),
        'episodes': args.episodes, 'seeds': [args.seed, args.seed + args.episodes - 1],
        'max_steps': args.steps, 'tolerance_px': args.tolerance, 'size': args.size,
        'fps': args.fps, 'step_timeout_s': args.step_timeout,
        'ros_domain_id': int(env['ROS_DOMAIN_ID']), 'modes': {},
    }  # fmt: skip
    for mode in args.planner_model:
        t0 = time.monotonic()
        results, planner_status = run_mode(mode, args, env, out)
        report['modes'][mode] = {**summarise(results), 'planner_status': planner_status,
                                 'planner_planning_ms': planner_percentiles(planner_status),
                                 'wall_s': round(time.monotonic() - t0, 1)}  # fmt: skip
        (out / 'report.json').write_text(json.dumps(report, indent=2) + '\n')
    print(format_report(report))  # noqa: T201
    return 0


def main(argv: list[str] | None = None) -> int:
    """The ``python -m dlp_ros.sim.evaluate`` program."""
    return main_of('python -m dlp_ros.sim.evaluate', sys.modules[__name__], argv)


if __name__ == '__main__':
    sys.exit(main())
