"""The dataset cache written by ``build-dataset`` and a small reader for it.

Layout of a dataset directory::

    manifest.yaml                   format, fps, frame shape, topic, statistics, episodes, ...
    episodes/<name>.frames.npy      (T, S, S, 3) uint8 RGB frames, read as memmaps
    episodes/<name>.labels.npz      stamps_ns (T,), grid_ns (T,), source_index (T,), and
                                    optionally gt_* (ground truth) and actions (T, A)

``Dataset.open(root)`` validates the manifest and refuses what it does not understand with an
error that names the file and the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from dlp_ros.errors import DlpError
from dlp_training.data.ground_truth import GroundTruth

FORMAT = 'dlp_ros.dataset'
VERSION = 1
MANIFEST = 'manifest.yaml'
EPISODES = 'episodes'
SPLITS = ('train', 'val', 'test')


class DatasetError(DlpError):
    """A dataset cache is missing, malformed or of an unknown format."""


def frames_file(name: str) -> str:
    """Path of an episode's frames, relative to the dataset root."""
    return f'{EPISODES}/{name}.frames.npy'


def labels_file(name: str) -> str:
    """Path of an episode's labels, relative to the dataset root."""
    return f'{EPISODES}/{name}.labels.npz'


class _Dumper(yaml.SafeDumper):
    """Block style for mappings, flow style for short lists of scalars."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(isinstance(v, str | int | float | bool) or v is None for v in data)
    return dumper.represent_sequence('tag:yaml.org,2002:seq', data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def write_manifest(root: Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest`` (plain Python types only) as ``root/manifest.yaml``."""
    path = Path(root) / MANIFEST
    with open(path, 'w') as f:
        yaml.dump(manifest, f, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=99)
    return path


@dataclass(frozen=True)
class EpisodeInfo:
    """One episode of the manifest."""

    name: str
    bag: str  # source bag directory
    split: str  # 'train' | 'val' | 'test'
    start_ns: int  # header stamp of the first frame
    end_ns: int  # header stamp of the last frame
    frames: int  # T
    source_fps: float  # estimated rate of the source frames
    frames_path: Path
    labels_path: Path


@dataclass(frozen=True)
class Labels:
    """Per-frame labels of one episode."""

    stamps_ns: np.ndarray  # (T,) int64 header stamp of each frame's source image
    grid_ns: np.ndarray  # (T,) int64 output time of each frame (start + k / fps)
    source_index: np.ndarray  # (T,) int64 index of the source message in the bag's topic
    ground_truth: GroundTruth | None  # xy (T, N, 2), radius (T, N), visible (T, N)
    actions: np.ndarray | None  # (T, A) float32, zero-order hold of the latest command
    action_valid: np.ndarray | None  # (T,) bool, False before the first command


