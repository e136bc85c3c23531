"""What the perception pipeline produced, written to disk: shared by ``dlp-replay`` and the demo.

:class:`PerceptionRecorder` takes the node's two outputs per camera frame, as messages (rosbags
dataclasses built here from :meth:`ParticleFrame.message_fields`, or rclpy messages received over
DDS: both have the same field names), and writes::

    OUT/bag/                 rosbag2 (mcap or sqlite3): /dlp/particles, /dlp/prediction
    OUT/overlay.mp4          the camera frames with the particles drawn (GIF if no MP4 codec)
    OUT/prediction_strip.png true future frames above the predicted ones, for one frame
    OUT/summary.json         frames in/out, latency p50/p99, prediction PSNR per step

The prediction PSNR compares predicted frame k of the prediction made at stamp t with the true
camera frame stamped t + k * dt (the nearest one within half a frame period), both at the model's
resolution S (the camera frame made S x S by :func:`dlp_ros.input_view.resize_frame` in the
model card's mode, as the model sees it). The same comparison with the last observed frame as
the "prediction" is the baseline.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from dlp_ros import image_quality
from dlp_ros.image_codec import decode_raw
from dlp_ros.input_view import DEFAULT_RESIZE, resize_frame
from dlp_ros.offline.bag_writer import BagWriter, split_stamp
from dlp_ros.overlay import colour as id_colour

logger = logging.getLogger(__name__)

PARTICLES_TOPIC = '/dlp/particles'
PREDICTION_TOPIC = '/dlp/prediction'
OUTPUT_TOPICS = {
    PARTICLES_TOPIC: 'dlp_ros/msg/ParticleArray',
    PREDICTION_TOPIC: 'dlp_ros/msg/Prediction',
}
ON_THRESHOLD = 0.5  # a particle with transparency above this is drawn
MIN_VIDEO_SIDE = 256  # px: small camera frames are enlarged (nearest) before drawing


# ----------------------------------------------------------------------------- messages
def stamp_ns(header: Any) -> int:
    """``header.stamp`` of an rclpy or rosbags std_msgs/Header, in nanoseconds."""
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def make_header(store: Any, stamp: int, frame_id: str) -> Any:
    """A rosbags std_msgs/Header stamped ``stamp`` (ns)."""
    sec, nanosec = split_stamp(stamp)
    time = store.types['builtin_interfaces/msg/Time'](sec=sec, nanosec=nanosec)
    return store.types['std_msgs/msg/Header'](stamp=time, frame_id=frame_id)


def particle_array_msg(
    store: Any, header: Any, fields: dict[str, Any], decode_ms: float = 0.0, encode_ms: float = 0.0
) -> Any:
    """A rosbags dlp_ros/msg/ParticleArray from :meth:`ParticleFrame.message_fields` output.

    ``header`` (a rosbags Header) is used unchanged: the input frame's header.
    """
    particle = store.types['dlp_ros/msg/Particle']
    particles = [particle(**p) for p in fields['particles']]  # already message-typed values
    return store.types['dlp_ros/msg/ParticleArray'](
        header=header,
        image_width=fields['image_width'],
        image_height=fields['image_height'],
        particles=particles,
        background_features=fields['background_features'],
        decode_ms=float(decode_ms),
        encode_ms=float(encode_ms),
    )


def image_msg(store: Any, header: Any, rgb: np.ndarray) -> Any:
    """A rosbags sensor_msgs/msg/Image, rgb8, from (H, W, 3) uint8 RGB."""
    height, width = rgb.shape[:2]
    return store.types['sensor_msgs/msg/Image'](
        header=header,
        height=height,
        width=width,
        encoding='rgb8',
        is_bigendian=0,
        step=width * 3,
        data=np.ascontiguousarray(rgb, dtype=np.uint8).reshape(-1),
    )


def prediction_msg(
    store: Any,
    header: Any,
    dt: float,
    steps: Sequence[dict[str, Any]],
    frames: np.ndarray | None,
    predict_ms: float = 0.0,
) -> Any:
    """A rosbags dlp_ros/msg/Prediction: step k (1-based) stamped header.stamp + k * dt.

    Args:
        header: the last observed frame's header (rosbags), copied unchanged.
        steps: horizon message_fields dicts (:meth:`ParticleFrame.message_fields`).
        frames: (horizon, S, S, 3) uint8 RGB decoded frames, or None for no frames.
    """
    t0, frame_id = stamp_ns(header), str(header.frame_id)
    dt_ns = round(dt * 1e9)
    headers = [make_header(store, t0 + k * dt_ns, frame_id) for k in range(1, len(steps) + 1)]
    images = (
        []
        if frames is None
        else [image_msg(store, h, f) for h, f in zip(headers, frames, strict=True)]
    )
    return store.types['dlp_ros/msg/Prediction'](
        header=header,
        dt=float(dt),
        steps=[particle_array_msg(store, h, s) for h, s in zip(headers, steps, strict=True)],
        frames=images,
        predict_ms=float(predict_ms),
    )


def image_of(msg: Any) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a sensor_msgs/Image (rclpy or rosbags)."""
    data = msg.data if isinstance(msg.data, np.ndarray) else np.frombuffer(msg.data, np.uint8)
    return decode_raw(str(msg.encoding), int(msg.height), int(msg.width), int(msg.step), data)


