"""Ground truth beside each synthetic episode: per frame and object (id, x, y, radius, visible).

The file is a CSV next to the bag directory (``episode_0003/`` -> ``episode_0003.gt.csv``) so that
any tool can read it. Positions are pixels of the recorded image (x right, y down, pixel centres at
integer + 0.5), radius is the apparent radius in pixels.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlp_ros.errors import EpisodeError
from dlp_ros.sim.scene import ObjectState

COLUMNS = ('frame', 'stamp_ns', 'id', 'name', 'x', 'y', 'radius', 'visible')


@dataclass(frozen=True)
class GroundTruth:
    """Ground truth of one episode as arrays (T frames, N objects)."""

    stamps_ns: np.ndarray  # (T,) int64
    ids: np.ndarray  # (N,) int64
    names: list[str]  # N names
    xy: np.ndarray  # (T, N, 2) float32, px
    radius: np.ndarray  # (T, N) float32, px
    visible: np.ndarray  # (T, N) bool

    def select(self, stamps_ns: np.ndarray) -> GroundTruth:
        """Rows for the given stamps (each must be one of this episode's frames)."""
        index = {int(s): i for i, s in enumerate(self.stamps_ns)}
        missing = [int(s) for s in stamps_ns if int(s) not in index]
        if missing:
            raise EpisodeError(
                f'no ground truth for stamps {missing[:5]} ({len(missing)} missing)'
            )
        rows = np.array([index[int(s)] for s in stamps_ns], dtype=np.int64)
        return GroundTruth(
            np.asarray(stamps_ns, dtype=np.int64),
            self.ids,
            self.names,
            self.xy[rows],
            self.radius[rows],
            self.visible[rows],
        )


def gt_path(bag_dir: Path) -> Path:
    """Where the ground truth of the bag at ``bag_dir`` lives."""
    bag_dir = Path(bag_dir)
    return bag_dir.with_name(bag_dir.name + '.gt.csv')


def write_ground_truth(path: Path, frames: list[tuple[int, list[ObjectState]]]) -> None:
    """Write ``[(stamp_ns, [ObjectState, ...]), ...]`` (one entry per frame) as CSV."""
    with open(path, 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for frame, (stamp_ns, objects) in enumerate(frames):
            for obj in objects:
                writer.writerow(
                    [
                        frame,
                        stamp_ns,
                        obj.id,
                        obj.name,
                        f'{obj.x:.3f}',
                        f'{obj.y:.3f}',
                        f'{obj.radius:.3f}',
                        int(obj.visible),
                    ]
                )


def read_ground_truth(path: Path) -> GroundTruth:
    """Read a ground-truth CSV written by :func:`write_ground_truth`."""
    path = Path(path)
    try:
        with open(path, newline='') as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise EpisodeError(f'cannot read ground truth {path}: {exc}') from exc
    if not rows or tuple(rows[0].keys()) != COLUMNS:
        raise EpisodeError(f'{path}: expected a CSV with columns {",".join(COLUMNS)}')
    ids = sorted({int(r['id']) for r in rows})
    col = {obj_id: i for i, obj_id in enumerate(ids)}
    names = {int(r['id']): r['name'] for r in rows}
    n_frames = max(int(r['frame']) for r in rows) + 1
    stamps = np.zeros(n_frames, dtype=np.int64)
    xy = np.zeros((n_frames, len(ids), 2), dtype=np.float32)
    radius = np.zeros((n_frames, len(ids)), dtype=np.float32)
    visible = np.zeros((n_frames, len(ids)), dtype=bool)
    for r in rows:
        t, n = int(r['frame']), col[int(r['id'])]
        stamps[t] = int(r['stamp_ns'])
        xy[t, n] = (float(r['x']), float(r['y']))
        radius[t, n] = float(r['radius'])
        visible[t, n] = r['visible'] == '1'
    return GroundTruth(stamps, np.array(ids), [names[i] for i in ids], xy, radius, visible)
