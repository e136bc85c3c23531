"""``dlp-replay`` (``python -m dlp_training replay``): the perception node's pipeline on a recorded
bag, offline, without ROS, deterministically.

Per camera frame of ``--bag`` (sensor_msgs/Image or CompressedImage, mcap or sqlite3), with the
node's own :class:`~dlp_ros.pipeline.PerceptionPipeline`: decode, preprocess, tracked particles
(new identities when the frame size changes or time goes back), then a ``--horizon``-step
prediction from the tracker's history (the latest command of ``--action-topic`` held over the
horizon) and its decoded frames. The outputs (see
:mod:`dlp_ros.offline.perception_outputs`) go to ``--out``::

    OUT/bag/                  rosbag2 (the input's storage unless --storage): /dlp/particles
                              (ParticleArray, the input frame's header), /dlp/prediction
                              (Prediction with frames; step k stamped t + k * dt)
    OUT/overlay.mp4           camera frames with the particles (GIF when there is no MP4 codec)
    OUT/prediction_strip.png  true future frames vs predicted, for the middle frame
    OUT/summary.json          frames in/out, runtime latency p50/p99, prediction PSNR per step

Two runs on the same bag and bundle write byte-identical messages: the timing fields of the
messages (decode_ms, encode_ms, predict_ms) are 0 unless ``--stamp-timings``; the measured
timings are in summary.json. Inference runs on the CPU provider by default.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dlp_ros.bundle_paths import bundle_path
from dlp_ros.errors import ConfigError, EpisodeError, ImageError
from dlp_ros.image_codec import decode_compressed, decode_raw
from dlp_ros.input_view import resize_frame
from dlp_ros.model_card import ModelCard
from dlp_ros.node_support import PARAM_SPECS, ood_score
from dlp_ros.offline.bag_reader import (
    ACTION_TYPES,
    IMAGE,
    IMAGE_TYPES,
    TWIST_NAMES,
    Actions,
    Bag,
)
from dlp_ros.offline.bag_writer import STORAGES
from dlp_ros.offline.cli import main_of
from dlp_ros.offline.output_dir import check_out, publish
from dlp_ros.offline.perception_outputs import (
    OUTPUT_TOPICS,
    PARTICLES_TOPIC,
    PREDICTION_TOPIC,
    PerceptionRecorder,
    TrueFrames,
    format_summary,
    particle_array_msg,
    percentiles,
    prediction_msg,
    stamp_ns,
)
from dlp_ros.offline.typestore import typestore
from dlp_ros.pipeline import PerceptionPipeline
from dlp_ros.runtime import DlpRuntime

logger = logging.getLogger(__name__)
SUMMARY = 'summary.json'
DEFAULT_TOPIC = '/camera/image_raw'


@dataclass(frozen=True)
class ReplayConfig:
    """What to replay, with which model, and where the outputs go."""

    bag: Path
    bundle: Path
    out: Path
    topic: str | None = None  # None: the bag's only image topic (or /camera/image_raw)
    horizon: int = 10
    action_topic: str | None = None  # None: the bag's only action topic, if the model needs one
    storage: str | None = None  # None: the input bag's storage
    providers: str = 'cpu'
    threads: int = 1
    frames: bool = True  # decoded predicted frames in /dlp/prediction
    stamp_timings: bool = False  # measured timings in the messages (then not reproducible)
    overwrite: bool = False

    def check(self) -> None:
        if self.horizon < 1:
            raise ConfigError(f'--horizon must be >= 1, got {self.horizon}')
        if self.storage is not None and self.storage not in STORAGES:
            raise ConfigError(f'--storage must be one of {sorted(STORAGES)}, got {self.storage!r}')
        if self.threads < 0:
            raise ConfigError(f'--threads must be >= 0, got {self.threads}')


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add('--bag', type=Path, required=True, help='input rosbag2 directory (mcap or sqlite3)')
    add('--bundle', type=bundle_path, required=True,
        help='model bundle: a directory (python -m dlp_training export) or the name of a '
             'shipped one (tabletop64, balls64)')  # fmt: skip
    add('--out', type=Path, required=True, help='output directory (new)')
    add('--topic', default=None,
        help=f"camera topic, Image or CompressedImage (default: the bag's only image topic, "
             f'else {DEFAULT_TOPIC})')  # fmt: skip
    add('--horizon', type=int, default=10, help='predicted steps per frame (default 10)')
    add(
        '--action-topic',
        default=None,
        help="commands for models that take actions (default: the bag's only action topic)",
    )
    add(
        '--storage',
        choices=sorted(STORAGES),
        default=None,
        help="storage of the output bag (default: the input's)",
    )
    add(
        '--providers',
        default='cpu',
        choices=['auto', 'cpu', 'cuda', 'tensorrt'],
        help='onnxruntime provider (default cpu: reproducible)',
    )
    add('--threads', type=int, default=1, help='onnxruntime intra-op threads (0: all cores)')
    add('--no-frames', action='store_true', help='no decoded frames in /dlp/prediction')
    add(
        '--stamp-timings',
        action='store_true',
        help='write the measured timings into the messages (outputs then differ run to run)',
    )
    add('--overwrite', action='store_true', help='replace an existing --out')  # fmt: skip


def run(args: argparse.Namespace) -> int:
    config = ReplayConfig(
        bag=args.bag,
        bundle=args.bundle,
        out=args.out,
        topic=args.topic,
        horizon=args.horizon,
        action_topic=args.action_topic,
        storage=args.storage,
        providers=args.providers,
        threads=args.threads,
        frames=not args.no_frames,
        stamp_timings=args.stamp_timings,
        overwrite=args.overwrite,
    )
    summary = replay(config)
    print(format_summary(summary))  # noqa: T201
    return 0


# ----------------------------------------------------------------------------- the pipeline
def decode_message(msgtype: str, msg: Any) -> np.ndarray:
    """A deserialised (rosbags) Image or CompressedImage -> (H, W, 3) uint8 RGB."""
    if msgtype == IMAGE:
        return decode_raw(msg.encoding, msg.height, msg.width, msg.step, msg.data,
                          bool(msg.is_bigendian))  # fmt: skip
    return decode_compressed(msg.format, msg.data)


def action_columns(topic_names: list[str], card_names: tuple[str, ...], dim: int) -> list[int]:
    """Columns of an action topic's values feeding a model with ``dim`` actions named
    ``card_names``: a name the topic has picks that column, others go by position (the rule of
    :func:`dlp_ros.conversions.twist_to_action`).

    Raises:
        ConfigError: the topic has fewer values than the model needs.
    """
    columns = []
    for i in range(dim):
        name = card_names[i] if i < len(card_names) else ''
        if name in topic_names:
            columns.append(topic_names.index(name))
        elif i < len(topic_names):
            columns.append(i)
        else:
            raise ConfigError(
                f'the model takes {dim} actions ({", ".join(card_names)}), the action topic '
                f'has {len(topic_names)} ({", ".join(topic_names)})'
            )
    return columns


class ActionSource:
    """The command in force at a stamp (zero-order hold of an action topic), as (A,) float32."""

    def __init__(self, actions: Actions | None, columns: list[int], dim: int) -> None:
        self.actions, self.columns, self.dim = actions, columns, dim

    def at(self, stamp: int) -> np.ndarray | None:
        if self.actions is None or not self.actions.times_ns.size:
            return None
        i = int(np.searchsorted(self.actions.times_ns, stamp, side='right')) - 1
        if i < 0:
            return None
        return self.actions.values[i, self.columns].astype(np.float32)


def camera_topic(bag: Bag, requested: str | None, card_topic: str | None = None) -> str:
    """``requested``, or else the model card's camera topic (the topic of the data the bundle
    was trained on) when the bag has it, or else the bag's only image topic, or else
    :data:`DEFAULT_TOPIC` when the bag has it. Several image topics and none of those: an error
    listing them."""
    if requested is not None:
        return requested
    found = sorted(t for t, m in bag.topics.items() if m in IMAGE_TYPES)
    if card_topic and card_topic in found:
        logger.info("camera: %s (the model card's camera topic)", card_topic)
        return card_topic
    if len(found) == 1:
        logger.info('camera: %s (the only image topic of the bag)', found[0])
        return found[0]
    if not found or DEFAULT_TOPIC in found:
        return DEFAULT_TOPIC  # Bag.connection names the bag's topics when it is missing
    raise ConfigError(f'bag {bag.path} has several image topics ({", ".join(found)}) and none '
                      f"is the model card's ({card_topic or 'none recorded'}) or "
                      f'{DEFAULT_TOPIC}: name one with --topic')  # fmt: skip


def card_camera_topic(card: ModelCard) -> str | None:
    """The camera topic of the data set the bundle's DLP was trained on, if its card says."""
    dlp = card.training.get('dlp') if isinstance(card.training, dict) else None
    dataset = dlp.get('dataset') if isinstance(dlp, dict) else None
    topic = dataset.get('topic') if isinstance(dataset, dict) else None
    return topic if isinstance(topic, str) and topic else None


