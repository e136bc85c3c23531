"""Camera frames <-> RGB arrays, for sensor_msgs/Image and sensor_msgs/CompressedImage fields.

Plain numpy + OpenCV, no ROS: the node, the dataset builder and the tests share this one
implementation, so a frame gives the same pixels in training and at run time.
"""

from __future__ import annotations

import cv2
import numpy as np

from dlp_ros.errors import ImageError

# encoding -> (channels, conversion to RGB or None when already RGB), 8 bits per channel
RGB8_ENCODINGS: dict[str, tuple[int, int | None]] = {
    'rgb8': (3, None),
    'bgr8': (3, cv2.COLOR_BGR2RGB),
    'mono8': (1, cv2.COLOR_GRAY2RGB),
    'rgba8': (4, cv2.COLOR_RGBA2RGB),
    'bgra8': (4, cv2.COLOR_BGRA2RGB),
    # packed 4:2:2, 2 bytes per pixel; ROS's 'yuv422' is UYVY (U Y0 V Y1), 'yuv422_yuy2' YUYV
    'yuv422': (2, cv2.COLOR_YUV2RGB_UYVY),
    'uyvy': (2, cv2.COLOR_YUV2RGB_UYVY),
    'yuv422_yuy2': (2, cv2.COLOR_YUV2RGB_YUY2),
    'yuyv': (2, cv2.COLOR_YUV2RGB_YUY2),
    # one 8-bit sample per pixel in a 2x2 colour filter (named by its top-left 2x2, row-major);
    # OpenCV names a pattern by the second row's middle pixels, as cv_bridge maps them
    'bayer_rggb8': (1, cv2.COLOR_BayerBG2RGB),
    'bayer_bggr8': (1, cv2.COLOR_BayerRG2RGB),
    'bayer_gbrg8': (1, cv2.COLOR_BayerGR2RGB),
    'bayer_grbg8': (1, cv2.COLOR_BayerGB2RGB),
}
# 16-bit single channel, scaled to 8 bits over the full range (v * 255 / 65535, rounded): the
# same for every frame, so training and the node see the same pixels
MONO16_ENCODINGS = ('mono16', '16UC1')
RAW_ENCODINGS: tuple[str, ...] = (*RGB8_ENCODINGS, *MONO16_ENCODINGS)
COMPRESSED_FORMATS = ('jpeg', 'png')


def _bytes_per_pixel(encoding: str) -> int:
    return 2 if encoding in MONO16_ENCODINGS else RGB8_ENCODINGS[encoding][0]


def decode_raw(
    encoding: str,
    height: int,
    width: int,
    step: int,
    data: bytes | np.ndarray,
    bigendian: bool = False,
) -> np.ndarray:
    """Decode the fields of a sensor_msgs/Image into an (H, W, 3) uint8 RGB array.

    ``bigendian`` (the message's ``is_bigendian``) matters for the 16-bit encodings only.

    Raises:
        ImageError: unsupported encoding, zero size, a step too small or data too short.
    """
    if encoding not in RAW_ENCODINGS:
        raise ImageError(
            f'unsupported image encoding {encoding!r}; supported: {", ".join(RAW_ENCODINGS)}'
            f' (or CompressedImage {"/".join(COMPRESSED_FORMATS)})'
        )
    if height <= 0 or width <= 0:
        raise ImageError(f'image has zero size ({width}x{height})')
    row = width * _bytes_per_pixel(encoding)
    if step < row:
        raise ImageError(f'image step {step} is smaller than width*channels = {row} ({encoding})')
    buf = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes | bytearray) else data
    buf = np.asarray(buf, dtype=np.uint8).reshape(-1)
    need = step * (height - 1) + row
    if buf.size < need:
        raise ImageError(
            f'image data is truncated: {buf.size} bytes for {width}x{height} {encoding} with '
            f'step {step} (need {need})'
        )
    rows = np.lib.stride_tricks.as_strided(
        buf, shape=(height, row), strides=(step, 1), writeable=False
    )
    if encoding in MONO16_ENCODINGS:
        return _mono16_to_rgb(np.ascontiguousarray(rows), bigendian)
    channels, conversion = RGB8_ENCODINGS[encoding]
    img = rows.reshape(height, width, channels)  # (H, W, C)
    if conversion is None:
        return np.ascontiguousarray(img)
    if channels == 2 and width % 2:
        raise ImageError(f'{encoding} packs pixel pairs: the width must be even, got {width}')
    if channels == 1:
        img = img[..., 0]
    try:
        return cv2.cvtColor(np.ascontiguousarray(img), conversion)
    except cv2.error as exc:
        raise ImageError(f'cannot convert a {width}x{height} {encoding} image: {exc}') from exc