def _field(data: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in data:
        raise DatasetError(f'{where}: missing field {key!r}')
    value = data[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise DatasetError(f'{where}: field {key!r} has the wrong type ({value!r})')
    return value


class Dataset:
    """A built dataset: manifest, episodes by split, frames as memmaps, labels."""

    def __init__(self, root: Path, manifest: dict[str, Any]) -> None:
        self.root = Path(root)
        self.manifest = manifest
        self.fps = float(manifest['fps'])
        self.frame_shape: tuple[int, int, int] = tuple(manifest['frame_shape'])  # (S, S, 3)
        # how the frames were made S x S (dlp_ros.input_view); a manifest without it: squash
        self.resize: str = str(manifest.get('resize') or 'squash')
        self.topic: str = manifest['topic']
        self.message_type: str = manifest['message_type']
        self.mean = np.array(manifest['stats']['mean'], dtype=np.float32)  # (3,), 0..1 scale
        self.std = np.array(manifest['stats']['std'], dtype=np.float32)  # (3,), 0..1 scale
        self._episodes = {
            e['name']: EpisodeInfo(
                name=e['name'],
                bag=e['bag'],
                split=e['split'],
                start_ns=int(e['start_ns']),
                end_ns=int(e['end_ns']),
                frames=int(e['frames']),
                source_fps=float(e.get('source_fps', 0.0)),
                frames_path=self.root / frames_file(e['name']),
                labels_path=self.root / labels_file(e['name']),
            )
            for e in manifest['episodes']
        }

    @classmethod
    def open(cls, root: Path | str, check_files: bool = True) -> Dataset:
        """Open and validate a dataset directory.

        Args:
            root: the directory ``build-dataset --out`` wrote.
            check_files: also check that every episode's files exist with the right shape
                (reads only the .npy headers).

        Raises:
            DatasetError: naming the file and field that is missing or wrong.
        """
        root = Path(root)
        path = root / MANIFEST
        if not path.is_file():
            raise DatasetError(f'{root} is not a dataset: {path} does not exist')
        try:
            manifest = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise DatasetError(f'{path}: cannot read the manifest: {exc}') from exc
        if not isinstance(manifest, dict):
            raise DatasetError(f'{path}: expected a mapping, got {type(manifest).__name__}')
        where = str(path)
        if _field(manifest, 'format', str, where) != FORMAT:
            raise DatasetError(f'{where}: field format is {manifest["format"]!r}, not {FORMAT!r}')
        version = _field(manifest, 'version', int, where)
        if version != VERSION:
            raise DatasetError(
                f'{where}: dataset version {version} not supported (need {VERSION})'
            )
        if _field(manifest, 'fps', (int, float), where) <= 0:
            raise DatasetError(f'{where}: field fps must be positive')
        shape = _field(manifest, 'frame_shape', list, where)
        if (
            len(shape) != 3
            or shape[2] != 3
            or not all(isinstance(v, int) and v > 0 for v in shape)
        ):
            raise DatasetError(f'{where}: field frame_shape must be [S, S, 3], got {shape}')
        _field(manifest, 'topic', str, where)
        _field(manifest, 'message_type', str, where)
        stats = _field(manifest, 'stats', dict, where)
        for key in ('mean', 'std'):
            values = _field(stats, key, list, f'{where}: stats')
            if len(values) != 3:
                raise DatasetError(f'{where}: stats.{key} must have 3 values, got {values}')
        episodes = _field(manifest, 'episodes', list, where)
        names = set()
        for i, ep in enumerate(episodes):
            ew = f'{where}: episodes[{i}]'
            if not isinstance(ep, dict):
                raise DatasetError(f'{ew}: expected a mapping')
            names.add(_field(ep, 'name', str, ew))
            _field(ep, 'bag', str, ew)
            if _field(ep, 'split', str, ew) not in SPLITS:
                raise DatasetError(f'{ew}: split {ep["split"]!r} is not one of {SPLITS}')
            for key in ('start_ns', 'end_ns', 'frames'):
                _field(ep, key, int, ew)
        if len(names) != len(episodes):
            raise DatasetError(f'{where}: episode names are not unique')
        dataset = cls(root, manifest)
        if check_files:
            for info in dataset.episodes():
                dataset.frames(info.name)
                if not info.labels_path.is_file():
                    raise DatasetError(f'{info.labels_path} is missing (episode {info.name})')
        return dataset

    def __len__(self) -> int:
        return len(self._episodes)

    def episodes(self, split: str | None = None) -> list[EpisodeInfo]:
        """Episodes in manifest order, optionally only those of one split."""
        if split is not None and split not in SPLITS:
            raise DatasetError(f'unknown split {split!r}; expected one of {SPLITS}')
        return [e for e in self._episodes.values() if split is None or e.split == split]

    def episode(self, name: str) -> EpisodeInfo:
        if name not in self._episodes:
            raise DatasetError(f'{self.root}: no episode {name!r}')
        return self._episodes[name]

    def require_frame_size(self, size: int, consumer: str) -> None:
        """Refuse frames that are not ``size`` x ``size`` (what ``consumer`` takes)."""
        s = int(self.frame_shape[0])
        if s != size:
            raise DatasetError(
                f'image size mismatch: dataset {self.root} has {s}x{s} frames but {consumer} '
                f'takes {size}x{size} images; build the dataset with --size {size}'
            )

    def frames(self, name: str) -> np.ndarray:
        """(T, S, S, 3) uint8 read-only memmap of an episode's frames."""
        info = self.episode(name)
        try:
            frames = np.load(info.frames_path, mmap_mode='r')
        except (OSError, ValueError) as exc:
            raise DatasetError(f'{info.frames_path}: cannot read frames: {exc}') from exc
        expected = (info.frames, *self.frame_shape)
        if frames.shape != expected or frames.dtype != np.uint8:
            raise DatasetError(
                f'{info.frames_path}: frames are {frames.dtype} {frames.shape}, the manifest '
                f'says uint8 {expected}'
            )
        return frames

    def labels(self, name: str) -> Labels:
        """Labels of an episode (stamps, and ground truth and actions where recorded)."""
        info = self.episode(name)
        try:
            with np.load(info.labels_path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except (OSError, ValueError) as exc:
            raise DatasetError(f'{info.labels_path}: cannot read labels: {exc}') from exc
        for key in ('stamps_ns', 'grid_ns', 'source_index'):
            if key not in arrays or arrays[key].shape != (info.frames,):
                raise DatasetError(f'{info.labels_path}: missing or bad array {key!r}')
        gt = None
        if 'gt_xy' in arrays:
            gt = GroundTruth(
                arrays['stamps_ns'],
                arrays['gt_ids'],
                [str(n) for n in arrays['gt_names']],
                arrays['gt_xy'],
                arrays['gt_radius'],
                arrays['gt_visible'],
            )
        return Labels(
            arrays['stamps_ns'],
            arrays['grid_ns'],
            arrays['source_index'],
            gt,
            arrays.get('actions'),
            arrays.get('action_valid'),
        )
