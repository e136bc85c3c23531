"""The one image decoding implementation (node, dataset builder, tests) on every supported encoding
and on the bad frames a camera driver can send."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from dlp_ros.errors import ImageError
from dlp_ros.image_codec import (
    ENCODABLE,
    RAW_ENCODINGS,
    decode_compressed,
    decode_raw,
    encode_compressed,
    encode_raw,
    resize_rgb,
)


@pytest.fixture
def rgb() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(7, 11, 3), dtype=np.uint8)  # odd sizes catch stride bugs


@pytest.mark.parametrize('encoding', sorted(ENCODABLE))
def test_raw_round_trip(rgb: np.ndarray, encoding: str) -> None:
    data, channels = encode_raw(rgb, encoding)
    out = decode_raw(encoding, 7, 11, 11 * channels, data.tobytes())
    assert out.shape == (7, 11, 3) and out.dtype == np.uint8
    if encoding == 'mono8':
        grey = data.reshape(7, 11)
        np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, axis=2))
    else:
        np.testing.assert_array_equal(out, rgb)


def test_raw_with_row_padding(rgb: np.ndarray) -> None:
    data, _ = encode_raw(rgb, 'bgr8')
    padded = np.zeros((7, 40), dtype=np.uint8)  # step 40 > 33 bytes of pixels per row
    padded[:, :33] = data.reshape(7, 33)
    np.testing.assert_array_equal(decode_raw('bgr8', 7, 11, 40, padded.tobytes()), rgb)


def test_bgr_is_swapped() -> None:
    pixel = np.array([[[10, 20, 30]]], dtype=np.uint8)  # B, G, R in bgr8
    assert decode_raw('bgr8', 1, 1, 3, pixel.tobytes()).tolist() == [[[30, 20, 10]]]


@pytest.mark.parametrize('fmt', ['png', 'jpeg'])
def test_compressed_round_trip(rgb: np.ndarray, fmt: str) -> None:
    out = decode_compressed(fmt, encode_compressed(rgb, fmt))
    assert out.shape == rgb.shape
    if fmt == 'png':
        np.testing.assert_array_equal(out, rgb)
    else:
        smooth = np.full((16, 16, 3), (200, 40, 90), dtype=np.uint8)
        back = decode_compressed('rgb8; jpeg compressed bgr8', encode_compressed(smooth, fmt))
        assert np.abs(back.astype(int) - smooth).max() <= 3


@pytest.mark.parametrize(
    ('args', 'message'),
    [
        (('nv12', 2, 2, 4, b'\0' * 8), "unsupported image encoding 'nv12'"),
        (('32FC1', 2, 2, 8, b'\0' * 16), "unsupported image encoding '32FC1'"),
        (('uyvy', 2, 3, 6, b'\0' * 12), 'width must be even'),
        (('mono16', 2, 2, 3, b'\0' * 8), 'step 3 is smaller than width\\*channels = 4'),
        (('rgb8', 0, 4, 12, b''), 'zero size'),
        (('rgb8', 4, 4, 12, b'\0' * 20), 'truncated: 20 bytes'),
        (('rgb8', 4, 4, 5, b'\0' * 48), 'step 5 is smaller'),
    ],
)
def test_bad_raw_frames(args: tuple, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        decode_raw(*args)


def test_unsupported_encoding_lists_supported() -> None:
    with pytest.raises(ImageError) as info:
        decode_raw('bayer_rggb16', 2, 2, 4, b'\0' * 8)
    for name in RAW_ENCODINGS:
        assert name in str(info.value)


def test_bad_compressed_frames(rgb: np.ndarray) -> None:
    jpeg = encode_compressed(rgb, 'jpeg')
    with pytest.raises(ImageError, match='corrupt'):
        decode_compressed('jpeg', b'\xff\xd8\xff' + b'\x00' * 50)
    with pytest.raises(ImageError, match='no data'):
        decode_compressed('jpeg', b'')
    with pytest.raises(ImageError, match="unsupported CompressedImage format 'tiff'"):
        decode_compressed('tiff', jpeg)


def test_resize_is_square_and_preserves_flat_colour() -> None:
    flat = np.full((480, 640, 3), (12, 34, 56), dtype=np.uint8)
    out = resize_rgb(flat, 64)
    assert out.shape == (64, 64, 3)
    assert (out == (12, 34, 56)).all()
    assert resize_rgb(out, 128).shape == (128, 128, 3)


def smooth_rgb(height: int = 48, width: int = 64) -> np.ndarray:
    """(H, W, 3) uint8 gradients: demosaicing and 4:2:2 chroma leave it nearly unchanged."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    rgb = np.stack([40 + 150 * x / width, 60 + 120 * y / height, 200 - 100 * x / width], -1)
    return rgb.round().astype(np.uint8)


