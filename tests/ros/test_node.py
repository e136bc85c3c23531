"""The perception node end to end: the installed ``lib/dlp_ros/perception_node`` in a process of
its own, a bundle exported from tiny random-weight models, real rclpy + Fast DDS on this run's
domain (loopback only).

Every node gets a unique name and its topics are remapped under a unique prefix
(``-r /dlp/particles:=<prefix>/particles`` ...), so runs that share a domain id do not mix; each
test also uses its own ``frame_id`` and stamps, and looks only at messages that carry them.
"""

from __future__ import annotations

import array
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip('rclpy')
pytest.importorskip('dlp_ros.srv')

from geometry_msgs.msg import TwistStamped  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402

from dlp_ros.conversions import stamp_ns  # noqa: E402
from dlp_ros.srv import Predict, Render  # noqa: E402

pytestmark = pytest.mark.ros


import node_harness as harness  # noqa: E402  (tests/ros is on sys.path: no __init__.py)

NodeProcess, Client, _started = harness.NodeProcess, harness.Client, harness.started
raw_image, jpeg_image, unique_frame_id = (
    harness.raw_image,
    harness.jpeg_image,
    harness.unique_frame_id,
)
send, send_processed = harness.send, harness.send_processed
K, F, FB, S, H = 4, 4, 4, 64, 2  # the tiny bundle (tests/ros/tiny_bundle.py)
DT = 0.05
DT_NS = 50_000_000
T0_NS = 1_732_000_000_987_654_321  # non-zero nanoseconds: k * dt carries into the seconds
WIDTH, HEIGHT = harness.WIDTH, harness.HEIGHT  # camera frames: not square, not the model's size
TIMEOUT_S = harness.TIMEOUT_S


def int_value(client: Client, key: str) -> int:
    return int(client.latest_diagnostics().get(key, '0'))


def fresh_diagnostics(client: Client) -> dict[str, str]:
    """The node's diagnostics from a message published after this call (the node's counters
    then include everything that reached it before)."""
    seen = len(client.diagnostics)
    client.spin_until(lambda: len(client.diagnostics) >= seen + 2, 'two new diagnostics messages')
    return client.latest_diagnostics()


def send_bad_counted(client: Client, pub: Any, msg: Any, reason: str) -> None:
    """Publish a bad frame until /diagnostics counts one more bad frame (a frame lost on the
    way is sent again after two diagnostics periods), then check the reason it gives."""
    before = int(fresh_diagnostics(client)['bad_frames'])
    deadline = time.monotonic() + TIMEOUT_S
    while int_value(client, 'bad_frames') <= before:
        if time.monotonic() > deadline:
            raise AssertionError(f'timed out after {TIMEOUT_S} s waiting for bad frame '
                                 f'"{reason}" to be counted; {client.target.report()}')  # noqa: E501  # fmt: skip
        pub.publish(msg)
        client.spin_until_or(lambda: int_value(client, 'bad_frames') > before, 2.5)
    assert reason in client.latest_diagnostics()['last_bad_frame'], client.latest_diagnostics()


def flood(pub: Any, msgs: list[Any], rate: float) -> None:
    """Publish ``msgs`` at ``rate`` Hz (busy-waiting between them, not spinning)."""
    start = time.monotonic()
    for i, msg in enumerate(msgs):
        while time.monotonic() < start + i / rate:
            pass
        pub.publish(msg)


def accounted(before: dict[str, str], after: dict[str, str]) -> dict[str, int]:
    """The change of the node's frame counters between two diagnostics messages."""
    keys = ('frames_received', 'frames_lost_dds', 'frames_processed', 'frames_dropped',
            'bad_frames', 'processing_errors')  # fmt: skip
    return {k: int(after[k]) - int(before[k]) for k in keys}


# --- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope='class')
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp('node_logs')


