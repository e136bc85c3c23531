"""Fixtures for training tests: real rosbag2 camera episodes written with BagWriter."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from dlp_ros.image_codec import COMPRESSED_FORMATS
from dlp_ros.offline.bag_writer import BagWriter
from dlp_ros.sim.scene import ObjectState
from dlp_training.checkpoint import load_checkpoint
from dlp_training.data.ground_truth import gt_path, write_ground_truth

CAMERA = '/camera/image'
NS = 1_000_000_000


def smooth_frame(i: int, height: int, width: int) -> np.ndarray:
    """A smooth (H, W, 3) uint8 RGB frame, different for every index (kind to jpeg)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    r = 128 + 100 * np.sin(2 * np.pi * (x / width + i / 17))
    g = 128 + 100 * np.cos(2 * np.pi * (y / height + i / 23))
    b = np.full_like(x, 30 + (37 * i) % 200)
    return np.stack([r, g, b], axis=-1).round().astype(np.uint8)


def camera_bytes(rgb: np.ndarray, encoding: str) -> tuple[bytes, int]:
    """(H, W, 3) uint8 RGB -> (pixel bytes, step) as a camera driver sends them in the 4:2:2,
    Bayer and 16-bit encodings (4:2:2 by OpenCV, Bayer by keeping each filter's channel)."""
    height, width = rgb.shape[:2]
    if encoding in ('yuv422', 'uyvy', 'yuv422_yuy2', 'yuyv'):
        order = (
            cv2.COLOR_RGB2YUV_UYVY if encoding in ('yuv422', 'uyvy') else cv2.COLOR_RGB2YUV_YUY2
        )
        return cv2.cvtColor(rgb, order).tobytes(), 2 * width
    if encoding.startswith('bayer_'):
        mosaic = np.empty((height, width), np.uint8)
        for i, colour in enumerate(encoding[6:10]):
            dy, dx = divmod(i, 2)
            mosaic[dy::2, dx::2] = rgb[dy::2, dx::2, 'rgb'.index(colour)]
        return mosaic.tobytes(), width
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype('<u2') * 257  # mono16, 16UC1
    return grey.tobytes(), 2 * width


CAMERA_ENCODINGS = ('yuv422', 'uyvy', 'yuv422_yuy2', 'yuyv', 'bayer_rggb8', 'bayer_bggr8',
                    'bayer_gbrg8', 'bayer_grbg8', 'mono16', '16UC1')  # fmt: skip


def objects_at(i: int) -> list[ObjectState]:
    """Ground truth of frame ``i``: two objects that move with the index."""
    return [
        ObjectState(0, 'red', float(i), float(2 * i), 3.0, i % 2 == 0),
        ObjectState(1, 'blue', 30.0 - i, 5.0, 4.0, True),
    ]


@dataclass
class CameraBag:
    """A generated bag and what was written into it."""

    path: Path
    frames: list[np.ndarray] = field(default_factory=list)  # source (H, W, 3) RGB per message
    stamps_ns: list[int] = field(default_factory=list)  # header stamp per message
    objects: list[list[ObjectState]] = field(default_factory=list)  # ground truth per message


MakeBag = Callable[..., CameraBag]


