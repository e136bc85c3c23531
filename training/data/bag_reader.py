"""Read rosbag2 directories (mcap or sqlite3) with rosbags, with errors that name the bag.

Two cheap access paths serve the dataset builder: :meth:`Bag.read_stamps` reads only the header
stamps of a topic (a fixed offset in the CDR bytes, no image decode), and :meth:`Bag.messages`
streams the raw CDR bytes in bag order so that only the frames to keep are decoded
(:func:`decode_frame`). Nothing here holds more than one storage chunk of a bag in memory.
"""

from __future__ import annotations

import logging
import struct
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import apsw
import numpy as np
from rosbags.interfaces import Connection
from rosbags.rosbag2 import Reader, ReaderError

from dlp_ros.errors import EpisodeError, ImageError
from dlp_ros.image_codec import COMPRESSED_FORMATS, RAW_ENCODINGS, decode_compressed, decode_raw
from training.data.typestore import typestore

logger = logging.getLogger(__name__)

IMAGE = 'sensor_msgs/msg/Image'
COMPRESSED = 'sensor_msgs/msg/CompressedImage'
IMAGE_TYPES = (IMAGE, COMPRESSED)
TWIST_NAMES = ('linear.x', 'linear.y', 'linear.z', 'angular.x', 'angular.y', 'angular.z')
ACTION_TYPES = (
    'geometry_msgs/msg/TwistStamped',
    'geometry_msgs/msg/Twist',
    'std_msgs/msg/Float32MultiArray',
    'std_msgs/msg/Float64MultiArray',
)
STORAGE_SUFFIXES = {'.mcap': 'mcap', '.db3': 'sqlite3'}
# What a truncated or corrupt storage file raises while it is opened or read.
READ_ERRORS = (ReaderError, OSError, apsw.Error, struct.error, EOFError, IndexError)


def header_stamp_ns(raw: bytes | memoryview) -> int:
    """Stamp (ns) of a CDR message whose first field is a std_msgs/Header.

    Layout: 4-byte encapsulation header (byte 1 is 0x01 for little endian), then the
    builtin_interfaces/Time of the header: int32 sec, uint32 nanosec.
    """
    if len(raw) < 12:
        raise ValueError(f'message of {len(raw)} bytes is too short for a header stamp')
    endian = '<' if raw[1] & 1 else '>'
    sec, nanosec = struct.unpack_from(endian + 'iI', raw, 4)
    return sec * 1_000_000_000 + nanosec


def has_header(msgtype: str) -> bool:
    """Whether ``msgtype`` (known to the type store) starts with a std_msgs/Header."""
    if msgtype == 'std_msgs/msg/Header':
        return True
    fields = typestore().fielddefs.get(msgtype)
    if not fields or not fields[1]:
        return False
    name, (_, ftype) = fields[1][0]
    return name == 'header' and ftype == 'std_msgs/msg/Header'


def check_encoding(msgtype: str, encoding: str, where: str) -> None:
    """Fail unless frames of ``msgtype`` with this encoding (or format) can be decoded."""
    if msgtype == IMAGE:
        ok = encoding in RAW_ENCODINGS
    else:
        ok = any(name in encoding.lower() for name in (*COMPRESSED_FORMATS, 'jpg'))
    if not ok:
        raise ImageError(
            f'{where}: unsupported {msgtype.rsplit("/", 1)[-1]} encoding {encoding!r}; '
            f'supported: Image {", ".join(RAW_ENCODINGS)}; '
            f'CompressedImage {", ".join(COMPRESSED_FORMATS)}'
        )


def frame_encoding(msgtype: str, raw: bytes) -> str:
    """The ``encoding`` (Image) or ``format`` (CompressedImage) field of a frame."""
    try:
        msg = typestore().deserialize_cdr(raw, msgtype)
    except Exception as exc:  # rosbags raises assorted errors on malformed CDR
        raise ImageError(f'malformed {msgtype} message ({len(raw)} bytes): {exc}') from exc
    return str(msg.encoding if msgtype == IMAGE else msg.format)


def decode_frame(msgtype: str, raw: bytes) -> np.ndarray:
    """CDR bytes of an Image or CompressedImage -> (H, W, 3) uint8 RGB.

    Raises:
        ImageError: the message or its pixels cannot be decoded.
    """
    try:
        msg = typestore().deserialize_cdr(raw, msgtype)
    except Exception as exc:  # rosbags raises assorted errors on malformed CDR
        raise ImageError(f'malformed {msgtype} message ({len(raw)} bytes): {exc}') from exc
    if msgtype == IMAGE:
        return decode_raw(msg.encoding, msg.height, msg.width, msg.step, msg.data)
    return decode_compressed(msg.format, msg.data)


@dataclass(frozen=True)
class TopicStamps:
    """Times of every message of one topic, in bag order."""

    stamps_ns: np.ndarray  # (N,) int64, header stamps
    bag_ns: np.ndarray  # (N,) int64, bag (receive) times
    first: bytes | None  # CDR bytes of the first message, None if there is none


@dataclass(frozen=True)
class Actions:
    """Commands of an action topic, sorted by time."""

    times_ns: np.ndarray  # (M,) int64, header stamp or bag time when unstamped
    values: np.ndarray  # (M, A) float32
    names: list[str]  # A names