@dataclass(frozen=True)
class DrawnParticles:
    """The drawable part of a ParticleArray (rclpy or rosbags message)."""

    ids: np.ndarray  # (K,) int
    uv: np.ndarray  # (K, 2) pixels of the input image
    std: np.ndarray  # (K, 2) pixels
    presence: np.ndarray  # (K,) transparency in [0, 1]

    @classmethod
    def of_fields(cls, fields: dict[str, Any]) -> DrawnParticles:
        """From :meth:`ParticleFrame.message_fields` output."""
        parts = fields['particles']
        return cls(
            np.array([p['id'] for p in parts], dtype=np.int64),
            np.array([[p['u'], p['v']] for p in parts], dtype=np.float64).reshape(-1, 2),
            np.array([[p['u_std'], p['v_std']] for p in parts], dtype=np.float64).reshape(-1, 2),
            np.array([p['transparency'] for p in parts], dtype=np.float64),
        )

    @classmethod
    def of(cls, msg: Any) -> DrawnParticles:
        """From a dlp_ros/ParticleArray (rclpy or rosbags)."""
        parts = list(msg.particles)
        return cls(
            np.array([p.id for p in parts], dtype=np.int64),
            np.array([[p.u, p.v] for p in parts], dtype=np.float64).reshape(-1, 2),
            np.array([[p.u_std, p.v_std] for p in parts], dtype=np.float64).reshape(-1, 2),
            np.array([p.transparency for p in parts], dtype=np.float64),
        )


# ----------------------------------------------------------------------------- pictures
def enlarge(rgb: np.ndarray, min_side: int = MIN_VIDEO_SIDE) -> tuple[np.ndarray, int]:
    """(H, W, 3) enlarged by an integer zoom (nearest) until its shorter side >= min_side."""
    zoom = max(1, math.ceil(min_side / max(1, min(rgb.shape[:2]))))
    if zoom == 1:
        return rgb.copy(), 1
    big = cv2.resize(rgb, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST)
    return big, zoom


