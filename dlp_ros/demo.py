"""The demo over real ROS 2 topics: a recorded episode played into the perception node, its
outputs recorded.

```
python -m dlp_ros.demo --bag BAG --out OUT [--bundle DIR] [--topic /camera/image_raw]
    [--action-topic /tabletop/command] [--horizon 10] [--node-arg NAME:=VALUE ...]
```

1. Starts the node (``python -m dlp_ros.node``) as its own process on ``--bundle`` (default: the
   installed share/dlp_ros/bundles/tabletop64), with ``prediction_rate`` above the camera rate (a
   prediction per frame), ``publish_frames`` on and no frame-rate limit, the action topic when
   the bag has one; its log goes to OUT/node.log.
2. Plays the bag's camera messages (and the action topic) on their topics at the recorded rate
   (the first frame is sent alone and awaited: the model's warm-up), **stamped with the time of
   publishing**: so end-to-end latency = receive time of /dlp/particles minus its header stamp
   (the node copies the input header), on one clock. The player keeps a map back to the bag's
   stamps.
3. Subscribes to /dlp/particles, /dlp/prediction and /diagnostics. Afterwards every received
   message is stamped back with the bag's time (prediction steps and frames by the same shift)
   and written with :class:`dlp_ros.offline.perception_outputs.PerceptionRecorder`: OUT/bag
   (rosbag2, the input's storage), OUT/overlay.mp4, OUT/prediction_strip.png, OUT/summary.json
   (frames in and out, dropped frames counted here and as the node reports them, latency
   p50/p99, prediction PSNR per step against the bag's true next frames); the summary is
   printed.

DDS stays on loopback (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST) on a ROS_DOMAIN_ID of its own
(``$ROS_DOMAIN_ID`` if set, else one derived from the pid). rclpy is used here, never in dlp_ros's
runtime modules.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dlp_ros import dds_shm
from dlp_ros.errors import ConfigError, DlpError, EpisodeError, ImageError
from dlp_ros.model_card import load_model_card
from dlp_ros.offline.bag_reader import (
    ACTION_TYPES,
    IMAGE_TYPES,
    Bag,
    decode_frame,
    header_stamp_ns,
)
from dlp_ros.offline.cli import main_of
from dlp_ros.offline.perception_outputs import (
    PARTICLES_TOPIC,
    PREDICTION_TOPIC,
    PerceptionRecorder,
    TrueFrames,
    format_summary,
    percentiles,
    stamp_ns,
)

logger = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
DIAGNOSTICS_TOPIC = '/diagnostics'
LEVELS = {0: 'OK', 1: 'WARN', 2: 'ERROR', 3: 'STALE'}  # diagnostic_msgs/DiagnosticStatus
NS = 1_000_000_000
# ROS type name -> (module, class) of the rclpy message classes the player can publish.
PLAYABLE = {
    'sensor_msgs/msg/Image': ('sensor_msgs.msg', 'Image'),
    'sensor_msgs/msg/CompressedImage': ('sensor_msgs.msg', 'CompressedImage'),
    'geometry_msgs/msg/TwistStamped': ('geometry_msgs.msg', 'TwistStamped'),
}


# ----------------------------------------------------------------------------- environment
def ros_environment(domain_id: int | None = None) -> dict[str, str]:
    """os.environ with loopback-only discovery and a ROS_DOMAIN_ID (given, ``$ROS_DOMAIN_ID``,
    else 101 + pid % 100: apart from the tests' 1..100)."""
    env = dict(os.environ)
    if domain_id is None:
        domain_id = int(env.get('ROS_DOMAIN_ID') or 101 + os.getpid() % 100)
    if not 0 <= domain_id <= 232:
        raise ConfigError(f'ROS_DOMAIN_ID must be in 0..232, got {domain_id}')
    env['ROS_DOMAIN_ID'] = str(domain_id)
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    return env


def message_class(msgtype: str) -> type:
    """The rclpy class of a ROS type name the player supports."""
    import importlib

    if msgtype not in PLAYABLE:
        raise EpisodeError(f'cannot play {msgtype}; supported: {", ".join(PLAYABLE)}')
    module, name = PLAYABLE[msgtype]
    return getattr(importlib.import_module(module), name)


def set_stamp(header: Any, stamp: int) -> None:
    """Set an rclpy std_msgs/Header's stamp to ``stamp`` (ns)."""
    from builtin_interfaces.msg import Time

    sec, nanosec = divmod(int(stamp), NS)
    header.stamp = Time(sec=sec, nanosec=nanosec)


# ----------------------------------------------------------------------------- the node process
class NodeProcess:
    """The perception node in a child process (``python -m dlp_ros.node``), log to a file.

    Args:
        params: ROS parameters (name -> value, written as ``-p name:=value``).
        remaps: topic remappings (``-r from:=to``).
        env: the child's environment (:func:`ros_environment`).
        log: file receiving the node's stdout and stderr.
        command: the node program (default: this interpreter, ``-m dlp_ros.node`` run from the
            checkout; the tests give the installed ``lib/dlp_ros/perception_node``).
        final_log: where ``log`` will be once the caller's run completes (the demo writes into
            a temporary directory and renames it): the path the start message names.
    """

    def __init__(
        self,
        params: dict[str, Any],
        remaps: dict[str, str],
        env: dict[str, str],
        log: Path,
        command: list[str] | None = None,
        final_log: Path | None = None,
    ) -> None:
        args = [*(command or [sys.executable, '-m', 'dlp_ros.node']), '--ros-args']
        for name, value in params.items():
            args += ['-p', f'{name}:={param_text(value)}']
        for src, dst in remaps.items():
            args += ['-r', f'{src}:={dst}']
        self.args, self.log = args, Path(log)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = self.log.open('wb')
        # cwd = the checkout, so that `-m dlp_ros.node` runs this checkout's node
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self._log_file, stderr=subprocess.STDOUT)  # fmt: skip
        where = f'{final_log} (at {self.log} until the run completes)' if final_log else self.log
        logger.info('node started (pid %d), log %s', self.proc.pid, where)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        text = self.log.read_text(errors='replace') if self.log.exists() else ''
        return '\n'.join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        """Raise DlpError with the node's last log lines if it has exited."""
        if not self.alive():
            raise DlpError(f'the perception node exited with code {self.proc.returncode}; '
                           f'{self.log}:\n{self.log_tail()}')  # fmt: skip

    def stop(self) -> int | None:
        """SIGINT, then SIGTERM, then SIGKILL (10 s, 5 s); returns the exit code."""
        code = stop_process(self.proc, (10.0, 5.0, 5.0))
        self._log_file.close()
        return code


