"""The train/val/test split of ``build-dataset``, three ways.

* ``--split-by episode`` (the default): whole episodes, a seeded shuffle with counts following
  the ``--split`` fractions (:func:`dlp_training.data.episode_plan.assign_splits`).
* ``--split-by time``: per recording (bag), its output frames in time order are cut into a first
  part (train), a middle part (val) and a last part (test) by the ``--split`` fractions; an
  episode across a cut becomes ``<name>_train``, ``<name>_val``, ``<name>_test`` (the parts it
  has). What evaluating on the end of one long recording needs.
* ``--split-file FILE``: a YAML mapping ``train:``, ``val:``, ``test:`` to lists of episode names;
  every episode named once, or ``rest: train`` (or val, test) for the episodes not named (e.g.
  many added training episodes, with the held-out ones listed).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import yaml

from dlp_ros.errors import ConfigError
from dlp_training.data import episode_plan as ep

logger = logging.getLogger(__name__)
SPLIT_BY = ('episode', 'time')


def cut_episode(e: ep.EpisodePlan, lo: int, hi: int, name: str) -> ep.EpisodePlan:
    """Output rows ``lo .. hi - 1`` of ``e`` as an episode of their own (its source span
    trimmed to the frames those rows use)."""
    rows = e.rows[lo:hi]
    first, last = int(rows.min()), int(rows.max()) + 1
    span = e.span_stamps[first:last]
    return ep.EpisodePlan(name, e.span_index[first:last], span, e.grid_ns[lo:hi].copy(),
                          rows - first, ep.estimate_rate(span))  # fmt: skip


def split_by_time(
    plans: list[ep.BagPlan], fractions: tuple[float, float, float]
) -> dict[str, str]:
    """Cut the episodes of each bag plan in place at the fractions of its output frames (in
    time order); returns ``{episode name: split}``."""
    splits: dict[str, str] = {}
    for plan in plans:
        total = sum(e.grid_ns.size for e in plan.episodes)
        cuts = np.rint(np.cumsum(fractions)[:2] * total).astype(int).tolist()
        bounds = [0, *cuts, total]  # output-frame offsets of train | val | test in the bag
        episodes, offset = [], 0
        for e in plan.episodes:
            size = e.grid_ns.size
            parts = []
            for k, split in enumerate(ep.SPLITS):
                lo = max(bounds[k], offset) - offset
                hi = min(bounds[k + 1], offset + size) - offset
                if hi > lo:
                    parts.append((lo, hi, split))
            for lo, hi, split in parts:
                name = e.name if len(parts) == 1 else f'{e.name}_{split}'
                episodes.append(e if len(parts) == 1 else cut_episode(e, lo, hi, name))
                splits[name] = split
            offset += size
        plan.episodes = episodes
        logger.info('bag %s: split by time at output frames %s of %d', plan.path, cuts, total)
    return splits


def read_split_file(path: Path) -> tuple[dict[str, list[str]], str | None]:
    """``{'train': [...], 'val': [...], 'test': [...]}`` from a YAML file (missing splits:
    empty), and the split of the episodes it does not name (its ``rest:``; None: none).

    Raises:
        ConfigError: the file is missing, not YAML, or not such a mapping.
    """
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f'--split-file {path}: {exc}') from exc
    example = (
        'e.g. {train: [ep_a, ep_b], val: [ep_c], test: [ep_d]} or {test: [ep_d], rest: train}'
    )
    if not isinstance(data, dict) or not set(data) <= {*ep.SPLITS, 'rest'}:
        raise ConfigError(f'--split-file {path}: expected a mapping of train, val and test to '
                          f'lists of episode names (and optionally rest), {example}')  # fmt: skip
    rest = data.get('rest')
    if rest is not None and rest not in ep.SPLITS:
        raise ConfigError(f'--split-file {path}: rest must be one of {", ".join(ep.SPLITS)}, '
                          f'got {rest!r}')  # fmt: skip
    out = {}
    for split in ep.SPLITS:
        names = data.get(split) or []
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ConfigError(f'--split-file {path}: {split} must be a list of episode names, '
                              f'{example}')  # fmt: skip
        out[split] = names
    return out, rest


def split_by_names(names: list[str], listed: dict[str, list[str]], path: Path,
                   rest: str | None = None) -> dict[str, str]:  # fmt: skip
    """``{episode name: split}`` from the lists of a split file; every episode exactly once,
    or at most once with the others in ``rest``.

    Raises:
        ConfigError: a name listed twice, a name that is no episode, or (without ``rest``) an
            episode not listed (each names the episodes concerned).
    """
    splits: dict[str, str] = {}
    for split, listed_names in listed.items():
        for name in listed_names:
            if name in splits:
                raise ConfigError(f'--split-file {path}: episode {name!r} is listed in '
                                  f'{splits[name]} and {split}')  # fmt: skip
            splits[name] = split
    unknown = sorted(set(splits) - set(names))
    if unknown:
        raise ConfigError(f'--split-file {path}: no episode named {", ".join(unknown)}; the '
                          f'episodes are {", ".join(sorted(names))}')  # fmt: skip
    missing = sorted(set(names) - set(splits))
    if missing and rest is not None:
        logger.info('--split-file %s: %d episodes not named go to %s', path, len(missing), rest)
        splits.update(dict.fromkeys(missing, rest))
    elif missing:
        raise ConfigError(f'--split-file {path}: episode(s) {", ".join(missing)} in no '
                          'split; list every episode under train, val or test, or add '
                          'rest: train')  # fmt: skip
    return splits
