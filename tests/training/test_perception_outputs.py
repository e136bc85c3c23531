"""The output writers shared by dlp-replay and the demo (no model needed)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from dlp_ros.image_quality import PSNR_CAP_DB
from dlp_ros.offline import perception_outputs as po


def test_psnr() -> None:
    a = np.zeros((4, 4, 3), np.uint8)
    assert po.psnr(a, a) == PSNR_CAP_DB
    b = a.copy()
    b[0, 0, 0] = 255  # MSE = 255^2 / 48
    assert po.psnr(a, b) == pytest.approx(10 * np.log10(48))


def test_true_frames_match_stamps_within_half_a_period() -> None:
    frames = [np.full((8, 12, 3), i, np.uint8) for i in range(4)]
    truth = po.TrueFrames([100, 200, 300, 400], frames, size=6)
    assert truth.period_ns == 100
    assert truth.index(300) == 2 and truth.index(349) == 2 and truth.index(251) == 2
    assert truth.index(450) is None and truth.index(49) is None
    at = truth.at(199)
    assert at is not None and at.shape == (6, 6, 3) and at[0, 0, 0] == 1


def test_video_falls_back_to_gif_without_an_mp4_encoder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frames = [np.full((16, 16, 3), 40 * i, np.uint8) for i in range(4)]
    video = po.VideoOut(tmp_path / 'mp4', fps=10)
    for f in frames:
        video.write(f)
    path = video.close()
    assert path == tmp_path / 'mp4.mp4' and path.stat().st_size > 0

    class NoEncoder:
        def __init__(self, *args: object) -> None:
            pass

        def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
            return False

        def release(self) -> None:
            pass

    monkeypatch.setattr(po.cv2, 'VideoWriter', NoEncoder)
    video = po.VideoOut(tmp_path / 'gif', fps=10)
    for f in frames:
        video.write(f)
    path = video.close()
    assert path == tmp_path / 'gif.gif'
    ok, read = cv2.imreadmulti(str(path))
    assert ok and len(read) == 4


def test_prediction_strip_layout_and_drawing() -> None:
    s, horizon = 8, 3
    observed = np.zeros((s, s, 3), np.uint8)
    truth = [np.full((s, s, 3), 50, np.uint8), None, np.full((s, s, 3), 90, np.uint8)]
    predicted = np.full((horizon, s, s, 3), 70, np.uint8)
    strip = po.prediction_strip(observed, truth, predicted, [20.0, None, 18.5], dt=0.1, cell=32)
    assert strip.shape == (2 * (32 + 18), (horizon + 1) * 32 + horizon * 2, 3)
    parts = po.DrawnParticles(
        ids=np.array([0, 1]), uv=np.array([[4.0, 4.0], [1.0, 1.0]]),
        std=np.array([[1.0, 1.0], [1.0, 1.0]]), presence=np.array([0.9, 0.1]),
    )  # fmt: skip
    drawn = po.draw_particles(np.zeros((16, 16, 3), np.uint8), parts, min_side=64)
    assert drawn.shape == (64, 64, 3)
    assert drawn[16, 16].any()  # particle 0 (on) at (4, 4) * zoom 4
    assert not drawn[4, 4].any()  # particle 1 is off: not drawn
