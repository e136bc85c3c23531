"""IDF1 and identity switches (``dlp_training.identity_metrics``) on hand-made tracks."""

from __future__ import annotations

import numpy as np
import pytest

from dlp_training.identity_metrics import IdentityAccumulator, track_ids

T = 10
GATE = 3.0  # px


def _objects() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two objects 30 px apart moving right 1 px per frame: xy (T, 2, 2), visible, gate."""
    t = np.arange(T, dtype=np.float64)
    xy = np.stack([np.stack([10 + t, np.full(T, 10.0)], -1),
                   np.stack([10 + t, np.full(T, 40.0)], -1)], axis=1)  # fmt: skip
    return xy, np.ones((T, 2), bool), np.full((T, 2), GATE)


def _measure(ids: np.ndarray, xy: np.ndarray, on: np.ndarray) -> dict:
    gt_xy, visible, gate = _objects()
    acc = IdentityAccumulator()
    acc.add(ids, xy, on, gt_xy, visible, gate)
    return acc.summary()


def test_perfect_tracks() -> None:
    gt_xy, _, _ = _objects()
    ids = np.tile([7, 3], (T, 1))
    s = _measure(ids, gt_xy + 0.5, np.ones((T, 2), bool))
    assert s['idf1'] == 1.0 and s['idp'] == 1.0 and s['idr'] == 1.0
    assert s['id_switches'] == 0 and s['id_switches_per_100'] == 0.0
    assert (s['idtp'], s['idfp'], s['idfn'], s['object_frames']) == (20, 0, 0, 20)


def test_one_swap_midway() -> None:
    """Tracker 0 follows object 0 for 5 frames, then object 1; tracker 1 the other way round.
    Best global assignment: 5 frames per pair, IDTP = 10 of 20 + 20: IDF1 = 20 / 40 = 0.5.
    Both objects change id at frame 5: 2 switches in 20 object-frames = 10 per 100."""
    gt_xy, _, _ = _objects()
    xy = gt_xy.copy()
    xy[5:] = gt_xy[5:, ::-1]  # slot 0 jumps to object 1 and slot 1 to object 0
    s = _measure(np.tile([0, 1], (T, 1)), xy, np.ones((T, 2), bool))
    assert (s['idtp'], s['idfp'], s['idfn']) == (10, 10, 10)
    assert s['idf1'] == pytest.approx(0.5)
    assert s['id_switches'] == 2 and s['id_switches_per_100'] == pytest.approx(10.0)


def test_false_track_and_missed_frames() -> None:
    """Perfect tracks plus a third on particle far from everything (10 false detections), and
    object 1 missed (its particle off) in frames 0-3: IDTP = 16, IDFP = 10, IDFN = 4:
    IDF1 = 32 / (32 + 14) = 16 / 23. No switch: object 1 keeps id 1 when it is found."""
    gt_xy, _, _ = _objects()
    xy = np.concatenate([gt_xy, np.full((T, 1, 2), 60.0)], axis=1)  # (T, 3, 2)
    on = np.ones((T, 3), bool)
    on[:4, 1] = False
    s = _measure(np.tile([0, 1, 2], (T, 1)), xy, on)
    assert (s['idtp'], s['idfp'], s['idfn']) == (16, 10, 4)
    assert s['idf1'] == pytest.approx(16 / 23)
    assert s['idp'] == pytest.approx(16 / 26) and s['idr'] == pytest.approx(16 / 20)
    assert s['id_switches'] == 0


def test_outside_the_gate_is_no_match() -> None:
    gt_xy, _, _ = _objects()
    s = _measure(np.tile([0, 1], (T, 1)), gt_xy + [GATE + 0.5, 0.0], np.ones((T, 2), bool))
    assert s['idtp'] == 0 and s['idf1'] == 0.0 and s['id_switches'] == 0


def test_reseed_is_a_new_identity() -> None:
    """Slot 0 is re-seeded at frame 5 while staying on object 0: a new tracker id, so one
    switch and IDTP = 5 + 10 (one half of object 0's track, all of object 1's)."""
    reseeded = np.zeros((T, 2), bool)
    reseeded[0] = True
    reseeded[5, 0] = True
    ids = track_ids(reseeded)
    assert ids[4, 0] != ids[5, 0] and len(np.unique(ids[:, 1])) == 1
    assert len(np.unique(ids)) == 3
    gt_xy, _, _ = _objects()
    s = _measure(ids, gt_xy, np.ones((T, 2), bool))
    assert s['id_switches'] == 1 and s['idtp'] == 15 and s['idf1'] == pytest.approx(30 / 40)


def test_episodes_add_up() -> None:
    gt_xy, visible, gate = _objects()
    acc = IdentityAccumulator()
    acc.add(np.tile([0, 1], (T, 1)), gt_xy, np.ones((T, 2), bool), gt_xy, visible, gate)
    swapped = gt_xy.copy()
    swapped[5:] = gt_xy[5:, ::-1]
    acc.add(np.tile([0, 1], (T, 1)), swapped, np.ones((T, 2), bool), gt_xy, visible, gate)
    s = acc.summary()
    assert s['episodes'] == 2 and s['idtp'] == 30 and s['idf1'] == pytest.approx(60 / 80)
    assert s['id_switches_per_100'] == pytest.approx(100 * 2 / 40)
