r"""Particle dynamics: a graph network over the particles of the last H frames (DLP/DDLP video).

The model reads the particles of the last H frames (and optionally the robot's commands) and
predicts the particles of the next frame; :func:`rollout` applies it autoregressively for any
horizon and :func:`rollout_loss` trains it with a burn-in and a multi-step rollout in particle
space.

**Graph.** One node per particle per history frame, plus one background node per frame:
N = H (K + 1) nodes, node n = t (K + 1) + k (k = K is the background), fully connected without
self loops (particle interactions within a frame and across frames; N (N - 1) edges). Edge
attribute: 1 if both ends are the same particle slot (index = identity over time, as DDLP's
tracking encoder gives) in different frames, else 0 (``same_particle_edges``); this is
permutation-equivariant and lets the network find each particle's own past, hence its velocity.

**Node state** (foreground, S = 8 + F entries, in this order)::

    [mu (2), logvar (2), scale (2), depth (1), transparency (1), features (F)]

``transparency`` enters as its value in [0, 1] (well scaled); its *update* is a step in logit
space (below). Each node is embedded by an MLP (S -> D); the background node embeds
``bg_features`` with its own MLP (Fb -> D) and sits at position (0, 0). Learned embeddings are
added: node type (foreground / background), history slot t (H of them) and, when
``action_dim`` A > 0, an MLP of frame t's action, added to every node of frame t (with
``action_gate``, times a per-node gate :math:`\sigma(w^\top h + b)` of the node's embedding;
with ``action_effector``, times :math:`\mathrm{softmax}_k(w^\top h_k + b)` over the K particles
of the frame and 0 for the background: the command drives one particle, the robot's effector,
chosen by its own state, and reaches the others only through messages).
Then ``n_layers`` :class:`~dlp_training.models.dynamics_layers.DenseInteractionLayer` with relative
positions p_j - p_i (p = mu, fixed across layers). With ``interaction_radius`` R > 0, the message
between two particles is weighted by :math:`\sigma((R - \lVert p_j - p_i \rVert) / (R / 8))`
(about 1 inside R, 0 beyond it); the background node sends to every particle (weight 1) but
hears none (weight 0), so it cannot relay one particle's state to a far one: contact is local,
and a command cannot move an object the effector is far from.

**Bounded residual deltas.** From the last frame's node embeddings a head predicts, per particle,
:math:`\delta = b \odot \tanh(\mathrm{MLP}(h))` with per-attribute bounds b from the config
(``max_delta_*``), and a background head predicts :math:`\delta_{bg}`. Next frame:
mu, logvar, scale, depth, features, bg_features += delta (with ``velocity_prior`` the position
delta also adds the last observed displacement, or its mean over the last ``velocity_window``
frames, clamped to ``max_delta_position`` per axis: zero output is then constant velocity);
transparency
:math:`\tau' = \mathrm{clamp}(\tau + \sigma(\ell + \delta_\tau) - \sigma(\ell), 0, 1)` with
:math:`\ell = \mathrm{logit}(\mathrm{clamp}(\tau, \epsilon, 1 - \epsilon))`, i.e.
:math:`\sigma(\ell + \delta_\tau)` up to float rounding, but exactly :math:`\tau` when
:math:`\delta_\tau = 0`. With the output layers zeroed (:meth:`ParticleDynamics.zero_output_`,
the default initialisation) the model is the identity on the last frame, exactly.

**Actions.** ``actions[:, s]`` is the command applied at frame s, i.e. the one that takes frame s
to frame s + 1. One step reads actions (B, H, A) aligned with its H history frames, so the last
one, ``actions[:, H - 1]``, is the command that produces the predicted frame.

**Two equivalent paths.** ``use_pyg=False`` (default) runs the
:class:`~dlp_training.models.dynamics_layers.DenseInteractionLayer` layers on (B, N, D) tensors,
which is what exports to ONNX (:class:`DynamicsStep`); ``use_pyg=True`` runs torch_geometric
views of them (:class:`~dlp_training.models.pyg_layers.InteractionLayer`, same weights) on a
batched ``edge_index``, the reference the tests compare with (torch_geometric imported only then).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from dlp_ros.config_schema import check_fields, checked, from_mapping
from dlp_ros.errors import ConfigError
from dlp_training.models.dlp import DlpConfig, Particles
from dlp_training.models.dynamics_layers import (
    AGGREGATIONS,
    MLP,
    DenseInteractionLayer,
    batch_edge_index,
    fully_connected_edge_index,
)

logger = logging.getLogger(__name__)

# attribute -> size of the foreground node state, in order (features: F, from the config)
STATE_LAYOUT: tuple[tuple[str, int], ...] = (
    ('mu', 2),
    ('logvar', 2),
    ('scale', 2),
    ('depth', 1),
    ('transparency', 1),
)
TRANSPARENCY_EPS = 1e-4  # clamp before the logit


@dataclass
class DynamicsConfig:
    """Hyper-parameters of :class:`ParticleDynamics`. Defaults match ``DlpConfig()``."""

    # Keys of runs written before the sizes took the model card's names (K, F, Fb).
    RENAMED: ClassVar[dict[str, str]] = {
        'n_particles': 'K',
        'feature_dim': 'F',
        'bg_feature_dim': 'Fb',
    }

    # K: foreground particles per frame.
    K: int = checked(8, ge=1)
    # F: particle appearance features.
    F: int = checked(6, ge=1)
    # Fb: background features.
    Fb: int = checked(8, ge=1)
    # H: history frames read per step (the sliding window of a rollout).
    history: int = checked(4, ge=1)
    # A: action (command) size per frame; 0 = no action input.
    action_dim: int = checked(0, ge=0)
    # Gate the action embedding per node by sigmoid(linear(node embedding)): each particle takes
    # the command in as much as its own state says (the robot's effector, by its appearance),
    # and the others learn of it through messages, with relative positions. Without the gate
    # every node reads the command, and the model may move objects the pusher never touches.
    action_gate: bool = False
    # The command drives one particle: a softmax over the K particles of the frame picks, by
    # their own states, which one takes it in (the effector; the background never does). Others
    # learn of the command only through messages, so a far object cannot follow the command.
    action_effector: bool = False
    # Messages between particles further apart than this (normalised units, 2 = image width) are
    # faded out, smoothly (module docstring); 0: every pair interacts at any distance.
    interaction_radius: float = checked(0.0, ge=0, finite=True)
    # D: node embedding size and MLP width.
    hidden_dim: int = checked(128, ge=1)
    # Interaction layers (message-passing rounds).
    n_layers: int = checked(3, ge=1)
    # Message aggregation: 'sum' (interaction networks) or 'mean'.
    aggregation: str = checked('sum', choices=AGGREGATIONS)
    # LayerNorm inside every MLP.
    layer_norm: bool = True
    # Edge attribute flagging the same particle slot in another frame (see the module docstring).
    same_particle_edges: bool = True
    # Largest change per step of each attribute (tanh bound): positions in normalised units
    # ([-1, 1] = image edges), transparency in logit units, the others in their latent units.
    max_delta_position: float = checked(0.25, gt=0, finite=True)
    max_delta_logvar: float = checked(1.0, gt=0, finite=True)
    max_delta_scale: float = checked(0.5, gt=0, finite=True)
    max_delta_depth: float = checked(0.5, gt=0, finite=True)
    max_delta_transparency: float = checked(2.0, gt=0, finite=True)
    max_delta_features: float = checked(1.0, gt=0, finite=True)
    max_delta_bg: float = checked(1.0, gt=0, finite=True)
    # Zero the output layers at construction: the untrained model is the identity.
    identity_init: bool = True
    # Inertia: the position delta is the last observed displacement mu[H-1] - mu[H-2] (clamped
    # to max_delta_position per axis, so a re-seeded slot's jump does not fly on) plus the
    # bounded correction: the zero-output model is constant velocity instead of the last frame,
    # and the network learns only what changes the motion (walls, contacts, commands).
    # Needs history >= 2.
    velocity_prior: bool = False
    # Frames the prior's velocity is averaged over: (mu[H-1] - mu[H-1-n]) / n. 1 is the last
    # displacement (exact for straight motion, as bouncing balls between contacts); more smooth
    # a tracker's jitter out of the velocity (real footage: walkers move < 1 px a frame while
    # their particles jitter by about as much). Needs velocity_prior and history >= n + 1.
    velocity_window: int = checked(1, ge=1)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.velocity_prior and self.history < 2:
            raise ConfigError(f'DynamicsConfig.velocity_prior needs history >= 2 (two frames '
                              f'give a displacement), got history {self.history}')  # fmt: skip
        if self.velocity_window > 1 and not self.velocity_prior:
            raise ConfigError(f'DynamicsConfig.velocity_window {self.velocity_window} needs '
                              f'velocity_prior: true')  # fmt: skip
        if self.velocity_prior and self.velocity_window >= self.history:
            raise ConfigError(f'DynamicsConfig.velocity_window {self.velocity_window} needs '
                              f'history >= {self.velocity_window + 1}, got history '
                              f'{self.history}')  # fmt: skip
        if self.action_gate and self.action_effector:
            raise ConfigError('action_gate and action_effector exclude each other: choose one')
        if self.interaction_radius and self.aggregation != 'sum':
            raise ConfigError(f"interaction_radius {self.interaction_radius} needs aggregation "
                             f"'sum', got {self.aggregation!r}")  # fmt: skip

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DynamicsConfig:
        """Build from a mapping (e.g. YAML); unknown keys raise ``ConfigError`` naming them."""
        return from_mapping(cls, d)

    @classmethod
    def from_dlp(cls, dlp: DlpConfig, **overrides: Any) -> DynamicsConfig:
        """K, F and Fb taken from the DLP model's config, the rest from defaults/overrides."""
        sizes = {
            'K': dlp.K,
            'F': dlp.F,
            'Fb': dlp.Fb,
        }
        return cls.from_dict({**sizes, **overrides})

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for YAML and checkpoints; ``from_dict`` inverts it."""
        return dataclasses.asdict(self)

    @property
    def state_dim(self) -> int:
        """S: size of a foreground node's state vector (module docstring)."""
        return sum(n for _, n in STATE_LAYOUT) + self.F

    @property
    def n_nodes(self) -> int:
        """N = H (K + 1): graph nodes per sample."""
        return self.history * (self.K + 1)


