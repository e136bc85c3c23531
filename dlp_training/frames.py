"""Frames of a dataset split as training batches, reproducible from (seed, step, rank) alone.

Batch ``step`` of process ``rank`` draws its frame indices from a generator seeded with
``(seed, step, rank)``, so a resumed run sees exactly the batches it would have seen, without
storing any sampler state.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from dlp_ros.errors import DlpError
from dlp_ros.image_codec import to_model_input
from dlp_training.data.dataset import Dataset

logger = logging.getLogger(__name__)
PRELOAD_LIMIT_BYTES = 4 * 1024**3  # splits smaller than this are read into memory once


class FrameSource:
    """All frames of one split of a dataset.

    Args:
        data: an open :class:`Dataset`.
        split: 'train', 'val' or 'test'.
    """

    def __init__(self, data: Dataset, split: str) -> None:
        episodes = data.episodes(split)
        if not episodes:
            raise DlpError(f'dataset {data.root} has no {split!r} episodes')
        self.size = int(data.frame_shape[0])
        arrays = [data.frames(e.name) for e in episodes]  # each (T, S, S, 3) uint8 memmap
        total = sum(a.nbytes for a in arrays)
        if total <= PRELOAD_LIMIT_BYTES:
            self._frames = np.concatenate(arrays, axis=0)  # (N, S, S, 3)
            self._index = None
        else:
            logger.info(
                '%s split is %.1f GB: reading batches from the memmaps', split, total / 1e9
            )
            self._frames = None
            self._arrays = arrays
            self._index = np.concatenate(
                [
                    np.stack([np.full(len(a), i), np.arange(len(a))], 1)
                    for i, a in enumerate(arrays)
                ]
            )  # (N, 2): episode, frame
        self.count = sum(len(a) for a in arrays)
        self._lengths = np.array([len(a) for a in arrays])  # (E,) frames per episode
        self._clip_starts: dict[int, np.ndarray] = {}  # clip length -> its start indices
        logger.info('%s split: %d frames of %d episodes', split, self.count, len(episodes))

    def gather(self, indices: np.ndarray) -> torch.Tensor:
        """Frames at ``indices`` as a float tensor (B, 3, S, S) in [0, 1]."""
        if self._frames is not None:
            batch = self._frames[indices]  # (B, S, S, 3)
        else:
            batch = np.stack([self._arrays[e][t] for e, t in self._index[indices]])
        return torch.from_numpy(to_model_input(batch))

    def batch(self, batch_size: int, seed: int, step: int, rank: int = 0) -> torch.Tensor:
        """Random batch for optimisation step ``step`` of process ``rank``."""
        rng = np.random.default_rng([seed, step, rank])
        return self.gather(rng.integers(0, self.count, size=batch_size))

    def clip_batch(
        self, n_clips: int, length: int, seed: int, step: int, rank: int = 0
    ) -> torch.Tensor:
        """Random clips of ``length`` consecutive frames of one episode, (B, T, 3, S, S), for
        optimisation step ``step`` of process ``rank``."""
        starts = self.clip_starts(length)
        rng = np.random.default_rng([seed, step, rank])
        first = starts[rng.integers(0, len(starts), size=n_clips)]  # (B,)
        index = first[:, None] + np.arange(length)  # (B, T)
        frames = self.gather(index.reshape(-1))  # (B * T, 3, S, S)
        return frames.view(n_clips, length, *frames.shape[1:])

    def clip_starts(self, length: int) -> np.ndarray:
        """Indices of the frames that begin a clip of ``length`` frames within one episode
        (computed once per length)."""
        if length in self._clip_starts:
            return self._clip_starts[length]
        offsets = np.concatenate([[0], np.cumsum(self._lengths)[:-1]])  # (E,)
        pairs = zip(offsets, self._lengths, strict=True)
        starts = [o + np.arange(n - length + 1) for o, n in pairs if n >= length]
        if not starts:
            longest = int(self._lengths.max())
            raise DlpError(f'no episode has {length} frames for clips of that length (the '
                           f'longest has {longest}): lower train.clip_length')  # fmt: skip
        self._clip_starts[length] = np.concatenate(starts)
        return self._clip_starts[length]

    def evenly_spaced(self, n: int) -> torch.Tensor:
        """``n`` frames spread over the split (a fixed evaluation set)."""
        return self.gather(np.linspace(0, self.count - 1, num=min(n, self.count)).astype(int))
