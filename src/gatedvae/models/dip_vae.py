"""DIP-VAE-I and DIP-VAE-II (Kumar et al. 2018).

Objective::

    L = E_q[-log p(x|z)] + KL(q(z|x) || N(0, I))
      + lambda_od * sum_{i != j} C_ij^2 + lambda_d * sum_i (C_ii - 1)^2

    DIP-VAE-I:  C = Cov_batch(mu)
    DIP-VAE-II: C = Cov_batch(mu) + mean_batch(diag(sigma^2))    (a matrix; STYLE.md trap)

The Gated-VAE paper uses DIP-VAE-II with lambda_od = lambda_d = 250
(``000_fc03c6fb001bc541.txt``, IV-A2). DIP-VAE-I's defaults follow Kumar et al.'s
dSprites setting as used by disentanglement_lib: lambda_od = 10, lambda_d = 10 * lambda_od.
"""

from __future__ import annotations

import torch

from ..losses import dip_penalty, kl_diag_normal
from ..nets import Posterior
from .base import NON_NEGATIVE, GenerativeModel, Hyper, register

__all__ = ["DIPVAEI", "DIPVAEII"]


class _DIPVAE(GenerativeModel):
    batch_coupling = "the covariance of the posterior means"
    kind = "ii"

    def regulariser(self, post: Posterior, z: torch.Tensor, step: int, generator) -> dict[str, torch.Tensor]:
        kl = kl_diag_normal(post.mu, post.logvar).mean()  # scalar
        dip = dip_penalty(
            post.mu, post.logvar, float(self.hyper["lambda_od"]), float(self.hyper["lambda_d"]), kind=self.kind
        )
        return {"kl": kl, "dip": dip}


@register(
    "dip_vae_i",
    "DIP-VAE-I: penalise Cov(mu) away from I",
    lambda_od=Hyper(10.0, "weight of the off-diagonal covariance penalty", check=NON_NEGATIVE),
    lambda_d=Hyper(100.0, "weight of the diagonal (variance - 1) penalty", check=NON_NEGATIVE),
)
class DIPVAEI(_DIPVAE):
    """DIP-VAE-I: the covariance of the encoder means is pushed to the identity."""

    kind = "i"


@register(
    "dip_vae_ii",
    "DIP-VAE-II: penalise Cov(mu) + E[diag sigma^2] away from I",
    lambda_od=Hyper(250.0, "weight of the off-diagonal covariance penalty", check=NON_NEGATIVE),
    lambda_d=Hyper(250.0, "weight of the diagonal (variance - 1) penalty", check=NON_NEGATIVE),
)
class DIPVAEII(_DIPVAE):
    """DIP-VAE-II: the covariance of q(z) (aggregate posterior) is pushed to the identity."""

    kind = "ii"
