"""Gaussian posteriors: analytic KL to the standard normal prior, sampling, log densities.

Reduction (house rule): per-sample terms return ``(B,)`` summed over latent dimensions;
:func:`kl_diag_per_dim` keeps ``(B, D)`` for per-dimension logging and capacity plots;
:func:`gaussian_log_density` is elementwise. Sampling takes an explicit ``torch.Generator``.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "kl_diag_per_dim",
    "kl_diag_normal",
    "kl_full_normal",
    "reparameterize",
    "reparameterize_full",
    "gaussian_log_density",
]

_LOG_2PI = math.log(2.0 * math.pi)


def kl_diag_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Per-dimension ``KL(N(mu_j, exp(logvar_j)) || N(0, 1))``.

    Formula, for each latent dimension j::

        var_term  = exp(logvar_j)
        mean_term = mu_j^2
        log_term  = -logvar_j
        const     = -1
        kl_j      = 0.5 * (var_term + mean_term + log_term + const)

    ``000_fc03c6fb001bc541.txt`` Eq. 2 (there printed without the ``-1`` per dimension, a
    constant that does not change the gradient; here it is kept so that ``kl = 0`` exactly
    when ``q = p``).

    Args:
        mu: ``(B, D)`` posterior means.
        logvar: ``(B, D)`` posterior log-variances.

    Returns:
        ``(B, D)``: no reduction.
    """
    if mu.shape != logvar.shape:
        raise ValueError(f"mu has shape {tuple(mu.shape)} but logvar has shape {tuple(logvar.shape)}")
    return 0.5 * (torch.exp(logvar) + mu**2 - logvar - 1.0)  # (B, D)


def kl_diag_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, diag exp(logvar)) || N(0, I))`` summed over latent dimensions.

    Formula::

        kl = sum_j 0.5 * (exp(logvar_j) + mu_j^2 - logvar_j - 1)

    ``000_fc03c6fb001bc541.txt`` Eq. 2; ``003_527384601d5c0438.txt`` Eq. 3 (the KL term).

    Args:
        mu: ``(B, D)`` posterior means.
        logvar: ``(B, D)`` posterior log-variances.

    Returns:
        ``(B,)``: summed over the D latent dimensions.
    """
    return kl_diag_per_dim(mu, logvar).sum(-1)  # (B,)


def _check_tril(mu: torch.Tensor, scale_tril: torch.Tensor) -> None:
    if scale_tril.dim() != mu.dim() + 1 or scale_tril.shape[:-1] != mu.shape or scale_tril.shape[-1] != mu.shape[-1]:
        want = tuple(mu.shape) + (mu.shape[-1],)
        raise ValueError(f"scale_tril must have shape {want}, got {tuple(scale_tril.shape)}")


def kl_full_normal(mu: torch.Tensor, scale_tril: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, L L^T) || N(0, I))`` for a full-covariance posterior given by its Cholesky factor.

    Formula, with ``S = L L^T`` and p the latent size::

        trace_term = tr(S)          = ||L||_F^2
        mean_term  = mu^T mu
        logdet     = -log det S     = -2 * sum_i log |L_ii|
        const      = -p
        kl         = 0.5 * (trace_term + mean_term + logdet + const)

    The full-covariance posterior of ``004_1dabe4d22771e1b6.txt`` (Sec. 3.1, Eq. 10) against
    the fixed standard normal prior (the CHyVAE prior term with ``Sigma = I``). Only the lower
    triangle of ``scale_tril`` is read, as in ``torch.distributions.MultivariateNormal``.

    Args:
        mu: ``(B, p)`` posterior means.
        scale_tril: ``(B, p, p)`` lower-triangular factors with non-zero diagonal.

    Returns:
        ``(B,)``: summed over the latent dimensions.
    """
    _check_tril(mu, scale_tril)
    L = torch.tril(scale_tril)  # (B, p, p)
    trace_term = (L**2).sum((-2, -1))  # (B,)
    mean_term = (mu**2).sum(-1)  # (B,)
    logdet_s = 2.0 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1).abs()).sum(-1)  # (B,)
    return 0.5 * (trace_term + mean_term - logdet_s - mu.shape[-1])  # (B,)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Draw ``z ~ N(mu, diag exp(logvar))`` differentiably.

    Formula::

        eps ~ N(0, I)                     (from ``generator``)
        z   = mu + exp(0.5 * logvar) * eps

    ``000_fc03c6fb001bc541.txt`` Sec. III (after Eq. 2), the reparameterisation trick.

    Args:
        mu: ``(B, D)`` means.
        logvar: ``(B, D)`` log-variances.
        generator: the ``torch.Generator`` to draw ``eps`` from (same device as ``mu``).

    Returns:
        ``(B, D)`` samples.
    """
    if mu.shape != logvar.shape:
        raise ValueError(f"mu has shape {tuple(mu.shape)} but logvar has shape {tuple(logvar.shape)}")
    eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)  # (B, D)
    return mu + torch.exp(0.5 * logvar) * eps  # (B, D)


def reparameterize_full(mu: torch.Tensor, scale_tril: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Draw ``z ~ N(mu, L L^T)`` differentiably.

    Formula::

        eps ~ N(0, I)                     (from ``generator``)
        z   = mu + L eps

    ``004_1dabe4d22771e1b6.txt`` Eq. 10.

    Args:
        mu: ``(B, p)`` means.
        scale_tril: ``(B, p, p)`` lower-triangular factors (upper triangle ignored).
        generator: the ``torch.Generator`` to draw ``eps`` from.

    Returns:
        ``(B, p)`` samples.
    """
    _check_tril(mu, scale_tril)
    eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)  # (B, p)
    return mu + (torch.tril(scale_tril) @ eps.unsqueeze(-1)).squeeze(-1)  # (B, p)


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Elementwise ``log N(z | mu, exp(logvar))`` of a univariate Gaussian.

    Formula::

        log_norm = -0.5 * (log(2 pi) + logvar)
        quad     = -0.5 * (z - mu)^2 * exp(-logvar)
        log_q    = log_norm + quad

    The building block of the minibatch estimators of ``002_b6b404b9b5e7b646.txt``
    (beta-TCVAE, "Training with Minibatch-Weighted Sampling").

    Args:
        z, mu, logvar: broadcastable tensors (e.g. ``(B, 1, D)`` against ``(1, B, D)``).

    Returns:
        The broadcast shape, no reduction.
    """
    return -0.5 * (_LOG_2PI + logvar + (z - mu) ** 2 * torch.exp(-logvar))  # broadcast shape
