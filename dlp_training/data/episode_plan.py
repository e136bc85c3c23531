"""Pass 1 of the dataset builder: from header stamps to episodes and the frames each one keeps.

Everything here works on stamp arrays only (no pixels): monotonicity, frame-rate estimation,
splitting a bag into episodes (time gaps, marker times), nearest-frame resampling onto the output
time grid, and the deterministic train/val/test split by episode.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dlp_ros.errors import ConfigError, EpisodeError
from dlp_ros.offline.bag_reader import Actions

logger = logging.getLogger(__name__)

NS = 1_000_000_000
SPLITS = ('train', 'val', 'test')
IRREGULAR = 0.25  # an interval further than this fraction from the median is irregular
DROP = 1.5  # an interval longer than this many medians means dropped frames


@dataclass(frozen=True)
class RateReport:
    """Frame rate of a stamp sequence, estimated from the median interval."""

    frames: int
    fps: float  # 0.0 when there are fewer than two frames
    median_dt_ns: int
    irregular: int  # intervals more than IRREGULAR off the median
    drops: int  # estimated missing frames (intervals longer than DROP medians)
    max_dt_ns: int

    def as_dict(self) -> dict[str, float | int]:
        return {
            'usable_frames': self.frames,
            'fps': round(self.fps, 4),
            'median_dt_ms': round(self.median_dt_ns / 1e6, 4),
            'irregular_intervals': self.irregular,
            'dropped_frames': self.drops,
            'max_dt_ms': round(self.max_dt_ns / 1e6, 4),
        }


def estimate_rate(stamps_ns: np.ndarray, starts: list[int] | None = None) -> RateReport:
    """Estimate the frame rate of increasing stamps (N,) and count irregular intervals/drops.

    ``starts``: indices where episodes start; the intervals between episodes are not counted.
    """
    dt = np.diff(stamps_ns)  # (N-1,)
    if starts:
        dt = np.delete(dt, [s - 1 for s in starts if s > 0])
    if dt.size == 0:
        return RateReport(int(stamps_ns.size), 0.0, 0, 0, 0, 0)
    median = int(np.median(dt))
    if median <= 0:
        return RateReport(int(stamps_ns.size), 0.0, 0, 0, 0, int(dt.max()))
    irregular = int(np.count_nonzero(np.abs(dt - median) > IRREGULAR * median))
    long = dt[dt > DROP * median]
    drops = int(np.sum(np.rint(long / median) - 1)) if long.size else 0
    return RateReport(int(stamps_ns.size), NS / median, median, irregular, drops, int(dt.max()))


def non_increasing(stamps_ns: np.ndarray) -> np.ndarray:
    """(N,) bool: frames whose stamp is not after every earlier kept frame's stamp.

    Such frames go back in time (or repeat a stamp); dropping them leaves a strictly increasing
    sequence.
    """
    keep = np.ones(stamps_ns.size, dtype=bool)
    latest = None
    for i, stamp in enumerate(stamps_ns.tolist()):
        if latest is not None and stamp <= latest:
            keep[i] = False
        else:
            latest = stamp
    return ~keep


def check_monotonic(stamps_ns: np.ndarray, where: str, drop: bool) -> np.ndarray:
    """(N,) bool mask of the frames to keep; fails on stamps going backwards unless ``drop``.

    Raises:
        EpisodeError: some stamps do not increase and ``drop`` is false.
    """
    bad = non_increasing(stamps_ns)
    count = int(bad.sum())
    if count == 0:
        return ~bad
    first = int(np.flatnonzero(bad)[0])
    detail = (
        f'{count} of {stamps_ns.size} header stamps on {where} go backwards or repeat '
        f'(first at message #{first}: {int(stamps_ns[first])} ns after '
        f'{int(stamps_ns[:first].max())} ns)'
    )
    if not drop:
        raise EpisodeError(f'{detail}; nothing was written. Pass --backwards drop to drop them')
    logger.warning('%s: dropped them (--backwards drop)', detail)
    return ~bad


def split_points(stamps_ns: np.ndarray, gap_ns: int | None, markers_ns: np.ndarray) -> list[int]:
    """Indices where a new episode starts in increasing stamps (N,), always including 0.

    A new episode starts after an interval longer than ``gap_ns`` and at the first frame at or
    after each marker time.
    """
    starts = {0}
    if gap_ns is not None and stamps_ns.size > 1:
        starts.update((np.flatnonzero(np.diff(stamps_ns) > gap_ns) + 1).tolist())
    if markers_ns.size:
        starts.update(np.searchsorted(stamps_ns, markers_ns, side='left').tolist())
    return sorted(s for s in starts if s < stamps_ns.size)


def output_grid(t0_ns: int, t1_ns: int, fps: float) -> np.ndarray:
    """(T,) int64 output times t0 + k / fps for every k with t0 + k / fps <= t1."""
    count = int(np.floor((t1_ns - t0_ns) * fps / NS + 1e-6)) + 1
    return t0_ns + np.rint(np.arange(count) * (NS / fps)).astype(np.int64)


def nearest(stamps_ns: np.ndarray, grid_ns: np.ndarray) -> np.ndarray:
    """(T,) index of the stamp (N, increasing) nearest to each grid time; ties: the earlier."""
    right = np.clip(np.searchsorted(stamps_ns, grid_ns, side='left'), 0, stamps_ns.size - 1)
    left = np.clip(right - 1, 0, None)
    take_left = np.abs(grid_ns - stamps_ns[left]) <= np.abs(stamps_ns[right] - grid_ns)
    return np.where(take_left, left, right)


@dataclass
class EpisodePlan:
    """One episode: which source frames fill which output rows."""

    name: str
    span_index: np.ndarray  # (n,) int64, bag-order indices of the episode's source frames
    span_stamps: np.ndarray  # (n,) int64, their header stamps (increasing)
    grid_ns: np.ndarray  # (T,) int64, output times
    rows: np.ndarray  # (T,) int64, position in span_* of the frame chosen for each output row
    rate: RateReport  # of the source frames of the episode

    @property
    def source_index(self) -> np.ndarray:
        """(T,) int64 bag-order index of each row's source frame."""
        return self.span_index[self.rows]

    @property
    def stamps_ns(self) -> np.ndarray:
        """(T,) int64 header stamp of each row's source frame."""
        return self.span_stamps[self.rows]

    @property
    def repeated(self) -> int:
        """Output rows that repeat the previous row's source frame."""
        return int(np.count_nonzero(np.diff(self.rows) == 0))

    def replace_bad(self, bad: set[int]) -> np.ndarray:
        """Move rows off the source frames in ``bad`` to the nearest good one; return those rows.

        Raises:
            EpisodeError: every source frame of the episode is bad.
        """
        good = np.array([i not in bad for i in self.span_index.tolist()], dtype=bool)
        moved = np.flatnonzero(~good[self.rows])
        if moved.size == 0:
            return moved
        if not good.any():
            raise EpisodeError(f'episode {self.name}: every frame is corrupt')
        good_pos = np.flatnonzero(good)
        choice = nearest(self.span_stamps[good_pos], self.grid_ns[moved])
        self.rows[moved] = good_pos[choice]
        return moved


