"""MuJoCo table-top scene: a slide-joint pusher shoves 3-5 boxes, spheres and cylinders around.

The scene is a small MJCF string built here for each episode (shapes, sizes and colours are drawn
from the episode's rng), rendered offscreen by ``mujoco.Renderer`` (EGL on a headless machine:
``MUJOCO_GL=egl``). The camera is fixed, 10 degrees off top-down, framed to see the whole walled
table. World frame: x right, y up the image, z up; the table top is z = 0.

Pixel convention (ground truth and segmentation centroids alike): x right, y down, and the centre
of pixel (row 0, column 0) is at (0.5, 0.5); the image spans [0, S] in both axes.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import mujoco
import numpy as np

from dlp_ros.sim.scene import ObjectState, SceneFrame

log = logging.getLogger(__name__)

HALF = 0.25  # m, half-width of the walled area (inner faces of the walls)
WALL = 0.015  # m, half-thickness of the walls
PUSHER_R = 0.035  # m, pusher cylinder radius
PUSHER_HALF_H = 0.045  # m, pusher cylinder half-height (it floats 2 mm above the table)
CAM_DIST = 1.5  # m, camera distance from the table centre
CAM_TILT = math.radians(10.0)  # camera tilt away from top-down, towards -y
TIMESTEP = 0.005  # s, physics step
MAX_SPEED = 0.3  # m/s, pusher command limit
MAX_ACCEL = 2.0  # m/s^2, smoothing of the scripted command
TABLE_RGB = (0.50, 0.40, 0.30)
WALL_RGB = (0.46, 0.37, 0.28)  # close to the table: walls are scenery, not objects
PUSHER_RGB = (0.92, 0.92, 0.92)
COLOURS = {
    'red': (0.85, 0.08, 0.08),
    'green': (0.10, 0.70, 0.15),
    'blue': (0.10, 0.25, 0.90),
    'yellow': (0.95, 0.85, 0.08),
    'magenta': (0.85, 0.10, 0.80),
    'cyan': (0.08, 0.80, 0.85),
}
SHAPES = ('box', 'sphere', 'cylinder')
# Collision bits: table/walls and objects share bit 1; the pusher only touches objects (bit 2).
_OBJ_BITS = 'contype="1" conaffinity="3"'
_STATE = mujoco.mjtState.mjSTATE_INTEGRATION  # everything mj_step reads: a copy continues exactly
_WALL_CLEARANCE = 0.02  # m, between a task's object (or its goal) and the walls


def clip_command(command: np.ndarray) -> np.ndarray:
    """A pusher command (vx, vy) [m/s] with its norm clipped to MAX_SPEED; NaN -> 0. (2,)"""
    v = np.nan_to_num(np.asarray(command, dtype=np.float64).reshape(-1)[:2], nan=0.0)
    norm = float(np.hypot(*v))
    return v * (MAX_SPEED / norm) if norm > MAX_SPEED else v


@dataclass(frozen=True)
class PushTask:
    """Push object ``object_id`` so that its centre reaches ``goal_uv``."""

    object_id: int
    start_uv: np.ndarray  # (2,) px, the object's centre now
    goal_uv: np.ndarray  # (2,) px
    goal_xy: np.ndarray  # (2,) m, world, at the object's height


def _camera() -> tuple[np.ndarray, np.ndarray, float]:
    """Camera position (3,), orientation (3, 3) (columns = camera axes in world) and fovy (deg).

    fovy is the smallest that keeps the inner faces of the walls (plus 2 %) in view: the whole
    workspace is seen, the walls only as a thin rim (fewer static features for the keypoints).
    """
    c, s = math.cos(CAM_TILT), math.sin(CAM_TILT)
    pos = np.array([0.0, -CAM_DIST * s, CAM_DIST * c])
    rot = np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])  # (3, 3)
    e = HALF
    corners = np.array([[sx * e, sy * e, 0.0] for sx in (-1, 1) for sy in (-1, 1)])  # (4, 3)
    pc = (corners - pos) @ rot  # (4, 3) camera frame, looking along -z
    half_tan = float(np.max(np.abs(pc[:, :2]) / -pc[:, 2:])) * 1.02
    return pos, rot, math.degrees(2 * math.atan(half_tan))


class TabletopScene:
    """Pusher-and-objects scene satisfying :class:`dlp_ros.sim.scene.Scene`.

    Ids: 0 is the pusher ('pusher'), 1..n are objects named ``<shape>_<colour>_<id>``.
    ``step`` applies the previous frame's action for 1/fps seconds (the first call shows the reset
    state), renders, then picks this frame's action, so the physics state after ``step`` is the
    one shown in the returned frame (and in :meth:`segmentation`).
    """

    name = 'tabletop'
    action_names = ('vx', 'vy')  # pusher velocity command in the table plane, m/s, world frame

    def __init__(
        self,
        size: int = 64,
        fps: float = 10.0,
        n_objects: tuple[int, int] = (3, 5),
        command_noise: float = 0.0,
    ) -> None:
        self.size = int(size)
        self.fps = float(fps)
        if not 1 <= n_objects[0] <= n_objects[1] <= len(COLOURS):
            raise ValueError(f'n_objects must be (lo, hi) with 1 <= lo <= hi <= {len(COLOURS)}')
        if not (math.isfinite(command_noise) and command_noise >= 0):
            raise ValueError(f'command_noise must be a finite std >= 0 [m/s], got {command_noise}')
        self.n_objects = n_objects
        # Std [m/s] of independent Gaussian noise added to each scripted command (per frame and
        # axis; the script itself carries on from its smooth plan): exploratory commands like a
        # sampling planner's candidates. 0: the smooth script alone.
        self.command_noise = float(command_noise)
        self._cam_xml = _camera()  # what the MJCF says; reset() reads back the compiled camera
        self._substeps = max(1, round(1.0 / (self.fps * TIMESTEP)))
        self._model: mujoco.MjModel | None = None
        self._data: mujoco.MjData | None = None
        self._renderer: mujoco.Renderer | None = None

    # ----------------------------------------------------------------------------- episode setup
    def reset(self, rng: np.random.Generator) -> None:
        """Draw objects and start positions, build the model and prime the scripted policy."""
        lo, hi = self.n_objects
        n = int(rng.integers(lo, hi + 1))
        colours = rng.choice(list(COLOURS), size=n, replace=False)
        specs: list[dict] = []
        for i, colour in enumerate(colours, start=1):
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            a = float(rng.uniform(0.032, 0.045))  # m, half-size in the plane
            half_h = a if shape == 'sphere' else float(rng.uniform(0.022, 0.032))
            metal = bool(rng.random() < 0.5)
            r_plane = a * math.sqrt(2) if shape == 'box' else a
            yaw = float(rng.uniform(0, math.pi / 2))
            name = f'{shape}_{colour}_{i}'
            spec = {'name': name, 'shape': shape, 'a': a, 'h': half_h, 'r': r_plane, 'yaw': yaw}
            specs.append(spec | {'rgb': COLOURS[str(colour)], 'metal': metal})
        pusher_xy = rng.uniform(-1, 1, 2) * (HALF - PUSHER_R - 0.02)
        placed = [(pusher_xy, PUSHER_R)]
        for spec in specs:  # rejection sampling of non-overlapping positions
            lim = HALF - spec['r'] - 0.01
            for _ in range(1000):
                xy = rng.uniform(-lim, lim, 2)
                if all(np.hypot(*(xy - p)) > spec['r'] + r + 0.015 for p, r in placed):
                    break
            else:
                log.warning('no free start position for %s; it may overlap', spec['name'])
            spec['xy'] = xy
            placed.append((xy, spec['r']))
        self.close()
        self._specs = specs
        self._model = mujoco.MjModel.from_xml_string(self._mjcf(specs, pusher_xy))
        self._data = mujoco.MjData(self._model)
        mujoco.mj_forward(self._model, self._data)
        # Project with the compiled camera (MuJoCo orthonormalises the axes given in the MJCF).
        self._cam_pos = self._data.cam_xpos[0].copy()  # (3,)
        self._cam_rot = self._data.cam_xmat[0].reshape(3, 3).copy()  # (3, 3) columns = axes
        self._focal = self.size / 2 / math.tan(math.radians(self._model.cam_fovy[0]) / 2)  # px
        self._renderer = mujoco.Renderer(self._model, self.size, self.size)
        m = self._model
        self._bodies = [mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, 'pusher')]
        self._bodies += [mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, s['name']) for s in specs]
        self._radii = np.array([PUSHER_R] + [s['r'] for s in specs])  # (N,) m
        self._geom_to_id = np.full(m.ngeom, -1, dtype=np.int64)  # geom id -> object id
        for obj_id, body in enumerate(self._bodies):
            self._geom_to_id[m.body_geomadr[body]] = obj_id
        self._rng = rng
        self._velocity = np.zeros(2)  # (2,) last command, m/s
        self._pending: np.ndarray | None = None
        self._phase, self._target, self._timer = 'pick', 0, 0
        self._dir, self._speed, self._goal = np.zeros(2), 0.0, np.zeros(2)
        log.debug('reset: %s', ', '.join(s['name'] for s in specs))

    def _mjcf(self, specs: list[dict], pusher_xy: np.ndarray) -> str:
        """The MJCF text of one episode."""
        s = self.size
        (cx, cy, cz), r, fovy = self._cam_xml
        lim = HALF - PUSHER_R - 0.005
        walls = []
        for k, (x, y, hx, hy) in enumerate(
            [(0, HALF + WALL, HALF + 2 * WALL, WALL), (0, -HALF - WALL, HALF + 2 * WALL, WALL)]
            + [(HALF + WALL, 0, WALL, HALF), (-HALF - WALL, 0, WALL, HALF)]
        ):
            walls.append(
                f'<geom name="wall{k}" type="box" pos="{x} {y} 0.03" size="{hx} {hy} 0.03" '
                f'material="wall"/>'
            )
        bodies, materials = [], []
        for spec in specs:
            name, a, h, (x, y) = spec['name'], spec['a'], spec['h'], spec['xy']
            size = {'box': f'{a} {a} {h}', 'sphere': f'{a}', 'cylinder': f'{a} {h}'}[spec['shape']]
            spec_shine = '0.6" shininess="0.8' if spec['metal'] else '0.15" shininess="0.2'
            rgb = ' '.join(f'{c:.3f}' for c in spec['rgb'])
            materials.append(f'<material name="{name}" rgba="{rgb} 1" specular="{spec_shine}"/>')
            # Spheres get rolling friction (condim 6) so that they come to rest.
            extra = 'condim="6" friction="0.4 0.005 0.002"' if spec['shape'] == 'sphere' else ''
            bodies.append(
                f'<body name="{name}" pos="{x:.5f} {y:.5f} {h:.5f}" euler="0 0 {spec["yaw"]:.5f}">'
                f'<freejoint/><geom type="{spec["shape"]}" size="{size}" material="{name}" '
                f'density="600" {_OBJ_BITS} {extra}/></body>'
            )
        px, py = pusher_xy
        return f"""<mujoco model="tabletop">
  <option timestep="{TIMESTEP}" integrator="implicitfast"/>
  <visual><global offwidth="{s}" offheight="{s}"/><quality shadowsize="0"/>
    <headlight ambient="0.35 0.35 0.35" diffuse="0.3 0.3 0.3" specular="0.1 0.1 0.1"/></visual>
  <default><geom friction="0.4 0.005 0.0001"/></default>
  <asset>
    <material name="table" rgba="{' '.join(map(str, TABLE_RGB))} 1" specular="0.05"/>
    <material name="wall" rgba="{' '.join(map(str, WALL_RGB))} 1" specular="0.05"/>
    <material name="pusher" rgba="{' '.join(map(str, PUSHER_RGB))} 1" specular="0.5"/>
    {''.join(materials)}
  </asset>
  <worldbody>
    <light directional="true" dir="0.3 0.4 -1" diffuse="0.55 0.55 0.55" castshadow="false"/>
    <camera name="top" pos="{cx:.6f} {cy:.6f} {cz:.6f}" fovy="{fovy:.6f}"
      xyaxes="{r[0, 0]} {r[1, 0]} {r[2, 0]} {r[0, 1]:.9f} {r[1, 1]:.9f} {r[2, 1]:.9f}"/>
    <geom name="table" type="plane" size="1.5 1.5 0.1" material="table"/>
    {''.join(walls)}
    <body name="pusher" pos="{px:.5f} {py:.5f} {PUSHER_HALF_H + 0.002}">
      <joint name="px" type="slide" axis="1 0 0" range="{-lim - px} {lim - px}" damping="1"/>
      <joint name="py" type="slide" axis="0 1 0" range="{-lim - py} {lim - py}" damping="1"/>
      <geom type="cylinder" size="{PUSHER_R} {PUSHER_HALF_H}" mass="1" material="pusher"
        contype="2" conaffinity="0"/>
    </body>
    {''.join(bodies)}
  </worldbody>
  <actuator>
    <velocity name="vx" joint="px" kv="60" forcerange="-40 40"/>
    <velocity name="vy" joint="py" kv="60" forcerange="-40 40"/>
  </actuator>
