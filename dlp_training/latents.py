"""The latent cache written by ``encode-dataset``: tracked particles per episode, and a reader.

Layout of a latents directory::

    manifest.yaml           format, version, source (dataset, dlp run, checkpoint, step),
                            model sizes (S, K, F, Fb; caches written before name them
                            image_size, n_particles, feature_dim, bg_feature_dim), fps,
                            tracking, action, ground_truth, stats
                            (per-attribute mean and std over the train split), episodes
    episodes/<name>.npz     see ``ARRAYS``, plus ``OPTIONAL`` where the dataset has them

Particle index k of an episode is one identity over time (``dlp_training.models.tracking``), except
where ``reseeded[t, k]`` is True (a new identity starts in slot k at frame t; all at t = 0).
``LatentDataset.open(root)`` validates the manifest and refuses what it does not understand with
an error naming the file and the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from dlp_ros.config_schema import renamed_keys
from dlp_ros.errors import DlpError
from dlp_training.data.dataset import SPLITS
from dlp_training.models.dlp import Particles

FORMAT = 'dlp_ros.latents'
VERSION = 1
MANIFEST = 'manifest.yaml'
EPISODES = 'episodes'
# name -> (per-frame shape with 'K', 'F', 'Fb' symbols, dtype); arrays are (T, *shape)
ARRAYS: dict[str, tuple[tuple[str | int, ...], str]] = {
    'mu': (('K', 2), 'float32'),
    'logvar': (('K', 2), 'float32'),
    'scale': (('K', 2), 'float32'),
    'depth': (('K', 1), 'float32'),
    'transparency': (('K', 1), 'float32'),
    'features': (('K', 'F'), 'float32'),
    'bg_features': (('Fb',), 'float32'),
    'reseeded': (('K',), 'bool'),
    'stamps_ns': ((), 'int64'),  # header stamp of each frame's source image
    'grid_ns': ((), 'int64'),  # time of each frame on the dataset's regular grid
}
# copied from the dataset's labels when present: actions (T, A), action_valid (T,), ground truth
# gt_xy (T, N, 2) px, gt_radius (T, N) px, gt_visible (T, N), gt_ids (N,), gt_names (N,)
OPTIONAL = ('actions', 'action_valid', 'gt_xy', 'gt_radius', 'gt_visible', 'gt_ids', 'gt_names')
STATS = tuple(Particles._fields)  # attributes with a mean and std in the manifest


class LatentsError(DlpError):
    """A latents cache is missing, malformed or of an unknown format."""


def episode_file(name: str) -> str:
    """Path of an episode's arrays, relative to the latents root."""
    return f'{EPISODES}/{name}.npz'


@dataclass(frozen=True)
class LatentEpisode:
    """One episode of the manifest."""

    name: str
    split: str  # 'train' | 'val' | 'test'
    frames: int  # T
    path: Path