@pytest.fixture(scope='class')
def raw_node(
    log_dir: Path, ros_domain_id: int, bundle_actions: Path
) -> Iterator[tuple[NodeProcess, Client]]:
    """Active node: raw input, a model with actions, predictions with frames at up to 100 Hz."""
    params = {
        'model_bundle': str(bundle_actions),
        'horizon': 4,
        'prediction_rate': 100.0,
        'publish_frames': True,
        'frames_rate': 0.0,
        'ood_every_n': 1,
        'threads': 1,
        'action_topic': '{prefix}/cmd',
    }
    started = _started(log_dir, ros_domain_id, params)
    node, client = next(started)
    client.wait_outputs()
    yield node, client
    next(started, None)


@pytest.fixture(scope='class')
def compressed_node(
    log_dir: Path, ros_domain_id: int, bundle_plain: Path
) -> Iterator[tuple[NodeProcess, Client]]:
    """Active node: CompressedImage input, a model without actions."""
    params = {'model_bundle': str(bundle_plain), 'image_transport': 'compressed', 'threads': 1,
              'prediction_rate': 100.0, 'horizon': 3}  # fmt: skip
    started = _started(log_dir, ros_domain_id, params)
    node, client = next(started)
    client.wait_outputs()
    yield node, client
    next(started, None)


