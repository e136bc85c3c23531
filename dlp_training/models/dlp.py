r"""Deep Latent Particles, DLPv2-style object model (Daniel & Tamar, ICML 2022; DDLP, TMLR 2024).

An image is explained by K foreground particles and one background particle:

* **prior** (:class:`~dlp_training.models.dlp_parts.PatchPrior`): one spatial-softmax keypoint per
  P x P patch, the L most informative kept (largest distance from the patch centre,
  ``torch.topk``), each a Gaussian :math:`\mathcal N(k_j, \sigma_p^2 I)`;
* **posterior**: the K most informative proposals are *anchors*. Pass 1 crops a glimpse at each
  anchor and predicts an offset, so :math:`\mu = a + s_a \tanh(o)` (:math:`s_a` = anchor_scale),
  and the position log-variance. Pass 2 crops a glimpse at :math:`\mu` and predicts the scale,
  depth, transparency and appearance features. The background encoder sees the image with the
  particles' boxes masked out and gives the background features;
* **decoder**: each particle's features decode to an RGBA glimpse, pasted in a box of half-width
  ``sigmoid(scale)`` at its position and composited over the decoded background by depth and
  transparency (:func:`~dlp_training.models.dlp_parts.composite`, a soft z-buffer).

Particle attributes (as in DLPv2 unless noted; "latent" = what the dynamics model will predict):

=================  ========  ===================================================================
name               shape     meaning
=================  ========  ===================================================================
mu                 (B,K,2)   position (x, y) = (column, row), [-1, 1] = image edges
logvar             (B,K,2)   position log-variance (the uncertainty a planner gets)
scale              (B,K,2)   latent; ``sigmoid(scale)`` = box half-width in normalised units
                             = box side as a fraction of the image side, x and y
depth              (B,K,1)   latent; smaller is nearer (wins where particles overlap)
transparency       (B,K,1)   presence in [0, 1]; ``sigmoid`` of a Gaussian logit (logit-normal;
                             DLPv2 uses a Beta; ``dlp_training.losses``), 0 switches a particle off
features           (B,K,F)   appearance latent
bg_features        (B,Fb)    background appearance latent
=================  ========  ===================================================================

Loss (``forward``): ``L = SSE(x_hat, x) + beta * [ChamferKL(mu, proposals) + KL_scale +
KL_transparency + kl_balance * (KL_features + KL_bg + KL_depth)]``, every term summed over
particles, dimensions and pixels and averaged over the batch. The weights follow DLPv2 except
for the Chamfer-KL, which has full weight as in DLP v1 (DLPv2 scales it by kl_balance / 2 and
regularises the offsets with a KL of their own instead). Warm-up (``forward(x,
warmup=True)``, recommended for the first epoch on object scenes, as the reference's warm-up
epochs): the decoder uses the fixed prior scale and an extra *glimpse reconstruction* term trains
each particle's decoded glimpse RGB to reproduce the input crop at its box, so glimpses learn
appearance before transparency and the background can explain objects away.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from dlp_ros.config_schema import Check, check_fields, checked, fail, from_mapping
from dlp_ros.errors import ConfigError
from dlp_training.losses import (
    chamfer_kl,
    gaussian_kl,
    reconstruction_sse,
    transparency_kl,
    weighted_objective,
)
from dlp_training.metrics import psnr
from dlp_training.models.dlp_parts import (
    BackgroundDecoder,
    BackgroundEncoder,
    GlimpseDecoder,
    GlimpseEncoder,
    PatchPrior,
    box_masks,
    composite,
    composite_normalised,
    crop_glimpses,
    paste_glimpses,
    paste_glimpses_separable,
)

logger = logging.getLogger(__name__)

# CNN channel lists: at least one stage, every stage at least one channel.
CHANNELS: dict[str, Any] = {'min_len': 1, 'items': Check(ge=1)}


@dataclass
class DlpConfig:
    """Hyper-parameters of :class:`Dlp`. Defaults: 64x64 Balls (see ``DLP_PRESETS`` for 128)."""

    # Keys of runs written before the sizes took the model card's names (S, K, F, Fb).
    RENAMED: ClassVar[dict[str, str]] = {
        'image_size': 'S',
        'n_particles': 'K',
        'feature_dim': 'F',
        'bg_feature_dim': 'Fb',
    }
    # Fields that weigh the loss and shape no weight: a run may fine-tune another run's weights
    # with other values of these (train.init_from).
    LOSS_FIELDS: ClassVar[frozenset[str]] = frozenset({
        'prior_sigma', 'scale_prior_std', 'transparency_prior_mean', 'transparency_prior_std',
        'overlap_weight', 'overlap_sigma', 'overlap_moves', 'beta', 'kl_balance',
        'glimpse_loss_weight',
    })  # fmt: skip

    # S: side of the square input image, pixels; images are (B, 3, S, S) floats in [0, 1].
    S: int = checked(64, ge=16)
    # K: foreground particles.
    K: int = checked(8, ge=1)
    # L: prior keypoint proposals kept (targets of the Chamfer-KL); L != K is fine.
    n_proposals: int = checked(12, ge=1)
    # P: prior patch side, pixels; one proposal per patch, (S / P)^2 in all (>= K and >= L).
    patch_size: int = checked(8, ge=4)
    # Prior CNN channels (first conv stride 2, the others stride 1; heatmap at S / 2).
    prior_channels: tuple[int, ...] = checked((16, 16), **CHANNELS)
    # Std of the prior proposals' Gaussians, normalised units (2 / S is one pixel).
    prior_sigma: float = checked(0.1, gt=0)
    # Half-width of encoder glimpses, normalised units (= glimpse side / image side); also the
    # largest offset from the anchor and the box hidden from the background encoder.
    anchor_scale: float = checked(0.25, gt=0, le=1, say='in (0, 1]')
    # Encoder glimpse resolution, pixels (native when = anchor_scale * S).
    glimpse_size: int = 16
    # Glimpse encoder CNN channels, one stride-2 conv each.
    glimpse_channels: tuple[int, ...] = checked((16, 32, 64), **CHANNELS)
    # Width of the MLPs.
    hidden_dim: int = checked(128, ge=1)
    # F: particle appearance features.
    F: int = checked(6, ge=1)
    # Fb: background features.
    Fb: int = checked(8, ge=1)
    # Decoded RGBA glimpse resolution, pixels.
    decoder_glimpse_size: int = 16
    # Glimpse decoder channels: MLP to channels[0] maps, one x2 upsampling per entry (the last
    # one a transposed conv straight to RGBA).
    decoder_channels: tuple[int, ...] = checked((32, 16), **CHANNELS)
    # Background encoder channels, one stride-2 conv each.
    bg_encoder_channels: tuple[int, ...] = checked((16, 32, 64, 64), **CHANNELS)
    # Background decoder channels, as decoder_channels (S / 2^n maps upsampled to S).
    bg_decoder_channels: tuple[int, ...] = checked((64, 32, 16, 16), **CHANNELS)
    # A static camera: the background is a learned image (3, S, S) with the decoded change of
    # the background code added in logit space; train-dlp starts it at the per-pixel median of
    # training frames. The scene is then drawn sharp, and what moves cannot hide in the
    # background code: particles must explain it. Off: the background is decoded from the code.
    static_background: bool = False
    # Scale prior N(logit(scale_prior_fraction * anchor_scale), scale_prior_std^2).
    scale_prior_fraction: float = 0.75
    scale_prior_std: float = checked(0.3, gt=0)
    # Transparency prior: logit ~ N(transparency_prior_mean, transparency_prior_std^2) (std > ~1.8
    # is U-shaped on [0, 1]). A negative mean prefers "off": a particle stays on only where it
    # pays for itself in reconstruction, so duplicates of an object switch off (sparsity).
    transparency_prior_mean: float = 0.0
    transparency_prior_std: float = checked(2.0, gt=0)
    # Overlap penalty (0 = off): overlap_weight times the sum over particle pairs of
    # t_i t_j exp(-|mu_i - mu_j|^2 / (2 overlap_sigma^2)) (:func:`overlap_penalty`), per image.
    # Two particles on one spot then cost unless one switches off or they part; sigma in
    # normalised units (0.1 = 3.2 px at 64 px).
    overlap_weight: float = checked(0.0, ge=0)
    overlap_sigma: float = checked(0.1, gt=0)
    # Whether the penalty's gradient also moves the particles (apart), or only their
    # transparency (one of a pair switches off; positions stay where reconstruction puts them).
    overlap_moves: bool = True
    # Depth prior N(0, 1); compositing softmax temperature over depths.
    depth_temperature: float = checked(0.25, gt=0)
    # beta: weight of all KL terms against the reconstruction SSE.
    beta: float = checked(0.1, ge=0)
    # Extra weight of the feature, background and depth KL terms (DLP kl_balance).
    kl_balance: float = checked(0.001, ge=0)
    # Weight of the glimpse reconstruction term during warm-up.
    glimpse_loss_weight: float = checked(1.0, ge=0)

    def __post_init__(self) -> None:
        check_fields(self)
        self._check_sizes()

    def _check_sizes(self) -> None:
        """The checks between fields (the per-field ranges are in the fields' metadata)."""

        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise fail(self, name, f'{what}, got {getattr(self, name)!r}')

        s, p = self.S, self.patch_size
        need(p % 2 == 0, 'patch_size', 'must be even and >= 4')
        need(s % p == 0, 'patch_size', f'must divide S={s}')
        n = (s // p) ** 2
        need(n >= self.K, 'K', f'must be in [1, (S/P)^2 = {n}]')
        need(self.n_proposals <= n, 'n_proposals', f'must be in [1, (S/P)^2 = {n}]')
        frac = self.scale_prior_fraction * self.anchor_scale
        need(0 < frac < 1, 'scale_prior_fraction', 'times anchor_scale must be in (0, 1)')
        divisible = (
            ('glimpse_size', 'glimpse_channels', 0),
            ('decoder_glimpse_size', 'decoder_channels', 0),
            ('S', 'bg_encoder_channels', 0),
            ('S', 'bg_decoder_channels', 0),
        )
        for size_name, channels_name, minus in divisible:
            factor = 2 ** (len(getattr(self, channels_name)) - minus)
            what = f'has too many stages: {size_name} must be divisible by {factor}'
            need(getattr(self, size_name) % factor == 0, channels_name, what)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DlpConfig:
        """Build from a mapping (e.g. YAML); unknown keys raise ``ConfigError`` naming them."""
        return from_mapping(cls, d)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> DlpConfig:
        """A named configuration from ``DLP_PRESETS`` with optional overrides."""
        if name not in DLP_PRESETS:
            raise ConfigError(f'unknown DLP preset {name!r}; known: {sorted(DLP_PRESETS)}')
        return cls.from_dict({**DLP_PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (tuples as lists) for YAML and checkpoints; ``from_dict`` inverts it."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(self).items()}

    @property
    def n_patches(self) -> int:
        return (self.S // self.patch_size) ** 2

    @property
    def scale_prior_mean(self) -> float:
        """Mean of the scale latent's prior, logit of the prior box half-width."""
        f = self.scale_prior_fraction * self.anchor_scale
        return math.log(f / (1 - f))


DLP_PRESETS: dict[str, dict[str, Any]] = {
    # 64x64 bouncing balls (3 balls of radius 8 px): the dataclass defaults.
    'balls64': {},
    # 128x128 table-top scenes: 64 patches of 16 px, 32 px glimpses read at 16 px, decoded at 32.
    'scene128': {
        'S': 128,
        'K': 12,
        'n_proposals': 16,
        'patch_size': 16,
        'prior_channels': (16, 32),
        'F': 8,
        'Fb': 16,
        'decoder_glimpse_size': 32,
        'decoder_channels': (32, 32, 16),
        'bg_encoder_channels': (16, 32, 64, 64, 64),
        'bg_decoder_channels': (64, 64, 32, 16, 16),
    },
}


class Particles(NamedTuple):
    """Particles of a batch of images (see the module docstring for meanings and units)."""

    mu: Tensor  # (B, K, 2) position (x, y), posterior mean or sample
    logvar: Tensor  # (B, K, 2) position log-variance
    scale: Tensor  # (B, K, 2) scale latent
    depth: Tensor  # (B, K, 1)
    transparency: Tensor  # (B, K, 1) in [0, 1]
    features: Tensor  # (B, K, F)
    bg_features: Tensor  # (B, Fb)


class Posterior(NamedTuple):
    """Distribution parameters of the posterior (means and log-variances) and the prior."""

    mu: Tensor  # (B, K, 2)
    logvar: Tensor  # (B, K, 2)
    scale_mu: Tensor  # (B, K, 2)
    scale_logvar: Tensor  # (B, K, 2)
    depth_mu: Tensor  # (B, K, 1)
    depth_logvar: Tensor  # (B, K, 1)
    transparency_mu: Tensor  # (B, K, 1) logit
    transparency_logvar: Tensor  # (B, K, 1) logit
    features_mu: Tensor  # (B, K, F)
    features_logvar: Tensor  # (B, K, F)
    bg_mu: Tensor  # (B, Fb)
    bg_logvar: Tensor  # (B, Fb)
    proposals: Tensor  # (B, L, 2) prior means, detached


def _sample(mu: Tensor, logvar: Tensor, deterministic: bool) -> Tensor:
    """Reparameterised sample mu + sigma * eps, or mu."""
    if deterministic:
        return mu
    return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)


class Dlp(nn.Module):
    """DLPv2-style Deep Latent Particles VAE (see the module docstring).

    Args:
        config: :class:`DlpConfig`.

    Shapes:
        encode: image (B, 3, S, S) in [0, 1] -> :class:`Particles`.
        decode: :class:`Particles` -> image (B, 3, S, S) in [0, 1].
        forward: image (B, 3, S, S) -> (scalar loss, metrics dict of floats).
    """

    def __init__(self, config: DlpConfig) -> None:
        super().__init__()
        self.config = c = config
        self.prior = PatchPrior(c.S, c.patch_size, c.prior_channels)
        # pass 1: offset (2) + position logvar (2)
        self.offset_encoder = GlimpseEncoder(c.glimpse_size, c.glimpse_channels, c.hidden_dim, 4)
        # pass 2: scale (2+2), depth (1+1), transparency (1+1), features (F+F)
        n_attr = 2 * (2 + 1 + 1 + c.F)
        self.particle_encoder = GlimpseEncoder(
            c.glimpse_size, c.glimpse_channels, c.hidden_dim, n_attr
        )
        self.bg_encoder = BackgroundEncoder(c.S, c.bg_encoder_channels, c.hidden_dim, 2 * c.Fb)
        self.glimpse_decoder = GlimpseDecoder(
            c.F, c.decoder_glimpse_size, c.decoder_channels, c.hidden_dim
        )
        self.bg_decoder = BackgroundDecoder(
            c.Fb, c.S, c.bg_decoder_channels, c.hidden_dim, static=c.static_background
        )
        self._init_head_biases()
        logger.debug('Dlp with %d parameters', sum(p.numel() for p in self.parameters()))

    def _init_head_biases(self) -> None:
        """Start the posterior near the priors, with small variances."""
        c = self.config
        with torch.no_grad():
            b1 = self.offset_encoder.head[-1].bias  # (4,)
            b1[2:] = 2 * math.log(0.5 * c.prior_sigma)  # position std = prior_sigma / 2
            b2 = self.particle_encoder.head[-1].bias
            f = c.F
            b2[0:2] = c.scale_prior_mean  # scale mu
            b2[2:4] = -4.0  # scale logvar
            b2[5] = b2[7] = -4.0  # depth and transparency logvar
            b2[8 + f :] = -4.0  # features logvar
            self.bg_encoder.head[-1].bias[c.Fb :] = -4.0

    # --------------------------------------------------------------------------------- encoder

    def posterior(self, image: Tensor, anchors: Tensor | None = None) -> Posterior:
        """Image (B, 3, S, S) -> posterior parameters and the prior proposals.

        The anchors (B, K, 2) that :meth:`glimpse_passes` refines are the K best prior proposals,
        or ``anchors`` when given (tracking: the previous frame's means).
        """
        props = self.proposals(image)  # (B, M, 2)
        if anchors is None:
            anchors = props[:, : self.config.K]  # (B, K, 2); the prior learns through them
        mu, logvar, head = self.glimpse_passes(image, anchors)
        hb = self.background_head(image, mu, torch.sigmoid(head[..., 6:7]))
        return self.assemble(mu, logvar, head, hb, props)

    def proposals(self, image: Tensor) -> Tensor:
        """Image (B, 3, S, S) -> prior keypoints (B, M, 2), best first, M = max(K, L)."""
        c = self.config
        keypoints, score = self.prior(image)  # (B, N, 2), (B, N)
        idx = torch.topk(score, max(c.K, c.n_proposals), dim=1).indices  # (B, M)
        return torch.gather(keypoints, 1, idx.unsqueeze(-1).expand(-1, -1, 2))  # (B, M, 2)

    def glimpse_passes(self, image: Tensor, anchors: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Passes 1 and 2 of the posterior at anchors (B, K', 2), any K'.

        Pass 1 crops a glimpse at each anchor and predicts the offset and the position
        log-variance; pass 2 crops at the refined position and predicts the other attributes.

        Returns:
            mu (B, K', 2), logvar (B, K', 2) and the pass-2 head (B, K', 8 + 2F): scale mu and
            logvar, depth mu and logvar, transparency logit mu and logvar, features mu and logvar.
        """
        c = self.config
        b, k = anchors.shape[0], anchors.shape[1]
        g = crop_glimpses(image, anchors.detach(), c.anchor_scale, c.glimpse_size)
        h = self.offset_encoder(g.flatten(0, 1)).view(b, k, 4)  # (B, K', 4)
        mu = anchors + c.anchor_scale * torch.tanh(h[..., :2])  # (B, K', 2)
        g = crop_glimpses(image, mu.detach(), c.anchor_scale, c.glimpse_size)
        head = self.particle_encoder(g.flatten(0, 1)).view(b, k, -1)  # (B, K', 8 + 2F)
        return mu, h[..., 2:], head

    def background_head(self, image: Tensor, mu: Tensor, transparency: Tensor) -> Tensor:
        """Background head (B, 2 Fb): the encoder must not see the particles, so the boxes of
        the particles (mu (B, K, 2)) are hidden in proportion to transparency (B, K, 1)."""
        c = self.config
        on = transparency.detach().unsqueeze(-1)  # (B, K, 1, 1)
        boxes = box_masks(mu.detach(), c.anchor_scale, c.S) * on  # (B, K, S, S)
        visible = torch.prod(1 - boxes, dim=1, keepdim=True)  # (B, 1, S, S)
        return self.bg_encoder(image * visible)  # (B, 2 Fb)

    def assemble(
        self, mu: Tensor, logvar: Tensor, head: Tensor, hb: Tensor, props: Tensor
    ) -> Posterior:
        """:class:`Posterior` from the pass outputs and the proposals (B, M, 2)."""
        f, fb, n = self.config.F, self.config.Fb, self.config.n_proposals
        return Posterior(
            mu=mu,
            logvar=logvar,
            scale_mu=head[..., 0:2],
            scale_logvar=head[..., 2:4],
            depth_mu=head[..., 4:5],
            depth_logvar=head[..., 5:6],
            transparency_mu=head[..., 6:7],
            transparency_logvar=head[..., 7:8],
            features_mu=head[..., 8 : 8 + f],
            features_logvar=head[..., 8 + f :],
            bg_mu=hb[..., :fb],
            bg_logvar=hb[..., fb:],
            proposals=props[..., :n, :].detach(),
        )

    @staticmethod
    def sample(post: Posterior, deterministic: bool) -> Particles:
        """Particles from the posterior: means (``deterministic``) or reparameterised samples."""
        t = _sample(post.transparency_mu, post.transparency_logvar, deterministic)
        return Particles(
            mu=_sample(post.mu, post.logvar, deterministic),
            logvar=post.logvar,
            scale=_sample(post.scale_mu, post.scale_logvar, deterministic),
            depth=_sample(post.depth_mu, post.depth_logvar, deterministic),
            transparency=torch.sigmoid(t),
            features=_sample(post.features_mu, post.features_logvar, deterministic),
            bg_features=_sample(post.bg_mu, post.bg_logvar, deterministic),
        )

    def encode(self, image: Tensor, deterministic: bool = True) -> Particles:
        """Image (B, 3, S, S) in [0, 1] -> :class:`Particles` (means, or samples)."""
        return self.sample(self.posterior(image), deterministic)

    def train_only_decoder(self) -> None:
        """Freeze the prior and the encoders (no gradient, so no optimiser step changes them):
        the particles of every image stay as they are, and only the decoders learn."""
        self.requires_grad_(False)
        self.glimpse_decoder.requires_grad_(True)
        self.bg_decoder.requires_grad_(True)

    # --------------------------------------------------------------------------------- decoder

    def render(
        self, particles: Particles, fixed_scale: bool = False, inference: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Particles -> (image (B, 3, S, S), decoded RGBA glimpses (B, K, 4, g, g)).

        ``fixed_scale`` pastes every glimpse at the prior's scale (warm-up). ``inference`` uses
        the equivalent inference forms of the paste and the compositing
        (:func:`~dlp_training.models.dlp_parts.paste_glimpses_separable`,
        :func:`~dlp_training.models.dlp_parts.composite_normalised`): faster without gradients,
        slower to train, equal up to float rounding.
        """
        c = self.config
        b, k = particles.features.shape[0], particles.features.shape[1]
        rgba = self.glimpse_decoder(particles.features.flatten(0, 1))  # (B*K, 4, g, g)
        rgba = rgba.view(b, k, 4, c.decoder_glimpse_size, c.decoder_glimpse_size)
        scale = particles.scale
        if fixed_scale:
            scale = torch.full_like(scale, c.scale_prior_mean)
        paste = paste_glimpses_separable if inference else paste_glimpses
        layers = paste(rgba, particles.mu, torch.sigmoid(scale), c.S)
        background = self.bg_decoder(particles.bg_features)  # (B, 3, S, S)
        image = (composite_normalised if inference else composite)(
            layers, particles.depth, particles.transparency, background, c.depth_temperature
        )
        return image, rgba

    def decode(self, particles: Particles, inference: bool = False) -> Tensor:
        """:class:`Particles` -> image (B, 3, S, S) in [0, 1] (``logvar`` is not used);
        ``inference``: see :meth:`render`."""
        return self.render(particles, inference=inference)[0]

    # --------------------------------------------------------------------------------- loss

    def forward(
        self,
        image: Tensor,
        warmup: bool = False,
        deterministic: bool = False,
        track_feature_weight: float = 0.0,
    ) -> tuple[Tensor, dict[str, float]]:
        """Loss of a batch (see the module docstring) and metrics for logging.

        Args:
            image: frames (B, 3, S, S), or clips (B, T, 3, S, S) of consecutive frames, in
                [0, 1]. A clip is encoded as the runtime tracks it (:meth:`clip_loss`).
            warmup: fixed decoder scale and the glimpse reconstruction term (first epoch).
            deterministic: decode the posterior means instead of samples (evaluation).
            track_feature_weight: clips only, see :meth:`clip_loss`.
        """
        if image.ndim == 5:
            return self.clip_loss(image, warmup, deterministic, track_feature_weight)
        return self.frame_loss(image, self.posterior(image), warmup, deterministic)

    def clip_loss(
        self,
        clips: Tensor,
        warmup: bool = False,
        deterministic: bool = False,
        track_feature_weight: float = 0.0,
    ) -> tuple[Tensor, dict[str, float]]:
        r"""Loss of clips (B, T, 3, S, S): the DDLP-style tracking posterior, trained.

        Frame 0 is anchored at its top-K proposals; frame t > 0 at frame t - 1's posterior means
        (no gradient through the anchors), as :func:`~dlp_training.models.tracking.track_sequence`
        and the runtime encode a stream. So the glimpse encoders learn to re-find *their* object
        near where it was, and a particle that leaves its object to sit on a neighbour costs that
        object's reconstruction. The loss is the per-frame loss (:meth:`frame_loss`) averaged
        over the T frames, plus ``track_feature_weight`` times the appearance change of each
        particle, :math:`\sum_{k,f} (\phi_{t,k,f} - \mathrm{sg}(\phi_{t-1,k,f}))^2` (feature
        means), batch and time averaged: a particle that jumps to another object changes its
        appearance.
        """
        if clips.ndim != 5 or clips.shape[1] < 2:
            raise ValueError(f'clips must be (B, T >= 2, 3, S, S), got {tuple(clips.shape)}')
        t_len = clips.shape[1]
        loss, totals = clips.new_zeros(()), {}
        anchors, previous = None, None
        change = clips.new_zeros(())
        for t in range(t_len):
            post = self.posterior(clips[:, t], anchors)
            step_loss, metrics = self.frame_loss(clips[:, t], post, warmup, deterministic)
            loss = loss + step_loss / t_len
            for key, value in metrics.items():
                totals[key] = totals.get(key, 0.0) + value / t_len
            if previous is not None:
                change = change + (post.features_mu - previous).pow(2).flatten(1).sum(-1).mean()
            anchors, previous = post.mu.detach(), post.features_mu.detach()
        change = change / (t_len - 1)
        totals['feature_change'] = change.item()
        if track_feature_weight:
            loss = loss + track_feature_weight * change
        totals['loss'] = loss.item()
        return loss, totals

    def frame_loss(
        self, image: Tensor, post: Posterior, warmup: bool = False, deterministic: bool = False
    ) -> tuple[Tensor, dict[str, float]]:
        """Loss of frames (B, 3, S, S) encoded as ``post`` (see :meth:`forward`)."""
        c = self.config
        particles = self.sample(post, deterministic)
        reconstruction, rgba = self.render(particles, fixed_scale=warmup)  # (B, 3, S, S)
        rec = reconstruction_sse(reconstruction, image).mean()
        t_prior_logvar = 2 * math.log(c.transparency_prior_std)
        kl_terms = {
            'chamfer': chamfer_kl(
                post.mu, post.logvar, post.proposals, 2 * math.log(c.prior_sigma)
            ).mean(),
            'scale': _kl_sum(
                post.scale_mu,
                post.scale_logvar,
                c.scale_prior_mean,
                2 * math.log(c.scale_prior_std),
            ),
            'transparency': transparency_kl(
                post.transparency_mu,
                post.transparency_logvar,
                c.transparency_prior_mean,
                t_prior_logvar,
            )
            .flatten(1)
            .sum(-1)
            .mean(),
            'depth': _kl_sum(post.depth_mu, post.depth_logvar, 0.0, 0.0),
            'features': _kl_sum(post.features_mu, post.features_logvar, 0.0, 0.0),
            'bg': _kl_sum(post.bg_mu, post.bg_logvar, 0.0, 0.0),
        }
        weights = {'chamfer': 1.0, 'scale': 1.0, 'transparency': 1.0}
        weights.update(depth=c.kl_balance, features=c.kl_balance, bg=c.kl_balance)
        loss, metrics = weighted_objective(rec, kl_terms, weights, c.beta)
        if c.overlap_weight:
            mu = post.mu if c.overlap_moves else post.mu.detach()
            overlap = overlap_penalty(mu, particles.transparency, c.overlap_sigma).mean()
            loss = loss + c.overlap_weight * overlap
            metrics['loss'] = loss.item()
            metrics['overlap'] = overlap.item()
        if warmup:
            # each decoded glimpse's RGB must reproduce the input in its (fixed-scale) box
            half = 1 / (1 + math.exp(-c.scale_prior_mean))
            target = crop_glimpses(image, particles.mu.detach(), half, c.decoder_glimpse_size)
            glimpse_rec = reconstruction_sse(rgba[:, :, :3], target).mean()  # (B, K, 3, g, g)
            loss = loss + c.glimpse_loss_weight * glimpse_rec
            metrics['loss'] = loss.item()
            metrics['glimpse_rec'] = glimpse_rec.item()
        with torch.no_grad():
            metrics['psnr'] = float(psnr(reconstruction.clamp(0, 1), image).mean())
            metrics['transparency'] = float(particles.transparency.mean())
            metrics['position_std'] = float(torch.exp(0.5 * post.logvar).mean())
        return loss, metrics


def overlap_penalty(mu: Tensor, transparency: Tensor, sigma: float) -> Tensor:
    r"""How much the particles of each image sit on one another: mu (B, K, 2), transparency
    (B, K, 1) -> (B,), :math:`\sum_{i<j} t_i t_j \exp(-\lVert\mu_i-\mu_j\rVert^2 / 2\sigma^2)`.
    """
    d2 = (mu.unsqueeze(2) - mu.unsqueeze(1)).pow(2).sum(-1)  # (B, K, K)
    t = transparency.squeeze(-1)  # (B, K)
    pair = t.unsqueeze(2) * t.unsqueeze(1) * torch.exp(-d2 / (2 * sigma**2))  # (B, K, K)
    return torch.triu(pair, diagonal=1).flatten(1).sum(-1)


def _kl_sum(mu: Tensor, logvar: Tensor, prior_mu: float, prior_logvar: float) -> Tensor:
    """KL against N(prior_mu, exp(prior_logvar)), summed over non-batch dims, batch mean."""
    return gaussian_kl(mu, logvar, prior_mu, prior_logvar).flatten(1).sum(-1).mean()


class DlpEncoder(nn.Module):
    """Export view of :meth:`Dlp.encode` (posterior means): image -> tuple of tensors.

    Shapes:
        image (B, 3, S, S) -> ``OUTPUT_NAMES`` tensors, shapes as in :class:`Particles`.
    """

    INPUT_NAMES = ('image',)
    OUTPUT_NAMES = Particles._fields

    def __init__(self, dlp: Dlp) -> None:
        super().__init__()
        self.dlp = dlp

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.dlp.encode(image, deterministic=True))


class DlpDecoder(nn.Module):
    """Export view of :meth:`Dlp.decode`: particle tensors -> image.

    ``inference`` (default) exports the inference forms of the paste and the compositing (see
    :meth:`Dlp.render`): the same image up to float rounding, about 1.5-2x faster in
    onnxruntime (docs/benchmarks.md).

    Shapes:
        mu (B, K, 2), scale (B, K, 2), depth (B, K, 1), transparency (B, K, 1), features (B, K, F),
        bg_features (B, Fb) -> image (B, 3, S, S).
    """

    INPUT_NAMES = ('mu', 'scale', 'depth', 'transparency', 'features', 'bg_features')
    OUTPUT_NAMES = ('image',)

    def __init__(self, dlp: Dlp, inference: bool = True) -> None:
        super().__init__()
        self.dlp = dlp
        self.inference = inference

    def forward(
        self,
        mu: Tensor,
        scale: Tensor,
        depth: Tensor,
        transparency: Tensor,
        features: Tensor,
        bg_features: Tensor,
    ) -> Tensor:
        logvar = torch.zeros_like(mu)  # unused by the decoder
        return self.dlp.decode(
            Particles(mu, logvar, scale, depth, transparency, features, bg_features),
            inference=self.inference,
        )
