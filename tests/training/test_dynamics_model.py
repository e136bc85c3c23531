"""The particle dynamics model: config, equivariance, PyG == dense, rollouts, loss, ONNX export."""

from __future__ import annotations

import io
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from dlp_ros.errors import ConfigError
from dlp_training.models.dlp import DlpConfig, Particles
from dlp_training.models.dynamics import (
    DynamicsConfig,
    DynamicsStep,
    ParticleDynamics,
    RolloutLossWeights,
    curriculum_horizon,
    rollout,
    rollout_loss,
)
from dlp_training.models.dynamics_layers import (
    DenseInteractionLayer,
    batch_edge_index,
    fully_connected_edge_index,
)
from dlp_training.models.pyg_layers import InteractionLayer

torch.set_num_threads(1)

TINY = {'K': 3, 'F': 2, 'Fb': 3, 'history': 2, 'hidden_dim': 16}


def _config(**overrides: object) -> DynamicsConfig:
    return DynamicsConfig(**{**TINY, 'n_layers': 2, 'identity_init': False, **overrides})


def _model(seed: int = 0, use_pyg: bool = False, **overrides: object) -> ParticleDynamics:
    torch.manual_seed(seed)
    model = ParticleDynamics(_config(**overrides), use_pyg=use_pyg).eval()
    with torch.no_grad():  # non-trivial outputs: the heads' last layers are small at init
        for head in (model.head, model.bg_head):
            head.last.weight.mul_(5.0)
    return model


def _particles(b: int, t: int, k: int, f: int, fb: int, seed: int = 0) -> Particles:
    g = torch.Generator().manual_seed(seed)
    return Particles(
        mu=2 * torch.rand(b, t, k, 2, generator=g) - 1,
        logvar=torch.randn(b, t, k, 2, generator=g) - 5,
        scale=torch.randn(b, t, k, 2, generator=g),
        depth=torch.randn(b, t, k, 1, generator=g),
        transparency=torch.rand(b, t, k, 1, generator=g),
        features=torch.randn(b, t, k, f, generator=g),
        bg_features=torch.randn(b, t, fb, generator=g),
    )


def _history(c: DynamicsConfig, b: int = 2, t: int | None = None, seed: int = 0) -> Particles:
    t = c.history if t is None else t
    return _particles(b, t, c.K, c.F, c.Fb, seed)


def _assert_particles_close(a: Particles, b: Particles, atol: float) -> None:
    for name, x, y in zip(Particles._fields, a, b, strict=True):
        np.testing.assert_allclose(x.detach().numpy(), y.detach().numpy(), atol=atol, err_msg=name)


# ------------------------------------------------------------------------------------ config


def test_config_defaults_round_trip_and_from_dlp() -> None:
    c = DynamicsConfig()
    assert DynamicsConfig.from_dict(c.to_dict()) == c
    d = DynamicsConfig.from_dlp(DlpConfig(), history=3)
    assert (d.K, d.F, d.Fb, d.history) == (8, 6, 8, 3)
    assert d.state_dim == 14 and d.n_nodes == 27
    with pytest.raises(ConfigError, match='hiden_dim'):
        DynamicsConfig.from_dict({'hiden_dim': 3})
    with pytest.raises(ConfigError, match='pos'):
        RolloutLossWeights.from_dict({'pos': 1.0})


@pytest.mark.parametrize(
    ('override', 'field'),
    [
        ({'K': 0}, 'K'),
        ({'history': 0}, 'history'),
        ({'action_dim': -1}, 'action_dim'),
        ({'n_layers': 0}, 'n_layers'),
        ({'hidden_dim': 2.5}, 'hidden_dim'),
        ({'aggregation': 'max'}, 'aggregation'),
        ({'max_delta_position': 0.0}, 'max_delta_position'),
        ({'max_delta_features': float('inf')}, 'max_delta_features'),
        ({'layer_norm': 1}, 'layer_norm'),
        ({'velocity_prior': True, 'history': 1}, 'velocity_prior'),
        ({'velocity_window': 0}, 'velocity_window'),
        ({'velocity_window': 2, 'history': 3}, 'velocity_window'),
        ({'velocity_window': 3, 'history': 3, 'velocity_prior': True}, 'velocity_window'),
    ],
)
def test_bad_config_values_raise_naming_the_field(override: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=f'DynamicsConfig.{field}'):
        DynamicsConfig(**override)


