"""The perception node: camera frames in, Deep Latent Particles and their predicted future out.

A lifecycle node (``perception_node``), run by ``ros2 run dlp_ros perception_node`` or the
installed ``lib/dlp_ros/perception_node``:

- configure: reads and validates the parameters (declared with descriptions and ranges at
  start-up, see :data:`dlp_ros.node_support.PARAMS`), loads the model bundle, and creates the
  entities: subscribes to ``action_topic`` (if any), then to ``image`` (sensor_msgs/Image) or,
  with image_transport compressed, to the remapped ``image`` + ``/compressed`` (CompressedImage;
  sensor-data QoS, depth 1); lifecycle publishers of ``dlp/particles``, ``dlp/prediction``,
  ``dlp/prediction/image``, ``dlp/markers`` (relative: in the node's namespace), ``~/overlay``
  and ``/diagnostics``; serves ``~/predict``, ``~/predict_batch`` (B candidate futures in one
  batched rollout) and ``~/render``. A bad bundle or parameter fails the transition with a
  logged reason; the process stays up, except at an autostart with
  ``exit_on_configure_failure`` (exit status 2).
- activate: starts the worker threads and enables the publishers. While not active, the
  subscriptions ignore what arrives and the services refuse with a reason.
- deactivate stops them again; cleanup destroys the entities and releases the model.

Parameters marked live in :data:`dlp_ros.node_support.PARAMS` take a change at run time at once;
a change of the others is refused with the reason while the node is configured.

Frames are processed off the executor on a worker thread: the subscription callback only leaves
the message in a one-slot mailbox, so the latest frame wins and the replaced ones are counted as
dropped. Bad frames are logged (throttled), counted on /diagnostics and skipped. The per-frame
work is :class:`dlp_ros.pipeline.PerceptionPipeline`, the same as ``dlp-replay``'s. Python log
records of the dlp_ros modules (and Python warnings) reach /rosout through the node's logger.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import TwistStamped
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    SetParametersResult,
)
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.event_handler import QoSMessageLostInfo, SubscriptionEventCallbacks
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.impl.rcutils_logger import RcutilsLogger
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.lifecycle.publisher import LifecyclePublisher
from rclpy.parameter import Parameter
from rclpy.publisher import Publisher
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.service import Service
from rclpy.subscription import Subscription
from rclpy.timer import Timer
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header
from visualization_msgs.msg import MarkerArray

from dlp_ros import conversions
from dlp_ros.bundle_paths import shipped_bundle
from dlp_ros.camera_input import (
    InputWatch,
    OodWarning,
    ViewLog,
    check_resize_mode,
    no_frames_reason,
    other_transport_topic,
    subscribed_topic,
)
from dlp_ros.errors import ConfigError, DlpError, ImageError
from dlp_ros.executor import PoolExecutor
from dlp_ros.markers import particle_markers
from dlp_ros.msg import ParticleArray, Prediction
from dlp_ros.node_process import run_until_signal
from dlp_ros.node_support import (
    DEFAULT_BUNDLE,
    PARAM_SPECS,
    PARAMS,
    STARTUP,
    LatencyWindow,
    Mailbox,
    NodeConfig,
    ParamSpec,
    RateMeter,
    SequenceGaps,
    Throttle,
    image_step_index,
    ood_score,
)
from dlp_ros.overlay import draw_overlay
from dlp_ros.pipeline import (
    PerceptionPipeline,
    Snapshot,
    actions_from_request,
    batch_actions_from_request,
)
from dlp_ros.runtime import DlpRuntime
from dlp_ros.srv import Predict, PredictBatch, Render

NODE_NAME = 'perception_node'
# Output topics, relative: resolved in the node's namespace (/dlp/particles in the root one), so
# that nodes of two cameras in two namespaces do not collide; /diagnostics is global by convention.
PARTICLES_TOPIC = 'dlp/particles'
PREDICTION_TOPIC = 'dlp/prediction'
PREDICTION_IMAGE_TOPIC = 'dlp/prediction/image'
MARKERS_TOPIC = 'dlp/markers'
DIAGNOSTICS_TOPIC = '/diagnostics'
DIAGNOSTICS_PERIOD_S = 1.0
LOG_PERIOD_S = 5.0  # throttle of the bad-frame and error logs
MAX_HORIZON = 1000
SUCCESS = TransitionCallbackReturn.SUCCESS
FAILURE = TransitionCallbackReturn.FAILURE
# Python loggers whose records go to the node's logger (and so to /rosout) instead of stderr:
# the runtime modules, and Python warnings (logging.captureWarnings, in main).
FORWARDED_LOGGERS = ('dlp_ros', 'py.warnings')


def default_bundle() -> str:
    """share/dlp_ros/bundles/tabletop64 of the package in the ament index (colcon, apt); without
    one, the shipped bundle of a pip-installed wheel or a checkout ('' when there is none)."""
    try:
        from ament_index_python.packages import get_package_share_directory

        return str(Path(get_package_share_directory('dlp_ros')) / 'bundles' / DEFAULT_BUNDLE)
    except Exception:  # noqa: BLE001 - PackageNotFoundError, or no ament index at all
        shipped = shipped_bundle(DEFAULT_BUNDLE)
        return str(shipped) if shipped is not None else ''


def descriptor(spec: ParamSpec) -> ParameterDescriptor:
    """The ROS ParameterDescriptor of a parameter: description, range, allowed strings."""
    desc = ParameterDescriptor(name=spec.name, description=spec.full_description)
    if spec.choices:
        desc.additional_constraints = 'one of: ' + ', '.join(spec.choices)
    is_number = isinstance(spec.default, int | float) and not isinstance(spec.default, bool)
    if is_number and spec.low is not None and spec.high is not None:
        if isinstance(spec.default, int):
            desc.integer_range = [
                IntegerRange(from_value=int(spec.low), to_value=int(spec.high), step=0)
            ]
        else:
            desc.floating_point_range = [
                FloatingPointRange(from_value=float(spec.low), to_value=float(spec.high), step=0.0)
            ]
    desc.read_only = spec.applies == STARTUP
    return desc


@dataclass
class Stats:
    """Counters of the node, shared by the executor and the worker thread (under ``lock``).

    Every frame the camera sent is either lost in DDS (``gaps.lost``: transport, or replaced
    in the subscription's queue before the executor took it; ``lost_transport`` is the part the
    middleware reports itself) or ``received`` by the callback; every received frame is then
    ``processed``, ``dropped`` (replaced in the mailbox before the worker took it), ``bad``,
    an error, or still in the mailbox.
    """

    received: int = 0
    processed: int = 0
    dropped: int = 0
    lost_transport: int = 0
    gaps: SequenceGaps = field(default_factory=SequenceGaps)
    bad: int = 0
    errors: int = 0
    predictions: int = 0
    last_bad: str = ''
    last_error: str = ''
    ood: float = math.nan
    input_rate: RateMeter = field(default_factory=RateMeter)  # frames sent (received + lost)
    callback_rate: RateMeter = field(default_factory=RateMeter)  # frames received
    output_rate: RateMeter = field(default_factory=RateMeter)
    latency: LatencyWindow = field(default_factory=LatencyWindow)
    lock: threading.Lock = field(default_factory=threading.Lock)


class ConfigureFailed(DlpError):
    """The configure at start-up failed and ``exit_on_configure_failure`` is on (exit 2)."""


class RosLogHandler(logging.Handler):
    """Forwards Python log records to a node's logger, which prints them and sends them to
    /rosout; the record's logger name leads the message (``dlp_ros.pipeline: ...``)."""

    def __init__(self, logger: RcutilsLogger) -> None:
        super().__init__()
        self._ros = logger

    def emit(self, record: logging.LogRecord) -> None:
        # one call site per severity: rclpy refuses a severity change at one call site
        try:
            text = f'{record.name}: {self.format(record)}'
            if record.levelno >= logging.CRITICAL:
                self._ros.fatal(text)
            elif record.levelno >= logging.ERROR:
                self._ros.error(text)
            elif record.levelno >= logging.WARNING:
                self._ros.warning(text)
            elif record.levelno >= logging.INFO:
                self._ros.info(text)
            else:
                self._ros.debug(text)
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


