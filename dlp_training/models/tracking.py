"""Tracked encoding: the particle index is an identity over time (DDLP-style anchors + re-seed).

:meth:`Dlp.encode <dlp_training.models.dlp.Dlp.encode>` anchors frame t's particles at its K
best-scored prior proposals, so particle k is a per-frame *score rank*, not an object. The
dynamics model (``dlp_training.models.dynamics``) needs particle k at t and t + 1 to be the same
entity. As in DDLP (Daniel & Tamar, TMLR 2024), frame t's *tracked* particles are anchored at
frame t - 1's posterior means, so each particle's offset encoder re-finds its own object near
where it was (it can move up to ``anchor_scale`` per frame). Anchoring alone never sends a
particle to a new or lost object and slowly lets several particles gather on one, so each frame
is also encoded as usual (the *detections*, anchored at the top-K proposals) and
:func:`assign_slots` lets a detection that no tracked particle covers *re-seed* a slot: an off
particle, or else a redundant one (two particles on one object). Frame 0 is all detections,
i.e. exactly :meth:`Dlp.encode`. A re-seeded slot starts a new identity (``Track.reseeded``).

Runtime (numpy + ONNX, no torch), per frame t, with the two export views below::

    out = tracking_encoder(image, prev_mu[None])   # DlpTrackingEncoder: (1, 2K, .) fields,
    tracked = {n: v[0, :K] for n, v in out}        # [:K] anchored at frame t - 1's final mu
    detected = {n: v[0, K:] for n, v in out}       # [K:] at the frame's top-K proposals
    source = first_frame_slots(K) if t == 0 else assign_slots(
        tracked['mu'], tracked['transparency'][:, 0], detected['mu'],
        detected['transparency'][:, 0], ON_THRESHOLD, anchor_scale)             # (K,)
    fields = gather_slots(tracked, detected, source)           # (K, .) each; prev_mu = mu
    bg_features = background_encoder(image, fields['mu'][None], fields['transparency'][None])

(at frame 0 ``prev_mu`` may be anything, zeros). The numpy core (:func:`assign_slots`,
:func:`first_frame_slots`, :func:`gather_slots`, ``ON_THRESHOLD``) lives in the runtime,
:mod:`dlp_ros.tracking`, and is re-exported here; :class:`dlp_ros.runtime.Tracker` runs exactly
this loop on the exported graphs, and ``test_tracking.py`` runs it against :func:`track_sequence`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from dlp_ros.tracking import ON_THRESHOLD, assign_slots, first_frame_slots, gather_slots
from dlp_training.models.dlp import Dlp, Particles

logger = logging.getLogger(__name__)
__all__ = [
    'HEAD_FIELDS', 'METHOD', 'ON_THRESHOLD', 'DlpBackgroundEncoder', 'DlpTrackingEncoder', 'Track',
    'assign_slots', 'encode_sequence', 'first_frame_slots', 'gather_slots',
    'track_sequence',
]  # fmt: skip

METHOD = 'ddlp_anchors+reseed'  # recorded in latents manifests
HEAD_FIELDS = ('mu', 'logvar', 'head')  # per-particle arrays that assign_slots' source gathers


class Track(NamedTuple):
    """A tracked sequence: particles (T, K, ...) (bg_features (T, Fb)) and re-seed flags."""

    particles: Particles
    reseeded: Tensor  # (T, K) bool: slot k starts a new identity at frame t (all at t = 0)


# ----------------------------------------------------------------------------- sequences


@torch.inference_mode()
def track_sequence(
    model: Dlp,
    frames: Tensor,
    batch: int = 64,
    on_threshold: float = ON_THRESHOLD,
    claim_radius: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> Track:
    """Tracked posterior means of one sequence (see the module docstring).

    The prior, the detections and the background run in batches of ``batch`` frames; the
    tracked glimpse passes run frame by frame (each frame's anchors are the previous means).

    Args:
        model: a :class:`Dlp` (eval mode).
        frames: (T, 3, S, S) floats in [0, 1], consecutive frames of one episode.
        batch: frames per batched pass.
        on_threshold, claim_radius: see :func:`assign_slots`; claim_radius None: the model's
            ``anchor_scale``.
        progress: called with 1 after each frame (e.g. ``tqdm.update``).

    Returns:
        :class:`Track` with (T, K, ...) particles (bg_features (T, Fb)), deterministic.
    """
    c = model.config
    s = c.S
    if frames.ndim != 4 or tuple(frames.shape[1:]) != (3, s, s) or not len(frames):
        raise ValueError(f'frames must be (T >= 1, 3, {s}, {s}), got {tuple(frames.shape)}')
    if batch < 1:
        raise ValueError(f'batch must be >= 1, got {batch}')
    k, t_len = c.K, frames.shape[0]
    radius = c.anchor_scale if claim_radius is None else claim_radius
    chunks = [frames[i : i + batch] for i in range(0, t_len, batch)]
    props = torch.cat([model.proposals(x) for x in chunks])  # (T, M, 2)
    det = [
        model.glimpse_passes(x, p[:, :k]) for x, p in zip(chunks, props.split(batch), strict=True)
    ]
    detected = {
        n: torch.cat(v).cpu().numpy()
        for n, v in zip(HEAD_FIELDS, zip(*det, strict=True), strict=True)
    }
    out = {n: np.empty_like(a) for n, a in detected.items()}  # (T, K, ...) each
    reseeded = np.zeros((t_len, k), dtype=bool)  # (T, K)
    for t in range(t_len):
        det_t = {n: a[t] for n, a in detected.items()}  # (K, ...) each
        if t == 0:
            source = first_frame_slots(k)
            tracked_t = det_t
        else:
            anchors = torch.from_numpy(out['mu'][t - 1]).to(frames)[None]  # (1, K, 2)
            passes = model.glimpse_passes(frames[t : t + 1], anchors)
            tracked_t = {n: v[0].cpu().numpy() for n, v in zip(HEAD_FIELDS, passes, strict=True)}
            source = assign_slots(
                tracked_t['mu'],
                _sigmoid(tracked_t['head'][:, 6]),
                det_t['mu'],
                _sigmoid(det_t['head'][:, 6]),
                on_threshold,
                radius,
            )
        for n, a in gather_slots(tracked_t, det_t, source).items():
            out[n][t] = a
        reseeded[t] = source >= 0
        if progress is not None:
            progress(1)
    mu, logvar, head = (torch.from_numpy(out[n]).to(frames) for n in HEAD_FIELDS)
    hb = torch.cat(
        [
            model.background_head(x, m, torch.sigmoid(h[..., 6:7]))
            for x, m, h in zip(chunks, mu.split(batch), head.split(batch), strict=True)
        ]
    )  # (T, 2 Fb)
    post = model.assemble(mu, logvar, head, hb, props)
    return Track(Dlp.sample(post, deterministic=True), torch.from_numpy(reseeded))


def encode_sequence(model: Dlp, frames: Tensor, batch: int = 64) -> Particles:
    """Frames (T, 3, S, S) in [0, 1] -> tracked :class:`Particles` (T, K, ...) (index = id)."""
    return track_sequence(model, frames, batch).particles


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# ----------------------------------------------------------------------------- export views


class DlpTrackingEncoder(nn.Module):
    """Export view of the per-frame passes: image (B, 3, S, S), anchors (B, K, 2) ->
    ``OUTPUT_NAMES`` (B, 2K, ...) posterior means (transparency in [0, 1]); particles [:K] are
    anchored at ``anchors``, [K:] are the detections (anchored at the top-K proposals)."""

    INPUT_NAMES = ('image', 'anchors')
    OUTPUT_NAMES = ('mu', 'logvar', 'scale', 'depth', 'transparency', 'features')

    def __init__(self, dlp: Dlp) -> None:
        super().__init__()
        self.dlp = dlp

    def forward(self, image: Tensor, anchors: Tensor) -> tuple[Tensor, ...]:
        k = self.dlp.config.K
        both = torch.cat([anchors, self.dlp.proposals(image)[:, :k]], dim=1)  # (B, 2K, 2)
        mu, logvar, head = self.dlp.glimpse_passes(image, both)
        f = self.dlp.config.F
        return (mu, logvar, head[..., 0:2], head[..., 4:5], torch.sigmoid(head[..., 6:7]),
                head[..., 8 : 8 + f])  # fmt: skip


class DlpBackgroundEncoder(nn.Module):
    """Export view of :meth:`Dlp.background_head` (means): image (B, 3, S, S), mu (B, K, 2),
    transparency (B, K, 1) -> bg_features (B, Fb)."""

    INPUT_NAMES = ('image', 'mu', 'transparency')
    OUTPUT_NAMES = ('bg_features',)

    def __init__(self, dlp: Dlp) -> None:
        super().__init__()
        self.dlp = dlp

    def forward(self, image: Tensor, mu: Tensor, transparency: Tensor) -> Tensor:
        return self.dlp.background_head(image, mu, transparency)[:, : self.dlp.config.Fb]
