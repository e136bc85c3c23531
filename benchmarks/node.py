"""Benchmark the perception node end to end over ROS 2: latency, dropped frames, memory.

Starts the node (``python -m dlp_ros.node``) as its own process on ``--bundle``, publishes
640x480 rgb8 frames at ``--rate`` Hz (best effort, the sensor-data QoS) for ``--warmup`` s
(not measured) and then ``--duration`` s, each stamped with the time it is published. The node
publishes particles for every frame and a ``--horizon``-step particle prediction per frame
(``prediction_rate`` = 2 x rate: the node predicts at most once per processed frame, so this is
one per frame despite timing jitter; no decoded frames). Measured:

- end-to-end latency: receive time of /dlp/particles (a subscriber in this process) minus the
  header stamp (= publish time), p50/p99;
- dropped frames: frames published without particles coming back, and where the node says they
  went (/diagnostics, over the measured window): lost in DDS before its callback
  (``frames_lost_dds``, from the publisher's sequence numbers; ``frames_lost_transport``, the
  part the middleware reports), replaced in its one-frame mailbox (``frames_dropped``) or bad;
  ``unaccounted`` is what none of these explains;
- the node's RSS every second (psutil, else /proc/PID/status) and its slope (MB/min, least
  squares over the second half of the measured window, once the heap has settled; also over all
  of it), and the mean RSS of each minute.

Targets: no dropped frames, p50 <= 15 ms, p99 <= 40 ms, no RSS growth (slope < 1 MB/min).
Prints human-readable lines, then one JSON object on the last line.

    python benchmarks/node.py [--bundle DIR] [--duration 60] [--rate 30] [--threads 1]
    python benchmarks/node.py --duration 600      # the 10-minute endurance run
    python benchmarks/node.py --duration 600 --reliable   # reliable camera QoS end to end
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dlp_ros.demo import (  # noqa: E402
    NodeProcess,
    RosSession,
    ros_environment,
    set_stamp,
)
from dlp_ros.node import default_bundle  # noqa: E402

WIDTH, HEIGHT = 640, 480
DDS_PROFILE = ROOT / 'config' / 'fastdds_large_frames.xml'
RATE_WINDOW_S = 5.0  # the node's rate meters average over the last 5 s
TARGETS = {'p50_ms': 15.0, 'p99_ms': 40.0, 'dropped': 0, 'rss_slope_mb_per_min': 1.0}


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MB (psutil if installed, else /proc/PID/status)."""
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 2**20
    except ImportError:
        for line in Path(f'/proc/{pid}/status').read_text().splitlines():
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f'no RSS for pid {pid}')


