"""Fixtures and helpers for the dlp_ros message tests (real rclpy, real Fast DDS, rosbags).

Everything ROS is imported lazily, inside functions, so that this conftest loads on a machine
without ROS; the test modules skip themselves there with ``pytest.importorskip``. Where ROS must
be there (``DLP_REQUIRE_ROS=1``, set by scripts/test.sh and so in CI), a missing rclpy or
unbuilt dlp_ros messages fail the run instead: a broken setup must not pass as green.

Before the first ROS test, the Fast DDS shared-memory files of killed processes are removed.

The helpers reach the tests through the ``ros_msgs`` fixture (a :class:`RosMsgKit`), not by
``from conftest import ...``, which depends on pytest's import mode and on which conftest was
imported last. ``peer_publisher.py`` runs in its own process and imports this file directly.
The node tests share the tiny bundles here (``bundle_plain``, ``bundle_actions``) and the node
process and client of ``node_harness.py``, which they import as ``node_harness`` (tests/ros has
no ``__init__.py``, so pytest's default prepend import mode puts it on ``sys.path``).
"""

from __future__ import annotations

import array
import dataclasses
import math
import os
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

if TYPE_CHECKING:
    from rclpy.context import Context

HERE = Path(__file__).resolve().parent
# Set this to pin the domain id (1..232) instead of deriving it from the pid.
DOMAIN_ID_OVERRIDE = 'DLP_TEST_ROS_DOMAIN_ID'
# Set to 1 to make a missing rclpy / unbuilt message package an error instead of a skip.
REQUIRE_ROS = 'DLP_REQUIRE_ROS'


def _require_ros() -> None:
    """Import what the ROS tests need; with ``$DLP_REQUIRE_ROS=1`` a failure stops the run."""
    if os.environ.get(REQUIRE_ROS) != '1':
        return
    import importlib

    for module in (
        'rclpy',
        'dlp_ros.msg',
        'dlp_ros.srv',
        'sensor_msgs.msg',
        'diagnostic_msgs.msg',
    ):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise pytest.UsageError(
                f'{REQUIRE_ROS}=1 and the ROS tests cannot import {module} ({exc}): run '
                'scripts/setup.sh (colcon build) and source scripts/env.sh'
            ) from exc


_require_ros()

# A fixed capture time with a non-zero nanosecond part, so that k * dt carries into the seconds.
T0_NS = 1_732_000_000_987_654_321
FRAME_ID = 'camera_color_optical_frame'
IMAGE_WIDTH = 640
IMAGE_HEIGHT = 480


# --- domain and context ------------------------------------------------------------------------
def pick_domain_id() -> int:
    """A ROS_DOMAIN_ID in 1..100 derived from the pid (or ``$DLP_TEST_ROS_DOMAIN_ID``)."""
    override = os.environ.get(DOMAIN_ID_OVERRIDE)
    if override:
        domain = int(override)
        if not 1 <= domain <= 232:
            raise ValueError(f'{DOMAIN_ID_OVERRIDE} must be in 1..232, got {domain}')
        return domain
    return 1 + os.getpid() % 100


