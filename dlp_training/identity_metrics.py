"""Identity metrics of tracked particles against ground-truth objects: IDF1 and ID switches.

Torch-free (numpy, scipy). Inputs per episode, T frames:

* tracker: ``ids`` (T, K) int, the identity of each particle slot per frame (a tracked slot keeps
  its id until it is re-seeded, :func:`track_ids`), ``xy`` (T, K, 2) px, ``on`` (T, K) bool: the
  particles the tracker reports in that frame;
* ground truth: ``gt_ids`` (N,), ``gt_xy`` (T, N, 2) px, ``gt_visible`` (T, N) bool, and the
  *gate* ``gate_px`` (T, N): a tracker detection may stand for an object in a frame only when it
  is at most this far from it. ``evaluate-dlp`` passes the object's radius, the same criterion as
  its localisation recall (a particle "hits" an object closer than its radius).

**IDF1** (Ristani et al., 2016): one global assignment per episode between tracker ids and
ground-truth ids (Hungarian, maximising the number of frames in which the pair is co-present
within the gate); ``IDTP`` = those frames summed over the assigned pairs, ``IDFN`` = visible
object-frames - IDTP, ``IDFP`` = tracker detections - IDTP, ``IDF1 = 2 IDTP / (2 IDTP + IDFP +
IDFN)``, ``IDP = IDTP / (IDTP + IDFP)``, ``IDR = IDTP / (IDTP + IDFN)``. Minimising IDFP + IDFN,
as the paper does, is maximising IDTP, since IDFP + IDFN + 2 IDTP is fixed.

**ID switches** (CLEAR MOT, Bernardin & Stiefelhagen, 2008): per frame the visible objects are
matched to tracker detections within the gate, keeping last frame's pairs that are still within
the gate and Hungarian-matching the rest on distance; a switch is an object whose matched
tracker id differs from its id at its previous matched frame. Reported per 100 visible
object-frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment


def track_ids(reseeded: np.ndarray) -> np.ndarray:
    """Identities of tracked slots: (T, K) bool re-seed flags (all True at frame 0) -> (T, K)
    int64 ids, a new id each time a slot is re-seeded, unique within the sequence."""
    r = np.asarray(reseeded, dtype=bool).copy()
    if r.ndim != 2:
        raise ValueError(f'reseeded must be (T, K), got {r.shape}')
    r[0] = True  # every slot starts an identity at the first frame
    counts = np.cumsum(r, axis=0) - 1  # (T, K) re-seeds of the slot so far
    return counts * r.shape[1] + np.arange(r.shape[1])[None]


def _distances(xy: np.ndarray, gt_xy: np.ndarray) -> np.ndarray:
    """(K, 2), (N, 2) -> (N, K) Euclidean distances."""
    return np.linalg.norm(np.asarray(gt_xy, np.float64)[:, None] - np.asarray(xy)[None], axis=-1)


@dataclass
class IdentityAccumulator:
    """Sums IDF1 counts and ID switches over episodes; :meth:`summary` gives the report entry."""

    idtp: int = 0
    gt_detections: int = 0  # visible object-frames
    tracker_detections: int = 0  # on particle-frames
    switches: int = 0
    episodes: int = 0
    tracker_ids: int = 0
    per_episode: list[dict[str, float | int]] = field(default_factory=list)

    def add(self, ids: np.ndarray, xy: np.ndarray, on: np.ndarray, gt_xy: np.ndarray,
            gt_visible: np.ndarray, gate_px: np.ndarray) -> None:  # fmt: skip
        """One episode (shapes in the module docstring)."""
        on, visible = np.asarray(on, bool), np.asarray(gt_visible, bool)
        within = _co_present(ids, xy, on, gt_xy, visible, gate_px)  # (T, N, K)
        idtp = _global_idtp(ids, within)
        switches = _switches(ids, xy, on, gt_xy, visible, gate_px)
        n_gt, n_tr = int(visible.sum()), int(on.sum())
        self.idtp += idtp
        self.gt_detections += n_gt
        self.tracker_detections += n_tr
        self.switches += switches
        self.episodes += 1
        self.tracker_ids += len(np.unique(np.asarray(ids)[on]))
        self.per_episode.append({'idtp': idtp, 'object_frames': n_gt, 'detections': n_tr,
                                 'switches': switches})  # fmt: skip

    def summary(self) -> dict[str, float | int | None]:
        """``idf1``, ``idp``, ``idr`` (None where undefined), ``id_switches``,
        ``id_switches_per_100`` (per 100 visible object-frames) and the counts."""
        idfn = self.gt_detections - self.idtp
        idfp = self.tracker_detections - self.idtp
        total = 2 * self.idtp + idfp + idfn
        return {
            'idf1': 2 * self.idtp / total if total else None,
            'idp': self.idtp / self.tracker_detections if self.tracker_detections else None,
            'idr': self.idtp / self.gt_detections if self.gt_detections else None,
            'idtp': self.idtp, 'idfp': idfp, 'idfn': idfn,
            'id_switches': self.switches,
            'id_switches_per_100': 100 * self.switches / self.gt_detections
            if self.gt_detections else None,
            'object_frames': self.gt_detections, 'detections': self.tracker_detections,
            'tracker_ids': self.tracker_ids, 'episodes': self.episodes,
        }  # fmt: skip


def _co_present(ids: np.ndarray, xy: np.ndarray, on: np.ndarray, gt_xy: np.ndarray,
                visible: np.ndarray, gate_px: np.ndarray) -> np.ndarray:  # fmt: skip
    """(T, N, K) bool: object n visible, particle k on, and within the gate, per frame."""
    d = np.linalg.norm(
        np.asarray(gt_xy, np.float64)[:, :, None] - np.asarray(xy)[:, None], axis=-1
    )
    gate = np.asarray(gate_px, np.float64)[:, :, None]  # (T, N, 1)
    return (d <= gate) & visible[:, :, None] & on[:, None, :]


def _global_idtp(ids: np.ndarray, within: np.ndarray) -> int:
    """IDTP of the best one-to-one assignment of tracker ids to objects over the episode."""
    ids = np.asarray(ids)
    unique, index = np.unique(ids, return_inverse=True)  # index (T * K,)
    t, n, k = within.shape
    overlap = np.zeros((n, len(unique)), dtype=np.int64)  # (N, ids) co-present frames
    for obj in range(n):
        np.add.at(overlap[obj], index.reshape(t, k)[within[:, obj]], 1)
    if overlap.size == 0:
        return 0
    rows, cols = linear_sum_assignment(-overlap)
    return int(overlap[rows, cols].sum())


def _switches(ids: np.ndarray, xy: np.ndarray, on: np.ndarray, gt_xy: np.ndarray,
              visible: np.ndarray, gate_px: np.ndarray) -> int:  # fmt: skip
    """CLEAR-MOT identity switches of one episode (module docstring)."""
    last: dict[int, int] = {}  # object -> tracker id at its previous matched frame
    switches = 0
    for t in range(len(ids)):
        pairs = _frame_pairs(ids[t], xy[t], on[t], gt_xy[t], visible[t], gate_px[t], last)
        for obj, tid in pairs.items():
            if obj in last and last[obj] != tid:
                switches += 1
            last[obj] = tid
    return switches


def _frame_pairs(ids: np.ndarray, xy: np.ndarray, on: np.ndarray, gt_xy: np.ndarray,
                 visible: np.ndarray, gate: np.ndarray, last: dict[int, int]
                 ) -> dict[int, int]:  # fmt: skip
    """One frame's object -> tracker id matches: last frame's pairs kept while within the gate,
    the rest Hungarian-matched on distance within the gate."""
    d = _distances(xy, gt_xy)  # (N, K)
    ok = (d <= np.asarray(gate)[:, None]) & np.asarray(visible)[:, None] & np.asarray(on)[None]
    pairs: dict[int, int] = {}
    used = np.zeros(len(ids), dtype=bool)
    for obj, tid in last.items():
        slots = np.flatnonzero((np.asarray(ids) == tid) & ok[obj] & ~used)
        if len(slots):
            pairs[obj] = tid
            used[slots[0]] = True
    free_obj = [n for n in range(len(gt_xy)) if n not in pairs and ok[n].any()]
    free_trk = np.flatnonzero(~used & ok.any(axis=0))
    if free_obj and len(free_trk):
        big = 1e9
        cost = np.where(ok[np.ix_(free_obj, free_trk)], d[np.ix_(free_obj, free_trk)], big)
        for r, c in zip(*linear_sum_assignment(cost), strict=True):
            if cost[r, c] < big:
                pairs[free_obj[r]] = int(ids[free_trk[c]])
    return pairs
