"""``build-dataset``: decode, split, resample and cache rosbag2 camera episodes.

Pass 1 reads only the header stamps of every bag (no image decode) and plans the episodes and the
source frame of every output frame (:mod:`dlp_training.data.episode_plan`). Pass 2 decodes just
those frames and writes them into one preallocated .npy memmap per episode
(:mod:`.frame_writer`). The dataset is built in a hidden sibling directory and renamed to
``--out`` only when complete.

Damaged storage in a bag (an mcap chunk failing its checks, unreadable sqlite3 rows, messages whose
CDR cannot be deserialised) fails the build, naming the bag file and the time range; with
``--skip-bad-frames`` it is logged, skipped, and listed per bag in the manifest (``bad_ranges``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

import dlp_ros
from dlp_ros.config_schema import checked, from_args
from dlp_ros.errors import ConfigError, EpisodeError
from dlp_ros.input_view import DEFAULT_RESIZE, RESIZE_MODES
from dlp_ros.offline.bag_reader import (
    ACTION_TYPES,
    IMAGE_TYPES,
    Bag,
    BagDamageError,
    Damage,
    check_encoding,
    find_bags,
    frame_encoding,
)
from dlp_ros.offline.output_dir import check_out, publish
from dlp_ros.plain_values import plain
from dlp_training.data import episode_plan as ep
from dlp_training.data.dataset import (
    EPISODES,
    FORMAT,
    MANIFEST,
    VERSION,
    frames_file,
    labels_file,
    write_manifest,
)
from dlp_training.data.frame_writer import PixelStats, write_bag
from dlp_training.data.ground_truth import gt_path, read_ground_truth
from dlp_training.data.splits import SPLIT_BY, read_split_file, split_by_names, split_by_time

logger = logging.getLogger(__name__)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the build-dataset arguments."""
    add = parser.add_argument
    add('--bags', nargs='+', type=Path, required=True, metavar='PATH',
        help='rosbag2 directories, or folders: every bag below one, in path order')  # fmt: skip
    add('--topic', required=True, help='camera topic (sensor_msgs/Image or CompressedImage)')
    add('--size', type=int, default=64, help='output frames are SIZE x SIZE RGB (default 64)')
    add('--resize', choices=RESIZE_MODES, default=DEFAULT_RESIZE,
        help='how a frame becomes SIZE x SIZE: squash (the whole frame, default), crop (the '
        'centred square) or pad (black letterbox); recorded in the manifest and by export in '
        "the model card, and the node runs the model's mode")  # fmt: skip
    add('--fps', type=float, required=True, help='output frame rate (nearest-frame resampling)')
    add('--out', type=Path, required=True, help='dataset directory to create')
    add('--split-gap', type=float, metavar='SECONDS', help='start an episode after such a gap')
    add('--marker-topic', help='every message on this topic starts a new episode at its time')
    add('--action-topic', help='commands (Twist[Stamped], Float32/64MultiArray) to align')
    add('--split', default='0.8,0.1,0.1', help='train,val,test fractions (default 0.8,0.1,0.1)')
    add('--split-by', choices=SPLIT_BY, default='episode',
        help='episode: whole episodes at random (default); time: per bag, the first --split '
             'fraction of its frames train, then val, then test')  # fmt: skip
    add(
        '--split-file',
        type=Path,
        metavar='YAML',
        help='explicit split by episode name: {train: [names], val: [...], test: [...]}; '
        'rest: train puts the episodes not named in train',
    )
    add('--seed', type=int, default=0, help='seed of the split by episode (default 0)')
    add('--min-frames', type=int, default=1, help='drop shorter episodes (default 1)')
    add(
        '--backwards',
        choices=('fail', 'drop'),
        default='fail',
        help='header stamps going backwards: fail (default) or drop those frames',
    )
    add(
        '--skip-bad-frames',
        action='store_true',
        help='replace undecodable frames by neighbours, and skip damaged storage chunks/rows of '
        'a bag (logged, listed in the manifest as bad_ranges) instead of failing',
    )
    add('--overwrite', action='store_true', help='replace --out once the new dataset is complete')
    add('--no-progress', action='store_true', help='no progress bar')


