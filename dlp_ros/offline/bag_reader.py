"""Read rosbag2 directories (mcap or sqlite3) with rosbags, with errors that name the bag.

Two cheap access paths serve the dataset builder: :meth:`Bag.read_stamps` reads only the header
stamps of a topic (a fixed offset in the CDR bytes, no image decode), and :meth:`Bag.messages`
streams the raw CDR bytes in bag order so that only the frames to keep are decoded
(:func:`decode_frame`). Nothing here holds more than one storage chunk of a bag in memory.

Damage in the middle of a storage file is found where it is read: an mcap chunk that fails its
checks (:func:`check_mcap_chunk`), an sqlite3 row the database cannot read, or a message whose CDR
cannot be deserialised. Each becomes a :class:`BadRange` (file, bag-time range, messages lost)
handed to the bag's :class:`Damage`: by default that raises :class:`BagDamageError`; a
``Damage(skip=True)`` logs the range once, keeps it (for a dataset manifest) and reading goes on
with the good data.
"""

from __future__ import annotations

import heapq
import logging
import os
import struct
import sys
import zlib
from array import array
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import apsw
import numpy as np
from rosbags.interfaces import Connection
from rosbags.rosbag2 import Reader, ReaderError
from rosbags.rosbag2.storage_mcap import DECOMPRESSORS, ChunkInfo, McapReader
from rosbags.rosbag2.storage_sqlite3 import Sqlite3Reader
from rosbags.serde import SerdeError

from dlp_ros.errors import EpisodeError, ImageError
from dlp_ros.image_codec import COMPRESSED_FORMATS, RAW_ENCODINGS, decode_compressed, decode_raw
from dlp_ros.offline.typestore import typestore

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

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
# What the decompressors of mcap chunks and of rosbag2 per-message compression raise on bad data.
DECOMPRESS_ERRORS = (zstd.ZstdError, RuntimeError)  # lz4.frame raises RuntimeError
MCAP_CHUNK_RECORDS = (0x03, 0x04, 0x05)  # Schema, Channel, Message: what a chunk may hold


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
        return decode_raw(msg.encoding, msg.height, msg.width, msg.step, msg.data,
                          bool(msg.is_bigendian))  # fmt: skip
    return decode_compressed(msg.format, msg.data)


class ChunkError(ValueError):
    """A storage chunk fails a check; the message says which one."""