class PerceptionNode(LifecycleNode):
    """The lifecycle node; see the module docstring."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._log_handler = RosLogHandler(self.get_logger())
        self._propagate = {name: logging.getLogger(name).propagate for name in FORWARDED_LOGGERS}
        for name in FORWARDED_LOGGERS:
            logging.getLogger(name).addHandler(self._log_handler)
            logging.getLogger(name).propagate = False  # printed by the node's logger instead
        self._param_errors: dict[str, str] = {}
        self._declare_parameters()
        self.add_on_set_parameters_callback(self._check_parameters)
        self.config: NodeConfig | None = None
        self.rt: DlpRuntime | None = None
        self._pipeline: PerceptionPipeline | None = None
        self._stats = Stats()
        self._latest_action: np.ndarray | None = None
        self._active = False  # the callbacks take frames, commands and requests only while set
        # (message, receive time, the command in force when it arrived)
        self._mailbox: Mailbox[tuple[Any, float, np.ndarray | None]] | None = None
        self._predict_box: Mailbox[float] | None = None  # prediction requests (due time)
        self._threads: list[threading.Thread] = []
        self._running = False
        self._entities: list[Any] = []  # subscriptions, publishers, services, timer (configure)
        self._pubs: dict[str, LifecyclePublisher] = {}
        self._timer: Timer | None = None
        self._service_group = MutuallyExclusiveCallbackGroup()
        self._bad_log = Throttle(LOG_PERIOD_S)
        self._error_log = Throttle(LOG_PERIOD_S)
        self._input_watch = InputWatch(0.0)  # the no_frames_warn watchdog (configure)
        self._ood_log = OodWarning(LOG_PERIOD_S)
        self._view_log = ViewLog(1, 'squash')  # the input-to-model mapping, logged per size
        self._last_prediction = -math.inf
        self._last_frames = -math.inf
        self._diag_last = (0, 0, 0)  # (bad, errors, lost_transport) at the last diagnostics
        self._input_topic = 'image'
        self._configure_error = ''  # why the last configure failed

    # ------------------------------------------------------------------------- parameters

    def _declare_parameters(self) -> None:
        """Declare every parameter once. A bad override (wrong type, out of range) does not
        raise here: the default is declared and the reason fails the next configure, until the
        parameter is set to a valid value."""
        for spec in PARAMS:
            default = default_bundle() if spec.name == 'model_bundle' else spec.default
            desc = descriptor(spec)
            try:
                self.declare_parameter(spec.name, default, desc)
            except (InvalidParameterTypeException, InvalidParameterValueException) as exc:
                value = self._refused_override(spec.name, default)
                if (
                    isinstance(default, float)
                    and isinstance(value, int)
                    and not spec.check(float(value))
                ):  # an integer given for a double parameter (prediction_rate:=5)
                    self.declare_parameter(spec.name, float(value), desc, ignore_override=True)
                    continue
                self.declare_parameter(spec.name, default, desc, ignore_override=True)
                self._param_errors[spec.name] = f'parameter {spec.name} = {value!r}: {exc}'
        for name, reason in self._param_errors.items():
            self.get_logger().error(f'{reason} (configure fails until {name} is set right)')

    def _refused_override(self, name: str, default: object) -> object:
        """The value given for ``name`` at start-up (``-p``, a parameters file) that its
        declaration refused: read back through a moment's declaration without type or range
        (rclpy has no public view of the overrides), then undeclared again."""
        probe = ParameterDescriptor(name=name, dynamic_typing=True)
        value = self.declare_parameter(name, default, probe).value
        self.undeclare_parameter(name)
        return value

    def _check_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """Reject values outside a parameter's choices, and changes of a parameter read at
        configure while configured (or at start-up); a valid value clears its error. A live
        parameter's change goes into the configuration at once."""
        config = self.config
        ours = {p.name: p.value for p in params if p.name in PARAM_SPECS}
        for name, value in ours.items():
            spec = PARAM_SPECS[name]
            reason = spec.check(value) or spec.change_refusal(config is not None)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        for name in ours:
            self._param_errors.pop(name, None)
        if config is not None and ours:
            self.config = config.changed(ours)
            changes = ', '.join(f'{k} = {v!r}' for k, v in ours.items())
            self.get_logger().info(f'parameters changed: {changes} (live)')
        return SetParametersResult(successful=True)

    def _read_config(self) -> NodeConfig:
        """The parameters as a validated NodeConfig.

        Raises:
            ConfigError: a parameter that was given a bad value, or no model bundle.
        """
        if self._param_errors:
            raise ConfigError('; '.join(self._param_errors.values()))
        values = {spec.name: self.get_parameter(spec.name).value for spec in PARAMS}
        config = NodeConfig.from_values(values)
        if not config.model_bundle:
            raise ConfigError(
                f'no model bundle: set the parameter model_bundle (the default share/dlp_ros/'
                f'bundles/{DEFAULT_BUNDLE} is not installed)'
            )
        bundle = Path(config.model_bundle).expanduser()
        if not bundle.is_dir():
            if config.model_bundle == default_bundle():
                raise ConfigError(
                    f'the default model bundle {str(bundle)!r} is not installed: set the '
                    'parameter model_bundle to a bundle directory (python -m dlp_training export)'
                )
            raise ConfigError(
                f'model_bundle {str(bundle)!r} is not a directory (a bundle holds '
                'model_card.yaml and the .onnx graphs: python -m dlp_training export)'
            )
        return config

    # ------------------------------------------------------------------------- lifecycle

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Validate the parameters, load the model bundle, create the topics and services."""
        try:
            config = self._read_config()
            rt = DlpRuntime.load(config.model_bundle, config.providers, config.threads)
            check_resize_mode(config.resize_mode, rt.card.image.resize, config.model_bundle)
        except (DlpError, OSError, ValueError) as exc:
            return self._configure_failed(str(exc))
        except Exception as exc:  # noqa: BLE001 - never leave the transition unexplained
            return self._configure_failed(f'{type(exc).__name__}: {exc}')
        self.config, self.rt = config, rt
        self._pipeline = PerceptionPipeline(rt, config.nms_iou)
        try:
            self._create_entities(config, rt)
        except Exception as exc:  # noqa: BLE001
            self._destroy_entities()
            self._release()
            return self._configure_failed(f'{type(exc).__name__}: {exc}')
        self._log_configured(config, rt)
        return SUCCESS

    def _configure_failed(self, reason: str) -> TransitionCallbackReturn:
        """Log why configure failed (kept for the start-up exit) and fail the transition."""
        self._configure_error = reason
        self.get_logger().error(f'configure failed: {reason}')
        return FAILURE

    def _log_configured(self, config: NodeConfig, rt: DlpRuntime) -> None:
        card = rt.card
        dyn = card.dynamics
        self.get_logger().info(
            f'configured: bundle {config.model_bundle} (S={card.image.size}, '
            f'K={card.particles.K}, H={dyn.history}, A={dyn.action_dim}, dt={dyn.dt:g} s) on '
            f'{rt.provider}; input {config.image_transport}, horizon {config.horizon}, '
            f'prediction_rate {config.prediction_rate:g} Hz'
        )
        if config.action_topic and not dyn.action_dim:
            self.get_logger().warning(
                f'action_topic {config.action_topic!r} is ignored: the model takes no actions'
            )
        elif dyn.action_dim and not config.action_topic:
            self.get_logger().info(
                f'the model takes {dyn.action_dim} actions ({", ".join(dyn.action_names)}); '
                'action_topic is empty: predicting with zero actions'
            )

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Enable the publishers, start the worker threads and take frames."""
        try:
            result = super().on_activate(state)  # the lifecycle publishers
            if result != SUCCESS:
                return result
            self._activate()
        except Exception as exc:  # noqa: BLE001
            self.get_logger().error(f'activate failed: {type(exc).__name__}: {exc}')
            self._stop()
            super().on_deactivate(state)
            return FAILURE
        return SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop taking frames and the worker threads; disable the publishers."""
        self._stop()
        result = super().on_deactivate(state)
        self.get_logger().info('deactivated')
        return result

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Destroy the topics and services; release the model."""
        self._destroy_entities()
        self._release()
        return SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop()
        self._destroy_entities()
        self._release()
        return SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop()
        self._destroy_entities()
        self._release()
        return SUCCESS

    def _create_entities(self, config: NodeConfig, rt: DlpRuntime) -> None:
        """The subscriptions, lifecycle publishers, services and diagnostics timer (stopped)."""
        compressed = config.image_transport == 'compressed'
        reliable = config.input_reliability == 'reliable'
        qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=1,  # the latest frame wins
            reliability=ReliabilityPolicy.RELIABLE
            if reliable
            else qos_profile_sensor_data.reliability,
            durability=qos_profile_sensor_data.durability,
        )
        if config.action_topic and rt.card.dynamics.action_dim:
            # before the camera: when a command and a frame wait together, the executor runs
            # the callbacks in creation order, so a command sent before a frame applies to it
            self._entities.append(
                self.create_subscription(TwistStamped, config.action_topic, self._on_action, 10)
            )
        sub = self.create_subscription(
            CompressedImage if compressed else Image,
            # remapping `image` renames that name only: image_transport's <base>/compressed is
            # built from the resolved (remapped) base
            subscribed_topic(self.resolve_topic_name('image'), config.image_transport),
            # without the message info (Humble) the frames lost in DDS are the middleware's count
            self._on_image_info if conversions.MESSAGE_INFO else self._on_image,
            qos,
            qos_overriding_options=QoSOverridingOptions.with_default_policies(),
            event_callbacks=SubscriptionEventCallbacks(message_lost=self._on_message_lost),
        )
        self._entities.append(sub)
        self._input_topic = sub.topic_name
        self._input_watch = InputWatch(config.no_frames_warn)
        self._view_log = ViewLog(rt.card.image.size, rt.card.image.resize)
        for key, msg_type, topic in (
            ('particles', ParticleArray, PARTICLES_TOPIC),
            ('prediction', Prediction, PREDICTION_TOPIC),
            ('prediction_image', Image, PREDICTION_IMAGE_TOPIC),
            ('markers', MarkerArray, MARKERS_TOPIC),
            ('overlay', Image, '~/overlay'),
            ('diagnostics', DiagnosticArray, DIAGNOSTICS_TOPIC),
        ):
            self._pubs[key] = self.create_lifecycle_publisher(msg_type, topic, 10)
            self._entities.append(self._pubs[key])
        for srv_type, name, callback in (
            (Predict, '~/predict', self._on_predict),
            (PredictBatch, '~/predict_batch', self._on_predict_batch),
            (Render, '~/render', self._on_render),
        ):
            srv = self.create_service(srv_type, name, callback, callback_group=self._service_group)
            self._entities.append(srv)
        self._timer = self.create_timer(DIAGNOSTICS_PERIOD_S, self._publish_diagnostics)
        self._timer.cancel()  # runs while active
        self._entities.append(self._timer)

    def _activate(self) -> None:
        assert self.config is not None and self._pipeline is not None
        self._pipeline.reset()
        self._mailbox, self._predict_box = Mailbox(), Mailbox()
        with self._stats.lock:
            self._stats.gaps.reset()  # frames ignored while inactive are no loss
        self._running = True
        self._threads = [
            threading.Thread(target=self._work, args=(self._mailbox,), name='dlp_frames'),
            threading.Thread(
                target=self._predict_loop, args=(self._predict_box,), name='dlp_predict'
            ),
        ]
        for thread in self._threads:
            thread.daemon = True
            thread.start()
        if self._timer is not None:
            self._timer.reset()
        self._input_watch.reset(time.monotonic())
        self._active = True
        compressed = self.config.image_transport == 'compressed'
        self.get_logger().info(
            f'active: {self._input_topic} ({"CompressedImage" if compressed else "Image"}) -> '
            f'{self._pubs["particles"].topic_name}, {self._pubs["prediction"].topic_name}'
        )

    def stop_worker(self) -> None:
        """Stop the worker threads (waits for the frame and the prediction in progress)."""
        self._running = False
        for box in (self._mailbox, self._predict_box):
            if box is not None:
                box.close()
        for thread in self._threads:
            thread.join(timeout=30.0)
            if thread.is_alive():
                self.get_logger().error(f'the {thread.name} thread did not stop within 30 s')
        self._threads = []

    def _stop(self) -> None:
        """Stop taking frames, commands and requests; stop the diagnostics and the workers."""
        self._active = False
        if self._timer is not None:
            self._timer.cancel()
        self.stop_worker()
        self._mailbox, self._predict_box = None, None

    def _destroy_entities(self) -> None:
        destroy = {
            LifecyclePublisher: self.destroy_lifecycle_publisher,
            Subscription: self.destroy_subscription,
            Publisher: self.destroy_publisher,
            Service: self.destroy_service,
            Timer: self.destroy_timer,
        }
        for entity in reversed(self._entities):
            try:  # through the node: it also drops the entity's QoS event handlers
                next(f for kind, f in destroy.items() if isinstance(entity, kind))(entity)
            except Exception as exc:  # noqa: BLE001 - already gone with the context
                self.get_logger().debug(f'destroying {entity}: {exc}')
        self._entities.clear()
        self._pubs.clear()
        self._timer = None

    def _release(self) -> None:
        self.rt, self._pipeline, self.config = None, None, None

    def destroy_node(self) -> None:
        """Give the Python loggers back their own output, then destroy the node."""
        for name in FORWARDED_LOGGERS:
            logging.getLogger(name).removeHandler(self._log_handler)
            logging.getLogger(name).propagate = self._propagate[name]
        super().destroy_node()

    # ------------------------------------------------------------------------- input

    def _on_image_info(self, msg: Image | CompressedImage, info: dict[str, int]) -> None:
        """Executor thread: count the frames the sequence number shows lost, then
        :meth:`_on_image`."""
        self._on_image(msg, int(info.get('publication_sequence_number', 0)))

    def _on_image(self, msg: Image | CompressedImage, sequence: int = 0) -> None:
        """Executor thread: hand the frame to the worker; an unread one is dropped."""
        now = time.monotonic()
        mailbox = self._mailbox
        if mailbox is None or not self._active:
            return
        replaced = mailbox.put((msg, now, self._latest_action))
        with self._stats.lock:
            lost = self._stats.gaps.observe(sequence, now)
            self._stats.received += 1
            self._stats.dropped += int(replaced)
        self._stats.input_rate.tick(now, 1 + lost)
        self._stats.callback_rate.tick(now)

    def _on_message_lost(self, info: QoSMessageLostInfo) -> None:
        """Executor thread: frames the middleware reports lost on the way (transport)."""
        if not self._active:
            return
        with self._stats.lock:
            self._stats.lost_transport += int(info.total_count_change)

    def _on_action(self, msg: TwistStamped) -> None:
        rt = self.rt
        if rt is not None and self._active:
            dyn = rt.card.dynamics
            self._latest_action = conversions.twist_to_action(
                msg, dyn.action_names, dyn.action_dim
            )

    # ------------------------------------------------------------------------- worker

    def _work(self, mailbox: Mailbox[tuple[Any, float, np.ndarray | None]]) -> None:
        """Frame thread: process the latest frame until stopped; never raises."""
        while self._running:
            item = mailbox.get(timeout=0.25)
            if item is None or not self._running:
                continue
            msg, received, action = item
            try:
                self._process(msg, received, action)
            except ImageError as exc:
                self._count_bad(str(exc))
            except Exception as exc:  # noqa: BLE001 - a frame must never stop the node
                self._count_error(f'{type(exc).__name__}: {exc}')

    def _count_bad(self, reason: str) -> None:
        with self._stats.lock:
            self._stats.bad += 1
            self._stats.last_bad = reason
        report, held = self._bad_log.ready()
        if report:
            more = f' ({held} more bad frames since the last report)' if held else ''
            self.get_logger().warning(f'bad frame on {self._input_topic} skipped: {reason}{more}')

    def _count_error(self, reason: str) -> None:
        with self._stats.lock:
            self._stats.errors += 1
            self._stats.last_error = reason
        report, held = self._error_log.ready()
        if report:
            more = f' ({held} more since the last report)' if held else ''
            self.get_logger().error(f'processing a frame failed: {reason}{more}')

    def _process(
        self, msg: Image | CompressedImage, received: float, action: np.ndarray | None
    ) -> None:
        """Decode, track, publish the particles (``action``: the command in force when the
        frame arrived, None = zeros); then overlay and OOD score; ask the prediction thread for
        a prediction when one is due."""
        pipeline, config = self._pipeline, self.config
        if pipeline is None or config is None:
            return
        t0 = time.perf_counter()
        rgb = conversions.image_to_rgb(msg)  # (H, W, 3)
        decoded = time.perf_counter()
        seen = pipeline.step(rgb, conversions.stamp_ns(msg.header), action, msg.header)
        decode_ms = (decoded - t0) * 1e3 + seen.preprocess_ms
        width, height = seen.size
        on = pipeline.rt.card.tracking.on_threshold
        resize = pipeline.rt.card.image.resize  # particles in input pixels in every mode
        out = conversions.particle_array(
            seen.frame,
            msg.header,
            width,
            height,
            decode_ms,
            seen.encode_ms,
            resize=resize,
            on_threshold=on,
        )
        self._pubs['particles'].publish(out)
        if self._pubs['markers'].get_subscription_count() > 0:
            self._pubs['markers'].publish(particle_markers(out))
        done = time.monotonic()
        with self._stats.lock:
            self._stats.processed += 1
            count = self._stats.processed
        self._stats.output_rate.tick(done)
        self._stats.latency.add((done - received) * 1e3)

        overlay = self._pubs['overlay']
        if config.overlay and overlay.get_subscription_count() > 0:
            drawn = draw_overlay(rgb, seen.frame, on, resize=resize)
            overlay.publish(conversions.rgb_to_image(drawn, msg.header))
        mapping = self._view_log.check(width, height)
        if mapping:
            self.get_logger().info(mapping)
        if config.ood_every_n and (count - 1) % config.ood_every_n == 0:
            score = ood_score(pipeline.rt.recon_mse(seen.x, seen.frame),
                              pipeline.rt.card.validation.recon_mse)  # fmt: skip
            with self._stats.lock:
                self._stats.ood = score
            warning = self._ood_log.check(score, config.ood_warn, done, self._input_topic)
            if warning:
                self.get_logger().warning(warning)
        rate = config.prediction_rate
        if (
            rate > 0
            and done - self._last_prediction >= 1.0 / rate
            and self._predict_box is not None
        ):
            self._last_prediction = done
            self._predict_box.put(done)

    def _predict_loop(self, box: Mailbox[float]) -> None:
        """Prediction thread: roll out from the latest frame on request; never raises."""
        while self._running:
            due = box.get(timeout=0.25)
            if due is None or not self._running:
                continue
            try:
                self._publish_prediction(time.monotonic())
            except Exception as exc:  # noqa: BLE001 - a rollout must never stop the node
                self._count_error(f'prediction: {type(exc).__name__}: {exc}')

    def _publish_prediction(self, now: float) -> None:
        """Publish a prediction from the latest frame on dlp/prediction and its chosen step's
        frame on dlp/prediction/image, those that someone listens to."""
        config, pipeline = self.config, self._pipeline
        publisher, image_pub = self._pubs.get('prediction'), self._pubs.get('prediction_image')
        if config is None or pipeline is None or publisher is None or image_pub is None:
            return
        to_topic = publisher.get_subscription_count() > 0
        to_image = image_pub.get_subscription_count() > 0
        frames = ((config.publish_frames and to_topic) or to_image) and (
            config.frames_rate <= 0 or now - self._last_frames >= 1.0 / config.frames_rate
        )
        snap = pipeline.snapshot(config.horizon)
        if snap is None or not (to_topic or to_image):
            return
        if frames:
            self._last_frames = now
        msg = self.prediction(pipeline, snap, frames)
        if to_image and msg.frames:
            image_pub.publish(msg.frames[image_step_index(config.prediction_image_step,
                                                          len(msg.frames))])  # fmt: skip
        if to_topic:
            if not config.publish_frames:
                msg.frames = []
            publisher.publish(msg)
            with self._stats.lock:
                self._stats.predictions += 1

    @staticmethod
    def prediction(
        pipeline: PerceptionPipeline,
        snap: Snapshot,
        frames: bool,
        actions: np.ndarray | None = None,
    ) -> Prediction:
        """A dlp_ros/Prediction of ``snap.horizon`` steps after the frame of ``snap`` (``actions``:
        instead of the stream's): step k stamped header.stamp + k * dt, pixel coordinates of the
        input frame; decoded frames (model resolution) when ``frames``. ``predict_ms`` covers
        the rollout, the rendering and the message."""
        t0 = time.perf_counter()
        forecast = pipeline.predict(snap, frames, actions)
        card = pipeline.rt.card
        msg = conversions.prediction(snap.header, snap.size, forecast.dt, forecast.steps,
                                     forecast.images, resize=card.image.resize,
                                     on_threshold=card.tracking.on_threshold)  # fmt: skip
        msg.predict_ms = float((time.perf_counter() - t0) * 1e3)
        return msg

    # ------------------------------------------------------------------------- services

    def _request_snapshot(self, horizon: int, response: Any) -> Snapshot | None:
        """The latest frame for a service request of ``horizon`` steps (0: the parameter), or
        None with ``response.message`` saying why (``response.success`` set False)."""
        pipeline, config = self._pipeline, self.config
        response.success = False
        if pipeline is None or config is None:
            response.message = 'the node is not configured'
            return None
        if not self._active:
            response.message = 'the node is not active'
            return None
        horizon = int(horizon) or config.horizon
        if horizon > MAX_HORIZON:
            response.message = f'horizon must be <= {MAX_HORIZON}, got {horizon}'
            return None
        snap = pipeline.snapshot(horizon)
        if snap is None:
            response.message = 'no camera frame has been processed yet'
        return snap

    def _on_predict(self, request: Predict.Request, response: Predict.Response) -> Any:
        """~/predict: ``horizon`` steps (0: the parameter) after the latest frame, with frames
        as ``request.frames`` asks."""
        snap = self._request_snapshot(request.horizon, response)
        pipeline, config = self._pipeline, self.config
        if snap is None or pipeline is None or config is None:
            return response
        frames = {Predict.Request.FRAMES_PARAMETER: config.publish_frames,
                  Predict.Request.FRAMES_ON: True,
                  Predict.Request.FRAMES_OFF: False}.get(request.frames)  # fmt: skip
        if frames is None:
            response.message = (f'frames must be FRAMES_PARAMETER (0), FRAMES_ON (1) or '
                                f'FRAMES_OFF (2), got {request.frames}')  # fmt: skip
            return response
        dyn = pipeline.rt.card.dynamics
        try:
            actions = None
            if len(request.actions) or not dyn.action_dim:
                flat = np.asarray(request.actions, np.float32)
                actions = actions_from_request(flat, snap.horizon, dyn.history, dyn.action_dim)
            response.prediction = self.prediction(pipeline, snap, frames, actions)
        except (DlpError, ValueError) as exc:
            response.message = str(exc)
            return response
        except Exception as exc:  # noqa: BLE001 - answer, never crash the service
            response.message = f'prediction failed: {type(exc).__name__}: {exc}'
            return response
        response.success = True
        response.message = f'{snap.horizon} steps of dt {dyn.dt:g} s'
        return response

    def _on_predict_batch(
        self, request: PredictBatch.Request, response: PredictBatch.Response
    ) -> Any:
        """~/predict_batch: the particles of B candidate futures of ``horizon`` steps (0: the
        parameter) after the latest frame, one batched rollout."""
        snap = self._request_snapshot(request.horizon, response)
        pipeline = self._pipeline
        if snap is None or pipeline is None:
            return response
        dyn = pipeline.rt.card.dynamics
        try:
            actions = batch_actions_from_request(np.asarray(request.actions, np.float32),
                                                 int(request.candidates), snap.horizon,
                                                 dyn.action_dim)  # fmt: skip
            forecast = pipeline.predict_batch(snap, actions)
            width, height = snap.size
            on = pipeline.rt.card.tracking.on_threshold
            resize = pipeline.rt.card.image.resize
            current = conversions.particle_array(snap.history[-1], snap.header, width, height,
                                                 resize=resize, on_threshold=on)  # fmt: skip
            conversions.batch_response(response, current, forecast.dt, forecast.fields, resize)
        except (DlpError, ValueError) as exc:
            response.message = str(exc)
            return response
        except Exception as exc:  # noqa: BLE001 - answer, never crash the service
            response.message = f'prediction failed: {type(exc).__name__}: {exc}'
            return response
        response.success = True
        response.message = (f'{forecast.candidates} candidates x {forecast.horizon} steps of dt '
                            f'{dyn.dt:g} s in {forecast.predict_ms:.1f} ms')  # fmt: skip
        return response

    def _on_render(self, request: Render.Request, response: Render.Response) -> Any:
        """~/render: decode the request's particles into an rgb8 image (model resolution)."""
        rt = self.rt
        response.success = False
        if rt is None:
            response.message = 'the node is not configured'
            return response
        if not self._active:
            response.message = 'the node is not active'
            return response
        p = rt.card.particles
        try:
            frame = conversions.particle_frame(request.particles, p.K, p.F, p.Fb,
                                               rt.card.image.resize)  # fmt: skip
            image = rt.render([frame])[0]  # (S, S, 3)
        except (DlpError, ValueError) as exc:
            response.message = f'cannot render these particles: {exc}'
            return response
        except Exception as exc:  # noqa: BLE001
            response.message = f'render failed: {type(exc).__name__}: {exc}'
            return response
        response.image = conversions.rgb_to_image(image, request.particles.header)
        response.success = True
        response.message = f'{image.shape[1]}x{image.shape[0]}'
        return response

    # ------------------------------------------------------------------------- diagnostics

    def _publish_diagnostics(self) -> None:
        """1 Hz: rates, latency, drops, bad frames, provider and OOD score on /diagnostics."""
        publisher, rt, config = self._pubs.get('diagnostics'), self.rt, self.config
        if publisher is None or rt is None or config is None or not self._active:
            return
        s = self._stats
        with s.lock:
            received, processed, dropped = s.received, s.processed, s.dropped
            bad, errors, predictions, ood = s.bad, s.errors, s.predictions, s.ood
            last_bad, last_error = s.last_bad, s.last_error
            # without sequence numbers the middleware's own count is all there is
            lost = s.gaps.lost if s.gaps.supported else s.lost_transport
            lost_transport = s.lost_transport
        self._watch_input(received, config.image_transport)
        p50, p99 = s.latency.percentiles(50, 99)
        in_rate, out_rate = s.input_rate.rate(), s.output_rate.rate()
        callback_rate = s.callback_rate.rate()
        level, problems = DiagnosticStatus.OK, []
        if lost_transport > self._diag_last[2]:
            level = max(level, DiagnosticStatus.WARN)
            problems.append(
                f'{lost_transport - self._diag_last[2]} frames lost in transport (try '
                'input_reliability reliable, or the Fast DDS large-frames profile)'
            )
        if errors > self._diag_last[1]:
            level = DiagnosticStatus.ERROR
            problems.append(f'{errors - self._diag_last[1]} frames failed: {last_error}')
        if bad > self._diag_last[0]:
            level = max(level, DiagnosticStatus.WARN)
            problems.append(f'{bad - self._diag_last[0]} bad frames: {last_bad}')
        if in_rate == 0:
            level = max(level, DiagnosticStatus.WARN)
            problems.append(f'no input on {self._input_topic}')
        if math.isfinite(ood) and ood > config.ood_warn:
            level = max(level, DiagnosticStatus.WARN)
            problems.append(f'out of distribution (score {ood:.2f} > {config.ood_warn:g})')
        self._diag_last = (bad, errors, lost_transport)
        values = {
            'input_topic': self._input_topic,
            'image_transport': config.image_transport,
            'input_reliability': config.input_reliability,
            'input_rate_hz': f'{in_rate:.2f}',
            'received_rate_hz': f'{callback_rate:.2f}',
            'processed_rate_hz': f'{out_rate:.2f}',
            'latency_p50_ms': f'{p50:.2f}',
            'latency_p99_ms': f'{p99:.2f}',
            'frames_received': str(received),
            'frames_processed': str(processed),
            'frames_dropped': str(dropped),
            'frames_lost_dds': str(lost),
            'frames_lost_transport': str(lost_transport),
            'frames_sent': str(received + lost),
            'bad_frames': str(bad),
            'processing_errors': str(errors),
            'last_bad_frame': last_bad,
            'predictions_published': str(predictions),
            'ood_score': f'{ood:.4f}',
            'provider': rt.provider,
            'model_bundle': config.model_bundle,
        }
        status = DiagnosticStatus(
            level=level,
            name=f'{self.get_fully_qualified_name()}: dlp perception',
            message='; '.join(problems) or 'ok',
            hardware_id=rt.provider,
            values=[KeyValue(key=k, value=v) for k, v in values.items()],
        )
        header = Header(stamp=self.get_clock().now().to_msg())
        publisher.publish(DiagnosticArray(header=header, status=[status]))

    def _watch_input(self, received: int, transport: str) -> None:
        """Log a throttled WARN when no frame came for ``no_frames_warn`` seconds, naming the
        types of the publishers on the camera topic (and on the other transport's topic)."""
        topic = self._input_topic

        def reason() -> str:
            other = other_transport_topic(topic, transport)
            publishers = {
                name: [info.topic_type for info in self.get_publishers_info_by_topic(name)]
                for name in (topic, other)
            }
            return no_frames_reason(topic, transport, publishers)

        warning = self._input_watch.check(time.monotonic(), received, reason)
        if warning:
            self.get_logger().warning(warning)

    # ------------------------------------------------------------------------- start-up

    def autostart(self) -> bool:
        """Configure and activate when the ``autostart`` parameter is on; True when active."""
        if not self.get_parameter('autostart').value:
            self.get_logger().info('autostart is off: waiting for lifecycle transitions')
            return False
        if self.trigger_configure() != SUCCESS:
            if self.get_parameter('exit_on_configure_failure').value:
                raise ConfigureFailed(
                    f'configure failed at start-up: {self._configure_error}; exiting '
                    '(exit_on_configure_failure is on)'
                )
            self.get_logger().error(
                'autostart: configure failed; the node stays unconfigured (fix the parameters, '
                'then configure it through ~/change_state)'
            )
            return False
        return self.trigger_activate() == SUCCESS


def main(args: list[str] | None = None) -> int:
    """Run the perception node until SIGINT/SIGTERM; returns the exit status (1 when the executor
    failed, 2 when the start-up configure failed and ``exit_on_configure_failure`` is on). A
    signal only sets an event; see :mod:`dlp_ros.node_process`."""
    logging.basicConfig(level=logging.INFO, format='[%(levelname)s] [%(name)s]: %(message)s')
    logging.captureWarnings(True)  # Python warnings as log records: the node forwards them
    return run_until_signal(args, PerceptionNode, lambda: PoolExecutor(num_threads=2),
                            PerceptionNode.stop_worker, start=PerceptionNode.autostart,
                            usage_errors=(ConfigureFailed,))  # fmt: skip


if __name__ == '__main__':
    raise SystemExit(main())
