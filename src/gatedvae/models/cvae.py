"""Conditional VAE (Sohn et al. 2015; report ``003_527384601d5c0438.txt``, section 2.4).

The named factors' one-hot labels are concatenated to the decoder's input (and, with
``model.condition_encoder=true``, to the encoder's features), so the latent code is free to
carry everything else::

    L = E_q(z|x,y)[-log p(x|z,y)] + beta * KL(q(z|x,y) || N(0, I))
"""

from __future__ import annotations

from .base import NON_NEGATIVE, GenerativeModel, Hyper, register

__all__ = ["ConditionalVAE"]


@register(
    "cvae",
    "conditional VAE: one-hot labels of model.condition fed to the decoder",
    beta=Hyper(1.0, "weight of the KL to N(0, I)", check=NON_NEGATIVE),
)
class ConditionalVAE(GenerativeModel):
    """Conditional VAE: labels of ``model.condition`` factors condition the decoder."""

    conditional = True
