r"""Graph layers of the particle dynamics: an interaction-network layer on dense node tensors.

* :class:`DenseInteractionLayer` computes the layer on dense (B, N, D) node tensors with
  broadcasting over all pairs (no scatter, no gather): what the model trains and the exported
  ONNX graph runs. It owns the weights.
* :class:`dlp_training.models.pyg_layers.InteractionLayer` is the same function as a
  ``torch_geometric`` :class:`MessagePassing` operator over an ``edge_index`` (2, E): the
  reference the tests check the dense form against, built on a dense layer's weights
  (``InteractionLayer(dense)``). torch_geometric is imported only
  there, so training and export do not need it.

Both follow Battaglia et al., *Interaction Networks for Learning about Objects, Relations and
Physics* (NeurIPS 2016, https://arxiv.org/abs/1612.00222), with relative positions on the edges
as in PyG's ``EdgeConv``.

Graph helpers (:func:`fully_connected_edge_index`, :func:`batch_edge_index`) build the fully
connected graphs of the PyG form; ``knn_graph``/``radius_graph`` need pyg-lib, which this
project does not have, and would not export to ONNX anyway.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

AGGREGATIONS = ('sum', 'mean')


class MLP(nn.Module):
    """Two-layer perceptron ``Linear -> [LayerNorm] -> SiLU -> Linear``.

    The first linear map is a separate attribute (``first``) so that the dense interaction layer
    can apply it to the parts of a concatenated input separately (see
    :class:`DenseInteractionLayer`).

    Args:
        in_dim: input size.
        hidden_dim: hidden size.
        out_dim: output size.
        layer_norm: LayerNorm after the first linear map.

    Shapes:
        (..., in_dim) -> (..., out_dim)
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, layer_norm: bool = True):
        super().__init__()
        self.first = nn.Linear(in_dim, hidden_dim)
        norm: nn.Module = nn.LayerNorm(hidden_dim) if layer_norm else nn.Identity()
        self.rest = nn.Sequential(norm, nn.SiLU(), nn.Linear(hidden_dim, out_dim))

    @property
    def last(self) -> nn.Linear:
        """The output linear map (zeroed by the dynamics model's identity initialisation)."""
        return self.rest[-1]

    def reset_parameters(self) -> None:
        for module in (self.first, *self.rest):
            if hasattr(module, 'reset_parameters'):
                module.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        return self.rest(self.first(x))


