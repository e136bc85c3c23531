"""Building blocks of the DLP model (``dlp_training/models/dlp.py``): conv stacks, the patch
keypoint prior, the glimpse and background encoders/decoders, the spatial transformer and the
compositing.

Coordinates. A position is ``(x, y) = (column, row)``, normalised to [-1, 1] with the
``align_corners=False`` convention of ``F.grid_sample``: -1 and +1 are the outer *edges* of the
image, and pixel column ``i`` of an S-wide image has its centre at ``x = (2 i + 1) / S - 1``. A
continuous pixel coordinate ``u`` (pixel (0, 0) covers [0, 1) x [0, 1), as in
``dlp_training.data.ground_truth``) maps to ``x = 2 u / S - 1``. Sizes are *half-widths* in the
same units: a square of side fraction ``f`` of the image has half-width ``f``.

Everything here is free of data-dependent Python control flow; sampling grids are built by hand
(no ``F.affine_grid``), so the graphs export to ONNX at opset 17 (GridSample needs opset 16).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def pixel_centres(n: int) -> Tensor:
    """Normalised centres of ``n`` pixels along one axis: ``(2 i + 1) / n - 1``. Shape (n,)."""
    return (2 * torch.arange(n, dtype=torch.float32) + 1) / n - 1


def conv_block(
    c_in: int, c_out: int, stride: int = 1, padding_mode: str = 'zeros'
) -> nn.Sequential:
    """3x3 conv + GroupNorm (up to 4 groups, as DLPv2) + ReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, padding_mode=padding_mode),
        nn.GroupNorm(_groups(c_out), c_out),
        nn.ReLU(inplace=True),
    )


def up_block(c_in: int, c_out: int) -> nn.Sequential:
    """x2 nearest upsampling + :func:`conv_block` (exports as Resize + Conv)."""
    return nn.Sequential(nn.Upsample(scale_factor=2.0, mode='nearest'), conv_block(c_in, c_out))


