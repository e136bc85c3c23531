"""dlp_ros messages over real DDS between two processes (rclpy + Fast DDS on loopback).

``peer_publisher.py`` runs in a subprocess with this run's ROS_DOMAIN_ID; this process receives
with its own rclpy Context. Topics carry a per-test prefix, so two runs that happen to share a
domain id do not see each other's messages.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

pytest.importorskip('rclpy')
pytest.importorskip('dlp_ros.msg')

from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402

from dlp_ros.demo import stop_process  # noqa: E402
from dlp_ros.msg import ParticleArray, Prediction  # noqa: E402

if TYPE_CHECKING:
    from conftest import RosMsgKit
    from rclpy.context import Context
    from rclpy.node import Node

pytestmark = pytest.mark.ros

PEER = Path(__file__).resolve().parent / 'peer_publisher.py'
TYPES = {'particles': ParticleArray, 'prediction': Prediction}
RECEIVE_TIMEOUT_S = 15.0
QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=10,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)


class Peer:
    """``peer_publisher.py`` in a subprocess; its stdout/stderr go to files for failure reports."""

    def __init__(self, mode: str, prefix: str, log_dir: Path) -> None:
        self.stdout_path = log_dir / f'peer_{mode}.out'
        self.stderr_path = log_dir / f'peer_{mode}.err'
        with self.stdout_path.open('wb') as out, self.stderr_path.open('wb') as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(PEER), mode, '--prefix', prefix, '--lifetime', '60'],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env={**os.environ, 'PYTHONUNBUFFERED': '1'},
            )

    def report(self) -> str:
        """Exit status and output of the peer, for assertion messages."""
        status = self.proc.poll()
        return (
            f'peer pid {self.proc.pid} '
            + ('still running' if status is None else f'exited with {status}')
            + f'\n--- peer stdout ---\n{self.stdout_path.read_text(errors="replace")}'
            + f'--- peer stderr ---\n{self.stderr_path.read_text(errors="replace")}'
        )

    def assert_alive(self) -> None:
        """Fail now, with the peer's output, if it has exited."""
        if self.proc.poll() is not None:
            raise AssertionError(f'the peer process died early: {self.report()}')

    def stop(self) -> int | None:
        """SIGINT, then SIGTERM, then SIGKILL, each after a grace period; returns the exit code."""
        return stop_process(self.proc, (5.0, 3.0, 3.0))


@pytest.fixture
def peer_factory(tmp_path: Path) -> Iterator[Callable[[str, str], Peer]]:
    """Starts peers; every one is stopped afterwards, even when the test fails."""
    peers: list[Peer] = []

    def start(mode: str, prefix: str) -> Peer:
        peers.append(Peer(mode, prefix, tmp_path))
        return peers[-1]

    try:
        yield start
    finally:
        for peer in peers:
            peer.stop()


@pytest.fixture
def node(ros_context: Context) -> Iterator[tuple[Node, SingleThreadedExecutor]]:
    """A node and an executor in this test's own Context."""
    import rclpy

    node = rclpy.create_node(f'dlp_test_{os.getpid()}', context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    try:
        yield node, executor
    finally:
        executor.shutdown()
        node.destroy_node()


def unique_prefix() -> str:
    """A topic namespace no other test or run uses."""
    return f'/dlp_test_{os.getpid()}_{uuid.uuid4().hex[:8]}'


def subscribe_all(node: Node, prefix: str) -> dict[str, list[Any]]:
    """Subscribe to ``<prefix>/{particles,prediction}``; returns the lists messages land in."""
    received: dict[str, list[Any]] = {topic: [] for topic in TYPES}
    for topic, msg_type in TYPES.items():
        node.create_subscription(msg_type, f'{prefix}/{topic}', received[topic].append, QOS)
    return received


def spin_until_received(
    executor: SingleThreadedExecutor,
    received: dict[str, list[Any]],
    expected: dict[str, list[Any]],
    peer: Peer,
) -> None:
    """Spin until ``received`` has as many messages per topic as ``expected``, or fail."""
    deadline = time.monotonic() + RECEIVE_TIMEOUT_S
    while any(len(received[t]) < len(expected[t]) for t in expected):
        if time.monotonic() > deadline:
            counts = {t: f'{len(received[t])}/{len(expected[t])}' for t in expected}
            raise AssertionError(
                f'timed out after {RECEIVE_TIMEOUT_S} s; received {counts} '
                f'(ROS_DOMAIN_ID={os.environ.get("ROS_DOMAIN_ID")}): {peer.report()}'
            )
        peer.assert_alive()
        executor.spin_once(timeout_sec=0.05)
    # A little longer, so that duplicates would show up as extra messages.
    end = time.monotonic() + 0.2
    while time.monotonic() < end:
        executor.spin_once(timeout_sec=0.05)


def assert_received_equal(
    ros_msgs: type[RosMsgKit], received: dict[str, list[Any]], expected: dict[str, list[Any]]
) -> None:
    """Same number of messages per topic, in order, each equal field for field."""
    for topic, msgs in expected.items():
        assert len(received[topic]) == len(msgs), f'{topic}: {len(received[topic])} messages'
        for i, (got, want) in enumerate(zip(received[topic], msgs, strict=True)):
            assert isinstance(got, TYPES[topic])
            ros_msgs.assert_equal(got, want, f'{topic}[{i}]')


def test_messages_from_peer_process_arrive_field_for_field(
    ros_msgs: type[RosMsgKit],
    node: tuple[Node, SingleThreadedExecutor],
    peer_factory: Callable[[str, str], Peer],
) -> None:
    """ParticleArray and Prediction published by another process arrive unchanged, in order.

    Proves that the colcon-built type support round-trips every field through Fast DDS between
    processes: nested headers, particle sequences with float32 edge values (inf, -0.0,
    subnormal), empty sequences, a ~150 kB Prediction with rgb8 frames (fragmented), and that no
    message is dropped or duplicated with reliable + transient_local QoS.
    """
    ros_node, executor = node
    prefix = unique_prefix()
    expected = ros_msgs.peer_payload()
    received = subscribe_all(ros_node, prefix)
    peer = peer_factory('publish', prefix)

    spin_until_received(executor, received, expected, peer)

    assert_received_equal(ros_msgs, received, expected)
    assert peer.stop() == 0, f'the peer did not exit cleanly on SIGINT: {peer.report()}'


def test_messages_echoed_by_peer_process_come_back_field_for_field(
    ros_msgs: type[RosMsgKit],
    node: tuple[Node, SingleThreadedExecutor],
    peer_factory: Callable[[str, str], Peer],
) -> None:
    """Messages published here, received and republished by another process, come back equal.

    Proves the other direction too (this process serialises, the peer deserialises) and that a
    message the peer's rclpy rebuilt from the wire serialises back to the same values.
    """
    ros_node, executor = node
    prefix = unique_prefix()
    expected = ros_msgs.peer_payload()
    for topic, msgs in expected.items():
        pub = ros_node.create_publisher(TYPES[topic], f'{prefix}/in/{topic}', QOS)
        for msg in msgs:
            pub.publish(msg)
    received = subscribe_all(ros_node, f'{prefix}/out')
    peer = peer_factory('echo', prefix)

    spin_until_received(executor, received, expected, peer)

    assert_received_equal(ros_msgs, received, expected)
    assert peer.stop() == 0, f'the peer did not exit cleanly on SIGINT: {peer.report()}'