@dataclass
class BagPlan:
    """Pass-1 result for one bag."""

    path: Path
    storage: str  # 'mcap' | 'sqlite3'
    msgtype: str  # of the camera topic
    encoding: str  # of its first frame
    messages: int  # on the camera topic
    rate: RateReport  # of the usable frames
    backwards: int  # frames dropped because their stamps went backwards
    episodes: list[EpisodePlan]
    dropped: list[str] = field(default_factory=list)  # episodes shorter than --min-frames
    actions: Actions | None = None  # commands of --action-topic
    action_type: str | None = None


def plan_episodes(
    name: str, index: np.ndarray, stamps_ns: np.ndarray, starts: list[int], fps: float
) -> list[EpisodePlan]:
    """Resample each episode (source frames ``index``/``stamps_ns`` cut at ``starts``) to fps."""
    bounds = [*starts, stamps_ns.size]
    plans = []
    for k, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        span_stamps = stamps_ns[lo:hi]
        grid = output_grid(int(span_stamps[0]), int(span_stamps[-1]), fps)
        ep_name = name if len(starts) == 1 else f'{name}_{k:03d}'
        plans.append(
            EpisodePlan(
                ep_name,
                index[lo:hi],
                span_stamps,
                grid,
                nearest(span_stamps, grid),
                estimate_rate(span_stamps),
            )
        )
    return plans


def parse_fractions(text: str) -> tuple[float, float, float]:
    """``'0.8,0.1,0.1'`` -> (train, val, test) fractions that sum to 1."""
    try:
        values = tuple(float(v) for v in text.split(','))
    except ValueError:
        values = ()
    if len(values) != 3 or any(v < 0 for v in values) or abs(sum(values) - 1) > 1e-6:
        raise ConfigError(
            f'--split {text!r}: expected three non-negative fractions train,val,test that sum to '
            '1, e.g. 0.8,0.1,0.1'
        )
    return values  # type: ignore[return-value]


def assign_splits(
    names: list[str], fractions: tuple[float, float, float], seed: int
) -> dict[str, str]:
    """Deterministic ``{episode name: split}``: a seeded shuffle of the sorted names.

    Counts follow the fractions (largest remainder); with at least as many episodes as splits of
    non-zero fraction, each of those splits gets at least one episode.
    """
    ordered = sorted(names)
    n = len(ordered)
    wanted = np.array(fractions) * n
    counts = np.floor(wanted).astype(int)
    for i in np.argsort(-(wanted - counts), kind='stable')[: n - counts.sum()]:
        counts[i] += 1
    active = [i for i, f in enumerate(fractions) if f > 0]
    if n >= len(active):
        for i in active:
            if counts[i] == 0:
                counts[int(np.argmax(counts))] -= 1
                counts[i] += 1
    order = np.random.default_rng(seed).permutation(n)
    labels = np.repeat(np.arange(3), counts)
    return {ordered[j]: SPLITS[labels[pos]] for pos, j in enumerate(order.tolist())}