class Bag:
    """One rosbag2 directory, opened with ``with Bag(path) as bag:``.

    Raises:
        EpisodeError: the path is not a rosbag2 directory, or it is truncated or corrupt.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.is_dir() or not (self.path / 'metadata.yaml').is_file():
            what = 'does not exist' if not self.path.exists() else 'is not a rosbag2 directory'
            raise EpisodeError(
                f'{self.path} {what} (expected a directory with metadata.yaml and '
                '.mcap or .db3 storage files)'
            )
        self.files = sorted(p for p in self.path.iterdir() if p.suffix in STORAGE_SUFFIXES)
        self.storage = STORAGE_SUFFIXES[self.files[0].suffix] if self.files else 'unknown'
        self._reader: Reader | None = None

    def __enter__(self) -> Bag:
        try:
            reader = Reader(self.path)
            reader.open()
        except (*READ_ERRORS, KeyError, ValueError) as exc:
            raise self._corrupt(exc) from exc
        self._reader = reader
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        reader, self._reader = self._reader, None
        if reader is not None and reader.is_open:
            try:
                reader.close()
            except READ_ERRORS:
                logger.debug('error closing %s', self.path, exc_info=True)

    def _corrupt(self, exc: BaseException) -> EpisodeError:
        names = ', '.join(p.name for p in self.files) or 'no storage file'
        return EpisodeError(
            f'bag {self.path} is truncated or corrupt: cannot read {names} '
            f'({type(exc).__name__}: {exc})'
        )

    @property
    def topics(self) -> dict[str, str]:
        """``{topic: message type}`` of every topic of the bag."""
        assert self._reader is not None, 'use Bag as a context manager'
        return {c.topic: c.msgtype for c in self._reader.connections}

    def connection(self, topic: str, allowed: tuple[str, ...] | None, role: str) -> Connection:
        """The connection of ``topic``, which must have one of the ``allowed`` types (if given)."""
        assert self._reader is not None, 'use Bag as a context manager'
        conns = [c for c in self._reader.connections if c.topic == topic]
        if not self._reader.connections:
            raise EpisodeError(f'bag {self.path} is empty: it has no topics')
        if not conns:
            listing = ', '.join(f'{t} ({m})' for t, m in sorted(self.topics.items()))
            raise EpisodeError(
                f'bag {self.path} has no {role} topic {topic!r}; '
                f'its topics are: {listing or "none"}'
            )
        conn = conns[0]
        if allowed is not None and conn.msgtype not in allowed:
            raise EpisodeError(
                f'bag {self.path}: {role} topic {topic!r} has type {conn.msgtype}; '
                f'supported: {", ".join(allowed)}'
            )
        return conn

    def messages(self, conn: Connection) -> Iterator[tuple[int, bytes]]:
        """(bag time ns, CDR bytes) of every message of ``conn`` in bag order."""
        assert self._reader is not None, 'use Bag as a context manager'
        try:
            for _, bag_ns, raw in self._reader.messages([conn]):
                yield bag_ns, raw
        except READ_ERRORS as exc:
            raise self._corrupt(exc) from exc

    def read_stamps(self, conn: Connection) -> TopicStamps:
        """Header stamps and bag times of every message of ``conn`` (no image decoding)."""
        stamps = array('q')  # compact int64 buffers: 8 bytes a message
        bag_times = array('q')
        first: bytes | None = None
        for bag_ns, raw in self.messages(conn):
            try:
                stamps.append(header_stamp_ns(raw))
            except (ValueError, struct.error) as exc:
                raise EpisodeError(
                    f'bag {self.path}: message #{len(stamps)} on {conn.topic} has no readable '
                    f'header stamp ({exc})'
                ) from exc
            bag_times.append(bag_ns)
            if first is None:
                first = bytes(raw)
        return TopicStamps(
            np.frombuffer(stamps, dtype=np.int64).copy(),
            np.frombuffer(bag_times, dtype=np.int64).copy(),
            first,
        )

    def event_times(self, conn: Connection) -> np.ndarray:
        """(M,) int64 sorted times of a topic: header stamps if it has a header, else bag times."""
        stamped = has_header(conn.msgtype)
        times = [header_stamp_ns(raw) if stamped else t for t, raw in self.messages(conn)]
        return np.sort(np.array(times, dtype=np.int64))

    def read_actions(self, conn: Connection) -> Actions:
        """Every command of an action topic (one of :data:`ACTION_TYPES`), sorted by time."""
        store = typestore()
        stamped = has_header(conn.msgtype)
        times: list[int] = []
        rows: list[np.ndarray] = []
        for index, (bag_ns, raw) in enumerate(self.messages(conn)):
            msg = store.deserialize_cdr(raw, conn.msgtype)
            if conn.msgtype.startswith('geometry_msgs'):
                twist = msg.twist if stamped else msg
                lin, ang = twist.linear, twist.angular
                row = np.array([lin.x, lin.y, lin.z, ang.x, ang.y, ang.z], dtype=np.float32)
            else:
                row = np.asarray(msg.data, dtype=np.float32).reshape(-1)
            if rows and row.shape != rows[0].shape:
                raise EpisodeError(
                    f'bag {self.path}: action #{index} on {conn.topic} has {row.size} values, '
                    f'the first one had {rows[0].size}'
                )
            times.append(header_stamp_ns(raw) if stamped else bag_ns)
            rows.append(row)
        dim = rows[0].size if rows else (6 if conn.msgtype.startswith('geometry') else 0)
        names = list(TWIST_NAMES) if conn.msgtype.startswith('geometry') else []
        names = names or [f'data[{i}]' for i in range(dim)]
        order = np.argsort(np.array(times, dtype=np.int64), kind='stable')
        values = np.stack(rows) if rows else np.zeros((0, dim), dtype=np.float32)  # (M, A)
        return Actions(np.array(times, dtype=np.int64)[order], values[order], names)
