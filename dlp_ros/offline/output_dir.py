"""Output directories that appear whole or not at all (datasets, latents caches).

A command builds its output in a hidden temporary sibling and calls :func:`publish` at the end;
an existing output is replaced only with ``overwrite``, only when it is of the same kind (it has
the kind's manifest) or empty, and only after the new one is complete.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from dlp_ros.errors import ConfigError


def check_out(out: Path, overwrite: bool, manifest: str, kind: str) -> None:
    """Refuse an existing ``out`` unless ``overwrite`` and it is a ``kind`` (has ``manifest``)
    or an empty directory."""
    if not out.exists() and not out.is_symlink():
        return
    if not overwrite:
        raise ConfigError(f'{out} already exists; pass --overwrite to replace it')
    if not out.is_dir() or out.is_symlink():
        raise ConfigError(f'refusing to replace {out}: not a directory')
    if not (out / manifest).is_file() and any(out.iterdir()):
        raise ConfigError(f'refusing to replace {out}: it is not a {kind} (no {manifest}) and not '
                          'empty')  # fmt: skip


def publish(tmp: Path, out: Path, overwrite: bool, manifest: str, kind: str) -> None:
    """Rename the complete ``tmp`` to ``out``, replacing an existing ``out`` last."""
    check_out(out, overwrite, manifest, kind)  # again: --out may have appeared meanwhile
    if not out.exists():
        os.rename(tmp, out)
        return
    old = out.parent / f'.{out.name}.{os.getpid()}-{time.time_ns()}.old'
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
