"""The perception node in a process of its own and an rclpy client that talks to it, for the
node tests (test_node.py, test_pipeline_parity.py).

Loaded by the test modules from this file (``load_harness`` in each), not imported by name, so
that it does not depend on pytest's import mode. Everything here needs rclpy and the built
dlp_ros messages; the test modules skip themselves first where they are missing.
"""

from __future__ import annotations

import array
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.srv import ChangeState
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from dlp_ros import demo
from dlp_ros.conversions import stamp_ns
from dlp_ros.errors import DlpError
from dlp_ros.image_codec import encode_compressed
from dlp_ros.msg import ParticleArray, Prediction
from dlp_ros.service_call import call_service

WIDTH, HEIGHT = 64, 48  # camera frames: not square, not the model's size
TIMEOUT_S = 20.0


# --- the node process ----------------------------------------------------------------------------
def node_executable() -> Path:
    """lib/dlp_ros/perception_node of the colcon install."""
    from ament_index_python.packages import get_package_prefix

    path = Path(get_package_prefix('dlp_ros')) / 'lib' / 'dlp_ros' / 'perception_node'
    assert os.access(path, os.X_OK), f'{path} is missing or not executable: rebuild with colcon'
    return path


class NodeProcess:
    """The installed perception node (:class:`dlp_ros.demo.NodeProcess` running
    ``lib/dlp_ros/perception_node``), its topics under a unique prefix: remapped there from
    /dlp/..., or (``namespaced``) resolved there as the node's namespace (``-r __ns:=``)."""

    def __init__(self, log_dir: Path, params: dict[str, object], namespaced: bool = False) -> None:
        tag = f'{os.getpid()}_{uuid.uuid4().hex[:8]}'
        self.name = f'dlp_test_node_{tag}'
        self.prefix = f'/dlp_test_{tag}'
        outputs = f'{self.prefix}/dlp' if namespaced else self.prefix
        self.full_name = f'{self.prefix}/{self.name}' if namespaced else f'/{self.name}'
        self.topics = {
            'image': f'{self.prefix}/image',
            'particles': f'{outputs}/particles',
            'prediction': f'{outputs}/prediction',
            'prediction_image': f'{outputs}/prediction/image',
            'markers': f'{outputs}/markers',
            'diagnostics': f'{self.prefix}/diagnostics',
            'overlay': f'{self.full_name}/overlay',
            'action': f'{self.prefix}/cmd',
        }
        remaps = {'__node': self.name, 'image': self.topics['image']}
        if namespaced:
            remaps['__ns'] = self.prefix
        else:
            for name in ('particles', 'prediction', 'prediction/image', 'markers'):
                remaps[f'/dlp/{name}'] = f'{self.prefix}/{name}'
            self.topics['prediction_image'] = f'{self.prefix}/prediction/image'
            self.topics['markers'] = f'{self.prefix}/markers'
        remaps['/diagnostics'] = self.topics['diagnostics']
        # '{prefix}' in a string: this node's prefix
        params = {
            k: v.replace('{prefix}', self.prefix) if isinstance(v, str) else v
            for k, v in params.items()
        }
        self.log_path = log_dir / f'{self.name}.log'
        env = {**os.environ, 'PYTHONUNBUFFERED': '1'}
        self._process = demo.NodeProcess(
            params, remaps, env, self.log_path, command=[str(node_executable())]
        )
        self.proc = self._process.proc

    def log(self) -> str:
        return self.log_path.read_text(errors='replace')

    def report(self) -> str:
        status = self.proc.poll()
        state = 'running' if status is None else f'exited with {status}'
        return f'node {self.name} (pid {self.proc.pid}) {state}\n--- node log ---\n{self.log()}'

    def assert_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f'the node process died: {self.report()}')

    def stop(self) -> int | None:
        """SIGINT, then SIGTERM, then SIGKILL; returns the exit status."""
        return self._process.stop()


