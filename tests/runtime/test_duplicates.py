"""dlp_ros.duplicates: non-maximum suppression of the published particles by box IoU."""

from __future__ import annotations

import numpy as np
import pytest

from dlp_ros.duplicates import DuplicateFilter, box_iou, particle_boxes, suppress

HALF = np.full((4, 2), 2.0)  # 4 x 4 px boxes


def test_box_iou_of_axis_aligned_boxes() -> None:
    centre = np.array([[0.0, 0.0], [2.0, 0.0], [10.0, 10.0]])
    iou = box_iou(centre, np.full((3, 2), 2.0))
    assert iou[0, 0] == pytest.approx(1.0)
    assert iou[0, 1] == pytest.approx(8.0 / 24.0)  # 2 x 4 overlap of two 16 px^2 boxes
    assert iou[0, 2] == 0.0 and np.allclose(iou, iou.T)


def test_particle_boxes_are_in_model_input_pixels() -> None:
    centre, half = particle_boxes(np.array([[-1.0, 1.0], [0.0, 0.0]]), np.zeros((2, 2)), 64)
    assert centre.tolist() == [[0.0, 64.0], [32.0, 32.0]]
    assert np.allclose(half, 16.0)  # sigmoid(0) = half the side of the image: 32 px boxes


def test_the_more_present_of_two_overlapping_particles_stays_on() -> None:
    centre = np.array([[10.0, 10.0], [11.0, 10.0], [30.0, 30.0], [10.5, 10.0]])
    presence = np.array([0.7, 0.9, 0.8, 0.3])  # the last is off already
    assert suppress(centre, HALF, presence, iou=0.3).tolist() == [True, False, False, False]
    assert not suppress(centre, HALF, presence, iou=1.0).any()  # 1: nothing suppressed
    assert not suppress(centre, HALF, presence, iou=0.7).any()  # IoU 0.6 stays under 0.7


def test_the_filter_keeps_the_same_identity_on_while_both_stay() -> None:
    dedup = DuplicateFilter(0.3)
    centre, half = np.array([[10.0, 10.0], [11.0, 10.0]]), HALF[:2]
    assert dedup(centre, half, np.array([0.9, 0.8])).tolist() == [False, True]
    # the other becomes more present: slot 0 stayed on last frame, so it still does
    assert dedup(centre, half, np.array([0.8, 0.9])).tolist() == [False, True]
    # slot 0 is re-seeded (a new identity): no preference left, the more present wins
    new = np.array([True, False])
    assert dedup(centre, half, np.array([0.8, 0.9]), new).tolist() == [True, False]
    dedup.reset()
    assert dedup(centre, half, np.array([0.9, 0.8])).tolist() == [False, True]


def test_a_bad_threshold_is_refused() -> None:
    for bad in (-0.1, 1.5, float('nan')):
        with pytest.raises(ValueError, match='iou'):
            DuplicateFilter(bad)