@pytest.mark.parametrize(
    ('encoding', 'conversion'),
    [
        ('yuv422', cv2.COLOR_RGB2YUV_UYVY),
        ('uyvy', cv2.COLOR_RGB2YUV_UYVY),
        ('yuv422_yuy2', cv2.COLOR_RGB2YUV_YUY2),
        ('yuyv', cv2.COLOR_RGB2YUV_YUY2),
    ],
)
def test_yuv422_bytes_made_by_opencv(encoding: str, conversion: int) -> None:
    rgb = smooth_rgb()
    packed = cv2.cvtColor(rgb, conversion)  # (H, W, 2): OpenCV's own 4:2:2 bytes
    assert packed.shape == (48, 64, 2)
    out = decode_raw(encoding, 48, 64, 128, packed.tobytes())
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - rgb).max() <= 4
    other = 'yuv422_yuy2' if conversion == cv2.COLOR_RGB2YUV_UYVY else 'uyvy'
    wrong = decode_raw(other, 48, 64, 128, packed.tobytes())  # the byte order matters
    assert np.abs(wrong.astype(int) - rgb).max() > 40


def bayer_mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """(H, W) uint8: each pixel keeps the channel its filter passes; ``pattern`` is the
    top-left 2x2 row-major, e.g. 'rggb'."""
    index = {'r': 0, 'g': 1, 'b': 2}
    out = np.empty(rgb.shape[:2], np.uint8)
    for i, colour in enumerate(pattern):
        dy, dx = divmod(i, 2)
        out[dy::2, dx::2] = rgb[dy::2, dx::2, index[colour]]
    return out


@pytest.mark.parametrize('pattern', ['rggb', 'bggr', 'gbrg', 'grbg'])
def test_bayer_bytes(pattern: str) -> None:
    rgb = smooth_rgb()
    raw = bayer_mosaic(rgb, pattern)
    out = decode_raw(f'bayer_{pattern}8', 48, 64, 64, raw.tobytes())
    assert out.shape == rgb.shape and out.dtype == np.uint8
    inner = (slice(2, -2), slice(2, -2))  # demosaicing guesses at the border
    assert np.abs(out[inner].astype(int) - rgb[inner]).max() <= 6
    swapped = pattern.translate(str.maketrans('rb', 'br'))  # red and blue exchanged
    wrong = decode_raw(f'bayer_{swapped}8', 48, 64, 64, raw.tobytes())
    assert np.abs(wrong[inner].astype(int) - rgb[inner]).max() > 40


@pytest.mark.parametrize('encoding', ['mono16', '16UC1'])
@pytest.mark.parametrize('bigendian', [False, True])
def test_16_bit_grey_is_scaled_to_8_bits(encoding: str, bigendian: bool) -> None:
    grey = cv2.cvtColor(smooth_rgb(), cv2.COLOR_RGB2GRAY)  # (H, W) uint8
    wide = grey.astype(np.uint16) * 257  # the same grey over the 16-bit range
    data = wide.astype('>u2' if bigendian else '<u2').tobytes()
    out = decode_raw(encoding, 48, 64, 128, data, bigendian)
    np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, axis=2))
    padded = np.zeros((48, 130), np.uint8)  # step 130 > 128 bytes of pixels per row
    padded[:, :128] = np.frombuffer(data, np.uint8).reshape(48, 128)
    np.testing.assert_array_equal(decode_raw(encoding, 48, 64, 130, padded.tobytes(),
                                             bigendian), out)  # fmt: skip
    assert decode_raw(encoding, 1, 2, 4, np.array([0, 65535], '<u2').tobytes())[0, :, 0].tolist(
    ) == [0, 255]  # fmt: skip
