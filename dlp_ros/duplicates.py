"""One particle per object on the output: suppress on particles that sit on another's spot.

The DLP often puts two or more particles on one object, each with its own identity and all of
them *on*. A detector's output (yolo_ros, isaac_ros) is non-maximum suppressed; this is the same
for particles: of the on particles within ``radius`` pixels of each other one stays on, the others
are published as off (``on`` false; their transparency, position and the model's own state are
untouched: the decoder and the dynamics still see every particle).

Which one stays is sticky: a particle that stayed on in the previous frame of the stream is
preferred, then the more present one, so a followed identity does not flicker between the two.
Numpy only.
"""

from __future__ import annotations

import numpy as np

from dlp_ros.tracking import ON_THRESHOLD


def suppress(
    xy: np.ndarray,
    presence: np.ndarray,
    radius: float,
    on_threshold: float = ON_THRESHOLD,
    preferred: np.ndarray | None = None,
) -> np.ndarray:
    """Greedy non-maximum suppression of on particles.

    Args:
        xy: (K, 2) positions, in the units of ``radius`` (pixels of the model input).
        presence: (K,) transparency; on = presence > ``on_threshold``.
        radius: an on particle within this distance of one that stays on is suppressed; 0: none.
        preferred: (K,) bool, particles to keep first (those kept in the previous frame).

    Returns:
        (K,) bool, True for the on particles suppressed.
    """
    presence = np.asarray(presence, np.float64).reshape(-1)  # (K,)
    xy = np.asarray(xy, np.float64).reshape(-1, 2)  # (K, 2)
    suppressed = np.zeros(len(presence), dtype=bool)
    if radius <= 0:
        return suppressed
    on = np.flatnonzero(presence > on_threshold)
    first = np.zeros(len(presence)) if preferred is None else np.asarray(preferred, float)
    order = on[np.lexsort((-presence[on], -first[on]))]  # preferred first, then most present
    kept: list[int] = []
    for k in order:
        if kept and np.min(np.linalg.norm(xy[kept] - xy[k], axis=1)) <= radius:
            suppressed[k] = True
        else:
            kept.append(int(k))
    return suppressed


class DuplicateFilter:
    """:func:`suppress` over a stream of frames of one tracker (slot k = one identity)."""

    def __init__(self, radius: float, on_threshold: float = ON_THRESHOLD) -> None:
        if not np.isfinite(radius) or radius < 0:
            raise ValueError(f'radius: expected a finite value >= 0, got {radius}')
        self.radius = float(radius)
        self.on_threshold = float(on_threshold)
        self._kept: np.ndarray | None = None  # (K,) bool, on and not suppressed last frame

    def reset(self) -> None:
        """A new stream (new identities): no preference."""
        self._kept = None

    def __call__(
        self, xy: np.ndarray, presence: np.ndarray, new: np.ndarray | None = None
    ) -> np.ndarray:
        """(K, 2), (K,) of the next frame -> (K,) bool suppressed. ``new``: (K,) bool, slots
        that start a new identity at this frame (re-seeded): no preference for them."""
        presence = np.asarray(presence).reshape(-1)
        preferred = None
        if self._kept is not None and len(self._kept) == len(presence):
            preferred = self._kept if new is None else self._kept & ~np.asarray(new, bool)
        out = suppress(xy, presence, self.radius, self.on_threshold, preferred)
        self._kept = (presence > self.on_threshold) & ~out
        return out
