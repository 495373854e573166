"""Annealed-capacity VAE (Burgess et al. 2017; report ``003_527384601d5c0438.txt``, section 2.3).

Objective (report eqs. 5 and 6)::

    L = E_q[-log p(x|z)]                          reconstruction
      + gamma * |KL_batch - C(step)|              capacity_mode = abs  (eq. 5)
      + gamma * ReLU(KL_batch - C(step))          capacity_mode = relu (eq. 6)

with ``KL_batch`` the batch-mean KL to N(0, I) and ``C`` linear in the step from 0 to
``c_max`` over ``c_steps`` steps (STYLE.md trap: the penalty is on the batch mean, and C
follows the step count, not the epoch). The report anneals C to 20 nats; it does not
state gamma, so the default is Burgess et al.'s gamma = 1000, and c_steps = 100,000 (their
schedule for dSprites; the report's "20 epochs at batch 64" is about 230,000 steps).
"""

from __future__ import annotations

from typing import Literal

import torch

from ..losses import capacity_penalty, capacity_target, kl_diag_normal
from ..nets import Posterior
from .base import AT_LEAST_1, NON_NEGATIVE, GenerativeModel, Hyper, register, register_variant

__all__ = ["AnnealedVAE"]


@register(
    "annealed_vae",
    "annealed capacity: gamma * |KL - C|, C linear to c_max nats",
    gamma=Hyper(1000.0, "weight of the capacity penalty", check=NON_NEGATIVE),
    c_max=Hyper(20.0, "final capacity C in nats", check=NON_NEGATIVE),
    c_steps=Hyper(100_000, "steps over which C grows linearly from 0 to c_max", check=AT_LEAST_1),
    capacity_mode=Hyper(
        "abs", "abs: gamma * |KL - C| (eq. 5); relu: gamma * ReLU(KL - C) (eq. 6)", Literal["abs", "relu"]
    ),
)
class AnnealedVAE(GenerativeModel):
    """Annealed-capacity VAE: the batch KL is held near a target C that grows with the step."""

    def regulariser(self, post: Posterior, z: torch.Tensor, step: int, generator) -> dict[str, torch.Tensor]:
        kl = kl_diag_normal(post.mu, post.logvar).mean()  # scalar
        c = capacity_target(step, float(self.hyper["c_max"]), int(self.hyper["c_steps"]))
        penalty = capacity_penalty(kl, c, float(self.hyper["gamma"]), self.hyper["capacity_mode"])
        return {"capacity": penalty}


register_variant(
    "annealed_vae_relu", "annealed_vae", "annealed capacity, ReLU variant: gamma * ReLU(KL - C)", capacity_mode="relu"
)
