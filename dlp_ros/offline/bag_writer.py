"""Write rosbag2 episodes (mcap or sqlite3) with rosbags, atomically.

A bag is written into a hidden sibling directory and renamed into place when it is complete, so an
interrupted recording never leaves a half-written bag under the final name.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from types import TracebackType

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer

from dlp_ros.offline.typestore import typestore

logger = logging.getLogger(__name__)

STORAGES = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}


def split_stamp(stamp_ns: int) -> tuple[int, int]:
    """Nanoseconds -> (sec, nanosec) as in builtin_interfaces/Time."""
    return int(stamp_ns // 1_000_000_000), int(stamp_ns % 1_000_000_000)


class BagWriter:
    """Context manager writing one rosbag2 directory.

    Args:
        path: the bag directory to create (must not exist).
        storage: ``'mcap'`` or ``'sqlite3'``.
        topics: ``{topic: ros message type}``,
            e.g. ``{'/camera/image_raw': 'sensor_msgs/msg/Image'}``.
    """

    def __init__(self, path: Path, storage: str, topics: dict[str, str]) -> None:
        if storage not in STORAGES:
            raise ValueError(f'storage must be one of {sorted(STORAGES)}, got {storage!r}')
        self.path = Path(path)
        if self.path.exists():
            raise FileExistsError(f'bag {self.path} already exists')
        self.storage = storage
        self.topics = dict(topics)
        self.store = typestore()
        # rosbags names the storage file after the bag directory, so the partial bag keeps the
        # final name inside a hidden staging directory.
        self._staging = self.path.with_name(f'.{self.path.name}.partial')
        self._partial = self._staging / self.path.name
        self._writer: Writer | None = None
        self._connections: dict = {}

    def __enter__(self) -> BagWriter:
        if self._staging.exists():
            shutil.rmtree(self._staging)
        self._staging.mkdir(parents=True)
        self._writer = Writer(self._partial, version=9, storage_plugin=STORAGES[self.storage])
        self._writer.open()
        for topic, msgtype in self.topics.items():
            self._connections[topic] = self._writer.add_connection(
                topic, msgtype, typestore=self.store
            )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._writer is not None
        self._writer.close()
        if exc_type is None:
            os.replace(self._partial, self.path)
        shutil.rmtree(self._staging, ignore_errors=True)

    def write(self, topic: str, stamp_ns: int, msg: object) -> None:
        """Serialise ``msg`` (a rosbags message object) to CDR and append it at ``stamp_ns``."""
        assert self._writer is not None, 'use BagWriter as a context manager'
        conn = self._connections[topic]
        self._writer.write(conn, int(stamp_ns), self.store.serialize_cdr(msg, conn.msgtype))

    def write_raw(self, topic: str, stamp_ns: int, cdr: bytes) -> None:
        """Append already serialised CDR bytes."""
        assert self._writer is not None, 'use BagWriter as a context manager'
        self._writer.write(self._connections[topic], int(stamp_ns), cdr)

    # --- message builders ---
    def header(self, stamp_ns: int, frame_id: str) -> object:
        """A std_msgs/Header."""
        types = self.store.types
        sec, nanosec = split_stamp(stamp_ns)
        return types['std_msgs/msg/Header'](
            stamp=types['builtin_interfaces/msg/Time'](sec=sec, nanosec=nanosec), frame_id=frame_id
        )

    def image(
        self, stamp_ns: int, frame_id: str, rgb: np.ndarray, encoding: str = 'rgb8'
    ) -> object:
        """A sensor_msgs/Image from an (H, W, 3) uint8 RGB array, in ``encoding``."""
        from dlp_ros.image_codec import encode_raw

        data, channels = encode_raw(rgb, encoding)
        height, width = rgb.shape[:2]
        return self.store.types['sensor_msgs/msg/Image'](
            header=self.header(stamp_ns, frame_id),
            height=height,
            width=width,
            encoding=encoding,
            is_bigendian=0,
            step=width * channels,
            data=data.reshape(-1),
        )

    def compressed_image(
        self, stamp_ns: int, frame_id: str, rgb: np.ndarray, fmt: str = 'jpeg'
    ) -> object:
        """A sensor_msgs/CompressedImage (``fmt``: 'jpeg' or 'png') from (H, W, 3) RGB."""
        from dlp_ros.image_codec import encode_compressed

        return self.store.types['sensor_msgs/msg/CompressedImage'](
            header=self.header(stamp_ns, frame_id),
            format=fmt,
            data=np.frombuffer(encode_compressed(rgb, fmt), dtype=np.uint8),
        )
