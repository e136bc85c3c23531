"""The perception node's plain parts: parameters, mailbox, statistics, actions (no ROS)."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml

from dlp_ros.errors import ConfigError
from dlp_ros.node_support import (
    CONFIGURE,
    LIVE,
    PARAM_SPECS,
    PARAMS,
    STARTUP,
    LatencyWindow,
    Mailbox,
    NodeConfig,
    RateMeter,
    SequenceGaps,
    Throttle,
    image_step_index,
    ood_score,
)
from dlp_ros.pipeline import ActionHistory, actions_from_request

ROOT = Path(__file__).resolve().parents[2]


def test_node_config_has_one_field_per_parameter_and_defaults_validate() -> None:
    config = NodeConfig.from_values({})
    assert list(config.__dataclass_fields__) == [p.name for p in PARAMS]
    assert config.horizon == 10 and config.image_transport == 'raw'


def test_config_yaml_mirrors_every_parameter_with_its_default() -> None:
    data = yaml.safe_load((ROOT / 'config' / 'perception.yaml').read_text())
    params = data['/**']['ros__parameters']
    assert list(params) == [p.name for p in PARAMS]
    for spec in PARAMS:
        assert params[spec.name] == spec.default, spec.name
        assert type(params[spec.name]) is type(spec.default), spec.name


@pytest.mark.parametrize(
    ('values', 'match'),
    [
        (
            {'image_transport': 'theora'},
            "image_transport must be one of \\['raw', 'compressed'\\]",
        ),
        ({'horizon': 0}, 'horizon must be >= 1'),
        ({'prediction_rate': -1.0}, 'prediction_rate must be >= 0'),
        ({'prediction_rate': math.inf}, 'must be finite'),
        ({'threads': 1.5}, 'threads must be a int'),
        ({'publish_frames': 1}, 'publish_frames must be a bool'),
        ({'providers': 'rocm'}, 'providers must be one of'),
        ({'colour': 'red'}, 'unknown parameter'),
    ],
)
def test_node_config_rejects_bad_values_naming_the_parameter(values: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        NodeConfig.from_values(values)


def test_node_config_takes_an_integer_for_a_double() -> None:
    assert NodeConfig.from_values({'prediction_rate': 5}).prediction_rate == 5.0


def test_live_parameters_change_and_the_others_are_refused_with_a_reason() -> None:
    live = {p.name for p in PARAMS if p.applies == LIVE}
    assert {'horizon', 'prediction_rate', 'publish_frames', 'frames_rate',
            'prediction_image_step'} <= live  # fmt: skip
    assert {p.name for p in PARAMS if p.applies == STARTUP} == {
        'autostart',
        'exit_on_configure_failure',
    }
    for spec in PARAMS:
        assert spec.applies in (LIVE, CONFIGURE, STARTUP), spec.name
        unconfigured, configured = spec.change_refusal(False), spec.change_refusal(True)
        if spec.applies == LIVE:
            assert unconfigured is None and configured is None, spec.name
        elif spec.applies == CONFIGURE:
            assert unconfigured is None and 'read at configure' in configured, spec.name
            assert 'clean up' in configured and spec.name in configured
        else:
            assert 'start-up only' in unconfigured and 'start-up only' in configured
    model = PARAM_SPECS['model_bundle']
    assert model.full_description.endswith('refused while the node is configured.')
    assert PARAM_SPECS['horizon'].full_description.endswith('Live: a change takes effect at once.')


def test_node_config_changed_validates_like_from_values() -> None:
    config = NodeConfig.from_values({'horizon': 4})
    changed = config.changed({'horizon': 3, 'prediction_rate': 5})
    assert (changed.horizon, changed.prediction_rate, config.horizon) == (3, 5.0, 4)
    assert changed.model_bundle == config.model_bundle
    with pytest.raises(ConfigError, match='horizon must be >= 1'):
        config.changed({'horizon': 0})


def test_config_yaml_and_readme_say_which_parameters_are_live() -> None:
    lines = (ROOT / 'config' / 'perception.yaml').read_text().splitlines()
    readme = (ROOT / 'README.md').read_text()
    for spec in PARAMS:
        at = lines.index(next(line for line in lines if line.startswith(f'    {spec.name}:')))
        above = []  # the comment lines right above the parameter
        while lines[at - 1 - len(above)].lstrip().startswith('#'):
            above.append(lines[at - 1 - len(above)])
        comment = ' '.join(above)
        assert ('[live]' in comment) == (spec.applies == LIVE), spec.name
        row = next((line for line in readme.splitlines()
                    if line.startswith(f'| `{spec.name}` |')), None)  # fmt: skip
        assert row is not None, f'README parameter table has no row for {spec.name}'
        assert f'| {spec.applies} |' in row, f'{spec.name}: README says {row}'
    runtime = (ROOT / 'docs' / 'runtime.md').read_text().splitlines()
    for kind in (LIVE, CONFIGURE, STARTUP):
        row = next(line for line in runtime if line.startswith(f'| {kind} | `'))
        listed = set(row.split(' | ')[1].replace('`', '').split(', '))
        assert listed == {p.name for p in PARAMS if p.applies == kind}, (kind, listed)


def test_image_step_index_picks_the_last_step_by_default() -> None:
    assert [image_step_index(k, 4) for k in (0, 1, 2, 4, 9)] == [3, 0, 1, 3, 3]
    with pytest.raises(ValueError, match='without frames'):
        image_step_index(1, 0)


def test_mailbox_keeps_the_latest_item_and_counts_the_replaced_ones() -> None:
    box: Mailbox[int] = Mailbox()
    assert box.get(timeout=0.01) is None
    assert box.put(1) is False
    assert box.put(2) is True and box.put(3) is True
    assert box.dropped == 2
    assert box.get(timeout=0.01) == 3
    assert box.get(timeout=0.01) is None


def test_mailbox_close_wakes_a_waiting_get() -> None:
    box: Mailbox[int] = Mailbox()
    got: list[int | None] = []
    thread = threading.Thread(target=lambda: got.append(box.get(timeout=10.0)))
    thread.start()
    box.close()
    thread.join(timeout=2.0)
    assert not thread.is_alive() and got == [None]


def test_rate_meter_and_latency_window() -> None:
    meter = RateMeter(window=2.0)
    start = meter._start
    for i in range(20):
        meter.tick(start + 1.0 + i * 0.05)  # 20 Hz for 1 s
    assert meter.rate(start + 2.0) == pytest.approx(10.0)  # 20 events in the 2 s window
    assert meter.rate(start + 10.0) == 0.0
    window = LatencyWindow(size=100)
    assert all(math.isnan(v) for v in window.percentiles(50, 99))
    for ms in range(1, 101):
        window.add(float(ms))
    p50, p99 = window.percentiles(50, 99)
    assert p50 == pytest.approx(50.5) and p99 == pytest.approx(99.01)


def test_rate_meter_counts_weighted_ticks() -> None:
    meter = RateMeter(window=2.0)
    start = meter._start
    for i in range(10):
        meter.tick(start + 1.0 + i * 0.1, count=3)  # 10 arrivals, each standing for 3 frames
    assert meter.rate(start + 2.0) == pytest.approx(15.0)
    assert meter.rate(start + 3.45) == pytest.approx(3 * 5 / 2.0)  # the last 2 s: 5 ticks
    assert meter.rate(start + 10.0) == 0.0


def test_sequence_gaps_of_one_publisher() -> None:
    gaps = SequenceGaps()
    arrived = [3, 4, 5, 9, 10, 11, 20]  # 6..8 and 12..19 lost; nothing known before 3
    assert [gaps.observe(s, now=1.0 + 0.01 * s) for s in arrived] == [0, 0, 0, 3, 0, 0, 8]
    assert gaps.lost == 11 and gaps.supported


def test_sequence_gaps_of_publishers_taking_turns_and_restarting() -> None:
    gaps = SequenceGaps()
    clock = iter(range(100))
    first = [1, 2, 4, 5]  # one lost
    second = [1, 2, 3, 7]  # a second publisher (numbers start again): three lost
    again = [6, 8]  # the first one again (its 6 continues from 5): one lost
    for seq in first + second:
        gaps.observe(seq, now=float(next(clock)))
    assert gaps.lost == 4
    for seq in again:
        gaps.observe(seq, now=float(next(clock)))
    assert gaps.lost == 5
    gaps.reset()
    assert gaps.observe(100, now=50.0) == 0, 'after a reset nothing is known before it'


def test_sequence_gaps_tell_an_idle_publisher_resuming_from_the_active_one() -> None:
    gaps = SequenceGaps(max_rate=1000.0)
    gaps.observe(500, now=0.0)  # a publisher that has been running, then pauses
    for i, seq in enumerate(range(1, 11)):  # another one starts, 100 Hz
        gaps.observe(seq, now=10.0 + 0.01 * i)
    # 501 right after 10: 490 lost in 10 ms is impossible at 1 kHz, so it is the first one's
    assert gaps.observe(501, now=10.1) == 0
    assert gaps.observe(11, now=10.11) == 0
    assert gaps.lost == 0


def test_sequence_gaps_without_sequence_numbers_count_nothing() -> None:
    gaps = SequenceGaps()
    assert gaps.observe(0) == 0 and gaps.observe(2**64 - 1) == 0
    assert gaps.lost == 0 and not gaps.supported


def test_sequence_gaps_remember_a_bounded_number_of_writers() -> None:
    gaps = SequenceGaps(max_writers=2)
    for seq in (50, 10, 1):  # three writers; the first (50) is forgotten
        gaps.observe(seq, now=0.0)
    assert gaps.observe(60, now=100.0) == 60 - 1 - 1  # the most recent one below it


def test_throttle_reports_once_per_period_and_counts_the_rest() -> None:
    throttle = Throttle(period=5.0)
    assert throttle.ready(100.0) == (True, 0)
    assert throttle.ready(101.0) == (False, 0)
    assert throttle.ready(102.0) == (False, 0)
    assert throttle.ready(105.5) == (True, 2)


def test_action_history_pads_like_the_frames_and_holds_the_latest_command() -> None:
    history = ActionHistory(history=3, action_dim=2)
    history.observe(np.array([1.0, 2.0]))
    history.observe(None)  # no command yet -> zeros
    history.observe(np.array([3.0, 4.0]))
    out = history.rollout_actions(horizon=3, n_frames=3)  # (H + horizon - 1, A)
    assert out.shape == (5, 2) and out.dtype == np.float32
    np.testing.assert_array_equal(out, [[1, 2], [0, 0], [3, 4], [3, 4], [3, 4]])
    short = history.rollout_actions(horizon=2, n_frames=1)  # history of one frame, padded
    np.testing.assert_array_equal(short, [[3, 4]] * 4)
    history.reset()
    np.testing.assert_array_equal(history.rollout_actions(1, 0), np.zeros((3, 2)))


def test_actions_from_request_checks_the_length() -> None:
    out = actions_from_request(np.arange(8, dtype=np.float32), horizon=3, history=2, action_dim=2)
    assert out is not None and out.shape == (4, 2)
    with pytest.raises(ConfigError, match=r'\(3 \+ 2 - 1\) x 2 = 8 values, got 6'):
        actions_from_request(np.zeros(6), horizon=3, history=2, action_dim=2)
    assert actions_from_request(np.zeros(0), horizon=3, history=2, action_dim=0) is None
    with pytest.raises(ConfigError, match='takes no actions'):
        actions_from_request(np.zeros(2), horizon=3, history=2, action_dim=0)


def test_ood_score_is_relative_to_the_validation_mse() -> None:
    assert ood_score(0.02, 0.01) == pytest.approx(2.0)
    assert math.isnan(ood_score(0.02, None)) and math.isnan(ood_score(0.02, 0.0))