</mujoco>"""

    # --------------------------------------------------------------------------------- stepping
    def step(self) -> SceneFrame:
        """Advance by 1/fps s under the previous action, render, and choose the next action."""
        if self._model is None or self._data is None or self._renderer is None:
            raise RuntimeError('TabletopScene.step called before reset')
        if self._pending is not None:
            self._data.ctrl[:] = self._pending
            mujoco.mj_step(self._model, self._data, nstep=self._substeps)
        self._renderer.update_scene(self._data, camera='top')
        rgb = self._renderer.render()  # (S, S, 3) uint8
        objects = self._ground_truth()
        self._pending = self._policy()
        if self.command_noise:
            noisy = clip_command(self._pending + self._rng.normal(0.0, self.command_noise, 2))
            self._pending = self._inside(noisy)
        return SceneFrame(rgb=rgb, objects=objects, action=self._pending.astype(np.float32))

    def _project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points (N, 3) -> pixels (N, 2) in the module's convention, and depths (N,) m."""
        pc = (points - self._cam_pos) @ self._cam_rot  # (N, 3) camera frame
        depth = -pc[:, 2]  # (N,)
        uv = np.empty((len(points), 2))
        uv[:, 0] = self.size / 2 + self._focal * pc[:, 0] / depth
        uv[:, 1] = self.size / 2 - self._focal * pc[:, 1] / depth
        return uv, depth

    def _ground_truth(self) -> list[ObjectState]:
        """Pinhole projection of every body centre; apparent radius f * r / depth."""
        assert self._data is not None
        uv, depth = self._project(self._data.xpos[self._bodies])  # (N, 2), (N,)
        rad = self._focal * self._radii / depth  # (N,) px
        names = ['pusher'] + [s['name'] for s in self._specs]
        states = []
        for i, name in enumerate(names):
            x, y = float(uv[i, 0]), float(uv[i, 1])
            inside = 0.0 <= x < self.size and 0.0 <= y < self.size
            # Fully hidden: the disc lies inside the disc of something nearer the camera.
            hidden = any(
                depth[j] < depth[i] and np.hypot(*(uv[i] - uv[j])) + rad[i] <= rad[j]
                for j in range(len(names))
                if j != i
            )
            states.append(ObjectState(i, name, x, y, float(rad[i]), inside and not hidden))
        return states

    def _policy(self) -> np.ndarray:
        """Scripted pusher: pick an object, get behind it, push it through, repeat.

        The push heads for a random point of the inner table (so objects do not pile up at the
        walls) or, half of the time, simply continues the pusher's line to the object.
        """
        assert self._data is not None
        rng, dt = self._rng, 1.0 / self.fps
        p = self._data.xpos[self._bodies[0], :2].copy()  # (2,) m
        objs = self._data.xpos[self._bodies[1:], :2]  # (n, 2) m
        lim = HALF - PUSHER_R - 0.01
        if self._phase == 'pick':
            if rng.random() < 0.1:  # occasionally wander to a random point
                self._phase, self._goal = 'wander', rng.uniform(-lim, lim, 2)
            else:
                # Prefer near objects, never the one just pushed.
                weight = 1.0 / (np.hypot(*(objs - p).T) + 0.05)  # (n,)
                if len(objs) > 1 and self._target > 0:
                    weight[self._target - 1] = 0.0
                self._target = int(rng.choice(len(objs), p=weight / weight.sum())) + 1
                obj = objs[self._target - 1]
                d = obj - p  # (2,) keep going along the line unless that hits a wall soon
                ahead = obj + 0.15 * d / max(np.hypot(*d), 1e-6)
                if rng.random() < 0.5 or np.max(np.abs(ahead)) > HALF - 0.06:
                    d = rng.uniform(-0.12, 0.12, 2) - obj
                ang = math.atan2(d[1], d[0]) + rng.uniform(-0.3, 0.3)
                self._dir = np.array([math.cos(ang), math.sin(ang)])
                self._phase = 'approach'
            self._timer = 0
        self._timer += 1
        if self._phase == 'wander':
            goal = self._goal
            if np.hypot(*(goal - p)) < 0.02 or self._timer > 15:
                self._phase = 'pick'
        elif self._phase == 'approach':
            obj, clear = objs[self._target - 1], self._radii[self._target] + PUSHER_R
            goal = obj - self._dir * (clear + 0.012)
            # Detour: if the way to the push start passes through the target, go round its side.
            seg = goal - p
            t = float(np.clip(np.dot(obj - p, seg) / max(np.dot(seg, seg), 1e-9), 0.0, 1.0))
            off = p + t * seg - obj  # (2,) from the object to the closest point of the way
            if np.hypot(*off) < clear + 0.005 and 0.0 < t < 1.0:
                at = math.atan2(p[1] - obj[1], p[0] - obj[0])  # step round the object by 1 rad
                turn = (math.atan2(-self._dir[1], -self._dir[0]) - at + math.pi) % (2 * math.pi)
                at += float(np.clip(turn - math.pi, -1.0, 1.0))
                goal = obj + (clear + 0.03) * np.array([math.cos(at), math.sin(at)])
            elif np.hypot(*(goal - p)) < 0.03 or self._timer > 20:
                self._phase, self._timer = 'push', 0
                self._speed = float(rng.uniform(0.15, MAX_SPEED))
                self._push_frames = int(rng.integers(6, 15))
        else:  # push straight through the target
            goal = p + self._dir * self._speed * dt * 3
            if self._timer >= self._push_frames:
                self._phase = 'pick'
        want = (np.clip(goal, -lim, lim) - p) / (dt * 3)  # (2,) reach the goal in ~3 frames
        want += rng.normal(0.0, 0.02, 2)
        norm = np.hypot(*want)
        if norm > MAX_SPEED:
            want *= MAX_SPEED / norm
        dv = want - self._velocity  # (2,) limit the acceleration: smooth commands
        dv_max = MAX_ACCEL * dt
        if np.hypot(*dv) > dv_max:
            dv *= dv_max / np.hypot(*dv)
        v = self._inside(self._velocity + dv)
        self._velocity = v
        return v

    def _inside(self, v: np.ndarray) -> np.ndarray:
        """(2,) command v [m/s], shortened so that the pusher stays inside the workspace."""
        assert self._data is not None
        p, dt, lim = self._data.xpos[self._bodies[0], :2], 1.0 / self.fps, HALF - PUSHER_R - 0.01
        return (np.clip(p + v * dt, -lim, lim) - p) / dt

    # ------------------------------------------------------------------- driven by a controller
    def _require(self) -> tuple[mujoco.MjModel, mujoco.MjData]:
        if self._model is None or self._data is None:
            raise RuntimeError('TabletopScene used before reset')
        return self._model, self._data

    def render(self) -> np.ndarray:
        """The camera image of the current state, (S, S, 3) uint8 RGB."""
        self._require()
        assert self._renderer is not None
        self._renderer.update_scene(self._data, camera='top')
        return self._renderer.render()

    def objects(self) -> list[ObjectState]:
        """Ground truth of the current state (what :meth:`step` returns with its frame)."""
        self._require()
        return self._ground_truth()

    def apply(self, command: np.ndarray) -> np.ndarray:
        """Advance by 1/fps s under a pusher command (vx, vy) [m/s, world frame], its norm
        clipped to MAX_SPEED (the joint ranges keep the pusher inside the walls); returns the
        command applied, (2,) float64."""
        model, data = self._require()
        data.ctrl[:] = clip_command(command)
        mujoco.mj_step(model, data, nstep=self._substeps)
        return data.ctrl[:2].copy()

    def get_state(self) -> np.ndarray:
        """A copy of the full integration state (positions, velocities, controls, warm start),
        (n,) float64: :meth:`set_state` of it continues bit-identically."""
        model, data = self._require()
        state = np.empty(mujoco.mj_stateSize(model, _STATE))
        mujoco.mj_getState(model, data, state, _STATE)
        return state

    def set_state(self, state: np.ndarray) -> None:
        """Restore a state from :meth:`get_state` of this episode."""
        model, data = self._require()
        mujoco.mj_setState(model, data, np.asarray(state, dtype=np.float64), _STATE)
        mujoco.mj_forward(model, data)

    def rollout(self, actions: np.ndarray, state: np.ndarray | None = None) -> np.ndarray:
        """Object centres [px] under B candidate command sequences, from ``state`` (default: the
        current one), without rendering and without changing the scene.

        Args:
            actions: (B, N, 2) commands (vx, vy) [m/s]; ``actions[b, n]`` is applied for 1/fps s
                and gives step n + 1 (clipped as in :meth:`apply`).
            state: a :meth:`get_state` of this episode.

        Returns:
            (B, N, K, 2) float64 pixel centres (x right, y down) of the K objects (id order, 0 =
            pusher), exactly what :meth:`objects` would report after the same :meth:`apply`.
        """
        model, _ = self._require()
        actions = np.asarray(actions, dtype=np.float64)
        if actions.ndim != 3 or actions.shape[2] != 2:
            raise ValueError(f'actions must be (B, N, 2), got {actions.shape}')
        start = self.get_state() if state is None else np.asarray(state, dtype=np.float64)
        scratch = mujoco.MjData(model)
        n_b, n_steps = actions.shape[:2]
        xyz = np.empty((n_b, n_steps, len(self._bodies), 3))  # (B, N, K, 3) m
        for b in range(n_b):
            mujoco.mj_setState(model, scratch, start, _STATE)
            for n in range(n_steps):
                scratch.ctrl[:] = clip_command(actions[b, n])
                mujoco.mj_step(model, scratch, nstep=self._substeps)
                xyz[b, n] = scratch.xpos[self._bodies]
        uv, _ = self._project(xyz.reshape(-1, 3))
        return uv.reshape(n_b, n_steps, len(self._bodies), 2)

    def centre(self, object_id: int) -> np.ndarray:
        """World position (3,) [m] of an object's centre (0 = pusher)."""
        _, data = self._require()
        return data.xpos[self._bodies[object_id]].copy()

    def layout(self) -> tuple[np.ndarray, np.ndarray]:
        """World (x, y) [m] of every body's centre, (N, 2), and their radii [m], (N,)
        (index 0 = pusher, then the objects in scene-id order)."""
        _, data = self._require()
        return data.xpos[self._bodies, :2].copy(), self._radii.copy()

    def pixel_of(self, xy: np.ndarray, z: float) -> np.ndarray:
        """Pixel (2,) of the world point (x, y, z) [m]."""
        uv, _ = self._project(np.array([[xy[0], xy[1], z]], dtype=np.float64))
        return uv[0]

    def point_at(self, uv: np.ndarray, z: float) -> np.ndarray:
        """World (x, y) [m] of the plane at height ``z`` seen at pixel ``uv`` (inverse of
        :meth:`pixel_of`)."""
        ray = np.array([uv[0] - self.size / 2, self.size / 2 - uv[1], -self._focal])  # camera
        world = self._cam_rot @ ray  # (3,)
        scale = (z - self._cam_pos[2]) / world[2]
        return (self._cam_pos + scale * world)[:2]

    def sample_task(self, rng: np.random.Generator, distance: tuple[float, float] = (0.06, 0.16),
                    object_id: int = 0) -> PushTask:  # fmt: skip
        """A reachable pushing task: an object that stands clear of the walls and a goal for its
        centre inside the workspace, ``distance`` [m] (min, max) away, clear of the other
        objects. ``object_id`` > 0 fixes the object.

        Raises:
            ValueError: no such task in 2000 draws (or an unknown ``object_id``).
        """
        _, data = self._require()
        n = len(self._bodies) - 1
        if not 0 <= object_id <= n:
            raise ValueError(f'object_id must be 1..{n} (0 = any), got {object_id}')
        xyz = data.xpos[self._bodies]  # (K, 3)
        ids = [object_id] if object_id else [
            i for i in range(1, n + 1)
            if np.max(np.abs(xyz[i, :2])) <= HALF - self._radii[i] - _WALL_CLEARANCE
        ]  # fmt: skip
        for _ in range(2000 if ids else 0):
            i = int(ids[int(rng.integers(len(ids)))])
            lim = HALF - self._radii[i] - _WALL_CLEARANCE
            goal = rng.uniform(-lim, lim, 2)
            dist = float(np.hypot(*(goal - xyz[i, :2])))
            others = [j for j in range(1, n + 1) if j != i]
            clear = all(
                np.hypot(*(goal - xyz[j, :2])) > self._radii[i] + self._radii[j] + 0.01
                for j in others
            )
            if distance[0] <= dist <= distance[1] and clear:
                z = float(xyz[i, 2])
                return PushTask(i, self.pixel_of(xyz[i, :2], z), self.pixel_of(goal, z), goal)
        raise ValueError(f'no reachable task for object {object_id or "any"} in this scene')

    # ----------------------------------------------------------------------------- segmentation
    def segmentation(self) -> np.ndarray:
        """Object id per pixel of the current state (-1: table, walls, background)."""
        if self._renderer is None or self._data is None:
            raise RuntimeError('TabletopScene.segmentation called before reset')
        self._renderer.enable_segmentation_rendering()
        try:
            self._renderer.update_scene(self._data, camera='top')
            seg = self._renderer.render()  # (S, S, 2) int32: geom id, object type
        finally:
            self._renderer.disable_segmentation_rendering()
        geom = seg[..., 0]
        is_geom = (seg[..., 1] == mujoco.mjtObj.mjOBJ_GEOM) & (geom >= 0)
        is_geom &= geom < len(self._geom_to_id)
        ids = np.full(geom.shape, -1, dtype=np.int64)  # (S, S)
        ids[is_geom] = self._geom_to_id[geom[is_geom]]
        return ids

    def segmentation_centroids(self) -> dict[int, tuple[float, float, int]]:
        """Object id -> (mask centroid x, y in px, pixel count); NaN centroid when no pixels."""
        ids = self.segmentation()  # (S, S)
        out: dict[int, tuple[float, float, int]] = {}
        for obj_id in range(len(self._bodies)):
            rows, cols = np.nonzero(ids == obj_id)
            if len(rows) == 0:
                out[obj_id] = (math.nan, math.nan, 0)
            else:  # pixel (r, c) has its centre at (c + 0.5, r + 0.5)
                out[obj_id] = (float(cols.mean()) + 0.5, float(rows.mean()) + 0.5, len(rows))
        return out

    def close(self) -> None:
        """Release the renderer (and its GL context)."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
