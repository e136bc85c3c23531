"""``record-synthetic``: synthetic episodes as real rosbag2 bags, with ground truth beside them.

Output layout (written to a hidden sibling directory, renamed into place when complete)::

    OUT/record.yaml              what was recorded and how (scene, arguments, topics)
    OUT/episode_0000/            rosbag2 directory (metadata.yaml + .mcap or .db3)
    OUT/episode_0000.gt.csv      ground truth per frame and object

With ``--branches K`` (tabletop) each episode is a trunk that is not written itself; its
counterfactual branches are, as ``episode_0000_t025_b0`` ... (:mod:`dlp_training.data.branches`).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from tqdm import tqdm

from dlp_ros.config_schema import check_fields, checked, fail, from_args
from dlp_ros.errors import DlpError
from dlp_ros.offline.bag_writer import STORAGES, BagWriter
from dlp_ros.sim.scene import ObjectState, Scene, SceneFrame
from dlp_training.data.branches import (
    CONTEXT,
    DEFAULT_KINDS,
    KINDS,
    BranchSpec,
    branch_episodes,
    branch_points,
    known_kinds,
)
from dlp_training.data.ground_truth import gt_path, write_ground_truth

logger = logging.getLogger(__name__)

CAMERA_TOPIC = '/camera/image_raw'
CAMERA_FRAME = 'camera'
EPOCH_NS = 1_700_000_000 * 10**9  # first stamp of episode 0; episode i starts i hours later


def make_scene(name: str, size: int, fps: float, command_noise: float = 0.0) -> Scene:
    """Instantiate a scene by name (imports MuJoCo only for ``tabletop``)."""
    if name == 'balls':
        if command_noise:
            raise DlpError('--command-noise: the balls scene takes no commands (tabletop only)')
        from dlp_training.data.balls import BallsScene

        return BallsScene(size=size, fps=fps)
    if name == 'tabletop':
        from dlp_ros.sim.tabletop import TabletopScene

        return TabletopScene(size=size, fps=fps, command_noise=command_noise)
    raise DlpError(f'unknown scene {name!r}; choose balls or tabletop')


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('scene', choices=['balls', 'tabletop'], help='which synthetic scene')
    parser.add_argument('--episodes', type=int, required=True, help='number of episodes (bags)')
    parser.add_argument('--out', type=Path, required=True, help='output directory (new)')
    parser.add_argument('--storage', choices=sorted(STORAGES), default='mcap')
    parser.add_argument('--size', type=int, choices=[64, 128], default=64, help='image side, px')
    parser.add_argument('--seed', type=int, default=0, help='random seed (episode i uses S+i)')
    parser.add_argument('--frames', type=int, default=None, help='frames per episode '
                        '(default: 100 for balls, 50 for tabletop)')  # fmt: skip
    parser.add_argument('--fps', type=float, default=10.0, help='camera rate, Hz')
    parser.add_argument('--compressed', choices=['jpeg', 'png'], default=None,
                        help='write CompressedImage on <topic>/compressed instead')  # fmt: skip
    parser.add_argument('--command-noise', type=float, default=0.0,
                        help='tabletop: std [m/s] of Gaussian noise on each scripted pusher '
                        'command (exploratory commands, like a sampling planner\'s)')  # fmt: skip
    parser.add_argument('--branches', type=int, default=0, metavar='K',
                        help='tabletop: write K counterfactual branches from each branch '
                        'point of an episode instead of it (default 0: plain)')  # fmt: skip
    parser.add_argument('--branch-every', type=int, default=25, metavar='FRAMES',
                        help='frames between branch points (default 25)')  # fmt: skip
    parser.add_argument('--branch-frames', type=int, default=12, metavar='FRAMES',
                        help=f'frames after the branch point; each branch also holds the '
                        f'{CONTEXT} frames before it (default 12)')  # fmt: skip
    parser.add_argument('--branch-noise', type=float, default=0.15, metavar='STD',
                        help='std [m/s] of the per-step noise on branch commands (default 0.15, '
                        "the reference planner's initial spread)")  # fmt: skip
    parser.add_argument('--branch-kinds', type=_kinds, default=DEFAULT_KINDS, metavar='K1,K2',
                        help=f'commands of branch k: kind k mod the count, of '
                        f'{", ".join(KINDS)} (default {",".join(DEFAULT_KINDS)}; see '
                        'dlp_training.data.branches)')  # fmt: skip
    parser.add_argument('--overwrite', action='store_true', help='replace an existing --out')


def _kinds(text: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in text.split(',') if k.strip())


@dataclass(frozen=True)
class RecordOptions:
    """The record-synthetic command line, validated (the fields are its options)."""

    scene: str = checked(choices=('balls', 'tabletop'))
    episodes: int = checked(ge=1)
    out: Path
    storage: str = checked('mcap', choices=tuple(sorted(STORAGES)))
    size: int = checked(64, choices=(64, 128))
    seed: int = 0
    # None: 100 for balls, 50 for tabletop (:attr:`frames_per_episode`).
    frames: int | None = checked(None, ge=2)
    fps: float = checked(10.0, gt=0, finite=True)
    compressed: str | None = checked(None, choices=('jpeg', 'png', None))
    command_noise: float = checked(0.0, ge=0, finite=True)
    branches: int = checked(0, ge=0)
    branch_every: int = checked(25, ge=1)
    branch_frames: int = checked(12, ge=1)
    branch_noise: float = checked(0.15, ge=0, finite=True)
    branch_kinds: tuple[str, ...] = DEFAULT_KINDS
    overwrite: bool = False

    def __post_init__(self) -> None:
        check_fields(self)
        if not known_kinds(self.branch_kinds):
            raise fail(self, 'branch_kinds', f'must be a comma-separated list of '
                       f'{", ".join(KINDS)}, got {",".join(self.branch_kinds)!r}')  # fmt: skip
        if not self.branches:
            return
        if self.scene != 'tabletop':
            raise fail(self, 'branches', 'needs the tabletop scene (the balls take no commands)')
        if not branch_points(self.frames_per_episode, self.branch_every):
            raise fail(self, 'branches', f'has no branch point in {self.frames_per_episode} '
                       f'frames: --frames must exceed {CONTEXT} and --branch-every')  # fmt: skip

    @property
    def branch_spec(self) -> BranchSpec | None:
        if not self.branches:
            return None
        return BranchSpec(self.branches, self.branch_every, self.branch_frames, self.branch_noise,
                          self.branch_kinds)  # fmt: skip

    @property
    def frames_per_episode(self) -> int:
        return self.frames or (100 if self.scene == 'balls' else 50)


def run(args: argparse.Namespace) -> int:
    opts = from_args(RecordOptions, args)
    frames = opts.frames_per_episode
    out = opts.out
    if out.exists() and not opts.overwrite:
        raise DlpError(f'{out} already exists; choose a new --out or pass --overwrite')
    partial = out.with_name(f'.{out.name}.partial')
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        summary = record(opts, partial)
        (partial / 'record.yaml').write_text(yaml.safe_dump(summary, sort_keys=False))
        if out.exists():
            shutil.rmtree(out)
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    what = f'{opts.episodes} {opts.scene} episode(s) x {frames} frames'
    if 'branches' in summary:
        what += f' as {summary["branches"]["bags"]} branch bags'
    print(f'recorded {what} -> {out}')  # noqa: T201
    return 0


def record(opts: RecordOptions, out: Path) -> dict:
    """Record ``opts.episodes`` bags into ``out``; returns the summary written to record.yaml."""
    scene_name, episodes = opts.scene, opts.episodes
    frames = opts.frames_per_episode
    scene = make_scene(scene_name, opts.size, opts.fps, opts.command_noise)
    camera_topic = CAMERA_TOPIC + ('/compressed' if opts.compressed else '')
    camera_type = 'sensor_msgs/msg/' + ('CompressedImage' if opts.compressed else 'Image')
    topics = {camera_topic: camera_type}
    action_topic = f'/{scene_name}/command' if scene.action_names else None
    if action_topic:
        topics[action_topic] = 'geometry_msgs/msg/TwistStamped'
    spec = opts.branch_spec
    per_episode = frames  # frames written per episode
    if spec is not None:
        per_episode = len(branch_points(frames, spec.every)) * spec.branches * spec.length
    bar = tqdm(total=episodes * per_episode, unit='frame', desc=f'record {scene_name}',
               file=sys.stderr, disable=None)  # fmt: skip
    period_ns = round(1e9 / opts.fps)
    written = 0  # bags so far: bag i starts i hours after EPOCH_NS

    def write(name: str, scene_frames: Iterable[SceneFrame]) -> None:
        nonlocal written
        bag, start = out / name, EPOCH_NS + written * 3600 * 10**9
        truth: list[tuple[int, list[ObjectState]]] = []
        with BagWriter(bag, opts.storage, topics) as writer:
            for t, frame in enumerate(scene_frames):
                stamp = start + t * period_ns
                if opts.compressed:
                    msg = writer.compressed_image(stamp, CAMERA_FRAME, frame.rgb, opts.compressed)
                else:
                    msg = writer.image(stamp, CAMERA_FRAME, frame.rgb)
                writer.write(camera_topic, stamp, msg)
                if action_topic and frame.action is not None:
                    writer.write(action_topic, stamp, _twist(writer, stamp, frame.action))
                truth.append((stamp, frame.objects))
                bar.update()
        write_ground_truth(gt_path(bag), truth)
        written += 1

    try:
        for ep in range(episodes):
            rng = np.random.default_rng(opts.seed + ep)
            scene.reset(rng)
            if spec is None:
                write(f'episode_{ep:04d}', (scene.step() for _ in range(frames)))
                continue
            for suffix, branch in branch_episodes(scene, rng, frames, spec):  # type: ignore[arg-type]
                write(f'episode_{ep:04d}_{suffix}', branch)
    finally:
        bar.close()
        scene.close()
    summary = {
        'scene': scene_name,
        'episodes': episodes,
        'frames_per_episode': frames,
        'size': opts.size,
        'fps': opts.fps,
        'seed': opts.seed,
        'command_noise': opts.command_noise,
        'storage': opts.storage,
        'topics': topics,
        'action_names': list(scene.action_names),
        'ground_truth': 'episode_NNNN.gt.csv: frame,stamp_ns,id,name,x,y,radius,visible (px)',
    }
    if spec is not None:
        summary['branches'] = {
            'per_point': spec.branches, 'every': spec.every, 'frames': spec.frames,
            'context': CONTEXT, 'noise': spec.noise, 'kinds': list(spec.kinds),
            'points': branch_points(frames, spec.every),
            'bags': written,
        }  # fmt: skip
    return summary


def _twist(writer: BagWriter, stamp_ns: int, action: np.ndarray) -> object:
    """geometry_msgs/TwistStamped carrying the scene's (vx, vy) command in linear.x/y."""
    types = writer.store.types
    vec = types['geometry_msgs/msg/Vector3']
    linear = vec(x=float(action[0]), y=float(action[1]) if action.size > 1 else 0.0, z=0.0)
    twist = types['geometry_msgs/msg/Twist'](linear=linear, angular=vec(x=0.0, y=0.0, z=0.0))
    return types['geometry_msgs/msg/TwistStamped'](
        header=writer.header(stamp_ns, 'table'), twist=twist
    )
