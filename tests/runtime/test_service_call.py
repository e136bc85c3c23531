"""dlp_ros.service_call: the recovery of a reply lost to discovery, on a scripted server that
drops the replies of its first requests (what Fast DDS does while it has not matched the
client's reply reader). The real path is exercised by every service call of tests/ros."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from dlp_ros.errors import DlpError
from dlp_ros.service_call import call_service, sleep_poll


@dataclass
class Future:
    value: Any = None
    answered: bool = False

    def done(self) -> bool:
        return self.answered

    def result(self) -> Any:
        return self.value


@dataclass
class LossyServer:
    """Answers request n (0-based) with ``('done', request)`` unless n < ``lost``."""

    lost: int
    ready: bool = True
    srv_name: str = '/lossy'
    received: list[Any] = field(default_factory=list)
    pending: list[Future] = field(default_factory=list)

    def service_is_ready(self) -> bool:
        return self.ready

    def call_async(self, request: Any) -> Future:
        future = Future()
        if len(self.received) >= self.lost:
            future.value, future.answered = ('done', request), True
        else:
            self.pending.append(future)  # answered ones leave the list, as in rclpy
        self.received.append(request)
        return future

    def remove_pending_request(self, future: Future) -> None:
        self.pending.remove(future)


def test_an_idempotent_request_is_asked_again_until_answered() -> None:
    server = LossyServer(lost=2)
    answer = call_service(server, 'predict', sleep_poll, 5.0, attempt_s=0.01)
    assert answer == ('done', 'predict')
    assert server.received == ['predict'] * 3
    assert server.pending == [], 'the unanswered requests are dropped'


def test_a_request_that_must_run_once_is_sent_after_an_answered_probe() -> None:
    server = LossyServer(lost=2)
    answer = call_service(server, 'transition', sleep_poll, 5.0, probe='probe', attempt_s=0.01)
    assert answer == ('done', 'transition')
    assert server.received == ['probe', 'probe', 'probe', 'transition']


def test_no_answer_and_no_service_are_errors_naming_the_service() -> None:
    with pytest.raises(DlpError, match='no answer from /lossy'):
        call_service(LossyServer(lost=10**6), 'x', sleep_poll, 0.1, attempt_s=0.02)
    with pytest.raises(DlpError, match='service /lossy is not available'):
        call_service(LossyServer(lost=0, ready=False), 'x', sleep_poll, 0.05)