def test_bad_loss_weights_raise_naming_the_field() -> None:
    with pytest.raises(ConfigError, match='RolloutLossWeights.position'):
        RolloutLossWeights(position=-1.0)


# ------------------------------------------------------------------------------------ layers


@pytest.mark.parametrize('aggr', ['sum', 'mean'])
@pytest.mark.parametrize('edge_dim', [0, 3])
def test_pyg_layer_equals_dense_layer_and_ignores_edge_order(aggr: str, edge_dim: int) -> None:
    torch.manual_seed(0)
    b, n, d = 3, 5, 8
    dense = DenseInteractionLayer(d, 12, edge_dim=edge_dim, aggr=aggr)
    layer = InteractionLayer(dense)
    assert 'InteractionLayer(8, hidden_dim=12' in repr(layer) and 'Dense' in repr(dense)
    x, pos = torch.randn(b, n, d), torch.randn(b, n, 2)
    attr = torch.randn(b, n, n, edge_dim)  # [b, i, j] for the edge j -> i
    ei1 = fully_connected_edge_index(n)  # (2, E0)
    ei = batch_edge_index(ei1, b, n)  # (2, B E0)
    bi = torch.arange(b).repeat_interleave(ei1.shape[1])
    sparse_attr = attr[bi, ei[1] % n, ei[0] % n] if edge_dim else None  # (B E0, edge_dim)
    with torch.no_grad():
        got = layer(x.reshape(b * n, d), pos.reshape(b * n, 2), ei, sparse_attr).view(b, n, d)
        want = dense(x, pos, attr if edge_dim else None)
        perm = torch.randperm(ei.shape[1], generator=torch.Generator().manual_seed(1))
        permuted_attr = sparse_attr[perm] if edge_dim else None
        shuffled = layer(x.reshape(b * n, d), pos.reshape(b * n, 2), ei[:, perm], permuted_attr)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)
    np.testing.assert_allclose(shuffled.view(b, n, d).numpy(), got.numpy(), atol=1e-6)
    # shared weights, not copies
    assert dense.edge_mlp is layer.edge_mlp and dense.node_mlp is layer.node_mlp


def test_training_and_export_do_not_import_torch_geometric() -> None:
    code = (
        'import sys, dlp_training.models.dynamics, dlp_training.export, '
        'dlp_training.train_dynamics; '
        "print('torch_geometric' in sys.modules)"
    )
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == 'False', out.stdout + out.stderr


def test_model_pyg_and_dense_paths_agree() -> None:
    model = _model(action_dim=2)
    hist, actions = _history(model.config, b=3), torch.randn(3, 2, 2)
    with torch.no_grad():
        _assert_particles_close(
            model(hist, actions, use_pyg=True), model(hist, actions, use_pyg=False), atol=1e-5
        )
    names = list(model.state_dict())
    assert not any('_dense' in n or 'edge_index' in n for n in names)  # no duplicates, no graph


# ------------------------------------------------------------------------------------ model


@pytest.mark.parametrize('use_pyg', [False, True])
def test_permutation_equivariance_over_particles(use_pyg: bool) -> None:
    model = _model(use_pyg=use_pyg)
    c = model.config
    hist = _history(c, b=2)
    perm = torch.tensor([2, 0, 1])
    permuted = Particles(*(x[:, :, perm] for x in hist[:-1]), hist.bg_features)
    with torch.no_grad():
        out, out_p = model(hist), model(permuted)
    expected = Particles(*(x[:, perm] for x in out[:-1]), out.bg_features)
    _assert_particles_close(out_p, expected, atol=1e-5)
    assert not torch.allclose(out.mu, hist.mu[:, -1])  # the check is not vacuous