def _mono16_to_rgb(rows: np.ndarray, bigendian: bool) -> np.ndarray:
    """(H, 2W) uint8 bytes of 16-bit samples -> (H, W, 3) uint8 grey, v * 255 / 65535."""
    values = rows.view('>u2' if bigendian else '<u2').astype(np.uint32)  # (H, W)
    grey = ((values * 255 + 32767) // 65535).astype(np.uint8)
    return cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)


def decode_compressed(fmt: str, data: bytes | np.ndarray) -> np.ndarray:
    """Decode a sensor_msgs/CompressedImage (jpeg or png) into an (H, W, 3) uint8 RGB array.

    ``fmt`` may be a bare ``jpeg``/``png`` or image_transport's ``"bgr8; jpeg compressed bgr8"``.

    Raises:
        ImageError: unsupported format, empty or corrupt data.
    """
    lowered = fmt.lower()
    if not any(name in lowered for name in (*COMPRESSED_FORMATS, 'jpg')):
        raise ImageError(
            f'unsupported CompressedImage format {fmt!r}; '
            f'supported: {", ".join(COMPRESSED_FORMATS)}'
        )
    buf = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes | bytearray) else data
    buf = np.asarray(buf, dtype=np.uint8).reshape(-1)
    if buf.size == 0:
        raise ImageError(f'CompressedImage ({fmt}) has no data')
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise ImageError(f'CompressedImage ({fmt}, {buf.size} bytes) is corrupt: cannot decode')
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


ENCODABLE: dict[str, int | None] = {
    'rgb8': None,
    'bgr8': cv2.COLOR_RGB2BGR,
    'mono8': cv2.COLOR_RGB2GRAY,
    'rgba8': cv2.COLOR_RGB2RGBA,
    'bgra8': cv2.COLOR_RGB2BGRA,
}


def encode_raw(rgb: np.ndarray, encoding: str) -> tuple[np.ndarray, int]:
    """(H, W, 3) uint8 RGB -> (pixel data in ``encoding``, channels), for the encodings of
    :data:`ENCODABLE` (what the recorders and the node's outputs write)."""
    if encoding not in ENCODABLE:
        raise ImageError(
            f'cannot encode images as {encoding!r}; supported: {", ".join(ENCODABLE)}'
        )
    conversion = ENCODABLE[encoding]
    out = rgb if conversion is None else cv2.cvtColor(rgb, conversion)
    return np.ascontiguousarray(out, dtype=np.uint8), RGB8_ENCODINGS[encoding][0]


def encode_compressed(rgb: np.ndarray, fmt: str = 'jpeg', quality: int = 95) -> bytes:
    """(H, W, 3) uint8 RGB -> jpeg or png bytes."""
    if fmt not in COMPRESSED_FORMATS:
        supported = ', '.join(COMPRESSED_FORMATS)
        raise ImageError(f'unsupported CompressedImage format {fmt!r}; supported: {supported}')
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if fmt == 'jpeg' else []
    ok, buf = cv2.imencode('.jpg' if fmt == 'jpeg' else '.png', bgr, params)
    if not ok:
        raise ImageError(f'cannot encode a {rgb.shape} image as {fmt}')
    return buf.tobytes()


def resize_rgb(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize (H, W, 3) to (size, size, 3): area averaging when shrinking, bilinear when growing.

    The frame is squashed to a square (no crop): the ``squash`` mode of
    :mod:`dlp_ros.input_view`, which also crops or pads before it.
    """
    h, w = rgb.shape[:2]
    if (h, w) == (size, size):
        return rgb
    shrinking = h >= size and w >= size
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(rgb, (size, size), interpolation=interp)


def to_model_input(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB frames (..., S, S, 3) -> model input (..., 3, S, S) float32 in [0, 1] (x / 255).

    The one conversion shared by training (``dlp_training.frames``, ``encode-dataset``,
    ``evaluate-dlp``) and the runtime (:meth:`dlp_ros.runtime.DlpRuntime.preprocess`, after
    :func:`resize_rgb`), so a frame gives the same tensor in both.

    Raises:
        ImageError: not uint8 or the last axis is not 3 (RGB).
    """
    if rgb.dtype != np.uint8 or rgb.ndim < 3 or rgb.shape[-1] != 3:
        raise ImageError(f'model input must be uint8 RGB (..., H, W, 3), got {rgb.dtype} '
                         f'{rgb.shape}')  # fmt: skip
    chw = np.moveaxis(rgb, -1, -3)  # (..., 3, S, S) view
    out = np.empty(chw.shape, dtype=np.float32)  # C-contiguous, as onnxruntime wants it
    return np.divide(chw, np.float32(255.0), out=out, dtype=np.float32)