@pytest.fixture(scope='session', autouse=True)
def ros_domain_id() -> Iterator[int]:
    """Puts this run's ROS_DOMAIN_ID and loopback-only discovery in os.environ.

    Child processes started with ``env=os.environ`` (or no env) inherit both, so a peer and the
    test process meet on the same domain and no discovery traffic leaves the machine.
    """
    domain = pick_domain_id()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('ROS_DOMAIN_ID', str(domain))
        mp.setenv('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
        yield domain


@pytest.fixture(scope='session', autouse=True)
def no_stale_shared_memory() -> None:
    """Removes the Fast DDS shared-memory files (segments and ports) that killed processes
    left in /dev/shm, before any ROS process of this run exists."""
    from dlp_ros.dds_shm import clean_stale

    clean_stale(ports=True)


@pytest.fixture
def ros_context(ros_domain_id: int) -> Iterator[Context]:
    """An initialised rclpy Context of its own (not the global one), shut down afterwards.

    rclpy installs no signal handlers here, so Ctrl-C still reaches pytest.
    """
    import rclpy
    from rclpy.context import Context
    from rclpy.signals import SignalHandlerOptions

    context = Context()
    rclpy.init(
        context=context,
        domain_id=ros_domain_id,
        signal_handler_options=SignalHandlerOptions.NO,
    )
    try:
        yield context
    finally:
        context.try_shutdown()


# --- tiny model bundles --------------------------------------------------------------------------
TINY_BUNDLE_DT = 0.05  # [s] dt of the node tests' bundles


def _make_tiny_bundle(out: Path, action_dim: int) -> Path:
    """tests/ros/tiny_bundle.py's bundle (loaded from its file: it is also a script)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location('tiny_bundle', HERE / 'tiny_bundle.py')
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_tiny_bundle(out, action_dim=action_dim, dt=TINY_BUNDLE_DT)


@pytest.fixture(scope='session')
def bundle_actions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny bundle whose dynamics take 2 actions (linear.x, linear.y)."""
    return _make_tiny_bundle(tmp_path_factory.mktemp('bundle') / 'actions', action_dim=2)


@pytest.fixture(scope='session')
def bundle_plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny bundle without actions."""
    return _make_tiny_bundle(tmp_path_factory.mktemp('bundle') / 'plain', action_dim=0)


# --- message builders ----------------------------------------------------------------------------
def f32(value: float) -> float:
    """``value`` rounded to float32, so that it survives a float32 field exactly."""
    return float(np.float32(value))


def f32_array(values: np.ndarray | Sequence[float]) -> list[float]:
    """A float32-exact list of Python floats."""
    return np.asarray(values, dtype=np.float32).tolist()


def build_header(stamp_ns: int, frame_id: str = FRAME_ID) -> Any:
    """A std_msgs/Header stamped ``stamp_ns`` (nanoseconds since the epoch)."""
    from builtin_interfaces.msg import Time
    from std_msgs.msg import Header

    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=frame_id)


def build_particle(pid: int, n_features: int = 8, seed: int = 0) -> Any:
    """A dlp_ros/Particle with every field set to a distinct, float32-exact, non-zero value."""
    from dlp_ros.msg import Particle

    rng = np.random.default_rng(1000 * seed + pid)
    features = rng.standard_normal(n_features).astype(np.float32)
    features[features == 0] = 0.5  # no zero by accident
    return Particle(
        id=pid,
        u=f32(rng.uniform(1.0, IMAGE_WIDTH - 1)),
        v=f32(rng.uniform(1.0, IMAGE_HEIGHT - 1)),
        u_std=f32(rng.uniform(0.1, 4.0)),
        v_std=f32(rng.uniform(0.1, 4.0)),
        scale=f32(rng.uniform(8.0, 64.0)),
        depth=f32(rng.uniform(-2.0, -0.1)),
        transparency=f32(rng.uniform(0.05, 1.0)),
        on=True,  # False is the default, which a populated message must not hold
        features=features.tolist(),
    )


def build_particle_array(
    stamp_ns: int = T0_NS,
    frame_id: str = FRAME_ID,
    n_particles: int = 5,
    n_features: int = 8,
    n_background: int = 12,
    seed: int = 0,
) -> Any:
    """A dlp_ros/ParticleArray with ``n_particles`` particles and every field populated.

    Ids are distinct and ordered; the last one is the largest uint32, and the first particle's
    features hold float32 edge values (max, min normal, subnormal, -0.0, +-inf).
    """
    from dlp_ros.msg import ParticleArray

    ids = [seed * 100 + k + 1 for k in range(n_particles)]
    if n_particles > 1:
        ids[-1] = 2**32 - 1
    particles = [build_particle(pid, n_features, seed) for pid in ids]
    if particles and n_features >= 6:
        finfo = np.finfo(np.float32)
        edges = [float(finfo.max), float(finfo.tiny), 1e-45, -0.0, math.inf, -math.inf]
        feats = list(particles[0].features)
        feats[: len(edges)] = f32_array(edges)
        particles[0].features = feats
    rng = np.random.default_rng(77 + seed)
    return ParticleArray(
        header=build_header(stamp_ns, frame_id),
        image_width=IMAGE_WIDTH,
        image_height=IMAGE_HEIGHT,
        particles=particles,
        background_features=f32_array(rng.uniform(-3.0, 3.0, n_background)),
        decode_ms=f32(1.25 + 0.5 * seed),
        encode_ms=f32(7.8125 + seed),
    )


def build_image(
    stamp_ns: int = T0_NS, frame_id: str = FRAME_ID, width: int = 64, height: int = 48, k: int = 0
) -> Any:
    """A sensor_msgs/Image, rgb8, with a gradient and a bright square that moves with ``k``."""
    from sensor_msgs.msg import Image

    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack(
        [xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1), (xx + yy + 40 * k) % 256],
        axis=-1,
    ).astype(np.uint8)  # (H, W, 3)
    side = max(min(width, height) // 4, 1)
    x0 = (5 + 7 * k) % max(width - side, 1)
    y0 = (3 + 5 * k) % max(height - side, 1)
    rgb[y0 : y0 + side, x0 : x0 + side] = (255, 250, 1 + k)
    return Image(
        header=build_header(stamp_ns, frame_id),
        height=height,
        width=width,
        encoding='rgb8',
        is_bigendian=0,
        step=width * 3,
        data=rgb.tobytes(),
    )


def build_prediction(
    stamp_ns: int = T0_NS,
    frame_id: str = FRAME_ID,
    dt: float = 0.05,
    horizon: int = 3,
    with_frames: bool = True,
    frame_size: tuple[int, int] = (64, 48),
    seed: int = 0,
) -> Any:
    """A dlp_ros/Prediction: ``horizon`` steps stamped t + k*dt, and (optionally) rgb8 frames.

    ``frame_size`` is (width, height) of the predicted frames.
    """
    from dlp_ros.msg import Prediction

    dt_ns = round(dt * 1e9)
    steps = [
        build_particle_array(stamp_ns + k * dt_ns, frame_id, seed=10 * seed + k)
        for k in range(1, horizon + 1)
    ]
    frames = []
    if with_frames:
        width, height = frame_size
        frames = [
            build_image(stamp_ns + k * dt_ns, frame_id, width, height, k)
            for k in range(1, horizon + 1)
        ]
    return Prediction(
        header=build_header(stamp_ns, frame_id),
        dt=dt,
        steps=steps,
        frames=frames,
        predict_ms=f32(23.4 + seed),
    )


def peer_payload() -> dict[str, list[Any]]:
    """What ``peer_publisher.py publish`` sends, per topic suffix, in order.

    Includes the edge cases: a ParticleArray with no particles and no background features, a
    Prediction without frames, and one with 128x128 frames (about 150 kB, so DDS fragments it).
    """
    return {
        'particles': [
            build_particle_array(T0_NS, seed=0),
            build_particle_array(T0_NS + 33_333_333, n_particles=0, n_background=0, seed=1),
            build_particle_array(T0_NS + 66_666_666, n_particles=9, n_features=16, seed=2),
        ],
        'prediction': [
            build_prediction(T0_NS, frame_size=(128, 128), seed=0),
            build_prediction(T0_NS + 33_333_333, dt=0.1, horizon=2, with_frames=False, seed=1),
        ],
    }


# --- comparison ----------------------------------------------------------------------------------
def is_message(obj: object) -> bool:
    """True for an rclpy message or a rosbags message dataclass."""
    return hasattr(type(obj), 'get_fields_and_field_types') or (
        dataclasses.is_dataclass(obj) and hasattr(obj, '__msgtype__')
    )


def message_type(obj: object) -> str:
    """The ROS type name ``pkg/msg/Name`` of an rclpy or rosbags message."""
    if hasattr(obj, '__msgtype__'):
        return str(obj.__msgtype__)
    cls = type(obj)
    return f'{cls.__module__.split(".")[0]}/msg/{cls.__name__}'


def field_names(obj: object) -> list[str]:
    """The message's fields in declaration order (rclpy: get_fields_and_field_types)."""
    cls = type(obj)
    if hasattr(cls, 'get_fields_and_field_types'):
        return list(cls.get_fields_and_field_types())
    return [f.name for f in dataclasses.fields(obj) if f.name != '__msgtype__']  # type: ignore[arg-type]


def _as_array(seq: object) -> np.ndarray:
    """A typed sequence (array.array, numpy array, bytes) as a numpy array, without copying."""
    if isinstance(seq, bytes | bytearray):
        return np.frombuffer(seq, dtype=np.uint8)
    return np.asarray(seq)


def _same_float(a: float, b: float) -> bool:
    """Bit-exact equality of two doubles (tells -0.0 from 0.0)."""
    return struct.pack('<d', a) == struct.pack('<d', b)


def assert_msg_equal(actual: object, expected: object, path: str = 'msg') -> None:
    """Assert two messages are equal field for field, recursively; floats must match exactly.

    Works for rclpy messages, rosbags dataclasses and any mix of the two (so a rosbags
    deserialisation can be checked against the rclpy original). Fields are walked with
    ``get_fields_and_field_types()`` (rclpy) or the dataclass fields (rosbags); sequences of
    messages element by element; typed numeric sequences by dtype and bit pattern. The assertion
    message names the first differing field, e.g. ``msg.steps[1].particles[0].features[3]``.
    """
    if is_message(expected) or is_message(actual):
        assert is_message(actual) and is_message(expected), (
            f'{path}: {type(actual).__name__} vs {type(expected).__name__}'
        )
        assert message_type(actual) == message_type(expected), (
            f'{path}: type {message_type(actual)} != {message_type(expected)}'
        )
        names = field_names(expected)
        assert field_names(actual) == names, f'{path}: fields {field_names(actual)} != {names}'
        for name in names:
            assert_msg_equal(getattr(actual, name), getattr(expected, name), f'{path}.{name}')
        return
    typed = (array.array, np.ndarray, bytes, bytearray)
    if isinstance(expected, typed) or isinstance(actual, typed):
        _assert_array_equal(actual, expected, path)
        return
    if isinstance(expected, list | tuple):
        assert isinstance(actual, list | tuple), f'{path}: {type(actual).__name__} is no sequence'
        assert len(actual) == len(expected), f'{path}: length {len(actual)} != {len(expected)}'
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_msg_equal(a, e, f'{path}[{i}]')
        return
    _assert_scalar_equal(actual, expected, path)


def _assert_array_equal(actual: object, expected: object, path: str) -> None:
    """Typed numeric sequences: same length, same dtype (when both are typed), same bits."""
    a, e = _as_array(actual), _as_array(expected)
    assert a.shape == e.shape, f'{path}: shape {a.shape} != {e.shape}'
    if not isinstance(actual, list | tuple) and not isinstance(expected, list | tuple):
        assert a.dtype == e.dtype, f'{path}: dtype {a.dtype} != {e.dtype}'
    if a.dtype.kind == 'f' or e.dtype.kind == 'f':
        same = a.astype(np.float64).view(np.uint64) == e.astype(np.float64).view(np.uint64)
    else:
        same = a == e
    if not np.all(same):
        i = int(np.flatnonzero(~same.reshape(-1))[0])
        raise AssertionError(
            f'{path}[{i}]: {a.reshape(-1)[i]!r} != {e.reshape(-1)[i]!r} '
            f'({int((~same).sum())} of {same.size} elements differ)'
        )


def _assert_scalar_equal(actual: object, expected: object, path: str) -> None:
    """Scalars: same kind (bool, int, float, str) and the same value (floats bit-exact)."""

    def kind(x: object) -> str:
        for k in (bool, int, float, str):
            if isinstance(x, k):
                return k.__name__
        if isinstance(x, np.generic):
            return kind(x.item())
        return type(x).__name__

    assert kind(actual) == kind(expected), (
        f'{path}: {actual!r} ({type(actual).__name__}) vs {expected!r} ({type(expected).__name__})'
    )
    if kind(expected) == 'float':
        assert _same_float(float(actual), float(expected)), f'{path}: {actual!r} != {expected!r}'
    else:
        assert actual == expected, f'{path}: {actual!r} != {expected!r}'


def assert_fully_populated(
    msg: object, path: str = 'msg', allow_default: Sequence[str] = ('is_bigendian',)
) -> None:
    """Assert no field of ``msg`` holds its default (0, '', empty), so comparisons mean something.

    ``allow_default`` lists field names exempt from the check (Image.is_bigendian is 0 for rgb8).
    """
    for name in field_names(msg):
        value, where = getattr(msg, name), f'{path}.{name}'
        if name in allow_default:
            continue
        if is_message(value):
            assert_fully_populated(value, where, allow_default)
        elif isinstance(value, list | tuple):
            assert len(value) > 0, f'{where} is empty'
            for i, item in enumerate(value):
                if is_message(item):
                    assert_fully_populated(item, f'{where}[{i}]', allow_default)
        elif isinstance(value, array.array | np.ndarray | bytes | bytearray):
            assert len(value) > 0, f'{where} is empty'
            assert np.any(_as_array(value) != 0), f'{where} is all zeros'
        else:
            assert value not in (0, '') and value is not False, f'{where} is default {value!r}'


# --- rclpy -> rosbags ----------------------------------------------------------------------------
def to_rosbags(msg: object, store: Any = None) -> Any:
    """Convert an rclpy message to the equivalent rosbags dataclass of ``store``.

    Driven by the rosbags field definitions, so a field the rclpy class lacks fails loudly.
    ``store`` defaults to ``dlp_ros.offline.typestore.typestore()``.
    """
    if store is None:
        from dlp_ros.offline.typestore import typestore

        store = typestore()
    msgtype = message_type(msg)
    _, fields = store.fielddefs[msgtype]
    return store.types[msgtype](
        **{name: _to_rosbags_value(getattr(msg, name), desc, store) for name, desc in fields}
    )


def _to_rosbags_value(value: Any, desc: tuple[Any, Any], store: Any) -> Any:
    """One field value; ``desc`` is a rosbags field description ``(Nodetype, details)``."""
    from rosbags.interfaces import Nodetype

    node, details = desc
    if node == Nodetype.NAME:
        assert message_type(value) == details, f'{message_type(value)} where {details} is due'
        return to_rosbags(value, store)
    if node == Nodetype.BASE:
        return value
    inner, _size = details  # ARRAY or SEQUENCE of ``inner``
    inner_node, inner_details = inner
    if inner_node == Nodetype.BASE and inner_details[0] != 'string':
        return np.asarray(value, dtype=ROSBAGS_DTYPES.get(inner_details[0], inner_details[0]))
    return [_to_rosbags_value(item, inner, store) for item in value]


# rosbags base type names that are not numpy dtype names.
ROSBAGS_DTYPES = {'bool': np.bool_, 'byte': np.uint8, 'char': np.uint8, 'octet': np.uint8}


class RosMsgKit:
    """The helpers above, handed to tests by the ``ros_msgs`` fixture."""

    header = staticmethod(build_header)
    particle = staticmethod(build_particle)
    particle_array = staticmethod(build_particle_array)
    image = staticmethod(build_image)
    prediction = staticmethod(build_prediction)
    peer_payload = staticmethod(peer_payload)
    assert_equal = staticmethod(assert_msg_equal)
    assert_fully_populated = staticmethod(assert_fully_populated)
    to_rosbags = staticmethod(to_rosbags)
    message_type = staticmethod(message_type)
    T0_NS = T0_NS


@pytest.fixture(scope='session')
def ros_msgs() -> type[RosMsgKit]:
    """Message builders, the field-by-field comparator and the rclpy -> rosbags converter."""
    return RosMsgKit
