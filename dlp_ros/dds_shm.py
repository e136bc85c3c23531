"""Stale Fast DDS shared-memory files: find and remove those of processes that no longer exist.

Fast DDS's shared-memory transport keeps, per participant, a data segment
``/dev/shm/fastrtps_<16 hex>`` and per port ``/dev/shm/fastrtps_port<N>`` (with the semaphore
``sem.fastrtps_port<N>_mutex``); each has a lock file beside it (``..._el`` or ``..._sl``) that
every process using it holds a shared ``flock`` on. A process that exits cleanly removes its
files; one killed with SIGKILL leaves them behind (about ten files, a 549 kB segment among them),
and stale ports were seen to make later ROS runs fail. A lock file that can be locked
exclusively has no living owner, so its files are stale: this is what ``fastdds shm clean``
does, here without needing the fastdds tool on the PATH, and ports only when asked (see
:func:`clean_stale`).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
from pathlib import Path

logger = logging.getLogger(__name__)

SHM_DIR = Path('/dev/shm')
# fastrtps_ (Fast DDS 2.x) or fastdds_ (3.x); a segment has 16 hex digits, a port a number
_LOCK = re.compile(r'^(?P<base>fast(?:rtps|dds)_(?:[0-9a-z]{16}|port\d{1,5}))_(?:el|sl)$')


def _has_owner(lock_file: Path) -> bool:
    """True when a living process holds ``lock_file`` (it cannot be locked exclusively)."""
    try:
        with lock_file.open('ab') as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(handle, fcntl.LOCK_UN)
    except BlockingIOError:
        return True
    except OSError as exc:  # not ours to open (another user's): leave it alone
        logger.debug('cannot check %s: %s', lock_file, exc)
        return True
    return False


def stale_files(shm_dir: Path = SHM_DIR, ports: bool = False) -> list[Path]:
    """The Fast DDS files in ``shm_dir`` whose owners have all exited (lock files included):
    participant segments, and with ``ports`` the listening ports too."""
    try:
        names = sorted(os.listdir(shm_dir))
    except FileNotFoundError:
        return []
    stale: list[Path] = []
    for name in names:
        match = _LOCK.match(name)
        if match is None:
            continue
        base = match['base']
        is_port = '_port' in base
        if (is_port and not ports) or _has_owner(shm_dir / name):
            continue
        stale += [shm_dir / name, shm_dir / base]
        if is_port:
            stale.append(shm_dir / f'sem.{base}_mutex')
    return [path for path in stale if path.exists()]


def clean_stale(shm_dir: Path = SHM_DIR, ports: bool = False) -> list[Path]:
    """Remove the stale Fast DDS files of ``shm_dir``; returns what was removed (logged).

    Participant segments (the large files) are safe to remove at any time. A port is also
    opened, without a lock, by every process that sent to it: removing a dead listener's port
    while such a process still runs was seen to crash that process at its shutdown (SIGSEGV,
    about 1 in 10). So ``ports`` only where no ROS process that may have talked to the dead
    ones is running (before a test session); Fast DDS itself takes over a stale port it needs.
    """
    removed = []
    for path in stale_files(shm_dir, ports):
        try:
            path.unlink()
        except FileNotFoundError:  # removed by another cleaner meanwhile
            continue
        removed.append(path)
    if removed:
        logger.info('removed %d stale Fast DDS shared-memory files from %s', len(removed), shm_dir)
    return removed