# --- raw input -----------------------------------------------------------------------------------
class TestRawInput:
    def test_particles_carry_the_input_header_and_its_pixel_coordinates(
        self, raw_node: tuple[NodeProcess, Client]
    ) -> None:
        node, client = raw_node
        frame_id = unique_frame_id()
        stamps = [T0_NS + i * 33_333_333 for i in range(5)]
        pub = client.camera()
        send_processed(client, pub, [raw_image(s, frame_id, i) for i, s in enumerate(stamps)])
        got = client.particles_of(frame_id)
        assert sorted({stamp_ns(m.header) for m in got}) == stamps
        assert [stamp_ns(m.header) for m in got] == sorted(stamp_ns(m.header) for m in got)
        for msg in got:
            assert stamp_ns(msg.header) in stamps, 'the header stamp was not copied unchanged'
            assert (msg.image_width, msg.image_height) == (WIDTH, HEIGHT)
            assert [p.id for p in msg.particles] == list(range(K))
            uv = np.array([[p.u, p.v] for p in msg.particles])
            assert np.all(np.isfinite(uv))
            assert np.all(np.abs(uv - [WIDTH / 2, HEIGHT / 2]) <= [WIDTH, HEIGHT]), uv
            assert all(len(p.features) == F and p.u_std > 0 and p.scale > 0 for p in msg.particles)
            assert len(msg.background_features) == FB
            assert msg.decode_ms > 0 and msg.encode_ms > 0

    def test_predictions_are_stamped_t_plus_k_dt_with_frames(
        self, raw_node: tuple[NodeProcess, Client]
    ) -> None:
        node, client = raw_node
        frame_id = unique_frame_id()
        stamps = [T0_NS + i * 33_333_333 for i in range(4)]
        send(client, client.camera(), [raw_image(s, frame_id, i) for i, s in enumerate(stamps)])
        client.spin_until(lambda: client.predictions_of(frame_id), 'a prediction')
        for pred in client.predictions_of(frame_id):
            t = stamp_ns(pred.header)
            assert t in stamps and pred.dt == pytest.approx(DT)
            assert len(pred.steps) == 4 and len(pred.frames) == 4
            for k, (step, image) in enumerate(zip(pred.steps, pred.frames, strict=True), 1):
                assert stamp_ns(step.header) == t + k * DT_NS, f'step {k}'
                assert step.header == image.header and step.header.frame_id == frame_id
                assert (step.image_width, step.image_height) == (WIDTH, HEIGHT)
                assert len(step.particles) == K
                assert (image.width, image.height, image.encoding) == (S, S, 'rgb8')
                assert len(image.data) == S * S * 3
            assert pred.predict_ms > 0

    def test_predict_service(self, raw_node: tuple[NodeProcess, Client]) -> None:
        node, client = raw_node
        frame_id = unique_frame_id()
        send_processed(
            client, client.camera(), [raw_image(T0_NS + i, frame_id, i) for i in range(3)]
        )
        service = f'/{node.name}/predict'

        answer = client.call(Predict, service, Predict.Request(horizon=3))
        assert answer.success, answer.message
        assert answer.prediction.header.frame_id == frame_id
        assert stamp_ns(answer.prediction.header) == T0_NS + 2
        assert [stamp_ns(s.header) for s in answer.prediction.steps] == [
            T0_NS + 2 + k * DT_NS for k in (1, 2, 3)
        ]
        default = client.call(Predict, service, Predict.Request(horizon=0))
        assert default.success and len(default.prediction.steps) == 4  # the horizon parameter
        actions = np.linspace(-1, 1, (3 + H - 1) * 2).astype(np.float32).tolist()
        given = client.call(Predict, service, Predict.Request(horizon=3, actions=actions))
        assert given.success, given.message
        wrong = client.call(Predict, service, Predict.Request(horizon=3, actions=[0.0] * 5))
        assert not wrong.success and '8 values, got 5' in wrong.message
        node.assert_alive()

    def test_action_topic_commands_drive_the_prediction(
        self, raw_node: tuple[NodeProcess, Client]
    ) -> None:
        """The latest TwistStamped on action_topic is the action of every history frame and is
        held over the horizon: ~/predict without actions equals ~/predict given those actions."""
        node, client = raw_node
        commands = client.node.create_publisher(TwistStamped, node.topics['action'], 10)
        client.spin_until(lambda: commands.get_subscription_count() > 0, 'the action topic')
        command = TwistStamped()
        command.twist.linear.x, command.twist.linear.y = 0.5, -0.25
        send(client, commands, [command] * 3, period=0.05)
        frame_id = unique_frame_id()
        send_processed(
            client, client.camera(), [raw_image(T0_NS + i, frame_id, i) for i in range(3)]
        )
        service, horizon = f'/{node.name}/predict', 3

        def positions(actions: list[float]) -> np.ndarray:
            request = Predict.Request(horizon=horizon, actions=actions)
            answer = client.call(Predict, service, request)
            assert answer.success, answer.message
            return np.array([[[p.u, p.v] for p in s.particles] for s in answer.prediction.steps])

        rows = horizon + H - 1
        own = positions([])
        np.testing.assert_array_equal(own, positions([0.5, -0.25] * rows))
        assert not np.array_equal(own, positions([0.0, 0.0] * rows)), 'actions have no effect'
        client.node.destroy_publisher(commands)

    def test_render_service(self, raw_node: tuple[NodeProcess, Client]) -> None:
        node, client = raw_node
        frame_id = unique_frame_id()
        send_processed(client, client.camera(), [raw_image(T0_NS, frame_id)])
        particles = client.particles_of(frame_id)[-1]
        service = f'/{node.name}/render'
        answer = client.call(Render, service, Render.Request(particles=particles))
        assert answer.success, answer.message
        image = answer.image
        assert (image.width, image.height, image.encoding, image.step) == (S, S, 'rgb8', 3 * S)
        assert len(image.data) == S * S * 3 and image.header == particles.header
        particles.particles[0].features = [0.0] * (F + 1)
        bad = client.call(Render, service, Render.Request(particles=particles))
        assert not bad.success and 'features' in bad.message

    def test_best_effort_camera_publisher(self, raw_node: tuple[NodeProcess, Client]) -> None:
        node, client = raw_node
        frame_id = unique_frame_id()
        pub = client.camera(best_effort=True)
        for i in range(100):  # best effort may lose a frame: send until one comes through
            pub.publish(raw_image(T0_NS + i, frame_id, i))
            client.spin_for(0.05)
            if client.particles_of(frame_id):
                break
        assert client.particles_of(frame_id), node.report()

    def test_overlay_is_published_at_the_input_resolution(
        self, raw_node: tuple[NodeProcess, Client]
    ) -> None:
        node, client = raw_node
        frame_id = unique_frame_id()
        overlays: list[Image] = []
        sub = client.node.create_subscription(Image, node.topics['overlay'], overlays.append, 10)
        try:
            client.spin_until(lambda: sub.get_publisher_count() > 0, 'the overlay publisher')
            pub = client.camera()
            for i in range(100):
                pub.publish(raw_image(T0_NS + i, frame_id, i))
                client.spin_for(0.05)
                if any(o.header.frame_id == frame_id for o in overlays):
                    break
            overlay = next(o for o in overlays if o.header.frame_id == frame_id)
            assert (overlay.width, overlay.height, overlay.encoding) == (WIDTH, HEIGHT, 'rgb8')
            assert len(overlay.data) == WIDTH * HEIGHT * 3
        finally:
            client.node.destroy_subscription(sub)

    def test_bad_frames_are_counted_and_the_next_good_frame_is_processed(
        self, raw_node: tuple[NodeProcess, Client]
    ) -> None:
        node, client = raw_node
        frame_id = unique_frame_id()
        pub = client.camera()
        bad = [
            (raw_image(T0_NS, frame_id, encoding='32FC1'), "unsupported image encoding '32FC1'"),
            (
                raw_image(T0_NS, frame_id, width=0, height=0, step=0, data=array.array('B')),
                'zero size',
            ),
            (raw_image(T0_NS, frame_id, data=array.array('B', bytes(100))), 'truncated'),
            (raw_image(T0_NS, frame_id, step=10), 'smaller than width*channels'),
        ]
        for msg, reason in bad:  # each one awaited until counted, with its reason
            send_bad_counted(client, pub, msg, reason)
        good = T0_NS + 10**9
        send_processed(client, pub, [raw_image(good, frame_id)])
        messages = [d.status[0].message for d in client.diagnostics]
        assert any('bad frames' in m for m in messages), messages
        assert 'bad frame on' in node.log()
        node.assert_alive()

    def test_a_1000_hz_burst_sheds_frames_and_the_node_keeps_up(
        self, raw_node: tuple[NodeProcess, Client]
    ) -> None:
        """More frames than the node can take: fewer are processed than sent, every one is
        accounted for, the node stays responsive and the frame after the burst is processed."""
        node, client = raw_node
        frame_id = unique_frame_id()
        before = fresh_diagnostics(client)
        pub = client.camera()
        flood(pub, [raw_image(T0_NS + i, frame_id, i) for i in range(400)], rate=1000.0)
        last = T0_NS + 10**9
        send_processed(client, pub, [raw_image(last, frame_id)])
        answer = client.call(Predict, f'/{node.name}/predict', Predict.Request(horizon=2))
        assert answer.success, answer.message
        after = fresh_diagnostics(client)
        change = accounted(before, after)
        assert change['frames_processed'] < 400, change
        assert change['frames_lost_dds'] + change['frames_dropped'] > 0, change
        assert float(after['latency_p99_ms']) > 0 and after['provider'], after
        node.assert_alive()

    def test_a_200_hz_flood_is_accounted_for_on_diagnostics(
        self, raw_node: tuple[NodeProcess, Client]
    ) -> None:
        """Received + lost in DDS = sent (within 2 %), and received = processed + dropped in
        the mailbox + bad + failed, at a 200 Hz flood of 1000 frames."""
        node, client = raw_node
        frame_id = unique_frame_id()
        before = fresh_diagnostics(client)
        pub = client.camera()  # a new publisher: its numbers start at 1
        sent = client.probes_sent + 1000
        flood(pub, [raw_image(T0_NS + i, frame_id, i) for i in range(1000)], rate=200.0)
        sent += send_processed(client, pub, [raw_image(T0_NS + 10**9, frame_id)])  # last gap
        after = fresh_diagnostics(client)
        change = accounted(before, after)
        seen = change['frames_received'] + change['frames_lost_dds']
        assert abs(seen - sent) <= 0.02 * sent, (sent, change)
        rest = (change['frames_processed'] + change['frames_dropped'] + change['bad_frames']
                + change['processing_errors'])  # fmt: skip
        assert rest == change['frames_received'], change
        assert float(after['input_rate_hz']) >= float(after['received_rate_hz']), after
        node.assert_alive()


