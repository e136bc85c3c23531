"""The node's camera-input logic without ROS: image_transport topic names, the no-frames
reasons and their throttling, the out-of-distribution warning's throttling."""

from __future__ import annotations

import math

from dlp_ros.camera_input import (
    COMPRESSED_IMAGE,
    IMAGE,
    InputWatch,
    OodWarning,
    no_frames_reason,
    other_transport_topic,
    subscribed_topic,
)

CAM = '/camera/image_raw'


def test_image_transport_topic_names() -> None:
    assert subscribed_topic('image', 'raw') == 'image'
    assert subscribed_topic('image', 'compressed') == 'image/compressed'
    assert other_transport_topic(f'{CAM}/compressed', 'compressed') == CAM
    assert other_transport_topic(CAM, 'raw') == f'{CAM}/compressed'


def test_a_publisher_of_the_other_type_is_named() -> None:
    topic = f'{CAM}/compressed'
    why = no_frames_reason(topic, 'compressed', {topic: [IMAGE]})
    assert why == (f'topic {topic} has publishers of sensor_msgs/msg/Image but the node '
                   'subscribes CompressedImage (image_transport=compressed)')  # fmt: skip
    why = no_frames_reason(CAM, 'raw', {CAM: [COMPRESSED_IMAGE, IMAGE]})
    assert why == (f'topic {CAM} has publishers of sensor_msgs/msg/CompressedImage but the node '
                   'subscribes Image (image_transport=raw)')  # fmt: skip


def test_no_publisher_says_so_and_points_at_the_other_transport() -> None:
    assert no_frames_reason(CAM, 'raw', {}) == f'topic {CAM} has no publisher'
    topic = f'{CAM}/compressed'
    why = no_frames_reason(topic, 'compressed', {topic: [], CAM: [IMAGE]})
    assert why == (f'topic {topic} has no publisher; {CAM} has publishers of '
                   'sensor_msgs/msg/Image (image_transport=raw subscribes it)')  # fmt: skip
    why = no_frames_reason(CAM, 'raw', {topic: [COMPRESSED_IMAGE]})
    assert 'image_transport=compressed subscribes it' in why


def test_publishers_of_the_right_type_without_frames() -> None:
    why = no_frames_reason(CAM, 'raw', {CAM: [IMAGE, IMAGE]})
    assert why.startswith(f'topic {CAM} has 2 publisher(s) of sensor_msgs/msg/Image but no ')
    assert 'input_reliability' in why and 'fastdds_large_frames.xml' in why


def test_input_watch_waits_then_warns_throttled_and_rearms_on_a_frame() -> None:
    calls: list[float] = []
    reasons = iter(['no publisher', 'no publisher', 'no publisher', 'wrong type', 'wrong type'])

    def reason() -> str:
        calls.append(1.0)
        return next(reasons)

    watch = InputWatch(timeout=5.0, repeat=30.0)
    watch.reset(100.0)
    assert watch.check(101.0, 7, reason) is None  # first look: the count it starts from
    assert watch.check(104.0, 7, reason) is None and not calls  # not yet: reason not asked
    assert watch.check(105.0, 7, reason) == 'no camera frame for 5 s: no publisher'
    assert watch.check(107.0, 7, reason) is None  # same reason: throttled
    assert watch.check(135.0, 7, reason) == 'no camera frame for 35 s: no publisher'  # repeat
    assert watch.check(136.0, 7, reason) == 'no camera frame for 36 s: wrong type'  # changed
    assert watch.check(138.0, 3, reason) is None  # frames came: the wait restarts
    assert watch.check(142.0, 3, reason) is None
    assert watch.check(144.0, 3, reason) == 'no camera frame for 6 s: wrong type'  # new silence


def test_input_watch_off() -> None:
    watch = InputWatch(timeout=0.0)
    watch.reset(0.0)
    assert watch.check(0.0, 0, lambda: 'x') is None
    assert watch.check(1e6, 0, lambda: 'x') is None


def test_ood_warning_names_score_and_threshold_and_is_throttled() -> None:
    warn = OodWarning(period=5.0)
    assert warn.check(3.9, 4.0, 0.0, CAM) is None
    assert warn.check(math.nan, 4.0, 0.0, CAM) is None
    first = warn.check(33.25, 4.0, 10.0, CAM)
    assert first is not None
    assert 'score 33.25 > ood_warn 4' in first and CAM in first and 'more frames' not in first
    assert warn.check(40.0, 4.0, 12.0, CAM) is None
    assert warn.check(41.0, 4.0, 14.9, CAM) is None
    assert warn.check(2.0, 4.0, 15.0, CAM) is None  # below: not counted
    again = warn.check(179.0, 4.0, 15.0, CAM)
    assert again is not None and 'score 179.00' in again
    assert '(2 more frames above it since the last warning)' in again
