"""Pass 2 of the dataset builder: decode only the planned frames into per-episode memmaps.

For one bag, every output row of every episode names a source message (bag-order index). The
messages are streamed once in bag order; a message that feeds rows is decoded once, resized and
written into the preallocated ``episodes/<name>.frames.npy`` of its episode(s). A frame that cannot
be decoded fails the build, or with ``--skip-bad-frames`` its rows are refilled from the nearest
good source frame in a further (rare) pass. Labels are written last, for the frames actually kept.
"""

from __future__ import annotations

import logging
import mmap
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from numpy.lib.format import open_memmap

from dlp_ros.errors import EpisodeError, ImageError
from dlp_ros.input_view import DEFAULT_RESIZE, resize_frame
from dlp_ros.offline.bag_reader import IMAGE_TYPES, Actions, Bag, decode_frame, header_stamp_ns
from dlp_training.data.dataset import frames_file, labels_file
from dlp_training.data.episode_plan import BagPlan, EpisodePlan
from dlp_training.data.ground_truth import gt_path, read_ground_truth

logger = logging.getLogger(__name__)


RELEASE_BYTES = 16 * 2**20  # drop written pages from the mapping after this many bytes


class FrameFile:
    """A preallocated (T, S, S, 3) uint8 .npy (``open_memmap``) filled row by row.

    The file is mapped once; every ``RELEASE_BYTES`` written, the mapped pages are dropped from
    this process (``madvise(MADV_DONTNEED)``; a shared file mapping keeps the data in the page
    cache), so the resident memory of a build does not grow with the size of the dataset.
    """

    def __init__(self, path: Path, shape: tuple[int, int, int, int]) -> None:
        header = open_memmap(path, mode='w+', dtype=np.uint8, shape=shape)  # sizes the file
        offset = header.offset
        del header
        self._file = open(path, 'r+b')  # noqa: SIM115 (closed in close())
        self._map = mmap.mmap(self._file.fileno(), 0)
        self.frames = np.ndarray(shape, dtype=np.uint8, buffer=self._map, offset=offset)
        self._written = 0

    def write(self, row: int, rgb: np.ndarray) -> None:
        """Store ``rgb`` (S, S, 3) as frame ``row``."""
        self.frames[row] = rgb
        self._written += rgb.nbytes
        if self._written >= RELEASE_BYTES and hasattr(mmap, 'MADV_DONTNEED'):
            self._map.madvise(mmap.MADV_DONTNEED)
            self._written = 0

    def close(self) -> None:
        """Flush and unmap."""
        del self.frames
        self._map.flush()
        self._map.close()
        self._file.close()


class PixelStats:
    """Running per-channel sums over every written frame, for mean and std in 0..1 units."""

    def __init__(self) -> None:
        self.sum = np.zeros(3, dtype=np.float64)  # (3,)
        self.sumsq = np.zeros(3, dtype=np.float64)  # (3,)
        self.pixels = 0
        self.frames = 0

    def add(self, frame: np.ndarray, copies: int) -> None:
        """Count ``frame`` (S, S, 3) uint8 ``copies`` times."""
        mean, std = cv2.meanStdDev(frame)  # (3, 1) each, float64
        pixels = copies * frame.shape[0] * frame.shape[1]
        self.sum += pixels * mean[:, 0]
        self.sumsq += pixels * (std[:, 0] ** 2 + mean[:, 0] ** 2)
        self.pixels += pixels
        self.frames += copies

    def mean_std(self) -> tuple[list[float], list[float]]:
        """Per-channel (mean, std) of the pixels divided by 255."""
        if not self.pixels:
            return [0.0] * 3, [0.0] * 3
        mean = self.sum / self.pixels
        var = np.maximum(self.sumsq / self.pixels - mean**2, 0.0)
        return [float(v) for v in mean / 255], [float(v) for v in np.sqrt(var) / 255]


def _routes(episodes: list[EpisodePlan], todo: dict[int, np.ndarray]) -> np.ndarray:
    """(R, 3) int64 rows (source index, episode, row) to fill, sorted by source index."""
    parts = [
        np.stack([episodes[k].source_index[rows], np.full(rows.size, k), rows], axis=1)
        for k, rows in todo.items()
    ]
    routes = np.concatenate(parts) if parts else np.zeros((0, 3), dtype=np.int64)
    return routes[np.argsort(routes[:, 0], kind='stable')]


