r"""Loss terms of the DLP model: reconstruction, Gaussian KL, Chamfer-KL, transparency KL.

Every KL here is between diagonal Gaussians given by ``(mu, logvar)``, ``logvar = log sigma^2``:

.. math::
    \mathrm{KL}\big(\mathcal N(\mu_q, \sigma_q^2) \,\|\, \mathcal N(\mu_p, \sigma_p^2)\big)
    = \tfrac12 \Big[\log\frac{\sigma_p^2}{\sigma_q^2} + \frac{\sigma_q^2 + (\mu_q - \mu_p)^2}
      {\sigma_p^2} - 1\Big]

per dimension. The transparency of a particle is a *logit-normal* variable,
:math:`t = \mathrm{sigmoid}(z)` with :math:`z \sim \mathcal N(\mu, \sigma^2)`; KL divergence is
invariant under the bijection sigmoid, so its KL is the Gaussian KL of the logits.

Conventions: functions return per-sample values (shape (B,)) or element-wise values; the model
averages over the batch. Reconstruction is the sum of squared errors over all pixels and channels
(the DLP "MSE" loss, which the reference sums over pixels and averages over the batch).
"""

from __future__ import annotations

import torch
from torch import Tensor


def gaussian_kl(
    mu_q: Tensor, logvar_q: Tensor, mu_p: Tensor | float, logvar_p: Tensor | float
) -> Tensor:
    """Element-wise KL(N(mu_q, exp(logvar_q)) || N(mu_p, exp(logvar_p))); arguments broadcast.

    Returns:
        Tensor of the broadcast shape (sum over the dimensions you need).
    """
    logvar_p = torch.as_tensor(logvar_p, dtype=mu_q.dtype, device=mu_q.device)
    return 0.5 * (
        logvar_p
        - logvar_q
        + (torch.exp(logvar_q) + (mu_q - mu_p) ** 2) * torch.exp(-logvar_p)
        - 1.0
    )


def transparency_kl(
    logit_mu: Tensor, logit_logvar: Tensor, prior_mu: float, prior_logvar: float
) -> Tensor:
    """KL between logit-normal transparencies (sigmoid of Gaussians); element-wise.

    Equal to the Gaussian KL of the logits because sigmoid is a bijection.
    """
    return gaussian_kl(logit_mu, logit_logvar, prior_mu, prior_logvar)


def pairwise_gaussian_kl(
    mu_q: Tensor, logvar_q: Tensor, mu_p: Tensor, logvar_p: Tensor | float
) -> Tensor:
    """KL(q_i || p_j) for every pair of two sets of diagonal Gaussians, summed over dimensions.

    Args:
        mu_q, logvar_q: (B, K, D) the posterior set.
        mu_p: (B, L, D) the prior set; logvar_p: (B, L, D) or a float (shared variance).

    Returns:
        (B, K, L) matrix of KL values.
    """
    if not isinstance(logvar_p, Tensor):
        logvar_p = torch.full_like(mu_p, float(logvar_p))
    return gaussian_kl(
        mu_q.unsqueeze(2), logvar_q.unsqueeze(2), mu_p.unsqueeze(1), logvar_p.unsqueeze(1)
    ).sum(-1)


def chamfer_kl(mu_q: Tensor, logvar_q: Tensor, mu_p: Tensor, logvar_p: Tensor | float) -> Tensor:
    r"""Chamfer-KL between K posterior and L prior Gaussians (DLP):

    .. math::
        D = \sum_{j=1}^{L} \min_i \mathrm{KL}(q_i \| p_j)
          + \sum_{i=1}^{K} \min_j \mathrm{KL}(q_i \| p_j)

    Every proposal is explained by its closest particle and every particle by its closest
    proposal; invariant to permutations of either set, K and L may differ.

    Args:
        mu_q, logvar_q: (B, K, D); mu_p: (B, L, D); logvar_p: (B, L, D) or float.

    Returns:
        (B,) per-sample Chamfer-KL.
    """
    kl = pairwise_gaussian_kl(mu_q, logvar_q, mu_p, logvar_p)  # (B, K, L)
    return kl.min(dim=1).values.sum(-1) + kl.min(dim=2).values.sum(-1)


def reconstruction_sse(reconstruction: Tensor, target: Tensor) -> Tensor:
    """Sum of squared errors over all non-batch dimensions. (B, ...) -> (B,)."""
    return ((reconstruction - target) ** 2).flatten(1).sum(-1)


def weighted_objective(
    reconstruction: Tensor, kl_terms: dict[str, Tensor], weights: dict[str, float], beta: float
) -> tuple[Tensor, dict[str, float]]:
    r"""The DLP objective :math:`L = L_{rec} + \beta \sum_n w_n \mathrm{KL}_n` and its metrics.

    Args:
        reconstruction: scalar reconstruction loss (batch mean).
        kl_terms: scalar KL terms (batch means) by name; each needs a weight in ``weights``.
        weights: per-term weights :math:`w_n`.
        beta: :math:`\beta`, the KL weight.

    Returns:
        ``(loss, metrics)``: the scalar loss and floats ``loss``, ``rec``, ``kl`` (weighted sum)
        and ``kl_<name>`` (unweighted) for logging.
    """
    kl = sum((weights[name] * term for name, term in kl_terms.items()), torch.zeros(()))
    loss = reconstruction + beta * kl
    metrics = {'loss': loss.item(), 'rec': reconstruction.item(), 'kl': kl.item()}
    metrics.update({f'kl_{name}': term.item() for name, term in kl_terms.items()})
    return loss, metrics
