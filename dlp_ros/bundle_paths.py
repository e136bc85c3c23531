"""Where the shipped model bundles are, for an install without the ament index.

colcon (and a ROS apt package) installs the bundles of ``bundles/`` to
``share/dlp_ros/bundles/<name>/`` of its prefix, found through the ament index (``dlp_ros.node``
does that, the core never imports ament). A pip-installed wheel puts the same files under
``<sys.prefix>/share/dlp_ros/bundles/<name>/`` (setup.py's data files); a checkout has them in
``bundles/``. Tools taking ``--bundle`` accept a directory or such a name (``tabletop64``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from dlp_ros.node_support import DEFAULT_BUNDLE

SHARE_BUNDLES = Path('share') / 'dlp_ros' / 'bundles'
CHECKOUT_BUNDLES = Path(__file__).resolve().parents[1] / 'bundles'


def bundle_dirs() -> list[Path]:
    """Folders holding shipped bundles, first match wins: the wheel's data files under this
    Python's prefix, then a checkout's ``bundles/`` (an editable install or a source tree)."""
    return [Path(sys.prefix) / SHARE_BUNDLES, CHECKOUT_BUNDLES]


def shipped_bundle(name: str = DEFAULT_BUNDLE) -> Path | None:
    """The shipped bundle ``name`` (a folder with ``model_card.yaml``), or None when none is."""
    for folder in bundle_dirs():
        if (folder / name / 'model_card.yaml').is_file():
            return folder / name
    return None


def bundle_path(value: str | Path) -> Path:
    """A ``--bundle`` value: an existing path as given; a bare name (no folder) that is not a
    path names a shipped bundle (:func:`shipped_bundle`); anything else is returned unchanged
    (the loader then says what is missing)."""
    path = Path(value).expanduser()
    if path.exists() or path.parent != Path('.'):
        return path
    return shipped_bundle(str(path)) or path