def _decode_pass(
    bag: Bag,
    plan: BagPlan,
    topic: str,
    routes: np.ndarray,
    frames: list[FrameFile],
    size: int,
    skip_bad: bool,
    stats: PixelStats,
    progress: Callable[[int], object],
    resize: str = DEFAULT_RESIZE,
) -> set[int]:
    """Stream the topic once, filling ``routes``; return the source indices that failed."""
    conn = bag.connection(topic, IMAGE_TYPES, 'camera')
    bad: set[int] = set()
    pos = 0
    for index, (_, raw) in enumerate(bag.messages(conn)):
        if pos >= len(routes):
            break
        if routes[pos, 0] != index:
            continue
        end = pos + int(np.searchsorted(routes[pos:, 0], index, side='right'))
        targets, pos = routes[pos:end], end
        stamp = header_stamp_ns(raw)
        ep = plan.episodes[int(targets[0, 1])]
        expected = int(ep.span_stamps[ep.rows[targets[0, 2]]])
        if stamp != expected:
            raise EpisodeError(
                f'bag {plan.path} changed while reading: message #{index} on {topic} has stamp '
                f'{stamp} ns, expected {expected} ns'
            )
        try:
            rgb = resize_frame(decode_frame(plan.msgtype, raw), size, resize)  # (S, S, 3)
        except ImageError as exc:
            where = f'bag {plan.path}: frame #{index} on {topic} (stamp {stamp} ns)'
            if not skip_bad:
                raise ImageError(
                    f'{where} cannot be decoded: {exc}; nothing was written. Pass '
                    '--skip-bad-frames to replace bad frames by the nearest good one'
                ) from exc
            logger.warning(
                '%s cannot be decoded, replaced by its nearest good frame: %s', where, exc
            )
            bad.add(index)
            continue
        for _, k, row in targets.tolist():
            frames[k].write(row, rgb)
        stats.add(rgb, len(targets))
        progress(len(targets))
    if pos < len(routes):
        raise EpisodeError(
            f'bag {plan.path} changed while reading: {topic} ended before message '
            f'#{int(routes[pos, 0])}'
        )
    return bad


def write_bag(
    plan: BagPlan,
    root: Path,
    topic: str,
    size: int,
    skip: bool,
    stats: PixelStats,
    progress: Callable[[int], object],
    resize: str = DEFAULT_RESIZE,
) -> None:
    """Decode, resize (to ``size`` x ``size`` in the ``resize`` mode, as the runtime does:
    :mod:`dlp_ros.input_view`) and write the frames and labels of every episode of one bag under
    root, reading the camera ``topic``; ``skip``: replace undecodable frames by neighbours
    instead of failing (``--skip-bad-frames``)."""
    frames = [
        FrameFile(root / frames_file(e.name), (e.grid_ns.size, size, size, 3))
        for e in plan.episodes
    ]
    todo = {k: np.arange(e.grid_ns.size) for k, e in enumerate(plan.episodes)}
    bad: set[int] = set()
    try:
        with Bag(plan.path) as bag:
            while todo:
                routes = _routes(plan.episodes, todo)
                newly_bad = _decode_pass(
                    bag, plan, topic, routes, frames, size, skip, stats, progress, resize
                )
                if not newly_bad:
                    break
                bad |= newly_bad
                todo = {k: e.replace_bad(bad) for k, e in enumerate(plan.episodes)}
                todo = {k: rows for k, rows in todo.items() if rows.size}
    finally:
        for frame_file in frames:
            frame_file.close()
    if bad:
        logger.warning('bag %s: %d undecodable frame(s) skipped', plan.path, len(bad))
    gt = read_ground_truth(gt_path(plan.path)) if gt_path(plan.path).is_file() else None
    for e in plan.episodes:
        labels: dict[str, np.ndarray] = {
            'stamps_ns': e.stamps_ns,  # (T,)
            'grid_ns': e.grid_ns,  # (T,)
            'source_index': e.source_index,  # (T,)
        }
        if gt is not None:
            sel = gt.select(e.stamps_ns)
            labels.update(
                gt_ids=sel.ids,  # (N,)
                gt_names=np.array(sel.names, dtype=str),  # (N,)
                gt_xy=sel.xy,  # (T, N, 2)
                gt_radius=sel.radius,  # (T, N)
                gt_visible=sel.visible,  # (T, N)
            )
        if plan.actions is not None:
            labels['actions'], labels['action_valid'] = hold(plan.actions, e.stamps_ns)
        np.savez(root / labels_file(e.name), **labels)


def hold(actions: Actions, stamps_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zero-order hold: the latest command at or before each stamp.

    Returns:
        actions (T, A) float32 (zeros before the first command) and valid (T,) bool.
    """
    last = np.searchsorted(actions.times_ns, stamps_ns, side='right') - 1  # (T,)
    valid = last >= 0
    values = np.zeros((stamps_ns.size, len(actions.names)), dtype=np.float32)
    if actions.values.shape[0]:
        values[valid] = actions.values[last[valid]]
    return values, valid
