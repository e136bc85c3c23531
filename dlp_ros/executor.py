"""A thread-pool executor for rclpy that hands each ready callback to the pool once.

rclpy's own ``MultiThreadedExecutor`` (Humble, Jazzy; fixed upstream in rclpy 10.0.4, Rolling:
ros2/rclpy#1452 and #1547) yields every task it has submitted to its thread pool again until a
worker has started it, and submits it again each time; while the pool is busy the spin thread
loops on that, holding the GIL that the workers need to start. In the perception node under
``benchmarks/predict_batch.py`` it handed the image subscription out ~4 000 times a second (10
frames a second on the wire), and single requests stalled for 0.1-1 s (p99).

:class:`PoolExecutor` keeps rclpy's scheduling (``wait_for_ready_callbacks``: callback groups,
tasks) and changes the hand-over: after submitting a task, the spin thread waits until a worker
has started it, and a task already in the pool is never submitted again. Exceptions raised by
callbacks end ``spin`` as they do with rclpy's executors.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from rclpy.context import Context
from rclpy.executors import (
    ConditionReachedException,
    Executor,
    ExternalShutdownException,
    ShutdownException,
    TimeoutException,
)
from rclpy.task import Future as RclFuture

logger = logging.getLogger(__name__)

_NOTHING_READY = (
    ConditionReachedException,
    ExternalShutdownException,
    ShutdownException,
    TimeoutException,
)


def _never() -> bool:
    """The condition of a plain spin. One function, not a lambda per call: rclpy keeps its
    generator of ready callbacks only while the arguments compare equal."""
    return False


class PoolExecutor(Executor):
    """Run callbacks in a pool of ``num_threads`` threads; submit each ready task once."""

    def __init__(self, num_threads: int = 2, *, context: Context | None = None) -> None:
        super().__init__(context=context)
        if num_threads < 1:
            Executor.shutdown(self)
            raise ValueError(f'num_threads: expected >= 1, got {num_threads}')
        self._pool = ThreadPoolExecutor(num_threads, thread_name_prefix='callback')
        self._lock = threading.Lock()
        self._in_pool: set[RclFuture] = set()  # tasks submitted and not yet finished
        self._failed: list[BaseException] = []

    def spin_once(self, timeout_sec: float | None = None) -> None:
        self._spin_once(timeout_sec, _never)

    def spin_once_until_future_complete(
        self, future: RclFuture, timeout_sec: float | None = None
    ) -> None:
        future.add_done_callback(lambda _: self.wake())
        self._spin_once(timeout_sec, future.done)

    def shutdown(self, timeout_sec: float | None = None) -> bool:
        done = super().shutdown(timeout_sec)
        self._pool.shutdown(wait=False)
        return done

    def _spin_once(self, timeout_sec: float | None, condition: Callable[[], bool]) -> None:
        self._raise_failure()
        try:
            task, _, _ = self.wait_for_ready_callbacks(timeout_sec, None, condition)
        except _NOTHING_READY:
            return
        with self._lock:
            if task in self._in_pool:
                return  # queued or running already: rclpy yields it again until it has started
            self._in_pool.add(task)
        started = threading.Event()
        try:
            self._pool.submit(self._run, task, started)
        except RuntimeError:  # the pool was shut down under us
            with self._lock:
                self._in_pool.discard(task)
            return
        # until a worker has started the task rclpy would yield it again at once, and this
        # thread would spin on it, holding the GIL the worker needs to start
        while not started.wait(0.05) and not self._is_shutdown:
            pass

    def _run(self, task: RclFuture, started: threading.Event) -> None:
        """Pool thread: run the task; forget it; keep a callback's exception for the spin
        thread."""
        started.set()
        try:
            task()
        finally:
            error = task.exception() if task.done() else None
            with self._lock:
                self._in_pool.discard(task)
                if error is not None:
                    self._failed.append(error)
            if error is not None:
                self.wake()

    def _raise_failure(self) -> None:
        with self._lock:
            failed = self._failed[:1]
            self._failed.clear()
        if failed:
            raise failed[0]
