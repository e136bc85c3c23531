"""The perception pipeline: the per-frame work of the node, of ``dlp-replay`` and of the tools.

One :class:`PerceptionPipeline` per camera stream, on a loaded
:class:`~dlp_ros.runtime.DlpRuntime`:

```python
pipeline = PerceptionPipeline(rt)
seen = pipeline.step(rgb, stamp_ns, action)  # Observation: tracked particles of the frame
snap = pipeline.snapshot(horizon=10)        # what a prediction needs (any thread)
forecast = pipeline.predict(snap, frames=True)  # Forecast: predicted particles and frames
futures = pipeline.predict_batch(snap, actions)  # BatchForecast: (B, N, K, ...) per field
```

Per frame (:meth:`PerceptionPipeline.step`): preprocess the decoded (H, W, 3) RGB frame; start
new particle identities when the stream restarts (:func:`reset_reason`: the frame size changed
or time went back); the tracked encoding (:meth:`~dlp_ros.runtime.Tracker.update`); record the
command in force at the frame in the :class:`ActionHistory` (models that take actions). Decoding
the camera message and building output messages stay with the caller (ROS messages in the node,
rosbags messages in the replay). No torch, no rclpy.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlp_ros.duplicates import DuplicateFilter, particle_boxes
from dlp_ros.errors import ConfigError
from dlp_ros.particles import ParticleFrame
from dlp_ros.runtime import DlpRuntime, Tracker

logger = logging.getLogger(__name__)
SIZE_CHANGED = 'frame size changed'
TIME_WENT_BACK = 'time went back'


def reset_reason(
    last_size: tuple[int, int] | None, last_stamp: int, size: tuple[int, int], stamp: int
) -> str | None:
    """Why the tracker starts new identities at a frame, or None to keep tracking.

    Args:
        last_size: (width, height) of the previous frame of the stream; None: no previous frame
            (the first frame starts new identities anyway).
        last_stamp: its stamp [ns].
        size: (width, height) of this frame.
        stamp: its stamp [ns].

    Returns:
        :data:`SIZE_CHANGED` (another camera or mode), :data:`TIME_WENT_BACK` (a bag played
        again, a simulation reset), or None.
    """
    if last_size is None:
        return None
    if tuple(size) != tuple(last_size):
        return SIZE_CHANGED
    if stamp < last_stamp:
        return TIME_WENT_BACK
    return None


class ActionHistory:
    """Actions of the frames in the tracker's history, for models with ``action_dim`` A > 0.

    ``observe(action)`` is called once per processed frame with the command in force then (the
    latest received); :meth:`rollout_actions` builds the (H + horizon - 1, A) array that
    DlpRuntime.predict takes: the history's actions (padded at the front like the frames, by
    repeating the first) and then the latest command held over the horizon.
    """

    def __init__(self, history: int, action_dim: int) -> None:
        self.history = history
        self.action_dim = action_dim
        self._frames: deque[np.ndarray] = deque(maxlen=history)

    def observe(self, action: np.ndarray | None) -> None:
        """Record the action (A,) in force at the frame just processed (None = zeros)."""
        if action is None:
            action = np.zeros(self.action_dim, dtype=np.float32)
        self._frames.append(np.asarray(action, dtype=np.float32).reshape(self.action_dim))

    def reset(self) -> None:
        self._frames.clear()

    def rollout_actions(self, horizon: int, n_frames: int) -> np.ndarray:
        """(H + horizon - 1, A) float32 for a history of ``n_frames`` (<= H) frames."""
        h, a = self.history, self.action_dim
        known = list(self._frames)[-n_frames:] if n_frames > 0 else []
        if not known:
            known = [np.zeros(a, dtype=np.float32)]
        rows = [known[0]] * (h - len(known)) + known
        rows += [known[-1]] * (horizon - 1)
        return np.stack(rows).astype(np.float32)  # (H + horizon - 1, A)


def actions_from_request(
    flat: np.ndarray, horizon: int, history: int, action_dim: int
) -> np.ndarray | None:
    """A ~/predict request's flattened actions -> (H + horizon - 1, A) float32 (None when the
    model takes no actions and the request has none).

    Raises:
        ConfigError: the length is not (horizon + H - 1) * A.
    """
    rows = horizon + history - 1
    flat = np.asarray(flat, dtype=np.float32).reshape(-1)
    if action_dim == 0:
        if flat.size:
            raise ConfigError(f'the model takes no actions, the request has {flat.size} values')
        return None
    if flat.size != rows * action_dim:
        raise ConfigError(
            f'actions must hold (horizon + H - 1) x A = ({horizon} + {history} - 1) x '
            f'{action_dim} = {rows * action_dim} values, got {flat.size}'
        )
    return flat.reshape(rows, action_dim)


MAX_CANDIDATES = 256  # candidates of one batched request (~/predict_batch)


def batch_actions_from_request(
    flat: np.ndarray, candidates: int, horizon: int, action_dim: int
) -> np.ndarray:
    """A ~/predict_batch request's flattened actions -> (B, N, A) float32 ((B, N, 0) for a model
    without actions).

    Raises:
        ConfigError: candidates outside 1..MAX_CANDIDATES, a length other than B x N x A,
            actions for a model that takes none, or non-finite values.
    """
    if not 1 <= candidates <= MAX_CANDIDATES:
        raise ConfigError(f'candidates must be 1..{MAX_CANDIDATES}, got {candidates}')
    flat = np.asarray(flat, dtype=np.float32).reshape(-1)
    if action_dim == 0:
        if flat.size:
            raise ConfigError(f'the model takes no actions (model card dynamics.action_dim = 0), '
                              f'the request has {flat.size} values')  # fmt: skip
        return np.zeros((candidates, horizon, 0), np.float32)
    want = candidates * horizon * action_dim
    if flat.size != want:
        raise ConfigError(
            f'actions must hold candidates x horizon x A = {candidates} x {horizon} x '
            f'{action_dim} = {want} values, got {flat.size}'
        )
    if not np.all(np.isfinite(flat)):
        raise ConfigError('actions must be finite')
    return flat.reshape(candidates, horizon, action_dim)


@dataclass(frozen=True)
class Observation:
    """What :meth:`PerceptionPipeline.step` made of one camera frame."""

    frame: ParticleFrame  # the tracked particles (K slots, index = identity)
    x: np.ndarray  # (1, 3, S, S) float32 model input
    size: tuple[int, int]  # (width, height) of the input frame
    stamp: int  # [ns]
    reset: str | None  # why the tracker started new identities at this frame (None: it did not)
    preprocess_ms: float
    encode_ms: float


@dataclass(frozen=True)
class Snapshot:
    """The latest processed frame and what a prediction from it needs."""

    header: Any  # the caller's tag of the frame (the node's std_msgs/Header; the replay's)
    size: tuple[int, int]  # (width, height) of the input frame
    stamp: int  # [ns]
    history: list[ParticleFrame]  # the tracker's last <= H frames, oldest first
    horizon: int
    actions: np.ndarray | None  # (H + horizon - 1, A) float32; None: the model takes none
    x: np.ndarray | None = (
        None  # (1, 3, S, S) the frame's model input (predicted frames start there)
    )


@dataclass(frozen=True)
class Forecast:
    """A rollout of :meth:`PerceptionPipeline.predict`."""

    steps: list[ParticleFrame]  # ``horizon`` predicted frames, step k at stamp + k * dt
    images: np.ndarray | None  # (horizon, S, S, 3) uint8 RGB decoded steps; None: not asked
    dt: float  # [s] between steps
    predict_ms: float  # rollout and rendering


@dataclass(frozen=True)
class BatchForecast:
    """B candidate futures of :meth:`PerceptionPipeline.predict_batch`."""

    fields: dict[str, np.ndarray]  # the seven particle fields, each (B, N, K, ...); step n + 1
    dt: float  # [s] between steps
    predict_ms: float  # the batched rollout

    @property
    def candidates(self) -> int:
        """B."""
        return int(self.fields['mu'].shape[0])

    @property
    def horizon(self) -> int:
        """N."""
        return int(self.fields['mu'].shape[1])


class PerceptionPipeline:
    """Tracker, reset rules and action history of one camera stream.

    :meth:`step` and :meth:`reset` are called from one thread at a time (the node's frame
    thread); :meth:`snapshot` from any thread (it takes a lock and copies). The runtime's
    sessions may be shared: :meth:`predict` may run beside :meth:`step`.
    """

    def __init__(self, rt: DlpRuntime, nms_iou: float = 1.0) -> None:
        """``nms_iou``: an on particle whose glimpse box overlaps that of one that stays on by
        more than this IoU is published as off (:class:`~dlp_ros.duplicates.DuplicateFilter`,
        sticky); 1: every on particle is published on."""
        self.rt = rt
        dyn = rt.card.dynamics
        self.tracker: Tracker = rt.tracker()
        self._dedup = DuplicateFilter(nms_iou, rt.card.tracking.on_threshold)
        self._actions = ActionHistory(dyn.history, dyn.action_dim) if dyn.action_dim else None
        self._lock = threading.Lock()
        self._header: Any = None
        self._size: tuple[int, int] | None = None  # None: no frame since the last reset
        self._stamp = 0
        self._history: list[ParticleFrame] = []
        self._x: np.ndarray | None = None  # (1, 3, S, S) the latest frame's model input

    def reset(self) -> None:
        """Forget the stream: the next frame starts new identities (a new subscription)."""
        self.tracker.reset()
        self._dedup.reset()
        with self._lock:
            if self._actions is not None:
                self._actions.reset()
            self._header, self._size, self._stamp, self._history = None, None, 0, []
            self._x = None

    def step(
        self, rgb: np.ndarray, stamp: int, action: np.ndarray | None = None, header: Any = None
    ) -> Observation:
        """Track one decoded camera frame.

        Args:
            rgb: (H, W, 3) uint8 RGB frame, any size.
            stamp: its capture time [ns] (the message header's stamp).
            action: (A,) the command in force when the frame arrived (None: zeros); ignored for
                a model without actions.
            header: carried into :meth:`snapshot` (the node: the frame's std_msgs/Header).

        Raises:
            ImageError: not an (H, W, 3) uint8 frame (nothing changes then).
        """
        t0 = time.perf_counter()
        x = self.rt.preprocess(rgb)  # (1, 3, S, S)
        t1 = time.perf_counter()
        height, width = rgb.shape[:2]
        why = reset_reason(self._size, self._stamp, (width, height), stamp)
        if why is not None:
            logger.info('%s: tracking starts new particle identities', why)
            self.tracker.reset()
            self._dedup.reset()
        frame = self.tracker.update(x)
        centre, half = particle_boxes(frame.mu, frame.scale, self.rt.card.image.size)
        frame.suppressed = self._dedup(centre, half, frame.transparency, frame.reseeded)
        t2 = time.perf_counter()
        with self._lock:
            self._header, self._size, self._stamp = header, (width, height), stamp
            self._history = self.tracker.history
            self._x = x
            if self._actions is not None:
                if why is not None:
                    self._actions.reset()
                self._actions.observe(action)
        return Observation(frame, x, (width, height), stamp, why, (t1 - t0) * 1e3, (t2 - t1) * 1e3)

    def snapshot(self, horizon: int) -> Snapshot | None:
        """The latest frame with the stream's actions for ``horizon`` steps; None before the
        first frame (since the last reset)."""
        with self._lock:
            if self._size is None or not self._history:
                return None
            history = list(self._history)
            actions = None
            if self._actions is not None:
                actions = self._actions.rollout_actions(horizon, len(history))
            return Snapshot(self._header, self._size, self._stamp, history, horizon, actions,
                            self._x)  # fmt: skip

    def predict(
        self, snap: Snapshot, frames: bool = False, actions: np.ndarray | None = None
    ) -> Forecast:
        """Roll the dynamics out ``snap.horizon`` steps after ``snap``'s frame.

        Args:
            snap: from :meth:`snapshot`.
            frames: also decode the predicted steps into images.
            actions: (H + horizon - 1, A) to use instead of the stream's (a ~/predict request).
        """
        t0 = time.perf_counter()
        steps = self.rt.predict(snap.history, snap.horizon, snap.actions if actions is None
                                else actions)  # fmt: skip
        for step in steps:  # a duplicate stays off in the prediction of its frame
            step.suppressed = snap.history[-1].suppressed.copy()
        images = None
        if frames:  # (N, S, S, 3) in the card's compositing form
            images = (self.rt.render(steps) if snap.x is None
                      else self.rt.render_prediction(snap.x, snap.history[-1], steps))  # fmt: skip
        dt = float(self.rt.card.dynamics.dt)
        return Forecast(steps, images, dt, (time.perf_counter() - t0) * 1e3)

    def predict_batch(self, snap: Snapshot, actions: np.ndarray | None) -> BatchForecast:
        """Roll B candidate futures out ``snap.horizon`` steps after ``snap``'s frame, in one
        batched rollout (:meth:`DlpRuntime.predict_batch`).

        Args:
            snap: from :meth:`snapshot`; its history frames keep the stream's own commands
                (the rows :meth:`predict` uses before the last observed frame).
            actions: (B, N, A) candidate commands, ``actions[b, n]`` producing step n + 1 (it
                replaces the command in force at the last observed frame for n = 0); a model
                without actions takes (B, N, 0). None: one candidate holding the stream's
                latest command, i.e. :meth:`predict`'s rollout.
        """
        t0 = time.perf_counter()
        h = self.rt.card.dynamics.history
        past = None if snap.actions is None else snap.actions[: h - 1]  # (H - 1, A)
        if actions is None and snap.actions is not None:
            actions = snap.actions[None, h - 1 :]  # (1, N, A)
        fields = self.rt.predict_batch(snap.history, snap.horizon, actions, past)
        dt = float(self.rt.card.dynamics.dt)
        return BatchForecast(fields, dt, (time.perf_counter() - t0) * 1e3)

    def render(self, frames: Sequence[ParticleFrame]) -> np.ndarray:
        """Particle frames -> decoded (N, S, S, 3) uint8 RGB (model resolution)."""
        return self.rt.render(frames)
