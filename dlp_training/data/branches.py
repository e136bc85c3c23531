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

Branch commands, kind ``kinds[k % len(kinds)]`` for branch k (default ``plan``, ``heading``),
each step's clipped to the speed limit like the planner's:
* ``plan``: the trunk's own commands from the point on plus Gaussian noise of ``noise`` m/s
  per step and axis, as the planner's candidates spread around its plan;
* ``heading``: one random velocity (uniform direction, speed uniform in [0, MAX_SPEED]) held,
  plus the same noise: pushes that miss, stop short or hit another object;
* ``graze``: one velocity held (plus the noise), aimed from the pusher at a point beside an
  object (a near one more likely): offset across the line of approach by u times the contact
  distance (object + pusher radius), u uniform in [-GRAZE_SPAN, GRAZE_SPAN], speed uniform in
  [GRAZE_SPEED, MAX_SPEED]. Head-on pushes (u near 0), off-centre pushes that turn the object,
  grazes (|u| near 1) and near misses: the contacts a planner's detour round an object makes.
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
KINDS = ('plan', 'heading', 'graze')
DEFAULT_KINDS = ('plan', 'heading')
GRAZE_SPAN = 1.3  # largest offset beside the object, in contact distances
GRAZE_SPEED = 0.15  # m/s, least speed of a graze


@dataclass(frozen=True)
class BranchSpec:
    """How an episode branches (the ``--branch-*`` options)."""

    branches: int  # K branches per point
    every: int  # frames between branch points (the first at max(every, CONTEXT))
    frames: int  # frames after the branch point in each branch
    noise: float  # m/s, std of the per-step noise on the branch commands
    kinds: tuple[str, ...] = DEFAULT_KINDS  # branch k's commands: kinds[k % len(kinds)]

    def __post_init__(self) -> None:
        if not known_kinds(self.kinds):
            raise ValueError(f'branch kinds must be among {KINDS}, got {self.kinds}')

    @property
    def length(self) -> int:
        """Frames in each branch episode."""
        return CONTEXT + 1 + self.frames


def known_kinds(kinds: tuple[str, ...]) -> bool:
    """At least one kind, each one of :data:`KINDS`."""
    return bool(kinds) and all(k in KINDS for k in kinds)


def branch_points(trunk_frames: int, every: int) -> list[int]:
    """Trunk frame indices the branches start from."""
    return list(range(max(every, CONTEXT), trunk_frames, every))


def graze_velocity(rng: np.random.Generator, xy: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """(2,) velocity [m/s] from the pusher toward a point beside one object (module docstring).

    Args:
        xy: (N, 2) world centres [m], 0 = the pusher.
        radii: (N,) radii [m].
    """
    from dlp_ros.sim.tabletop import MAX_SPEED

    pusher, objects = xy[0], xy[1:]  # (2,), (n, 2)
    weight = 1.0 / (np.hypot(*(objects - pusher).T) + 0.05)  # (n,) near objects first
    i = int(rng.choice(len(objects), p=weight / weight.sum()))
    way = objects[i] - pusher  # (2,)
    way /= max(float(np.hypot(*way)), 1e-6)
    across = np.array([-way[1], way[0]])  # (2,) unit, perpendicular to the approach
    offset = rng.uniform(-GRAZE_SPAN, GRAZE_SPAN) * (radii[i + 1] + radii[0])
    aim = objects[i] + offset * across - pusher  # (2,)
    speed = rng.uniform(GRAZE_SPEED, MAX_SPEED)
    return speed * aim / max(float(np.hypot(*aim)), 1e-6)


def branch_commands(
    rng: np.random.Generator,
    planned: np.ndarray,
    kind: str,
    noise: float,
    layout: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """(H, 2) commands [m/s] of one branch; ``planned`` (H, 2) is the trunk's from the point,
    ``layout`` the scene's (centres (N, 2) [m], radii (N,) [m]) there (``graze`` needs it)."""
    from dlp_ros.sim.tabletop import MAX_SPEED, clip_command

    if kind == 'plan':
        base = planned
    elif kind == 'heading':
        angle, speed = rng.uniform(0.0, 2.0 * np.pi), rng.uniform(0.0, MAX_SPEED)
        base = np.broadcast_to(speed * np.array([np.cos(angle), np.sin(angle)]), planned.shape)
    elif kind == 'graze':
        if layout is None:
            raise ValueError('graze branches need the scene layout at the branch point')
        base = np.broadcast_to(graze_velocity(rng, *layout), planned.shape)
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
        scene.set_state(states[t0])
        layout = scene.layout()
        for k in range(spec.branches):
            kind = spec.kinds[k % len(spec.kinds)]
            commands = branch_commands(rng, ahead, kind, spec.noise, layout)
            commands = commands.astype(np.float32)  # applied as recorded: replays are exact
            scene.set_state(states[t0])
            frames = list(trunk[t0 - CONTEXT : t0])
            point = trunk[t0]
            frames.append(SceneFrame(point.rgb, point.objects, commands[0]))
            for j in range(1, spec.frames + 1):
                scene.apply(commands[j - 1])
                frames.append(SceneFrame(scene.render(), scene.objects(), commands[j]))
            yield f't{t0:03d}_b{k}', frames
