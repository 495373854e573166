"""Gaussian posterior heads: diagonal (mean, log-variance) and full covariance (mean, Cholesky)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Posterior", "DiagonalGaussianHead", "FullCovarianceGaussianHead"]


@dataclass
class Posterior:
    """q(z|x) = N(mu, Sigma) with ``Sigma = diag(exp(logvar))`` or ``scale_tril @ scale_tril^T``.

    ``mu`` and ``logvar`` are ``(B, M)``; ``scale_tril`` is ``(B, M, M)`` or None. For a full
    covariance ``logvar`` holds the log of Sigma's diagonal, so per-dimension diagnostics work
    for both kinds.
    """

    mu: torch.Tensor
    logvar: torch.Tensor
    scale_tril: torch.Tensor | None = None

    @property
    def full(self) -> bool:
        return self.scale_tril is not None

    def rsample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterised sample ``(B, M)``: mu + sigma * eps (or mu + L eps)."""
        eps = torch.randn(self.mu.shape, generator=generator, device=self.mu.device, dtype=self.mu.dtype)  # (B, M)
        if self.scale_tril is None:
            return self.mu + torch.exp(0.5 * self.logvar) * eps
        return self.mu + (self.scale_tril @ eps.unsqueeze(-1)).squeeze(-1)  # (B, M)


class DiagonalGaussianHead(nn.Module):
    """features ``(B, F)`` -> Posterior with ``mu, logvar (B, M)``."""

    def __init__(self, features: int, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.linear = nn.Linear(features, 2 * latent_dim)

    def forward(self, h: torch.Tensor) -> Posterior:
        mu, logvar = self.linear(h).chunk(2, dim=1)  # (B, M), (B, M)
        return Posterior(mu, logvar)


class FullCovarianceGaussianHead(nn.Module):
    """features ``(B, F)`` -> Posterior with ``mu (B, M)`` and a lower-triangular Cholesky
    factor ``L (B, M, M)`` whose diagonal is ``softplus(.) + 1e-4`` (positive, so ``L L^T`` is
    positive definite)."""

    def __init__(self, features: int, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        m = latent_dim
        self.linear = nn.Linear(features, m + m * (m + 1) // 2)
        rows, cols = torch.tril_indices(m, m)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    def forward(self, h: torch.Tensor) -> Posterior:
        m = self.latent_dim
        out = self.linear(h)  # (B, M + M(M+1)/2)
        mu, tril = out[:, :m], out[:, m:]  # (B, M), (B, M(M+1)/2)
        L = torch.zeros(h.shape[0], m, m, device=h.device, dtype=h.dtype)  # (B, M, M)
        L[:, self.rows, self.cols] = tril
        diag = F.softplus(torch.diagonal(L, dim1=-2, dim2=-1)) + 1e-4  # (B, M)
        L = torch.tril(L, diagonal=-1) + torch.diag_embed(diag)  # (B, M, M)
        return Posterior(mu, 2.0 * torch.log(torch.linalg.vector_norm(L, dim=-1)), L)
