"""A camera frame gives the same model input in training (dataset frames -> batches) and at run
time (DlpRuntime.preprocess): one resize and one uint8 -> float conversion, shared."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dlp_ros.image_codec import resize_rgb, to_model_input
from dlp_ros.runtime import DlpRuntime
from dlp_training import dlp_sources, encode_dataset
from dlp_training.frames import FrameSource


def test_to_model_input_equals_the_torch_conversion_for_every_value() -> None:
    values = np.arange(256, dtype=np.uint8)
    rgb = np.stack(np.meshgrid(values, values[::-1], values[::3], indexing='ij'), -1)
    rgb = rgb.reshape(-1, 16, 16, 3)  # (N, 16, 16, 3) covering all 256 levels per channel
    legacy = torch.from_numpy(rgb).permute(0, 3, 1, 2).float().div_(255.0)
    x = to_model_input(rgb)
    assert x.dtype == np.float32 and x.flags.c_contiguous and x.shape == (len(rgb), 3, 16, 16)
    assert torch.equal(torch.from_numpy(x), legacy)
    assert to_model_input(rgb[0]).shape == (3, 16, 16)


def test_a_frame_gives_the_same_tensor_in_training_and_at_run_time(
    bundles: dict[int, Any],
) -> None:
    rng = np.random.default_rng(0)
    camera = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8),  # shrinks (area)
              rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)]  # grows (bilinear)  # fmt: skip
    rt = DlpRuntime.load(bundles[64].path, providers='cpu', threads=1)
    # training: build-dataset stores resize_rgb(frame, S); FrameSource batches it
    source = FrameSource.__new__(FrameSource)
    source._frames = np.stack([resize_rgb(f, 64) for f in camera])  # (N, S, S, 3) as stored
    source._index = None
    batch = source.gather(np.arange(len(camera)))  # (N, 3, S, S)
    for i, frame in enumerate(camera):
        assert torch.equal(torch.from_numpy(rt.preprocess(frame)[0]), batch[i])
    # the other training readers use the same conversion
    assert encode_dataset.to_model_input is to_model_input
    assert dlp_sources.to_model_input is to_model_input
