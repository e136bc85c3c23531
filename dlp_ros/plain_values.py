"""Python values as YAML and JSON write them: the one conversion every written artefact uses.

Model cards, run configs, dataset manifests and evaluation reports hold dataclasses, tuples,
paths and numpy (or torch) scalars; ``yaml.safe_dump`` and ``json.dump`` take none of them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def plain(value: Any, finite: bool = False) -> Any:
    """A copy of ``value`` made of dicts (string keys), lists, strings, numbers, bools and None.

    Dataclass instances become dicts of their fields, tuples lists, paths strings, numpy and
    torch scalars (0-d values with ``.item()``) Python numbers. ``finite``: NaN and infinities
    become None (JSON has no literal for them). Anything else is kept as it is.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): plain(v, finite) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v, finite) for v in value]
    if isinstance(value, Path):
        return str(value)
    if getattr(value, 'ndim', None) == 0 and callable(getattr(value, 'item', None)):
        value = value.item()
    if finite and isinstance(value, float) and not math.isfinite(value):
        return None
    return value