def as_particles(p: Particles | Mapping[str, Tensor]) -> Particles:
    """A :class:`Particles` from itself or a mapping with the same keys."""
    return p if isinstance(p, Particles) else Particles(**p)


def frames(p: Particles, index: slice) -> Particles:
    """Slice every field along the time axis (dim 1) of (B, T, ...) particles."""
    return Particles(*(x[:, index] for x in p))


def _logit(t: Tensor) -> Tensor:
    t = t.clamp(TRANSPARENCY_EPS, 1 - TRANSPARENCY_EPS)
    return torch.log(t) - torch.log1p(-t)  # torch.logit has no ONNX symbolic at opset 17


class ParticleDynamics(nn.Module):
    """Graph-network particle dynamics (see the module docstring).

    Args:
        config: :class:`DynamicsConfig`.
        use_pyg: run the torch_geometric layers (True) or their dense views (False, exportable).

    Shapes:
        forward: history :class:`Particles` (or a mapping) of (B, H, K, ...) tensors
        (mu (B, H, K, 2), logvar (B, H, K, 2), scale (B, H, K, 2), depth (B, H, K, 1),
        transparency (B, H, K, 1), features (B, H, K, F), bg_features (B, H, Fb)) and actions
        (B, H, A) or None -> next frame :class:`Particles` (mu (B, K, 2), ..., bg_features
        (B, Fb)).
    """

    def __init__(self, config: DynamicsConfig, use_pyg: bool = False) -> None:
        super().__init__()
        self.config = c = config
        self.use_pyg = use_pyg
        d = c.hidden_dim
        self.node_encoder = MLP(c.state_dim, d, d, c.layer_norm)
        self.bg_encoder = MLP(c.Fb, d, d, c.layer_norm)
        self.type_embedding = nn.Parameter(0.1 * torch.randn(2, d))  # (2, D): fg, bg
        self.time_embedding = nn.Parameter(0.1 * torch.randn(c.history, d))  # (H, D)
        self.action_encoder = MLP(c.action_dim, d, d, c.layer_norm) if c.action_dim else None
        self.action_gate = nn.Linear(d, 1) if c.action_dim and c.action_gate else None
        self.effector = nn.Linear(d, 1) if c.action_dim and c.action_effector else None
        edge_dim = 1 if c.same_particle_edges else 0
        self.layers = nn.ModuleList(
            DenseInteractionLayer(d, d, edge_dim, 2, c.aggregation, c.layer_norm)
            for _ in range(c.n_layers)
        )
        self._pyg: tuple[nn.Module, ...] | None = None  # message-passing views, made when asked
        self.head = MLP(d, d, c.state_dim, c.layer_norm)
        self.bg_head = MLP(d, d, c.Fb, c.layer_norm)

        bounds = [c.max_delta_position] * 2 + [c.max_delta_logvar] * 2
        bounds += [c.max_delta_scale] * 2 + [c.max_delta_depth, c.max_delta_transparency]
        bounds += [c.max_delta_features] * c.F
        self.register_buffer('delta_bound', torch.tensor(bounds), persistent=False)  # (S,)
        self._build_graph()
        if c.identity_init:
            self.zero_output_()
        logger.debug(
            'ParticleDynamics with %d parameters', sum(p.numel() for p in self.parameters())
        )

    def _build_graph(self) -> None:
        """Fully connected graph of one sample and its same-particle edge attribute."""
        c = self.config
        n = c.n_nodes
        slot = torch.arange(n) % (c.K + 1)  # (N,) particle slot of each node
        same = (slot.view(-1, 1) == slot.view(1, -1)) & ~torch.eye(n, dtype=torch.bool)
        edge_index = fully_connected_edge_index(n)  # (2, E0)
        self.register_buffer('edge_index', edge_index, persistent=False)
        dense_attr = same.float().unsqueeze(-1)  # (N, N, 1): [i, j] for the edge j -> i
        sparse_attr = dense_attr[edge_index[1], edge_index[0]]  # (E0, 1)
        if not c.same_particle_edges:
            dense_attr, sparse_attr = dense_attr[..., :0], sparse_attr[:, :0]
        self.register_buffer('dense_edge_attr', dense_attr, persistent=False)
        adjacency = 1.0 - torch.eye(n)  # (N, N): all pairs, no self loops
        self.register_buffer('adjacency', adjacency, persistent=False)
        fg = slot < c.K  # (N,) foreground nodes
        pairs = fg.view(-1, 1) & fg.view(1, -1)  # (N, N) both ends are particles
        self.register_buffer('particle_pairs', pairs, persistent=False)
        # With a radius: messages from the background to particles (and between background
        # nodes) weigh 1, from particles to the background 0, so that the background cannot
        # relay the effector's state to a far particle in the next layer.
        from_bg = (~fg).view(1, -1).expand(n, n)  # [i, j]: the sender j is a background node
        self.register_buffer('background_edges', from_bg.float(), persistent=False)
        self.register_buffer('sparse_edge_attr', sparse_attr, persistent=False)
        # With one history frame no edge joins a slot to itself in another frame: the attribute
        # is all zeros and its (B, N, N, D) term is left out of the dense layers' graph.
        self._dense_attr_used = bool(dense_attr.any())

    @torch.no_grad()
    def zero_output_(self) -> ParticleDynamics:
        """Zero the output layers: every delta is 0 and the prediction is the last frame."""
        for head in (self.head, self.bg_head):
            head.last.weight.zero_()
            head.last.bias.zero_()
        return self

    # ----------------------------------------------------------------------------- forward

    def check_inputs(self, history: Particles, actions: Tensor | None) -> None:
        """Raise ``ValueError`` naming the first input whose shape does not fit the config."""
        c = self.config
        h, k = c.history, c.K
        trailing = {name: (h, k, n) for name, n in STATE_LAYOUT}
        trailing.update(features=(h, k, c.F), bg_features=(h, c.Fb))
        batch = history.mu.shape[0]
        for name, want in trailing.items():
            got = tuple(getattr(history, name).shape)
            if got != (batch, *want):
                raise ValueError(
                    f'history.{name} must be (B, {", ".join(map(str, want))}), got {got}'
                )
        if c.action_dim and (actions is None or tuple(actions.shape) != (batch, h, c.action_dim)):
            got = None if actions is None else tuple(actions.shape)
            raise ValueError(f'actions must be (B, {h}, {c.action_dim}), got {got}')
        if not c.action_dim and actions is not None:
            raise ValueError('actions given, but the model has action_dim = 0')

    def embed(self, history: Particles, actions: Tensor | None) -> tuple[Tensor, Tensor]:
        """Node embeddings (B, N, D) and positions (B, N, 2), nodes ordered (t, k)."""
        c = self.config
        state = torch.cat([getattr(history, name) for name, _ in STATE_LAYOUT], dim=-1)
        state = torch.cat([state, history.features], dim=-1)  # (B, H, K, S)
        fg = self.node_encoder(state) + self.type_embedding[0]  # (B, H, K, D)
        bg = self.bg_encoder(history.bg_features) + self.type_embedding[1]  # (B, H, D)
        x = torch.cat([fg, bg.unsqueeze(2)], dim=2)  # (B, H, K+1, D)
        x = x + self.time_embedding.unsqueeze(1)  # (H, 1, D) broadcast over particles
        if self.action_encoder is not None and actions is not None:
            command = self.action_encoder(actions).unsqueeze(2)  # (B, H, 1, D)
            if self.action_gate is not None:
                command = command * torch.sigmoid(self.action_gate(x))  # (B, H, K+1, D)
            if self.effector is not None:
                pick = torch.softmax(self.effector(x[:, :, : c.K]), dim=2)  # (B, H, K, 1)
                pick = torch.cat([pick, torch.zeros_like(pick[:, :, :1])], dim=2)  # bg: 0
                command = command * pick  # (B, H, K+1, D)
            x = x + command
        pos = torch.cat([history.mu, torch.zeros_like(history.mu[:, :, :1])], dim=2)
        n = c.n_nodes
        return x.reshape(-1, n, c.hidden_dim), pos.reshape(-1, n, 2)  # (B, N, D), (B, N, 2)

    def edge_weights(self, pos: Tensor) -> Tensor:
        """Weight of the message j -> i at [(b,) i, j]: the adjacency (no self loops), (N, N)
        without an interaction radius; with one, times the fade between two particles (module
        docstring), (B, N, N)."""
        r = self.config.interaction_radius
        if not r:
            return self.adjacency
        rel = pos.unsqueeze(1) - pos.unsqueeze(2)  # (B, N, N, 2)
        dist = torch.sqrt(rel.pow(2).sum(-1) + 1e-12)  # (B, N, N), finite gradient at 0
        near = torch.sigmoid((r - dist) * (8.0 / r))  # (B, N, N)
        return self.adjacency * torch.where(self.particle_pairs, near, self.background_edges)

    def interact(self, x: Tensor, pos: Tensor, use_pyg: bool) -> Tensor:
        """Message passing over the fully connected graph. (B, N, D), (B, N, 2) -> (B, N, D)."""
        adj = self.edge_weights(pos)  # (N, N) or (B, N, N)
        if not use_pyg:
            attr = self.dense_edge_attr if self._dense_attr_used else None
            for layer in self.layers:
                x = layer(x, pos, attr, adj)  # (B, N, D)
            return x
        if self._pyg is None:
            from dlp_training.models.pyg_layers import InteractionLayer  # needs torch_geometric

            # views sharing the layers' modules; a tuple keeps them out of the state dict
            self._pyg = tuple(InteractionLayer(layer) for layer in self.layers)
        b, n, d = x.shape
        edge_index = batch_edge_index(self.edge_index, b, n)  # (2, B E0)
        edge_attr = self.sparse_edge_attr.repeat(b, 1)  # (B E0, edge_dim)
        if edge_attr.shape[1] == 0:
            edge_attr = None
        h, p = x.reshape(b * n, d), pos.reshape(b * n, 2)
        weight = None
        if self.config.interaction_radius:
            src, dst = self.edge_index  # (E0,) each
            weight = adj[:, dst, src].reshape(-1, 1)  # (B E0, 1), the same edge order
        for layer in self._pyg:
            h = layer(h, p, edge_index, edge_attr, weight)  # (B N, D)
        return h.view(b, n, d)

    def forward(
        self,
        history: Particles | Mapping[str, Tensor],
        actions: Tensor | None = None,
        use_pyg: bool | None = None,
    ) -> Particles:
        """One step: particles of the last H frames -> particles of the next frame.

        Args:
            history: (B, H, K, ...) particles, oldest frame first (class docstring).
            actions: (B, H, A), ``actions[:, t]`` applied at history frame t; None iff A = 0.
            use_pyg: override ``self.use_pyg`` for this call.
        """
        c = self.config
        hist = as_particles(history)
        self.check_inputs(hist, actions)
        x, pos = self.embed(hist, actions)  # (B, N, D), (B, N, 2)
        x = self.interact(x, pos, self.use_pyg if use_pyg is None else use_pyg)
        k, d = c.K, c.hidden_dim
        last = x.reshape(-1, c.history, k + 1, d)[:, -1]  # (B, K+1, D) last frame's nodes
        delta = torch.tanh(self.head(last[:, :k])) * self.delta_bound  # (B, K, S)
        if c.velocity_prior:
            bound = c.max_delta_position
            n = c.velocity_window
            velocity = (hist.mu[:, -1] - hist.mu[:, -1 - n]) / n  # (B, K, 2)
            velocity = velocity.clamp(-bound, bound)
            delta = torch.cat([delta[..., :2] + velocity, delta[..., 2:]], dim=-1)
        delta_bg = torch.tanh(self.bg_head(last[:, k])) * c.max_delta_bg  # (B, Fb)
        return self.apply_deltas(frames(hist, slice(-1, None)), delta, delta_bg)

    @staticmethod
    def apply_deltas(last: Particles, delta: Tensor, delta_bg: Tensor) -> Particles:
        """Residual update of the last frame (B, 1, K, ...) by deltas (B, K, S) and (B, Fb)."""
        mu, logvar, scale, depth, t, features, bg = (x[:, 0] for x in last)  # drop time axis
        ell = _logit(t)  # (B, K, 1)
        step = torch.sigmoid(ell + delta[..., 7:8]) - torch.sigmoid(ell)  # exactly 0 if delta 0
        return Particles(
            mu=mu + delta[..., 0:2],
            logvar=logvar + delta[..., 2:4],
            scale=scale + delta[..., 4:6],
            depth=depth + delta[..., 6:7],
            transparency=(t + step).clamp(0.0, 1.0),
            features=features + delta[..., 8:],
            bg_features=bg + delta_bg,
        )