def check_mcap_chunk(data: bytes, chunk: ChunkInfo) -> list[tuple[int, int, int, bytes]]:
    """Verify one mcap chunk and return its messages: (log time ns, offset, channel id, data).

    ``data``: the Chunk record (from its opcode on) followed by its Message Index records, as
    ``chunk`` (its entry in the summary's chunk index) locates them. Checks, per the MCAP spec:
    the record header agrees with the index; the records decompress (zstd, lz4 or none) to
    ``uncompressed_size`` bytes whose CRC32 is ``uncompressed_crc`` (0: none written, as by
    rosbags); they are Schema, Channel and Message records that fill the chunk exactly, every
    log time within the chunk's message start/end time; and they are the messages that the
    Message Index records list (channel, log time, offset), when there are any. Without a CRC,
    damage inside message data passes (CDR deserialisation may still catch it).

    Raises:
        ChunkError: the first check that fails.
        ReaderError: the chunk is compressed in a way rosbags does not read.
    """
    try:
        op, length, start, end, size, crc, name_len = struct.unpack_from('<BQQQQII', data)
        pos = 41 + name_len
        compression = data[41:pos].decode('utf-8', 'replace')
        (compressed_size,) = struct.unpack_from('<Q', data, pos)
        header = (op, length + 9, start, end, size, compression, compressed_size)
        if len(data) != chunk.chunk_length + chunk.message_index_length or header != (
            0x06, chunk.chunk_length, chunk.message_start_time, chunk.message_end_time,
            chunk.uncompressed_size, chunk.compression, chunk.compressed_size,
        ):  # fmt: skip
            raise ChunkError('chunk record does not match the chunk index (header damaged)')
        if compression not in DECOMPRESSORS:  # not damage: the index says so too
            raise ReaderError(f'unsupported mcap chunk compression {compression!r}')
        try:
            raw = DECOMPRESSORS[compression](data[pos + 8 : pos + 8 + compressed_size], size)
        except DECOMPRESS_ERRORS as exc:
            raise ChunkError(f'{compression} decompression failed ({exc})') from exc
        if len(raw) != size:
            raise ChunkError(f'decompressed to {len(raw)} bytes, expected {size}')
        if crc and zlib.crc32(raw) != crc:
            raise ChunkError(
                f'CRC mismatch (CRC32 {zlib.crc32(raw):#010x}, chunk says {crc:#010x})'
            )
        messages: list[tuple[int, int, int, bytes]] = []
        pos = 0
        while pos < size:
            op, length = struct.unpack_from('<BQ', raw, pos)
            short = op == 0x05 and length < 22  # a message record has 22 bytes before its data
            if op not in MCAP_CHUNK_RECORDS or pos + 9 + length > size or short:
                raise ChunkError(f'bad record (opcode {op:#04x}, {length} bytes) at offset {pos}')
            if op == 0x05:
                channel, _, log_time = struct.unpack_from('<HIQ', raw, pos + 9)
                if not start <= log_time <= end:
                    raise ChunkError(f'message at offset {pos} has log time {log_time} ns')
                messages.append((log_time, pos, channel, raw[pos + 31 : pos + 9 + length]))
            pos += 9 + length
        indexed: list[tuple[int, int, int]] = []
        pos = chunk.chunk_length
        while pos < len(data):
            op, length, channel, count = struct.unpack_from('<BQHI', data, pos)
            if op != 0x07 or length != 6 + count:
                raise ChunkError(f'bad message index record (opcode {op:#04x}) after the chunk')
            entries = struct.iter_unpack('<QQ', data[pos + 15 : pos + 15 + count])
            indexed += [(t, offset, channel) for t, offset in entries]
            pos += 9 + length
    except struct.error as exc:
        raise ChunkError(f'a record runs past the end of the chunk ({exc})') from exc
    if indexed and sorted(indexed) != sorted(m[:3] for m in messages):
        raise ChunkError('the messages do not match the message index')
    return messages


def unreadable_rows(
    db: apsw.Connection, after: tuple[int, int]
) -> tuple[list[tuple[int, int]], bool]:
    """The first run of rows of an sqlite3 bag that cannot be read, after row ``after``.

    Rows are walked in (timestamp, id) order from the timestamp index (which does not touch the
    rows), and each is read on its own. Returns their (timestamp, id) and whether a readable row
    follows them.

    Raises:
        apsw.Error: the timestamp index cannot be read either.
    """
    bad: list[tuple[int, int]] = []
    query = 'SELECT timestamp, id FROM messages WHERE (timestamp, id) > (?, ?) ORDER BY 1, 2'
    for stamp, row_id in db.execute(query, after):
        try:
            db.execute('SELECT topic_id, data FROM messages WHERE id = ?', (row_id,)).fetchall()
        except apsw.Error:
            bad.append((stamp, row_id))
            continue
        if bad:
            return bad, True
    return bad, False


@dataclass(frozen=True)
class BadRange:
    """Messages of a bag lost to damaged storage; times are bag (receive) times."""

    bag: Path
    file: str  # the storage file
    start_ns: int
    end_ns: int
    messages: int | None  # messages lost (a chunk's or rows': of every topic), None: unknown
    reason: str

    def describe(self) -> str:
        lost = 'unknown' if self.messages is None else self.messages
        return (
            f'bag {self.bag} is truncated or corrupt: {self.file} is damaged from '
            f'{self.start_ns} ns to {self.end_ns} ns (bag time; messages lost: {lost}): '
            f'{self.reason}'
        )

    def as_dict(self) -> dict[str, Any]:
        """The manifest entry (plain types)."""
        return {
            'bag': str(self.bag.resolve()),
            'file': self.file,
            'start_ns': self.start_ns,
            'end_ns': self.end_ns,
            'messages': self.messages,
            'reason': self.reason,
        }


