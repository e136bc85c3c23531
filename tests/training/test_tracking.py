"""Tracked encoding: the numpy slot assignment on hand-made cases, parity with Dlp.posterior, the
runtime path (export views + numpy) against track_sequence, and identities kept over a
constructed sequence of moving blobs whose score ranks change every frame (and one appears)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from dlp_training.models.dlp import Dlp, DlpConfig
from dlp_training.models.dlp_parts import pixel_centres
from dlp_training.models.tracking import (
    DlpBackgroundEncoder,
    DlpTrackingEncoder,
    assign_slots,
    first_frame_slots,
    gather_slots,
    track_sequence,
)

torch.set_num_threads(1)
TINY = DlpConfig(S=64, K=4, n_proposals=6, prior_channels=(8, 8),
                 glimpse_channels=(8, 16), hidden_dim=32, F=4, Fb=4,
                 decoder_channels=(16, 8), bg_encoder_channels=(8, 8, 16, 16),
                 bg_decoder_channels=(16, 8, 8, 8))  # fmt: skip
ON, OFF = np.ones(4), np.zeros(4)
MU = np.array([[-0.5, -0.5], [0.5, -0.5], [0.0, 0.5], [0.6, 0.6]])  # (4, 2) far apart


# ----------------------------------------------------------------------------- numpy core


def test_permuted_detections_keep_every_tracked_slot() -> None:
    perm = np.array([2, 0, 3, 1])
    source = assign_slots(MU, ON, MU[perm], ON[perm])
    assert (source == -1).all()
    tracked = {'mu': MU, 'f': np.arange(8.0).reshape(4, 2)}
    detected = {'mu': MU[perm], 'f': tracked['f'][perm]}
    out = gather_slots(tracked, detected, source)  # the detection order does not leak in
    assert all(np.array_equal(out[k], tracked[k]) for k in tracked)
    assert np.array_equal(first_frame_slots(4), np.arange(4))


def test_identities_survive_a_small_motion() -> None:
    moved = MU + np.array([0.05, -0.04])  # every object moved ~1.5 px of a 64 px image
    source = assign_slots(moved, ON, moved[::-1] + 0.01, ON)
    assert (source == -1).all()


def test_an_off_particle_is_reseeded_at_a_new_object() -> None:
    presence = np.array([1.0, 0.9, 0.1, 0.3])  # slots 2 and 3 are off; 2 is the least present
    new = np.array([[0.9, -0.9], [0.92, -0.88], [-0.5, -0.45]])  # one new object (twice), old 0
    source = assign_slots(MU, presence, new, np.array([0.9, 0.8, 0.9]))
    assert source.tolist() == [-1, -1, 0, -1]  # the second detection is claimed by the first
    out = gather_slots({'mu': MU}, {'mu': new}, source)['mu']
    assert np.allclose(out[2], new[0]) and np.allclose(out[[0, 1, 3]], MU[[0, 1, 3]])


def test_off_detections_never_reseed() -> None:
    presence = np.array([1.0, 1.0, 0.0, 0.0])
    source = assign_slots(MU, presence, np.array([[0.9, -0.9]]), np.array([0.4]))
    assert (source == -1).all()


def test_a_lost_object_takes_a_duplicate_slot_else_is_dropped() -> None:
    dup = MU.copy()
    dup[3] = dup[2] + 0.01  # slots 2 and 3 share one object
    lost = np.array([[0.9, -0.9]])
    assert assign_slots(dup, ON, lost, np.ones(1)).tolist() == [-1, -1, 0, -1]
    assert (assign_slots(MU, ON, lost, np.ones(1)) == -1).all()  # no donor: nothing changes


def test_assign_slots_checks_shapes() -> None:
    with pytest.raises(ValueError, match='tracked_mu'):
        assign_slots(MU[:, :1], ON, MU, ON)
    with pytest.raises(ValueError, match='detected_mu'):
        assign_slots(MU, ON, MU, ON[:3])


# ----------------------------------------------------------------------------- torch parity


def _tiny() -> Dlp:
    torch.manual_seed(0)
    return Dlp(TINY).eval()


def test_posterior_anchored_at_the_top_proposals_is_dlp_posterior() -> None:
    model, x = _tiny(), torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        a = model.posterior(x)
        b = model.posterior(x, model.proposals(x)[:, : TINY.K])
    for name, u, v in zip(a._fields, a, b, strict=True):
        assert torch.allclose(u, v, atol=1e-6), name


def test_clip_loss_anchors_each_frame_at_the_previous_means() -> None:
    """Training on clips encodes frame t > 0 as the tracker does: anchored at frame t - 1's
    means; the loss is the frames' mean, plus the weighted appearance change."""
    model, clips = _tiny(), torch.rand(2, 3, 3, 64, 64)  # (B, T, 3, S, S)
    with torch.no_grad():
        loss, metrics = model(clips, deterministic=True)
        posts = [model.posterior(clips[:, 0])]
        for t in (1, 2):
            posts.append(model.posterior(clips[:, t], posts[-1].mu))
        frames = [model.frame_loss(clips[:, t], p, deterministic=True)[0]
                  for t, p in enumerate(posts)]  # fmt: skip
        change = sum((b.features_mu - a.features_mu).pow(2).sum((1, 2)).mean()
                     for a, b in zip(posts, posts[1:], strict=False))  # fmt: skip
        weighted, _ = model(clips, deterministic=True, track_feature_weight=1e5)
    assert torch.allclose(loss, sum(frames) / 3, rtol=1e-5)
    assert metrics['feature_change'] == pytest.approx(float(change) / 2, rel=1e-4)
    assert float(weighted - loss) == pytest.approx(1e5 * float(change) / 2, rel=1e-3)
    # the anchors are the previous means, not the proposals: frame 1 differs from Dlp.encode's
    assert not torch.allclose(posts[1].mu, model.posterior(clips[:, 1]).mu)
    with pytest.raises(ValueError, match=r'T >= 2'):
        model.clip_loss(clips[:, :1])


