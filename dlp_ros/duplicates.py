"""One particle per object on the output: suppress on particles that sit on another's box.

The DLP often puts two or more particles on one object, each with its own identity and all of
them *on*. A detector's output (yolo_ros, isaac_ros) is non-maximum suppressed; this is the same
for particles, with each particle's glimpse box (centre ``mu``, side ``sigmoid(scale)`` of the
image): of on particles whose boxes overlap by more than an IoU threshold one stays on, the
others are published as off (``on`` false; their transparency, position and the model's own state
are untouched: the decoder and the dynamics still see every particle). An IoU, not a distance,
so one threshold suits small blocks and large balls alike.

Which one stays is sticky: a particle that stayed on in the previous frame of the stream is
preferred, then the more present one, so a followed identity does not flicker between the two.
Numpy only.
"""

from __future__ import annotations

import numpy as np

from dlp_ros.tracking import ON_THRESHOLD


def particle_boxes(mu: np.ndarray, scale: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Glimpse boxes in pixels of the S x S model input: mu (K, 2) in [-1, 1] and the scale
    latent (K, 2) -> centres (K, 2) and half-sides (K, 2)."""
    centre = (np.asarray(mu, np.float64) + 1.0) / 2.0 * size
    half = size / 2.0 / (1.0 + np.exp(-np.asarray(scale, np.float64)))
    return centre, half


def box_iou(centre: np.ndarray, half: np.ndarray) -> np.ndarray:
    """Intersection over union of axis-aligned boxes: centres, half-sides (K, 2) -> (K, K)."""
    lo, hi = centre - half, centre + half  # (K, 2)
    side = np.clip(np.minimum(hi[:, None], hi[None]) - np.maximum(lo[:, None], lo[None]), 0, None)
    inter = side[..., 0] * side[..., 1]  # (K, K)
    area = 4.0 * half[:, 0] * half[:, 1]  # (K,)
    union = area[:, None] + area[None] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def suppress(
    centre: np.ndarray,
    half: np.ndarray,
    presence: np.ndarray,
    iou: float,
    on_threshold: float = ON_THRESHOLD,
    preferred: np.ndarray | None = None,
) -> np.ndarray:
    """Greedy non-maximum suppression of on particles.

    Args:
        centre, half: (K, 2) box centres and half-sides (:func:`particle_boxes`).
        presence: (K,) transparency; on = presence > ``on_threshold``.
        iou: an on particle whose box overlaps a kept one's by more than this is suppressed;
            1 suppresses none.
        preferred: (K,) bool, particles to keep first (those kept in the previous frame).

    Returns:
        (K,) bool, True for the on particles suppressed.
    """
    presence = np.asarray(presence, np.float64).reshape(-1)  # (K,)
    suppressed = np.zeros(len(presence), dtype=bool)
    on = np.flatnonzero(presence > on_threshold)
    if iou >= 1.0 or on.size < 2:
        return suppressed
    overlap = box_iou(np.asarray(centre, np.float64), np.asarray(half, np.float64))  # (K, K)
    first = np.zeros(len(presence)) if preferred is None else np.asarray(preferred, float)
    order = on[np.lexsort((-presence[on], -first[on]))]  # preferred first, then most present
    kept: list[int] = []
    for k in order:
        if kept and overlap[k, kept].max() > iou:
            suppressed[k] = True
        else:
            kept.append(int(k))
    return suppressed


class DuplicateFilter:
    """:func:`suppress` over a stream of frames of one tracker (slot k = one identity)."""

    def __init__(self, iou: float, on_threshold: float = ON_THRESHOLD) -> None:
        if not 0.0 <= iou <= 1.0:
            raise ValueError(f'iou: expected a value in [0, 1], got {iou}')
        self.iou = float(iou)
        self.on_threshold = float(on_threshold)
        self._kept: np.ndarray | None = None  # (K,) bool, on and not suppressed last frame

    def reset(self) -> None:
        """A new stream (new identities): no preference."""
        self._kept = None

    def __call__(
        self,
        centre: np.ndarray,
        half: np.ndarray,
        presence: np.ndarray,
        new: np.ndarray | None = None,
    ) -> np.ndarray:
        """Boxes (K, 2), (K, 2) and presence (K,) of the next frame -> (K,) bool suppressed.
        ``new``: (K,) bool, slots that start a new identity at this frame (re-seeded): no
        preference for them."""
        presence = np.asarray(presence).reshape(-1)
        preferred = None
        if self._kept is not None and len(self._kept) == len(presence):
            preferred = self._kept if new is None else self._kept & ~np.asarray(new, bool)
        out = suppress(centre, half, presence, self.iou, self.on_threshold, preferred)
        self._kept = (presence > self.on_threshold) & ~out
        return out