def open_actions(
    bag: Bag, config: ReplayConfig, rt: DlpRuntime
) -> tuple[ActionSource, str | None]:
    """The action source for the model (None topic: zero actions)."""
    dyn = rt.card.dynamics
    topic = config.action_topic
    if not dyn.action_dim:
        if topic:
            logger.warning('the model takes no actions: ignoring --action-topic %s', topic)
        return ActionSource(None, [], 0), None
    if topic is None:
        found = sorted(t for t, m in bag.topics.items() if m in ACTION_TYPES)
        if len(found) != 1:
            logger.warning('the model takes %d actions (%s); %s: predicting with zero actions '
                           '(name one with --action-topic)', dyn.action_dim,
                           ', '.join(dyn.action_names),
                           'the bag has no action topic' if not found else
                           f'the bag has several ({", ".join(found)})')  # fmt: skip
            return ActionSource(None, [], dyn.action_dim), None
        topic = found[0]
        logger.info('actions from %s', topic)
    conn = bag.connection(topic, ACTION_TYPES, 'action')
    actions = bag.read_actions(conn)
    names = actions.names if actions.names else list(TWIST_NAMES)
    return ActionSource(actions, action_columns(names, dyn.action_names, dyn.action_dim),
                        dyn.action_dim), topic  # fmt: skip