# --- compressed input ----------------------------------------------------------------------------
class TestCompressedInput:
    def test_jpeg_frames_give_particles_and_predictions(
        self, compressed_node: tuple[NodeProcess, Client]
    ) -> None:
        node, client = compressed_node
        frame_id = unique_frame_id()
        stamps = [T0_NS + i * 33_333_333 for i in range(4)]
        pub = client.camera(compressed=True)  # on <image>/compressed, as image_transport names it
        assert pub.topic_name == f'{node.topics["image"]}/compressed'
        send(client, pub, [jpeg_image(s, frame_id, i) for i, s in enumerate(stamps)])
        client.spin_until(lambda: len(client.particles_of(frame_id)) >= 2, 'particles')
        for msg in client.particles_of(frame_id):
            assert stamp_ns(msg.header) in stamps
            assert (msg.image_width, msg.image_height) == (80, 60)
            assert len(msg.particles) == K
        client.spin_until(lambda: client.predictions_of(frame_id), 'a prediction')
        pred = client.predictions_of(frame_id)[-1]
        t = stamp_ns(pred.header)
        assert [stamp_ns(s.header) for s in pred.steps] == [t + k * DT_NS for k in (1, 2, 3)]
        assert pred.frames == []  # publish_frames is off
        answer = client.call(Predict, f'/{node.name}/predict', Predict.Request(horizon=2))
        assert answer.success and len(answer.prediction.steps) == 2, answer.message
        diagnostics = fresh_diagnostics(client)
        assert diagnostics['input_topic'] == f'{node.topics["image"]}/compressed'

    def test_corrupt_jpeg_is_counted_and_the_next_frame_is_processed(
        self, compressed_node: tuple[NodeProcess, Client]
    ) -> None:
        node, client = compressed_node
        frame_id = unique_frame_id()
        pub = client.camera(compressed=True)
        good = jpeg_image(T0_NS, frame_id)
        bad = [
            (
                CompressedImage(header=good.header, format='jpeg', data=bytes(good.data)[:40]),
                'is corrupt: cannot decode',
            ),
            (CompressedImage(header=good.header, format='jpeg', data=b''), 'has no data'),
            (
                CompressedImage(header=good.header, format='theora', data=bytes(good.data)),
                "unsupported CompressedImage format 'theora'",
            ),
        ]
        for msg, reason in bad:
            send_bad_counted(client, pub, msg, reason)
        send_processed(client, pub, [jpeg_image(T0_NS + 10**9, frame_id)])
        node.assert_alive()