def test_clip_loss_trains_the_tracked_passes() -> None:
    """Gradients reach both glimpse encoders from a tracked frame alone (frame 0's loss cut)."""
    model, clips = _tiny().train(), torch.rand(2, 2, 3, 64, 64)
    post0 = model.posterior(clips[:, 0])
    post1 = model.posterior(clips[:, 1], post0.mu.detach())
    model.frame_loss(clips[:, 1], post1)[0].backward()
    for part in (model.offset_encoder, model.particle_encoder):
        grads = [p.grad for p in part.parameters() if p.grad is not None]
        assert grads and any(float(g.abs().sum()) > 0 for g in grads)


def test_track_sequence_checks_frames() -> None:
    with pytest.raises(ValueError, match=r'\(T >= 1, 3, 64, 64\)'):
        track_sequence(_tiny(), torch.rand(2, 3, 32, 32))


# ----------------------------------------------------------------------------- oracle model


class MassPrior(nn.Module):
    """Per patch: the intensity centroid, scored by the patch's intensity mass."""

    def __init__(self, size: int, patch: int) -> None:
        super().__init__()
        self.n, self.p = size // patch, patch
        self.register_buffer('c', pixel_centres(size).view(self.n, patch))  # (n, P)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        b, n, p = image.shape[0], self.n, self.p
        w = image.sum(1).view(b, n, p, n, p).permute(0, 1, 3, 2, 4)  # (B, n, n, P, P) [i j r q]
        mass = w.sum((-1, -2)).clamp(min=1e-6)  # (B, n, n)
        x = (w.sum(-2) * self.c[None, None]).sum(-1) / mass  # (B, n, n)
        y = (w.sum(-1) * self.c[None, :, None]).sum(-1) / mass
        return torch.stack([x, y], -1).view(b, n * n, 2), mass.view(b, n * n)


class CentroidOffset(nn.Module):
    """Offset head that moves each glimpse's anchor onto the glimpse's intensity centroid."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.register_buffer('u', pixel_centres(size))  # (g,)

    def forward(self, g: Tensor) -> Tensor:  # (N, 3, g, g) -> (N, 4)
        w = g.sum(1)  # (N, g, g)
        m = w.sum((1, 2)).clamp(min=1e-6)
        cx, cy = (w.sum(1) * self.u).sum(-1) / m, (w.sum(2) * self.u).sum(-1) / m  # (N,)
        off = torch.atanh(torch.stack([cx, cy], -1).clamp(-0.95, 0.95))
        return torch.cat([off, torch.full_like(off, -5.0)], -1)


class Presence(nn.Module):
    """Pass-2 head: on (logit +6) where the glimpse has intensity, else off; the rest zero."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width

    def forward(self, g: Tensor) -> Tensor:  # (N, 3, g, g) -> (N, 8 + 2F)
        out = torch.zeros(g.shape[0], self.width)
        out[:, 6] = torch.where(g.sum((1, 2, 3)) > 1.0, 6.0, -6.0)
        return out


def _oracle() -> Dlp:
    model = _tiny()
    model.prior = MassPrior(64, TINY.patch_size)
    model.offset_encoder = CentroidOffset(TINY.glimpse_size)
    model.particle_encoder = Presence(8 + 2 * TINY.F)
    return model


def _blobs(t_len: int = 14, appear: int = 7) -> tuple[Tensor, np.ndarray]:
    """Frames (T, 3, 64, 64) of 3 moving discs whose brightness ranks rotate, and a 4th, still
    one from frame ``appear`` on; centres (T, 4, 2) in normalised units."""
    start = np.array([[12.0, 12.0], [52.0, 14.0], [20.0, 52.0], [56.0, 56.0]])
    vel = np.array([[1.5, 0.5], [0.0, 1.5], [1.5, -0.5], [0.0, 0.0]])  # >= 17 px apart
    yy, xx = np.mgrid[0:64, 0:64] + 0.5
    frames, centres = [], []
    for t in range(t_len):
        img = np.zeros((64, 64), np.float32)
        for i, c in enumerate(start + t * vel):
            level = 0.5 + 0.4 * np.sin(2.1 * t + 2.1 * i)  # the mass rank changes every frame
            if i == 3:
                level = 0.7 if t >= appear else 0.0
            img += level * ((xx - c[0]) ** 2 + (yy - c[1]) ** 2 <= 9.0)
        frames.append(np.repeat(img[None], 3, 0))
        centres.append((start + t * vel) / 32 - 1)
    return torch.from_numpy(np.stack(frames)), np.stack(centres)


