"""Service calls that survive the reply lost to discovery on a busy machine.

A ROS 2 client can see a service as ready (its request writer matched the server's reader) before
the server has matched the client's *reply* reader. Fast DDS's server then waits 100 ms for that
match and drops the reply ("failed to send response (timeout): client will not receive
response"): the caller waits forever. On a loaded 2-core machine discovery can take longer than
100 ms, so a first call on a new client is lost now and then.

:func:`call_service` recovers in one of two ways:

- an idempotent request (asking twice does no harm: a prediction, a parameter read) is sent again
  after ``attempt_s``, then after twice that, and so on; the first answer wins and the other
  pending requests are dropped (their late answers are ignored);
- a request that must run once (a lifecycle transition, a new episode) is preceded by a *probe*:
  a request the server refuses without side effects (an unknown transition label, an invalid
  tolerance), sent until one answer comes back. An answer proves the server has matched this
  client's reply reader, and the real request is then sent once.

The client is any rclpy ``Client`` (``srv_name``, ``service_is_ready``, ``call_async``,
``remove_pending_request``); ``poll(ready, seconds)`` is the caller's way of waiting while its
executor spins (True once ``ready()`` holds, False after ``seconds``). No rclpy import here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from dlp_ros.errors import DlpError

logger = logging.getLogger(__name__)

ATTEMPT_S = 2.0  # s, the first wait before a request is sent again
Poll = Callable[[Callable[[], bool], float], bool]


def sleep_poll(ready: Callable[[], bool], seconds: float) -> bool:
    """The :data:`Poll` of a caller whose executor spins in another thread: check ``ready()``
    every millisecond; True once it holds, False after ``seconds``."""
    end = time.monotonic() + seconds
    while not ready():
        if time.monotonic() >= end:
            return False
        time.sleep(0.001)
    return True


def call_service(client: Any, request: Any, poll: Poll, timeout: float, *,
                 probe: Any = None, attempt_s: float = ATTEMPT_S) -> Any:  # fmt: skip
    """The response of ``request`` (module docstring), within ``timeout`` s in all.

    ``probe`` None: ``request`` is idempotent and may be sent more than once. Otherwise
    ``probe`` is sent (as often as needed) until one answer returns, then ``request`` once.

    Raises:
        DlpError: the service did not appear, or gave no answer, within ``timeout`` s.
    """
    end = time.monotonic() + timeout
    if not poll(client.service_is_ready, timeout):
        raise DlpError(f'service {client.srv_name} is not available after {timeout:g} s')
    if probe is None:
        return _send_until_answered(client, request, poll, end, attempt_s)
    _send_until_answered(client, probe, poll, end, attempt_s)
    future = client.call_async(request)
    if not poll(future.done, max(0.0, end - time.monotonic())):
        client.remove_pending_request(future)
        raise DlpError(f'no answer from {client.srv_name} within {timeout:g} s')
    return future.result()


def _send_until_answered(client: Any, request: Any, poll: Poll, end: float,
                         attempt_s: float) -> Any:  # fmt: skip
    """Send ``request``, and again each time no answer came within the (doubling) wait."""
    futures: list[Any] = []
    wait = attempt_s
    try:
        while True:
            futures.append(client.call_async(request))
            remaining = end - time.monotonic()
            if poll(lambda: any(f.done() for f in futures), max(0.0, min(wait, remaining))):
                return next(f for f in futures if f.done()).result()
            if time.monotonic() >= end:
                raise DlpError(f'no answer from {client.srv_name} after {len(futures)} '
                               f'request(s)')  # fmt: skip
            logger.info('no answer from %s after %.1f s: asking again (a reply can be lost '
                        'while the server has not yet matched this client)',
                        client.srv_name, wait)  # fmt: skip
            wait *= 2
    finally:
        for future in futures:
            if not future.done():
                client.remove_pending_request(future)
