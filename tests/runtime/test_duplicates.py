"""dlp_ros.duplicates: non-maximum suppression of the published particles."""

from __future__ import annotations

import numpy as np
import pytest

from dlp_ros.duplicates import DuplicateFilter, suppress


def test_the_more_present_of_two_close_particles_stays_on() -> None:
    xy = np.array([[10.0, 10.0], [11.0, 10.0], [30.0, 30.0], [10.5, 10.0]])
    presence = np.array([0.7, 0.9, 0.8, 0.3])  # the last is off already
    out = suppress(xy, presence, radius=3.0)
    assert out.tolist() == [True, False, False, False]
    assert not suppress(xy, presence, radius=0.0).any()  # 0: nothing suppressed
    assert suppress(xy, presence, radius=0.5).tolist() == [False] * 4  # 1 px apart: both stay


def test_a_chain_keeps_every_particle_farther_than_the_radius_from_a_kept_one() -> None:
    xy = np.array([[0.0, 0.0], [2.0, 0.0], [4.0, 0.0]])
    out = suppress(xy, np.array([0.9, 0.8, 0.7]), radius=2.5)
    assert out.tolist() == [False, True, False]  # the third is 4 px from the kept first


def test_the_filter_keeps_the_same_identity_on_while_both_stay() -> None:
    dedup = DuplicateFilter(3.0)
    xy = np.array([[10.0, 10.0], [11.0, 10.0]])
    assert dedup(xy, np.array([0.9, 0.8])).tolist() == [False, True]
    # the other becomes more present: slot 0 stayed on last frame, so it still does
    assert dedup(xy, np.array([0.8, 0.9])).tolist() == [False, True]
    # slot 0 is re-seeded (a new identity): no preference left, the more present wins
    assert dedup(xy, np.array([0.8, 0.9]), new=np.array([True, False])).tolist() == [True, False]
    dedup.reset()
    assert dedup(xy, np.array([0.8, 0.9])).tolist() == [True, False]


def test_a_bad_radius_is_refused() -> None:
    with pytest.raises(ValueError, match='radius'):
        DuplicateFilter(-1.0)
    with pytest.raises(ValueError, match='radius'):
        DuplicateFilter(float('nan'))