def mlp(sizes: tuple[int, ...]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _groups(channels: int) -> int:
    for g in (4, 2, 1):
        if channels % g == 0:
            return g
    return 1


# ----------------------------------------------------------------------------- spatial transformer


def crop_glimpses(image: Tensor, centres: Tensor, half_size: float, size: int) -> Tensor:
    """Bilinear crops of side ``2 * half_size`` (normalised units) centred at each particle.

    Glimpse pixel (r, c) samples the image at ``centre + half_size * (u_c, u_r)`` with
    ``u = pixel_centres(size)``. All K grids of an image are stacked into one (B, K*g, g, 2)
    grid, so the image is sampled once per batch element instead of being repeated K times.
    Outside the image the glimpse is zero.

    Args:
        image: (B, C, H, W).
        centres: (B, K, 2) glimpse centres (x, y) in [-1, 1].
        half_size: half-width of the glimpse in normalised units (0.25 = a quarter of the image).
        size: g, glimpse resolution in pixels.

    Returns:
        (B, K, C, g, g) glimpses.
    """
    b, k = centres.shape[0], centres.shape[1]
    u = pixel_centres(size).to(image) * half_size  # (g,)
    gx = centres[..., 0, None, None] + u.view(1, 1, 1, size)  # (B, K, 1, g)
    gy = centres[..., 1, None, None] + u.view(1, 1, size, 1)  # (B, K, g, 1)
    grid = torch.stack((gx.expand(b, k, size, size), gy.expand(b, k, size, size)), dim=-1)
    grid = grid.reshape(b, k * size, size, 2)  # (B, K*g, g, 2)
    out = F.grid_sample(image, grid, mode='bilinear', padding_mode='zeros', align_corners=False)
    c = image.shape[1]
    return out.view(b, c, k, size, size).permute(0, 2, 1, 3, 4)  # (B, K, C, g, g)


def paste_glimpses(glimpses: Tensor, centres: Tensor, half_size: Tensor, canvas: int) -> Tensor:
    """Inverse spatial transformer: place each glimpse on a zero canvas.

    Canvas point ``p`` reads the glimpse at ``(p - centre) / half_size`` (x and y separately), so
    the glimpse covers the box ``centre ± half_size`` and is zero outside it.

    Args:
        glimpses: (B, K, C, g, g).
        centres: (B, K, 2) box centres (x, y) in [-1, 1].
        half_size: (B, K, 2) box half-widths (x, y) in normalised units, > 0.
        canvas: S, the output side in pixels.

    Returns:
        (B, K, C, S, S) canvases.
    """
    b, k, c, g = glimpses.shape[0], glimpses.shape[1], glimpses.shape[2], glimpses.shape[3]
    p = pixel_centres(canvas).to(glimpses)  # (S,)
    cx, cy = centres[..., 0].reshape(-1, 1, 1), centres[..., 1].reshape(-1, 1, 1)  # (BK, 1, 1)
    sx, sy = half_size[..., 0].reshape(-1, 1, 1), half_size[..., 1].reshape(-1, 1, 1)
    gx = (p.view(1, 1, canvas) - cx) / sx  # (BK, 1, S)
    gy = (p.view(1, canvas, 1) - cy) / sy  # (BK, S, 1)
    n = gx.shape[0]
    grid = torch.stack((gx.expand(n, canvas, canvas), gy.expand(n, canvas, canvas)), dim=-1)
    out = F.grid_sample(
        glimpses.reshape(n, c, g, g),
        grid,
        mode='bilinear',
        padding_mode='zeros',
        align_corners=False,
    )  # (BK, C, S, S)
    return out.view(b, k, c, canvas, canvas)


def paste_glimpses_separable(
    glimpses: Tensor, centres: Tensor, half_size: Tensor, canvas: int
) -> Tensor:
    """:func:`paste_glimpses` as two small matrix products (the inference form: faster in
    onnxruntime and eager inference, slower to train; equal up to float rounding).

    The sampling grid is axis-aligned, so bilinear sampling with zero padding is separable:
    canvas pixel (y, x) = sum_ij wy[y, i] G[i, j] wx[x, j] with the tent weights
    ``w[s, j] = max(0, 1 - |i_s - j|)`` of the glimpse coordinate ``i_s = ((u_s + 1) g - 1) / 2``
    (``align_corners=False``) of canvas pixel s; taps outside the glimpse get no weight.

    Shapes as :func:`paste_glimpses`: (B, K, C, g, g) -> (B, K, C, S, S).
    """
    g = glimpses.shape[-1]
    p = pixel_centres(canvas).to(glimpses).view(1, 1, canvas)  # (1, 1, S)
    j = torch.arange(g, dtype=glimpses.dtype, device=glimpses.device)  # (g,)
    ix = ((p - centres[..., 0:1]) / half_size[..., 0:1] + 1) * (g / 2) - 0.5  # (B, K, S)
    iy = ((p - centres[..., 1:2]) / half_size[..., 1:2] + 1) * (g / 2) - 0.5
    wx = torch.relu(1 - (ix.unsqueeze(-1) - j).abs())  # (B, K, S, g)
    wy = torch.relu(1 - (iy.unsqueeze(-1) - j).abs())  # (B, K, S, g)
    return wy.unsqueeze(2) @ glimpses @ wx.transpose(-1, -2).unsqueeze(2)  # (B, K, C, S, S)


def box_masks(centres: Tensor, half_size: float, canvas: int) -> Tensor:
    """Hard square masks ``|p - centre| < half_size`` (x and y), no gradient: (B, K, S, S)."""
    p = pixel_centres(canvas).to(centres)  # (S,)
    inside_x = (p.view(1, 1, 1, canvas) - centres[..., 0, None, None]).abs() < half_size
    inside_y = (p.view(1, 1, canvas, 1) - centres[..., 1, None, None]).abs() < half_size
    return (inside_x & inside_y).to(centres.dtype)  # (B, K, S, S)


def composite(
    rgba: Tensor, depth: Tensor, transparency: Tensor, background: Tensor, temperature: float
) -> Tensor:
    r"""Soft z-buffer compositing of K RGBA layers over a background.

    With per-pixel alpha :math:`a_i = \alpha_i t_i` (glimpse alpha times transparency):

    .. math::
        w_i = \mathrm{softmax}_i\big(\log(a_i + \epsilon) - d_i / \tau\big), \quad
        A = 1 - \prod_i (1 - a_i), \quad
        x = A \sum_i w_i\, \mathrm{rgb}_i + (1 - A)\, \mathrm{bg}

    A lone particle is plain alpha blending over the background; where particles overlap the
    coverage is their union and the colour comes from the nearest one (smaller depth = in front),
    softly, with temperature :math:`\tau`.

    Args:
        rgba: (B, K, 4, S, S) pasted glimpses, values in [0, 1].
        depth: (B, K, 1).
        transparency: (B, K, 1) in [0, 1].
        background: (B, 3, S, S).
        temperature: :math:`\tau` > 0.

    Returns:
        (B, 3, S, S) image.
    """
    alpha = rgba[:, :, 3:] * transparency[..., None, None]  # (B, K, 1, S, S)
    logits = torch.log(alpha + 1e-6) - depth[..., None, None] / temperature  # (B, K, 1, S, S)
    weights = torch.softmax(logits, dim=1)
    foreground = (weights * rgba[:, :, :3]).sum(dim=1)  # (B, 3, S, S)
    coverage = 1 - torch.prod(1 - alpha, dim=1)  # (B, 1, S, S)
    return coverage * foreground + (1 - coverage) * background


def composite_normalised(
    rgba: Tensor, depth: Tensor, transparency: Tensor, background: Tensor, temperature: float
) -> Tensor:
    """:func:`composite` without the per-pixel log and softmax (the inference form).

    softmax_i(log(a_i + eps) - d_i / tau) = (a_i + eps) c_i / sum_j (a_j + eps) c_j with the
    per-particle c_i = exp(-(d_i - min_j d_j) / tau) in (0, 1], so the K-axis softmax over every
    pixel becomes a product and a sum (equal up to float rounding; slower to train).
    Shapes as :func:`composite`.
    """
    alpha = rgba[:, :, 3:] * transparency[..., None, None]  # (B, K, 1, S, S)
    z = -depth / temperature  # (B, K, 1)
    c = torch.exp(z - z.max(dim=1, keepdim=True).values)  # (B, K, 1), the largest is 1
    w = (alpha + 1e-6) * c[..., None, None]  # (B, K, 1, S, S) unnormalised weights
    foreground = (w * rgba[:, :, :3]).sum(dim=1) / w.sum(dim=1)  # (B, 3, S, S)
    coverage = 1 - torch.prod(1 - alpha, dim=1)  # (B, 1, S, S)
    return coverage * foreground + (1 - coverage) * background


# ----------------------------------------------------------------------------- networks


class PatchPrior(nn.Module):
    r"""Keypoint proposals: one spatial-softmax keypoint per image patch (DLP prior).

    A small CNN (first conv stride 2, replicate padding so image borders are not "features") maps
    the image to one heatmap at half resolution; the heatmap is cut into the P x P patches of the
    image ((P/2)^2 cells each) and a softmax over each patch's cells gives the keypoint
    :math:`k_n = \sum_c \mathrm{softmax}(h_n)_c\, \mathrm{centre}_c`. A featureless patch gives a
    uniform softmax, i.e. the patch centre, so the squared distance to the patch centre scores
    how informative a proposal is. A tiny fixed bias (1e-5, decreasing with the patch index) breaks
    ties between featureless patches deterministically (the same order in PyTorch and ONNX).

    Shapes:
        image (B, 3, S, S) -> keypoints (B, N, 2) in (x, y), scores (B, N); N = (S / P)^2.
    """

    def __init__(self, image_size: int, patch_size: int, channels: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_block(3, channels[0], 2, 'replicate')]
        for a, b in zip(channels[:-1], channels[1:], strict=True):
            layers.append(conv_block(a, b, 1, 'replicate'))
        layers.append(nn.Conv2d(channels[-1], 1, 1))
        self.net = nn.Sequential(*layers)
        self.n_side = image_size // patch_size  # patches per side
        self.cells = patch_size // 2  # heatmap cells per patch side
        centres = pixel_centres(image_size // 2)  # (S/2,) heatmap cell centres
        cell = centres.view(self.n_side, self.cells)  # (n, c): patch index, cell index
        cx = cell.view(1, self.n_side, 1, self.cells).expand(self.n_side, -1, self.cells, -1)
        cy = cell.view(self.n_side, 1, self.cells, 1).expand(-1, self.n_side, -1, self.cells)
        cell_xy = torch.stack((cx, cy), dim=-1)  # (n_row, n_col, c_row, c_col, 2)
        n = self.n_side**2
        cell_xy = cell_xy.reshape(n, self.cells**2, 2)  # (N, c*c, 2)
        self.register_buffer('cell_xy', cell_xy, persistent=False)
        self.register_buffer('patch_centre', cell_xy.mean(dim=1), persistent=False)  # (N, 2)
        self.register_buffer('tie_break', 1e-5 * torch.linspace(1, 0, n), persistent=False)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        n, c = self.n_side, self.cells
        h = self.net(image)  # (B, 1, S/2, S/2)
        h = h.reshape(-1, n, c, n, c).permute(0, 1, 3, 2, 4).reshape(-1, n * n, c * c)
        w = torch.softmax(h, dim=-1)  # (B, N, c*c)
        keypoints = torch.matmul(w.unsqueeze(2), self.cell_xy).squeeze(2)  # (B, N, 2)
        score = ((keypoints - self.patch_centre) ** 2).sum(-1) + self.tie_break  # (B, N)
        return keypoints, score


class GlimpseEncoder(nn.Module):
    """CNN + MLP on glimpses: one stride-2 conv per channel entry, flatten, MLP.

    Shapes:
        glimpses (N, 3, g, g) -> (N, out_dim).
    """

    def __init__(
        self, glimpse_size: int, channels: tuple[int, ...], hidden: int, out_dim: int
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c in channels:
            layers.append(conv_block(c_in, c, 2))
            c_in = c
        self.cnn = nn.Sequential(*layers)
        side = glimpse_size // 2 ** len(channels)
        self.head = mlp((channels[-1] * side * side, hidden, hidden, out_dim))
        _shrink(self.head[-1])

    def forward(self, glimpses: Tensor) -> Tensor:
        return self.head(self.cnn(glimpses).flatten(1))


class GlimpseDecoder(nn.Module):
    """Features -> RGBA glimpse: MLP to channels[0] maps of side g / 2^n (n = len(channels)),
    an [x2 upsample, 3x3 conv] block per further channel entry, and a final 4x4 stride-2
    transposed conv to the output channels (the full-resolution layer is the costly one on a CPU,
    so it is a single thin one).

    Shapes:
        features (N, F) -> rgba (N, 4, g, g) in [0, 1].
    """

    def __init__(
        self,
        feature_dim: int,
        glimpse_size: int,
        channels: tuple[int, ...],
        hidden: int,
        out_channels: int = 4,
    ) -> None:
        super().__init__()
        self.c0 = channels[0]
        self.side = glimpse_size // 2 ** len(channels)
        self.fc = mlp((feature_dim, hidden, self.c0 * self.side**2))
        ups = [up_block(a, b) for a, b in zip(channels[:-1], channels[1:], strict=True)]
        final = nn.ConvTranspose2d(channels[-1], out_channels, 4, stride=2, padding=1)
        self.cnn = nn.Sequential(nn.ReLU(), *ups, final)

    def logits(self, features: Tensor) -> Tensor:
        """(N, F) -> (N, out_channels, g, g), before the sigmoid."""
        h = self.fc(features).view(-1, self.c0, self.side, self.side)
        return self.cnn(h)

    def forward(self, features: Tensor) -> Tensor:
        return torch.sigmoid(self.logits(features))


class BackgroundEncoder(nn.Module):
    """Stride-2 CNN (replicate padding) on the masked image + MLP.

    Shapes:
        image (B, 3, S, S) -> (B, out_dim).
    """

    def __init__(self, image_size: int, channels: tuple[int, ...], hidden: int, out_dim: int):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c in channels:
            layers.append(conv_block(c_in, c, 2, 'replicate'))
            c_in = c
        self.cnn = nn.Sequential(*layers)
        side = image_size // 2 ** len(channels)
        self.head = mlp((channels[-1] * side * side, hidden, out_dim))
        _shrink(self.head[-1])

    def forward(self, image: Tensor) -> Tensor:
        return self.head(self.cnn(image).flatten(1))


class BackgroundDecoder(GlimpseDecoder):
    """Background features -> RGB image: :class:`GlimpseDecoder` with 3 output channels.

    ``static`` (a static camera): ``sigmoid(I + D(z))`` with a learned logit image ``I``
    (3, S, S) and the decoder ``D``'s final layer started at zero, so the background starts as
    ``sigmoid(I)`` (:meth:`set_image`) and the code only adds what changes.

    Shapes:
        features (B, Fb) -> image (B, 3, S, S) in [0, 1].
    """

    def __init__(
        self,
        feature_dim: int,
        image_size: int,
        channels: tuple[int, ...],
        hidden: int,
        static: bool = False,
    ) -> None:
        super().__init__(feature_dim, image_size, channels, hidden, out_channels=3)
        self.image_logit: nn.Parameter | None = None
        if static:
            self.image_logit = nn.Parameter(torch.zeros(3, image_size, image_size))
            final = self.cnn[-1]
            assert isinstance(final, nn.ConvTranspose2d)
            nn.init.zeros_(final.weight)
            nn.init.zeros_(final.bias)

    def set_image(self, image: Tensor) -> None:
        """Start the static background at ``image`` (3, S, S) in [0, 1]."""
        if self.image_logit is None:
            raise ValueError('set_image needs a static background decoder (static=True)')
        p = image.to(self.image_logit).clamp(0.5 / 255, 1 - 0.5 / 255)
        with torch.no_grad():
            self.image_logit.copy_(torch.log(p / (1 - p)))

    def forward(self, features: Tensor) -> Tensor:
        logits = self.logits(features)  # (B, 3, S, S)
        if self.image_logit is not None:
            logits = logits + self.image_logit
        return torch.sigmoid(logits)


def _shrink(layer: nn.Module, factor: float = 0.1) -> None:
    """Scale a head's initial weights down so the encoder starts near its biases (the priors)."""
    assert isinstance(layer, nn.Linear)
    with torch.no_grad():
        layer.weight.mul_(factor)
        layer.bias.zero_()
