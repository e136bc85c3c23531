"""``import-video``: a video file as a rosbag2 camera recording, for the bag-based data path.

Every tool downstream (``build-dataset``, ``dlp-replay``, the node through ``ros2 bag play``)
reads rosbag2, so a video from a phone or a public dataset becomes one bag with one
``sensor_msgs/Image`` (rgb8) or ``CompressedImage`` per frame, stamped from the video's own
timestamps (or frame index / rate when the container has none). Decoding is OpenCV's
(``cv2.VideoCapture``: whatever codecs the installed OpenCV reads).

The bag is written atomically (:class:`~dlp_ros.offline.bag_writer.BagWriter`): an interrupted
import leaves nothing under ``--out``.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from dlp_ros.config_schema import check_fields, checked, from_args
from dlp_ros.errors import DlpError
from dlp_ros.offline.bag_writer import STORAGES, BagWriter

logger = logging.getLogger(__name__)

DEFAULT_TOPIC = '/camera/image_raw'
DEFAULT_START_NS = 1_700_000_000 * 10**9


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('video', type=Path, help='video file (any container OpenCV reads)')
    parser.add_argument('--out', type=Path, required=True, help='rosbag2 directory to write')
    parser.add_argument('--topic', default=DEFAULT_TOPIC,
                        help='camera topic (default %(default)s; with --compressed, '
                        '<topic>/compressed)')  # fmt: skip
    parser.add_argument('--frame-id', default='camera', help='header.frame_id of every image')
    parser.add_argument('--storage', choices=sorted(STORAGES), default='mcap')
    parser.add_argument('--compressed', choices=['jpeg', 'png'], default=None,
                        help='write sensor_msgs/CompressedImage instead of raw rgb8')  # fmt: skip
    parser.add_argument('--max-side', type=int, default=None, metavar='PX',
                        help='shrink frames (area averaging, aspect kept) so the long side is at '
                        'most PX; the default keeps the video size')  # fmt: skip
    parser.add_argument('--fps', type=float, default=None,
                        help="frame rate when the video's timestamps are missing or wrong "
                        '(stamps become index / fps); default: the file timestamps')  # fmt: skip
    parser.add_argument('--start-ns', type=int, default=DEFAULT_START_NS,
                        help='stamp of the first frame, ns since the epoch')  # fmt: skip
    parser.add_argument('--overwrite', action='store_true', help='replace an existing --out')
    parser.add_argument('--no-progress', action='store_true', help='no progress bar')


@dataclass(frozen=True)
class ImportOptions:
    """The import-video command line, validated (the fields are its options)."""

    video: Path
    out: Path
    topic: str = DEFAULT_TOPIC
    frame_id: str = 'camera'
    storage: str = checked('mcap', choices=tuple(sorted(STORAGES)))
    compressed: str | None = checked(None, choices=('jpeg', 'png', None))
    max_side: int | None = checked(None, ge=8)
    fps: float | None = checked(None, gt=0, finite=True)
    start_ns: int = checked(DEFAULT_START_NS, ge=0)
    overwrite: bool = False
    no_progress: bool = False

    def __post_init__(self) -> None:
        check_fields(self)


def run(args: argparse.Namespace) -> int:
    opts = from_args(ImportOptions, args)
    summary = import_video(opts)
    size = f'{summary["width"]}x{summary["height"]}'
    print(f'imported {summary["frames"]} frames ({size}, {summary["fps"]:.2f} fps) '  # noqa: T201
          f'from {opts.video} -> {opts.out} ({summary["topic"]})')  # fmt: skip
    return 0


def import_video(opts: ImportOptions) -> dict:
    """Write ``opts.video`` into the bag ``opts.out``; returns what was written."""
    if not opts.video.is_file():
        raise DlpError(f'video {opts.video}: no such file')
    out = opts.out
    if out.exists() and not opts.overwrite:
        raise DlpError(f'{out} already exists; choose a new --out or pass --overwrite')
    capture = cv2.VideoCapture(str(opts.video))
    if not capture.isOpened():
        raise DlpError(f'video {opts.video}: OpenCV cannot open it (not a video, or a codec '
                       'this OpenCV build lacks)')  # fmt: skip
    try:
        rate = opts.fps or capture.get(cv2.CAP_PROP_FPS)
        if not rate or not np.isfinite(rate) or rate <= 0:
            raise DlpError(f'video {opts.video}: the file gives no frame rate; pass --fps')
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
        topic = opts.topic + ('/compressed' if opts.compressed else '')
        msgtype = 'sensor_msgs/msg/' + ('CompressedImage' if opts.compressed else 'Image')
        # BagWriter refuses an existing path: the bag is finished beside --out, then moved in,
        # so --overwrite replaces the old bag only once the new one is complete.
        staging = out.with_name(f'.{out.name}.import')
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        bar = tqdm(total=total, unit='frame', desc=f'import {opts.video.name}', file=sys.stderr,
                   disable=True if opts.no_progress else None)  # fmt: skip
        count, shape = 0, (0, 0)
        try:
            with BagWriter(staging / out.name, opts.storage, {topic: msgtype}) as writer:
                for stamp, rgb in _frames(capture, rate, opts.fps is not None, opts.start_ns,
                                          opts.max_side):  # fmt: skip
                    if opts.compressed:
                        msg = writer.compressed_image(stamp, opts.frame_id, rgb, opts.compressed)
                    else:
                        msg = writer.image(stamp, opts.frame_id, rgb)
                    writer.write(topic, stamp, msg)
                    count, shape = count + 1, rgb.shape[:2]
                    bar.update()
            if count == 0:
                raise DlpError(f'video {opts.video}: no frame could be decoded')
            if out.exists():
                shutil.rmtree(out)
            (staging / out.name).rename(out)
        finally:
            bar.close()
            shutil.rmtree(staging, ignore_errors=True)
    finally:
        capture.release()
    logger.info('%s: %d frames of %dx%d at %.3f fps -> %s', opts.video, count, shape[1],
                shape[0], rate, out)  # fmt: skip
    return {'frames': count, 'width': shape[1], 'height': shape[0], 'fps': rate, 'topic': topic}


def _frames(capture: cv2.VideoCapture, rate: float, use_rate: bool, start_ns: int,
            max_side: int | None) -> Iterator[tuple[int, np.ndarray]]:  # fmt: skip
    """(stamp ns, (H, W, 3) uint8 RGB) per decodable frame, stamps strictly increasing.

    The container's presentation time is used when it increases; otherwise (no timestamps,
    a repeated one, or ``use_rate``) the stamp is index / rate after the first frame."""
    period_ns = 1e9 / rate
    last = -1
    index = 0
    while True:
        ok, bgr = capture.read()
        if not ok:
            return
        position_ms = capture.get(cv2.CAP_PROP_POS_MSEC)
        stamp = start_ns + round(index * period_ns)
        if not use_rate and index > 0 and np.isfinite(position_ms) and position_ms > 0:
            from_file = start_ns + round(position_ms * 1e6)
            if from_file > last:
                stamp = from_file
        stamp = max(stamp, last + 1)
        last = stamp
        index += 1
        yield stamp, _shrunk(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), max_side)


def _shrunk(rgb: np.ndarray, max_side: int | None) -> np.ndarray:
    """``rgb`` with its long side at most ``max_side`` (area averaging, aspect kept)."""
    height, width = rgb.shape[:2]
    if max_side is None or max(height, width) <= max_side:
        return rgb
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