class DynamicsStep(nn.Module):
    """Export view of one dense :class:`ParticleDynamics` step: tensors in, tensors out.

    Shapes:
        ``INPUT_NAMES``: the :class:`Particles` fields, each (B, H, K, ...) (bg_features
        (B, H, Fb)), then ``actions`` (B, H, A) when A > 0 -> ``OUTPUT_NAMES``: ``next_<field>``,
        each (B, K, ...) (next_bg_features (B, Fb)). K and H are fixed, B is dynamic.
    """

    OUTPUT_NAMES = tuple(f'next_{name}' for name in Particles._fields)

    def __init__(self, model: ParticleDynamics) -> None:
        super().__init__()
        self.model = model
        self.INPUT_NAMES = Particles._fields + (('actions',) if model.config.action_dim else ())

    def forward(
        self,
        mu: Tensor,
        logvar: Tensor,
        scale: Tensor,
        depth: Tensor,
        transparency: Tensor,
        features: Tensor,
        bg_features: Tensor,
        actions: Tensor | None = None,
    ) -> tuple[Tensor, ...]:
        history = Particles(mu, logvar, scale, depth, transparency, features, bg_features)
        return tuple(self.model(history, actions, use_pyg=False))


# ----------------------------------------------------------------------------- rollout / loss


