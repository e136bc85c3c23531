"""The perception node's outputs and parameters over real DDS (the installed node in a process of
its own, the tiny bundles): output names resolved in the node's namespace, two nodes in two
namespaces, the predicted frame on dlp/prediction/image, the RViz markers, ~/predict's frames
field, parameters changed at run time (taken, or refused with a reason), and the exit of a node
whose start-up configure fails.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip('rclpy')
pytest.importorskip('dlp_ros.srv')
pytest.importorskip('visualization_msgs.msg')

from rcl_interfaces.srv import GetParameters, SetParameters  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from visualization_msgs.msg import Marker, MarkerArray  # noqa: E402

from dlp_ros.conversions import stamp_ns  # noqa: E402
from dlp_ros.markers import SPHERES_NS  # noqa: E402
from dlp_ros.srv import Predict  # noqa: E402

pytestmark = pytest.mark.ros


import node_harness as harness  # noqa: E402  (tests/ros is on sys.path: no __init__.py)

NodeProcess, Client = harness.NodeProcess, harness.Client
raw_image, unique_frame_id = harness.raw_image, harness.unique_frame_id
send_processed = harness.send_processed
S, DT_NS, HORIZON = 64, 50_000_000, 4  # the tiny bundle's size and dt; the node's horizon
T0_NS = 1_732_000_000_987_654_321
TIMEOUT_S = harness.TIMEOUT_S


def set_parameter(client: Client, node: NodeProcess, name: str, value: object) -> Any:
    """SetParameters on the node: its SetParametersResult (successful, reason)."""
    request = SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()])
    return client.call(SetParameters, f'{node.full_name}/set_parameters', request).results[0]


def get_parameter(client: Client, node: NodeProcess, name: str) -> Any:
    request = GetParameters.Request(names=[name])
    return client.call(GetParameters, f'{node.full_name}/get_parameters', request).values[0]


def predict(client: Client, node: NodeProcess, **fields: Any) -> Any:
    answer = client.call(Predict, f'{node.full_name}/predict', Predict.Request(**fields))
    return answer


def send_until(client: Client, pub: Any, msg: Any, done: Callable[[], bool], what: str) -> None:
    """Publish the camera frame ``msg`` until ``done()``, again after each second without it: a
    frame may come too soon after the one before for a prediction of its own (prediction_rate),
    or be lost on the way."""
    deadline = time.monotonic() + TIMEOUT_S
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f'timed out after {TIMEOUT_S} s waiting for {what}; '
                                 f'{client.target.report()}')  # fmt: skip
        pub.publish(msg)
        client.spin_until_or(done, 1.0)


def fresh_prediction(client: Client, pub: Any, frame_id: str, stamp: int, k: int = 0) -> Any:
    """The first prediction from the camera frame stamped ``stamp`` (sent now, after the change
    under test, so the prediction was made after it)."""

    def mine() -> list[Any]:
        return [p for p in client.predictions_of(frame_id) if stamp_ns(p.header) == stamp]

    send_until(client, pub, raw_image(stamp, frame_id, k), lambda: bool(mine()),
               f'a prediction from the frame stamped {stamp}')  # fmt: skip
    return mine()[0]


@pytest.fixture(scope='class')
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp('output_logs')


@pytest.fixture(scope='class')
def ns_node(
    log_dir: Path, ros_domain_id: int, bundle_plain: Path
) -> Iterator[tuple[NodeProcess, Client]]:
    """An active node in a namespace of its own (outputs not remapped: resolved there),
    predictions at up to 100 Hz, no frames in dlp/prediction."""
    params = {'model_bundle': str(bundle_plain), 'threads': 1, 'horizon': HORIZON,
              'prediction_rate': 100.0, 'frames_rate': 0.0}  # fmt: skip
    started = harness.started(log_dir, ros_domain_id, params, namespaced=True)
    node, client = next(started)
    client.wait_outputs()
    yield node, client
    next(started, None)


class TestNamespacedOutputs:
    def test_outputs_resolve_in_the_node_namespace(
        self, ns_node: tuple[NodeProcess, Client]
    ) -> None:
        node, client = ns_node
        frame_id = unique_frame_id()
        send_processed(client, client.camera(), [raw_image(T0_NS, frame_id)])
        topics = dict(client.node.get_topic_names_and_types())
        prefix = node.prefix
        assert topics[f'{prefix}/dlp/particles'] == ['dlp_ros/msg/ParticleArray']
        assert topics[f'{prefix}/dlp/prediction'] == ['dlp_ros/msg/Prediction']
        assert topics[f'{prefix}/dlp/prediction/image'] == ['sensor_msgs/msg/Image']
        assert topics[f'{prefix}/dlp/markers'] == ['visualization_msgs/msg/MarkerArray']
        assert client.particles_of(frame_id), 'no particles on the namespaced topic'

        def names() -> list[str]:
            graph = client.node.get_node_names_and_namespaces()
            return [f'{ns.rstrip("/")}/{n}' for n, ns in graph]

        # node names are discovered apart from (and can come after) the topics' endpoints
        deadline = time.monotonic() + 20.0
        while f'{prefix}/{node.name}' not in names() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert f'{prefix}/{node.name}' in names(), names()

    def test_predict_frames_field(self, ns_node: tuple[NodeProcess, Client]) -> None:
        """FRAMES_PARAMETER (the default) follows publish_frames (off here); FRAMES_ON and
        FRAMES_OFF decide whatever it says; another value is refused."""
        node, client = ns_node
        send_processed(client, client.camera(), [raw_image(T0_NS + 1, unique_frame_id())])
        default = predict(client, node, horizon=3)
        assert default.success and len(default.prediction.steps) == 3, default.message
        assert default.prediction.frames == []
        on = predict(client, node, horizon=3, frames=Predict.Request.FRAMES_ON)
        assert on.success and len(on.prediction.frames) == 3, on.message
        assert all((f.width, f.height, f.encoding) == (S, S, 'rgb8') for f in on.prediction.frames)
        assert [f.header for f in on.prediction.frames] == [s.header for s in on.prediction.steps]
        assert set_parameter(client, node, 'publish_frames', True).successful
        try:
            taken = predict(client, node, horizon=2)
            assert len(taken.prediction.frames) == 2, 'FRAMES_PARAMETER ignores publish_frames'
            off = predict(client, node, horizon=2, frames=Predict.Request.FRAMES_OFF)
            assert off.success and off.prediction.frames == [], off.message
        finally:
            assert set_parameter(client, node, 'publish_frames', False).successful
        bad = predict(client, node, horizon=2, frames=7)
        assert not bad.success and 'frames must be' in bad.message and 'got 7' in bad.message

    def test_live_parameters_take_effect_in_the_next_prediction(
        self, ns_node: tuple[NodeProcess, Client]
    ) -> None:
        node, client = ns_node
        frame_id = unique_frame_id()
        pub = client.camera()
        assert len(fresh_prediction(client, pub, frame_id, T0_NS + 10).steps) == HORIZON
        result = set_parameter(client, node, 'horizon', 3)
        assert result.successful, result.reason
        changed = fresh_prediction(client, pub, frame_id, T0_NS + 20, 1)
        assert len(changed.steps) == 3 and changed.frames == []
        assert get_parameter(client, node, 'horizon').integer_value == 3
        assert set_parameter(client, node, 'publish_frames', True).successful
        assert len(fresh_prediction(client, pub, frame_id, T0_NS + 30, 2).frames) == 3
        assert set_parameter(client, node, 'publish_frames', False).successful
        assert set_parameter(client, node, 'horizon', HORIZON).successful
        assert 'parameters changed: horizon = 3 (live)' in node.log()

    def test_parameters_read_at_configure_or_start_up_are_refused_with_a_reason(
        self, ns_node: tuple[NodeProcess, Client]
    ) -> None:
        node, client = ns_node
        before = get_parameter(client, node, 'model_bundle').string_value
        refused = set_parameter(client, node, 'model_bundle', '/elsewhere')
        assert not refused.successful
        assert 'model_bundle is read at configure' in refused.reason, refused.reason
        assert 'clean up' in refused.reason
        assert get_parameter(client, node, 'model_bundle').string_value == before
        transport = set_parameter(client, node, 'image_transport', 'compressed')
        assert not transport.successful and 'read at configure' in transport.reason
        for name in ('autostart', 'exit_on_configure_failure'):
            result = set_parameter(client, node, name, False)
            assert not result.successful and result.reason, name
        bad = set_parameter(client, node, 'horizon', 0)
        assert not bad.successful and 'horizon out of range' in bad.reason, bad.reason
        node.assert_alive()

    def test_predicted_frame_on_the_image_topic(self, ns_node: tuple[NodeProcess, Client]) -> None:
        """The chosen step's frame as sensor_msgs/Image (the last by default; the step set at run
        time), stamped t + k dt, while publish_frames is off."""
        node, client = ns_node
        images: list[Image] = []
        sub = client.node.create_subscription(
            Image, node.topics['prediction_image'], images.append, 10
        )
        try:
            client.spin_until(lambda: sub.get_publisher_count() > 0, 'the image publisher')
            frame_id = unique_frame_id()
            pub = client.camera()
            for stamp, step, k in ((T0_NS + 100, 0, HORIZON), (T0_NS + 200, 2, 2)):
                assert set_parameter(client, node, 'prediction_image_step', step).successful

                def mine(s: int = stamp) -> list[Image]:  # the images of the frame stamped s
                    after = [(stamp_ns(i.header) - s, i) for i in images
                             if i.header.frame_id == frame_id]  # fmt: skip
                    return [i for d, i in after if d > 0 and d % DT_NS == 0]

                send_until(client, pub, raw_image(stamp, frame_id, k), lambda: bool(mine()),
                           f'a predicted image of the frame {stamp}')  # fmt: skip
                image = mine()[0]
                assert stamp_ns(image.header) == stamp + k * DT_NS, (step, k)
                assert (image.width, image.height, image.encoding) == (S, S, 'rgb8')
                assert len(image.data) == S * S * 3
        finally:
            set_parameter(client, node, 'prediction_image_step', 0)
            client.node.destroy_subscription(sub)

    def test_markers_of_the_on_particles_in_the_camera_frame(
        self, ns_node: tuple[NodeProcess, Client]
    ) -> None:
        node, client = ns_node
        received: list[MarkerArray] = []
        sub = client.node.create_subscription(
            MarkerArray, node.topics['markers'], received.append, 10
        )
        try:
            client.spin_until(lambda: sub.get_publisher_count() > 0, 'the markers publisher')
            frame_id = unique_frame_id()
            send_processed(client, client.camera(), [raw_image(T0_NS + 300, frame_id, 3)])

            def mine() -> list[MarkerArray]:
                return [m for m in received if m.markers[0].header.frame_id == frame_id]

            client.spin_until(lambda: mine(), 'markers of the frame')
            markers = mine()[0].markers
            particles = client.particles_of(frame_id)[-1]
            assert all(m.header == particles.header for m in markers)
            assert markers[0].action == Marker.DELETEALL
            spheres = [m.id for m in markers if m.ns == SPHERES_NS]
            assert spheres == [p.id for p in particles.particles if p.on]
            assert len(markers) == 1 + 2 * len(spheres)
        finally:
            client.node.destroy_subscription(sub)


def test_two_nodes_in_two_namespaces_do_not_collide(
    tmp_path: Path, ros_domain_id: int, bundle_plain: Path
) -> None:
    """Each node's particles come on its own namespace's dlp/particles, from its own camera."""
    params = {'model_bundle': str(bundle_plain), 'threads': 1, 'prediction_rate': 0.0}
    first = harness.started(tmp_path, ros_domain_id, params, namespaced=True)
    second = harness.started(tmp_path, ros_domain_id, params, namespaced=True)
    (node_a, client_a), (node_b, client_b) = next(first), next(second)
    try:
        assert node_a.topics['particles'] != node_b.topics['particles']
        assert node_a.topics['particles'].endswith('/dlp/particles')
        frame_a, frame_b = unique_frame_id(), unique_frame_id()
        send_processed(client_a, client_a.camera(), [raw_image(T0_NS, frame_a)])
        send_processed(client_b, client_b.camera(), [raw_image(T0_NS, frame_b)])
        client_a.spin_for(0.5)
        client_b.spin_for(0.5)
        assert client_a.particles_of(frame_b) == [] and client_b.particles_of(frame_a) == []
        assert client_a.particles_of(frame_a) and client_b.particles_of(frame_b)
    finally:
        next(second, None)
        next(first, None)


def test_a_missing_bundle_ends_the_process_with_status_2(tmp_path: Path) -> None:
    """autostart + exit_on_configure_failure (the defaults): a supervisor sees the failure."""
    missing = tmp_path / 'no_such_bundle'
    node = NodeProcess(tmp_path, {'model_bundle': str(missing), 'threads': 1})
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while node.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        code = node.proc.poll()
        log = node.log()
        assert code == 2, f'exit status {code}; {node.report()}'
        assert f"model_bundle '{missing}' is not a directory" in log, log
        assert 'configure failed at start-up' in log and 'exit_on_configure_failure' in log, log
    finally:
        node.stop()
