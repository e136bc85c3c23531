r"""The interaction-network layer as a ``torch_geometric`` message-passing operator.

The reference form of :class:`~training.models.dynamics_layers.DenseInteractionLayer` over an
explicit ``edge_index``: the tests check the dense form (what trains and exports) against it,
and ``ParticleDynamics(use_pyg=True)`` runs it on the dense layers' weights. Importing this
module needs torch_geometric; nothing else in training does.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.nn import MessagePassing

from training.models.dynamics_layers import AGGREGATIONS, MLP, DenseInteractionLayer


class InteractionLayer(MessagePassing):
    r"""Interaction-network layer with relative positions, residual node update.

    .. math::
        m_{ij} = \mathrm{MLP}_e\big([h_i,\ h_j,\ p_j - p_i,\ e_{ij}]\big), \qquad
        h_i' = h_i + \mathrm{MLP}_n\big([h_i,\ \square_{j \in \mathcal N(i)} m_{ij}]\big)

    where :math:`j \to i` are the edges into node :math:`i`, :math:`p` are node positions (kept
    fixed across layers), :math:`e_{ij}` optional edge attributes and :math:`\square` the sum or
    the mean. The output does not depend on the order of the edges.

    Args:
        channels: node feature size D (input = output).
        hidden_dim: hidden size of both MLPs; messages have ``hidden_dim`` entries.
        edge_dim: size of the edge attributes (0: none).
        pos_dim: size of the node positions.
        aggr: ``'sum'`` or ``'mean'``.
        layer_norm: LayerNorm inside the MLPs.

    Shapes:
        x (N, D), pos (N, pos_dim), edge_index (2, E) (row 0 = source j, row 1 = target i),
        edge_attr (E, edge_dim) or None -> (N, D)
    """

    @classmethod
    def sharing(cls, dense: DenseInteractionLayer) -> InteractionLayer:
        """A message-passing layer that uses ``dense``'s MLP modules (same parameters, not
        copies)."""
        layer = cls(dense.channels, 1, dense.edge_dim, dense.pos_dim, dense.aggr, layer_norm=False)
        layer.hidden_dim, layer.layer_norm = dense.hidden_dim, dense.layer_norm
        layer.edge_mlp, layer.node_mlp = dense.edge_mlp, dense.node_mlp
        return layer

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
        super().__init__(aggr=aggr, flow='source_to_target')
        self.channels, self.hidden_dim = channels, hidden_dim
        self.edge_dim, self.pos_dim, self.layer_norm = edge_dim, pos_dim, layer_norm
        self.edge_mlp = MLP(2 * channels + pos_dim + edge_dim, hidden_dim, hidden_dim, layer_norm)
        self.node_mlp = MLP(channels + hidden_dim, hidden_dim, channels, layer_norm)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.edge_mlp.reset_parameters()
        self.node_mlp.reset_parameters()

    def forward(
        self, x: Tensor, pos: Tensor, edge_index: Tensor, edge_attr: Tensor | None = None
    ) -> Tensor:
        agg = self.propagate(edge_index, x=x, pos=pos, edge_attr=edge_attr)  # (N, hidden)
        return x + self.node_mlp(torch.cat([x, agg], dim=-1))  # (N, D)

    def message(
        self, x_i: Tensor, x_j: Tensor, pos_i: Tensor, pos_j: Tensor, edge_attr: Tensor | None
    ) -> Tensor:
        parts = [x_i, x_j, pos_j - pos_i]  # (E, D), (E, D), (E, pos_dim)
        if edge_attr is not None:
            parts.append(edge_attr)  # (E, edge_dim)
        return self.edge_mlp(torch.cat(parts, dim=-1))  # (E, hidden)

    def __repr__(self) -> str:
        return (
            f'{self.__class__.__name__}({self.channels}, hidden_dim={self.hidden_dim}, '
            f'edge_dim={self.edge_dim}, aggr={self.aggr!r})'
        )
