"""beta-TCVAE (Chen et al. 2018; lecture ``002_b6b404b9b5e7b646.txt``).

The KL term of the ELBO, averaged over the data, splits into three (lecture, "ELBO TC-decomposition")::

    KL = I_q(z; n)                          index-code mutual information   (weight tc_alpha)
       + KL(q(z) || prod_j q(z_j))          total correlation               (weight beta)
       + sum_j KL(q(z_j) || p(z_j))         dimension-wise KL               (weight gamma)

each estimated per sample from the minibatch with minibatch-weighted sampling (MWS) or
minibatch-stratified sampling (MSS). Chen et al. use alpha = gamma = 1, beta = 6 on dSprites.
"""

from __future__ import annotations

from typing import Literal

import torch

from ..losses import tc_decomposition
from ..nets import Posterior
from .base import NON_NEGATIVE, GenerativeModel, Hyper, register, register_variant

__all__ = ["BetaTCVAE"]


@register(
    "beta_tcvae",
    "beta-TCVAE: total correlation weighted by beta (MWS estimator)",
    beta=Hyper(6.0, "weight of the total correlation", check=NON_NEGATIVE),
    tc_alpha=Hyper(1.0, "weight of the index-code mutual information", check=NON_NEGATIVE),
    gamma=Hyper(1.0, "weight of the dimension-wise KL", check=NON_NEGATIVE),
    tc_estimator=Hyper("mws", "minibatch estimator: mws (weighted) or mss (stratified)", Literal["mws", "mss"]),
)
class BetaTCVAE(GenerativeModel):
    """beta-TCVAE: the total correlation of q(z) is penalised, estimated on the minibatch."""

    batch_coupling = "log q(z) with a minibatch estimator"

    def regulariser(self, post: Posterior, z: torch.Tensor, step: int, generator) -> dict[str, torch.Tensor]:
        d = tc_decomposition(z, post.mu, post.logvar, self.dataset_size, estimator=self.hyper["tc_estimator"])
        return {
            "mi": float(self.hyper["tc_alpha"]) * d["mi"].mean(),
            "tc": float(self.hyper["beta"]) * d["tc"].mean(),
            "dwkl": float(self.hyper["gamma"]) * d["dwkl"].mean(),
        }


register_variant(
    "beta_tcvae_mss", "beta_tcvae", "beta-TCVAE with the minibatch-stratified (MSS) estimator", tc_estimator="mss"
)