@dataclass(frozen=True)
class BuildOptions:
    """The build-dataset command line, validated (the fields are its options)."""

    bags: tuple[Path, ...]
    topic: str
    fps: float = checked(gt=0, finite=True, say='positive')
    out: Path
    size: int = checked(64, gt=0, say='positive')
    resize: str = checked(DEFAULT_RESIZE, choices=RESIZE_MODES)
    split_gap: float | None = checked(None, gt=0, say='positive')
    marker_topic: str | None = None
    action_topic: str | None = None
    split: str = '0.8,0.1,0.1'
    split_by: str = checked('episode', choices=SPLIT_BY)
    split_file: Path | None = None
    seed: int = 0
    min_frames: int = checked(1, ge=1, say='at least 1')
    backwards: str = checked('fail', choices=('fail', 'drop'))
    skip_bad_frames: bool = False
    overwrite: bool = False
    no_progress: bool = False


def check_args(opts: BuildOptions) -> tuple[float, float, float]:
    """Check the bag list against --out; return the split fractions."""
    resolved = [p.resolve() for p in opts.bags]
    if len(set(resolved)) != len(resolved):
        raise ConfigError('a bag is given twice in --bags')
    out = opts.out.resolve()
    for bag in resolved:
        if bag == out or out in bag.parents:
            raise ConfigError(f'--out {opts.out} would contain the bag {bag}')
    return ep.parse_fractions(opts.split)


def unique_names(bags: list[Path]) -> list[str]:
    """Episode base names: the bag directory names, made unique with -2, -3, ..."""
    names: list[str] = []
    for bag in bags:
        name, k = bag.name, 2
        while name in names:
            name, k = f'{bag.name}-{k}', k + 1
        names.append(name)
    return names


def plan_bag(path: Path, base: str, opts: BuildOptions) -> ep.BagPlan:
    """Pass 1 for one bag: stamps, checks, episodes and the frames to keep."""
    with Bag(path) as bag:
        conn = bag.connection(opts.topic, IMAGE_TYPES, 'camera')
        stamps = bag.read_stamps(conn)
        if stamps.first is None:
            raise EpisodeError(f'bag {path} is empty: no messages on {opts.topic}')
        encoding = frame_encoding(conn.msgtype, stamps.first)
        check_encoding(conn.msgtype, encoding, f'bag {path}, topic {opts.topic}')
        markers = np.zeros(0, dtype=np.int64)
        if opts.marker_topic:
            markers = bag.event_times(bag.connection(opts.marker_topic, None, 'marker'))
        actions, action_type = None, None
        if opts.action_topic:
            aconn = bag.connection(opts.action_topic, ACTION_TYPES, 'action')
            actions, action_type = bag.read_actions(aconn), aconn.msgtype
    keep = ep.check_monotonic(
        stamps.stamps_ns, f'{opts.topic} in bag {path}', opts.backwards == 'drop'
    )
    index = np.flatnonzero(keep)  # (n,) bag-order indices of the usable frames
    kept = stamps.stamps_ns[index]
    gap = None if opts.split_gap is None else int(opts.split_gap * ep.NS)
    starts = ep.split_points(kept, gap, markers)
    rate = ep.estimate_rate(kept, starts)
    episodes = ep.plan_episodes(base, index, kept, starts, opts.fps)
    plan = ep.BagPlan(
        path, bag.storage, conn.msgtype, encoding, stamps.stamps_ns.size, rate, int((~keep).sum()),
        [e for e in episodes if e.grid_ns.size >= opts.min_frames],
        [e.name for e in episodes if e.grid_ns.size < opts.min_frames],
        actions, action_type,
    )  # fmt: skip
    report_bag(plan, opts)
    if gt_path(path).is_file():
        gt = read_ground_truth(gt_path(path))
        for e in plan.episodes:
            try:
                gt.select(e.span_stamps)
            except EpisodeError as exc:
                raise EpisodeError(f'{gt_path(path)} does not match bag {path}: {exc}') from exc
    return plan


