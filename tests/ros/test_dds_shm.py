"""Stale Fast DDS shared-memory files: a SIGKILLed rclpy process leaves its segments in
/dev/shm; ``dlp_ros.dds_shm.clean_stale`` removes them and keeps those of a living process.

The two peers run in domains of their own, apart from this run's: a participant that talked to
one killed with SIGKILL was seen to crash at its own shutdown now and then (Fast DDS), and the
killed one's domain-wide discovery port would be left to the other tests.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytest.importorskip('rclpy')
pytest.importorskip('dlp_ros.msg')

from dlp_ros.dds_shm import SHM_DIR, clean_stale, stale_files  # noqa: E402
from dlp_ros.demo import stop_process  # noqa: E402

pytestmark = pytest.mark.ros

PEER = Path(__file__).resolve().parent / 'peer_publisher.py'


def fastdds_files() -> set[str]:
    return {name for name in os.listdir(SHM_DIR) if 'fastrtps' in name or 'fastdds' in name}


def start_peer(log: Path, domain: int) -> tuple[subprocess.Popen, set[str]]:
    """A peer_publisher.py process on ``domain`` once it is READY, and the shared-memory files
    it made."""
    before = fastdds_files()
    prefix = f'/dlp_test_shm_{uuid.uuid4().hex[:8]}'
    out = log.open('w')
    proc = subprocess.Popen(
        [sys.executable, str(PEER), 'publish', '--prefix', prefix, '--lifetime', '60'],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=out,
        text=True,
        env={**os.environ, 'PYTHONUNBUFFERED': '1', 'ROS_DOMAIN_ID': str(domain)},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until READY (or exit: '')
    assert line.strip() == 'READY', f'peer did not start: {log.read_text()}'
    deadline = time.monotonic() + 10.0
    while not fastdds_files() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    return proc, fastdds_files() - before


def is_port(name: str) -> bool:
    return 'port' in name


@pytest.mark.skipif(not SHM_DIR.is_dir(), reason='no /dev/shm on this system')
def test_a_killed_process_segments_are_removed_and_a_living_one_kept(
    tmp_path: Path, ros_domain_id: int
) -> None:
    """Segments (the large files) while others run; its ports only when asked (a process that
    sent to a removed port may crash at its own shutdown), so the living peer stops with 0."""
    alive, alive_files = start_peer(tmp_path / 'alive.log', domain=100 + ros_domain_id)
    killed = None
    try:
        killed, killed_files = start_peer(tmp_path / 'killed.log', domain=101 + ros_domain_id)
        segments = {n for n in killed_files if not is_port(n)}
        own_ports = {n for n in killed_files if is_port(n)}
        assert any(not n.endswith('_el') for n in segments), (
            f'the peer made no shared-memory segment of its own: {sorted(killed_files)}'
        )
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=10.0)
        assert fastdds_files() & killed_files == killed_files, 'SIGKILL leaves them behind'
        assert {p.name for p in stale_files()} >= segments
        assert not {p.name for p in stale_files()} & own_ports, 'ports only when asked'

        removed = {p.name for p in clean_stale()}
        assert segments <= removed, sorted(segments - removed)
        assert not fastdds_files() & segments
        assert own_ports <= fastdds_files(), 'a port was removed without ports=True'
        assert alive_files <= fastdds_files(), 'a living process lost its shared memory'
        assert alive.poll() is None
    finally:
        assert stop_process(alive, (5.0, 3.0, 3.0)) == 0
        if killed is not None and killed.poll() is None:
            killed.kill()
    clean_stale(ports=True)  # nobody is left who talked to the dead one
    assert not fastdds_files() & own_ports
