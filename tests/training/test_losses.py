"""DLP loss terms against brute force and torch.distributions."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.distributions import Normal, SigmoidTransform, TransformedDistribution, kl_divergence

from dlp_training.losses import (
    chamfer_kl,
    gaussian_kl,
    pairwise_gaussian_kl,
    reconstruction_sse,
    transparency_kl,
    weighted_objective,
)


def _sets(b: int, k: int, n: int, d: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    mu_q = torch.rand(b, k, d, generator=g) * 2 - 1
    logvar_q = torch.randn(b, k, d, generator=g) - 3
    mu_p = torch.rand(b, n, d, generator=g) * 2 - 1
    logvar_p = torch.randn(b, n, d, generator=g) - 3
    return mu_q, logvar_q, mu_p, logvar_p


def _kl_brute(mq: torch.Tensor, lq: torch.Tensor, mp: torch.Tensor, lp: torch.Tensor) -> float:
    q = Normal(mq.double(), torch.exp(0.5 * lq.double()))
    p = Normal(mp.double(), torch.exp(0.5 * lp.double()))
    return float(kl_divergence(q, p).sum())


@pytest.mark.parametrize(('k', 'n'), [(3, 5), (5, 3), (4, 4), (1, 7)])
def test_chamfer_kl_equals_brute_force_double_loop(k: int, n: int) -> None:
    mu_q, logvar_q, mu_p, logvar_p = _sets(2, k, n)
    got = chamfer_kl(mu_q, logvar_q, mu_p, logvar_p)  # (B,)
    assert got.shape == (2,)
    for b in range(2):
        kl = [
            [_kl_brute(mu_q[b, i], logvar_q[b, i], mu_p[b, j], logvar_p[b, j]) for j in range(n)]
            for i in range(k)
        ]
        expected = sum(min(kl[i][j] for i in range(k)) for j in range(n))
        expected += sum(min(kl[i][j] for j in range(n)) for i in range(k))
        assert got[b].item() == pytest.approx(expected, rel=1e-5)


def test_chamfer_kl_with_shared_prior_variance_matches_full_tensor() -> None:
    mu_q, logvar_q, mu_p, _ = _sets(3, 4, 6)
    lv = 2 * math.log(0.1)
    full = chamfer_kl(mu_q, logvar_q, mu_p, torch.full_like(mu_p, lv))
    torch.testing.assert_close(chamfer_kl(mu_q, logvar_q, mu_p, lv), full)


def test_chamfer_kl_is_invariant_to_permuting_either_set() -> None:
    mu_q, logvar_q, mu_p, logvar_p = _sets(2, 5, 7, seed=1)
    ref = chamfer_kl(mu_q, logvar_q, mu_p, logvar_p)
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        pq, pp = torch.randperm(5, generator=g), torch.randperm(7, generator=g)
        torch.testing.assert_close(chamfer_kl(mu_q[:, pq], logvar_q[:, pq], mu_p, logvar_p), ref)
        torch.testing.assert_close(chamfer_kl(mu_q, logvar_q, mu_p[:, pp], logvar_p[:, pp]), ref)


def test_chamfer_kl_is_zero_for_identical_sets_and_has_gradients() -> None:
    mu_q, logvar_q, _, _ = _sets(1, 4, 4)
    mu_q.requires_grad_(True)
    value = chamfer_kl(mu_q, logvar_q, mu_q.detach(), logvar_q)
    assert value.item() == pytest.approx(0.0, abs=1e-6)
    chamfer_kl(mu_q, logvar_q, mu_q.detach() + 0.1, logvar_q).sum().backward()
    assert mu_q.grad is not None and torch.isfinite(mu_q.grad).all() and mu_q.grad.abs().sum() > 0


def test_pairwise_gaussian_kl_matches_torch_distributions() -> None:
    mu_q, logvar_q, mu_p, logvar_p = _sets(2, 3, 4)
    got = pairwise_gaussian_kl(mu_q, logvar_q, mu_p, logvar_p)  # (B, K, L)
    assert got.shape == (2, 3, 4)
    for b, i, j in itertools.product(range(2), range(3), range(4)):
        expected = _kl_brute(mu_q[b, i], logvar_q[b, i], mu_p[b, j], logvar_p[b, j])
        assert got[b, i, j].item() == pytest.approx(expected, rel=1e-5)


def test_gaussian_kl_matches_torch_distributions() -> None:
    mu_q, logvar_q, mu_p, logvar_p = _sets(4, 5, 5, d=3)
    expected = kl_divergence(
        Normal(mu_q, torch.exp(0.5 * logvar_q)), Normal(mu_p, torch.exp(0.5 * logvar_p))
    )
    torch.testing.assert_close(gaussian_kl(mu_q, logvar_q, mu_p, logvar_p), expected)
    # scalar prior (the model's N(0, 1) feature prior)
    std_normal = Normal(torch.zeros(()), torch.ones(()))
    expected = kl_divergence(Normal(mu_q, torch.exp(0.5 * logvar_q)), std_normal)
    torch.testing.assert_close(gaussian_kl(mu_q, logvar_q, 0.0, 0.0), expected)


def test_transparency_kl_matches_logit_normal_kl_from_torch_distributions() -> None:
    g = torch.Generator().manual_seed(3)
    mu, logvar = torch.randn(2, 6, 1, generator=g) * 3, torch.randn(2, 6, 1, generator=g)
    prior_std = 2.0
    q = TransformedDistribution(Normal(mu, torch.exp(0.5 * logvar)), [SigmoidTransform()])
    p = TransformedDistribution(
        Normal(torch.zeros_like(mu), torch.full_like(mu, prior_std)), [SigmoidTransform()]
    )
    expected = kl_divergence(q, p)
    got = transparency_kl(mu, logvar, 0.0, 2 * math.log(prior_std))
    torch.testing.assert_close(got, expected)
    assert (got >= 0).all()


def test_reconstruction_sse() -> None:
    x = torch.zeros(2, 3, 4, 4)
    y = torch.full_like(x, 0.1)
    torch.testing.assert_close(reconstruction_sse(y, x), torch.full((2,), 48 * 0.01))


def test_weighted_objective() -> None:
    rec = torch.tensor(10.0)
    kl = {'a': torch.tensor(2.0), 'b': torch.tensor(4.0)}
    loss, metrics = weighted_objective(rec, kl, {'a': 1.0, 'b': 0.5}, beta=0.1)
    assert loss.item() == pytest.approx(10.0 + 0.1 * (2.0 + 2.0))
    assert metrics == pytest.approx(
        {'loss': 10.4, 'rec': 10.0, 'kl': 4.0, 'kl_a': 2.0, 'kl_b': 4.0}
    )