# --- what is wrong with the camera input ---------------------------------------------------------
def test_no_frames_warns_naming_the_publishers_types_then_ood_warns(
    log_dir: Path, ros_domain_id: int, bundle_plain: Path
) -> None:
    """A compressed-input node without frames logs (throttled) that its topic has no publisher;
    with a raw Image publisher on the base topic it points there; with one on its own topic it
    names the wrong type. A frame then comes through, and with ood_warn 0 the node logs the
    out-of-distribution score and the threshold."""
    params = {'model_bundle': str(bundle_plain), 'image_transport': 'compressed', 'threads': 1,
              'no_frames_warn': 1.0, 'ood_every_n': 1, 'ood_warn': 0.0,
              'prediction_rate': 0.0}  # fmt: skip
    started = _started(log_dir, ros_domain_id, params)
    node, client = next(started)
    try:
        client.wait_outputs()
        base, topic = node.topics['image'], f'{node.topics["image"]}/compressed'
        client.spin_until(lambda: f's: topic {topic} has no publisher' in node.log(),
                          'the no-publisher warning')  # fmt: skip
        assert 'no camera frame for ' in node.log()
        assert node.log().count('has no publisher') == 1  # throttled: said once
        raw_base = client.node.create_publisher(Image, base, 10)
        hint = (f'topic {topic} has no publisher; {base} has publishers of sensor_msgs/msg/Image '
                '(image_transport=raw subscribes it)')  # fmt: skip
        client.spin_until(lambda: hint in node.log(), 'the warning about the base topic')
        client.node.destroy_publisher(raw_base)
        wrong = client.node.create_publisher(Image, topic, 10)  # a real Image publisher
        named = (f'topic {topic} has publishers of sensor_msgs/msg/Image but the node '
                 'subscribes CompressedImage (image_transport=compressed)')  # fmt: skip
        client.spin_until(lambda: named in node.log(), 'the wrong-type warning')
        assert 'WARN' in next(line for line in node.log().splitlines() if named in line)
        client.node.destroy_publisher(wrong)
        assert 'out of distribution' not in node.log()
        pub = client.camera(compressed=True)
        send_processed(client, pub, [jpeg_image(T0_NS, unique_frame_id())])
        client.spin_until(lambda: 'out of distribution: score' in node.log(), 'the OOD warning')
        line = next(x for x in node.log().splitlines() if 'out of distribution: score' in x)
        assert 'WARN' in line and '> ood_warn 0 on ' + topic in line, line
    finally:
        next(started, None)