def rollout(
    model: ParticleDynamics,
    history: Particles | Mapping[str, Tensor],
    horizon: int,
    actions: Tensor | None = None,
) -> Particles:
    """Autoregressive prediction of ``horizon`` frames, sliding the H-frame window.

    Args:
        model: the one-step model (H = ``model.config.history``).
        history: (B, T, K, ...) observed particles, T >= H (only the last H frames are read).
        horizon: frames to predict, >= 1.
        actions: (B, T + horizon - 1, A) when A > 0, else None. ``actions[:, s]`` is the command
            applied at frame s (history frames 0..T-1, then predicted frames T, T+1, ...), so
            ``actions[:, T - 1 + n]`` produces predicted frame n (0-based) and the command at
            the last predicted frame is not needed.

    Returns:
        (B, horizon, K, ...) particles (bg_features (B, horizon, Fb)), frame n = T + n.
    """
    hist = as_particles(history)
    h, a = model.config.history, model.config.action_dim
    t = hist.mu.shape[1]
    if t < h:
        raise ValueError(f'history has {t} frames, the model needs H = {h}')
    if horizon < 1:
        raise ValueError(f'horizon must be >= 1, got {horizon}')
    if a:
        want = (hist.mu.shape[0], t + horizon - 1, a)
        if actions is None or tuple(actions.shape) != want:
            got = None if actions is None else tuple(actions.shape)
            raise ValueError(f'actions must be (B, T + horizon - 1, A) = {want}, got {got}')
    elif actions is not None:
        raise ValueError('actions given, but the model has action_dim = 0')
    window = frames(hist, slice(t - h, t))  # (B, H, K, ...)
    predicted: list[Particles] = []
    for n in range(horizon):
        step_actions = actions[:, t - h + n : t + n] if actions is not None else None  # (B, H, A)
        nxt = model(window, step_actions)  # (B, K, ...)
        predicted.append(nxt)
        window = Particles(
            *(
                torch.cat([w[:, 1:], p.unsqueeze(1)], dim=1)
                for w, p in zip(window, nxt, strict=True)
            )
        )
    return Particles(*(torch.stack(seq, dim=1) for seq in zip(*predicted, strict=True)))


