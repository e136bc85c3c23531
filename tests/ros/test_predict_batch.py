"""The perception node's ``~/predict_batch`` over real ROS 2: B candidate futures in one batched
rollout, checked against ``~/predict`` and ``/dlp/particles``; the refusals name what is wrong.

The installed ``lib/dlp_ros/perception_node`` in a process of its own on the tiny bundles
(tests/ros/tiny_bundle.py), through the harness of the node tests (node_harness.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip('rclpy')
pytest.importorskip('dlp_ros.srv')

from geometry_msgs.msg import TwistStamped  # noqa: E402
from rclpy.duration import Duration  # noqa: E402

from dlp_ros.conversions import stamp_ns  # noqa: E402
from dlp_ros.srv import Predict, PredictBatch  # noqa: E402

pytestmark = pytest.mark.ros

K, H, A = 4, 2, 2  # the tiny bundle (tests/ros/tiny_bundle.py)
DT = 0.05
T0_NS = 1_732_000_000_987_654_321
COMMAND = (0.5, -0.25)  # the node's own command, in force at every history frame


import node_harness as harness  # noqa: E402  (tests/ros is on sys.path: no __init__.py)


@pytest.fixture(scope='module')
def actions_node(
    tmp_path_factory: pytest.TempPathFactory, ros_domain_id: int, bundle_actions: Path
) -> Iterator[tuple[object, object, str]]:
    """Active node on a model with actions, its command held at COMMAND, three frames seen:
    (node, client, frame_id)."""
    params = {'model_bundle': str(bundle_actions), 'horizon': 4, 'prediction_rate': 0.0,
              'threads': 1, 'action_topic': '{prefix}/cmd'}  # fmt: skip
    started = harness.started(tmp_path_factory.mktemp('batch_logs'), ros_domain_id, params)
    node, client = next(started)
    commands = client.node.create_publisher(TwistStamped, node.topics['action'], 10)
    client.spin_until(lambda: commands.get_subscription_count() > 0, 'the action topic')
    command = TwistStamped()
    command.twist.linear.x, command.twist.linear.y = COMMAND
    harness.send(client, commands, [command] * 3, period=0.05)
    # the node has the command before the first frame (its reader can match the publisher
    # after this side did; the command is then repaired late and the frames would carry zeros)
    assert commands.wait_for_all_acked(Duration(seconds=30.0)), 'the command was not received'
    frame_id = harness.unique_frame_id()
    frames = [harness.raw_image(T0_NS + i, frame_id, i) for i in range(3)]
    harness.send_processed(client, client.camera(), frames)
    yield node, client, frame_id
    next(started, None)


def batch(client: object, node: object, **fields: object) -> PredictBatch.Response:
    return client.call(PredictBatch, f'/{node.name}/predict_batch', PredictBatch.Request(**fields))


def test_candidates_are_rolled_out_from_the_last_frame(
    actions_node: tuple[object, object, str],
) -> None:
    node, client, frame_id = actions_node
    b, n = 3, 5
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (b, n, A)).astype(np.float32)
    answer = batch(client, node, horizon=n, candidates=b, actions=actions.reshape(-1).tolist())
    assert answer.success, answer.message
    assert (answer.candidates, answer.horizon, answer.particles) == (b, n, K)
    assert answer.dt == pytest.approx(DT)
    assert len(answer.u) == len(answer.v) == len(answer.presence) == b * n * K
    observed = client.particles_of(frame_id)[-1]
    assert answer.header.frame_id == frame_id and stamp_ns(answer.header) == T0_NS + 2
    assert stamp_ns(observed.header) == T0_NS + 2 and answer.current.header == answer.header
    assert (answer.current.image_width, answer.current.image_height) == (64, 48)
    for got, seen in zip(answer.current.particles, observed.particles, strict=True):
        assert (got.id, got.u, got.v, got.transparency) == (seen.id, seen.u, seen.v,
                                                            seen.transparency)  # fmt: skip
    u, v = (np.asarray(x).reshape(b, n, K) for x in (answer.u, answer.v))
    presence = np.asarray(answer.presence).reshape(b, n, K)
    assert np.all((presence >= 0) & (presence <= 1)) and np.all(np.isfinite(u + v))
    assert np.abs(u[0] - u[1]).max() > 1e-3, 'the candidates do not differ'

    for i in (0, 2):  # a candidate is ~/predict given the node's history command and its own
        rows = [COMMAND] * (H - 1) + actions[i].tolist()
        flat = np.asarray(rows, np.float32).reshape(-1).tolist()
        single = client.call(Predict, f'/{node.name}/predict',
                             Predict.Request(horizon=n, actions=flat))  # fmt: skip
        assert single.success, single.message
        steps = single.prediction.steps
        want_u = np.array([[p.u for p in s.particles] for s in steps])
        want_v = np.array([[p.v for p in s.particles] for s in steps])
        want_p = np.array([[p.transparency for p in s.particles] for s in steps])
        np.testing.assert_allclose(u[i], want_u, atol=1e-3, err_msg=f'candidate {i} u')
        np.testing.assert_allclose(v[i], want_v, atol=1e-3, err_msg=f'candidate {i} v')
        np.testing.assert_allclose(presence[i], want_p, atol=1e-5, err_msg=f'candidate {i}')
    default = batch(client, node, horizon=0, candidates=1, actions=[0.0] * 4 * A)
    assert default.success and default.horizon == 4, default.message  # the horizon parameter
    node.assert_alive()


@pytest.mark.parametrize(
    ('fields', 'message'),
    [
        ({'horizon': 2, 'candidates': 0, 'actions': []}, 'candidates must be 1..256, got 0'),
        ({'horizon': 1, 'candidates': 257, 'actions': [0.0] * 514}, '1..256, got 257'),
        ({'horizon': 2, 'candidates': 2, 'actions': [0.0] * 7},
         'candidates x horizon x A = 2 x 2 x 2 = 8 values, got 7'),
        ({'horizon': 2, 'candidates': 1, 'actions': []}, '= 4 values, got 0'),
        ({'horizon': 1001, 'candidates': 1, 'actions': []}, 'horizon must be <= 1000, got 1001'),
        ({'horizon': 1, 'candidates': 1, 'actions': [float('nan'), 0.0]}, 'must be finite'),
    ],
)  # fmt: skip
def test_bad_requests_are_refused_with_the_reason(
    actions_node: tuple[object, object, str], fields: dict[str, object], message: str
) -> None:
    node, client, _ = actions_node
    answer = batch(client, node, **fields)
    assert not answer.success and message in answer.message, answer.message
    assert len(answer.u) == 0
    node.assert_alive()


def test_a_model_without_actions(tmp_path: Path, ros_domain_id: int, bundle_plain: Path) -> None:
    """B identical futures without actions; actions are refused; no frame yet is a reason."""
    params = {'model_bundle': str(bundle_plain), 'threads': 1, 'prediction_rate': 0.0}
    started = harness.started(tmp_path, ros_domain_id, params)
    node, client = next(started)
    try:
        client.wait_outputs()
        early = batch(client, node, horizon=2, candidates=2)
        assert not early.success and early.message == 'no camera frame has been processed yet'
        harness.send_processed(client, client.camera(), [harness.raw_image(T0_NS, 'plain')])
        answer = batch(client, node, horizon=3, candidates=2)
        assert answer.success and len(answer.u) == 2 * 3 * K, answer.message
        u = np.asarray(answer.u).reshape(2, 3, K)
        np.testing.assert_allclose(u[0], u[1], atol=1e-4)
        refused = batch(client, node, horizon=3, candidates=2, actions=[0.0] * 12)
        assert not refused.success and 'takes no actions' in refused.message, refused.message
    finally:
        next(started, None)
