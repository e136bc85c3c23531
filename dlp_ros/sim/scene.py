"""What a synthetic scene offers the recorder and the simulator node: frames, ground truth and
(optionally) actions. Torch- and ROS-free (numpy only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class ObjectState:
    """One object in one frame."""

    id: int
    name: str
    x: float  # px, right
    y: float  # px, down
    radius: float  # px, apparent
    visible: bool


@dataclass(frozen=True)
class SceneFrame:
    """One rendered frame of a scene."""

    rgb: np.ndarray  # (S, S, 3) uint8, RGB
    objects: list[ObjectState]  # ground truth for every object, visible or not
    action: np.ndarray | None  # (A,) float command applied from this frame to the next, or None


class Scene(Protocol):
    """A synthetic scene: ``reset`` starts an episode, each ``step`` returns the next frame.

    ``action_names`` names the entries of ``SceneFrame.action`` (empty for scenes without actions);
    the recorder writes the action as geometry_msgs/msg/TwistStamped on ``/<scene>/command``
    (``linear.x``, ``linear.y`` carry the first two entries, in the units the names give).
    """

    name: str
    fps: float
    size: int
    action_names: tuple[str, ...]

    def reset(self, rng: np.random.Generator) -> None: ...

    def step(self) -> SceneFrame: ...

    def close(self) -> None: ...
