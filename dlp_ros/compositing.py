"""Predicted frames that keep what is known: the observed frame, changed where particles move.

Decoding predicted particles redraws the whole frame from the DLP's background and glimpses, so
every pixel carries the reconstruction error (a tabletop frame decodes at about 27 dB while a
copied camera frame is exact). The forms below start from the last *observed* frame ``x`` and
take from the decoder only what the prediction changes:

- ``decoded``: ``D(p_n)``, the decoder's frame alone (the DLP's own output).
- ``residual``: ``x + D(p_n) - D(p_0)``: the decoder's change from the last observed particles
  ``p_0`` to the predicted ``p_n``, added to the observed frame. Where nothing moves,
  ``D(p_n) = D(p_0)`` and the observed pixels come through exactly.
- ``gated``: ``x (1 - m) + D(p_n) m`` with ``m = min(1, |D(p_n) - D(p_0)|_inf / tau)`` per pixel:
  the decoder's pixels where the prediction changes the decoded frame by ``tau`` or more, the
  observed pixels elsewhere (a soft mask, no extra graph output needed).
- ``warped``: ``W_n(x) + D(p_n) - W_n(D(p_0))``: the observed pixels *moved* with the particles.
  ``W_n`` warps an image backwards along a dense flow made from the particles' predicted
  displacements (``particle_flow``), so a moved object keeps its camera appearance (sharp, not
  redrawn); the decoder's terms replace what the object uncovers by the decoded background
  (``x - W(D(p_0))`` cancels the object left behind) and add what the warp cannot (appearance
  change). Where nothing moves it is ``x`` exactly.
- ``warped_gated``: ``W_n(x) (1 - m) + D(p_n) m`` with the gate ``m`` of ``gated`` taken on
  ``D(p_n) - W_n(D(p_0))``: the observed pixels moved with the particles wherever the moved
  decoded frame agrees with the decoded prediction, the decoder's pixels only where it does not
  (what the object uncovers, a change of appearance). Without motion it is ``gated``; unlike
  ``warped`` it adds no decoder error to the moved pixels.

All take float images in [0, 1], channels first, at the model's resolution, and return the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

MODES = ('decoded', 'residual', 'gated', 'warped', 'warped_gated')
GATE_TAU = 0.1  # change of the decoded frame (max over RGB, [0, 1] units) that selects it fully


@dataclass(frozen=True)
class Motion:
    """The particles' motion from the last observed frame to the predicted ones, in pixels of
    the model input (u right, v down, origin at the top-left corner)."""

    start: np.ndarray  # (K, 2) observed positions (u, v)
    end: np.ndarray  # (N, K, 2) predicted positions
    radius: np.ndarray  # (K,) object radius: half the glimpse box side
    weight: np.ndarray  # (K,) presence of each particle in [0, 1]

    @classmethod
    def from_particles(
        cls, mu: np.ndarray, predicted_mu: np.ndarray, scale: np.ndarray, on: np.ndarray, size: int
    ) -> Motion:
        """From normalised particles: mu (K, 2), predicted_mu (N, K, 2) in [-1, 1], scale
        (K, 2) latents (sigmoid = box side / image side), on (K,) or (K, 1) transparency."""
        side = 1.0 / (1.0 + np.exp(-np.asarray(scale, np.float64)))  # (K, 2)
        return cls(
            start=(np.asarray(mu, np.float64) + 1.0) / 2.0 * size,
            end=(np.asarray(predicted_mu, np.float64) + 1.0) / 2.0 * size,
            radius=np.sqrt(side[:, 0] * side[:, 1]) * size / 2.0,
            weight=np.asarray(on, np.float64).reshape(-1),
        )


def particle_flow(motion: Motion, size: int) -> np.ndarray:
    """Backward flow of each predicted step, (N, S, S, 2) float32 (du, dv) in pixels: output
    pixel p of step n reads the observed frame at p - d_n(p).

    d_n(p) = c(p) * sum_k w_nk(p) (end_nk - start_k) / sum_k w_nk(p), with the flat-topped kernel
    w_nk(p) = weight_k exp(-(|p - end_nk| / radius_k)^8 / 2) around each particle's predicted
    position and the coverage c(p) = max_k w_nk(p): whole objects move rigidly, far pixels stay.
    """
    centres = np.arange(size, dtype=np.float64) + 0.5  # pixel centres
    grid = np.stack(np.meshgrid(centres, centres, indexing='xy'), axis=-1)  # (S, S, 2) (u, v)
    shift = motion.end - motion.start[None]  # (N, K, 2)
    rel = grid[None, None] - motion.end[:, :, None, None, :]  # (N, K, S, S, 2)
    r = np.maximum(motion.radius, 0.5)[None, :, None, None]  # (1, K, 1, 1)
    w = motion.weight[None, :, None, None] * np.exp(-0.5 * (np.sum(rel**2, -1) / r**2) ** 4)
    total = w.sum(axis=1)  # (N, S, S)
    mean = np.einsum('nkhw,nkc->nhwc', w, shift) / np.maximum(total, 1e-9)[..., None]
    return (mean * w.max(axis=1)[..., None]).astype(np.float32)


def warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Backward warp (3, S, S) float32 along each flow (N, S, S, 2) -> (N, 3, S, S) (bilinear,
    border pixels repeated)."""
    size = image.shape[-1]
    base = np.stack(np.meshgrid(np.arange(size), np.arange(size), indexing='xy'), -1)
    hwc = np.ascontiguousarray(image.transpose(1, 2, 0))  # (S, S, 3)
    out = []
    for f in flow:
        src = (base - f).astype(np.float32)  # (S, S, 2)
        moved = cv2.remap(hwc, src[..., 0], src[..., 1], cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
        out.append(moved.transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


def compose(
    mode: str,
    observed: np.ndarray,
    decoded: np.ndarray,
    decoded_observed: np.ndarray,
    motion: Motion | None = None,
) -> np.ndarray:
    """Predicted frames in the given form.

    Args:
        mode: one of ``MODES``.
        observed: (3, S, S) float32, the last observed frame x (preprocessed, [0, 1]).
        decoded: (N, 3, S, S) float32, the decoded predicted particles D(p_n).
        decoded_observed: (3, S, S) float32, the decoded last observed particles D(p_0).
        motion: the particles' motion (needed by the ``warped`` forms only).

    Returns:
        (N, 3, S, S) float32 in [0, 1].
    """
    if mode not in MODES:
        raise ValueError(f'compositing mode must be one of {", ".join(MODES)}, got {mode!r}')
    if decoded.ndim != 4 or not observed.shape == decoded.shape[1:] == decoded_observed.shape:
        raise ValueError(
            f'compose: observed {observed.shape} and decoded_observed {decoded_observed.shape} '
            f'must be (3, S, S) matching decoded {decoded.shape} (N, 3, S, S)'
        )
    if mode == 'decoded':
        return np.clip(decoded, 0.0, 1.0)
    change = decoded - decoded_observed[None]  # (N, 3, S, S)
    if mode == 'residual':
        return np.clip(observed[None] + change, 0.0, 1.0)
    base = observed[None]  # (1, 3, S, S): what the decoder's pixels are laid over
    if mode in ('warped', 'warped_gated'):
        if motion is None:
            raise ValueError(f"compositing mode '{mode}' needs the particles' motion")
        flow = particle_flow(motion, observed.shape[-1])  # (N, S, S, 2)
        base, moved_decoded = warp(observed, flow), warp(decoded_observed, flow)  # (N, 3, S, S)
        if mode == 'warped':
            return np.clip(base - moved_decoded + decoded, 0.0, 1.0)
        change = decoded - moved_decoded
    mask = np.minimum(1.0, np.abs(change).max(axis=1, keepdims=True) / GATE_TAU)  # (N, 1, S, S)
    return np.clip(base * (1.0 - mask) + decoded * mask, 0.0, 1.0)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """(N, 3, S, S) float in [0, 1] -> (N, S, S, 3) uint8 RGB."""
    out = np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.ascontiguousarray(out.transpose(0, 2, 3, 1))


def from_uint8(images: np.ndarray) -> np.ndarray:
    """(..., S, S, 3) uint8 RGB -> (..., 3, S, S) float32 in [0, 1]."""
    return np.moveaxis(np.asarray(images, np.float32) / 255.0, -1, -3)
