"""Counterfactual branches of tabletop episodes: ``record-synthetic tabletop --branches K``.

A scripted episode (the *trunk*) is simulated; every ``every`` frames its physics state is saved
and K *branches* are simulated from it, each under commands of its own. Each branch becomes an
episode: the trunk's last :data:`CONTEXT` frames before the branch point, the branch point, then
``frames`` frames under the branch's commands::

    trunk    0 ... t0-6 ... t0 ---- scripted ---->
    branch k           t0-6 ... t0 -- commands k --> t0 + frames

All branches of a point share their past, so only the command explains how their futures
differ. The scripted episodes alone do not teach that: their commands follow from the scene
(the script heads for an object and pushes it), so a dynamics can predict an object's push from
the pusher's approach without reading the command, and then moves objects the planner's
candidate commands never touch.

Branch commands (even k / odd k), each step's clipped to the speed limit like the planner's:
* ``plan``: the trunk's own commands from the point on plus Gaussian noise of ``noise`` m/s
  per step and axis, as the planner's candidates spread around its plan;
* ``heading``: one random velocity (uniform direction, speed uniform in [0, MAX_SPEED]) held,
  plus the same noise: pushes that miss, stop short or hit another object.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from dlp_ros.sim.scene import SceneFrame

if TYPE_CHECKING:  # MuJoCo is imported only when branches are recorded
    from dlp_ros.sim.tabletop import TabletopScene

CONTEXT = 6  # trunk frames before the branch point in every branch episode (tracker warm-up)
KINDS = ('plan', 'heading')


@dataclass(frozen=True)
class BranchSpec:
    """How an episode branches (the ``--branch-*`` options)."""

    branches: int  # K branches per point
    every: int  # frames between branch points (the first at max(every, CONTEXT))
    frames: int  # frames after the branch point in each branch
    noise: float  # m/s, std of the per-step noise on the branch commands

    @property
    def length(self) -> int:
        """Frames in each branch episode."""
        return CONTEXT + 1 + self.frames


def branch_points(trunk_frames: int, every: int) -> list[int]:
    """Trunk frame indices the branches start from."""
    return list(range(max(every, CONTEXT), trunk_frames, every))


def branch_commands(
    rng: np.random.Generator, planned: np.ndarray, kind: str, noise: float
) -> np.ndarray:
    """(H, 2) commands [m/s] of one branch; ``planned`` (H, 2) is the trunk's from the point."""
    from dlp_ros.sim.tabletop import MAX_SPEED, clip_command

    if kind == 'plan':
        base = planned
    elif kind == 'heading':
        angle, speed = rng.uniform(0.0, 2.0 * np.pi), rng.uniform(0.0, MAX_SPEED)
        base = np.broadcast_to(speed * np.array([np.cos(angle), np.sin(angle)]), planned.shape)
    else:
        raise ValueError(f'unknown branch kind {kind!r}; choose one of {KINDS}')
    noisy = base + rng.normal(0.0, noise, planned.shape)
    return np.stack([clip_command(c) for c in noisy])


def branch_episodes(
    scene: TabletopScene, rng: np.random.Generator, trunk_frames: int, spec: BranchSpec
) -> Iterator[tuple[str, list[SceneFrame]]]:
    """Simulate the trunk of the episode ``scene`` was reset to, then yield ``(suffix, frames)``
    for each branch (suffix ``t<point>_b<k>``), ``CONTEXT + 1 + spec.frames`` frames each."""
    trunk: list[SceneFrame] = []
    states: list[np.ndarray] = []
    for _ in range(trunk_frames):
        trunk.append(scene.step())
        states.append(scene.get_state())
    planned = np.stack([f.action for f in trunk]).astype(np.float64)  # (T, 2) trunk commands
    for t0 in branch_points(trunk_frames, spec.every):
        ahead = planned[t0 : t0 + spec.frames + 1]  # the trunk's commands, the last held
        ahead = np.concatenate([ahead, np.repeat(ahead[-1:], spec.frames + 1 - len(ahead), 0)])
        for k in range(spec.branches):
            commands = branch_commands(rng, ahead, KINDS[k % len(KINDS)], spec.noise)
            commands = commands.astype(np.float32)  # applied as recorded: replays are exact
            scene.set_state(states[t0])
            frames = list(trunk[t0 - CONTEXT : t0])
            point = trunk[t0]
            frames.append(SceneFrame(point.rgb, point.objects, commands[0]))
            for j in range(1, spec.frames + 1):
                scene.apply(commands[j - 1])
                frames.append(SceneFrame(scene.render(), scene.objects(), commands[j]))
            yield f't{t0:03d}_b{k}', frames
