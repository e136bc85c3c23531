"""The one image decoding implementation (node, dataset builder, tests) on every supported encoding
and on the bad frames a camera driver can send."""

from __future__ import annotations

import numpy as np
import pytest

from dlp_ros.errors import ImageError
from dlp_ros.image_codec import (
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


@pytest.mark.parametrize('encoding', sorted(RAW_ENCODINGS))
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
        (('yuv422', 2, 2, 4, b'\0' * 8), "unsupported image encoding 'yuv422'"),
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
        decode_raw('16UC1', 2, 2, 4, b'\0' * 8)
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
