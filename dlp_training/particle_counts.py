"""One particle per object? Duplicate particles and the on-count against the objects in view.

Torch-free (numpy, scipy through :func:`dlp_training.metrics.match_frame`). Per frame, with the
particles that are *on* (transparency > ``threshold``, 0.5, the ``evaluate-dlp`` localisation
rule) and the visible ground-truth objects:

* an on particle is a **duplicate** when it is *unmatched* (the Hungarian matching of
  :func:`~dlp_training.metrics.match_frame` did not pair it with an object, or paired it farther
  than the object's radius: the gate of the localisation recall) or *crowded* (within
  ``near_px`` = 2 px of another on particle); ``duplicate_fraction`` = duplicates / on
  particles over all frames (a particle both unmatched and crowded counts once);
* the **on-count**: ``on_ratio_mean``, the mean over frames with a visible object of (on
  particles / visible objects), and ``on_within_fraction``, the fraction of frames whose on-count
  is within ``tolerance`` (10 %) of the objects in view, ``|on - visible| <= 0.1 visible`` (a
  frame without a visible object is within only with no particle on).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dlp_training.metrics import match_frame

NEAR_PX = 2.0
TOLERANCE = 0.10


def frame_duplicates(xy: np.ndarray, presence: np.ndarray, gt_xy: np.ndarray,
                     gt_radius: np.ndarray, gt_visible: np.ndarray, threshold: float = 0.5,
                     near_px: float = NEAR_PX) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """One frame: xy (K, 2) px, presence (K,), gt_xy (N, 2), gt_radius (N,), gt_visible (N,) ->
    (unmatched (K,) bool, crowded (K,) bool), both False for particles that are off."""
    on = np.asarray(presence).reshape(-1) > threshold  # (K,)
    m = match_frame(xy, presence, gt_xy, gt_radius, gt_visible, threshold)
    gated = m.particles[m.distances < np.asarray(gt_radius, np.float64)[m.objects]]
    unmatched = on.copy()
    unmatched[gated] = False
    p = np.asarray(xy, np.float64)
    d = np.linalg.norm(p[:, None] - p[None], axis=-1)  # (K, K)
    d[~on] = np.inf
    d[:, ~on] = np.inf
    np.fill_diagonal(d, np.inf)
    crowded = on & (d.min(axis=1) <= near_px) if len(p) > 1 else np.zeros_like(on)
    return unmatched, crowded


@dataclass
class CountAccumulator:
    """Sums duplicates and on-counts over frames; :meth:`summary` gives the report entry."""

    threshold: float = 0.5
    near_px: float = NEAR_PX
    tolerance: float = TOLERANCE
    frames: int = 0
    on: int = 0
    unmatched: int = 0
    crowded: int = 0
    duplicates: int = 0
    ratio_sum: float = 0.0
    ratio_frames: int = 0  # frames with a visible object
    within: int = 0

    def add(self, xy: np.ndarray, presence: np.ndarray, gt_xy: np.ndarray,
            gt_radius: np.ndarray, gt_visible: np.ndarray) -> None:  # fmt: skip
        """Frames: xy (T, K, 2) px, presence (T, K), gt_xy (T, N, 2), radius/visible (T, N)."""
        for t in range(len(xy)):
            unmatched, crowded = frame_duplicates(
                xy[t], presence[t], gt_xy[t], gt_radius[t], gt_visible[t], self.threshold,
                self.near_px,
            )  # fmt: skip
            n_on = int(np.sum(np.asarray(presence[t]) > self.threshold))
            n_vis = int(np.sum(gt_visible[t]))
            self.frames += 1
            self.on += n_on
            self.unmatched += int(unmatched.sum())
            self.crowded += int(crowded.sum())
            self.duplicates += int((unmatched | crowded).sum())
            if n_vis:
                self.ratio_sum += n_on / n_vis
                self.ratio_frames += 1
            self.within += abs(n_on - n_vis) <= self.tolerance * n_vis

    def summary(self) -> dict[str, float | int | None]:
        """``duplicate_fraction`` (None without on particles), ``unmatched_fraction``,
        ``crowded_fraction``, ``on_ratio_mean``, ``on_within_fraction`` and the counts."""
        on = self.on or None
        return {
            'duplicate_fraction': self.duplicates / on if on else None,
            'unmatched_fraction': self.unmatched / on if on else None,
            'crowded_fraction': self.crowded / on if on else None,
            'on_ratio_mean': self.ratio_sum / self.ratio_frames if self.ratio_frames else None,
            'on_within_fraction': self.within / self.frames if self.frames else None,
            'particles_on': self.on, 'duplicates': self.duplicates, 'frames': self.frames,
            'frames_with_objects': self.ratio_frames, 'near_px': self.near_px,
            'tolerance': self.tolerance, 'on_threshold': self.threshold,
        }  # fmt: skip