# --- the test side -------------------------------------------------------------------------------
class Client:
    """An rclpy node of this process (own Context) talking to one NodeProcess."""

    def __init__(self, domain_id: int, target: NodeProcess) -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.signals import SignalHandlerOptions

        self.target = target
        self.context = Context()
        rclpy.init(
            context=self.context,
            domain_id=domain_id,
            signal_handler_options=SignalHandlerOptions.NO,
        )
        self.node = rclpy.create_node(
            f'dlp_test_client_{uuid.uuid4().hex[:8]}', context=self.context
        )
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.probes_sent = 0  # publishes of the last camera()'s probe frame
        self.particles: list[ParticleArray] = []
        self.predictions: list[Prediction] = []
        self.diagnostics: list[DiagnosticArray] = []
        self._subs = [
            self.node.create_subscription(ParticleArray, target.topics['particles'],
                                          self.particles.append, 50),
            self.node.create_subscription(Prediction, target.topics['prediction'],
                                          self.predictions.append, 50),
            self.node.create_subscription(DiagnosticArray, target.topics['diagnostics'],
                                          self.diagnostics.append, 50),
        ]  # fmt: skip

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()

    def spin_until(self, done: Callable[[], bool], what: str, timeout: float = TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f'timed out after {timeout} s waiting for {what}; '
                                     f'{self.target.report()}')  # fmt: skip
            self.target.assert_alive()
            self.executor.spin_once(timeout_sec=0.02)

    def spin_until_or(self, done: Callable[[], bool], seconds: float) -> None:
        """Spin until ``done()`` or ``seconds`` have passed."""
        end = time.monotonic() + seconds
        while not done() and time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.02)

    def spin_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.02)

    def camera(self, compressed: bool = False, best_effort: bool = False) -> Any:
        """A camera publisher matched with the node's subscription on both sides (compressed:
        on ``<image>/compressed``, the node's topic with image_transport=compressed).

        The publisher seeing the subscription is not enough: the node's reader may match the
        new writer later and silently discard what arrives before. A probe frame (a frame id
        of its own) is sent, and again after each second, until its particles come back.
        """
        qos = qos_profile_sensor_data if best_effort else 10
        topic = self.target.topics['image'] + ('/compressed' if compressed else '')
        pub = self.node.create_publisher(CompressedImage if compressed else Image, topic, qos)
        self.spin_until(lambda: pub.get_subscription_count() > 0, 'the node to subscribe')
        probe_id, stamp = f'probe_{uuid.uuid4().hex[:8]}', time.time_ns()
        probe = jpeg_image(stamp, probe_id) if compressed else raw_image(stamp, probe_id)
        self.probes_sent = send_processed(self, pub, [probe])
        return pub

    def wait_outputs(self) -> None:
        """Until the node's particle and prediction publishers match ours (it is active)."""
        self.spin_until(
            lambda: all(s.get_publisher_count() > 0 for s in self._subs[:2]),
            'the node to publish particles and predictions',
        )

    def call(self, srv_type: Any, service: str, request: Any, timeout: float = TIMEOUT_S) -> Any:
        """The answer of ``request``; a lifecycle transition is probed first (an unknown label,
        refused without effect), any other request is idempotent (see dlp_ros.service_call)."""
        client = self.node.create_client(srv_type, service)
        probe = None
        if srv_type is ChangeState:
            probe = ChangeState.Request()
            probe.transition.label = 'probe_unknown_transition'
        try:
            return call_service(client, request, self.poll, timeout, probe=probe)
        except DlpError as exc:
            raise AssertionError(f'{exc}; {self.target.report()}') from exc
        finally:
            self.node.destroy_client(client)

    def poll(self, ready: Callable[[], bool], seconds: float) -> bool:
        """Spin until ``ready()`` (True) or ``seconds`` have passed (False); the node alive."""
        end = time.monotonic() + seconds
        while not ready():
            self.target.assert_alive()
            if time.monotonic() >= end:
                return False
            self.executor.spin_once(timeout_sec=0.02)
        return True

    def particles_of(self, frame_id: str) -> list[ParticleArray]:
        return [m for m in self.particles if m.header.frame_id == frame_id]

    def predictions_of(self, frame_id: str) -> list[Prediction]:
        return [m for m in self.predictions if m.header.frame_id == frame_id]

    def latest_diagnostics(self) -> dict[str, str]:
        """Key/values of the node's latest diagnostics status ({} if none yet)."""
        if not self.diagnostics:
            return {}
        status = self.diagnostics[-1].status[0]
        return {'level': str(status.level[0] if isinstance(status.level, bytes) else status.level),
                'message': status.message,
                **{kv.key: kv.value for kv in status.values}}  # fmt: skip