def draw_particles(
    rgb: np.ndarray, parts: DrawnParticles, min_side: int = MIN_VIDEO_SIDE, labels: bool = True
) -> np.ndarray:
    """The frame (enlarged to ``min_side``) with each present particle as a dot, its 2-sigma
    ellipse and its id.

    Args:
        rgb: (H, W, 3) uint8 RGB camera frame, the one the particle pixels refer to.
    Returns:
        (zoom*H, zoom*W, 3) uint8 RGB.
    """
    img, zoom = enlarge(rgb, min_side)
    for pid, (u, v), (su, sv), p in zip(
        parts.ids, parts.uv, parts.std, parts.presence, strict=True
    ):
        if p <= ON_THRESHOLD or not (np.isfinite(u) and np.isfinite(v)):
            continue
        colour = id_colour(int(pid))
        centre = (round(u * zoom), round(v * zoom))
        axes = (max(1, round(2 * su * zoom)), max(1, round(2 * sv * zoom)))
        cv2.ellipse(img, centre, axes, 0, 0, 360, colour, 1, cv2.LINE_AA)
        cv2.circle(img, centre, 3, colour, -1, cv2.LINE_AA)
        if labels:
            org = (centre[0] + 4, centre[1] - 4)
            cv2.putText(img, str(pid), org, cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 2)
            cv2.putText(img, str(pid), org, cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1)
    return img


