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

All take float images in [0, 1], channels first, at the model's resolution, and return the same.
"""

from __future__ import annotations

import numpy as np

MODES = ('decoded', 'residual', 'gated')
GATE_TAU = 0.1  # change of the decoded frame (max over RGB, [0, 1] units) that selects it fully


def compose(
    mode: str, observed: np.ndarray, decoded: np.ndarray, decoded_observed: np.ndarray
) -> np.ndarray:
    """Predicted frames in the given form.

    Args:
        mode: one of ``MODES``.
        observed: (3, S, S) float32, the last observed frame x (preprocessed, [0, 1]).
        decoded: (N, 3, S, S) float32, the decoded predicted particles D(p_n).
        decoded_observed: (3, S, S) float32, the decoded last observed particles D(p_0).

    Returns:
        (N, 3, S, S) float32 in [0, 1].
    """
    if mode not in MODES:
        raise ValueError(f'compositing mode must be one of {", ".join(MODES)}, got {mode!r}')
    if decoded.ndim != 4 or observed.shape != decoded.shape[1:] != decoded_observed.shape:
        raise ValueError(
            f'compose: observed {observed.shape} and decoded_observed {decoded_observed.shape} '
            f'must be (3, S, S) matching decoded {decoded.shape} (N, 3, S, S)'
        )
    if mode == 'decoded':
        return np.clip(decoded, 0.0, 1.0)
    change = decoded - decoded_observed[None]  # (N, 3, S, S)
    if mode == 'residual':
        return np.clip(observed[None] + change, 0.0, 1.0)
    mask = np.minimum(1.0, np.abs(change).max(axis=1, keepdims=True) / GATE_TAU)  # (N, 1, S, S)
    return np.clip(observed[None] * (1.0 - mask) + decoded * mask, 0.0, 1.0)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """(N, 3, S, S) float in [0, 1] -> (N, S, S, 3) uint8 RGB."""
    out = np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.ascontiguousarray(out.transpose(0, 2, 3, 1))


def from_uint8(images: np.ndarray) -> np.ndarray:
    """(..., S, S, 3) uint8 RGB -> (..., 3, S, S) float32 in [0, 1]."""
    return np.moveaxis(np.asarray(images, np.float32) / 255.0, -1, -3)
