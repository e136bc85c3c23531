"""rclpy messages <-> numpy for the perception node.

Images go through :mod:`dlp_ros.image_codec` (the same decoding as the training data), particles
through :meth:`ParticleFrame.message_fields` (the same fields as the offline replay writes), so
this module only moves values between arrays and message objects.
"""

from __future__ import annotations

import array
import math
from collections.abc import Sequence

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import TwistStamped
from rclpy.subscription import Subscription
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from dlp_ros.errors import ImageError
from dlp_ros.image_codec import decode_compressed, decode_raw
from dlp_ros.input_view import DEFAULT_RESIZE, InputView
from dlp_ros.msg import Particle, ParticleArray, Prediction
from dlp_ros.particles import ParticleFrame
from dlp_ros.srv import PredictBatch
from dlp_ros.tracking import ON_THRESHOLD

NS = 1_000_000_000
TWIST_NAMES = ('linear.x', 'linear.y', 'linear.z', 'angular.x', 'angular.y', 'angular.z')
# rclpy >= Iron hands a subscription callback of two arguments the message info (publication
# sequence numbers, source timestamps); Humble's does not.
MESSAGE_INFO = hasattr(Subscription, 'CallbackType')


# --- time and headers ----------------------------------------------------------------------------
def stamp_ns(header: Header) -> int:
    """A header's stamp in nanoseconds."""
    return int(header.stamp.sec) * NS + int(header.stamp.nanosec)


def shifted_header(header: Header, offset_ns: int) -> Header:
    """A copy of ``header`` stamped ``offset_ns`` later (integer arithmetic: no rounding drift)."""
    sec, nanosec = divmod(stamp_ns(header) + int(offset_ns), NS)
    return Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=header.frame_id)


def step_offset_ns(k: int, dt: float) -> int:
    """Offset of predicted step ``k`` (1-based) after the observed frame: round(k * dt) in ns."""
    return round(k * dt * NS)


# --- images --------------------------------------------------------------------------------------
def _bytes_view(data: object) -> np.ndarray:
    """A message's uint8[] field (array.array, bytes or a list) as a flat uint8 array."""
    if isinstance(data, array.array | bytes | bytearray | memoryview):
        return np.frombuffer(data, dtype=np.uint8)
    return np.asarray(data, dtype=np.uint8).reshape(-1)


def image_to_rgb(msg: Image | CompressedImage) -> np.ndarray:
    """A sensor_msgs/Image or CompressedImage -> (H, W, 3) uint8 RGB.

    Raises:
        ImageError: unsupported encoding or format, zero size, truncated or corrupt data.
    """
    if isinstance(msg, CompressedImage):
        return decode_compressed(msg.format, _bytes_view(msg.data))
    if isinstance(msg, Image):
        return decode_raw(msg.encoding, msg.height, msg.width, msg.step, _bytes_view(msg.data),
                          bool(msg.is_bigendian))  # fmt: skip
    raise ImageError(f'expected a sensor_msgs Image or CompressedImage, got {type(msg).__name__}')