@pytest.mark.parametrize(('k', 'h', 'n', 'a'), [(1, 1, 3, 0), (3, 2, 4, 0), (4, 3, 2, 2)])
def test_rollout_shapes(k: int, h: int, n: int, a: int) -> None:
    model = _model(K=k, history=h, action_dim=a)
    c, b, t = model.config, 2, h + 1  # one more observed frame than the window
    hist = _history(c, b=b, t=t)
    actions = torch.randn(b, t + n - 1, a) if a else None
    with torch.no_grad():
        out = rollout(model, hist, n, actions)
    fb, f = c.Fb, c.F
    shapes = [(2,), (2,), (2,), (1,), (1,), (f,)]
    for x, tail in zip(out[:-1], shapes, strict=True):
        assert tuple(x.shape) == (b, n, k, *tail)
    assert tuple(out.bg_features.shape) == (b, n, fb)
    assert float(out.transparency.min()) >= 0 and float(out.transparency.max()) <= 1
    with pytest.raises(ValueError, match='actions'):
        rollout(model, hist, n, torch.randn(b, t + n, max(a, 1)) if a else torch.randn(b, 1, 1))


def test_zero_deltas_rollout_is_the_identity() -> None:
    c = _config(action_dim=2, identity_init=True)
    model = ParticleDynamics(c).eval()
    hist = _history(c, b=2, t=3)
    hist = hist._replace(
        transparency=torch.cat(
            [hist.transparency[..., :1, :] * 0, hist.transparency[..., 1:, :]], dim=-2
        )
    )
    with torch.no_grad():
        out = rollout(model, hist, 5, torch.randn(2, 3 + 5 - 1, 2))
    for name, x, last in zip(Particles._fields, out, hist, strict=True):
        for s in range(5):
            assert torch.equal(x[:, s], last[:, -1]), name
    loss, metrics = rollout_loss(model, _history(c, b=2, t=5), 2, 3, torch.randn(2, 4, 2))
    assert torch.isfinite(loss) and metrics['loss'] > 0


def test_velocity_prior_zero_output_is_constant_velocity_clamped() -> None:
    c = _config(history=3, identity_init=True, velocity_prior=True, max_delta_position=0.1)
    model = ParticleDynamics(c).eval()
    hist = _history(c, b=2)
    mu = hist.mu.clone()
    mu[:, -1] = mu[:, -2] + 0.04  # a displacement within the bound ...
    mu[0, -1, 0] = mu[0, -2, 0] + torch.tensor([0.5, -0.3])  # ... and a jump beyond it
    hist = hist._replace(mu=mu)
    with torch.no_grad():
        out = rollout(model, hist, 3)
    velocity = torch.full_like(mu[:, -1], 0.04)
    velocity[0, 0] = torch.tensor([0.1, -0.1])  # clamped to max_delta_position per axis
    for s in range(3):
        torch.testing.assert_close(out.mu[:, s], mu[:, -1] + (s + 1) * velocity)
        torch.testing.assert_close(out.features[:, s], hist.features[:, -1])
    plain = ParticleDynamics(_config(history=3, identity_init=True)).eval()
    with torch.no_grad():
        assert torch.equal(plain(hist).mu, mu[:, -1])  # without it: the last frame


def test_velocity_window_averages_the_last_displacements() -> None:
    c = _config(history=3, identity_init=True, velocity_prior=True, velocity_window=2)
    model = ParticleDynamics(c).eval()
    hist = _history(c, b=2)
    mu = hist.mu.clone()
    mu[:, -2] = mu[:, -3] + torch.tensor([0.02, -0.04])  # a jittered track: the displacements
    mu[:, -1] = mu[:, -2] + torch.tensor([0.06, 0.00])  # differ, their mean is (0.04, -0.02)
    with torch.no_grad():
        out = rollout(model, hist._replace(mu=mu), 2)
    velocity = torch.tensor([0.04, -0.02])
    torch.testing.assert_close(out.mu[:, 0], mu[:, -1] + velocity)
    # the second step averages the last observed displacement and the predicted one
    second = (torch.tensor([0.06, 0.00]) + velocity) / 2
    torch.testing.assert_close(out.mu[:, 1], out.mu[:, 0] + second)
    last = ParticleDynamics(_config(history=3, identity_init=True, velocity_prior=True)).eval()
    with torch.no_grad():
        plain = last(hist._replace(mu=mu)).mu  # (B, K, 2), the last displacement
    torch.testing.assert_close(plain, mu[:, -1] + mu[:, -1] - mu[:, -2])