@pytest.fixture
def make_camera_bag(tmp_path: Path) -> MakeBag:
    """Factory writing a camera bag under tmp_path/bags.

    Args of the factory: name, storage ('mcap' | 'sqlite3'), encoding (a raw encoding, 'jpeg',
    'png', or any other string for an Image with that encoding), n frames at fps (or explicit
    ``stamps_ns``), size (H, W), gt (write ground truth beside the bag), corrupt (indices whose
    pixel data is garbage), topics/extra (more topics and a callback writing their messages).
    """

    def make(
        name: str = 'ep',
        storage: str = 'mcap',
        encoding: str = 'rgb8',
        n: int = 12,
        fps: float = 10.0,
        size: tuple[int, int] = (32, 32),
        stamps_ns: list[int] | None = None,
        gt: bool = False,
        corrupt: tuple[int, ...] = (),
        topics: dict[str, str] | None = None,
        extra: Callable[[BagWriter], None] | None = None,
    ) -> CameraBag:
        path = tmp_path / 'bags' / name
        stamps = (
            stamps_ns if stamps_ns is not None else [NS + round(k * NS / fps) for k in range(n)]
        )
        compressed = encoding in COMPRESSED_FORMATS
        msgtype = 'sensor_msgs/msg/CompressedImage' if compressed else 'sensor_msgs/msg/Image'
        bag = CameraBag(path)
        latest = -1
        with BagWriter(path, storage, {CAMERA: msgtype, **(topics or {})}) as w:
            for k, stamp in enumerate(stamps):
                latest = max(latest, stamp)
                rgb = smooth_frame(k, *size)
                if compressed:
                    msg = w.compressed_image(stamp, 'cam', rgb, encoding)
                    if k in corrupt:
                        msg.data = np.frombuffer(b'not an image at all', dtype=np.uint8)
                elif encoding in ('rgb8', 'bgr8', 'mono8', 'rgba8', 'bgra8'):
                    msg = w.image(stamp, 'cam', rgb, encoding)
                    if k in corrupt:
                        msg.data = msg.data[:10]
                else:  # CAMERA_ENCODINGS, or one the builder does not support
                    msg = w.image(stamp, 'cam', rgb, 'rgb8')
                    msg.encoding = encoding
                    if encoding in CAMERA_ENCODINGS:
                        data, msg.step = camera_bytes(rgb, encoding)
                        msg.data = np.frombuffer(data, np.uint8)
                # bag (receive) time: 1 us after the latest header stamp, so it always increases
                w.write(CAMERA, latest + 1000, msg)
                bag.frames.append(rgb)
                bag.stamps_ns.append(stamp)
                bag.objects.append(objects_at(k))
            if extra is not None:
                extra(w)
        if gt:
            write_ground_truth(gt_path(path), list(zip(stamps, bag.objects, strict=True)))
        return bag

    return make


# Checks of the shared training loop (dlp_training.loop) that test_train_dlp and
# test_train_dynamics run on their own model: ``run(out, extra_args)`` trains a tiny run into
# ``out``.
Run = Callable[[Path, list[str]], None]


@pytest.fixture
def check_window_means(tmp_path: Path) -> Callable[[Run], None]:
    return lambda run: _window_means(run, tmp_path)


@pytest.fixture
def check_time_limit_validates(tmp_path: Path) -> Callable[[Run], None]:
    return lambda run: _time_limit_validates(run, tmp_path)


def _read_metrics(out: Path, split: str) -> list[dict[str, Any]]:
    lines = [json.loads(x) for x in (out / 'metrics.jsonl').read_text().splitlines()]
    return [x for x in lines if x['split'] == split]


def _window_means(run: Run, tmp_path: Path) -> None:
    """Train records hold grad_norm and the means over their log window; log_every changes
    nothing but the log."""
    common = ['--set', 'train.max_steps=6', '--set', 'train.eval_every=1000']
    each, pairs = tmp_path / 'each', tmp_path / 'pairs'
    run(each, [*common, '--set', 'train.log_every=1'])
    run(pairs, [*common, '--set', 'train.log_every=2'])
    steps, windows = _read_metrics(each, 'train'), _read_metrics(pairs, 'train')
    assert [x['step'] for x in steps] == [1, 2, 3, 4, 5, 6]
    assert all(x['grad_norm'] > 0 and math.isfinite(x['grad_norm']) for x in steps)
    assert [x['step'] for x in windows] == [2, 4, 6]
    for window in windows:
        first, last = steps[window['step'] - 2], steps[window['step'] - 1]
        assert set(window) == set(last), 'the keys of a record are those of its last step'
        for key in ('loss', 'grad_norm'):
            assert window[key] == pytest.approx((first[key] + last[key]) / 2, rel=1e-12)
        assert window['loss'] != last['loss'], 'the mean of the window, not its last step'
    a = load_checkpoint(each / 'checkpoints' / 'last.pt')['model']
    b = load_checkpoint(pairs / 'checkpoints' / 'last.pt')['model']
    assert all(torch.equal(a[k], b[k]) for k in a)


def _time_limit_validates(run: Run, tmp_path: Path) -> None:
    """A time-limit stop (before max_steps and any eval_every) still validates and saves."""
    out, far = tmp_path / 'timed', 100_000
    run(out, ['--set', f'train.max_steps={far}', '--set', f'train.eval_every={far}',
              '--set', 'train.time_limit_min=0.005'])  # fmt: skip
    step = load_checkpoint(out / 'checkpoints' / 'last.pt')['step']
    assert 0 < step < far
    assert [x['step'] for x in _read_metrics(out, 'val')] == [step]
    assert load_checkpoint(out / 'checkpoints' / 'best.pt')['step'] == step
