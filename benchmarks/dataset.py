"""Benchmark ``build-dataset``: throughput and peak memory on generated bags.

Writes a camera bag of ``--frames`` frames (``--size`` x ``--size``, raw rgb8 at 30 Hz; with
``--jpeg`` also a jpeg one) in mcap and in sqlite3 storage into a temporary directory, then runs
``python -m dlp_training build-dataset`` on each in a child process and reads that child's peak RSS
(``ru_maxrss`` from ``os.wait4``), so the number covers the whole build and nothing else. A child
that only imports the builder gives the baseline (interpreter + numpy/OpenCV/rosbags).

Prints human-readable lines, then one JSON object on the last line.

    python benchmarks/dataset.py [--frames 10000] [--size 128] [--build-size 64] [--jpeg]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dlp_ros.offline.bag_writer import BagWriter  # noqa: E402

TOPIC = '/camera/image'
FPS = 30.0
NS = 1_000_000_000


def make_frames(count: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` distinct smooth (size, size, 3) uint8 RGB frames to cycle through."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    frames = []
    for _ in range(count):
        fx, fy, phase = rng.uniform(0.5, 3, 3)
        rgb = [
            np.sin(2 * np.pi * (fx * x + c * phase)) * np.cos(2 * np.pi * fy * y) for c in range(3)
        ]
        frames.append(((np.stack(rgb, axis=-1) + 1) * 127.5).astype(np.uint8))
    return frames


def write_bag(path: Path, storage: str, encoding: str, frames: int, size: int) -> float:
    """Write the benchmark bag; return its size in MB."""
    pool = make_frames(64, size)
    msgtype = 'sensor_msgs/msg/Image' if encoding == 'rgb8' else 'sensor_msgs/msg/CompressedImage'
    with BagWriter(path, storage, {TOPIC: msgtype}) as w:
        for k in tqdm(range(frames), desc=f'write {path.name}', unit='frame', file=sys.stderr):
            stamp = NS + round(k * NS / FPS)
            rgb = pool[k % len(pool)]
            if encoding == 'rgb8':
                msg = w.image(stamp, 'camera', rgb, 'rgb8')
            else:
                msg = w.compressed_image(stamp, 'camera', rgb, encoding)
            w.write(TOPIC, stamp + 2_000_000, msg)
    return sum(f.stat().st_size for f in path.iterdir()) / 2**20


def run_child(cmd: list[str]) -> tuple[float, float, int, str]:
    """Run ``cmd``; return (wall s, peak RSS MB, exit code, stderr tail)."""
    env = {
        **os.environ,
        'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]),
    }
    start = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        err.seek(0)
        tail = err.read().decode(errors='replace')[-2000:]
    return wall, usage.ru_maxrss / 1024, proc.returncode, tail  # ru_maxrss is KiB on Linux


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--frames', type=int, default=10_000, help='frames per bag (10000)')
    parser.add_argument('--size', type=int, default=128, help='recorded image size (128)')
    parser.add_argument('--build-size', type=int, default=64, help='--size of the build (64)')
    parser.add_argument('--jpeg', action='store_true', help='also benchmark jpeg bags')
    parser.add_argument('--workdir', type=Path, help='where to write the bags (a temp dir)')
    args = parser.parse_args()

    encodings = ['rgb8', 'jpeg'] if args.jpeg else ['rgb8']
    results = []
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix='dlp_bench_') as tmp:
        base_wall, base_rss, _, _ = run_child(
            [sys.executable, '-c', 'import dlp_training.__main__, dlp_training.data.build']
        )
        print(f'baseline: importing the builder: {base_rss:.0f} MB peak RSS, {base_wall:.2f} s')
        for encoding in encodings:
            for storage in ('mcap', 'sqlite3'):
                bag = Path(tmp) / f'bench_{encoding}_{storage}'
                bag_mb = write_bag(bag, storage, encoding, args.frames, args.size)
                out = Path(tmp) / f'ds_{encoding}_{storage}'
                cmd = [sys.executable, '-m', 'dlp_training', 'build-dataset', '--bags', str(bag),
                       '--topic', TOPIC, '--size', str(args.build_size), '--fps', str(FPS),
                       '--out', str(out), '--no-progress']  # fmt: skip
                wall, rss, code, tail = run_child(cmd)
                if code != 0:
                    print(f'build failed ({code}):\n{tail}', file=sys.stderr)
                    return 1
                manifest = yaml.safe_load((out / 'manifest.yaml').read_text())
                kept = sum(e['frames'] for e in manifest['episodes'])
                result = {
                    'storage': storage,
                    'encoding': encoding,
                    'frames': kept,
                    'seconds': round(wall, 3),
                    'frames_per_s': round(kept / wall, 1),
                    'peak_rss_mb': round(rss, 1),
                    'bag_mb': round(bag_mb, 1),
                }
                results.append(result)
                print(
                    f'{storage:8s} {encoding:5s}: {kept} frames, {args.size}->{args.build_size} px'
                    f' in {wall:.2f} s = {kept / wall:,.0f} frames/s; peak RSS {rss:.0f} MB'
                    f' (bag {bag_mb:.0f} MB)'
                )
                for path in (bag, out):
                    shutil.rmtree(path)
    print(
        json.dumps(
            {
                'benchmark': 'build-dataset',
                'frames': args.frames,
                'size': args.size,
                'build_size': args.build_size,
                'baseline_rss_mb': round(base_rss, 1),
                'startup_s': round(base_wall, 3),
                'results': results,
            }
        )
    )
    return 0


if __name__ == '__main__':
    sys.exit(main())
