"""The inference forms of the decoder's paste and compositing equal the training forms."""

from __future__ import annotations

import torch

from dlp_training.models.dlp import Dlp, DlpConfig
from dlp_training.models.dlp_parts import (
    composite,
    composite_normalised,
    paste_glimpses,
    paste_glimpses_separable,
)

torch.set_num_threads(1)


def test_separable_paste_equals_grid_sample_paste() -> None:
    g = torch.Generator().manual_seed(0)
    glimpses = torch.rand(2, 5, 4, 8, 8, generator=g)
    centres = torch.rand(2, 5, 2, generator=g) * 2.6 - 1.3  # some boxes cross the border
    half = torch.rand(2, 5, 2, generator=g) * 0.6 + 0.02  # from sub-pixel to large
    for canvas in (16, 33):
        want = paste_glimpses(glimpses, centres, half, canvas)
        got = paste_glimpses_separable(glimpses, centres, half, canvas)
        assert got.shape == want.shape
        assert (got - want).abs().max() < 1e-5


def test_normalised_composite_equals_softmax_composite() -> None:
    g = torch.Generator().manual_seed(1)
    rgba = torch.rand(2, 6, 4, 12, 12, generator=g)
    rgba[:, :, 3][rgba[:, :, 3] < 0.3] = 0.0  # exact zeros of alpha, as outside the boxes
    background = torch.rand(2, 3, 12, 12, generator=g)
    transparency = torch.rand(2, 6, 1, generator=g)
    for scale in (1.0, 30.0):  # depths far apart must not overflow
        depth = torch.randn(2, 6, 1, generator=g) * scale
        want = composite(rgba, depth, transparency, background, 0.25)
        got = composite_normalised(rgba, depth, transparency, background, 0.25)
        assert torch.isfinite(got).all() and (got - want).abs().max() < 1e-5


def test_decode_inference_flag_gives_the_same_image() -> None:
    torch.manual_seed(0)
    config = DlpConfig(S=32, patch_size=8, glimpse_size=8, glimpse_channels=(8, 16),
                       decoder_glimpse_size=8, decoder_channels=(16,),
                       bg_encoder_channels=(8, 16, 16), bg_decoder_channels=(16, 8))  # fmt: skip
    model = Dlp(config).eval()
    with torch.inference_mode():
        p = model.encode(torch.rand(3, 3, 32, 32))
        assert (model.decode(p, inference=True) - model.decode(p)).abs().max() < 1e-5
