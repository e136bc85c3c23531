"""Slot assignment of the tracked encoding, numpy only (the runtime half of DDLP-style tracking).

Per frame the tracking encoder gives K *tracked* particles (anchored at the previous frame's
means) and K *detections* (anchored at the frame's top-K prior proposals). :func:`assign_slots`
decides which slots keep their tracked particle and which are re-seeded by a detection that no
tracked particle covers; :func:`gather_slots` builds the frame's particles from that decision.
Frame 0 takes every detection (:func:`first_frame_slots`). ``dlp_training.models.tracking`` runs
the same functions around the torch model (``track_sequence``), :class:`dlp_ros.runtime.Tracker`
around the ONNX graphs, so both give the same identities.
"""

from __future__ import annotations

import numpy as np

ON_THRESHOLD = 0.5  # a particle with transparency above this is on


def first_frame_slots(k: int) -> np.ndarray:
    """Slot sources of the first frame: every slot takes its detection, (K,) = 0..K-1."""
    return np.arange(k, dtype=np.int64)


def assign_slots(
    tracked_mu: np.ndarray,
    tracked_presence: np.ndarray,
    detected_mu: np.ndarray,
    detected_presence: np.ndarray,
    on_threshold: float = ON_THRESHOLD,
    claim_radius: float = 0.25,
) -> np.ndarray:
    """Which slots keep their tracked particle and which take a detection (numpy only).

    Detections that are on, most present first, are *new* when no claiming particle (an on
    tracked particle, or a detection already placed) is within ``claim_radius``. Each new
    detection re-seeds one donor slot: the off tracked particle with the lowest presence, else
    the on one whose nearest on neighbour is closest, if within ``claim_radius / 2`` (two
    particles on one object); with no donor left, the remaining detections are dropped. The
    order of the detections does not matter otherwise, so a permuted detection set changes
    nothing.

    Args:
        tracked_mu: (K, 2) positions of the particles anchored at the previous frame's means.
        tracked_presence: (K,) their transparency in [0, 1].
        detected_mu: (D, 2) positions of the frame's own detections (D = K in the encoder).
        detected_presence: (D,) their transparency.
        on_threshold: a particle is on when its transparency is above this.
        claim_radius: normalised units ([-1, 1] = image); the DLP's ``anchor_scale``, the
            glimpse half-width, in ``track_sequence`` and the runtime.

    Returns:
        source (K,) int64: -1 keeps the tracked particle of the slot, j >= 0 re-seeds the slot
        with detection j.
    """
    k, d = tracked_mu.shape[0], detected_mu.shape[0]
    if tracked_mu.shape != (k, 2) or tracked_presence.shape != (k,):
        raise ValueError(f'tracked_mu must be (K, 2) and tracked_presence (K,), got '
                         f'{tracked_mu.shape}, {tracked_presence.shape}')  # fmt: skip
    if detected_mu.shape != (d, 2) or detected_presence.shape != (d,):
        raise ValueError(f'detected_mu must be (D, 2) and detected_presence (D,), got '
                         f'{detected_mu.shape}, {detected_presence.shape}')  # fmt: skip
    source = np.full(k, -1, dtype=np.int64)
    pos = tracked_mu.astype(np.float64)  # (K, 2) slot positions, updated as slots re-seed
    claims = tracked_presence > on_threshold  # (K,) slots that cover their neighbourhood
    for j in np.argsort(-detected_presence, kind='stable'):
        if detected_presence[j] <= on_threshold:
            break  # the rest are off as well
        if claims.any() and np.linalg.norm(pos[claims] - detected_mu[j], axis=-1).min() <= (
            claim_radius
        ):
            continue  # already covered
        donor = _donor(pos, tracked_presence, claims, source >= 0, on_threshold, claim_radius / 2)
        if donor is None:
            break
        source[donor], pos[donor], claims[donor] = j, detected_mu[j], True
    return source


def _donor(
    pos: np.ndarray,
    presence: np.ndarray,
    claims: np.ndarray,
    reseeded: np.ndarray,
    on_threshold: float,
    duplicate_radius: float,
) -> int | None:
    """The slot to re-seed: the least present off one, else the most redundant on one."""
    off = np.flatnonzero((presence <= on_threshold) & ~reseeded)  # (n_off,)
    if off.size:
        return int(off[np.argmin(presence[off])])
    on = np.flatnonzero(claims & ~reseeded)  # (n,) tracked on slots
    if on.size < 2:
        return None
    dist = np.linalg.norm(pos[on, None] - pos[None, on], axis=-1)  # (n, n)
    np.fill_diagonal(dist, np.inf)
    nearest = dist.min(1)  # (n,)
    i = int(np.argmin(nearest))
    return int(on[i]) if nearest[i] < duplicate_radius else None


def gather_slots(
    tracked: dict[str, np.ndarray], detected: dict[str, np.ndarray], source: np.ndarray
) -> dict[str, np.ndarray]:
    """Per-slot arrays (K, ...): ``tracked[name][k]``, or ``detected[name][source[k]]``."""
    take = np.maximum(source, 0)  # (K,)
    out = {}
    for name, a in tracked.items():
        keep = (source < 0).reshape(-1, *([1] * (a.ndim - 1)))  # (K, 1, ...)
        out[name] = np.where(keep, a, detected[name][take])
    return out