def rgb_to_image(rgb: np.ndarray, header: Header) -> Image:
    """(H, W, 3) uint8 RGB -> sensor_msgs/Image rgb8 with ``header``."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageError(f'expected an (H, W, 3) RGB array, got shape {rgb.shape}')
    height, width = rgb.shape[:2]
    return Image(
        header=header,
        height=height,
        width=width,
        encoding='rgb8',
        is_bigendian=0,
        step=width * 3,
        data=array.array('B', rgb.tobytes()),
    )


# --- particles -----------------------------------------------------------------------------------
def _f32(values: np.ndarray) -> array.array:
    """A float32 array as the array.array rclpy stores float32[] fields in (no per-item checks)."""
    return array.array('f', np.ascontiguousarray(values, dtype=np.float32).tobytes())


def particle_array(
    frame: ParticleFrame,
    header: Header,
    width: int,
    height: int,
    decode_ms: float = 0.0,
    encode_ms: float = 0.0,
    resize: str = DEFAULT_RESIZE,
    on_threshold: float = ON_THRESHOLD,
) -> ParticleArray:
    """A ParticleFrame -> dlp_ros/ParticleArray in pixels of a width x height input image that
    the model saw through ``resize`` (the model card's ``image.resize``).

    ``header`` is used as given (the input image's, copied unchanged); a particle is ``on`` when
    its transparency is above ``on_threshold`` (the model card's tracking.on_threshold).
    """
    fields = frame.message_fields(width, height, resize, on_threshold)
    # message_fields already holds Python ints/floats; only float32[] wants rclpy's array.array
    particles = [Particle(**{**p, 'features': _f32(p['features'])}) for p in fields['particles']]
    return ParticleArray(
        header=header,
        image_width=fields['image_width'],
        image_height=fields['image_height'],
        particles=particles,
        background_features=_f32(fields['background_features']),
        decode_ms=float(decode_ms),
        encode_ms=float(encode_ms),
    )


def prediction(
    header: Header,
    size: tuple[int, int],
    dt: float,
    steps: Sequence[ParticleFrame],
    images: np.ndarray | None = None,
    predict_ms: float = 0.0,
    resize: str = DEFAULT_RESIZE,
    on_threshold: float = ON_THRESHOLD,
) -> Prediction:
    """A dlp_ros/Prediction of the predicted ``steps`` after the frame of ``header``.

    Step k (1-based) is stamped header.stamp + round(k * dt) ns, in pixels of the (width, height)
    ``size`` of the input frame seen through ``resize``; ``images`` (N, S, S, 3) uint8 RGB, the
    decoded steps, become rgb8 frames with their step's header; ``on`` as in
    :func:`particle_array`.
    """
    width, height = size
    arrays = [
        particle_array(p, shifted_header(header, step_offset_ns(k, dt)), width, height,
                       resize=resize, on_threshold=on_threshold)
        for k, p in enumerate(steps, start=1)
    ]  # fmt: skip
    frames = [] if images is None else [
        rgb_to_image(img, s.header) for img, s in zip(images, arrays, strict=False)
    ]  # fmt: skip
    return Prediction(
        header=header, dt=float(dt), steps=arrays, frames=frames, predict_ms=float(predict_ms)
    )


def batch_response(
    response: PredictBatch.Response,
    current: ParticleArray,
    dt: float,
    fields: dict[str, np.ndarray],
    resize: str = DEFAULT_RESIZE,
) -> PredictBatch.Response:
    """Fill a dlp_ros/PredictBatch answer from B candidate futures.

    Args:
        response: the service's response (filled in place and returned).
        current: the observed frame's particles (its header and input image size are the
            answer's).
        dt: [s] between predicted steps.
        fields: the rollout's particle fields (mu (B, N, K, 2), transparency (B, N, K, 1), ...).

    u, v are pixels of the input image (seen through ``resize``), exactly as
    :func:`particle_array` converts them;
    presence is the transparency; all row-major B x N x K.
    """
    mu, presence = fields['mu'], fields['transparency'][..., 0]  # (B, N, K, 2), (B, N, K)
    view = InputView(int(current.image_width), int(current.image_height), resize)
    uv = view.to_pixels(mu)  # (B, N, K, 2), as ParticleFrame.pixels
    response.header = current.header
    response.current = current
    response.dt = float(dt)
    response.candidates, response.horizon, response.particles = (int(n) for n in mu.shape[:3])
    response.u, response.v = _f32(uv[..., 0]), _f32(uv[..., 1])
    response.presence = _f32(presence)
    return response


def particle_frame(
    msg: ParticleArray,
    n_particles: int,
    n_features: int,
    n_bg_features: int,
    resize: str = DEFAULT_RESIZE,
) -> ParticleFrame:
    """A dlp_ros/ParticleArray -> ParticleFrame of K = ``n_particles`` slots, inverting the pixel
    mapping of :meth:`ParticleFrame.message_fields` (the model card's ``resize``).

    Particles are placed by their ``id`` (slots 0..K-1); slots without a particle stay switched
    off (transparency 0); ``on`` is not read (the decoder takes the continuous transparency).
    The message's single ``scale`` (side of the equal-area square) gives both axes the same
    scale latent, so a non-square box comes back square.

    Raises:
        ValueError: no particles, zero image size, an id >= K, a feature vector of the wrong
            length, or non-finite values.
    """
    width, height = int(msg.image_width), int(msg.image_height)
    if width <= 0 or height <= 0:
        raise ValueError(f'particles.image_width/height must be > 0, got {width}x{height}')
    if not msg.particles:
        raise ValueError('particles.particles is empty')
    bg = np.asarray(msg.background_features, dtype=np.float32)
    if bg.shape != (n_bg_features,):
        raise ValueError(
            f'particles.background_features has {bg.size} values, the model needs {n_bg_features}'
        )
    ids = [int(p.id) for p in msg.particles]
    if len(set(ids)) != len(ids):
        raise ValueError(f'particles have duplicate ids: {sorted(ids)}')
    k = int(n_particles)
    if max(ids) >= k:
        raise ValueError(
            f'particle id {max(ids)} does not fit the model (ids are slots 0..{k - 1})'
        )
    mu = np.zeros((k, 2), np.float32)
    logvar = np.zeros((k, 2), np.float32)
    scale = np.zeros((k, 2), np.float32)
    depth = np.zeros((k, 1), np.float32)
    transparency = np.zeros((k, 1), np.float32)
    features = np.zeros((k, n_features), np.float32)
    view = InputView(width, height, resize)
    span = view.span()  # (2,) input pixels per model image side
    for p in msg.particles:
        feats = np.asarray(p.features, dtype=np.float32)
        if feats.shape != (n_features,):
            raise ValueError(
                f'particle {p.id} has {feats.size} features, the model needs {n_features}'
            )
        i = int(p.id)
        mu[i] = view.to_normalised(np.array([p.u, p.v], np.float64))
        std = np.maximum(np.array([p.u_std, p.v_std], np.float64), 1e-6)
        logvar[i] = 2.0 * np.log(2.0 * std / span)
        frac = min(max(float(p.scale) / math.sqrt(span[0] * span[1]), 1e-6), 1.0 - 1e-6)
        scale[i] = math.log(frac / (1.0 - frac))
        depth[i, 0] = p.depth
        transparency[i, 0] = p.transparency
        features[i] = feats
    frame = ParticleFrame(mu, logvar, scale, depth, transparency, features, bg)
    for name, values in frame.arrays().items():
        if not np.all(np.isfinite(values)):
            raise ValueError(f'particles carry non-finite values ({name})')
    return frame


# --- actions -------------------------------------------------------------------------------------
def twist_to_action(msg: TwistStamped, names: Sequence[str], action_dim: int) -> np.ndarray:
    """The (A,) action of a TwistStamped command for a model whose card names its actions.

    Names from ``TWIST_NAMES`` (``linear.x`` ...) pick those fields; other or missing names take
    the twist's fields in TWIST_NAMES order by position.
    """
    t = msg.twist
    values = {
        'linear.x': t.linear.x,
        'linear.y': t.linear.y,
        'linear.z': t.linear.z,
        'angular.x': t.angular.x,
        'angular.y': t.angular.y,
        'angular.z': t.angular.z,
    }
    out = np.zeros(action_dim, dtype=np.float32)
    for i in range(action_dim):
        name = names[i] if i < len(names) else ''
        if name in values:
            out[i] = values[name]
        elif i < len(TWIST_NAMES):
            out[i] = values[TWIST_NAMES[i]]
    return out