@pytest.mark.parametrize('gate', [False, True])
def test_actions_change_the_prediction(gate: bool) -> None:
    model = _model(action_dim=3, action_gate=gate)
    hist = _history(model.config, b=2)
    a1 = torch.randn(2, 2, 3, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        p1, p2 = model(hist, a1), model(hist, a1 + 1.0)
    assert (p1.mu - p2.mu).abs().max() > 1e-4
    assert (p1.features - p2.features).abs().max() > 1e-4
    with torch.no_grad(), pytest.raises(ValueError, match='actions'):
        model(hist, None)


def test_a_closed_action_gate_shuts_the_command_out() -> None:
    """action_gate: nodes whose gate is shut do not read the command at all."""
    model = _model(action_dim=2, action_gate=True)
    assert _model(action_dim=2).action_gate is None
    hist = _history(model.config, b=2)
    a = torch.randn(2, 2, 2, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        model.action_gate.weight.zero_()
        model.action_gate.bias.fill_(-50.0)  # sigmoid ~ 2e-22: every gate shut
        shut = (model(hist, a), model(hist, a + 1.0))
        model.action_gate.bias.fill_(50.0)  # every gate open: the ungated model
        opened = (model(hist, a), model(hist, a + 1.0))
    torch.testing.assert_close(shut[0].mu, shut[1].mu)
    assert (opened[0].mu - opened[1].mu).abs().max() > 1e-4


def test_deltas_are_bounded() -> None:
    model = _model()
    with torch.no_grad():
        for head in (model.head, model.bg_head):
            head.last.bias.fill_(100.0)  # saturate tanh
        hist = _history(model.config)
        out = model(hist)
    step = (out.mu - hist.mu[:, -1]).abs()
    assert float(step.max()) <= model.config.max_delta_position + 1e-6
    assert float(step.min()) > model.config.max_delta_position - 1e-4


def test_rollout_loss_trains_and_reports_metrics() -> None:
    torch.manual_seed(0)
    c = DynamicsConfig(**TINY, n_layers=1)  # identity init
    model = ParticleDynamics(c)
    static = Particles(*(x[:, :1].expand(-1, 6, *x.shape[2:]) for x in _history(c, b=4, t=6)))
    drift = torch.linspace(0, 0.5, 6).view(1, 6, 1, 1)
    seq = static._replace(mu=static.mu + drift)  # constant velocity, nothing else changes
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        loss, metrics = rollout_loss(model, seq, burn_in=2, horizon=3)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 10, (first, loss.item())  # learns the velocity
    assert {'loss', 'position', 'features', 'position_rmse_first', 'position_rmse_last'} <= set(
        metrics
    )
    with pytest.raises(ValueError, match='burn_in'):
        rollout_loss(model, seq, burn_in=1, horizon=2)
    with pytest.raises(ValueError, match='horizon'):
        rollout_loss(model, seq, burn_in=2, horizon=5)
    assert [curriculum_horizon(i, 4, 100) for i in (0, 30, 99, 100, 500)] == [1, 2, 4, 4, 4]


# ------------------------------------------------------------------------------------ export


def test_slot_mask_drops_a_slot_from_the_loss() -> None:
    c = _config()
    model = _model()
    seq = _particles(2, c.history + 3, c.K, c.F, c.Fb, seed=1)
    mask = torch.ones(2, c.K)
    mask[1, 2] = 0.0
    loss, _ = rollout_loss(model, seq, c.history, 3, slot_mask=mask)
    # a jump of the masked slot in the targets changes nothing; the same jump elsewhere does
    jumped = seq._replace(mu=seq.mu.clone(), features=seq.features.clone())
    jumped.mu[1, c.history :, 2] += 0.7
    jumped.features[1, c.history :, 2] -= 1.3
    again, _ = rollout_loss(model, jumped, c.history, 3, slot_mask=mask)
    assert torch.equal(loss, again)
    unmasked, _ = rollout_loss(model, jumped, c.history, 3)
    assert not torch.allclose(unmasked, rollout_loss(model, seq, c.history, 3)[0])
    with pytest.raises(ValueError, match='slot_mask'):
        rollout_loss(model, seq, c.history, 3, slot_mask=torch.ones(2, c.K + 1))


def test_motion_emphasis_weighs_moving_particles() -> None:
    """loss.motion: a particle whose target moves by d counts 1 + motion d times a still one."""
    c = _config(identity_init=True)
    model = ParticleDynamics(c).eval()  # predicts the last observed frame
    seq = _particles(1, c.history + 2, c.K, c.F, c.Fb, seed=2)
    seq = seq._replace(mu=seq.mu[:, :1].repeat(1, c.history + 2, 1, 1).clone(),
                       transparency=torch.ones_like(seq.transparency))  # fmt: skip
    seq.mu[0, c.history :, 0, 0] += torch.tensor([0.1, 0.3])  # slot 0 moves by 0.1, then 0.3
    seq.mu[0, c.history + 1, 1, 1] += 0.2  # slot 1 moves at the last step only
    plain, m0 = rollout_loss(model, seq, c.history, 2, weights=RolloutLossWeights())
    _, m5 = rollout_loss(model, seq, c.history, 2, weights=RolloutLossWeights(motion=5.0))
    w = torch.tensor([1 + 5 * 0.3, 1 + 5 * 0.2] + [1.0] * (c.K - 2))  # (K,) emphasis
    err = torch.zeros(2, c.K)  # (steps, K) squared error averaged over x, y
    err[:, 0] = torch.tensor([0.1, 0.3]) ** 2 / 2
    err[1, 1] = 0.2**2 / 2
    assert m0['position'] == pytest.approx(float(err.mean()), rel=1e-5)
    assert m5['position'] == pytest.approx(float((err * w).sum(1).div(w.sum()).mean()), rel=1e-5)
    assert m5['position'] > m0['position'] > 0
    with pytest.raises(ConfigError, match='motion'):
        RolloutLossWeights.from_dict({'motion': -1})


@pytest.mark.parametrize('gate', [False, True, 'effector', 'velocity'])
def test_onnx_step_and_numpy_rollout_parity(gate: bool | str) -> None:
    ort = pytest.importorskip('onnxruntime')
    onnx = pytest.importorskip('onnx')
    if gate == 'effector':  # the effector softmax and the interaction radius, in one graph
        model = _model(action_dim=2, action_effector=True, interaction_radius=0.8)
    elif gate == 'velocity':  # the velocity prior, through a whole rollout
        model = _model(action_dim=2, velocity_prior=True)
    else:
        model = _model(action_dim=2, action_gate=gate)
    c = model.config
    step = DynamicsStep(model).eval()
    hist, acts = _history(c, b=2), torch.randn(2, c.history, 2)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(
            step,
            (*hist, acts),
            buf,
            dynamo=False,
            opset_version=17,
            input_names=list(step.INPUT_NAMES),
            output_names=list(step.OUTPUT_NAMES),
            dynamic_axes={name: {0: 'batch'} for name in step.INPUT_NAMES + step.OUTPUT_NAMES},
        )
    onnx.checker.check_model(onnx.load_from_string(buf.getvalue()))
    sess = ort.InferenceSession(buf.getvalue(), providers=['CPUExecutionProvider'])

    b, horizon = 3, 10  # another batch size than at export
    hist = _history(c, b=b, seed=3)
    actions = torch.randn(
        b, c.history + horizon - 1, 2, generator=torch.Generator().manual_seed(4)
    )
    with torch.no_grad():
        expected_step = model(hist, actions[:, : c.history])
        expected = rollout(model, hist, horizon, actions)
    window = {name: x.numpy() for name, x in zip(Particles._fields, hist, strict=True)}
    got_step = sess.run(None, {**window, 'actions': actions[:, : c.history].numpy()})
    for name, e, g in zip(Particles._fields, expected_step, got_step, strict=True):
        np.testing.assert_allclose(g, e.numpy(), atol=1e-5, err_msg=name)
    if gate in (True, 'effector'):
        return  # the gate is inside one step's graph; the rollout below does not depend on it
    outputs = []
    for n in range(horizon):
        nxt = sess.run(None, {**window, 'actions': actions[:, n : n + c.history].numpy()})
        outputs.append(nxt)
        window = {
            name: np.concatenate([window[name][:, 1:], p[:, None]], axis=1)
            for name, p in zip(Particles._fields, nxt, strict=True)
        }
    for i, name in enumerate(Particles._fields):
        got = np.stack([o[i] for o in outputs], axis=1)
        np.testing.assert_allclose(got, getattr(expected, name).numpy(), atol=1e-4, err_msg=name)


def test_interaction_radius_pyg_and_dense_agree_and_far_particles_do_not_interact() -> None:
    """interaction_radius: the dense and PyG paths agree; a particle far from all others moves
    the same whatever the others do."""
    model = _model(interaction_radius=0.3, history=1)
    ref = _model(interaction_radius=0.3, history=1, use_pyg=True)
    ref.load_state_dict(model.state_dict())
    hist = _particles(4, 1, 3, 2, 3)
    with torch.no_grad():
        hist.mu[:, :, 0] = torch.tensor([0.9, 0.9])  # particle 0 far from 1 and 2
        hist.mu[:, :, 1:] = 0.2 * hist.mu[:, :, 1:] - 0.5
        for a, b in zip(model(hist), ref(hist), strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
        moved = hist._replace(mu=hist.mu.clone(), features=hist.features.clone())
        moved.mu[:, :, 1:] += 0.05  # the near pair moves and changes its looks
        moved.features[:, :, 1:] += 1.0
        far_before, far_after = model(hist).mu[:, 0], model(moved).mu[:, 0]
        near_before, near_after = model(hist).mu[:, 1], model(moved).mu[:, 1]
    assert (far_after - far_before).abs().max() < 1e-5  # only the fade's residue, e^-45
    assert (near_after - near_before).abs().max() > 1e-2


def test_action_effector_drives_one_particle_and_never_the_background() -> None:
    """action_effector: each particle's embedding carries the command times its share of a
    softmax over the K particles (shares summing to 1); the background's carries none."""
    model = _model(action_dim=2, action_effector=True, history=1)
    hist = _particles(2, 1, 3, 2, 3)
    a0, a1 = torch.zeros(2, 1, 2), torch.ones(2, 1, 2)
    with torch.no_grad():
        x0, _ = model.embed(hist, a0)
        x1, _ = model.embed(hist, a1)
        full = model.action_encoder(a1) - model.action_encoder(a0)  # (B, 1, D)
        share = (x1 - x0) / full  # (B, N, D): each node's pick, the same over D
        assert share[:, -1].abs().max() == 0.0  # the background node never reads the command
        pick = share[:, :3, 0]  # (B, K)
        torch.testing.assert_close(share[:, :3], pick.unsqueeze(-1).expand_as(share[:, :3]))
        torch.testing.assert_close(pick.sum(-1), torch.ones(2))  # one effector in all
        assert (pick > 0).all()
    with pytest.raises(ConfigError, match='exclude each other'):
        _config(action_dim=2, action_effector=True, action_gate=True)
    with pytest.raises(ConfigError, match="needs aggregation 'sum'"):
        _config(interaction_radius=0.3, aggregation='mean')
