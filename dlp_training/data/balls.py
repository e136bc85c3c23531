"""Balls-Interaction: bouncing balls with elastic collisions (the G-SWM / DDLP setting).

At 64x64: 3 balls of radius 8 px moving at 3 px/frame on a black background, equal masses, elastic
collisions between balls and with the walls, 10 physics sub-steps per frame, non-overlapping start.
At other sizes radius and speed scale with the image. Colours are drawn with replacement from
blue, red, yellow, fuchsia and aqua.

Coordinates are continuous pixels: x right, y down, pixel (0, 0) covers [0, 1) x [0, 1), so its
centre is at (0.5, 0.5).
"""

from __future__ import annotations

import cv2
import numpy as np

from dlp_ros.sim.scene import ObjectState, SceneFrame

COLOURS: dict[str, tuple[int, int, int]] = {
    'blue': (0, 0, 255),
    'red': (255, 0, 0),
    'yellow': (255, 255, 0),
    'fuchsia': (255, 0, 255),
    'aqua': (0, 255, 255),
}
_SHIFT = 4  # cv2 fixed-point bits: sub-pixel circle centres (1/16 px)


class BallsScene:
    """Scene protocol implementation (see ``dlp_ros.sim.scene.Scene``)."""

    name = 'balls'
    action_names: tuple[str, ...] = ()

    def __init__(
        self,
        size: int = 64,
        fps: float = 10.0,
        n_balls: int = 3,
        radius: float | None = None,
        speed: float | None = None,
        substeps: int = 10,
    ) -> None:
        if size < 16:
            raise ValueError(f'size must be >= 16 px, got {size}')
        self.size = size
        self.fps = fps
        self.n_balls = n_balls
        self.radius = radius if radius is not None else 8.0 * size / 64
        self.speed = speed if speed is not None else 3.0 * size / 64
        self.substeps = substeps
        if 2 * self.radius * n_balls > 0.8 * size * 2:
            raise ValueError(f'{n_balls} balls of radius {self.radius} do not fit in {size} px')
        self._pos = np.zeros((n_balls, 2))  # (N, 2) px
        self._vel = np.zeros((n_balls, 2))  # (N, 2) px/frame
        self._colours: list[str] = []

    def reset(self, rng: np.random.Generator) -> None:
        r, s = self.radius, self.size
        pos: list[np.ndarray] = []
        while len(pos) < self.n_balls:
            cand = rng.uniform(r, s - r, size=2)
            if all(np.linalg.norm(cand - p) > 2 * r + 1 for p in pos):
                pos.append(cand)
        angles = rng.uniform(0, 2 * np.pi, size=self.n_balls)
        self._pos = np.array(pos)
        self._vel = self.speed * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        self._colours = list(rng.choice(list(COLOURS), size=self.n_balls))
        self._first = True

    def _physics_step(self, dt: float) -> None:
        r, s = self.radius, self.size
        self._pos += self._vel * dt
        for axis in range(2):
            low = self._pos[:, axis] < r
            high = self._pos[:, axis] > s - r
            self._pos[low, axis] = 2 * r - self._pos[low, axis]
            self._pos[high, axis] = 2 * (s - r) - self._pos[high, axis]
            self._vel[low | high, axis] *= -1
        for i in range(self.n_balls):
            for j in range(i + 1, self.n_balls):
                d = self._pos[j] - self._pos[i]
                dist = float(np.linalg.norm(d))
                if dist >= 2 * r or dist == 0.0:
                    continue
                n = d / dist
                approach = float(np.dot(self._vel[i] - self._vel[j], n))
                if approach > 0:  # equal masses, elastic: exchange the normal components
                    self._vel[i] -= approach * n
                    self._vel[j] += approach * n
                overlap = 2 * r - dist
                self._pos[i] -= 0.5 * overlap * n
                self._pos[j] += 0.5 * overlap * n

    def render(self) -> np.ndarray:
        img = np.zeros((self.size, self.size, 3), dtype=np.uint8)  # (S, S, 3)
        scale = 1 << _SHIFT
        for (x, y), colour in zip(self._pos, self._colours, strict=True):
            centre = (round((x - 0.5) * scale), round((y - 0.5) * scale))
            # cv2 fills pixels up to radius + ~0.5 px: draw 0.5 px smaller so the painted area is
            # pi r^2 and the ground-truth radius is the visible one.
            radius = round((self.radius - 0.5) * scale)
            cv2.circle(img, centre, radius, COLOURS[colour], -1,
                       cv2.LINE_AA, _SHIFT)  # fmt: skip
        return img

    def step(self) -> SceneFrame:
        if self._first:
            self._first = False
        else:
            for _ in range(self.substeps):
                self._physics_step(1.0 / self.substeps)
        objects = [
            ObjectState(i, f'ball_{c}_{i}', float(x), float(y), self.radius, True)
            for i, ((x, y), c) in enumerate(zip(self._pos, self._colours, strict=True))
        ]
        return SceneFrame(self.render(), objects, None)

    def close(self) -> None:
        """Nothing to release."""