def stop_process(proc: subprocess.Popen, graces: tuple[float, float, float]) -> int | None:
    """Stop a ROS process: SIGINT, then SIGTERM, then SIGKILL, each followed by its grace period
    in seconds (rclpy nodes shut down cleanly on SIGINT); returns the exit code. A process that
    had to be killed leaves its Fast DDS shared-memory files behind: they are removed."""
    killed = False
    for sig, grace in zip((signal.SIGINT, signal.SIGTERM, signal.SIGKILL), graces, strict=True):
        if proc.poll() is not None:
            break
        proc.send_signal(sig)
        killed = sig == signal.SIGKILL
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            logger.warning('pid %d did not stop on %s', proc.pid, sig.name)
    if killed:
        dds_shm.clean_stale()
    return proc.poll()


# ----------------------------------------------------------------------------- rclpy side
@dataclass
class Received:
    """Messages received with their receive times (time.time_ns), in arrival order."""

    particles: list[tuple[int, Any]] = field(default_factory=list)
    predictions: list[tuple[int, Any]] = field(default_factory=list)
    diagnostics: dict[str, str] = field(default_factory=dict)  # the node's latest values
    lock: threading.Lock = field(default_factory=threading.Lock)


class RosSession:
    """An rclpy context with one node, spun by a background thread.

    ``listen`` subscribes to the node's outputs (callbacks only note the receive time and keep
    the message); ``publisher`` makes publishers for the player.
    """

    def __init__(self, env: dict[str, str], name: str = 'dlp_demo') -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        self.context = Context()
        rclpy.init(context=self.context, domain_id=int(env['ROS_DOMAIN_ID']))
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.received = Received()
        self.subscriptions: list[Any] = []
        self._thread = threading.Thread(target=self._spin, name='dlp_demo_spin', daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        with contextlib.suppress(ExternalShutdownException, KeyboardInterrupt):
            self.executor.spin()

    def listen(self, particles: bool = True, predictions: bool = True) -> None:
        """Subscribe to /dlp/particles, /dlp/prediction (reliable) and /diagnostics."""
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        from dlp_ros.msg import ParticleArray, Prediction

        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        got = self.received

        def keep(store: list[tuple[int, Any]]) -> Callable[[Any], None]:
            def callback(msg: Any) -> None:
                now = time.time_ns()
                with got.lock:
                    store.append((now, msg))

            return callback

        def diagnostics(msg: Any) -> None:
            for status in msg.status:
                if 'dlp' in status.name:
                    level = status.level[0] if isinstance(status.level, bytes) else status.level
                    with got.lock:
                        got.diagnostics = {kv.key: kv.value for kv in status.values}
                        got.diagnostics['status'] = f'{LEVELS.get(level, level)}: {status.message}'

        if particles:
            self.subscriptions.append(self.node.create_subscription(
                ParticleArray, PARTICLES_TOPIC, keep(got.particles), reliable))  # fmt: skip
        if predictions:
            self.subscriptions.append(self.node.create_subscription(
                Prediction, PREDICTION_TOPIC, keep(got.predictions), reliable))  # fmt: skip
        self.subscriptions.append(
            self.node.create_subscription(DiagnosticArray, DIAGNOSTICS_TOPIC, diagnostics, 10)
        )

    def poll(self, ready: Callable[[], bool], timeout: float,
             node: NodeProcess | None = None) -> bool:  # fmt: skip
        """Check ``ready`` every 20 ms for up to ``timeout`` s; whether it held.

        Raises:
            DlpError: the node process exited meanwhile.
        """
        deadline = time.monotonic() + timeout
        while not ready():
            if node is not None:
                node.check_alive()
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def wait_for(self, what: str, ready: Callable[[], bool], timeout: float,
                 node: NodeProcess | None = None) -> None:  # fmt: skip
        """:meth:`poll`, raising DlpError naming ``what`` after ``timeout`` s."""
        if not self.poll(ready, timeout, node):
            tail = f'; node log:\n{node.log_tail()}' if node is not None else ''
            raise DlpError(f'timed out after {timeout:g} s waiting for {what}{tail}')

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        self.context.try_shutdown()
        self._thread.join(timeout=5.0)


# ----------------------------------------------------------------------------- the player
@dataclass
class Episode:
    """The bag's messages to play, in bag order, and its camera frames."""

    messages: list[tuple[int, str, bytes]]  # (bag time ns, topic, CDR), camera and actions
    camera_type: str
    action_type: str | None
    frames: dict[int, np.ndarray]  # header stamp -> (H, W, 3) RGB camera frame
    storage: str
    fps: float


def read_episode(bag_dir: Path, topic: str, action_topic: str | None) -> Episode:
    """Everything the demo plays from a bag, in memory (one episode)."""
    with Bag(bag_dir) as bag:
        cam = bag.connection(topic, IMAGE_TYPES, 'camera')
        messages = [(t, topic, bytes(raw)) for t, raw in bag.messages(cam)]
        frames = {}  # the decodable ones (all are played: the node counts the bad ones)
        for _, _, raw in messages:
            try:
                frames[header_stamp_ns(raw)] = decode_frame(cam.msgtype, raw)
            except ImageError as exc:
                logger.warning('a frame of %s cannot be decoded (played anyway): %s', bag_dir, exc)
        action_type = None
        if action_topic:
            act = bag.connection(action_topic, ACTION_TYPES, 'action')
            message_class(act.msgtype)  # can it be played?
            action_type = act.msgtype
            # at equal bag times the command goes first: the node holds it for that frame
            messages += [(t, action_topic, bytes(raw)) for t, raw in bag.messages(act)]
        storage = bag.storage
    if not frames:
        raise EpisodeError(f'bag {bag_dir} has no message on {topic}')
    messages.sort(key=lambda m: (m[0], m[1] == topic))
    stamps = np.array(sorted(frames), dtype=np.int64)
    period = float(np.median(np.diff(stamps))) if stamps.size > 1 else 1e8
    return Episode(messages, cam.msgtype, action_type, frames, storage, NS / period)


@dataclass
class Played:
    """What the player published: camera stamps, published -> bag."""

    published_to_bag: dict[int, int] = field(default_factory=dict)
    frames: list[int] = field(default_factory=list)  # bag stamps of the camera frames played
    warmup: set[int] = field(default_factory=set)  # published stamps of the first frame's tries
    probes: set[int] = field(default_factory=set)  # published stamps of lockstep probe frames


def play(session: RosSession, episode: Episode, topic: str, action_topic: str | None,
         node: NodeProcess | None, warmup_timeout: float = 60.0,
         lockstep: bool = False) -> Played:  # fmt: skip
    """Publish the episode, every header stamped with the publish time.

    Real time (default): at the recorded rate, best effort. The first camera frame is the
    warm-up: it is sent (again every 2 s: discovery may not have matched both ends yet and the
    camera topic is best effort) until its particles come back; the rest follow at the
    recorded rate.

    ``lockstep``: reproducible on a busy machine. Reliable camera topic; a probe frame (stamped
    a day ahead) is sent until its particles come back, so both ends are matched; the first
    frame then goes back in time, which makes the node start tracking afresh. Each frame is
    sent once the particles of the one before came back, right after the commands up to its
    time: one participant delivers in order and the node runs a command waiting beside a frame
    first, so every frame is processed once, with its command.
    """
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from rclpy.serialization import deserialize_message

    cam_cls = message_class(episode.camera_type)
    cam_qos = (
        QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        if lockstep
        else qos_profile_sensor_data
    )
    cam_pub = session.node.create_publisher(cam_cls, topic, cam_qos)
    act_pub, act_cls = None, None
    if action_topic and episode.action_type:
        act_cls = message_class(episode.action_type)
        act_pub = session.node.create_publisher(act_cls, action_topic, 10)
    session.wait_for(f'the node to subscribe to {topic}',
                     lambda: cam_pub.get_subscription_count() > 0, 120.0, node)  # fmt: skip
    for sub in session.subscriptions[:2]:
        session.wait_for(f'the node to publish {sub.topic_name}',
                         lambda s=sub: s.get_publisher_count() > 0, 30.0, node)  # fmt: skip
    if act_pub is not None:
        session.wait_for(f'the node to subscribe to {action_topic}',
                         lambda: act_pub.get_subscription_count() > 0, 30.0, node)  # fmt: skip
    played = Played()
    if lockstep:
        _lockstep(session, episode, topic, cam_pub, act_pub, cam_cls, act_cls, node, played,
                  warmup_timeout)  # fmt: skip
        return played
    start_wall, start_bag, first_done = 0.0, 0, False
    for bag_ns, msg_topic, raw in episode.messages:
        is_camera = msg_topic == topic
        if first_done:  # at the recorded rate after the first frame
            delay = start_wall + (bag_ns - start_bag) / NS - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        msg = deserialize_message(raw, cam_cls if is_camera else act_cls)
        original = stamp_ns(msg.header)
        if not is_camera:
            set_stamp(msg.header, time.time_ns())
            if act_pub is not None:
                act_pub.publish(msg)
            continue
        played.frames.append(original)
        deadline = time.monotonic() + warmup_timeout
        while True:
            now = time.time_ns()
            set_stamp(msg.header, now)
            played.published_to_bag[now] = original
            cam_pub.publish(msg)
            if first_done:
                break
            played.warmup.add(now)
            if session.poll(lambda: bool(session.received.particles), 2.0, node):
                break
            if time.monotonic() > deadline:
                raise DlpError(f'no particles came back for the first frame within '
                               f'{warmup_timeout:g} s; node log:\n'
                               f'{node.log_tail() if node else ""}')  # fmt: skip
        if not first_done:
            start_wall, start_bag, first_done = time.monotonic(), bag_ns, True
    return played


def _particles_of(session: RosSession, stamp: int) -> bool:
    with session.received.lock:
        return any(stamp_ns(m.header) == stamp for _, m in session.received.particles)


def _lockstep(session: RosSession, episode: Episode, topic: str, cam_pub: Any, act_pub: Any,
              cam_cls: type, act_cls: type | None, node: NodeProcess | None, played: Played,
              timeout: float) -> None:  # fmt: skip
    """The lockstep player of :func:`play`."""
    from rclpy.serialization import deserialize_message

    def fail(what: str) -> DlpError:
        return DlpError(f'{what} within {timeout:g} s (lockstep); node log:\n'
                        f'{node.log_tail() if node else ""}')  # fmt: skip

    first = next(raw for _, t, raw in episode.messages if t == topic)
    probe = deserialize_message(first, cam_cls)
    stamp = time.time_ns() + 86_400 * NS  # a day ahead: the first frame goes back in time
    set_stamp(probe.header, stamp)
    played.probes.add(stamp)
    deadline = time.monotonic() + timeout
    while not _particles_of(session, stamp):
        if time.monotonic() > deadline:
            raise fail('no particles came back for the probe frame')
        cam_pub.publish(probe)
        session.poll(lambda: _particles_of(session, stamp), 2.0, node)
    for _, msg_topic, raw in episode.messages:
        if msg_topic != topic:
            if act_pub is not None and act_cls is not None:
                msg = deserialize_message(raw, act_cls)
                set_stamp(msg.header, time.time_ns())
                act_pub.publish(msg)
            continue
        msg = deserialize_message(raw, cam_cls)
        played.frames.append(stamp_ns(msg.header))
        now = time.time_ns()
        set_stamp(msg.header, now)
        played.published_to_bag[now] = played.frames[-1]
        cam_pub.publish(msg)
        if not session.poll(lambda t=now: _particles_of(session, t), timeout, node):
            raise fail(f'no particles came back for frame {len(played.frames) - 1}')


def wait_for_outputs(received: Received, frames: int, timeout: float) -> None:
    """Wait until particles and predictions of every frame came, or ``timeout`` s passed
    without a new message (the rest counts as dropped)."""
    last, seen = time.monotonic(), -1
    while time.monotonic() - last < timeout:
        with received.lock:
            count = len(received.particles) + len(received.predictions)
        if count >= 2 * frames:
            return
        if count != seen:
            last, seen = time.monotonic(), count
        time.sleep(0.05)


# ----------------------------------------------------------------------------- recording
def restamp(msg: Any, published_to_bag: dict[int, int]) -> int | None:
    """Stamp a received ParticleArray or Prediction back with the bag's time (the steps and
    frames of a prediction by the same shift); returns the shift (ns), None if unknown."""
    published = stamp_ns(msg.header)
    original = published_to_bag.get(published)
    if original is None:
        return None
    shift = original - published
    headers = [msg.header]
    headers += [s.header for s in getattr(msg, 'steps', [])]
    headers += [f.header for f in getattr(msg, 'frames', [])]
    for header in headers:
        set_stamp(header, stamp_ns(header) + shift)
    return shift


def record(out: Path, final: Path, episode: Episode, played: Played, received: Received,
           size: int, resize: str) -> tuple[PerceptionRecorder, dict[str, Any]]:  # fmt: skip
    """Write the received messages (stamped back) with the recorder; latency figures (``size``,
    ``resize``: the model card's image size and mode, for the true frames)."""
    from rclpy.serialization import serialize_message

    stamps = sorted(episode.frames)
    truth = TrueFrames(stamps, [episode.frames[s] for s in stamps], size, resize)
    recorder = PerceptionRecorder(out, episode.storage, truth, inputs=episode.frames,
                                  fps=episode.fps, final=final)  # fmt: skip
    latency, first_latency, stages = [], None, {'decode': [], 'encode': []}
    unknown, duplicates, got_frames = 0, 0, set()
    for recv_ns, msg in received.particles:
        published = stamp_ns(msg.header)
        if published in played.probes:
            continue
        if restamp(msg, played.published_to_bag) is None:
            unknown += 1
            continue
        original = stamp_ns(msg.header)
        if original in got_frames:  # a second warm-up try of the first frame
            duplicates += 1
            continue
        got_frames.add(original)
        ms = (recv_ns - published) / 1e6
        if published in played.warmup:
            first_latency = ms
        else:
            latency.append(ms)
        stages['decode'].append(float(msg.decode_ms))
        stages['encode'].append(float(msg.encode_ms))
        recorder.add_particles(msg, bytes(serialize_message(msg)))
    pred_latency, predict_ms, predicted = [], [], set()
    for recv_ns, msg in received.predictions:
        published = stamp_ns(msg.header)
        if published in played.probes:
            continue
        if restamp(msg, played.published_to_bag) is None:
            unknown += 1
            continue
        if stamp_ns(msg.header) in predicted:
            duplicates += 1
            continue
        predicted.add(stamp_ns(msg.header))
        pred_latency.append((recv_ns - published) / 1e6)
        predict_ms.append(float(msg.predict_ms))
        recorder.add_prediction(msg, bytes(serialize_message(msg)))
    figures = {
        'frames_in': len(played.frames),
        'dropped_frames': len(set(played.frames) - got_frames),
        'warmup_tries': len(played.warmup),
        'latency_ms': {
            'what': 'end to end: receive time of /dlp/particles - header stamp (= publish time '
            'of the frame), first frame (warm-up) excluded',
            **percentiles(latency),
        },
        'first_frame_latency_ms': None if first_latency is None else round(first_latency, 3),
        'prediction_latency_ms': percentiles(pred_latency),
        'node_stages_ms': {
            'decode': percentiles(stages['decode']),
            'encode': percentiles(stages['encode']),
            'predict': percentiles(predict_ms),
        },
        'messages_with_unknown_stamps': unknown,
        'duplicate_messages': duplicates,
    }
    return recorder, figures


# ----------------------------------------------------------------------------- the demo
def param_text(value: Any) -> str:
    """A parameter value as ``-p name:=TEXT`` takes it (YAML: booleans lower case, '' quoted)."""
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, str):
        return value or "''"
    return repr(value)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add('--bag', type=Path, required=True, help='episode to play (rosbag2 directory)')
    add('--out', type=Path, required=True, help='output directory (replaced if it exists)')
    add(
        '--bundle',
        type=Path,
        default=None,
        help='model bundle (default: share/dlp_ros/bundles/tabletop64 of the install)',
    )
    add('--topic', default='/camera/image_raw', help='camera topic in the bag and on ROS')
    add(
        '--action-topic',
        default=None,
        help="TwistStamped commands to play and to feed the node (default: the bag's "
        '/<scene>/command when the model takes actions)',
    )
    add('--horizon', type=int, default=10, help='predicted steps (node parameter horizon)')
    add('--providers', default='auto', help='node parameter providers (auto, cpu, cuda, ...)')
    add('--threads', type=int, default=1,
        help='node parameter threads (onnxruntime intra-op threads; default 1: small models '
             'on busy cores are faster on one thread than on all)')  # fmt: skip
    add(
        '--node-arg',
        action='append',
        default=[],
        metavar='NAME:=VALUE',
        help='more node parameters (repeatable)',
    )
    add('--startup-timeout', type=float, default=120.0, help='s to wait for the node')  # fmt: skip
    add(
        '--lockstep',
        action='store_true',
        help='reproducible on a busy machine: reliable camera topic, each frame sent once the '
        "one before was processed (not at the bag's rate); the recording equals dlp-replay's",
    )


