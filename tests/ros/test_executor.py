"""dlp_ros.executor.PoolExecutor on real rclpy: callbacks run in its pool, callback groups hold,
a callback's exception ends ``spin``, and the spin thread does not spin while a ready callback
waits for a worker (rclpy's MultiThreadedExecutor yielded such a task thousands of times a
second: ros2/rclpy#1452)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

pytest.importorskip('rclpy')

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup  # noqa: E402
from rclpy.task import Future  # noqa: E402

from dlp_ros.executor import PoolExecutor  # noqa: E402

if TYPE_CHECKING:
    from rclpy.context import Context
    from rclpy.node import Node

pytestmark = pytest.mark.ros


class CountingExecutor(PoolExecutor):
    """Counts what ``wait_for_ready_callbacks`` hands the spin thread."""

    def __init__(self, num_threads: int, *, context: Context) -> None:
        super().__init__(num_threads, context=context)
        self.handed_out = 0

    def wait_for_ready_callbacks(self, *args: object, **kwargs: object) -> tuple:
        ready = super().wait_for_ready_callbacks(*args, **kwargs)
        self.handed_out += 1
        return ready


@pytest.fixture
def node(ros_context: Context) -> Iterator[Node]:
    import rclpy

    node = rclpy.create_node(f'executor_test_{time.monotonic_ns()}', context=ros_context)
    try:
        yield node
    finally:
        node.destroy_node()


def spin_in_thread(executor: PoolExecutor, errors: list[BaseException]) -> threading.Thread:
    def spin() -> None:
        try:
            executor.spin()
        except BaseException as exc:  # noqa: BLE001 - the test reads it
            errors.append(exc)

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    return thread


def spin_until(
    executor: PoolExecutor, done: Callable[[], bool], timeout: float = 10.0
) -> list[BaseException]:
    """Spin ``executor`` in a thread until ``done()`` (or ``timeout`` s), then shut it down;
    the exceptions spin raised."""
    errors: list[BaseException] = []
    thread = spin_in_thread(executor, errors)
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        time.sleep(0.02)
    executor.shutdown()
    thread.join(5.0)
    return errors


def one_shot_timer(node: Node, delay: float, callback, group=None) -> None:  # noqa: ANN001
    """A timer that runs ``callback`` once, after ``delay`` seconds."""
    holder: list = []

    def fire() -> None:
        holder[0].cancel()
        callback()

    holder.append(node.create_timer(delay, fire, callback_group=group))


def test_callbacks_of_two_groups_run_at_the_same_time(ros_context: Context, node: Node) -> None:
    spans: dict[str, tuple[float, float]] = {}

    def slow(name: str) -> None:
        start = time.monotonic()
        time.sleep(0.3)
        spans[name] = (start, time.monotonic())

    for name in ('a', 'b'):
        one_shot_timer(node, 0.05, lambda n=name: slow(n), MutuallyExclusiveCallbackGroup())
    executor = PoolExecutor(2, context=ros_context)
    executor.add_node(node)
    assert not spin_until(executor, lambda: len(spans) >= 2)
    assert set(spans) == {'a', 'b'}, f'callbacks that ran: {sorted(spans)}'
    (a0, a1), (b0, b1) = spans['a'], spans['b']
    assert a0 < b1 and b0 < a1, f'the two callbacks did not overlap: {spans}'


def test_a_mutually_exclusive_group_runs_one_callback_at_a_time(
    ros_context: Context, node: Node
) -> None:
    group = MutuallyExclusiveCallbackGroup()
    spans: list[tuple[float, float]] = []

    def slow() -> None:
        start = time.monotonic()
        time.sleep(0.2)
        spans.append((start, time.monotonic()))

    for _ in range(3):
        one_shot_timer(node, 0.05, slow, group)
    executor = PoolExecutor(3, context=ros_context)
    executor.add_node(node)
    assert not spin_until(executor, lambda: len(spans) >= 3)
    assert len(spans) == 3
    spans.sort()
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end, f'callbacks of one group overlapped: {spans}'


def test_the_spin_thread_waits_while_a_ready_callback_has_no_worker(
    ros_context: Context, node: Node
) -> None:
    """One worker, busy 150 ms of every 200 (a timer), and messages at 20 Hz on a subscription
    of another group: the message callbacks wait for the worker. The spin thread must wait with
    them, not hand them out again and again (rclpy's MultiThreadedExecutor: ~22 000 hand-outs
    in this test against ~80 here)."""
    from std_msgs.msg import String

    got: list[String] = []
    topic = f'/executor_test_{time.monotonic_ns()}'
    node.create_subscription(String, topic, got.append, 10,
                             callback_group=MutuallyExclusiveCallbackGroup())  # fmt: skip
    node.create_timer(0.2, lambda: time.sleep(0.15),
                      callback_group=MutuallyExclusiveCallbackGroup())  # fmt: skip
    publisher = node.create_publisher(String, topic, 10)
    executor = CountingExecutor(1, context=ros_context)
    executor.add_node(node)
    errors: list[BaseException] = []
    thread = spin_in_thread(executor, errors)
    deadline = time.monotonic() + 10.0
    while publisher.get_subscription_count() < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.5)
    before = executor.handed_out
    sent = 60
    for i in range(sent):
        publisher.publish(String(data=str(i)))
        time.sleep(0.05)
    time.sleep(0.5)
    handed_out = executor.handed_out - before
    executor.shutdown()
    thread.join(5.0)
    assert not errors
    assert len(got) == sent, f'received {len(got)} of {sent} messages'
    # one hand-out per message and per timer period, a few more for wake-ups
    assert handed_out <= 4 * (sent + 20), f'the spin thread handed out {handed_out} times'


def test_a_callbacks_exception_ends_spin(ros_context: Context, node: Node) -> None:
    def fail() -> None:
        raise RuntimeError('callback failed on purpose')

    one_shot_timer(node, 0.05, fail)
    executor = PoolExecutor(2, context=ros_context)
    executor.add_node(node)
    errors: list[BaseException] = []
    thread = spin_in_thread(executor, errors)
    thread.join(10.0)
    alive = thread.is_alive()
    executor.shutdown()
    assert not alive, 'spin went on after the callback raised'
    assert len(errors) == 1 and 'on purpose' in str(errors[0])


def test_spin_until_future_complete(ros_context: Context, node: Node) -> None:
    future = Future()
    one_shot_timer(node, 0.1, lambda: future.set_result(42))
    executor = PoolExecutor(2, context=ros_context)
    executor.add_node(node)
    executor.spin_until_future_complete(future, timeout_sec=10.0)
    executor.shutdown()
    assert future.done() and future.result() == 42


def test_bad_thread_count_is_refused(ros_context: Context) -> None:
    with pytest.raises(ValueError, match='num_threads'):
        PoolExecutor(0, context=ros_context)