def _nearest_blob(mu: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = np.linalg.norm(mu[:, :, None] - centres[:, None], axis=-1)  # (T, K, N)
    return d.argmin(-1), d.min(-1)


def test_identities_are_kept_while_score_ranks_change() -> None:
    model, (frames, centres) = _oracle(), _blobs()
    with torch.no_grad():
        untracked = model.encode(frames).mu.numpy()  # (T, K, 2)
    track = track_sequence(model, frames, batch=5)
    mu, on = track.particles.mu.numpy(), track.particles.transparency[..., 0].numpy() > 0.5
    reseeded = track.reseeded.numpy()
    blob, dist = _nearest_blob(mu, centres)
    assert (dist[on] < 1.0 / 32).all()  # every on particle sits on a blob (within 1 px)
    kept = on[1:] & on[:-1] & ~reseeded[1:]
    assert kept.sum() >= 0.8 * on[1:].sum()
    assert (blob[1:][kept] == blob[:-1][kept]).all()  # a tracked slot never changes blob
    assert set(blob[-1][on[-1]]) == {0, 1, 2, 3}  # every blob is covered at the end
    assert reseeded[0].all() and reseeded[1:7].sum() == 0  # new identities only for the new blob
    assert blob[7][reseeded[7]].tolist() == [3]
    ublob = _nearest_blob(untracked, centres)[0]
    assert (ublob[1:] != ublob[:-1]).any()  # per-frame ranks do swap identities
    assert torch.allclose(track.particles.mu[0], torch.from_numpy(untracked[0]))  # frame 0


def test_runtime_path_reproduces_track_sequence() -> None:
    """Export views + numpy only, frame by frame, as the ROS node will run them."""
    model, (frames, _) = _oracle(), _blobs(10, appear=6)
    track = track_sequence(model, frames)
    assert track.reseeded[1:].sum() == 1  # the new blob re-seeds one slot
    enc, bg, k = DlpTrackingEncoder(model), DlpBackgroundEncoder(model), TINY.K
    names = DlpTrackingEncoder.OUTPUT_NAMES
    prev = np.zeros((k, 2), np.float32)
    for t in range(len(frames)):
        with torch.no_grad():
            out = dict(
                zip(names, enc(frames[t : t + 1], torch.from_numpy(prev)[None]), strict=True)
            )
        both = {n: v[0].numpy() for n, v in out.items()}  # (2K, ...)
        tracked, detected = (
            {n: v[:k] for n, v in both.items()},
            {n: v[k:] for n, v in both.items()},
        )
        source = first_frame_slots(k) if t == 0 else assign_slots(
            tracked['mu'], tracked['transparency'][:, 0], detected['mu'],
            detected['transparency'][:, 0], 0.5, TINY.anchor_scale)  # fmt: skip
        fields = gather_slots(tracked, detected, source)
        with torch.no_grad():
            bgf = bg(
                frames[t : t + 1],
                *(torch.from_numpy(fields[n])[None] for n in ('mu', 'transparency')),
            )
        for n, v in fields.items():
            assert np.allclose(v, getattr(track.particles, n)[t].numpy(), atol=1e-5), (t, n)
        assert np.allclose(bgf[0].numpy(), track.particles.bg_features[t].numpy(), atol=1e-5)
        assert np.array_equal(source >= 0, track.reseeded[t].numpy())
        prev = fields['mu']


def test_export_views_run_in_onnxruntime() -> None:
    ort = pytest.importorskip('onnxruntime')
    model = _tiny()
    image, anchors = torch.rand(1, 3, 64, 64), torch.rand(1, TINY.K, 2) * 2 - 1
    views = {
        DlpTrackingEncoder: (image, anchors),
        DlpBackgroundEncoder: (image, anchors, torch.rand(1, TINY.K, 1)),
    }
    for cls, args in views.items():
        module, buf = cls(model).eval(), io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            torch.onnx.export(module, args, buf, dynamo=False, opset_version=17,
                              input_names=list(cls.INPUT_NAMES),
                              output_names=list(cls.OUTPUT_NAMES))  # fmt: skip
        session = ort.InferenceSession(buf.getvalue(), providers=['CPUExecutionProvider'])
        got = session.run(None, dict(zip(cls.INPUT_NAMES, (a.numpy() for a in args), strict=True)))
        with torch.no_grad():
            want = module(*args)
        want = want if isinstance(want, tuple) else (want,)
        for name, g, w in zip(cls.OUTPUT_NAMES, got, want, strict=True):
            assert np.allclose(g, w.numpy(), atol=1e-4), (cls.__name__, name)
