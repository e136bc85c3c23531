"""The perception node's camera input in plain Python (no ROS): the topic it subscribes for an
``image_transport``, what to say when no frames come, the throttled out-of-distribution
warning, the resize mode and the log of the input-to-model mapping.

The node (:mod:`dlp_ros.node`) asks the ROS graph for the types of the publishers on its topics
and logs what :class:`InputWatch` and :class:`OodWarning` return; everything here is tested
without rclpy.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence

from dlp_ros.errors import ConfigError
from dlp_ros.input_view import InputView

IMAGE = 'sensor_msgs/msg/Image'
COMPRESSED_IMAGE = 'sensor_msgs/msg/CompressedImage'
TRANSPORT_TYPES = {'raw': IMAGE, 'compressed': COMPRESSED_IMAGE}  # image_transport -> type
COMPRESSED_SUFFIX = '/compressed'
REPEAT_S = 30.0  # the same no-frames reason is logged again after this long


def subscribed_topic(base: str, transport: str) -> str:
    """The topic the node subscribes for the base topic ``base`` (``image`` resolved, i.e. after
    the users' remapping ``image:=/camera/image_raw``): ``base`` for raw, ``base/compressed``
    for compressed, as image_transport names them."""
    return base + COMPRESSED_SUFFIX if transport == 'compressed' else base


def other_transport_topic(topic: str, transport: str) -> str:
    """The topic the other transport of the same camera would be on (``topic`` resolved)."""
    if transport == 'compressed':
        return topic.removesuffix(COMPRESSED_SUFFIX)
    return topic + COMPRESSED_SUFFIX


def short_type(msg_type: str) -> str:
    """'sensor_msgs/msg/CompressedImage' -> 'CompressedImage'."""
    return msg_type.rsplit('/', 1)[-1]


def no_frames_reason(topic: str, transport: str, publishers: Mapping[str, Sequence[str]]) -> str:
    """Why no frame arrives on ``topic``, from the publishers' types.

    Args:
        topic: the subscribed topic (resolved).
        transport: ``raw`` or ``compressed`` (the node's ``image_transport``).
        publishers: topic -> the type of each publisher on it (``sensor_msgs/msg/Image`` ...),
            for ``topic`` and :func:`other_transport_topic` of it.
    """
    want = TRANSPORT_TYPES[transport]
    here = sorted(set(publishers.get(topic, ())))
    wrong = [t for t in here if t != want]
    if wrong:
        return (f'topic {topic} has publishers of {", ".join(wrong)} but the node subscribes '
                f'{short_type(want)} (image_transport={transport})')  # fmt: skip
    if here:
        count = len(publishers.get(topic, ()))
        return (f'topic {topic} has {count} publisher(s) of {want} but no frame arrives: a '
                'best-effort camera with input_reliability=reliable does not match, and large '
                'raw frames need the Fast DDS large-frames profile '
                '(config/fastdds_large_frames.xml)')  # fmt: skip
    other = other_transport_topic(topic, transport)
    there = sorted(set(publishers.get(other, ())))
    hint = ''
    if there:
        switch = [k for k, v in TRANSPORT_TYPES.items() if v in there and k != transport]
        hint = f'; {other} has publishers of {", ".join(there)}'
        if switch:
            hint += f' (image_transport={switch[0]} subscribes it)'
    return f'topic {topic} has no publisher{hint}'


class InputWatch:
    """No-frames watchdog: a reason to log when no frame arrived for ``timeout`` seconds.

    :meth:`check` is called periodically with the count of frames received; a count that
    changed restarts the wait. A reason is returned once the wait exceeds ``timeout``, again
    when it changes, and otherwise every ``repeat`` seconds. ``timeout`` 0 turns it off.
    """

    def __init__(self, timeout: float, repeat: float = REPEAT_S) -> None:
        self.timeout = float(timeout)
        self.repeat = float(repeat)
        self.reset(0.0)

    def reset(self, now: float) -> None:
        """Start waiting at ``now`` [s, monotonic] (activate)."""
        self._since, self._received = now, -1
        self._said, self._said_at = '', -math.inf

    def check(self, now: float, received: int, reason: Callable[[], str]) -> str | None:
        """The WARN text to log now, or None.

        Args:
            now: [s] monotonic.
            received: frames received so far.
            reason: called only when the wait is over: why (:func:`no_frames_reason`).
        """
        if self._received < 0:  # the first look since reset: the count it starts from
            self._received = received
        elif received != self._received:  # a frame came: the next silence is a new story
            self._since, self._received = now, received
            self._said, self._said_at = '', -math.inf
            return None
        waited = now - self._since
        if self.timeout <= 0 or waited < self.timeout:
            return None
        why = reason()
        if why == self._said and now - self._said_at < self.repeat:
            return None
        self._said, self._said_at = why, now
        return f'no camera frame for {waited:.0f} s: {why}'


class OodWarning:
    """The out-of-distribution WARN: at most one per ``period`` seconds while the score stays
    above the threshold, with the number of scores above it since the last one."""

    def __init__(self, period: float) -> None:
        self.period = float(period)
        self._last = -math.inf
        self._held = 0
        self._lock = threading.Lock()

    def check(self, score: float, threshold: float, now: float, topic: str) -> str | None:
        """The WARN text for ``score`` at ``now`` [s, monotonic], or None (below the threshold,
        not finite, or within ``period`` of the last warning)."""
        if not math.isfinite(score) or score <= threshold:
            return None
        with self._lock:
            if now - self._last < self.period:
                self._held += 1
                return None
            held, self._held, self._last = self._held, 0, now
        more = f' ({held} more frames above it since the last warning)' if held else ''
        return (
            f'out of distribution: score {score:.2f} > ood_warn {threshold:g} on {topic} '
            '(reconstruction error over the validation error of the model card): the '
            f'frames do not look like the training data, particles are unreliable{more}'
        )


def check_resize_mode(requested: str, card_mode: str, bundle: str) -> str:
    """The resize mode to run: the card's (``requested`` empty or equal to it).

    Raises:
        ConfigError: ``requested`` differs from the mode the model was trained with.
    """
    if requested and requested != card_mode:
        raise ConfigError(
            f'resize_mode is {requested!r} but the model card of {bundle} says image.resize '
            f'{card_mode!r} (the model was trained on {card_mode} frames): set resize_mode to '
            f'{card_mode!r} or leave it empty, or use a bundle built with build-dataset '
            f'--resize {requested}'
        )
    return card_mode


class ViewLog:
    """The input-to-model mapping (:meth:`dlp_ros.input_view.InputView.describe`) to log, once
    per input size: at the first frame and when the camera's frame size changes."""

    def __init__(self, size: int, mode: str) -> None:
        self.size, self.mode = int(size), mode
        self._last: tuple[int, int] | None = None

    def check(self, width: int, height: int) -> str | None:
        """The line to log for a ``width`` x ``height`` frame, or None (already said)."""
        if self._last == (width, height):
            return None
        self._last = (width, height)
        return InputView(width, height, self.mode).describe(self.size)