def header(stamp: int, frame_id: str) -> Header:
    msg = Header(frame_id=frame_id)
    msg.stamp.sec, msg.stamp.nanosec = divmod(stamp, 1_000_000_000)
    return msg


def rgb_frame(k: int, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """(H, W, 3) uint8: a gradient and a bright square that moves with ``k``."""
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([xx * 4 % 256, yy * 5 % 256, np.full_like(xx, 60)], axis=-1).astype(np.uint8)
    x0, y0 = (4 + 3 * k) % (width - 12), (3 + 2 * k) % (height - 12)
    rgb[y0 : y0 + 12, x0 : x0 + 12] = (250, 240, 20)
    return rgb


def raw_image(stamp: int, frame_id: str, k: int = 0, **fields: Any) -> Image:
    rgb = rgb_frame(k)
    msg = Image(header=header(stamp, frame_id), height=HEIGHT, width=WIDTH, encoding='rgb8',
                step=WIDTH * 3, data=array.array('B', rgb.tobytes()))  # fmt: skip
    for key, value in fields.items():
        setattr(msg, key, value)
    return msg


def jpeg_image(stamp: int, frame_id: str, k: int = 0, width: int = 80, height: int = 60) -> Any:
    data = encode_compressed(rgb_frame(k, width, height), 'jpeg')
    return CompressedImage(header=header(stamp, frame_id), format='jpeg', data=data)


def send(client: Client, pub: Any, msgs: list[Any], period: float = 0.05) -> None:
    """Publish ``msgs`` ``period`` s apart, spinning in between."""
    for msg in msgs:
        pub.publish(msg)
        client.spin_for(period)


def send_processed(client: Client, pub: Any, msgs: list[Any], timeout: float = TIMEOUT_S) -> int:
    """Publish camera ``msgs`` one at a time, each once the node has published the particles of
    the one before: none is replaced in the node's one-frame mailbox, however busy the machine.
    A frame lost on the way (best effort, or sent before the node's side of the match is up) is
    sent again after a second. Returns how many times it published."""
    published = 0
    for msg in msgs:
        frame_id, stamp = msg.header.frame_id, stamp_ns(msg.header)
        deadline = time.monotonic() + timeout
        while not any(stamp_ns(m.header) == stamp for m in client.particles_of(frame_id)):
            if time.monotonic() > deadline:
                what = f'the particles of the frame stamped {stamp}'
                raise AssertionError(f'timed out after {timeout} s waiting for {what}; '
                                     f'{client.target.report()}')  # fmt: skip
            pub.publish(msg)
            published += 1
            client.spin_until_or(
                lambda f=frame_id, t=stamp: any(
                    stamp_ns(m.header) == t for m in client.particles_of(f)
                ),
                1.0,
            )
    return published


def unique_frame_id() -> str:
    return f'cam_{uuid.uuid4().hex[:8]}'


def started(
    log_dir: Path, ros_domain_id: int, params: dict[str, object], namespaced: bool = False
) -> Iterator[tuple[NodeProcess, Client]]:
    """A node process with ``params`` and its client; at the end both are closed and the node
    must exit 0 on SIGINT (use with ``next``: the first gives the pair, the second stops)."""
    node = NodeProcess(log_dir, params, namespaced)
    client = Client(ros_domain_id, node)
    try:
        yield node, client
    finally:
        client.close()
        code = node.stop()
        assert code == 0, f'the node did not exit cleanly on SIGINT: {node.report()}'
