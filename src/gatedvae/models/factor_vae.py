"""FactorVAE (Kim and Mnih 2018; lecture ``002_b6b404b9b5e7b646.txt``).

VAE objective plus the total correlation estimated by a discriminator (density-ratio trick)::

    L_vae  = E_q[-log p(x|z)] + KL(q(z|x) || N(0, I)) + gamma * mean_i [logit_0(z_i) - logit_1(z_i)]
    L_disc = 0.5 * [CE(D(z), q) + CE(D(permute_dims(z)), prod_j q(z_j))]

The discriminator (MLP 6 x 1000, LeakyReLU 0.2) has its own Adam (lr 1e-4, betas 0.5, 0.9)
and sees ``z`` **detached** (STYLE.md trap: its loss must not reach the encoder). Kim and
Mnih draw the permuted sample from a second batch; here it is the same batch's codes,
independently permuted per dimension, which has the same distribution prod_j q(z_j).
The lecture quotes gamma = 35 for the FactorVAE-metric score of 0.89 on dSprites.
"""

from __future__ import annotations

import torch
from torch import nn

from ..losses import Discriminator, discriminator_loss, factor_vae_tc, kl_diag_normal, permute_dims
from ..nets import Posterior
from .base import NON_NEGATIVE, GenerativeModel, Hyper, LossOutput, register

__all__ = ["FactorVAE"]

DISCRIMINATOR_ADAM = {"lr": 1e-4, "betas": (0.5, 0.9)}


@register(
    "factor_vae",
    "FactorVAE: total correlation by a discriminator, weighted by gamma = 35",
    gamma=Hyper(35.0, "weight of the discriminator's total-correlation estimate", check=NON_NEGATIVE),
)
class FactorVAE(GenerativeModel):
    """FactorVAE: a discriminator tells q(z) from its dimension-wise shuffle."""

    batch_coupling = "the total correlation by a dimension-wise permutation"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        gen = torch.Generator().manual_seed(self.init_seed + 1)
        self.discriminator = Discriminator(self.latent_dim, generator=gen)

    def auxiliary_modules(self) -> dict[str, nn.Module]:
        return {"discriminator": self.discriminator}

    def auxiliary_optimizer_settings(self) -> dict[str, dict]:
        return {"discriminator": DISCRIMINATOR_ADAM}

    #: The auxiliary networks the regulariser evaluates on ``z`` (an ensemble's stacked step
    #: evaluates them for all members at once and hands the outputs to :meth:`regulariser_given`).
    regulariser_networks = ("discriminator",)

    def regulariser(self, post: Posterior, z: torch.Tensor, step: int, generator) -> dict[str, torch.Tensor]:
        # The VAE's TC term needs d/dz only: the discriminator's own weights take no gradient
        # here (they are trained in auxiliary_step), which saves their weight-gradient matmuls.
        self.discriminator.requires_grad_(False)
        try:
            logits = self.discriminator(z)  # (B, 2)
        finally:
            self.discriminator.requires_grad_(True)
        return self.regulariser_given(post, z, step, generator, {"discriminator": logits})

    def regulariser_given(
        self, post: Posterior, z: torch.Tensor, step: int, generator, outputs: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        kl = kl_diag_normal(post.mu, post.logvar).mean()  # scalar
        tc = factor_vae_tc(outputs["discriminator"])  # scalar
        return {"kl": kl, "tc": float(self.hyper["gamma"]) * tc}

    def auxiliary_inputs(self, z: torch.Tensor, generator) -> dict[str, list[torch.Tensor]]:
        """What the discriminator's step evaluates: the codes and their dimension-wise shuffle."""
        return {"discriminator": [z, permute_dims(z, generator)]}

    def auxiliary_loss(self, outputs: dict[str, list[torch.Tensor]]) -> dict[str, torch.Tensor]:
        """The discriminator's loss from its outputs on :meth:`auxiliary_inputs`."""
        real, shuffled = outputs["discriminator"]
        return {"discriminator": discriminator_loss(real, shuffled)}

    def auxiliary_step(self, out: LossOutput, optimizers, generator) -> dict[str, torch.Tensor]:
        z = out.z.detach()  # (B, M): the discriminator's loss must not reach the encoder
        opt = optimizers["discriminator"]
        opt.zero_grad(set_to_none=True)
        inputs = self.auxiliary_inputs(z, generator)
        loss = self.auxiliary_loss({"discriminator": [self.discriminator(v) for v in inputs["discriminator"]]})
        loss = loss["discriminator"]
        loss.backward()
        opt.step()
        return {"disc": loss.detach()}