class BagDamageError(EpisodeError):
    """A bag has damaged storage in the middle (see :class:`BadRange`)."""

    def __init__(self, message: str, bad: BadRange) -> None:
        super().__init__(message)
        self.bad = bad


class Damage:
    """What reading does with damaged storage.

    Args:
        skip: False: raise :class:`BagDamageError`. True: log a warning for each damaged range
            (once, however often it is read), keep it (:meth:`ranges`) and go on reading.
    """

    def __init__(self, skip: bool = False) -> None:
        self.skip = skip
        self._ranges: dict[tuple[Path, str, int, int, str], BadRange] = {}

    def report(self, bad: BadRange) -> None:
        """Raise, or (skip) log and keep ``bad``."""
        if not self.skip:
            raise BagDamageError(bad.describe(), bad)
        key = (bad.bag.resolve(), bad.file, bad.start_ns, bad.end_ns, bad.reason)
        if key not in self._ranges:
            self._ranges[key] = bad
            logger.warning('%s; skipped', bad.describe())

    def ranges(self, bag: Path) -> list[BadRange]:
        """The damaged ranges skipped so far in ``bag``, by file and time."""
        found = [r for key, r in self._ranges.items() if key[0] == Path(bag).resolve()]
        return sorted(found, key=lambda r: (r.file, r.start_ns, r.end_ns))

    @contextmanager
    def active(self) -> Iterator[Damage]:
        """Every :class:`Bag` opened inside (without its own ``damage``) reports here."""
        token = _ACTIVE_DAMAGE.set(self)
        try:
            yield self
        finally:
            _ACTIVE_DAMAGE.reset(token)


_ACTIVE_DAMAGE: ContextVar[Damage | None] = ContextVar('bag_damage', default=None)


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


def find_bags(paths: Sequence[Path]) -> list[Path]:
    """The rosbag2 directories named by ``paths``: a bag directory (with metadata.yaml) stands
    for itself; any other directory for every bag below it, in path order (hidden directories,
    such as half-written bags, skipped).

    Raises:
        EpisodeError: a path does not exist, or a folder holds no bag.
    """
    bags: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise EpisodeError(f'{path} does not exist (expected a rosbag2 directory or a folder '
                               'of them)')  # fmt: skip
        if (path / 'metadata.yaml').is_file() or not path.is_dir():
            bags.append(path)  # a bag, or a file that Bag() names as not a bag
            continue
        found = sorted(
            meta.parent
            for meta in path.rglob('metadata.yaml')
            if not any(part.startswith('.') for part in meta.relative_to(path).parts)
        )
        if not found:
            raise EpisodeError(
                f'{path} is not a rosbag2 directory and holds none (no metadata.yaml in it or '
                'below it)'
            )
        logger.info('%s: %d bag(s) found below it', path, len(found))
        bags.extend(found)
    return bags