# --- lifecycle -----------------------------------------------------------------------------------
def _transition(client: Client, node: NodeProcess, transition: int) -> bool:
    request = ChangeState.Request()
    request.transition.id = transition
    return client.call(ChangeState, f'/{node.name}/change_state', request).success


def _state(client: Client, node: NodeProcess) -> str:
    return client.call(GetState, f'/{node.name}/get_state', GetState.Request()).current_state.label


def _set(client: Client, node: NodeProcess, name: str, value: object) -> None:
    request = SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()])
    result = client.call(SetParameters, f'/{node.name}/set_parameters', request).results[0]
    assert result.successful, result.reason


def test_lifecycle_bad_configuration_fails_then_good_one_works_and_deactivate_stops(
    tmp_path: Path, ros_domain_id: int, bundle_plain: Path
) -> None:
    """Autostart with a bad parameter and a bad bundle (exit_on_configure_failure off): configure
    fails with a logged reason, the process stays up; fixed through set_parameters, configure +
    activate work; deactivate stops the output, activate resumes it; SIGINT exits 0."""
    broken = tmp_path / 'broken_bundle'
    broken.mkdir()
    for item in bundle_plain.iterdir():
        (broken / item.name).symlink_to(item)
    (broken / 'model_card.yaml').unlink()
    card = (
        (bundle_plain / 'model_card.yaml')
        .read_text()
        .replace('schema_version: 1', 'schema_version: 99')
    )
    (broken / 'model_card.yaml').write_text(card)
    params = {'model_bundle': str(broken), 'image_transport': 'theora', 'threads': 1,
              'exit_on_configure_failure': False}  # fmt: skip
    started = _started(tmp_path, ros_domain_id, params)
    node, client = next(started)
    try:
        assert _state(client, node) == 'unconfigured'
        client.spin_until(lambda: 'image_transport must be one of' in node.log(), 'the reason')
        _set(client, node, 'image_transport', 'raw')
        assert not _transition(client, node, Transition.TRANSITION_CONFIGURE)
        assert 'schema_version' in node.log() and 'unknown schema version 99' in node.log()
        assert _state(client, node) == 'unconfigured'
        node.assert_alive()

        _set(client, node, 'model_bundle', str(bundle_plain))
        _set(client, node, 'input_reliability', 'reliable')
        assert _transition(client, node, Transition.TRANSITION_CONFIGURE)
        assert _transition(client, node, Transition.TRANSITION_ACTIVATE)
        client.wait_outputs()
        endpoints = client.node.get_subscriptions_info_by_topic(node.topics['image'])
        assert [e.qos_profile.reliability for e in endpoints] == [ReliabilityPolicy.RELIABLE]
        frame_id = unique_frame_id()
        pub = client.camera()
        send(client, pub, [raw_image(T0_NS + i, frame_id, i) for i in range(3)])
        client.spin_until(lambda: client.particles_of(frame_id), 'particles once active')

        assert _transition(client, node, Transition.TRANSITION_DEACTIVATE)
        assert _state(client, node) == 'inactive'
        client.spin_for(0.3)
        frame_id = unique_frame_id()
        send(client, pub, [raw_image(T0_NS + i, frame_id, i) for i in range(10)])
        client.spin_for(1.0)
        assert client.particles_of(frame_id) == [], 'particles published while inactive'
        node.assert_alive()

        assert _transition(client, node, Transition.TRANSITION_ACTIVATE)
        pub = client.camera()
        send(client, pub, [raw_image(T0_NS + i, frame_id, i) for i in range(3)])
        client.spin_until(lambda: client.particles_of(frame_id), 'particles after re-activation')
        assert _transition(client, node, Transition.TRANSITION_DEACTIVATE)
        assert _transition(client, node, Transition.TRANSITION_CLEANUP)
        assert _state(client, node) == 'unconfigured'
    finally:
        next(started, None)


