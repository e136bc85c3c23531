"""One frame of particles as numpy arrays, and its pixel-space / message-shaped views.

Units (see ``dlp_training.models.dlp``): positions ``mu`` are normalised (x, y) in [-1, 1] over the
model input, the region of the camera frame the model card's resize mode shows it
(:mod:`dlp_ros.input_view`), so they map to the input image's pixels linearly: u = ox + (mu_x +
1) / 2 * sx, v = oy + (mu_y + 1) / 2 * sy, with origin (ox, oy) and span (sx, sy) of that region
(squash: (0, 0) and (width, height)); u right, v down, origin at the top-left corner of the
top-left pixel. ``sigmoid(scale)`` is a particle's box side as a fraction of the model image
side, per axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlp_ros.input_view import DEFAULT_RESIZE, InputView
from dlp_ros.tracking import ON_THRESHOLD

FIELDS = ('mu', 'logvar', 'scale', 'depth', 'transparency', 'features', 'bg_features')


@dataclass
class ParticleFrame:
    """Posterior means (or predictions) of one frame, float32 numpy arrays.

    ``reseeded[k]`` is True when slot k began a new identity at this frame (every slot of a
    tracker's first frame; never for predicted frames). ``suppressed[k]`` is True when slot k is
    on but published as off: it sits on the spot of another on particle
    (:mod:`dlp_ros.duplicates`; set by the pipeline, the model's state is untouched).
    """

    mu: np.ndarray  # (K, 2) position (x, y) in [-1, 1]
    logvar: np.ndarray  # (K, 2) position log-variance, normalised units
    scale: np.ndarray  # (K, 2) scale latent (sigmoid = box side / image side)
    depth: np.ndarray  # (K, 1) smaller is nearer
    transparency: np.ndarray  # (K, 1) presence in [0, 1]
    features: np.ndarray  # (K, F) appearance latent
    bg_features: np.ndarray  # (Fb,) background latent
    reseeded: np.ndarray | None = None  # (K,) bool; None -> all False
    suppressed: np.ndarray | None = None  # (K,) bool; None -> all False

    def __post_init__(self) -> None:
        for name in FIELDS:
            setattr(self, name, np.asarray(getattr(self, name), dtype=np.float32))
        k = self.mu.shape[0]
        if self.reseeded is None:
            self.reseeded = np.zeros(k, dtype=bool)
        self.reseeded = np.asarray(self.reseeded, dtype=bool)
        if self.suppressed is None:
            self.suppressed = np.zeros(k, dtype=bool)
        self.suppressed = np.asarray(self.suppressed, dtype=bool)
        want = {'mu': (k, 2), 'logvar': (k, 2), 'scale': (k, 2), 'depth': (k, 1),
                'transparency': (k, 1), 'reseeded': (k,), 'suppressed': (k,)}  # fmt: skip
        for name, shape in want.items():
            if getattr(self, name).shape != shape:
                raise ValueError(f'ParticleFrame.{name} must be {shape} (K = {k} from mu), got '
                                 f'{getattr(self, name).shape}')  # fmt: skip
        if self.features.ndim != 2 or self.features.shape[0] != k:
            raise ValueError(f'ParticleFrame.features must be (K={k}, F), got '
                             f'{self.features.shape}')  # fmt: skip
        if self.bg_features.ndim != 1:
            raise ValueError(f'ParticleFrame.bg_features must be (Fb,), got '
                             f'{self.bg_features.shape}')  # fmt: skip

    @property
    def n_particles(self) -> int:
        """K."""
        return int(self.mu.shape[0])

    def pixels(self, width: int, height: int, resize: str = DEFAULT_RESIZE) -> np.ndarray:
        """(K, 2) positions (u, v) in pixels of a width x height input image that the model saw
        through ``resize`` (the card's ``image.resize``)."""
        return InputView(width, height, resize).to_pixels(self.mu)

    def pixel_std(self, width: int, height: int, resize: str = DEFAULT_RESIZE) -> np.ndarray:
        """(K, 2) standard deviations of (u, v) in pixels: exp(logvar / 2) / 2 * (sx, sy), the
        span of the model's view (squash: (W, H))."""
        span = InputView(width, height, resize).span().astype(np.float32)
        return (np.exp(0.5 * self.logvar) / 2.0 * span).astype(np.float32)

    def scale_px(self, width: int, height: int, resize: str = DEFAULT_RESIZE) -> np.ndarray:
        """(K,) side of each particle's square glimpse in pixels of a width x height image.

        The box is sigmoid(scale_x) * sx by sigmoid(scale_y) * sy (the span of the model's
        view; squash: W and H); the square of the same area (their geometric mean) is returned.
        """
        sx, sy = InputView(width, height, resize).span()
        frac = 1.0 / (1.0 + np.exp(-self.scale.astype(np.float64)))  # (K, 2)
        return np.sqrt(frac[:, 0] * sx * frac[:, 1] * sy).astype(np.float32)

    def message_fields(
        self,
        width: int,
        height: int,
        resize: str = DEFAULT_RESIZE,
        on_threshold: float = ON_THRESHOLD,
    ) -> dict[str, Any]:
        """The fields of a dlp_ros/msg/ParticleArray (no header, no timings) as plain Python,
        in pixels of the width x height input seen through ``resize``.

        ``on`` is transparency > ``on_threshold`` (the model card's tracking.on_threshold) and
        not ``suppressed``.

        Returns:
            {'image_width', 'image_height', 'particles': [{id, u, v, u_std, v_std, scale (px),
            depth, transparency, on, features (F,) float32}, ...] ordered by id,
            'background_features': (Fb,) float32}.
        """
        uv = self.pixels(width, height, resize)  # (K, 2)
        std = self.pixel_std(width, height, resize)  # (K, 2)
        side = self.scale_px(width, height, resize)  # (K,)
        particles = [
            {
                'id': k,
                'u': float(uv[k, 0]),
                'v': float(uv[k, 1]),
                'u_std': float(std[k, 0]),
                'v_std': float(std[k, 1]),
                'scale': float(side[k]),
                'depth': float(self.depth[k, 0]),
                'transparency': float(self.transparency[k, 0]),
                'on': bool(self.transparency[k, 0] > on_threshold and not self.suppressed[k]),
                'features': self.features[k].astype(np.float32),
            }
            for k in range(self.n_particles)
        ]
        return {
            'image_width': int(width),
            'image_height': int(height),
            'particles': particles,
            'background_features': self.bg_features.astype(np.float32),
        }

    def arrays(self) -> dict[str, np.ndarray]:
        """The seven particle fields by name (no ``reseeded``)."""
        return {name: getattr(self, name) for name in FIELDS}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], index: int | None = None) -> ParticleFrame:
        """From the seven fields (each (K, ...), or (T, K, ...) with ``index`` picking t)."""
        pick = (lambda a: a) if index is None else (lambda a: a[index])
        extra = {'reseeded': pick(arrays['reseeded'])} if 'reseeded' in arrays else {}
        return cls(**{name: pick(arrays[name]) for name in FIELDS}, **extra)


def stack(frames: Sequence[ParticleFrame], reseeded: bool = False) -> dict[str, np.ndarray]:
    """Frames -> the seven fields stacked over time: mu (T, K, 2), ..., bg_features (T, Fb).

    ``reseeded`` adds the (T, K) flags under 'reseeded'. The keys are exactly those of
    ``dlp_training.models.dlp.Particles`` otherwise.
    """
    if not frames:
        raise ValueError('stack needs at least one ParticleFrame')
    out = {name: np.stack([getattr(f, name) for f in frames]) for name in FIELDS}
    if reseeded:
        out['reseeded'] = np.stack([f.reseeded for f in frames])
    return out
