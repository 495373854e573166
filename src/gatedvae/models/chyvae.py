"""CHyVAE (Ansari and Soh 2019, ``004_1dabe4d22771e1b6.txt``): an inverse-Wishart hyperprior
on the prior's covariance and a full-covariance posterior.

    Sigma ~ W^-1(Psi, nu),  Psi = (nu - p - 1) I   (so E[Sigma] = I)
    z | Sigma ~ N(0, Sigma);  q(z|x) = N(mu, L L^T) (full covariance)

Objective (Eq. 13 negated, per sample, batch mean; see ``losses/wishart.py``)::

    L = E_q[-log p(x|z)]                                                    reconstruction
      + E_{W^-1(Psi + z2 z2^T, nu + 1)}[KL(N(mu, L L^T) || N(0, Sigma))]    expected KL
      + KL(W^-1(Psi + z2 z2^T, nu + 1) || W^-1(Psi, nu))                     hyperprior KL

with ``z2`` a second sample from q(z|x). ``nu`` (> p + 1) is the only knob: larger values
pull the prior covariance, and so the aggregate posterior, towards independence. The
paper's best dSprites model used nu = 13000 (section 5.2), the default here.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from ..losses import chyvae_regulariser
from ..nets import Posterior
from .base import NON_NEGATIVE, GenerativeModel, Hyper, register

__all__ = ["CHyVAE"]


@register(
    "chyvae",
    "CHyVAE: inverse-Wishart hyperprior (nu) on the prior covariance, full-covariance posterior",
    nu=Hyper(13000.0, "inverse-Wishart degrees of freedom (must exceed latent_dim + 1)", check=NON_NEGATIVE),
)
class CHyVAE(GenerativeModel):
    """CHyVAE: a full-covariance posterior regularised through an inverse-Wishart hyperprior."""

    covariance = "full"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        p, nu = self.latent_dim, float(self.hyper["nu"])
        if nu <= p + 1:
            raise ConfigError(
                f"model.nu={nu} must exceed latent_dim + 1 = {p + 1} (Psi = (nu - p - 1) I); raise model.nu"
            )

    def regulariser(self, post: Posterior, z: torch.Tensor, step: int, generator) -> dict[str, torch.Tensor]:
        z2 = post.rsample(generator)  # (B, M): the second posterior sample of Eq. 13
        reg = chyvae_regulariser(post.mu, post.scale_tril, z2, float(self.hyper["nu"]))  # (B,)
        return {"wishart": reg.mean().to(z.dtype)}
