"""Peer process for test_messages_dds.py: real rclpy in a process of its own.

Modes:
    publish: publish ``conftest.peer_payload()`` on ``<prefix>/particles`` and
        ``<prefix>/prediction``, then spin until SIGINT.
    echo: republish every ParticleArray / Prediction received on ``<prefix>/in/<topic>`` on
        ``<prefix>/out/<topic>``, until SIGINT.

All endpoints are reliable + transient_local with depth ``DEPTH``, so a subscriber that matches
late still gets every message. Prints ``READY`` on stdout once its endpoints exist (and, in
publish mode, the payload has been published). Exits 0 on SIGINT (or after ``--lifetime``
seconds, so it never outlives a killed test run), 1 on an error.

Usage: python peer_publisher.py {publish,echo} --prefix /dlp_test_123 [--lifetime 60]
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import conftest  # noqa: E402  (the message builders shared with the tests)

DEPTH = 10


def qos() -> object:
    """Reliable, transient_local, keep-last DEPTH: the QoS of every endpoint in these tests."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=DEPTH,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the peer; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('mode', choices=('publish', 'echo'))
    parser.add_argument('--prefix', required=True, help='topic namespace, e.g. /dlp_test_123')
    parser.add_argument('--lifetime', type=float, default=60.0, help='exit after this [s]')
    args = parser.parse_args(argv)

    # A parent that ignores SIGINT (e.g. started with & from a script) would pass SIG_IGN on.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    from dlp_ros.msg import ParticleArray, Prediction

    types = {'particles': ParticleArray, 'prediction': Prediction}
    # rclpy's signal handlers would shut the context down from a thread of their own, racing
    # destroy_node below (a SIGSEGV now and then): SIGINT only raises KeyboardInterrupt here
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node('dlp_test_peer')
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        if args.mode == 'publish':
            payload = conftest.peer_payload()
            for topic, msgs in payload.items():
                pub = node.create_publisher(types[topic], f'{args.prefix}/{topic}', qos())
                for msg in msgs:
                    pub.publish(msg)
        else:
            for topic, msg_type in types.items():
                pub = node.create_publisher(msg_type, f'{args.prefix}/out/{topic}', qos())
                node.create_subscription(msg_type, f'{args.prefix}/in/{topic}', pub.publish, qos())
        print('READY', flush=True)
        deadline = time.monotonic() + args.lifetime
        while time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
        print(f'lifetime of {args.lifetime} s is over', file=sys.stderr)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