def _need(data: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in data:
        raise LatentsError(f'{where}: missing field {key!r}')
    value = data[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise LatentsError(f'{where}: field {key!r} has the wrong type ({value!r})')
    return value


class LatentDataset:
    """Encoded episodes: manifest, episodes by split, their arrays and normalisation stats."""

    def __init__(self, root: Path, manifest: dict[str, Any]) -> None:
        self.root = Path(root)
        self.manifest = manifest
        self.fps = float(manifest['fps'])
        self.sizes = {k: int(manifest[k]) for k in SIZES}  # S, K, F, Fb
        self.mean = {k: np.asarray(v, np.float32) for k, v in manifest['stats']['mean'].items()}
        self.std = {k: np.asarray(v, np.float32) for k, v in manifest['stats']['std'].items()}
        self._episodes = {
            e['name']: LatentEpisode(
                e['name'], e['split'], int(e['frames']), self.root / episode_file(e['name'])
            )
            for e in manifest['episodes']
        }

    @classmethod
    def open(cls, root: Path | str) -> LatentDataset:
        """Open and validate a latents directory (``encode-dataset --out``).

        Raises:
            LatentsError: naming the file and field that is missing or wrong.
        """
        root = Path(root)
        path = root / MANIFEST
        if not path.is_file():
            raise LatentsError(f'{root} is not a latents cache: {path} does not exist')
        try:
            manifest = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise LatentsError(f'{path}: cannot read the manifest: {exc}') from exc
        if not isinstance(manifest, dict):
            raise LatentsError(f'{path}: expected a mapping, got {type(manifest).__name__}')
        where = str(path)
        if _need(manifest, 'format', str, where) != FORMAT:
            raise LatentsError(f'{where}: field format is {manifest["format"]!r}, not {FORMAT!r}')
        if _need(manifest, 'version', int, where) != VERSION:
            raise LatentsError(f'{where}: version {manifest["version"]} not supported')
        manifest = renamed_keys(manifest, LEGACY_SIZE_KEYS, f'{path}: ')
        for key in SIZES:
            if _need(manifest, key, int, where) < 1:
                raise LatentsError(f'{where}: field {key!r} must be >= 1')
        if _need(manifest, 'fps', (int, float), where) <= 0:
            raise LatentsError(f'{where}: field fps must be positive')
        _need(manifest, 'source', dict, where)
        _need(manifest, 'tracking', dict, where)
        stats = _need(manifest, 'stats', dict, where)
        sizes = {k: int(manifest[k]) for k in SIZES}
        for part in ('mean', 'std'):
            values = _need(stats, part, dict, f'{where}: stats')
            for name in STATS:
                dim = _shape(ARRAYS[name][0], sizes)[-1]
                v = _need(values, name, list, f'{where}: stats.{part}')
                if len(v) != dim:
                    raise LatentsError(f'{where}: stats.{part}.{name} needs {dim} values')
        names = set()
        for i, ep in enumerate(_need(manifest, 'episodes', list, where)):
            ew = f'{where}: episodes[{i}]'
            if not isinstance(ep, dict):
                raise LatentsError(f'{ew}: expected a mapping')
            names.add(_need(ep, 'name', str, ew))
            if _need(ep, 'split', str, ew) not in SPLITS:
                raise LatentsError(f'{ew}: split {ep["split"]!r} is not one of {SPLITS}')
            if _need(ep, 'frames', int, ew) < 1:
                raise LatentsError(f'{ew}: field frames must be >= 1')
        if len(names) != len(manifest['episodes']):
            raise LatentsError(f'{where}: episode names are not unique')
        latents = cls(root, manifest)
        for info in latents.episodes():
            if not info.path.is_file():
                raise LatentsError(f'{info.path} is missing (episode {info.name})')
        return latents

    def __len__(self) -> int:
        return len(self._episodes)

    def episodes(self, split: str | None = None) -> list[LatentEpisode]:
        """Episodes in manifest order, optionally only those of one split."""
        if split is not None and split not in SPLITS:
            raise LatentsError(f'unknown split {split!r}; expected one of {SPLITS}')
        return [e for e in self._episodes.values() if split is None or e.split == split]

    def episode(self, name: str) -> LatentEpisode:
        if name not in self._episodes:
            raise LatentsError(f'{self.root}: no episode {name!r}')
        return self._episodes[name]

    def arrays(self, name: str) -> dict[str, np.ndarray]:
        """All arrays of an episode (``ARRAYS``, and ``OPTIONAL`` ones where written)."""
        info = self.episode(name)
        try:
            with np.load(info.path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except (OSError, ValueError) as exc:
            raise LatentsError(f'{info.path}: cannot read: {exc}') from exc
        for key, (shape, dtype) in ARRAYS.items():
            want = (info.frames, *_shape(shape, self.sizes))
            got = arrays.get(key)
            if got is None or got.shape != want or got.dtype != np.dtype(dtype):
                what = 'missing' if got is None else f'{got.dtype} {got.shape}'
                raise LatentsError(
                    f'{info.path}: array {key!r} is {what}, expected {dtype} {want}'
                )
        return arrays

    def particles(self, name: str) -> Particles:
        """The episode's particles as float32 tensors (T, K, ...) (bg_features (T, Fb))."""
        arrays = self.arrays(name)
        return Particles(*(torch.from_numpy(arrays[f]) for f in Particles._fields))


# The model sizes of a cache (the model card's names), and their names in caches written before.
SIZES = ('S', 'K', 'F', 'Fb')
LEGACY_SIZE_KEYS = {
    'image_size': 'S',
    'n_particles': 'K',
    'feature_dim': 'F',
    'bg_feature_dim': 'Fb',
}


def _shape(shape: tuple[str | int, ...], sizes: dict[str, int]) -> tuple[int, ...]:
    """Per-frame shape with the size symbols ('K', 'F', 'Fb') replaced by their values."""
    return tuple(sizes[d] if isinstance(d, str) else d for d in shape)