@dataclass
class RolloutLossWeights:
    """Weights of :func:`rollout_loss`'s terms (starting points; tune per data set)."""

    # MSE of positions, normalised units (a pixel of a 64 px image is 0.03).
    position: float = checked(1.0, ge=0, finite=True)
    logvar: float = checked(0.01, ge=0, finite=True)
    scale: float = checked(0.1, ge=0, finite=True)
    depth: float = checked(0.1, ge=0, finite=True)
    # MSE of transparency values in [0, 1] (never presence-weighted).
    transparency: float = checked(0.1, ge=0, finite=True)
    features: float = checked(0.01, ge=0, finite=True)
    bg_features: float = checked(0.01, ge=0, finite=True)
    # Weight every foreground term of a particle by its target transparency (detached):
    # a switched-off particle's position and appearance are arbitrary.
    presence_weighted: bool = True
    # Emphasis on what moves: every foreground term of a particle is weighted by 1 + motion x
    # (how far its target moves from the last observed frame, largest over the predicted steps,
    # normalised units). Most particles of a pushing scene stand still; 0 weighs all alike.
    motion: float = checked(0.0, ge=0, finite=True)

    def __post_init__(self) -> None:
        check_fields(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RolloutLossWeights:
        return from_mapping(cls, d)


def _step_errors(
    pred: Particles, target: Particles, slot_mask: Tensor | None, presence_weighted: bool
) -> dict[str, Tensor]:
    """Per predicted step, the squared error of each attribute (averaged over dimensions, then
    batch and particles; foreground terms weighted by the target presence if
    ``presence_weighted``, all by ``slot_mask`` (B, K)): term -> (horizon,)."""
    mask = torch.ones_like(target.transparency[..., 0])  # (B, horizon, K)
    if slot_mask is not None:
        if tuple(slot_mask.shape) != (mask.shape[0], mask.shape[2]):
            raise ValueError(f'slot_mask must be (B, K) = {(mask.shape[0], mask.shape[2])}, '
                             f'got {tuple(slot_mask.shape)}')  # fmt: skip
        mask = mask * slot_mask[:, None, :].to(mask)
    presence = target.transparency[..., 0].detach() * mask  # (B, horizon, K)
    if not presence_weighted:
        presence = mask
    norm = presence.sum(dim=(0, 2)).clamp(min=1e-6)  # (horizon,)
    per_step: dict[str, Tensor] = {}  # term -> (horizon,)
    for name in ('mu', 'logvar', 'scale', 'depth', 'features'):
        err = (getattr(pred, name) - getattr(target, name)).pow(2).mean(-1)  # (B, horizon, K)
        per_step[name] = (err * presence).sum(dim=(0, 2)) / norm
    err = (pred.transparency - target.transparency).pow(2)[..., 0]  # (B, horizon, K)
    per_step['transparency'] = (err * mask).sum(dim=(0, 2)) / mask.sum(dim=(0, 2)).clamp(min=1e-6)
    per_step['bg_features'] = (pred.bg_features - target.bg_features).pow(2).mean(dim=(0, 2))
    return per_step


def rollout_loss(
    model: ParticleDynamics,
    sequence: Particles | Mapping[str, Tensor],
    burn_in: int,
    horizon: int,
    actions: Tensor | None = None,
    weights: RolloutLossWeights | None = None,
    step_weights: Tensor | None = None,
    slot_mask: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    r"""Burn-in + multi-step rollout loss in particle space.

    Frames ``burn_in - H .. burn_in - 1`` of ``sequence`` are the observed history (frames before
    ``burn_in - H`` are not read: the model only sees H frames), :func:`rollout` predicts frames
    ``burn_in .. burn_in + horizon - 1`` feeding back its own predictions (gradients flow
    through the whole rollout), and each is compared with the sequence:

    .. math::
        L = \sum_a w_a\, \frac{\sum_s \omega_s L_{a,s}}{\sum_s \omega_s}

    for attribute a (:class:`RolloutLossWeights`) and step s with ``step_weights`` ω (uniform by
    default). :math:`L_{a,s}` is the squared error averaged over dimensions, then over batch and
    particles, weighted by the target transparency if ``presence_weighted`` (foreground terms
    except transparency). For a curriculum, grow ``horizon`` during training
    (:func:`curriculum_horizon`) or ramp ``step_weights``.

    Args:
        model: :class:`ParticleDynamics`.
        sequence: (B, T, K, ...) particles (bg_features (B, T, Fb)), T >= burn_in + horizon.
        burn_in: observed frames, >= H.
        horizon: predicted frames, >= 1.
        actions: (B, T', A), T' >= burn_in + horizon - 1, ``actions[:, s]`` applied at frame s of
            ``sequence``; None iff A = 0.
        weights: term weights; defaults of :class:`RolloutLossWeights` if None.
        step_weights: (horizon,) non-negative weights of the predicted steps, or None.
        slot_mask: (B, K) weights of the particle slots per clip (0 drops a slot from every
            foreground term, e.g. one re-seeded to a new identity within the clip), or None;
            multiplied by the motion emphasis when ``weights.motion`` > 0.

    Returns:
        Scalar loss and float metrics: ``loss``, each term (step-weighted MSE), and
        ``position_rmse_first`` / ``position_rmse_last`` (first and last predicted step,
        normalised units).
    """
    w = weights or RolloutLossWeights()
    seq = as_particles(sequence)
    h, t = model.config.history, seq.mu.shape[1]
    if burn_in < h:
        raise ValueError(f'burn_in must be >= H = {h}, got {burn_in}')
    if horizon < 1 or burn_in + horizon > t:
        raise ValueError(f'need 1 <= horizon <= T - burn_in = {t - burn_in}, got {horizon}')
    step_actions = None
    if actions is not None:
        if actions.shape[1] < burn_in + horizon - 1:
            raise ValueError(
                f'actions must cover {burn_in + horizon - 1} frames, got {actions.shape[1]}'
            )
        step_actions = actions[:, burn_in - h : burn_in + horizon - 1]  # (B, H + horizon - 1, A)
    pred = rollout(model, frames(seq, slice(burn_in - h, burn_in)), horizon, step_actions)
    target = frames(seq, slice(burn_in, burn_in + horizon))  # (B, horizon, K, ...)
    if w.motion:
        moved = (target.mu - seq.mu[:, burn_in - 1 : burn_in]).norm(dim=-1).amax(dim=1)  # (B, K)
        emphasis = 1.0 + w.motion * moved.detach()
        slot_mask = emphasis if slot_mask is None else slot_mask.to(emphasis) * emphasis

    per_step = _step_errors(pred, target, slot_mask, w.presence_weighted)  # term -> (horizon,)

    if step_weights is None:
        step_weights = torch.ones(horizon, device=seq.mu.device)
    if tuple(step_weights.shape) != (horizon,):
        raise ValueError(f'step_weights must be ({horizon},), got {tuple(step_weights.shape)}')
    omega = step_weights / step_weights.sum().clamp(min=1e-12)  # (horizon,)
    term_weights = {
        'mu': w.position,
        'logvar': w.logvar,
        'scale': w.scale,
        'depth': w.depth,
        'transparency': w.transparency,
        'features': w.features,
        'bg_features': w.bg_features,
    }
    terms = {name: (v * omega).sum() for name, v in per_step.items()}
    loss = sum(term_weights[name] * terms[name] for name in terms)
    metrics = {('position' if k == 'mu' else k): float(v.detach()) for k, v in terms.items()}
    metrics['loss'] = float(loss.detach())
    metrics['position_rmse_first'] = float(per_step['mu'][0].detach().sqrt())
    metrics['position_rmse_last'] = float(per_step['mu'][-1].detach().sqrt())
    return loss, metrics


def curriculum_horizon(
    iteration: int, max_horizon: int, ramp_iterations: int, min_horizon: int = 1
) -> int:
    """Rollout horizon growing linearly from ``min_horizon`` (iteration 0) to ``max_horizon``.

    Reached at ``ramp_iterations`` (0: at once); DDLP phases later steps in later, similarly.
    """
    if not 1 <= min_horizon <= max_horizon:
        raise ValueError(f'need 1 <= min_horizon <= max_horizon, got {min_horizon}, {max_horizon}')
    if ramp_iterations <= 0 or iteration >= ramp_iterations:
        return max_horizon
    frac = max(iteration, 0) / ramp_iterations
    return min_horizon + int(frac * (max_horizon - min_horizon + 1))
