"""The simulated tabletop run by a controller in lockstep, in plain Python (no ROS): episodes
from a seed and a pushing task, one frame per command, batched "what if" rollouts from the
current state, and the gate where the frame loop waits for the command of its frame.

:mod:`dlp_ros.sim.node` puts this on ROS topics; the tests drive it directly.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field

import numpy as np

from dlp_ros.sim.scene import ObjectState
from dlp_ros.sim.tabletop import PushTask, TabletopScene

logger = logging.getLogger(__name__)

NS = 1_000_000_000


@dataclass(frozen=True)
class Task:
    """An episode's pushing task in pixels (what dlp_ros/PushGoal carries)."""

    object_id: int
    start_uv: tuple[float, float]  # px, the object's centre at the first frame
    goal_uv: tuple[float, float]  # px
    tolerance: float  # px, success radius


@dataclass(frozen=True)
class Frame:
    """One camera frame of an episode with its ground truth."""

    index: int  # 0 = the episode's first frame
    stamp_ns: int  # sim time
    rgb: np.ndarray  # (S, S, 3) uint8
    objects: list[ObjectState]  # id order, 0 = pusher


@dataclass
class Episode:
    """What happened so far in the current episode."""

    seed: int
    task: Task
    frame: Frame
    missed: int = 0  # steps run with a zero command because none came in time
    commands: list[tuple[float, float]] = field(default_factory=list)  # applied, m/s


def object_uv(objects: list[ObjectState], object_id: int) -> tuple[float, float]:
    """Pixel centre of one object of a frame's ground truth."""
    obj = next(o for o in objects if o.id == object_id)
    return obj.x, obj.y


def check_tolerance(tolerance: float) -> None:
    """Raise ValueError unless a task's success radius [px] is > 0."""
    if not tolerance > 0:
        raise ValueError(f'tolerance must be > 0 px, got {tolerance}')


class LockstepSim:
    """The tabletop scene stepped by commands, with sim time.

    Args:
        size: image side [px].
        fps: frames per second of sim time (1/fps s per command).
        start_time_ns: sim time of every episode's first frame: time restarts at each reset, so
            a perception pipeline starts new particle identities (it sees time go back). After
            an episode that never stepped, one period earlier than that episode's only frame,
            so that time still goes back.
        goal_distance: (min, max) distance [m] of a drawn goal from the object's start.
    """

    def __init__(self, size: int = 64, fps: float = 10.0, start_time_ns: int = 1000 * NS,
                 goal_distance: tuple[float, float] = (0.06, 0.16)) -> None:  # fmt: skip
        self.scene = TabletopScene(size=size, fps=fps)
        self.fps = float(fps)
        self.period_ns = round(NS / self.fps)
        self.start_time_ns = int(start_time_ns)
        self.goal_distance = goal_distance
        self.episode: Episode | None = None

    @property
    def size(self) -> int:
        return self.scene.size

    def reset(self, seed: int, object_id: int = 0, goal_uv: tuple[float, float] | None = None,
              tolerance: float = 3.0) -> Episode:  # fmt: skip
        """A new episode: the scene and (unless given) the task drawn from ``seed``.

        ``object_id`` 0 draws the object; ``goal_uv`` None draws the goal (reachable: inside
        the workspace, clear of the other objects). Raises ValueError for an impossible task.
        """
        check_tolerance(tolerance)
        rng = np.random.default_rng(seed)
        self.scene.reset(rng)
        objects = self.scene.objects()
        if goal_uv is None:
            task = self.scene.sample_task(rng, self.goal_distance, object_id)
        else:
            task = self._given_task(objects, object_id, goal_uv)
        start = object_uv(objects, task.object_id)
        goal = (float(task.goal_uv[0]), float(task.goal_uv[1]))
        last = self.episode.frame.stamp_ns if self.episode is not None else None
        t0 = self.start_time_ns
        if last is not None and t0 >= last:
            t0 = last - self.period_ns
        frame = Frame(0, t0, self.scene.render(), objects)
        self.episode = Episode(int(seed), Task(task.object_id, start, goal, float(tolerance)),
                               frame)  # fmt: skip
        logger.info('episode seed %d: push object %d from (%.1f, %.1f) to (%.1f, %.1f) px',
                    seed, task.object_id, *start, *goal)  # fmt: skip
        return self.episode

    def _given_task(self, objects: list[ObjectState], object_id: int,
                    goal_uv: tuple[float, float]) -> PushTask:  # fmt: skip
        ids = [o.id for o in objects if o.id > 0]
        if object_id not in ids:
            raise ValueError(f'object_id must be one of {ids} with a given goal, got {object_id}')
        if not all(math.isfinite(g) and 0 <= g <= self.size for g in goal_uv):
            raise ValueError(f'goal must lie in the {self.size} px image, got {goal_uv}')
        z = float(self.scene.centre(object_id)[2])
        goal = np.asarray(goal_uv, dtype=np.float64)
        start = np.asarray(object_uv(objects, object_id))
        return PushTask(object_id, start, goal, self.scene.point_at(goal, z))

    def _require(self) -> Episode:
        if self.episode is None:
            raise RuntimeError('no episode: call reset first')
        return self.episode

    def step(self, command: tuple[float, float] | None) -> Frame:
        """Apply ``command`` (vx, vy) [m/s] for 1/fps s (None: zero, counted as missed) and
        render the next frame."""
        ep = self._require()
        if command is None:
            ep.missed += 1
        applied = self.scene.apply(np.zeros(2) if command is None else np.asarray(command))
        ep.commands.append((float(applied[0]), float(applied[1])))
        index = ep.frame.index + 1
        stamp = ep.frame.stamp_ns + self.period_ns
        ep.frame = Frame(index, stamp, self.scene.render(), self.scene.objects())
        return ep.frame

    def predict(self, actions: np.ndarray) -> np.ndarray:
        """(B, N, 2) candidate commands -> (B, N, K, 2) object centres [px] from the current
        state (the simulator as the planner's model); the scene is left as it was."""
        self._require()
        return self.scene.rollout(actions)

    def distance(self) -> float:
        """Distance [px] of the task's object from the goal in the current frame."""
        ep = self._require()
        u, v = object_uv(ep.frame.objects, ep.task.object_id)
        return math.hypot(u - ep.task.goal_uv[0], v - ep.task.goal_uv[1])

    def close(self) -> None:
        self.scene.close()


