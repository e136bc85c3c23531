"""Scoring and drawing of closed-loop episodes (dlp_ros.sim.report)."""

from __future__ import annotations

import numpy as np
import pytest

from dlp_ros.sim.report import (
    GOAL_RGB,
    PARTICLE_RGB,
    PATH_RGB,
    EpisodeResult,
    draw_frame,
    followed_particle,
    format_report,
    planner_percentiles,
    stats,
    summarise,
)


def result(seed: int, success: bool, at: int | None, final: float, **kw: object) -> EpisodeResult:
    return EpisodeResult(seed=seed, object_id=1, start_uv=(10.0, 10.0), goal_uv=(20.0, 10.0),
                         tolerance=3.0, success=success, steps=at if at is not None else 150,
                         steps_to_success=at, initial_distance=10.0, final_distance=final,
                         min_distance=final, missed_steps=kw.get('missed', 0),
                         planning_ms=kw.get('planning', []), loop_ms=[5.0])  # fmt: skip


def test_summarise_counts_and_figures() -> None:
    rows = [result(0, True, 12, 2.0, planning=[10.0, 30.0]), result(1, False, None, 8.0, missed=2),
            result(2, True, 20, 1.0, planning=[20.0])]  # fmt: skip
    row = summarise(rows)
    assert (row['episodes'], row['successes'], row['success_rate']) == (3, 2, 0.6667)
    assert row['steps_to_success']['median'] == 16.0 and row['steps_to_success']['n'] == 2
    assert row['final_distance_px']['median'] == 2.0
    assert row['progress_px']['mean'] == pytest.approx((8 + 2 + 9) / 3, abs=1e-3)
    assert row['planning_ms']['median'] == 20.0 and row['planning_ms']['n'] == 3
    assert row['missed_steps'] == 2
    assert [e['seed'] for e in row['per_episode']] == [0, 1, 2]
    assert stats([])['median'] is None and summarise([])['success_rate'] is None


def test_followed_particle_is_the_nearest_that_is_on() -> None:
    parts = [(0, 10.0, 10.5, 0.1), (3, 12.0, 10.0, 0.9), (5, 30.0, 30.0, 1.0)]
    assert followed_particle(parts, (10.0, 10.0)) == 3
    assert followed_particle(parts, (29.0, 29.0)) == 5
    assert followed_particle([(0, 1.0, 1.0, 0.2)], (1.0, 1.0)) is None


def test_draw_frame_marks_goal_particle_and_path() -> None:
    rgb = np.full((64, 64, 3), 90, np.uint8)
    img = draw_frame(rgb, goal=(40.0, 20.0), tolerance=3.0, truth=(10.0, 10.0),
                     particle=(10.5, 10.5), trail=[(8.0, 10.0), (10.5, 10.5)],
                     path=np.array([[20.0, 40.0], [30.0, 50.0]]), caption='x')  # fmt: skip
    assert img.shape == (18 + 256, 256, 3)
    body = img[18:]

    def near(uv: tuple[float, float], colour: tuple[int, int, int], r: int = 4) -> bool:
        x, y = round(uv[0] * 4), round(uv[1] * 4)
        patch = body[y - r : y + r + 1, x - r : x + r + 1].reshape(-1, 3)
        return bool(np.any(np.all(np.abs(patch.astype(int) - colour) < 40, axis=1)))

    assert near((40.0, 20.0), GOAL_RGB)
    assert near((10.5, 10.5), PARTICLE_RGB)
    assert near((25.0, 45.0), PATH_RGB)
    assert not near((50.0, 55.0), GOAL_RGB) and not near((50.0, 55.0), PATH_RGB)


def test_report_lines_fall_back_to_the_planners_percentiles() -> None:
    status = {'planning_ms_p50': '41.5', 'planning_ms_p99': '88.0', 'plan': '(+0.1,+0.0)'}
    assert planner_percentiles(status) == {'p50': 41.5, 'p99': 88.0}
    assert planner_percentiles({'planning_ms_p50': 'nan?'}) is None
    rows = {'a': {**summarise([result(0, True, 5, 1.0)]), 'planner_planning_ms': {'p50': 41.5,
                                                                                 'p99': 88.0}},
            'b': {**summarise([result(1, False, None, 9.0, planning=[12.0])]),
                  'planner_planning_ms': None}}  # fmt: skip
    lines = format_report({'modes': rows}).splitlines()
    assert '41.5/88.0' in lines[1] and ' 1/1' in lines[1]
    assert '12.0/12.0' in lines[2] and ' 0/1' in lines[2]
