"""How a camera frame becomes the model's square S x S input, and the mapping of coordinates
between the two: the one place for both (the runtime's preprocessing, build-dataset, dlp-replay,
the node's messages).

Resize modes (the model card's ``image.resize``, build-dataset's ``--resize``):

- ``squash``: the whole W x H frame resized to S x S (the aspect ratio is not kept);
- ``crop``: the centred square of the short side (side min(W, H), from x0 = (W - side) // 2,
  y0 = (H - side) // 2), resized to S x S; the rest of the frame is not seen;
- ``pad``: the frame centred on a black square of the long side (side max(W, H), the frame at
  x0 = (side - W) // 2, y0 = (side - H) // 2 inside it), resized to S x S (letterbox).

In every mode the model sees an axis-aligned region of the input: origin (ox, oy) and span
(sx, sy) in input pixels (pad: a negative origin, a span beyond the frame). A normalised model
position mu in [-1, 1]^2 (x right, y down, the corners of the model image) is the input pixel
u = ox + (mu_x + 1) / 2 * sx, v = oy + (mu_y + 1) / 2 * sy (u, v: origin at the top-left corner
of the top-left pixel, so pixel (0, 0) covers [0, 1)^2). Particles are published in input pixels
in every mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from dlp_ros.errors import ConfigError
from dlp_ros.image_codec import resize_rgb

RESIZE_MODES = ('squash', 'crop', 'pad')
DEFAULT_RESIZE = 'squash'  # what a model card or dataset without the field was made with


def check_mode(mode: str) -> str:
    """``mode`` if it is a resize mode.

    Raises:
        ConfigError: any other value.
    """
    if mode not in RESIZE_MODES:
        raise ConfigError(f'resize mode must be one of {list(RESIZE_MODES)}, got {mode!r}')
    return mode


@dataclass(frozen=True)
class InputView:
    """The region of a ``width`` x ``height`` input frame the model sees in ``mode``."""

    width: int
    height: int
    mode: str = DEFAULT_RESIZE

    def __post_init__(self) -> None:
        check_mode(self.mode)
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f'input size must be positive, got {self.width}x{self.height}')

    @property
    def region(self) -> tuple[int, int, int, int]:
        """(ox, oy, sx, sy): origin and span of the model's view, input pixels."""
        w, h = self.width, self.height
        if self.mode == 'squash':
            return 0, 0, w, h
        if self.mode == 'crop':
            side = min(w, h)
            return (w - side) // 2, (h - side) // 2, side, side
        side = max(w, h)  # pad
        return -((side - w) // 2), -((side - h) // 2), side, side

    def _origin_span(self) -> tuple[np.ndarray, np.ndarray]:
        ox, oy, sx, sy = self.region
        return np.array([ox, oy], np.float64), np.array([sx, sy], np.float64)

    def to_pixels(self, mu: np.ndarray) -> np.ndarray:
        """(..., 2) normalised model positions -> (..., 2) float32 input pixels (u, v)."""
        origin, span = self._origin_span()
        # float32 throughout: squash gives exactly (mu + 1) / 2 * (W, H) in float32
        scaled = (np.asarray(mu, np.float32) + 1.0) / 2.0 * span.astype(np.float32)
        return (scaled + origin.astype(np.float32)).astype(np.float32)

    def to_normalised(self, uv: np.ndarray) -> np.ndarray:
        """(..., 2) input pixels (u, v) -> (..., 2) float64 normalised model positions."""
        origin, span = self._origin_span()
        return (np.asarray(uv, np.float64) - origin) / span * 2.0 - 1.0

    def span(self) -> np.ndarray:
        """(2,) float64: input pixels per unit of the model image side, x and y (sx, sy)."""
        return self._origin_span()[1]

    def resize(self, rgb: np.ndarray, size: int) -> np.ndarray:
        """(H, W, 3) uint8 frame of this view's size -> the model's (size, size, 3) image."""
        if rgb.shape[:2] != (self.height, self.width):
            raise ValueError(
                f'frame is {rgb.shape[1]}x{rgb.shape[0]}, the view {self.width}x{self.height}'
            )
        ox, oy, sx, sy = self.region
        if self.mode == 'crop':
            rgb = rgb[oy : oy + sy, ox : ox + sx]
        elif self.mode == 'pad' and (sx, sy) != (self.width, self.height):
            left, top = -ox, -oy
            rgb = cv2.copyMakeBorder(
                np.ascontiguousarray(rgb), top, sy - self.height - top, left,
                sx - self.width - left, cv2.BORDER_CONSTANT, value=(0, 0, 0),
            )  # fmt: skip
        return resize_rgb(np.ascontiguousarray(rgb), size)

    def model_image_to_input(self, img: np.ndarray) -> np.ndarray:
        """A model-resolution (S, S, 3) image drawn back over this view's (H, W, 3) input
        geometry (squash: a plain resize; crop: outside the square black; pad: the bars cut)."""
        size = img.shape[0]
        if self.mode == 'squash':
            return cv2.resize(img, (self.width, self.height), interpolation=cv2.INTER_LINEAR)
        ox, oy, sx, sy = self.region
        kx, ky = sx / size, sy / size  # input pixels per model pixel; centres at +0.5
        m = np.array([[kx, 0.0, ox + 0.5 * kx - 0.5], [0.0, ky, oy + 0.5 * ky - 0.5]])
        out = cv2.warpAffine(np.ascontiguousarray(img), m, (self.width, self.height),
                             flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
        if self.mode == 'crop':  # what the model did not see stays black
            inside = np.zeros((self.height, self.width), bool)
            inside[oy : oy + sy, ox : ox + sx] = True
            out[~inside] = 0
        return out

    def describe(self, size: int) -> str:
        """One line for the log: input size, mode, and where a model pixel lands in the input."""
        ox, oy, sx, sy = self.region
        what = {
            'squash': 'the whole frame, aspect ratio not kept',
            'crop': f'the centred {sx}x{sy} square from ({ox}, {oy}); the rest is not seen',
            'pad': f'the frame centred at ({-ox}, {-oy}) on a black {sx}x{sy} square',
        }[self.mode]
        return (
            f'input {self.width}x{self.height} -> model {size}x{size} by {self.mode} ({what}); '
            f'particles in input pixels: u = {ox:g} + {sx / size:.6g} * x, v = {oy:g} + '
            f'{sy / size:.6g} * y (x, y: model pixels)'
        )


def resize_frame(rgb: np.ndarray, size: int, mode: str = DEFAULT_RESIZE) -> np.ndarray:
    """(H, W, 3) uint8 RGB of any size -> (size, size, 3) in ``mode`` (module docstring)."""
    height, width = rgb.shape[:2]
    return InputView(width, height, mode).resize(rgb, size)
