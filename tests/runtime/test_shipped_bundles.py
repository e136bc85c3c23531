"""The bundles committed in bundles/ (the node's default model): small, valid, runnable, and
installed by the colcon build."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dlp_ros.model_card import SCHEMA_VERSION, load_model_card
from dlp_ros.runtime import DlpRuntime

ROOT = Path(__file__).resolve().parents[2]
BUNDLES = {'tabletop64': (10, 2), 'balls64': (8, 0)}  # name -> (K, action_dim)
MAX_BYTES = 20 * 1024 * 1024


@pytest.mark.parametrize('name', sorted(BUNDLES))
def test_shipped_bundle_is_small_valid_and_runs(name: str) -> None:
    root = ROOT / 'bundles' / name
    size = sum(p.stat().st_size for p in root.iterdir())
    assert size <= MAX_BYTES, f'{root} is {size / 2**20:.1f} MB, the limit is 20 MB'
    card = load_model_card(root)
    k, a = BUNDLES[name]
    assert card.schema_version == SCHEMA_VERSION
    assert (card.particles.K, card.dynamics.action_dim, card.image.size) == (k, a, 64)
    rt = DlpRuntime.load(root, providers='cpu', threads=1)
    tracker = rt.tracker()
    rng = np.random.default_rng(0)
    for _ in range(card.dynamics.history):  # any camera size goes in
        frame = tracker.update(rt.preprocess(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)))
        assert frame.mu.shape == (k, 2) and np.isfinite(frame.mu).all()
    predicted = rt.predict(tracker.history, 10)
    images = rt.render(predicted)
    assert len(predicted) == 10 and images.shape == (10, 64, 64, 3) and images.dtype == np.uint8


def test_build_installs_the_shipped_bundles() -> None:
    share = ROOT / 'install' / 'dlp_ros' / 'share' / 'dlp_ros' / 'bundles'
    if not share.parent.is_dir():
        pytest.skip('no colcon install (run scripts/setup.sh)')
    for name in BUNDLES:
        for src in (ROOT / 'bundles' / name).iterdir():
            installed = share / name / src.name
            assert installed.read_bytes() == src.read_bytes(), f'{installed}: rebuild'