class Bag:
    """One rosbag2 directory, opened with ``with Bag(path) as bag:``.

    ``damage``: where damaged chunks or rows go (:class:`Damage`); default: the one made active
    with :meth:`Damage.active`, else one that raises.

    Raises:
        EpisodeError: the path is not a rosbag2 directory, or it is truncated or corrupt
            (:class:`BagDamageError` for damage found while reading).
    """

    def __init__(self, path: Path, damage: Damage | None = None) -> None:
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
        active = _ACTIVE_DAMAGE.get()
        self.damage = damage if damage is not None else active if active is not None else Damage()

    def __enter__(self) -> Bag:
        try:
            reader = Reader(self.path)
            reader.open()
        except (*READ_ERRORS, KeyError, ValueError) as exc:
            raise self._corrupt(exc, self._unreadable_sqlite_rows()) from exc
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

    def _corrupt(self, exc: BaseException, where: str = '') -> EpisodeError:
        names = ', '.join(p.name for p in self.files) or 'no storage file'
        return EpisodeError(
            f'bag {self.path} is truncated or corrupt: cannot read {names} '
            f'({type(exc).__name__}: {exc}){where}'
        )

    def _unreadable_sqlite_rows(self) -> str:
        """Where the rows that rosbags could not open an sqlite3 bag for are, if it can be told.

        rosbags counts the messages of every topic when it opens a database, so one unreadable
        row fails the open (and so cannot be skipped); the timestamp index still dates it.
        """
        notes = []
        for file in self.files:
            if file.suffix != '.db3':
                continue
            try:
                flags = apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI
                with closing(apsw.Connection(f'file:{file}?immutable=1', flags=flags)) as db:
                    bad, _ = unreadable_rows(db, (-(2**63), -1))
            except apsw.Error:
                continue
            if bad:
                notes.append(
                    f'; {file.name}: {len(bad)} row(s) from {bad[0][0]} ns to {bad[-1][0]} ns '
                    '(bag time) cannot be read, and rosbags cannot open a database with '
                    'unreadable rows, so they cannot be skipped'
                )
        return ''.join(notes)

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
        """(bag time ns, CDR bytes) of every message of ``conn`` in bag order.

        Damaged storage (an mcap chunk, unreadable sqlite3 rows) and messages whose CDR cannot be
        deserialised go to ``self.damage``, which raises or skips them.
        """
        assert self._reader is not None, 'use Bag as a context manager'
        directory = self._reader.storage  # rosbags' DirectoryReader: one storage per file
        per_message = directory.metadata.compression_mode == 'message'
        store = typestore()
        check = conn.msgtype in store.fielddefs
        try:
            for storage in directory.storages:
                ids = {
                    c.id
                    for c in storage.connections
                    if c.topic == conn.topic and c.msgtype == conn.msgtype
                }
                if not ids:
                    continue
                file = Path(storage.path).name
                lost: list[int] = []  # bag times of a run of undecodable messages
                reasons: list[str] = []
                for bag_ns, data in self._storage_messages(storage, ids, file):
                    try:
                        raw = zstd.decompress(data) if per_message else data
                        if check:
                            store.deserialize_cdr(raw, conn.msgtype)
                    except (SerdeError, *DECOMPRESS_ERRORS) as exc:
                        lost.append(bag_ns)
                        reasons.append(f'{conn.topic} message cannot be decoded ({exc})')
                        continue
                    if lost:
                        self._report_run(file, lost, reasons[0])
                        lost, reasons = [], []
                    yield bag_ns, raw
                if lost:
                    self._report_run(file, lost, reasons[0])
        except READ_ERRORS as exc:
            raise self._corrupt(exc) from exc

    def _report_run(self, file: str, lost: list[int], reason: str) -> None:
        """Report consecutive undecodable messages (bag times ``lost``) as one range."""
        self.damage.report(BadRange(self.path, file, lost[0], lost[-1], len(lost), reason))

    def _storage_messages(
        self, storage: McapReader | Sqlite3Reader, ids: set[int], file: str
    ) -> Iterator[tuple[int, bytes]]:
        """(bag time, data) of the messages of channels/topics ``ids`` in one storage file."""
        if isinstance(storage, Sqlite3Reader):
            yield from self._sqlite_messages(storage, ids, file)
        elif storage.chunks:
            yield from self._mcap_messages(storage, ids, file)
        else:  # an mcap file without a chunk index: rosbags scans it, any error is fatal
            conns = [c for c in storage.connections if c.id in ids]
            for _, bag_ns, data in storage.messages(conns):
                yield bag_ns, data

    def _mcap_messages(
        self, storage: McapReader, ids: set[int], file: str
    ) -> Iterator[tuple[int, bytes]]:
        """Messages of the chunks holding channels ``ids``, each chunk checked on first use.

        Bag order as rosbags has it: by log time, then chunk; a chunk is read only when the
        merge reaches its start time.
        """
        assert storage.bio is not None
        bio = storage.bio
        file_size = os.fstat(bio.fileno()).st_size

        def chunk_messages(chunk: ChunkInfo) -> Iterator[tuple[int, int, int, bytes]]:
            yield chunk.message_start_time, chunk.chunk_start_offset, -1, b''  # read it later
            total = chunk.chunk_length + chunk.message_index_length
            try:
                if chunk.chunk_start_offset + total > file_size:
                    raise ChunkError(
                        f'chunk index points past the end of the file ({file_size} B)'
                    )
                bio.seek(chunk.chunk_start_offset)
                messages = check_mcap_chunk(bio.read(total), chunk)
            except ChunkError as exc:
                self.damage.report(BadRange(
                    self.path, file, chunk.message_start_time, chunk.message_end_time,
                    sum(chunk.channel_count.values()),
                    f'mcap chunk at byte {chunk.chunk_start_offset}: {exc}',
                ))  # fmt: skip
                return
            mine = sorted((m for m in messages if m[2] in ids), key=lambda m: m[0])
            for k, (log_time, _, _, data) in enumerate(mine):
                yield log_time, chunk.chunk_start_offset, k, data

        chunks = [c for c in storage.chunks if any(c.channel_count.get(i) for i in ids)]
        for log_time, _, k, data in heapq.merge(*(chunk_messages(c) for c in chunks)):
            if k >= 0:
                yield log_time, data

    def _sqlite_messages(
        self, storage: Sqlite3Reader, ids: set[int], file: str
    ) -> Iterator[tuple[int, bytes]]:
        """Rows of topics ``ids`` by (timestamp, id); on a database error, the unreadable rows
        are reported and reading resumes after them."""
        assert storage.dbconn is not None
        db = storage.dbconn
        topics = ','.join('?' * len(ids))
        query = (
            f'SELECT id, timestamp, data FROM messages WHERE topic_id IN ({topics}) '
            'AND (timestamp, id) > (?, ?) ORDER BY timestamp, id'
        )
        last: tuple[int, int] | None = (-(2**63), -1)  # (timestamp, id) of the last row read
        while last is not None:
            try:
                for row_id, bag_ns, data in db.execute(query, (*sorted(ids), *last)):
                    last = bag_ns, row_id
                    yield bag_ns, data
                return
            except apsw.Error as exc:
                last = self._skip_bad_rows(storage, last, file, exc)

    def _skip_bad_rows(
        self, storage: Sqlite3Reader, last: tuple[int, int], file: str, error: apsw.Error
    ) -> tuple[int, int] | None:
        """After ``error`` past row ``last`` (timestamp, id): report the rows that cannot be read
        and return the row to resume after, or None when the rest of the file cannot be read."""
        assert storage.dbconn is not None
        try:
            bad, more = unreadable_rows(storage.dbconn, last)
        except apsw.Error as exc:  # the timestamp index cannot be read either
            error, bad, more = exc, [], False
        if bad:
            rows = f'{bad[0][1]}..{bad[-1][1]}' if len(bad) > 1 else str(bad[0][1])
            reason = f'sqlite3 row(s) {rows} cannot be read ({error})'
            self.damage.report(BadRange(self.path, file, bad[0][0], bad[-1][0], len(bad), reason))
            return bad[-1] if more else None
        start = last[0] if last[1] >= 0 else storage.metadata.start_time
        reason = f'database error ({error}); the rest of {file} cannot be read'
        self.damage.report(
            BadRange(self.path, file, start, storage.metadata.end_time - 1, None, reason)
        )
        return None

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