def read_truth(bag: Bag, conn: Any, size: int, resize: str) -> tuple[TrueFrames, float]:
    """Pass 1: every decodable frame, resized to (S, S, 3) as the model sees it (``resize``:
    the card's mode; only those are kept), by header stamp; and the camera rate (Hz, from the
    median stamp interval)."""
    store = typestore()
    stamps: list[int] = []
    frames: list[np.ndarray] = []
    for _, raw in bag.messages(conn):
        try:
            msg = store.deserialize_cdr(raw, conn.msgtype)
            rgb = decode_message(conn.msgtype, msg)
        except (ImageError, ValueError, KeyError) as exc:
            logger.debug('pass 1: bad frame (counted in pass 2): %s', exc)
            continue
        stamps.append(stamp_ns(msg.header))
        frames.append(resize_frame(rgb, size, resize))
    order = np.argsort(np.array(stamps, dtype=np.int64), kind='stable')
    truth = TrueFrames([stamps[i] for i in order], [frames[i] for i in order], size, resize)
    fps = 1e9 / truth.period_ns if truth.period_ns > 0 else 10.0
    return truth, fps


def replay(config: ReplayConfig) -> dict[str, Any]:
    """Run the pipeline over the bag and write the outputs; returns the summary.

    Raises:
        EpisodeError: the bag cannot be read or has no usable camera frame.
        ModelCardError: the bundle is wrong.
    """
    config.check()
    check_out(config.out, config.overwrite, SUMMARY, 'replay output')
    rt = DlpRuntime.load(config.bundle, providers=config.providers, threads=config.threads)
    card = rt.card
    store = typestore()
    tmp = config.out.with_name(f'.{config.out.name}.partial')
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with Bag(config.bag) as bag:
            config = dataclasses.replace(
                config, topic=camera_topic(bag, config.topic, card_camera_topic(card))
            )
            conn = bag.connection(config.topic, IMAGE_TYPES, 'camera')
            truth, fps = read_truth(bag, conn, card.image.size, card.image.resize)
            if not truth.stamps.size:
                raise EpisodeError(f'bag {config.bag}: no decodable frame on {config.topic}')
            actions, action_topic = open_actions(bag, config, rt)
            storage = config.storage or bag.storage
            recorder = PerceptionRecorder(tmp, storage, truth, fps=fps, final=config.out)
            try:
                stats = _run_frames(bag, conn, rt, actions, recorder, config, store)
            except BaseException:
                recorder.abort()
                raise
        summary = {
            'tool': 'dlp-replay',
            'bag': str(config.bag),
            'topic': config.topic,
            'message_type': conn.msgtype,
            'bundle': str(config.bundle),
            'provider': rt.provider,
            'threads': config.threads,
            'horizon': config.horizon,
            'dt': card.dynamics.dt,
            'action_topic': action_topic,
            'storage': storage,
            'camera_fps': round(fps, 3),
            **stats,
            'dropped_frames': 0,
        }
        summary = recorder.close(summary)
        publish(tmp, config.out, config.overwrite, SUMMARY, 'replay output')
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def ood_summary(scores: list[float]) -> dict[str, Any]:
    """The out-of-distribution scores of the replay (every ``ood_every_n``-th frame, as the
    node computes them): median, max, and the frames above the node's ``ood_warn``, logged as
    the node would (one WARN for the whole replay)."""
    warn = float(PARAM_SPECS['ood_warn'].default)
    finite = [x for x in scores if math.isfinite(x)]
    if not finite:
        return {'frames_scored': 0, 'warn_above': warn}
    above = sum(x > warn for x in finite)
    if above:
        logger.warning('out of distribution: %d of %d scored frames above %g (max %.1f): the '
                       "model has not seen scenes like this bag's", above, len(finite), warn,
                       max(finite))  # fmt: skip
    return {
        'frames_scored': len(finite),
        'median': round(statistics.median(finite), 3),
        'max': round(max(finite), 3),
        'frames_above_warn': above,
        'warn_above': warn,
    }


