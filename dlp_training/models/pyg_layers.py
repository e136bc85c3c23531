r"""The interaction-network layer as a ``torch_geometric`` message-passing operator.

The reference form of :class:`~dlp_training.models.dynamics_layers.DenseInteractionLayer` over an
explicit ``edge_index``: the tests check the dense form (what trains and exports) against it,
and ``ParticleDynamics(use_pyg=True)`` runs it on the dense layers' weights. Importing this
module needs torch_geometric; nothing else in training does.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.nn import MessagePassing

from dlp_training.models.dynamics_layers import DenseInteractionLayer


class InteractionLayer(MessagePassing):
    r"""Interaction-network layer with relative positions, residual node update.

    .. math::
        m_{ij} = \mathrm{MLP}_e\big([h_i,\ h_j,\ p_j - p_i,\ e_{ij}]\big), \qquad
        h_i' = h_i + \mathrm{MLP}_n\big([h_i,\ \square_{j \in \mathcal N(i)} w_{ij} m_{ij}]\big)

    where :math:`j \to i` are the edges into node :math:`i`, :math:`p` are node positions (kept
    fixed across layers), :math:`e_{ij}` optional edge attributes and :math:`\square` the sum or
    the mean; :math:`w_{ij}` optional edge weights (1 without). The output does not depend on the
    order of the edges.

    Args:
        dense: the layer whose MLP modules this one uses (the same parameters, not copies):
            channels D, hidden size, edge attribute size, position size, aggregation.

    Shapes:
        x (N, D), pos (N, pos_dim), edge_index (2, E) (row 0 = source j, row 1 = target i),
        edge_attr (E, edge_dim) or None, edge_weight (E, 1) or None -> (N, D)
    """

    def __init__(self, dense: DenseInteractionLayer) -> None:
        super().__init__(aggr=dense.aggr, flow='source_to_target')
        self.channels, self.hidden_dim = dense.channels, dense.hidden_dim
        self.edge_dim, self.pos_dim = dense.edge_dim, dense.pos_dim
        self.edge_mlp, self.node_mlp = dense.edge_mlp, dense.node_mlp

    def forward(
        self,
        x: Tensor,
        pos: Tensor,
        edge_index: Tensor,
        edge_attr: Tensor | None = None,
        edge_weight: Tensor | None = None,
    ) -> Tensor:
        if self.aggr == 'mean' and edge_weight is not None:
            raise ValueError("edge_weight needs aggr='sum' (a weighted mean is not this layer's)")
        agg = self.propagate(
            edge_index, x=x, pos=pos, edge_attr=edge_attr, edge_weight=edge_weight
        )  # (N, hidden)
        return x + self.node_mlp(torch.cat([x, agg], dim=-1))  # (N, D)

    def message(
        self,
        x_i: Tensor,
        x_j: Tensor,
        pos_i: Tensor,
        pos_j: Tensor,
        edge_attr: Tensor | None,
        edge_weight: Tensor | None,
    ) -> Tensor:
        parts = [x_i, x_j, pos_j - pos_i]  # (E, D), (E, D), (E, pos_dim)
        if edge_attr is not None:
            parts.append(edge_attr)  # (E, edge_dim)
        m = self.edge_mlp(torch.cat(parts, dim=-1))  # (E, hidden)
        return m if edge_weight is None else m * edge_weight  # edge_weight (E, 1)

    def __repr__(self) -> str:
        return (
            f'{self.__class__.__name__}({self.channels}, hidden_dim={self.hidden_dim}, '
            f'edge_dim={self.edge_dim}, aggr={self.aggr!r})'
        )
