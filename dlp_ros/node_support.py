"""Plain-Python parts of the perception node (no ROS): its parameters, the one-slot frame
mailbox, rate and latency statistics, the OOD score and a log throttle (the per-frame work is
:mod:`dlp_ros.pipeline`).

dlp_ros.node turns :data:`PARAMS` into ROS parameter declarations and uses the rest from its
worker thread; everything here is tested without rclpy.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Generic, TypeVar

import numpy as np

from dlp_ros.errors import ConfigError

T = TypeVar('T')
ParamValue = bool | int | float | str
DEFAULT_BUNDLE = 'tabletop64'  # share/dlp_ros/bundles/<this>, the model_bundle default
NMS_IOU_DEFAULT = 0.3  # nms_iou: chosen on validation seeds of both shipped bundles
# When a parameter's value is read, and so whether a change at run time takes effect:
LIVE = 'live'  # at every use: a change applies to the next frame or prediction
CONFIGURE = 'configure'  # at configure: refused while configured (cleanup, set, configure)
STARTUP = 'start-up'  # at start-up only: refused at run time (restart the node)


@dataclass(frozen=True)
class ParamSpec:
    """One node parameter: name, default (its type is the parameter's type), description, the
    allowed values (a closed numeric range ``low..high`` or a set of strings), and when it is
    read (``applies``: :data:`LIVE`, :data:`CONFIGURE` or :data:`STARTUP`)."""

    name: str
    default: ParamValue
    description: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    applies: str = CONFIGURE

    def change_refusal(self, configured: bool) -> str | None:
        """None when a change of this parameter at run time may be taken now (``configured``:
        the node holds a configuration), otherwise the reason it is refused."""
        if self.applies == STARTUP:
            return f'{self.name} is read at start-up only: restart the node with the new value'
        if self.applies == CONFIGURE and configured:
            return (
                f'{self.name} is read at configure: deactivate and clean up the node '
                '(lifecycle transitions), set it, then configure and activate again'
            )
        return None

    @property
    def full_description(self) -> str:
        """The description with when the parameter is read (the ROS descriptor's text)."""
        when = {
            LIVE: 'Live: a change takes effect at once.',
            CONFIGURE: 'Read at configure: refused while the node is configured.',
            STARTUP: 'Read at start-up only.',
        }[self.applies]
        return f'{self.description} {when}'

    def check(self, value: object) -> str | None:
        """None when ``value`` is allowed, otherwise the reason it is not."""
        if isinstance(self.default, bool):
            ok = isinstance(value, bool)
        elif isinstance(self.default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(self.default, float):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        else:
            ok = isinstance(value, str)
        if not ok:
            kind = type(self.default).__name__
            return f'parameter {self.name} must be a {kind}, got {value!r}'
        if self.choices and value not in self.choices:
            return f'parameter {self.name} must be one of {list(self.choices)}, got {value!r}'
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                return f'parameter {self.name} must be finite, got {value!r}'
            if self.low is not None and value < self.low:
                return f'parameter {self.name} must be >= {self.low}, got {value!r}'
            if self.high is not None and value > self.high:
                return f'parameter {self.name} must be <= {self.high}, got {value!r}'
        return None


PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec(
        'model_bundle',
        '',
        'Model bundle directory: encoder/background/dynamics/decoder .onnx and model_card.yaml '
        f'(python -m dlp_training export). Empty = the installed share/dlp_ros/bundles/'
        f'{DEFAULT_BUNDLE}.',
    ),
    ParamSpec(
        'image_transport',
        'raw',
        "Input transport of the base topic `image` (remap it to the camera's base topic, e.g. "
        "/camera/image_raw): 'raw' subscribes `image` as sensor_msgs/Image (rgb8, bgr8, mono8, "
        'rgba8, bgra8, yuv422/uyvy, yuv422_yuy2/yuyv, bayer_rggb8/bggr8/gbrg8/grbg8, mono16, '
        "16UC1), 'compressed' subscribes `image/compressed` as sensor_msgs/CompressedImage "
        '(jpeg, png), as image_transport names them. Read at configure.',
        choices=('raw', 'compressed'),
    ),
    ParamSpec(
        'no_frames_warn',
        5.0,
        'Seconds without a camera frame (while active) before a WARN log naming the subscribed '
        'topic and the types of its publishers (a publisher of the other image_transport type '
        'is named as such); repeated when the reason changes, else every 30 s. 0 = off.',
        0.0,
        1e6,
    ),
    ParamSpec(
        'resize_mode',
        '',
        "How a camera frame becomes the model's square input: 'squash' (the whole frame, "
        "aspect ratio not kept), 'crop' (the centred square of the short side), 'pad' (the "
        "frame centred on a black square). Empty = the model card's image.resize; another mode "
        "than the card's fails configure. Particles are in input-image pixels in every mode. "
        'Read at configure.',
        choices=('', 'squash', 'crop', 'pad'),
    ),
    ParamSpec(
        'input_reliability',
        'best_effort',
        'QoS reliability of the camera subscription (depth 1 either way: the latest frame '
        "wins): 'best_effort' (sensor data) or 'reliable' (lost fragments of large frames are "
        'sent again; needs a reliable camera publisher). A qos_overrides parameter of the '
        'topic takes precedence.',
        choices=('best_effort', 'reliable'),
    ),
    ParamSpec(
        'horizon',
        10,
        'Predicted steps on dlp/prediction, and for ~/predict requests with horizon 0.',
        1,
        1000,
        applies=LIVE,
    ),
    ParamSpec(
        'prediction_rate',
        2.0,
        'Rate of dlp/prediction [Hz]: a rollout from the latest processed frame, at most one '
        'per processed frame and only while someone subscribes. 0 = off (~/predict still '
        'answers).',
        0.0,
        1000.0,
        applies=LIVE,
    ),
    ParamSpec(
        'publish_frames',
        False,
        'Decode the predicted frames into dlp/prediction (rgb8, the model resolution); only '
        'while someone subscribes to dlp/prediction. Costly.',
        applies=LIVE,
    ),
    ParamSpec(
        'frames_rate',
        1.0,
        'Most predictions per second that carry decoded frames (dlp/prediction frames and '
        'dlp/prediction/image) [Hz]; 0 = no limit.',
        0.0,
        1000.0,
        applies=LIVE,
    ),
    ParamSpec(
        'prediction_image_step',
        0,
        'Predicted step k (1-based) published as sensor_msgs/Image on dlp/prediction/image, '
        'while someone subscribes to it; 0 = the last step (a k beyond the horizon: the last).',
        0,
        1000,
        applies=LIVE,
    ),
    ParamSpec(
        'providers',
        'auto',
        "onnxruntime execution provider: 'auto' (TensorRT > CUDA > CPU, what loads), 'cpu', "
        "'cuda' or 'tensorrt'. The provider in use is logged and sent on /diagnostics.",
        choices=('auto', 'cpu', 'cuda', 'tensorrt'),
    ),
    ParamSpec(
        'threads',
        1,
        'onnxruntime intra-op threads per session; 0 = onnxruntime default (all cores). One '
        'is fastest for these small graphs on a busy robot computer (docs/benchmarks.md).',
        0,
        256,
    ),
    ParamSpec(
        'autostart',
        True,
        'Configure and activate at start-up; false = wait for lifecycle transitions '
        '(~/change_state).',
        applies=STARTUP,
    ),
    ParamSpec(
        'exit_on_configure_failure',
        True,
        'With autostart: when the configure at start-up fails (a missing bundle, a bad '
        'parameter), log the reason and exit with status 2, so that a supervisor or a launch '
        'respawn sees it; false = stay up unconfigured, waiting for ~/change_state.',
        applies=STARTUP,
    ),
    ParamSpec(
        'overlay',
        True,
        'Publish ~/overlay (the input frame with the particles drawn, rgb8) while someone '
        'subscribes to it.',
        applies=LIVE,
    ),
    ParamSpec(
        'action_topic',
        '',
        'geometry_msgs/TwistStamped topic with the commands for models that take actions '
        '(model card action_names, e.g. linear.x, linear.y); a frame gets the latest command '
        'received before it, and the latest is held over the horizon. Empty = zero actions.',
    ),
    ParamSpec(
        'ood_every_n',
        10,
        'Compute the out-of-distribution score (reconstruction MSE of the input over the '
        "model card's validation recon_mse) every N processed frames; 0 = off.",
        0,
        100000,
        applies=LIVE,
    ),
    ParamSpec(
        'ood_warn',
        4.0,
        'OOD score above which /diagnostics reports WARN and the node logs a WARN with the '
        'score and this threshold (at most one per 5 s).',
        0.0,
        1e9,
        applies=LIVE,
    ),
    ParamSpec(
        'nms_iou',
        NMS_IOU_DEFAULT,
        'Non-maximum suppression of the published particles: an on particle whose glimpse box '
        'overlaps that of another on particle that stays on by more than this IoU is published '
        'with on = false (the more present one stays on, preferring the one that stayed on in '
        'the previous frame; transparency, positions and the predictions are unchanged). '
        '1 = publish every on particle. Read at configure.',
        0.0,
        1.0,
    ),
)
PARAM_SPECS = {spec.name: spec for spec in PARAMS}


@dataclass(frozen=True)
class NodeConfig:
    """The node's parameters, validated (one field per :data:`PARAMS` entry)."""

    model_bundle: str
    image_transport: str
    no_frames_warn: float
    resize_mode: str
    input_reliability: str
    horizon: int
    prediction_rate: float
    publish_frames: bool
    frames_rate: float
    prediction_image_step: int
    providers: str
    threads: int
    autostart: bool
    exit_on_configure_failure: bool
    overlay: bool
    action_topic: str
    ood_every_n: int
    ood_warn: float
    nms_iou: float

    @classmethod
    def from_values(cls, values: dict[str, object]) -> NodeConfig:
        """Validate ``values`` (parameter name -> value; missing names take the default).

        Raises:
            ConfigError: an unknown name or a value of the wrong type or out of range.
        """
        unknown = sorted(set(values) - set(PARAM_SPECS))
        if unknown:
            raise ConfigError(f'unknown parameter(s) {unknown}; known: {sorted(PARAM_SPECS)}')
        merged: dict[str, object] = {}
        for spec in PARAMS:
            value = values.get(spec.name, spec.default)
            if isinstance(spec.default, float) and isinstance(value, int):
                value = float(value) if not isinstance(value, bool) else value
            reason = spec.check(value)
            if reason:
                raise ConfigError(reason)
            merged[spec.name] = value
        return cls(**merged)  # type: ignore[arg-type]

    def changed(self, values: dict[str, object]) -> NodeConfig:
        """A copy with ``values`` (parameter name -> value) changed, validated like
        :meth:`from_values`."""
        return NodeConfig.from_values({**asdict(self), **values})


class Mailbox(Generic[T]):
    """A one-slot mailbox between the executor and the worker thread: the latest item wins.

    ``put`` replaces an item the worker has not taken yet (counted in ``dropped``); ``get``
    waits for an item.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._closed = False
        self.dropped = 0

    def put(self, item: T) -> bool:
        """Leave ``item``; True when it replaced an unread one (which is then dropped)."""
        with self._cond:
            replaced = self._item is not None
            self.dropped += int(replaced)
            self._item = item
            self._cond.notify()
            return replaced

    def get(self, timeout: float) -> T | None:
        """The item (emptying the slot), or None after ``timeout`` s or once closed."""
        with self._cond:
            self._cond.wait_for(lambda: self._item is not None or self._closed, timeout)
            item, self._item = self._item, None
            return item

    def clear(self) -> None:
        """Forget the unread item, if any (not counted as dropped)."""
        with self._cond:
            self._item = None

    def close(self) -> None:
        """Wake every waiting ``get`` (it returns None from now on, once the slot is empty)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class RateMeter:
    """Events per second over the last ``window`` seconds (monotonic clock)."""

    def __init__(self, window: float = 5.0) -> None:
        self.window = window
        self._events: deque[tuple[float, int]] = deque()  # (time, count)
        self._total = 0  # sum of the counts in the window
        self._start = time.monotonic()
        self._lock = threading.Lock()

    def tick(self, now: float | None = None, count: int = 1) -> None:
        """Record ``count`` events at ``now``."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._events.append((now, count))
            self._total += count
            self._trim(now)

    def rate(self, now: float | None = None) -> float:
        """Events per second in the window (shorter right after the meter was made)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._trim(now)
            span = min(self.window, max(now - self._start, 1e-3))
            return self._total / span

    def _trim(self, now: float) -> None:
        while self._events and self._events[0][0] < now - self.window:
            self._total -= self._events.popleft()[1]


class SequenceGaps:
    """Frames lost between the camera's publisher and the node's callback, from the gaps in the
    publishers' sequence numbers (``publication_sequence_number`` of the message info).

    DDS numbers every sample a writer sends 1, 2, 3 ...; a sample that arrives with a number
    more than one past the previous one of its writer reveals the samples in between as lost:
    dropped by the transport (a fragment missing, a full shared-memory segment) or replaced in
    the reader's keep-last history before the executor took it. Samples lost after the last one
    that arrived are counted when the next one arrives.

    The message info does not name the writer. Each arrival is attributed to the most recently
    seen writer whose last number is below it and whose gap is possible in the time since its
    last arrival (at most ``max_rate`` Hz); with none, it starts a new writer (a new or
    restarted publisher; nothing before its first arrival is counted). Exact for one publisher
    and for publishers taking turns (the usual camera driver, restarted or replaced); for
    several publishing at once, an estimate. At most ``max_writers`` are remembered.
    """

    UNSUPPORTED = (0, 2**64 - 1)  # RMW_MESSAGE_INFO_SEQUENCE_NUMBER_UNSUPPORTED, and unset
    SLACK = 10  # samples a gap may exceed max_rate * elapsed by

    def __init__(self, max_writers: int = 8, max_rate: float = 10_000.0) -> None:
        self.max_writers = max_writers
        self.max_rate = max_rate
        self._writers: list[tuple[int, float]] = []  # (last number, last arrival), recent last
        self.lost = 0
        self.supported = True

    def observe(self, seq: int, now: float | None = None) -> int:
        """Record an arrival with sequence number ``seq`` at ``now`` (monotonic s); returns how
        many samples it shows to be lost (0 when the middleware gives no sequence numbers)."""
        if seq in self.UNSUPPORTED:
            self.supported = False
            return 0
        now = time.monotonic() if now is None else now
        gap = 0
        for i in range(len(self._writers) - 1, -1, -1):
            last, seen = self._writers[i]
            possible = self.max_rate * max(now - seen, 0.0) + self.SLACK
            if last < seq and seq - last - 1 <= possible:
                gap = seq - last - 1
                self._writers.pop(i)
                break
        self._writers.append((seq, now))
        if len(self._writers) > self.max_writers:
            self._writers.pop(0)
        self.lost += gap
        return gap

    def reset(self) -> None:
        """Forget every writer (a new subscription)."""
        self._writers.clear()


class LatencyWindow:
    """The last ``size`` latencies [ms] and their percentiles."""

    def __init__(self, size: int = 500) -> None:
        self._values: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, ms: float) -> None:
        with self._lock:
            self._values.append(ms)

    def percentiles(self, *qs: float) -> list[float]:
        """The ``qs`` percentiles (0..100); NaN when nothing was recorded."""
        with self._lock:
            values = np.array(self._values, dtype=np.float64)
        if values.size == 0:
            return [math.nan for _ in qs]
        return [float(v) for v in np.percentile(values, qs)]


def ood_score(recon_mse: float, val_mse: float | None) -> float:
    """Out-of-distribution score: the frame's reconstruction MSE over the model card's
    validation recon_mse (about 1 in distribution); NaN when the card has no positive one."""
    if val_mse is None or not math.isfinite(val_mse) or val_mse <= 0:
        return math.nan
    return float(recon_mse) / float(val_mse)


class Throttle:
    """At most one report per ``period`` seconds; counts the reports it held back."""

    def __init__(self, period: float) -> None:
        self.period = period
        self._last = -math.inf
        self._held = 0
        self._lock = threading.Lock()

    def ready(self, now: float | None = None) -> tuple[bool, int]:
        """(whether to report now, how many reports were held back since the last one)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if now - self._last >= self.period:
                held, self._held, self._last = self._held, 0, now
                return True, held
            self._held += 1
            return False, 0


def image_step_index(step: int, n_steps: int) -> int:
    """Index into ``n_steps`` predicted frames of the ``prediction_image_step`` parameter ``step``
    (1-based; 0 or a step beyond the horizon = the last)."""
    if n_steps <= 0:
        raise ValueError('a prediction without frames has no step to show')
    return n_steps - 1 if step <= 0 else min(step, n_steps) - 1
