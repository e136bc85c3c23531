"""The DLP model: config validation, coordinates, shapes, training signal, ONNX export."""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from dlp_ros.errors import ConfigError
from dlp_training.models.dlp import (
    DLP_PRESETS,
    Dlp,
    DlpConfig,
    DlpDecoder,
    DlpEncoder,
    Particles,
    overlap_penalty,
)
from dlp_training.models.dlp_parts import PatchPrior, crop_glimpses, paste_glimpses, pixel_centres

TINY = {
    'S': 32,
    'K': 4,
    'n_proposals': 6,
    'patch_size': 8,
    'prior_channels': (8, 8),
    'glimpse_size': 8,
    'glimpse_channels': (8, 16),
    'hidden_dim': 32,
    'F': 4,
    'Fb': 4,
    'decoder_glimpse_size': 8,
    'decoder_channels': (16,),
    'bg_encoder_channels': (8, 16, 16),
    'bg_decoder_channels': (16, 8),
}


def _squares(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """n images with two coloured squares (side size / 6) on black. (n, 3, size, size)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((n, 3, size, size), np.float32)
    side = size // 6
    for i in range(n):
        for _ in range(2):
            r, c = rng.integers(0, size - side, size=2)
            img[i, :, r : r + side, c : c + side] = rng.uniform(0.3, 1.0, size=(3, 1, 1))
    return torch.from_numpy(img)


# ------------------------------------------------------------------------------------ config


def test_defaults_and_presets_are_valid_and_round_trip() -> None:
    for name in DLP_PRESETS:
        cfg = DlpConfig.preset(name)
        assert DlpConfig.from_dict(cfg.to_dict()) == cfg
    cfg = DlpConfig()
    assert (cfg.S, cfg.K, cfg.n_proposals) == (64, 8, 12)
    assert DlpConfig.preset('scene128').S == 128


def test_from_dict_rejects_unknown_keys_by_name_and_accepts_lists() -> None:
    with pytest.raises(ConfigError, match='n_partcles'):
        DlpConfig.from_dict({'n_partcles': 3})
    with pytest.raises(ConfigError, match='nope'):
        DlpConfig.preset('nope')
    cfg = DlpConfig.from_dict({'glimpse_channels': [8, 16, 32]})  # YAML gives lists
    assert cfg.glimpse_channels == (8, 16, 32)


@pytest.mark.parametrize(
    ('override', 'field'),
    [
        ({'patch_size': 12}, 'patch_size'),  # 64 not divisible by 12
        ({'K': 0}, 'K'),
        ({'K': 65}, 'K'),  # more than (64 / 8)^2 patches
        ({'n_proposals': 0}, 'n_proposals'),
        ({'S': 8}, 'S'),
        ({'prior_sigma': 0.0}, 'prior_sigma'),
        ({'anchor_scale': 1.5}, 'anchor_scale'),
        ({'beta': -1.0}, 'beta'),
        ({'F': 2.5}, 'F'),
        ({'K': True}, 'K'),
        ({'glimpse_channels': ()}, 'glimpse_channels'),
        ({'glimpse_channels': (16, 0)}, 'glimpse_channels'),
        ({'decoder_channels': (8, 8, 8, 8, 8)}, 'decoder_channels'),  # 16 px / 2^5
        ({'depth_temperature': 0}, 'depth_temperature'),
    ],
)
def test_bad_values_raise_value_error_naming_the_field(override: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f'DlpConfig.{field}') as info:
        DlpConfig(**override)
    assert isinstance(info.value, ConfigError)
    assert repr(next(iter(override.values()))) in str(info.value)


# ------------------------------------------------------------------------ coordinate convention


def test_spatial_transformer_uses_xy_col_row_normalised_edges() -> None:
    s = 32
    # x = (2 col + 1) / S - 1 is the centre of pixel column col
    assert pixel_centres(4).tolist() == [-0.75, -0.25, 0.25, 0.75]
    image = torch.zeros(1, 1, s, s)
    image[0, 0, 20, 10] = 1.0  # row 20, column 10
    centre = torch.tensor([[[(2 * 10 + 1) / s - 1, (2 * 20 + 1) / s - 1]]])  # (x, y)
    g = crop_glimpses(image, centre, half_size=4 / s, size=4)  # 4x4 px around the pixel centre
    # the glimpse of a pixel centre on a 1-px grid is bilinear between 4 pixels: mass 1 total
    assert g.shape == (1, 1, 1, 4, 4) and g.sum().item() == pytest.approx(1.0)
    g = crop_glimpses(image, centre, half_size=1 / s, size=1)  # exactly that pixel
    assert g.item() == pytest.approx(1.0)
    # paste: a box centred at pixel (col 10, row 20) of half-width 2 px covers cols 8..11
    ones = torch.ones(1, 1, 1, 8, 8)
    centre = torch.tensor([[[10 * 2 / s - 1, 20 * 2 / s - 1]]])  # pixel corner (10, 20)
    canvas = paste_glimpses(ones, centre, torch.full((1, 1, 2), 2 * 2 / s), s)[0, 0, 0]
    rows, cols = torch.nonzero(canvas > 0.5, as_tuple=True)
    assert sorted(set(cols.tolist())) == [8, 9, 10, 11]
    assert sorted(set(rows.tolist())) == [18, 19, 20, 21]


def test_prior_proposals_are_ordered_and_in_xy() -> None:
    prior = PatchPrior(image_size=32, patch_size=8, channels=(4,))
    # a hand-made detector: heatmap = 50 * mean brightness of each 2x2 cell
    prior.net = nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(3, 1, 1, bias=False))
    nn.init.constant_(prior.net[1].weight, 50.0 / 3)
    image = torch.zeros(1, 3, 32, 32)
    image[0, :, 2:4, 22:24] = 1.0  # a dot at rows 2-3, cols 22-23: patch (row 0, col 2)
    keypoints, score = prior(image)
    assert keypoints.shape == (1, 16, 2) and score.shape == (1, 16)
    best = int(score.argmax())
    assert best == 2  # row-major patch index
    x, y = keypoints[0, best].tolist()
    assert x == pytest.approx(23 * 2 / 32 - 1, abs=0.02)  # column 23 boundary: cells 22-23
    assert y == pytest.approx(3 * 2 / 32 - 1, abs=0.02)
    # featureless patches propose their centre (score = the tiny tie-break only)
    assert score[0, 5].item() < 1e-4


# ------------------------------------------------------------------------------------ shapes


@pytest.mark.parametrize(
    ('preset', 'k', 'n'),
    [('balls64', 8, 12), ('balls64', 3, 16), ('balls64', 20, 5), ('scene128', 12, 16),
     ('scene128', 7, 30)],
)  # fmt: skip
def test_encode_decode_forward_shapes(preset: str, k: int, n: int) -> None:
    torch.manual_seed(0)
    cfg = DlpConfig.preset(preset, K=k, n_proposals=n)
    model = Dlp(cfg)
    s, f, fb, b = cfg.S, cfg.F, cfg.Fb, 2
    image = torch.rand(b, 3, s, s)
    with torch.no_grad():
        p = model.encode(image)
        post = model.posterior(image)
        out = model.decode(p)
    assert isinstance(p, Particles)
    expected = {
        'mu': (b, k, 2),
        'logvar': (b, k, 2),
        'scale': (b, k, 2),
        'depth': (b, k, 1),
        'transparency': (b, k, 1),
        'features': (b, k, f),
        'bg_features': (b, fb),
    }
    assert {name: tuple(t.shape) for name, t in p._asdict().items()} == expected
    assert post.proposals.shape == (b, n, 2)
    assert out.shape == (b, 3, s, s)
    assert out.min() >= 0 and out.max() <= 1
    assert ((p.transparency >= 0) & (p.transparency <= 1)).all()
    assert (p.mu.abs() <= 1 + cfg.anchor_scale).all()
    loss, metrics = model(image)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert all(math.isfinite(v) for v in metrics.values())


def test_deterministic_encoding_is_repeatable_and_sampling_is_not() -> None:
    torch.manual_seed(0)
    model = Dlp(DlpConfig(**TINY))
    image = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        a, b = model.encode(image), model.encode(image)
        c = model.encode(image, deterministic=False)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y)
    assert not torch.allclose(a.mu, c.mu) and not torch.allclose(a.features, c.features)
    torch.testing.assert_close(a.logvar, c.logvar)


@pytest.mark.parametrize('static_background', [False, True])
def test_every_parameter_gets_a_gradient_in_both_modes(static_background: bool) -> None:
    torch.manual_seed(0)
    model = Dlp(DlpConfig(**TINY, static_background=static_background))
    image = _squares(2, 32)
    for warmup in (False, True):
        model.zero_grad()
        loss, metrics = model(image, warmup=warmup)
        loss.backward()
        assert ('glimpse_rec' in metrics) == warmup
        for name, param in model.named_parameters():
            assert param.grad is not None, name
            assert torch.isfinite(param.grad).all(), name
        assert model.prior.net[0][0].weight.grad.abs().sum() > 0  # prior learns via anchors


def test_overfits_one_batch() -> None:
    torch.manual_seed(0)
    model = Dlp(DlpConfig(**TINY, beta=0.05))
    image = _squares(4, 32)
    with torch.no_grad():
        first, _ = model(image, deterministic=True)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(150):
        loss, _ = model(image, warmup=step < 20)  # a short warm-up, as in training
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        last, metrics = model(image, deterministic=True)
    assert last.item() < first.item() / 5, (first.item(), last.item())
    assert metrics['psnr'] > 18.0, metrics


def test_a_static_background_starts_as_its_image_whatever_the_code() -> None:
    torch.manual_seed(0)
    model = Dlp(DlpConfig(**TINY, static_background=True))
    scene = _squares(1, 32, seed=2)[0] * 0.8 + 0.1  # (3, S, S)
    model.bg_decoder.set_image(scene)
    with torch.no_grad():
        background = model.bg_decoder(torch.randn(5, TINY['Fb']))  # (5, 3, S, S)
    torch.testing.assert_close(background, scene.expand(5, -1, -1, -1), atol=1e-5, rtol=0)
    assert model.bg_decoder.image_logit is not None
    assert 'bg_decoder.image_logit' in model.state_dict()
    plain = Dlp(DlpConfig(**TINY))
    assert 'bg_decoder.image_logit' not in plain.state_dict()  # older runs load unchanged
    with pytest.raises(ValueError, match='static background decoder'):
        plain.bg_decoder.set_image(scene)


# ------------------------------------------------------------------------------------ export


def _ort_session(module: nn.Module, args: tuple, inputs: tuple, outputs: tuple):
    ort = pytest.importorskip('onnxruntime')
    onnx = pytest.importorskip('onnx')
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(
            module,
            args,
            buf,
            dynamo=False,
            opset_version=17,
            input_names=list(inputs),
            output_names=list(outputs),
            dynamic_axes={name: {0: 'batch'} for name in inputs + outputs},
        )
    onnx.checker.check_model(onnx.load_from_string(buf.getvalue()))
    return ort.InferenceSession(buf.getvalue(), providers=['CPUExecutionProvider'])


@pytest.mark.parametrize('static_background', [False, True])
def test_onnx_export_parity(static_background: bool) -> None:
    torch.manual_seed(0)
    model = Dlp(DlpConfig(**TINY, static_background=static_background)).eval()
    with torch.no_grad():  # the heads start near their biases: make every output non-trivial
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    encoder, decoder = DlpEncoder(model).eval(), DlpDecoder(model).eval()
    enc = _ort_session(
        encoder, (torch.rand(2, 3, 32, 32),), encoder.INPUT_NAMES, Particles._fields
    )
    with torch.no_grad():
        particles = encoder(torch.rand(2, 3, 32, 32))
    named = dict(zip(Particles._fields, particles, strict=True))
    dec_args = tuple(named[name] for name in DlpDecoder.INPUT_NAMES)
    dec = _ort_session(decoder, dec_args, DlpDecoder.INPUT_NAMES, DlpDecoder.OUTPUT_NAMES)

    image = _squares(3, 32, seed=1) + 0.05 * torch.rand(3, 3, 32, 32)  # another batch size
    with torch.no_grad():
        expected = encoder(image)
    got = enc.run(None, {'image': image.numpy()})
    for name, e, g in zip(Particles._fields, expected, got, strict=True):
        np.testing.assert_allclose(g, e.numpy(), atol=1e-4, err_msg=name)
    named = dict(zip(Particles._fields, expected, strict=True))
    with torch.no_grad():
        expected_image = decoder(*(named[name] for name in DlpDecoder.INPUT_NAMES))
    got_image = dec.run(None, {name: named[name].numpy() for name in DlpDecoder.INPUT_NAMES})[0]
    np.testing.assert_allclose(got_image, expected_image.numpy(), atol=1e-4)


def test_a_negative_transparency_prior_mean_charges_particles_that_stay_on() -> None:
    """The sparsity prior: the same posterior costs more transparency KL when the prior prefers
    "off" (mean < 0) and its particles are not off (posterior logits about 0 at init)."""
    torch.manual_seed(0)
    model = Dlp(DlpConfig(**TINY))
    images = _squares(4, TINY['S'])
    kl = {}
    for mean in (0.0, -3.0):
        model.config = DlpConfig(**TINY, transparency_prior_mean=mean)
        torch.manual_seed(1)
        _, metrics = model(images, deterministic=True)
        on = metrics['transparency']
        kl[mean] = metrics['kl_transparency']
    assert on > 0.4, 'the test needs particles that are not off'
    assert kl[-3.0] > kl[0.0] + 1.0, kl


def test_the_overlap_penalty_charges_coincident_particles_that_are_on() -> None:
    """overlap_penalty: t_i t_j for two particles on one spot, ~0 apart or off; its gradient
    parts them or switches one off; in the loss only with overlap_weight > 0."""
    mu = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [0.9, -0.9]]], requires_grad=True)  # (1, 3, 2)
    t = torch.tensor([[[0.8], [0.5], [1.0]]], requires_grad=True)  # (1, 3, 1)
    value = overlap_penalty(mu, t, sigma=0.1)
    assert value.shape == (1,)
    assert value.item() == pytest.approx(0.8 * 0.5, abs=1e-4)  # the far one adds ~exp(-81)
    assert overlap_penalty(mu, torch.tensor([[[0.8], [0.0], [1.0]]]), 0.1).item() < 1e-6
    near = torch.tensor([[[0.0, 0.0], [0.05, 0.0]]], requires_grad=True)
    overlap_penalty(near, torch.ones(1, 2, 1), 0.1).sum().backward()
    assert near.grad[0, 0, 0] > 0 > near.grad[0, 1, 0]  # descent moves them apart
    value.sum().backward()
    assert (t.grad[0, :2] > 0).all()  # and lowers the transparency of the pair
    torch.manual_seed(0)
    model = Dlp(DlpConfig(**TINY))
    images = _squares(4, TINY['S'])
    _, plain = model(images, deterministic=True)
    model.config = DlpConfig(**TINY, overlap_weight=5.0)
    loss, metrics = model(images, deterministic=True)
    assert 'overlap' not in plain and metrics['overlap'] >= 0
    assert loss.item() == pytest.approx(plain['loss'] + 5.0 * metrics['overlap'], rel=1e-5)
    model.config = DlpConfig(**TINY, overlap_weight=5.0, overlap_moves=False)
    _, still = model(images, deterministic=True)  # the same value; positions get no gradient
    assert still['loss'] == pytest.approx(metrics['loss'], rel=1e-6)
