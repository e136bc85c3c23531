"""Tiny random-weight bundles (64 px with actions, 128 px without), exported once per session
when a test asks for one (tests/export, tests/runtime)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import yaml

from dlp_ros.model_card import ModelCard

if TYPE_CHECKING:  # torch and training are imported when a bundle is built, not at collection
    from dlp_training.models.dlp import Dlp, DlpConfig
    from dlp_training.models.dynamics import DynamicsConfig, ParticleDynamics

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Bundle:
    path: Path
    card: ModelCard
    dlp: Dlp
    dynamics: ParticleDynamics


def _tiny_configs(size: int, action_dim: int) -> tuple[DlpConfig, DynamicsConfig]:
    """dlp_training/configs/dlp_tiny.yaml and dynamics_tiny.yaml, at 64 or 128 px."""
    from dlp_training.models.dlp import DlpConfig  # noqa: PLC0415
    from dlp_training.models.dynamics import DynamicsConfig  # noqa: PLC0415

    dlp = yaml.safe_load((ROOT / 'dlp_training/configs/dlp_tiny.yaml').read_text())['model']
    dyn = yaml.safe_load((ROOT / 'dlp_training/configs/dynamics_tiny.yaml').read_text())['model']
    if size == 128:  # 16 px patches; one more background stage
        dlp.update(S=128, patch_size=16, bg_encoder_channels=[8, 8, 16, 16, 16],
                   bg_decoder_channels=[16, 8, 8, 8, 8])  # fmt: skip
    cfg = DlpConfig.from_dict(dlp)
    return cfg, DynamicsConfig.from_dlp(cfg, **{**dyn, 'action_dim': action_dim})


def _blob_frames(size: int, t_len: int = 8, seed: int = 0) -> np.ndarray:
    """(T, S, S, 3) uint8: three coloured discs moving in straight lines on a dark background."""
    rng = np.random.default_rng(seed)
    start = rng.uniform(0.2, 0.8, (3, 2)) * size
    vel = rng.uniform(-1.0, 1.0, (3, 2)) * size / 40
    colours = rng.uniform(80, 255, (3, 3))
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    frames = np.full((t_len, size, size, 3), 20.0)
    for t in range(t_len):
        for c, col in zip(start + t * vel, colours, strict=True):
            frames[t][(xx - c[0]) ** 2 + (yy - c[1]) ** 2 <= (size / 10) ** 2] = col
    return frames.round().astype(np.uint8)


@pytest.fixture(scope='session')
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Bundle]:
    """{64: bundle with 2 actions, 128: bundle without actions}."""
    torch = pytest.importorskip('torch')
    from dlp_training.export import export_random_bundle  # noqa: PLC0415

    torch.set_num_threads(1)
    out = {}
    for size, actions in ((64, 2), (128, 0)):
        path = tmp_path_factory.mktemp(f'bundle{size}') / 'bundle'
        card, dlp, dyn = export_random_bundle(*_tiny_configs(size, actions), path, seed=size)
        out[size] = Bundle(path, card, dlp, dyn)
    return out


@pytest.fixture(scope='session')
def tiny_configs() -> Callable[[int, int], tuple[DlpConfig, DynamicsConfig]]:
    """(size, action_dim) -> the tiny DLP and dynamics configs of the bundles."""
    return _tiny_configs


@pytest.fixture(scope='session')
def blob_frames() -> Callable[..., np.ndarray]:
    """(size, t_len=8, seed=0) -> (T, S, S, 3) uint8 frames of three moving discs."""
    return _blob_frames