def carried_by_objects(particles_uv: np.ndarray, objects: list[ObjectState],
                       predicted: np.ndarray, margin: float = 1.0) -> np.ndarray:  # fmt: skip
    """Predicted particle positions when each particle moves with the object it lies on: the
    simulator as the dynamics of a perception's particles.

    Args:
        particles_uv: (P, 2) particle positions now [px].
        objects: the objects now (id order as in ``predicted``), with apparent radii [px].
        predicted: (B, N, K, 2) predicted object centres [px].
        margin: [px] beyond an object's apparent radius that still counts as on it.

    Returns:
        (B, N, P, 2): a particle within (radius + margin) of object centres moves by the predicted
        displacement of the nearest such object; a particle on no object stays where it is.
    """
    uv = np.asarray(particles_uv, dtype=np.float64).reshape(-1, 2)
    centres = np.array([(o.x, o.y) for o in objects], dtype=np.float64).reshape(-1, 2)  # (K, 2)
    radii = np.array([o.radius for o in objects], dtype=np.float64)  # (K,)
    dist = np.hypot(*(uv[:, None] - centres[None]).transpose(2, 0, 1))  # (P, K)
    dist = np.where(dist <= radii + margin, dist, np.inf)
    owner = np.argmin(dist, axis=1) if len(centres) else np.zeros(len(uv), np.int64)  # (P,)
    on = np.isfinite(dist.min(axis=1)) if len(centres) else np.zeros(len(uv), bool)
    out = np.broadcast_to(uv, (*predicted.shape[:2], *uv.shape)).copy()  # (B, N, P, 2)
    moved = predicted - centres  # (B, N, K, 2) displacement of each object
    out[:, :, on] += moved[:, :, owner[on]]
    return out


class CommandGate:
    """Where the frame loop waits for the command of its frame (thread-safe).

    ``offer`` (the command subscription) keeps the latest command per stamp, only for stamps not
    older than the frame waited for; ``wait`` takes the one of the given stamp, or returns early
    when ``poke``d (work for the frame thread, shutdown). ``restart`` drops everything kept: a
    new episode restarts sim time.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._commands: dict[int, tuple[float, float]] = {}
        self._floor = 0  # stamps below this are stale
        self._poked = False

    def offer(self, stamp_ns: int, command: tuple[float, float]) -> bool:
        """Keep a command for frame ``stamp_ns``; False when it is for an older frame."""
        with self._cond:
            if stamp_ns < self._floor:
                return False
            self._commands[stamp_ns] = command
            self._cond.notify_all()
            return True

    def wait(self, stamp_ns: int, timeout: float) -> tuple[float, float] | None:
        """The command for frame ``stamp_ns``; None after ``timeout`` s or a poke (a poke that
        came before the call counts)."""
        with self._cond:
            self._floor = stamp_ns
            self._commands = {s: c for s, c in self._commands.items() if s >= stamp_ns}
            self._cond.wait_for(lambda: stamp_ns in self._commands or self._poked, timeout)
            self._poked = False
            return self._commands.pop(stamp_ns, None)

    def poke(self) -> None:
        """Wake the waiter (or make the next wait return at once)."""
        with self._cond:
            self._poked = True
            self._cond.notify_all()

    def restart(self) -> None:
        """A new episode: the kept commands and the floor go."""
        with self._cond:
            self._commands.clear()
            self._floor = 0