def report_bag(plan: ep.BagPlan, opts: BuildOptions) -> None:
    """Log the frame rate of a bag and what resampling does to it."""
    r = plan.rate
    logger.info(
        'bag %s (%s, %s %s): %d frames on %s, ~%.2f fps (median interval %.2f ms), %d episode(s)',
        plan.path, plan.storage, plan.msgtype.rsplit('/', 1)[-1], plan.encoding, plan.messages,
        opts.topic, r.fps, r.median_dt_ns / 1e6, len(plan.episodes),
    )  # fmt: skip
    if r.irregular:
        logger.warning(
            'bag %s: irregular frame rate: %d of %d intervals are more than %d%% off the median',
            plan.path, r.irregular, max(r.frames - 1, 0), int(ep.IRREGULAR * 100),
        )  # fmt: skip
    if r.drops:
        logger.warning(
            'bag %s: about %d dropped frames (longest interval %.1f ms, median %.1f ms); '
            '--split-gap SECONDS starts a new episode after long gaps',
            plan.path, r.drops, r.max_dt_ns / 1e6, r.median_dt_ns / 1e6,
        )  # fmt: skip
    for e in plan.episodes:
        if e.repeated and e.rate.fps and e.rate.fps < opts.fps:
            logger.warning(
                'episode %s: source ~%.2f fps is slower than --fps %g: nearest-frame resampling '
                'repeats a source frame in %d of %d output frames (no interpolation)',
                e.name, e.rate.fps, opts.fps, e.repeated, e.grid_ns.size,
            )  # fmt: skip
    for name in plan.dropped:
        logger.warning('episode %s: dropped, fewer than --min-frames %d', name, opts.min_frames)


def run(args: argparse.Namespace) -> int:
    """Build the dataset; raise a DlpError on bad input, leaving nothing at --out."""
    opts = from_args(BuildOptions, args)
    return build(dataclasses.replace(opts, bags=tuple(find_bags(opts.bags))))


def build(opts: BuildOptions) -> int:
    """:func:`run` with its options (the bag folders expanded to the bags)."""
    damage = Damage(skip=opts.skip_bad_frames)
    try:
        with damage.active():  # both passes (and every Bag they open) report damage here
            return _build(opts, damage)
    except BagDamageError as exc:
        raise BagDamageError(
            f'{exc}; nothing was written. Pass --skip-bad-frames to skip the damaged part '
            '(it is then listed in the manifest as bad_ranges) and build from the rest',
            exc.bad,
        ) from exc


def _build(opts: BuildOptions, damage: Damage) -> int:
    """:func:`run` with ``damage`` active."""
    fractions = check_args(opts)
    out = Path(opts.out)
    check_out(out, opts.overwrite, MANIFEST, 'dataset')
    started = time.monotonic()
    names = unique_names(opts.bags)
    plans = [plan_bag(p, n, opts) for p, n in zip(opts.bags, names, strict=True)]
    msgtypes = {p.msgtype for p in plans}
    if len(msgtypes) > 1:
        raise EpisodeError(f'{opts.topic} has different types in the bags: {sorted(msgtypes)}')
    if not any(p.episodes for p in plans):
        raise EpisodeError(f'no episode has at least --min-frames {opts.min_frames} frames')
    splits = choose_splits(opts, plans, fractions)
    episodes = [e for p in plans for e in p.episodes]
    action = action_info(opts, plans)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f'.{out.name}.{os.getpid()}-{time.time_ns()}.partial'
    try:
        (tmp / EPISODES).mkdir(parents=True)
        stats = PixelStats()
        total = sum(e.grid_ns.size for e in episodes)
        with tqdm(
            total=total, unit='frame', file=sys.stderr, disable=opts.no_progress, desc='frames'
        ) as bar:
            for plan in plans:
                write_bag(plan, tmp, opts.topic, opts.size, opts.skip_bad_frames, stats,
                          bar.update, opts.resize)  # fmt: skip
        write_manifest(tmp, manifest(opts, plans, splits, stats, action, damage))
        publish(tmp, out, opts.overwrite, MANIFEST, 'dataset')
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    skipped = {p.path: len(damage.ranges(p.path)) for p in plans if damage.ranges(p.path)}
    if skipped:
        logger.warning(
            '%d damaged range(s) of %d bag(s) skipped (--skip-bad-frames): see bad_ranges of '
            'the sources in %s',
            sum(skipped.values()), len(skipped), out / MANIFEST,
        )  # fmt: skip
    counts = {s: sum(v == s for v in splits.values()) for s in ep.SPLITS}
    logger.info(
        'wrote %s: %d episodes (train %d, val %d, test %d), %d frames of %dx%d at %g fps from %d '
        'bag(s) in %.1f s',
        out, len(episodes), counts['train'], counts['val'], counts['test'], total, opts.size,
        opts.size, opts.fps, len(plans), time.monotonic() - started,
    )  # fmt: skip
    return 0