def node_params(args: argparse.Namespace, bundle: Path, fps: float,
                action_topic: str | None) -> dict[str, Any]:  # fmt: skip
    """The node's parameters for the demo: a prediction with frames for every camera frame."""
    params: dict[str, Any] = {
        'model_bundle': str(bundle),
        'horizon': args.horizon,
        'prediction_rate': float(round(2 * fps, 3)),  # above the camera rate: one per frame
        'publish_frames': True,
        'frames_rate': 0.0,  # no limit
        'providers': args.providers,
        'threads': args.threads,
        'action_topic': action_topic or '',
        'input_reliability': 'reliable' if args.lockstep else 'best_effort',
    }
    for item in args.node_arg:
        name, sep, value = item.partition(':=')
        if not sep or not name:
            raise ConfigError(f'--node-arg {item!r}: expected NAME:=VALUE')
        params[name] = value
    return params


def run(args: argparse.Namespace) -> int:
    from dlp_ros.node import default_bundle  # rclpy: imported when the demo runs

    found = args.bundle or default_bundle()  # '' when none is installed
    if not found or not (Path(found) / 'model_card.yaml').is_file():
        raise ConfigError(f'no model bundle at {found or "(none installed)"} (pass --bundle DIR: '
                          'python -m dlp_training export writes one)')  # fmt: skip
    bundle = Path(found)
    card = load_model_card(bundle, check_graphs=False)
    action_topic = args.action_topic
    if action_topic and not card.dynamics.action_dim:
        logger.info('the model takes no actions: %s is not played', action_topic)
        action_topic = None
    with Bag(args.bag) as bag:
        if action_topic is None and card.dynamics.action_dim:
            found = sorted(
                t for t, m in bag.topics.items() if m == 'geometry_msgs/msg/TwistStamped'
            )
            action_topic = found[0] if len(found) == 1 else None
    episode = read_episode(args.bag, args.topic, action_topic)
    env = ros_environment()
    dds_shm.clean_stale()  # what killed ROS processes left in /dev/shm
    out: Path = args.out
    tmp = out.with_name(f'.{out.name}.partial')
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    params = node_params(args, Path(bundle), episode.fps, action_topic)
    node = NodeProcess(params, {'image': args.topic}, env, tmp / 'node.log',
                       final_log=out / 'node.log')  # fmt: skip
    session = None
    try:
        session = RosSession(env)
        session.listen()
        played = play(session, episode, args.topic, action_topic, node, lockstep=args.lockstep)
        wait_for_outputs(session.received, len(played.frames), timeout=5.0)
        time.sleep(1.1)  # one more /diagnostics message (1 Hz) with the final counts
    finally:
        node.stop()
        if session is not None:
            session.close()
    received = session.received
    recorder, figures = record(tmp, out, episode, played, received, card.image.size,
                               card.image.resize)  # fmt: skip
    summary = {
        'tool': 'dlp_ros.demo (dlp_ros/demo.py)',
        'bag': str(args.bag),
        'topic': args.topic,
        'action_topic': action_topic,
        'bundle': str(bundle),
        'node_parameters': params,
        'ros_domain_id': int(env['ROS_DOMAIN_ID']),
        'camera_fps': round(episode.fps, 3),
        **figures,
        'node_diagnostics': received.diagnostics,
        'node_log': 'node.log',
    }
    summary = recorder.close(summary)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    print(format_summary(summary))  # noqa: T201
    print(f'  node log: {out / "node.log"}')  # noqa: T201
    return 0


def main(argv: list[str] | None = None) -> int:
    """The ``python -m dlp_ros.demo`` program."""
    return main_of('python -m dlp_ros.demo', sys.modules[__name__], argv)


if __name__ == '__main__':
    sys.exit(main())
