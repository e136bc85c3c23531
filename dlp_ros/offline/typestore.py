"""The rosbags type store: ROS 2 Jazzy's standard types plus dlp_ros's own messages.

The dlp_ros types are parsed from the package's ``msg/*.msg`` files, the same files colcon turns
into ``dlp_ros.msg``, so the bag side and the ROS side cannot drift apart.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from dlp_ros.errors import DlpError

PACKAGE = 'dlp_ros'
MESSAGES = ('Particle', 'ParticleArray', 'Prediction', 'PushGoal')


def msg_dir() -> Path:
    """Directory of dlp_ros's .msg files: the checkout's ``msg/`` or an installed share dir."""
    candidates = [Path(__file__).resolve().parents[2] / 'msg']
    for prefix in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep):
        if prefix:
            candidates.append(Path(prefix) / 'share' / PACKAGE / 'msg')
    for cand in candidates:
        if all((cand / f'{name}.msg').is_file() for name in MESSAGES):
            return cand
    raise DlpError(
        f'cannot find the dlp_ros message definitions {MESSAGES}; looked in '
        + ', '.join(str(c) for c in candidates)
    )


@functools.lru_cache(maxsize=1)
def typestore() -> Typestore:
    """Jazzy type store with the dlp_ros messages of :data:`MESSAGES` registered."""
    store = get_typestore(Stores.ROS2_JAZZY)
    folder = msg_dir()
    types = {}
    for name in MESSAGES:
        text = (folder / f'{name}.msg').read_text()
        types.update(get_types_from_msg(text, f'{PACKAGE}/msg/{name}'))
    store.register(types)
    return store