def choose_splits(
    opts: BuildOptions, plans: list[ep.BagPlan], fractions: tuple[float, float, float]
) -> dict[str, str]:
    """``{episode name: split}`` by ``--split-file``, by time (cutting the plans' episodes) or
    by episode (:mod:`dlp_training.data.splits`)."""
    if opts.split_file is not None:
        if opts.split_by != 'episode':
            raise ConfigError('--split-file names the split of every episode: drop --split-by')
        names = [e.name for p in plans for e in p.episodes]
        listed, rest = read_split_file(opts.split_file)
        return split_by_names(names, listed, opts.split_file, rest)
    if opts.split_by == 'time':
        return split_by_time(plans, fractions)
    return ep.assign_splits([e.name for p in plans for e in p.episodes], fractions, opts.seed)


def split_entry(opts: BuildOptions) -> dict[str, Any]:
    """The manifest's ``split`` entry: how the split was made."""
    if opts.split_file is not None:
        return {'by': 'names', 'file': str(Path(opts.split_file).resolve())}
    by = {'by': opts.split_by, 'fractions': list(ep.parse_fractions(opts.split))}
    return {**by, 'seed': opts.seed} if opts.split_by == 'episode' else by


def action_info(opts: BuildOptions, plans: list[ep.BagPlan]) -> dict[str, Any] | None:
    """The manifest's action entry (topic, type, names, dim), or None without --action-topic."""
    if not opts.action_topic:
        return None
    kinds = {(p.action_type, len(p.actions.names)) for p in plans if p.actions is not None}
    if len(kinds) != 1:
        raise EpisodeError(f'{opts.action_topic} differs between the bags: {sorted(kinds)}')
    names = next(p.actions.names for p in plans if p.actions is not None)
    return {'topic': opts.action_topic, 'type': plans[0].action_type, 'names': names,
            'dim': len(names)}  # fmt: skip


def manifest(
    opts: BuildOptions,
    plans: list[ep.BagPlan],
    splits: dict[str, str],
    stats: PixelStats,
    action: dict[str, Any] | None,
    damage: Damage,
) -> dict[str, Any]:
    """The manifest.yaml content (plain Python types)."""
    mean, std = stats.mean_std()
    episodes = [
        {
            'name': e.name,
            'bag': str(p.path.resolve()),
            'split': splits[e.name],
            'start_ns': int(e.stamps_ns[0]),
            'end_ns': int(e.stamps_ns[-1]),
            'frames': int(e.grid_ns.size),
            'source_frames': int(e.span_index.size),
            'source_fps': round(e.rate.fps, 4),
            'repeated_frames': e.repeated,
            'frames_file': frames_file(e.name),
            'labels_file': labels_file(e.name),
        }
        for p in plans
        for e in p.episodes
    ]
    sources = [
        {
            'bag': str(p.path.resolve()),
            'storage': p.storage,
            'encoding': p.encoding,
            'messages': p.messages,
            'backwards_dropped': p.backwards,
            **p.rate.as_dict(),
            'episodes': [e.name for e in p.episodes],
            'dropped_episodes': p.dropped,
            'bad_ranges': [r.as_dict() for r in damage.ranges(p.path)],
        }
        for p in plans
    ]
    return {
        'format': FORMAT,
        'version': VERSION,
        'created_by': f'dlp_ros {dlp_ros.__version__}',
        'fps': float(opts.fps),
        'frame_shape': [opts.size, opts.size, 3],
        'resize': opts.resize,
        'dtype': 'uint8',
        'topic': opts.topic,
        'message_type': plans[0].msgtype,
        'ground_truth': all(gt_path(p.path).is_file() for p in plans),
        'action': action,
        'stats': {'mean': mean, 'std': std, 'scale': 'uint8 / 255', 'frames': stats.frames},
        'split': split_entry(opts),
        'episodes': episodes,
        'sources': sources,
        'args': plain(opts),
    }