def make_frames(count: int = 30) -> list[np.ndarray]:
    """``count`` (480, 640, 3) uint8 frames: three discs moving over a gradient."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    base = np.stack([xx * 255 // WIDTH, yy * 255 // HEIGHT, np.full_like(xx, 60)], -1)
    frames = []
    for t in range(count):
        rgb = base.astype(np.uint8)
        for i, col in enumerate(((230, 30, 30), (30, 200, 40), (40, 60, 230))):
            cx = (100 + 150 * i + 8 * t) % WIDTH
            cy = (120 + 90 * i + 5 * t) % HEIGHT
            rgb[(xx - cx) ** 2 + (yy - cy) ** 2 <= 40**2] = col
        frames.append(rgb)
    return frames


class Listener:
    """Particles, predictions and diagnostics of the node, as (receive ns, stamp ns) pairs."""

    def __init__(self, session: RosSession) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        from dlp_ros.msg import ParticleArray, Prediction

        self.lock = threading.Lock()
        self.particles: list[tuple[int, int]] = []
        self.predictions: list[tuple[int, int]] = []
        self.diagnostics: dict[str, str] = {}
        self.diagnostics_time = 0.0  # time.monotonic() of the latest diagnostics message
        self.input_rates: list[tuple[float, float]] = []  # (monotonic s, input_rate_hz)
        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        node = session.node
        self.subs = [
            node.create_subscription(ParticleArray, '/dlp/particles',
                                     self._keep(self.particles), reliable),
            node.create_subscription(Prediction, '/dlp/prediction',
                                     self._keep(self.predictions), reliable),
            node.create_subscription(DiagnosticArray, '/diagnostics', self._diagnostics, 10),
        ]  # fmt: skip

    def _keep(self, store: list[tuple[int, int]]):  # noqa: ANN202
        def callback(msg) -> None:  # noqa: ANN001
            now = time.time_ns()
            stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            with self.lock:
                store.append((now, stamp))

        return callback

    def _diagnostics(self, msg) -> None:  # noqa: ANN001
        for status in msg.status:
            if 'dlp' in status.name:
                with self.lock:
                    self.diagnostics = {kv.key: kv.value for kv in status.values}
                    self.diagnostics_time = time.monotonic()
                    if 'input_rate_hz' in self.diagnostics:
                        rate = float(self.diagnostics['input_rate_hz'])
                        self.input_rates.append((self.diagnostics_time, rate))

    def median_input_rate(self, start: float, end: float) -> float | None:
        """Median of the node's reported input rate [Hz] over messages received in [start, end]
        (monotonic s); None when there were none."""
        with self.lock:
            rates = [hz for t, hz in self.input_rates if start <= t <= end]
        return round(float(np.median(rates)), 2) if rates else None

    def diagnostics_after(self, since: float, timeout: float = 5.0) -> dict[str, str]:
        """The node's diagnostics from a message received after ``since`` (monotonic s)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if self.diagnostics_time > since:
                    return dict(self.diagnostics)
            time.sleep(0.05)
        raise RuntimeError(f'no /diagnostics message from the node within {timeout} s')


def publish_for(pub, messages: list, rate: float, seconds: float, sent: list[int]) -> None:  # noqa: ANN001
    """Publish ``messages`` cyclically at ``rate`` Hz for ``seconds``, each stamped with the
    publish time (appended to ``sent``); an absolute schedule, so no drift."""
    period = 1.0 / rate
    start = time.monotonic()
    n = 0
    while True:
        due = start + n * period
        if due - start >= seconds:
            return
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        msg = messages[n % len(messages)]
        now = time.time_ns()
        set_stamp(msg.header, now)
        pub.publish(msg)
        sent.append(now)
        n += 1


