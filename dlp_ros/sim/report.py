"""Scoring and pictures of closed-loop pushing episodes, in plain Python (numpy, OpenCV): what
:mod:`dlp_ros.sim.evaluate` writes into report.json and the episode videos.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np

GOAL_RGB = (40, 220, 40)
TRUTH_RGB = (255, 255, 255)
PARTICLE_RGB = (255, 0, 220)
PATH_RGB = (255, 200, 0)
OTHER_RGB = (255, 255, 0)
ON = 0.5  # a particle with transparency above this is on


@dataclass
class EpisodeResult:
    """One episode of one mode (distances [px] from ground truth, in the camera image)."""

    seed: int
    object_id: int
    start_uv: tuple[float, float]
    goal_uv: tuple[float, float]
    tolerance: float
    success: bool
    steps: int  # commands applied (frames - 1)
    steps_to_success: int | None  # frame index at which the object first was within tolerance
    initial_distance: float
    final_distance: float
    min_distance: float
    missed_steps: int  # steps the simulator ran with a zero command (none came in time)
    planning_ms: list[float] = field(default_factory=list)  # the planner's own figures
    loop_ms: list[float] = field(default_factory=list)  # simulator: frame published -> command
    video: str | None = None


def stats(values: Sequence[float]) -> dict[str, float | None]:
    """{'mean', 'median', 'p99', 'max', 'n'} (rounded), None entries when empty."""
    if not len(values):
        return {'mean': None, 'median': None, 'p99': None, 'max': None, 'n': 0}
    arr = np.asarray(values, dtype=np.float64)
    return {
        'mean': round(float(arr.mean()), 3),
        'median': round(float(np.median(arr)), 3),
        'p99': round(float(np.percentile(arr, 99)), 3),
        'max': round(float(arr.max()), 3),
        'n': len(values),
    }


def summarise(results: Sequence[EpisodeResult]) -> dict[str, object]:
    """The row of one mode: success rate, distances, steps to success, timing, missed steps,
    and every episode."""
    n = len(results)
    wins = [r for r in results if r.success]
    return {
        'episodes': n,
        'successes': len(wins),
        'success_rate': round(len(wins) / n, 4) if n else None,
        'final_distance_px': stats([r.final_distance for r in results]),
        'initial_distance_px': stats([r.initial_distance for r in results]),
        'progress_px': stats([r.initial_distance - r.final_distance for r in results]),
        'steps_to_success': stats(
            [float(r.steps_to_success) for r in wins if r.steps_to_success is not None]
        ),  # fmt: skip
        'planning_ms': stats([ms for r in results for ms in r.planning_ms]),
        'loop_ms': stats([ms for r in results for ms in r.loop_ms]),
        'missed_steps': sum(r.missed_steps for r in results),
        'per_episode': [asdict(r) for r in results],
    }


def planner_percentiles(status: dict[str, str]) -> dict[str, float] | None:
    """The planner's own planning-time percentiles [ms] from its diagnostics values
    (``planning_ms_p50``, ``planning_ms_p99``: over its recent decisions), or None."""
    try:
        return {q: float(status[f'planning_ms_{q}']) for q in ('p50', 'p99')}
    except (KeyError, ValueError):
        return None


def format_report(report: dict[str, Any]) -> str:
    """One line per mode; planning time per step where the planner reported each, else its own
    recent percentiles."""
    lines = [f'{"mode":<10} success  final px (median)  steps to success  planning ms p50/p99'
             '  missed']  # fmt: skip
    for mode, row in report['modes'].items():
        plan = row['planning_ms']
        p50, p99 = plan['median'], plan['p99']
        if p50 is None and row.get('planner_planning_ms'):
            p50, p99 = row['planner_planning_ms']['p50'], row['planner_planning_ms']['p99']
        lines.append(
            f'{mode:<10} {row["successes"]:>2}/{row["episodes"]:<4} '
            f'{row["final_distance_px"]["median"]!s:>17}  '
            f'{row["steps_to_success"]["median"]!s:>16}  '
            f'{p50!s:>9}/{p99!s:<9}  {row["missed_steps"]:>6}'
        )
    return '\n'.join(lines)


def distance(uv: Sequence[float], goal: Sequence[float]) -> float:
    return math.hypot(uv[0] - goal[0], uv[1] - goal[1])


def followed_particle(particles: Sequence[tuple[int, float, float, float]],
                      start: Sequence[float]) -> int | None:  # fmt: skip
    """Id of the particle that is on and nearest ``start`` (the rule the planner follows):
    ``particles`` are (id, u, v, transparency); None when none is on."""
    on = [(distance((u, v), start), pid) for pid, u, v, p in particles if p > ON]
    return min(on)[1] if on else None


def _px(uv: Sequence[float], zoom: int) -> tuple[int, int]:
    return round(float(uv[0]) * zoom), round(float(uv[1]) * zoom)


def draw_frame(rgb: np.ndarray, goal: Sequence[float], tolerance: float,
               truth: Sequence[float] | None, particle: Sequence[float] | None,
               trail: Sequence[Sequence[float]] = (), path: np.ndarray | None = None,
               others: Sequence[Sequence[float]] = (), caption: str = '',
               min_side: int = 256) -> np.ndarray:  # fmt: skip
    """One video frame: the camera image enlarged (nearest) to ``min_side``, the goal (green
    cross and its tolerance circle), the object's true centre (white ring), the followed
    particle (magenta dot, its trail), the other particles that are on (``others``, small yellow
    dots) and the planner's predicted path (orange line), with a caption bar on top.

    Args:
        rgb: (S, S, 3) uint8 camera frame; every position is in its pixels.
        path: (N, 2) predicted object positions, or None.
    Returns:
        (zoom * S + 18, zoom * S, 3) uint8 RGB.
    """
    zoom = max(1, math.ceil(min_side / max(1, min(rgb.shape[:2]))))
    img = cv2.resize(rgb, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST)
    g = _px(goal, zoom)
    cv2.circle(img, g, max(1, round(tolerance * zoom)), GOAL_RGB, 1, cv2.LINE_AA)
    cv2.drawMarker(img, g, GOAL_RGB, cv2.MARKER_CROSS, 2 * zoom + 4, 2)
    for uv in others:
        cv2.circle(img, _px(uv, zoom), max(1, zoom // 3), OTHER_RGB, -1, cv2.LINE_AA)
    if len(trail) > 1:
        pts = np.array([_px(p, zoom) for p in trail], dtype=np.int32)
        cv2.polylines(img, [pts], False, PARTICLE_RGB, 1, cv2.LINE_AA)
    if path is not None and len(path):
        start = [particle] if particle is not None else []
        pts = np.array([_px(p, zoom) for p in [*start, *path]], dtype=np.int32)
        cv2.polylines(img, [pts], False, PATH_RGB, 2, cv2.LINE_AA)
    if truth is not None:
        cv2.circle(img, _px(truth, zoom), zoom + 3, TRUTH_RGB, 1, cv2.LINE_AA)
    if particle is not None:
        radius = max(2, zoom // 2 + 1)
        cv2.circle(img, _px(particle, zoom), radius + 1, (0, 0, 0), -1, cv2.LINE_AA)
        cv2.circle(img, _px(particle, zoom), radius, PARTICLE_RGB, -1, cv2.LINE_AA)
    bar = np.full((18, img.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, caption, (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    return np.concatenate([bar, img], axis=0)
