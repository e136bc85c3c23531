"""Duplicate particles and on-counts (``dlp_training.particle_counts``) on hand-made frames."""

from __future__ import annotations

import numpy as np
import pytest

from dlp_training.particle_counts import CountAccumulator, frame_duplicates

GT_XY = np.array([[10.0, 10.0], [40.0, 40.0], [10.0, 50.0]])  # (3, 2) px
RADIUS = np.full(3, 4.0)
VISIBLE = np.array([True, True, True])


def test_one_particle_per_object_has_no_duplicates() -> None:
    xy = GT_XY + 1.0
    unmatched, crowded = frame_duplicates(xy, np.ones(3), GT_XY, RADIUS, VISIBLE)
    assert not unmatched.any() and not crowded.any()


def test_unmatched_crowded_and_off_particles() -> None:
    """Particles: 0 on object 0, 1 within 1.5 px of particle 0 (crowded), 2 on object 1,
    3 far from everything (unmatched), 4 off on object 2 (ignored), 5 near object 2 but
    outside its radius (matched by Hungarian, but beyond the gate: unmatched)."""
    xy = np.array([[10.0, 10.0], [11.5, 10.0], [40.0, 41.0], [60.0, 5.0], [10.0, 50.0],
                   [10.0, 55.0]])  # fmt: skip
    presence = np.array([0.9, 0.9, 0.9, 0.9, 0.2, 0.9])
    unmatched, crowded = frame_duplicates(xy, presence, GT_XY, RADIUS, VISIBLE)
    np.testing.assert_array_equal(unmatched, [False, True, False, True, False, True])
    np.testing.assert_array_equal(crowded, [True, True, False, False, False, False])

    acc = CountAccumulator()
    acc.add(xy[None], presence[None], GT_XY[None], RADIUS[None], VISIBLE[None])
    s = acc.summary()
    assert s['particles_on'] == 5 and s['duplicates'] == 4  # 0, 1, 3, 5 (1 counted once)
    assert s['duplicate_fraction'] == pytest.approx(4 / 5)
    assert s['unmatched_fraction'] == pytest.approx(3 / 5)
    assert s['crowded_fraction'] == pytest.approx(2 / 5)
    assert s['on_ratio_mean'] == pytest.approx(5 / 3) and s['on_within_fraction'] == 0.0


def test_on_count_against_objects_in_view() -> None:
    """Four frames of 3 visible objects with 3, 3, 4 and 2 particles on; a fifth frame with no
    object in view and none on (within); a sixth with none in view and one on (not within)."""
    k = 4
    xy = np.zeros((6, k, 2))
    xy[:, :3] = GT_XY
    xy[:, 3] = [60.0, 5.0]
    presence = np.zeros((6, k))
    presence[0, :3] = presence[1, :3] = presence[2, :] = presence[3, :2] = 1.0
    presence[5, 0] = 1.0
    visible = np.ones((6, 3), bool)
    visible[4:] = False
    acc = CountAccumulator()
    acc.add(xy, presence, np.repeat(GT_XY[None], 6, 0), np.repeat(RADIUS[None], 6, 0), visible)
    s = acc.summary()
    assert s['frames'] == 6 and s['frames_with_objects'] == 4
    assert s['on_ratio_mean'] == pytest.approx((1 + 1 + 4 / 3 + 2 / 3) / 4)
    assert s['on_within_fraction'] == pytest.approx(3 / 6)
    assert s['duplicates'] == 2  # the far particle of frame 2; the one on in frame 5
    assert s['particles_on'] == 3 + 3 + 4 + 2 + 0 + 1
    assert s['duplicate_fraction'] == pytest.approx(2 / 13)