def slope_mb_per_min(samples: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MB) samples, in MB/min."""
    if len(samples) < 3:
        return None
    t, mb = np.array(samples, dtype=np.float64).T
    return float(np.polyfit(t / 60.0, mb, 1)[0])


def by_minute(samples: list[tuple[float, float]]) -> list[float]:
    """Mean RSS (MB) of each started minute of (seconds, MB) samples."""
    minutes: dict[int, list[float]] = {}
    for t, mb in samples:
        minutes.setdefault(int(t // 60), []).append(mb)
    return [round(float(np.mean(v)), 1) for _, v in sorted(minutes.items())]


def pct(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {'p50': None, 'p99': None, 'mean': None, 'max': None}
    a = np.asarray(values)
    return {
        'p50': round(float(np.percentile(a, 50)), 3),
        'p99': round(float(np.percentile(a, 99)), 3),
        'mean': round(float(a.mean()), 3),
        'max': round(float(a.max()), 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    add = parser.add_argument
    add('--bundle', type=Path, help='model bundle (default: the installed bundles/tabletop64)')
    add('--duration', type=float, default=60.0, help='measured seconds (60)')
    add('--rate', type=float, default=30.0, help='camera rate, Hz (30)')
    add('--warmup', type=float, default=5.0, help='unmeasured seconds first (5)')
    add('--horizon', type=int, default=10, help='predicted steps (10)')
    add('--providers', default='auto', help='node parameter providers (auto)')
    add('--threads', type=int, default=1, help='node parameter threads (1; 0 = all cores)')
    add(
        '--dds-profile',
        default=str(DDS_PROFILE),
        help="Fast DDS XML profile of both processes ('' = Fast DDS defaults); default "
        'config/fastdds_large_frames.xml: without it most 640x480 best-effort frames are lost',
    )
    add(
        '--reliable',
        action='store_true',
        help='reliable camera QoS: the publisher and the node (input_reliability reliable); '
        'default best effort (sensor data)',
    )
    add('--log', type=Path, help='node log file (default /tmp/dlp_bench_node_<domain>.log)')
    args = parser.parse_args()
    bundle = args.bundle or default_bundle()  # '' when none is installed
    if not bundle or not (Path(bundle) / 'model_card.yaml').is_file():
        print(f'no model bundle at {bundle or "(none installed)"}: pass --bundle DIR',
              file=sys.stderr)  # fmt: skip
        return 2

    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import Image

    env = ros_environment()
    if args.dds_profile:  # this process too: rclpy reads it at init
        for name in ('FASTRTPS_DEFAULT_PROFILES_FILE', 'FASTDDS_DEFAULT_PROFILES_FILE'):
            env[name] = os.environ[name] = str(Path(args.dds_profile).resolve())
    log = args.log or Path(f'/tmp/dlp_bench_node_{env["ROS_DOMAIN_ID"]}.log')
    params = {
        'model_bundle': str(bundle),
        'horizon': args.horizon,
        'prediction_rate': float(2 * args.rate),
        'publish_frames': False,
        'providers': args.providers,
        'threads': args.threads,
        'overlay': False,
        'input_reliability': 'reliable' if args.reliable else 'best_effort',
    }
    node = NodeProcess(params, {'image': '/camera/image_raw'}, env, log)
    session = RosSession(env, name='dlp_bench')
    try:
        listener = Listener(session)
        camera_qos = (
            QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
            if args.reliable
            else qos_profile_sensor_data
        )
        pub = session.node.create_publisher(Image, '/camera/image_raw', camera_qos)
        messages = []
        for rgb in make_frames():
            messages.append(Image(height=HEIGHT, width=WIDTH, encoding='rgb8', is_bigendian=0,
                                  step=WIDTH * 3, data=rgb.tobytes()))  # fmt: skip
            messages[-1].header.frame_id = 'camera'
        session.wait_for('the node to subscribe to /camera/image_raw',
                         lambda: pub.get_subscription_count() > 0, 120.0, node)  # fmt: skip
        for sub in listener.subs[:2]:
            session.wait_for(f'the node to publish {sub.topic_name}',
                             lambda s=sub: s.get_publisher_count() > 0, 30.0, node)  # fmt: skip
        warm: list[int] = []
        publish_for(pub, messages, args.rate, args.warmup, warm)
        time.sleep(0.5)
        # counters after every warm-up frame: a message sent > 1 s after the last of them
        diag_start = listener.diagnostics_after(time.monotonic() + 0.6)
        rss_samples: list[tuple[float, float]] = []
        sent: list[int] = []
        stop = threading.Event()

        def sample_rss() -> None:
            t0 = time.monotonic()
            while not stop.is_set():
                rss_samples.append((time.monotonic() - t0, rss_mb(node.pid)))
                stop.wait(1.0)

        sampler = threading.Thread(target=sample_rss, daemon=True)
        print(f'node pid {node.pid}: {args.rate:g} Hz 640x480 rgb8 for {args.duration:g} s '
              f'(after {args.warmup:g} s warm-up) ...', flush=True)  # fmt: skip
        sampler.start()
        measured_from = time.monotonic() + RATE_WINDOW_S  # the node's rate window is full
        publish_for(pub, messages, args.rate, args.duration, sent)
        input_rate = listener.median_input_rate(measured_from, time.monotonic())
        time.sleep(0.5)  # stragglers
        diag_end = listener.diagnostics_after(time.monotonic() + 0.6)
        stop.set()
        sampler.join()
        node.check_alive()
        with listener.lock:
            particles = list(listener.particles)
            predictions = list(listener.predictions)
    finally:
        node.stop()
        session.close()

    measured = set(sent)
    latency = [(recv - stamp) / 1e6 for recv, stamp in particles if stamp in measured]
    got = {stamp for _, stamp in particles if stamp in measured}
    predicted = {stamp for _, stamp in predictions if stamp in measured}

    def node_count(key: str) -> int | None:
        if key not in diag_end:
            return None
        return int(diag_end[key]) - int(diag_start.get(key, 0))

    dropped = len(measured - got)
    counts = {
        key: node_count(key)
        for key in ('frames_received', 'frames_lost_dds', 'frames_lost_transport',
                    'frames_dropped', 'frames_processed', 'bad_frames', 'processing_errors')
    }  # fmt: skip
    known = [counts['frames_received'], counts['frames_lost_dds']]
    unaccounted = len(sent) - sum(known) if None not in known else None  # type: ignore[arg-type]
    # the heap settles during the first minutes: the slope of the second half tells growth
    settled = [(t, mb) for t, mb in rss_samples if t >= args.duration / 2]
    slope = slope_mb_per_min(settled)
    slope_all = slope_mb_per_min(rss_samples)
    lat = pct(latency)
    rss = [mb for _, mb in rss_samples]
    result = {
        'benchmark': 'node',
        'bundle': str(bundle),
        'provider': diag_end.get('provider'),
        'threads': args.threads,
        'rate_hz': args.rate,
        'duration_s': args.duration,
        'horizon': args.horizon,
        'image': f'{WIDTH}x{HEIGHT} rgb8',
        'dds_profile': args.dds_profile or None,
        'camera_qos': 'reliable' if args.reliable else 'best_effort',
        'frames_published': len(sent),
        'particles_received': len(got),
        'predictions_received': len(predicted),
        'dropped_frames': dropped,
        'node_frames_received': counts['frames_received'],
        'node_frames_lost_dds': counts['frames_lost_dds'],
        'node_frames_lost_transport': counts['frames_lost_transport'],
        'node_frames_dropped': counts['frames_dropped'],
        'node_frames_processed': counts['frames_processed'],
        'node_bad_frames': counts['bad_frames'],
        'node_processing_errors': counts['processing_errors'],
        'unaccounted_frames': unaccounted,
        'node_input_rate_hz': input_rate,  # median over the run (camera rate incl. lost frames)
        'latency_ms': lat,
        'node_latency_p50_ms': diag_end.get('latency_p50_ms'),
        'node_latency_p99_ms': diag_end.get('latency_p99_ms'),
        'rss_mb': {
            'start': round(rss[0], 1) if rss else None,
            'end': round(rss[-1], 1) if rss else None,
            'max': round(max(rss), 1) if rss else None,
        },
        'rss_slope_mb_per_min': None if slope is None else round(slope, 3),  # second half
        'rss_slope_all_mb_per_min': None if slope_all is None else round(slope_all, 3),
        'rss_mb_by_minute': by_minute(rss_samples),
    }
    checks = {
        'no_dropped_frames': dropped == 0,
        'p50': lat['p50'] is not None and lat['p50'] <= TARGETS['p50_ms'],
        'p99': lat['p99'] is not None and lat['p99'] <= TARGETS['p99_ms'],
        'no_rss_growth': slope is not None and slope < TARGETS['rss_slope_mb_per_min'],
    }
    result['targets'] = {**TARGETS, 'met': checks}
    print(f'frames: {len(sent)} published, {len(got)} with particles, {dropped} without; '
          f'node: {counts["frames_lost_dds"]} lost in DDS ({counts["frames_lost_transport"]} '
          f'reported by the transport), {counts["frames_received"]} received, '
          f'{counts["frames_dropped"]} dropped in the mailbox, {counts["bad_frames"]} bad; '
          f'{unaccounted} unaccounted; {len(predicted)} predictions')  # fmt: skip
    print(f'latency: p50 {lat["p50"]} ms, p99 {lat["p99"]} ms, max {lat["max"]} ms '
          f'(targets 15 / 40 ms)')  # fmt: skip
    print(f'RSS: {result["rss_mb"]}, slope {result["rss_slope_mb_per_min"]} MB/min over the '
          f'second half ({result["rss_slope_all_mb_per_min"]} over all)')  # fmt: skip
    print(f'targets met: {checks}')
    print(json.dumps(result))
    return 0


if __name__ == '__main__':
    sys.exit(main())
