"""PerceptionPipeline: the per-frame work shared by the node and dlp-replay (reset rules, tracked
particles, action history, snapshot and prediction), without ROS."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from dlp_ros.errors import ImageError
from dlp_ros.particles import ParticleFrame
from dlp_ros.pipeline import (
    SIZE_CHANGED,
    TIME_WENT_BACK,
    ActionHistory,
    PerceptionPipeline,
    reset_reason,
)
from dlp_ros.runtime import DlpRuntime

NS = 1_000_000_000
H = 2  # history of the tiny dynamics (dlp_training/configs/dynamics_tiny.yaml)


@pytest.fixture(scope='module')
def rt64(bundles: dict[int, Any]) -> DlpRuntime:
    """The 64 px tiny bundle; its dynamics take 2 actions."""
    return DlpRuntime.load(bundles[64].path, providers='cpu', threads=1)


@pytest.fixture(scope='module')
def frames(blob_frames: Callable[..., np.ndarray]) -> np.ndarray:
    """(8, 64, 64, 3) uint8 frames of three moving discs."""
    return blob_frames(64)


def wide(frame: np.ndarray) -> np.ndarray:
    """The frame at another size (64 x 96): another camera mode."""
    return np.ascontiguousarray(np.concatenate([frame, frame[:, :32]], axis=1))


def tracked(rt: DlpRuntime, frames: list[np.ndarray]) -> list[ParticleFrame]:
    """Particles of a fresh tracker over ``frames``."""
    tracker = rt.tracker()
    return [tracker.update(rt.preprocess(f)) for f in frames]


def assert_same(a: ParticleFrame, b: ParticleFrame) -> None:
    for name, values in a.arrays().items():
        np.testing.assert_array_equal(values, b.arrays()[name], err_msg=name)


# ----------------------------------------------------------------------------- reset_reason


@pytest.mark.parametrize(
    ('last_size', 'last_stamp', 'size', 'stamp', 'want'),
    [
        (None, 0, (64, 48), 5, None),  # the first frame
        ((64, 48), 5, (64, 48), 5, None),  # the same stamp again
        ((64, 48), 5, (64, 48), 6, None),
        ((64, 48), 5, (80, 60), 6, SIZE_CHANGED),
        ((64, 48), 5, (48, 64), 6, SIZE_CHANGED),  # width and height swapped
        ((64, 48), 5, (64, 48), 4, TIME_WENT_BACK),
        ((64, 48), 5, (80, 60), 4, SIZE_CHANGED),  # both: the size is named
    ],
)
def test_reset_reason(
    last_size: tuple[int, int] | None,
    last_stamp: int,
    size: tuple[int, int],
    stamp: int,
    want: str | None,
) -> None:
    assert reset_reason(last_size, last_stamp, size, stamp) == want


# ----------------------------------------------------------------------------- step


def test_steps_are_the_trackers_particles(rt64: DlpRuntime, frames: np.ndarray) -> None:
    pipeline = PerceptionPipeline(rt64)
    seen = [pipeline.step(f, NS + i * NS // 10) for i, f in enumerate(frames)]
    for got, want in zip(seen, tracked(rt64, list(frames)), strict=True):
        assert_same(got.frame, want)
        assert got.reset is None and got.size == (64, 64)
        assert got.preprocess_ms > 0 and got.encode_ms > 0
    assert seen[0].frame.reseeded.all()
    np.testing.assert_array_equal(seen[-1].x, rt64.preprocess(frames[-1]))


def test_nms_iou_publishes_overlapping_on_particles_as_off(
    rt64: DlpRuntime, frames: np.ndarray
) -> None:
    """The pipeline's duplicate filter marks ``suppressed`` (the message's ``on``), as
    :class:`~dlp_ros.duplicates.DuplicateFilter` over the tracked frames; the particles and
    the predictions are the tracker's own; the prediction keeps the frame's suppression."""
    from dlp_ros.duplicates import DuplicateFilter, box_iou, particle_boxes

    plain, nms = PerceptionPipeline(rt64), PerceptionPipeline(rt64, nms_iou=0.0)
    dedup = DuplicateFilter(0.0, rt64.card.tracking.on_threshold)
    suppressed = 0
    for i, f in enumerate(frames[:4]):
        a, b = plain.step(f, NS + i * NS // 10), nms.step(f, NS + i * NS // 10)
        assert_same(a.frame, b.frame)
        assert not a.frame.suppressed.any()
        centre, half = particle_boxes(a.frame.mu, a.frame.scale, 64)
        want = dedup(centre, half, a.frame.transparency, a.frame.reseeded)
        np.testing.assert_array_equal(b.frame.suppressed, want)
        on = [p['on'] for p in b.frame.message_fields(64, 64)['particles']]
        assert sum(on) == np.count_nonzero(b.frame.transparency[:, 0] > 0.5) - want.sum()
        kept = np.flatnonzero(on)
        iou = box_iou(centre[kept], half[kept])
        assert (iou[~np.eye(len(kept), dtype=bool)] == 0).all(), 'kept boxes overlap'
        suppressed += int(want.sum())
    assert suppressed > 0, 'the test needs overlapping particles'
    snap = nms.snapshot(3)
    assert snap is not None
    steps = nms.predict(snap).steps
    assert all((s.suppressed == snap.history[-1].suppressed).all() for s in steps)


def test_a_size_change_restarts_the_tracker(
    rt64: DlpRuntime, frames: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    pipeline = PerceptionPipeline(rt64)
    for i in range(3):
        pipeline.step(frames[i], NS + i)
    with caplog.at_level(logging.INFO, logger='dlp_ros'):
        seen = [pipeline.step(wide(frames[i]), NS + i) for i in (3, 4)]
    assert [s.reset for s in seen] == [SIZE_CHANGED, None]
    assert seen[0].size == (96, 64)
    fresh = tracked(rt64, [wide(frames[3]), wide(frames[4])])
    for got, want in zip(seen, fresh, strict=True):
        assert_same(got.frame, want)
    assert 'frame size changed: tracking starts new particle identities' in caplog.text
    snap = pipeline.snapshot(3)
    assert snap is not None and len(snap.history) == H and snap.size == (96, 64)


def test_time_going_back_restarts_the_tracker(rt64: DlpRuntime, frames: np.ndarray) -> None:
    pipeline = PerceptionPipeline(rt64)
    for i in range(4):
        pipeline.step(frames[i], NS + i * NS // 10)
    back = pipeline.step(frames[4], NS + NS // 20)  # between frames 0 and 1
    assert back.reset == TIME_WENT_BACK
    assert_same(back.frame, tracked(rt64, [frames[4]])[0])
    assert back.frame.reseeded.all()
    snap = pipeline.snapshot(2)
    assert snap is not None and len(snap.history) == 1 and snap.stamp == NS + NS // 20
    same = pipeline.step(frames[5], NS + NS // 20)  # the same stamp again: no reset
    assert same.reset is None


def test_a_bad_frame_changes_nothing(rt64: DlpRuntime, frames: np.ndarray) -> None:
    pipeline = PerceptionPipeline(rt64)
    pipeline.step(frames[0], NS, header='first')
    with pytest.raises(ImageError):
        pipeline.step(np.zeros((0, 4, 3), np.uint8), 0, header='bad')
    with pytest.raises(ImageError):
        pipeline.step(frames[1].astype(np.float32), NS + 1, header='bad')
    snap = pipeline.snapshot(2)
    assert snap is not None and snap.header == 'first' and snap.stamp == NS
    assert pipeline.step(frames[1], NS + 1).reset is None


def test_reset_forgets_the_stream(rt64: DlpRuntime, frames: np.ndarray) -> None:
    pipeline = PerceptionPipeline(rt64)
    assert pipeline.snapshot(2) is None
    pipeline.step(frames[0], 2 * NS)
    pipeline.reset()
    assert pipeline.snapshot(2) is None
    seen = pipeline.step(frames[1], NS)  # earlier than before the reset: a fresh start
    assert seen.reset is None
    assert_same(seen.frame, tracked(rt64, [frames[1]])[0])


# ----------------------------------------------------------------------------- actions


def test_action_history_feeds_the_snapshot_and_restarts_with_the_tracker(
    rt64: DlpRuntime, frames: np.ndarray
) -> None:
    pipeline = PerceptionPipeline(rt64)
    a = [np.array([i, -i], np.float32) for i in range(1, 6)]
    pipeline.step(frames[0], NS, a[0])
    snap = pipeline.snapshot(3)
    assert snap is not None and snap.actions is not None
    np.testing.assert_array_equal(snap.actions, [a[0]] * (H + 3 - 1))  # padded, then held
    pipeline.step(frames[1], NS + 1, a[1])
    pipeline.step(frames[2], NS + 2, None)  # no command yet: zeros
    snap = pipeline.snapshot(2)
    assert snap is not None
    np.testing.assert_array_equal(snap.actions, [a[1], [0, 0], [0, 0]])
    pipeline.step(frames[3], NS, a[3])  # time went back: the earlier commands are forgotten
    snap = pipeline.snapshot(2)
    assert snap is not None
    np.testing.assert_array_equal(snap.actions, [a[3]] * (H + 2 - 1))


def test_action_history_rollout_rows() -> None:
    history = ActionHistory(history=3, action_dim=2)
    np.testing.assert_array_equal(history.rollout_actions(2, 0), np.zeros((4, 2)))
    history.observe(np.array([1, 2]))
    history.observe(np.array([3, 4]))
    np.testing.assert_array_equal(history.rollout_actions(2, 2), [[1, 2], [1, 2], [3, 4], [3, 4]])
    history.reset()
    np.testing.assert_array_equal(history.rollout_actions(1, 1), np.zeros((3, 2)))


# ----------------------------------------------------------------------------- prediction


def test_predict_is_the_runtimes_rollout(rt64: DlpRuntime, frames: np.ndarray) -> None:
    pipeline = PerceptionPipeline(rt64)
    command = np.array([0.5, -0.25], np.float32)
    for i in range(3):
        pipeline.step(frames[i], NS + i, command)
    snap = pipeline.snapshot(4)
    assert snap is not None
    forecast = pipeline.predict(snap, frames=True)
    want = rt64.predict(tracked(rt64, list(frames[:3]))[-H:], 4, np.tile(command, (H + 3, 1)))
    assert len(forecast.steps) == 4 and forecast.dt == pytest.approx(rt64.card.dynamics.dt)
    for got, expected in zip(forecast.steps, want, strict=True):
        assert_same(got, expected)
    assert forecast.images is not None and forecast.images.shape == (4, 64, 64, 3)
    drawn = rt64.render_prediction(rt64.preprocess(frames[2]), snap.history[-1], forecast.steps)
    np.testing.assert_array_equal(forecast.images, drawn)  # the card's compositing form
    zeros = np.zeros((H + 3, 2), np.float32)
    other = pipeline.predict(snap, actions=zeros)
    assert other.images is None
    assert not np.array_equal(other.steps[-1].mu, forecast.steps[-1].mu), 'actions ignored'


def test_predict_batch_keeps_the_streams_history_commands(
    rt64: DlpRuntime, frames: np.ndarray
) -> None:
    """Candidates replace the commands from the last observed frame on; the history frames
    keep the stream's; no actions = predict's rollout."""
    pipeline = PerceptionPipeline(rt64)
    commands = [np.array([0.1 * i, -0.2 * i], np.float32) for i in range(1, 4)]
    for i, command in enumerate(commands):
        pipeline.step(frames[i], NS + i, command)
    snap = pipeline.snapshot(4)
    assert snap is not None and snap.actions is not None
    candidates = np.stack([np.full((4, 2), v, np.float32) for v in (-1.0, 0.0, 1.0)])
    batch = pipeline.predict_batch(snap, candidates)
    assert (batch.candidates, batch.horizon) == (3, 4)
    assert batch.dt == pytest.approx(rt64.card.dynamics.dt) and batch.predict_ms > 0
    for b in range(3):
        own = np.concatenate([commands[-H:][:-1], candidates[b]])  # (H + 3, 2)
        single = pipeline.predict(snap, actions=own)
        got = np.stack([s.mu for s in single.steps])
        np.testing.assert_allclose(batch.fields['mu'][b], got, rtol=1e-5, atol=1e-5)
    default = pipeline.predict_batch(snap, None)
    want = np.stack([s.mu for s in pipeline.predict(snap).steps])
    np.testing.assert_array_equal(default.fields['mu'][0], want)


def test_snapshot_while_stepping_is_consistent(rt64: DlpRuntime, frames: np.ndarray) -> None:
    """A prediction thread's snapshots never see a half-updated stream."""
    pipeline = PerceptionPipeline(rt64)
    pipeline.step(frames[0], NS, np.ones(2, np.float32))
    stop, bad = threading.Event(), []

    def watch() -> None:
        while not stop.is_set():
            snap = pipeline.snapshot(2)
            if snap is None or snap.actions is None or snap.actions.shape != (H + 1, 2):
                bad.append(snap)

    thread = threading.Thread(target=watch)
    thread.start()
    try:
        for i in range(1, 8):
            stamp = NS + (i if i != 4 else -1)  # frame 4 goes back in time
            pipeline.step(frames[i], stamp, np.full(2, i, np.float32))
    finally:
        stop.set()
        thread.join()
    assert bad == []
