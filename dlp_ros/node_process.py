"""The process around one rclpy node: spin until SIGINT/SIGTERM, then tear down in order.

rclpy's own signal handlers shut the context down from a thread of their own while a node is
being torn down, which now and then crashed a process at Ctrl-C (SIGSEGV in destroy_node). Here
a signal only sets an event: the executor spins in a thread, and the main thread stops the
node's workers, the executor and the node, then rclpy, in that order. Used by the perception
node, the planner and the simulator.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import TypeVar

import rclpy
from rclpy.executors import Executor, ExternalShutdownException
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

logger = logging.getLogger(__name__)
N = TypeVar('N', bound=Node)


def run_until_signal(
    args: list[str] | None,
    make_node: Callable[[], N],
    make_executor: Callable[[], Executor],
    stop_node: Callable[[N], None],
    *,
    start: Callable[[N], object] | None = None,
    usage_errors: tuple[type[BaseException], ...] = (),
) -> int:
    """Run ``make_node()`` on ``executor`` until SIGINT/SIGTERM or the executor ends.

    Args:
        args: rclpy's command line (``--ros-args ...``).
        make_node: builds the node (after ``rclpy.init``).
        make_executor: builds the executor (after ``rclpy.init``) that spins it in a thread.
        stop_node: stops the node's own workers first at teardown.
        start: called once the node is added, before spinning (e.g. a lifecycle autostart).
        usage_errors: exceptions of ``make_node`` / ``start`` that mean a bad parameter: logged,
            exit status 2.

    Returns:
        0, 2 on a usage error, 1 when the executor failed (logged).
    """
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    executor = make_executor()
    stop = threading.Event()
    handlers = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    node: N | None = None
    spinner: threading.Thread | None = None
    failed: list[str] = []
    try:
        node = make_node()
        executor.add_node(node)
        if start is not None:
            start(node)
        spinner = threading.Thread(target=_spin, args=(executor, stop, failed), name='executor')
        spinner.start()
        while not stop.wait(1.0):
            pass
    except usage_errors as exc:
        logger.error('%s', exc)
        return 2
    finally:
        if node is not None:
            stop_node(node)
        executor.shutdown()
        if spinner is not None:
            spinner.join()
        if node is not None:
            executor.remove_node(node)
            node.destroy_node()
        rclpy.try_shutdown()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    if failed:
        logger.error('the executor failed: %s', failed[0])
        return 1
    return 0


def _spin(executor: Executor, stop: threading.Event, failed: list[str]) -> None:
    """Executor thread: spin until the executor is shut down; sets ``stop`` when it ends."""
    try:
        executor.spin()
    except ExternalShutdownException:
        pass
    except Exception as exc:  # noqa: BLE001 - reported by run_until_signal, which exits 1
        failed.append(f'{type(exc).__name__}: {exc}')
    finally:
        stop.set()