class DenseInteractionLayer(nn.Module):
    r"""Interaction-network layer over all ordered pairs of N nodes, residual node update.

    .. math::
        m_{ij} = \mathrm{MLP}_e\big([h_i,\ h_j,\ p_j - p_i,\ e_{ij}]\big), \qquad
        h_i' = h_i + \mathrm{MLP}_n\big([h_i,\ \square_{j} a_{ij}\, m_{ij}]\big)

    with :math:`a_{ij}` an adjacency weight, by default 1 for :math:`i \ne j` and 0 on the
    diagonal (a fully connected graph without self loops); the mean divides by
    :math:`\sum_j a_{ij}`. The first linear map of :math:`\mathrm{MLP}_e` is split by input part,
    :math:`W[h_i, h_j, \delta p, e] = W_i h_i + W_j h_j + W_p \delta p + W_e e`, so the node terms
    cost O(N) instead of O(N^2) (the position term too: :math:`W_p \delta p = W_p p_j - W_p p_i`).
    Its last linear map :math:`(W_o, b_o)` commutes with the sum over
    j, so it is applied once per node to the aggregated hidden activations
    :math:`g_{ij} = \mathrm{SiLU}(\mathrm{LN}(z_{ij}))`:
    :math:`\sum_j a_{ij} m_{ij} = W_o \sum_j a_{ij} g_{ij} + (\sum_j a_{ij})\, b_o`, the same
    messages summed without a (hidden x hidden) product per edge (the masked sum over j is one
    batched matrix-vector product): the O(N^2) part is elementwise.
    Only matmuls, broadcasting and reductions: exports to ONNX.

    Args:
        channels: node feature size D (input = output).
        hidden_dim: hidden size of both MLPs; messages have ``hidden_dim`` entries.
        edge_dim: size of the edge attributes (0: none).
        pos_dim: size of the node positions.
        aggr: ``'sum'`` or ``'mean'``.
        layer_norm: LayerNorm inside the MLPs.

    Shapes:
        x (B, N, D), pos (B, N, pos_dim), edge_attr (N, N, edge_dim) or (B, N, N, edge_dim) or
        None, adj (N, N) or (B, N, N) or None -> (B, N, D)
    """

    def __init__(
        self,
        channels: int,
        hidden_dim: int,
        edge_dim: int = 0,
        pos_dim: int = 2,
        aggr: str = 'sum',
        layer_norm: bool = True,
    ) -> None:
        if aggr not in AGGREGATIONS:
            raise ValueError(f'aggr must be one of {AGGREGATIONS}, got {aggr!r}')
        super().__init__()
        self.channels, self.hidden_dim = channels, hidden_dim
        self.edge_dim, self.pos_dim, self.aggr = edge_dim, pos_dim, aggr
        self.layer_norm = layer_norm
        self.edge_mlp = MLP(2 * channels + pos_dim + edge_dim, hidden_dim, hidden_dim, layer_norm)
        self.node_mlp = MLP(channels + hidden_dim, hidden_dim, channels, layer_norm)

    def reset_parameters(self) -> None:
        self.edge_mlp.reset_parameters()
        self.node_mlp.reset_parameters()

    def forward(
        self,
        x: Tensor,
        pos: Tensor,
        edge_attr: Tensor | None = None,
        adj: Tensor | None = None,
    ) -> Tensor:
        d, p = self.channels, self.pos_dim
        w, b = self.edge_mlp.first.weight, self.edge_mlp.first.bias  # (hidden, 2D+P+De), (hidden,)
        at = pos @ w[:, 2 * d : 2 * d + p].t()  # (B, N, hidden): W_p p, so W_p (p_j - p_i)
        a_i = x @ w[:, :d].t() - at + b  # (B, N, hidden): target part, bias included
        a_j = x @ w[:, d : 2 * d].t() + at  # (B, N, hidden): source part
        z = a_i.unsqueeze(2) + a_j.unsqueeze(1)  # (B, N, N, hidden): [b, i, j] edge j -> i
        if edge_attr is not None:
            z = z + edge_attr @ w[:, 2 * d + p :].t()  # (B, N, N, hidden)
        g = self.edge_mlp.rest[:-1](z)  # (B, N, N, hidden) LayerNorm, SiLU: before W_o
        if adj is None:
            n = x.shape[-2]
            adj = 1.0 - torch.eye(n, dtype=x.dtype, device=x.device)  # (N, N)
        degree = adj.sum(dim=-1, keepdim=True)  # (N, 1) or (B, N, 1)
        out = self.edge_mlp.last
        # sum_j a_ij W_o g_ij + b_o = W_o (sum_j a_ij g_ij) + deg_i b_o: messages j -> i, summed
        summed = (adj.unsqueeze(-2) @ g).squeeze(-2)  # (B, N, hidden): sum_j a_ij g_ij, one GEMV
        agg = summed @ out.weight.t() + degree * out.bias
        if self.aggr == 'mean':
            agg = agg / degree.clamp(min=1.0)  # (B, N, hidden)
        return x + self.node_mlp(torch.cat([x, agg], dim=-1))  # (B, N, D)

    def __repr__(self) -> str:
        return (
            f'{self.__class__.__name__}({self.channels}, hidden_dim={self.hidden_dim}, '
            f'edge_dim={self.edge_dim}, aggr={self.aggr!r})'
        )


def fully_connected_edge_index(n: int, device: torch.device | None = None) -> Tensor:
    """All ordered pairs (j, i), j != i, of n nodes, row 0 = source j, row 1 = target i.

    Returns:
        (2, n (n - 1)) int64, sorted by target, then source.
    """
    idx = torch.arange(n, device=device)
    src = idx.repeat(n)  # (n*n,) j
    dst = idx.repeat_interleave(n)  # (n*n,) i
    keep = src != dst
    return torch.stack([src[keep], dst[keep]])  # (2, n (n - 1))


def batch_edge_index(edge_index: Tensor, batch_size: int, n: int) -> Tensor:
    """The same graph for every sample of a batch, sample b's nodes offset by b * n.

    Shapes:
        edge_index (2, E) -> (2, batch_size * E)
    """
    offsets = torch.arange(batch_size, device=edge_index.device) * n  # (B,)
    batched = edge_index.unsqueeze(0) + offsets.view(-1, 1, 1)  # (B, 2, E)
    return batched.permute(1, 0, 2).reshape(2, -1)  # (2, B * E)