def label(img: np.ndarray, text: str, height: int = 18) -> np.ndarray:
    """``img`` with a white title bar of ``height`` px on top."""
    bar = np.full((height, img.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, text, (3, height - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    return np.concatenate([bar, img], axis=0)


def prediction_strip(
    observed: np.ndarray,
    truth: Sequence[np.ndarray | None],
    predicted: np.ndarray,
    psnr_db: Sequence[float | None],
    dt: float,
    cell: int = 96,
) -> np.ndarray:
    """Two rows: the last observed frame then the true future frames (top), the predicted ones
    (bottom); each column is one step k, titled with t + k*dt and the step's PSNR.

    Args:
        observed: (S, S, 3) the frame the prediction started from.
        truth: horizon true frames (S, S, 3), None where the bag has none.
        predicted: (horizon, S, S, 3) uint8 RGB.
    Returns:
        (H, W, 3) uint8 RGB.
    """

    def fit(img: np.ndarray | None) -> np.ndarray:
        if img is None:
            return np.full((cell, cell, 3), 200, np.uint8)
        return cv2.resize(img, (cell, cell), interpolation=cv2.INTER_NEAREST)

    sep = np.full((cell + 18, 2, 3), 255, np.uint8)
    top = [label(fit(observed), 'observed t')]
    bottom = [label(fit(observed) * 0 + 255, 'predicted:')]
    for k, (true, pred, db) in enumerate(zip(truth, predicted, psnr_db, strict=True), start=1):
        top.append(label(fit(true), f't+{k * dt:.2f}s' if true is not None else 'no frame'))
        bottom.append(label(fit(pred), f'k={k}' + (f' {db:.1f}dB' if db is not None else '')))
    rows = [
        np.concatenate([c for col in row for c in (col, sep)][:-1], axis=1)
        for row in (top, bottom)
    ]
    return np.concatenate(rows, axis=0)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) of two uint8 images of one shape (:func:`dlp_ros.image_quality.psnr`, peak
    255): PSNR_CAP_DB for identical images."""
    return float(image_quality.psnr(a[None], b[None], 255.0)[0])


class VideoOut:
    """Frames -> OUT/<name>.mp4 (OpenCV's mp4v) or, without an MP4 encoder, an animated GIF.

    Frames are written as they come (the MP4 path keeps none in memory); the GIF fallback
    keeps them until :meth:`close`.
    """

    def __init__(self, path_stem: Path, fps: float) -> None:
        self.stem = Path(path_stem)
        self.fps = max(1.0, float(fps))
        self.path: Path | None = None
        self.frames = 0
        self._writer: cv2.VideoWriter | None = None
        self._gif: list[np.ndarray] | None = None
        self._size: tuple[int, int] | None = None

    def write(self, rgb: np.ndarray) -> None:
        """Append one (H, W, 3) uint8 RGB frame; later frames are resized to the first's size."""
        if self._size is None:
            self._size = (rgb.shape[1], rgb.shape[0])
            self._open()
        if (rgb.shape[1], rgb.shape[0]) != self._size:
            rgb = cv2.resize(rgb, self._size, interpolation=cv2.INTER_AREA)
        if self._writer is not None:
            self._writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        elif self._gif is not None:
            self._gif.append(rgb)
        self.frames += 1

    def _open(self) -> None:
        assert self._size is not None
        path = self.stem.with_suffix('.mp4')
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), self.fps, self._size)
        if writer.isOpened():
            self._writer, self.path = writer, path
            return
        writer.release()
        path.unlink(missing_ok=True)
        logger.warning('OpenCV has no MP4 (mp4v) encoder here: writing an animated GIF instead')
        self._gif, self.path = [], self.stem.with_suffix('.gif')

    def close(self) -> Path | None:
        """Finish the file; returns its path (None when no frame was written)."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if self._gif:
            from dlp_ros.offline.plots import encode_gif

            assert self.path is not None
            self.path.write_bytes(encode_gif(self._gif, duration_ms=round(1000 / self.fps)))
            self._gif = []
        return self.path if self.frames else None


# ----------------------------------------------------------------------------- true frames
class TrueFrames:
    """The camera frames of an episode by header stamp, for comparing predictions.

    Args:
        stamps_ns: (T,) header stamps, increasing.
        frames: T (H, W, 3) uint8 RGB camera frames (any size).
        size: the model's side S; frames are kept at (S, S, 3), made as the model's input is
            (``resize``: the model card's ``image.resize``).
    """

    def __init__(
        self,
        stamps_ns: Sequence[int],
        frames: Sequence[np.ndarray],
        size: int,
        resize: str = DEFAULT_RESIZE,
    ) -> None:
        self.stamps = np.asarray(stamps_ns, dtype=np.int64)
        if self.stamps.size != len(frames):
            raise ValueError(f'{self.stamps.size} stamps for {len(frames)} frames')
        self.frames = [resize_frame(f, size, resize) for f in frames]  # (S, S, 3) each
        gaps = np.diff(self.stamps)
        self.period_ns = int(np.median(gaps)) if gaps.size else 0

    def index(self, stamp: int) -> int | None:
        """Index of the frame nearest ``stamp`` within half a period, else None."""
        if not self.stamps.size:
            return None
        i = int(np.searchsorted(self.stamps, stamp))
        best = min((j for j in (i - 1, i) if 0 <= j < self.stamps.size),
                   key=lambda j: abs(int(self.stamps[j]) - stamp))  # fmt: skip
        tolerance = max(self.period_ns // 2, 1)
        return best if abs(int(self.stamps[best]) - stamp) < tolerance else None

    def at(self, stamp: int) -> np.ndarray | None:
        """The (S, S, 3) frame stamped ``stamp`` (nearest within half a period), or None."""
        i = self.index(stamp)
        return None if i is None else self.frames[i]


# ----------------------------------------------------------------------------- recorder
def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    """{'p50', 'p99', 'mean', 'max'} of ``values`` (ms), None when empty."""
    if not len(values):
        return {'p50': None, 'p99': None, 'mean': None, 'max': None}
    arr = np.asarray(values, dtype=np.float64)
    return {
        'p50': round(float(np.percentile(arr, 50)), 3),
        'p99': round(float(np.percentile(arr, 99)), 3),
        'mean': round(float(arr.mean()), 3),
        'max': round(float(arr.max()), 3),
    }


@dataclass
class _StepScores:
    """Running PSNR sums per prediction step (1-based k -> index k-1)."""

    model: list[list[float]] = field(default_factory=list)
    last_frame: list[list[float]] = field(default_factory=list)

    def add(self, k: int, model_db: float, last_db: float) -> None:
        while len(self.model) < k:
            self.model.append([])
            self.last_frame.append([])
        self.model[k - 1].append(model_db)
        self.last_frame[k - 1].append(last_db)

    def means(self, which: list[list[float]]) -> list[float | None]:
        return [round(float(np.mean(v)), 3) if v else None for v in which]


@dataclass
class _StripCandidate:
    """The prediction kept for the strip (the one nearest the wanted stamp so far)."""

    distance_ns: int
    observed: np.ndarray  # (S, S, 3)
    truth: list[np.ndarray | None]  # horizon x (S, S, 3)
    predicted: np.ndarray  # (horizon, S, S, 3)
    psnr_db: list[float | None]
    dt: float


class PerceptionRecorder:
    """Writes the outputs of one run into ``out`` (see the module docstring).

    Args:
        out: the output directory (created; must not hold a ``bag`` yet).
        storage: 'mcap' or 'sqlite3' for OUT/bag.
        truth: the input episode's frames (squashed to S), for the PSNR and the strip.
        inputs: the camera frames by header stamp, for the overlay video of messages added
            without their frame (the demo); dlp-replay hands each frame to add_particles.
        fps: video frame rate (the camera rate).
        final: where ``out`` will end up (renamed by the caller), for the summary's paths.
        strip_stamp: stamp of the frame whose prediction goes into the strip (the received
            prediction nearest to it is used); None: the middle of the episode.
    """

    def __init__(
        self,
        out: Path,
        storage: str,
        truth: TrueFrames,
        inputs: dict[int, np.ndarray] | None = None,
        fps: float = 10.0,
        final: Path | None = None,
        strip_stamp: int | None = None,
    ) -> None:
        self.out = Path(out)
        self.final = Path(final) if final is not None else self.out
        self.out.mkdir(parents=True, exist_ok=True)
        self.truth = truth
        self.inputs = inputs or {}
        self.bag = BagWriter(self.out / 'bag', storage, OUTPUT_TOPICS)
        self.bag.__enter__()
        self.video = VideoOut(self.out / 'overlay', fps)
        if strip_stamp is None and truth.stamps.size:
            strip_stamp = int(truth.stamps[truth.stamps.size // 2])
        self.strip_stamp = strip_stamp
        self._strip: _StripCandidate | None = None
        self.scores = _StepScores()
        self.particles_out = 0
        self.predictions_out = 0
        self.prediction_frames_out = 0

    # --- inputs
    def add_particles(self, msg: Any, cdr: bytes, rgb: np.ndarray | None = None) -> None:
        """One ParticleArray (rclpy or rosbags) and its CDR bytes; ``rgb`` is its camera frame
        (else looked up in ``inputs`` by stamp) for the overlay video."""
        stamp = stamp_ns(msg.header)
        self.bag.write_raw(PARTICLES_TOPIC, stamp, cdr)
        self.particles_out += 1
        if rgb is None:
            rgb = self.inputs.get(stamp)
        if rgb is not None:
            self.video.write(draw_particles(rgb, DrawnParticles.of(msg)))

    def add_prediction(self, msg: Any, cdr: bytes) -> None:
        """One Prediction (rclpy or rosbags) and its CDR bytes: bag, PSNR, strip candidate."""
        t0 = stamp_ns(msg.header)
        self.bag.write_raw(PREDICTION_TOPIC, t0, cdr)
        self.predictions_out += 1
        if not msg.frames:
            return
        self.prediction_frames_out += 1
        observed = self.truth.at(t0)
        truths, dbs, preds = [], [], []
        for k, image in enumerate(msg.frames, start=1):
            pred = image_of(image)
            true = self.truth.at(stamp_ns(image.header))
            preds.append(pred)
            truths.append(true)
            if true is None or true.shape != pred.shape:
                dbs.append(None)
                continue
            dbs.append(psnr(pred, true))
            if observed is not None:
                self.scores.add(k, dbs[-1], psnr(observed, true))
        if observed is None or self.strip_stamp is None:
            return
        distance = abs(t0 - self.strip_stamp)
        if self._strip is None or distance < self._strip.distance_ns:
            self._strip = _StripCandidate(
                distance, observed, truths, np.stack(preds), dbs, float(msg.dt)
            )

    # --- outputs
    def close(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Finish the bag, video and strip; write summary.json (``summary`` plus the outputs'
        figures) and return it."""
        self.bag.__exit__(None, None, None)
        video = self.video.close()
        strip_path = None
        if self._strip is not None:
            c = self._strip
            strip = prediction_strip(c.observed, c.truth, c.predicted, c.psnr_db, c.dt)
            strip_path = self.out / 'prediction_strip.png'
            cv2.imwrite(str(strip_path), cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))
        summary = {
            **summary,
            'particles_out': self.particles_out,
            'predictions_out': self.predictions_out,
            'predictions_with_frames': self.prediction_frames_out,
            'psnr_db_per_step': self.scores.means(self.scores.model),
            'psnr_db_per_step_last_frame_baseline': self.scores.means(self.scores.last_frame),
            'out': str(self.final),
            'outputs': {  # relative to 'out'
                'bag': self.bag.path.name,
                'video': video.name if video else None,
                'prediction_strip': strip_path.name if strip_path else None,
                'summary': 'summary.json',
            },
        }
        (self.out / 'summary.json').write_text(json.dumps(summary, indent=2) + '\n')
        return summary

    def abort(self) -> None:
        """Close what is open after an error (the bag stays unpublished)."""
        try:
            self.bag.__exit__(RuntimeError, RuntimeError('aborted'), None)
        finally:
            self.video.close()


def format_summary(summary: dict[str, Any]) -> str:
    """A few human-readable lines of a summary dict."""
    lat = summary.get('latency_ms') or {}
    psnr_model = summary.get('psnr_db_per_step') or []
    psnr_base = summary.get('psnr_db_per_step_last_frame_baseline') or []

    def fmt(values: Sequence[float | None]) -> str:
        return ' '.join('-' if v is None else f'{v:.1f}' for v in values) or '-'

    lines = [
        f'frames in {summary.get("frames_in")}, particle messages out '
        f'{summary.get("particles_out")}, predictions out {summary.get("predictions_out")} '
        f'({summary.get("predictions_with_frames")} with frames), dropped '
        f'{summary.get("dropped_frames", 0)}',
        f'latency ({lat.get("what", "ms")}): p50 {lat.get("p50")} ms, p99 {lat.get("p99")} ms',
        f'prediction PSNR per step (dB): {fmt(psnr_model)}',
        f'  last-frame baseline     (dB): {fmt(psnr_base)}',
    ]
    diag = summary.get('node_diagnostics') or {}
    if diag:
        node = (
            f'node (/diagnostics): {diag.get("frames_received")} frames received, '
            f'{diag.get("frames_processed")} processed, {diag.get("frames_dropped")} dropped, '
            f'{diag.get("bad_frames")} bad; provider {diag.get("provider")}'
        )
        lines.insert(1, node)
        if diag.get('status'):
            lines.insert(2, f'node status (last /diagnostics): {diag["status"]}')
    ood = summary.get('ood') or {}
    if ood.get('frames_scored'):
        flag = (f'; {ood["frames_above_warn"]} above {ood["warn_above"]:g}: OUT OF DISTRIBUTION'
                if ood.get('frames_above_warn') else '')  # fmt: skip
        lines.insert(1, f'out-of-distribution score: median {ood["median"]:.2f}, max '
                        f'{ood["max"]:.2f} over {ood["frames_scored"]} frames{flag}')  # fmt: skip
    out = Path(summary.get('out', '.'))
    outputs = summary.get('outputs') or {}
    lines += [f'  {name}: {out / path}' for name, path in outputs.items() if path]
    return '\n'.join(lines)
