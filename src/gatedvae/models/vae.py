"""VAE (Kingma and Welling 2014) and beta-VAE (Higgins et al. 2017).

Objective (``000_fc03c6fb001bc541.txt``, eq. 1; ``003_527384601d5c0438.txt``, section 2.2)::

    L = E_q[-log p(x|z)]                 reconstruction
      + beta * KL(q(z|x) || N(0, I))     regulariser (beta = 1: the VAE; beta = 4: beta-VAE)
"""

from __future__ import annotations

from .base import NON_NEGATIVE, GenerativeModel, Hyper, register, register_variant

__all__ = ["VAE"]


@register(
    "vae",
    "VAE: reconstruction + KL to N(0, I) (beta = 1)",
    beta=Hyper(1.0, "weight of the KL to N(0, I)", check=NON_NEGATIVE),
)
class VAE(GenerativeModel):
    """VAE / beta-VAE: KL to the standard normal prior weighted by beta."""


register_variant("beta_vae", "vae", "beta-VAE (Higgins et al. 2017): KL weighted by beta = 4", beta=4.0)