def _run_frames(
    bag: Bag,
    conn: Any,
    rt: DlpRuntime,
    actions: ActionSource,
    recorder: PerceptionRecorder,
    config: ReplayConfig,
    store: Any,
) -> dict[str, Any]:
    """Pass 2: the node's per-frame work (:class:`~dlp_ros.pipeline.PerceptionPipeline`: the
    same tracker resets and action history); returns the frame counts and timings."""
    pipeline = PerceptionPipeline(rt, float(PARAM_SPECS['nms_iou'].default))  # the node's
    on = rt.card.tracking.on_threshold
    every = int(PARAM_SPECS['ood_every_n'].default)  # the node's default cadence
    frames_in, bad = 0, 0
    total, decode, encode, predict, ood = [], [], [], [], []
    for _, raw in bag.messages(conn):
        frames_in += 1
        t0 = time.perf_counter()
        try:
            msg = store.deserialize_cdr(raw, conn.msgtype)
            rgb = decode_message(conn.msgtype, msg)
            t1 = time.perf_counter()
            stamp = stamp_ns(msg.header)
            seen = pipeline.step(rgb, stamp, actions.at(stamp), msg.header)
        except (ImageError, ValueError, KeyError) as exc:
            bad += 1
            logger.warning('frame %d on %s: dropped: %s', frames_in - 1, config.topic, exc)
            continue
        if (frames_in - bad - 1) % every == 0:
            ood.append(ood_score(rt.recon_mse(seen.x, seen.frame), rt.card.validation.recon_mse))
        snap = pipeline.snapshot(config.horizon)
        assert snap is not None  # a frame was just processed
        forecast = pipeline.predict(snap, frames=config.frames)
        ms = [1e3 * (t1 - t0) + seen.preprocess_ms, seen.encode_ms, forecast.predict_ms]
        decode.append(ms[0])
        encode.append(ms[1])
        predict.append(ms[2])
        total.append(sum(ms))
        timing = ms if config.stamp_timings else [0.0, 0.0, 0.0]
        width, height = seen.size
        view = (width, height, rt.card.image.resize)  # particles in input pixels in every mode
        particles = particle_array_msg(
            store, msg.header, seen.frame.message_fields(*view, on), timing[0], timing[1]
        )
        recorder.add_particles(
            particles, bytes(store.serialize_cdr(particles, OUTPUT_TOPICS[PARTICLES_TOPIC])), rgb
        )
        steps = [p.message_fields(*view, on) for p in forecast.steps]
        prediction = prediction_msg(
            store, msg.header, forecast.dt, steps, forecast.images, timing[2]
        )
        recorder.add_prediction(
            prediction, bytes(store.serialize_cdr(prediction, OUTPUT_TOPICS[PREDICTION_TOPIC]))
        )
    if frames_in == bad:
        raise EpisodeError(f'bag {config.bag}: none of the {frames_in} frames on {config.topic} '
                           'could be decoded')  # fmt: skip
    return {
        'frames_in': frames_in,
        'bad_frames': bad,
        'ood': ood_summary(ood),
        'latency_ms': {
            'what': 'runtime per frame: decode + encode + predict and render',
            **percentiles(total),
        },
        'stages_ms': {
            'decode': percentiles(decode),
            'encode': percentiles(encode),
            'predict': percentiles(predict),
        },
    }


# ----------------------------------------------------------------------------- dlp-replay
def main(argv: list[str] | None = None) -> int:
    """The ``dlp-replay`` program."""
    return main_of('dlp-replay', sys.modules[__name__], argv)


if __name__ == '__main__':
    sys.exit(main())