def test_inactive_node_refuses_requests_and_library_logs_reach_rosout(
    tmp_path: Path, ros_domain_id: int, bundle_plain: Path
) -> None:
    """autostart off: configure creates the topics and services, which take nothing until
    activate (~/predict says why); the runtime's Python log records (the model it loaded) reach
    /rosout from the node's logger."""
    from rcl_interfaces.msg import Log
    from rclpy.qos import DurabilityPolicy, QoSProfile

    params = {'model_bundle': str(bundle_plain), 'threads': 1, 'autostart': False}
    started = _started(tmp_path, ros_domain_id, params)
    node, client = next(started)
    try:
        logs: list[Log] = []
        qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)  # fmt: skip
        client.node.create_subscription(Log, '/rosout', logs.append, qos)
        assert _transition(client, node, Transition.TRANSITION_CONFIGURE)
        service = f'/{node.name}/predict'
        answer = client.call(Predict, service, Predict.Request(horizon=2))
        assert not answer.success and answer.message == 'the node is not active'
        client.spin_until(
            lambda: any(m.name == node.name and 'dlp_ros.runtime: model' in m.msg for m in logs),
            "the runtime's log record on /rosout",
        )
        assert _transition(client, node, Transition.TRANSITION_ACTIVATE)
        send_processed(client, client.camera(), [raw_image(T0_NS, unique_frame_id())])
        answer = client.call(Predict, service, Predict.Request(horizon=2))
        assert answer.success and len(answer.prediction.steps) == 2, answer.message
    finally:
        next(started, None)


def test_a_refused_parameter_override_is_reported_and_an_integer_double_is_taken(
    tmp_path: Path, ros_domain_id: int, bundle_plain: Path
) -> None:
    """``-p horizon:=0`` (out of range) is named in the log and fails configure until set right;
    ``-p prediction_rate:=5`` (an integer for a double) is taken as 5.0."""
    from rcl_interfaces.srv import GetParameters

    params = {'model_bundle': str(bundle_plain), 'threads': 1, 'horizon': 0, 'prediction_rate': 5,
              'exit_on_configure_failure': False}  # fmt: skip
    started = _started(tmp_path, ros_domain_id, params)
    node, client = next(started)
    try:
        client.spin_until(lambda: 'configure failed' in node.log(), 'the failed autostart')
        assert 'parameter horizon = 0' in node.log(), node.report()
        assert _state(client, node) == 'unconfigured'
        request = GetParameters.Request(names=['prediction_rate', 'horizon'])
        values = client.call(GetParameters, f'/{node.name}/get_parameters', request).values
        assert values[0].double_value == 5.0 and values[1].integer_value == 10
        _set(client, node, 'horizon', 4)
        assert _transition(client, node, Transition.TRANSITION_CONFIGURE)
    finally:
        next(started, None)
