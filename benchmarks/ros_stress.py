"""Stress the ROS tests: run ``pytest tests/ros`` N times in a row with CPU-bound processes
beside them, and report how many runs passed (and which tests failed in the others).

A suite that fails one run in five will sooner or later reject good work; this is how its
reliability is measured (not a test). Each run gets its own ROS_DOMAIN_ID (pytest's pid).
Prints one line per run, then one JSON object on the last line.

    source scripts/env.sh
    python benchmarks/ros_stress.py --runs 20 --hogs 1      # one busy core beside the tests
    python benchmarks/ros_stress.py --runs 5 --hogs 0 -- -k node   # args after -- go to pytest
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAILED = re.compile(r'^(FAILED|ERROR) (\S+)', re.MULTILINE)
SUMMARY = re.compile(r'^=* ?(\d+ (?:passed|failed|error).*) in [\d.]+s', re.MULTILINE)


def hog(stop: mp.Event) -> None:  # type: ignore[valid-type]
    """Keep one core busy until ``stop`` is set."""
    x = 0
    while not stop.is_set():  # type: ignore[attr-defined]
        for _ in range(100_000):
            x = (x * 1103515245 + 12345) & 0x7FFFFFFF


def run_once(pytest_args: list[str], log: Path) -> tuple[int, float, list[str], str]:
    """One ``pytest tests/ros`` run: (exit code, seconds, failed test ids, summary line)."""
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, '-m', 'pytest', 'tests/ros', '-q', '-p', 'no:cacheprovider',
         *pytest_args],
        cwd=ROOT, env={**os.environ, 'DLP_REQUIRE_ROS': '1'}, capture_output=True, text=True,
    )  # fmt: skip
    seconds = time.monotonic() - start
    text = proc.stdout + proc.stderr
    log.write_text(text)
    summary = SUMMARY.findall(text)
    failed = [m[1] for m in FAILED.findall(text)]
    return proc.returncode, seconds, failed, summary[-1] if summary else text.strip()[-200:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--runs', type=int, default=20, help='pytest runs (20)')
    parser.add_argument('--hogs', type=int, default=1, help='CPU-bound processes beside (1)')
    parser.add_argument('--logs', type=Path, default=Path('/tmp/dlp_ros_stress'),
                        help='one pytest log per run (/tmp/dlp_ros_stress)')  # fmt: skip
    parser.add_argument('pytest_args', nargs='*', help='after --: more pytest arguments')
    args = parser.parse_args()
    if args.runs < 1 or args.hogs < 0:
        parser.error('--runs must be >= 1 and --hogs >= 0')
    args.logs.mkdir(parents=True, exist_ok=True)
    stop = mp.Event()
    hogs = [mp.Process(target=hog, args=(stop,), daemon=True) for _ in range(args.hogs)]
    for process in hogs:
        process.start()
    results = []
    try:
        for i in range(1, args.runs + 1):
            code, seconds, failed, summary = run_once(args.pytest_args, args.logs / f'{i}.log')
            results.append({'run': i, 'exit_code': code, 'seconds': round(seconds, 1),
                            'failed': failed, 'summary': summary})  # fmt: skip
            print(f'run {i}/{args.runs}: exit {code} in {seconds:.0f} s: {summary}'
                  + (f' FAILED {failed}' if failed else ''), flush=True)  # fmt: skip
    finally:
        stop.set()
        for process in hogs:
            process.join(timeout=5.0)
    passed = sum(r['exit_code'] == 0 for r in results)
    print(f'{passed} of {len(results)} runs passed with {args.hogs} CPU hog(s) beside '
          f'(logs in {args.logs})')  # fmt: skip
    print(json.dumps({'benchmark': 'ros_stress', 'runs': len(results), 'passed': passed,
                      'hogs': args.hogs, 'cpus': os.cpu_count(), 'results': results}))  # fmt: skip
    return 0 if passed == len(results) else 1


if __name__ == '__main__':
    sys.exit(main())
