"""Benchmark ``~/predict_batch`` over ROS 2: request to response, B candidates x N steps.

Starts the perception node (``python -m dlp_ros.node``) as its own process on ``--bundle``
(default: the shipped bundles/tabletop64) and feeds it 64x64 rgb8 frames of three moving discs
on /camera/image_raw at ``--rate`` Hz (reliable, a background thread) while this process calls
the node's services: in each round, in a shuffled order, one ``~/predict_batch`` request per
candidate count B of ``--candidates`` (``--horizon`` steps, uniform random commands within
+-``--max-speed``) and one ``~/predict`` of the same horizon (B = 1 through the single-rollout
service: the same-run baseline; no frames). Measured per request: the time from the call to
the answer in this process (DDS both ways, the service queue, the rollout, packing the
response) and the rollout alone as the node reports it in ``message``.

The machine may be shared (other jobs run beside it): compare B against the same-run baseline,
not against figures of another run. Target (issue 13): B = 64, horizon 10, median <= 30 ms.
Prints one line per B, then one JSON object on the last line.

    python benchmarks/predict_batch.py [--bundle DIR] [--candidates 1,16,64,256] [--horizon 10]
        [--rounds 30] [--rate 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dlp_ros.demo import NodeProcess, RosSession, ros_environment, set_stamp  # noqa: E402
from dlp_ros.service_call import call_service  # noqa: E402

SIZE = 64
NODE = 'dlp_bench_batch'
TARGET_MS = 30.0  # median, B = 64, horizon 10
ROLLOUT_MS = re.compile(r' in ([0-9.]+) ms$')


def make_frames(count: int = 30) -> list[np.ndarray]:
    """``count`` (64, 64, 3) uint8 frames: three discs moving over a grey table."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    frames = []
    for t in range(count):
        rgb = np.full((SIZE, SIZE, 3), 90, np.uint8)
        for i, col in enumerate(((230, 30, 30), (30, 200, 40), (40, 60, 230))):
            cx, cy = (12 + 18 * i + t) % SIZE, (16 + 14 * i + t // 2) % SIZE
            rgb[(xx - cx) ** 2 + (yy - cy) ** 2 <= 16] = col
        frames.append(rgb)
    return frames


def feed(session: RosSession, pub: Any, rate: float, stop: threading.Event) -> None:
    """Publish the frames at ``rate`` Hz, stamped now, until ``stop``."""
    from sensor_msgs.msg import Image

    frames = make_frames()
    k = 0
    while not stop.is_set():
        msg = Image(height=SIZE, width=SIZE, encoding='rgb8', is_bigendian=0, step=SIZE * 3,
                    data=frames[k % len(frames)].tobytes())  # fmt: skip
        msg.header.frame_id = 'camera'
        set_stamp(msg.header, time.time_ns())
        pub.publish(msg)
        k += 1
        stop.wait(1.0 / rate)


def call(client: Any, request: Any, timeout: float) -> tuple[float, Any]:
    """(request to response [ms], the response) of one service call."""
    done = threading.Event()
    t0 = time.perf_counter()
    future = client.call_async(request)
    future.add_done_callback(lambda _: done.set())
    if not done.wait(timeout):
        raise TimeoutError(f'no answer from {client.srv_name} within {timeout:g} s')
    return (time.perf_counter() - t0) * 1e3, future.result()


def pct(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, np.float64)
    p50, p99 = np.percentile(a, [50, 99])
    return {'median_ms': round(float(p50), 2), 'p99_ms': round(float(p99), 2),
            'min_ms': round(float(a.min()), 2), 'n': int(a.size)}  # fmt: skip


def measure(session: RosSession, args: argparse.Namespace, action_dim: int) -> dict[str, dict]:
    """``args.rounds`` rounds of one request per B and one ~/predict, shuffled per round."""
    from dlp_ros.srv import Predict, PredictBatch

    batch = session.node.create_client(PredictBatch, f'/{NODE}/predict_batch')
    single = session.node.create_client(Predict, f'/{NODE}/predict')
    for client in (batch, single):
        if not client.wait_for_service(timeout_sec=60.0):
            raise TimeoutError(f'service {client.srv_name} did not appear')
    # one answered call on each client first: a reply lost to discovery is asked again
    call_service(batch, PredictBatch.Request(candidates=1), session.poll, 120.0)
    call_service(single, Predict.Request(horizon=1), session.poll, 120.0)
    rng = np.random.default_rng(0)
    sizes: list[int | str] = [*args.candidates, 'predict']
    times: dict[str, list[float]] = {str(s): [] for s in sizes}
    rollout: dict[str, list[float]] = {str(s): [] for s in sizes}
    for r in range(-args.warmup, args.rounds):
        for size in rng.permutation(np.array(sizes, dtype=object)):
            if size == 'predict':
                ms, answer = call(single, Predict.Request(horizon=args.horizon), 120.0)
                spent = float(answer.prediction.predict_ms)
            else:
                n = int(size) * args.horizon * action_dim
                cmds = rng.uniform(-args.max_speed, args.max_speed, n).astype(np.float32)
                request = PredictBatch.Request(
                    horizon=args.horizon, candidates=int(size), actions=cmds.tolist()
                )
                ms, answer = call(batch, request, 120.0)
                found = ROLLOUT_MS.search(answer.message)
                spent = float(found.group(1)) if found else float('nan')
            if not answer.success:
                raise RuntimeError(f'B={size}: {answer.message}')
            if r >= 0:
                times[str(size)].append(ms)
                rollout[str(size)].append(spent)
    return {s: {**pct(times[s]), 'rollout_median_ms': round(float(np.median(rollout[s])), 2)}
            for s in times}  # fmt: skip


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    add = parser.add_argument
    add('--bundle', type=Path, default=ROOT / 'bundles' / 'tabletop64', help='model bundle')
    add('--candidates', default='1,16,64,256', help='candidate counts B (1,16,64,256)')
    add('--horizon', type=int, default=10, help='predicted steps N (10)')
    add('--rounds', type=int, default=30, help='measured rounds (30)')
    add('--warmup', type=int, default=2, help='unmeasured rounds first (2)')
    add('--rate', type=float, default=10.0, help='camera rate during the run, Hz (10)')
    add('--max-speed', type=float, default=0.3, help='command bound [m/s] (0.3)')
    add('--threads', type=int, default=1, help='node parameter threads (1; 0 = all cores)')
    add('--log', type=Path, help='node log (default /tmp/dlp_bench_batch_<domain>.log)')
    args = parser.parse_args()
    args.candidates = [int(c) for c in args.candidates.split(',')]
    return args


def main() -> int:
    args = parse()
    if not (args.bundle / 'model_card.yaml').is_file():
        print(f'no model bundle at {args.bundle}: pass --bundle DIR', file=sys.stderr)
        return 2
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from dlp_ros.model_card import load_model_card

    action_dim = load_model_card(args.bundle, check_graphs=False).dynamics.action_dim
    env = ros_environment()
    log = args.log or Path(f'/tmp/dlp_bench_batch_{env["ROS_DOMAIN_ID"]}.log')
    params = {'model_bundle': str(args.bundle), 'horizon': args.horizon, 'threads': args.threads,
              'prediction_rate': 0.0, 'overlay': False, 'ood_every_n': 0,
              'input_reliability': 'reliable', 'providers': 'cpu'}  # fmt: skip
    node = NodeProcess(params, {'__node': NODE, 'image': '/camera/image_raw'}, env, log)
    session = RosSession(env, name='dlp_bench_batch_client')
    stop = threading.Event()
    feeder: threading.Thread | None = None
    try:
        session.listen(predictions=False)
        qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
        pub = session.node.create_publisher(Image, '/camera/image_raw', qos)
        session.wait_for('the node to subscribe', lambda: pub.get_subscription_count() > 0,
                         120.0, node)  # fmt: skip
        feeder = threading.Thread(target=feed, args=(session, pub, args.rate, stop), daemon=True)
        feeder.start()
        session.wait_for('particles', lambda: len(session.received.particles) > 2, 60.0, node)
        results = measure(session, args, action_dim)
        node.check_alive()
    finally:
        stop.set()
        if feeder is not None:
            feeder.join()
        node.stop()
        session.close()
    report(args, results)
    return 0


def report(args: argparse.Namespace, results: dict[str, dict]) -> None:
    single = results['predict']
    base = single['median_ms']
    print(
        f'~/predict (B = 1, single-rollout service): median {base:.1f} ms, p99 '
        f'{single["p99_ms"]:.1f} ms (rollout {single["rollout_median_ms"]} ms)'
    )
    for b in args.candidates:
        r = results[str(b)]
        print(f'~/predict_batch B = {b:3d}, N = {args.horizon}: median {r["median_ms"]:.1f} ms, '
              f'p99 {r["p99_ms"]:.1f} ms, rollout {r["rollout_median_ms"]} ms '
              f'({r["median_ms"] / base:.1f} x ~/predict)')  # fmt: skip
    met = results.get('64', {}).get('median_ms', float('inf')) <= TARGET_MS
    out = {'benchmark': 'predict_batch', 'bundle': str(args.bundle), 'horizon': args.horizon,
           'threads': args.threads, 'camera_rate_hz': args.rate, 'rounds': args.rounds,
           'results': results, 'target_b64_median_ms': TARGET_MS, 'target_met': met}  # fmt: skip
    print(json.dumps(out))


if __name__ == '__main__':
    raise SystemExit(main())
