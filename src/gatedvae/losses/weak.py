"""Weak supervision from pairs: which latent dims two posteriors share, and their aggregate.

The pure tensor functions of Ada-GVAE and Ada-ML-VAE (Locatello et al. 2020, "Weakly-Supervised
Disentanglement Without Compromises") and of the group models they adapt, GVAE (Hosoya
2019) and ML-VAE (Bouchacourt et al. 2018). Both images of a pair are encoded; per latent dim a
divergence between the two posteriors says how much it changed; the dims judged unchanged are
*shared*, and there both posteriors are replaced by one aggregate posterior, so the decoder must
reconstruct each image from a code whose shared part is common to the pair.

In the form of the reference implementations (disentanglement_lib's ``methods/weak/weak_vae.py``,
disent's ``AdaVae``): every function is elementwise over ``(B, D)`` posteriors given by mean and
log-variance; none reduces over the batch (the objective takes the batch mean once).
"""

from __future__ import annotations

import math
from typing import Literal

import torch

__all__ = [
    "DIVERGENCES",
    "AGGREGATES",
    "kl_between_diag",
    "pair_divergence",
    "adaptive_shared_mask",
    "top_k_shared_mask",
    "aggregate_gvae",
    "aggregate_ml_vae",
    "share_posteriors",
]

#: Per-dim divergences between the two posteriors of a pair (``pair_divergence``'s ``mode``).
DIVERGENCES = ("kl", "symmetric_kl", "mean_distance")
#: Aggregates of the shared dims (``share_posteriors``' ``aggregate``).
AGGREGATES = ("gvae", "ml_vae")

_LOG_2 = math.log(2.0)


def kl_between_diag(mu0: torch.Tensor, logvar0: torch.Tensor, mu1: torch.Tensor, logvar1: torch.Tensor) -> torch.Tensor:
    """Per-dim ``KL(N(mu0, exp(logvar0)) || N(mu1, exp(logvar1)))``.

    Formula, for each dim j::

        var_ratio = exp(logvar0_j - logvar1_j)
        mean_term = (mu0_j - mu1_j)^2 / exp(logvar1_j)
        log_term  = logvar1_j - logvar0_j
        kl_j      = 0.5 * (var_ratio + mean_term + log_term - 1)

    disentanglement_lib's ``compute_kl(z_1, z_2, logvar_1, logvar_2)`` is twice this (it leaves out the
    0.5, which the threshold rule does not see).

    Args:
        mu0, logvar0: ``(B, D)`` the first posterior.
        mu1, logvar1: ``(B, D)`` the second posterior.

    Returns:
        ``(B, D)``: no reduction.
    """
    var_ratio = torch.exp(logvar0 - logvar1)  # (B, D)
    mean_term = (mu0 - mu1).pow(2) * torch.exp(-logvar1)  # (B, D)
    return 0.5 * (var_ratio + mean_term + (logvar1 - logvar0) - 1.0)  # (B, D)


def pair_divergence(
    mu0: torch.Tensor,
    logvar0: torch.Tensor,
    mu1: torch.Tensor,
    logvar1: torch.Tensor,
    mode: Literal["kl", "symmetric_kl", "mean_distance"] = "kl",
) -> torch.Tensor:
    """How much each latent dim changed between the posteriors of a pair: ``delta (B, D)``.

    Modes::

        kl            delta_j = KL(q(z_j|x) || q(z_j|x'))                   Locatello et al. 2020;
                                                                            disentanglement_lib (times 2)
        symmetric_kl  delta_j = 0.5 KL(q(z_j|x) || q(z_j|x')) + 0.5 KL(q(z_j|x') || q(z_j|x))
                                                                            disent's default
        mean_distance delta_j = |mu_j(x) - mu_j(x')|                        disent's "dist"

    disent's one-way mode (``ada_thresh_mode="kl"``) takes the other direction, KL(q(z|x') || q(z|x)):
    pass the pair swapped for it.

    Returns:
        ``(B, D)``: no reduction.
    """
    if mode == "kl":
        return kl_between_diag(mu0, logvar0, mu1, logvar1)  # (B, D)
    if mode == "symmetric_kl":
        forward = kl_between_diag(mu0, logvar0, mu1, logvar1)  # (B, D)
        backward = kl_between_diag(mu1, logvar1, mu0, logvar0)  # (B, D)
        return 0.5 * backward + 0.5 * forward  # (B, D)
    if mode == "mean_distance":
        return (mu1 - mu0).abs()  # (B, D)
    raise ValueError(f"unknown divergence {mode!r}; use one of {', '.join(DIVERGENCES)}")


def adaptive_shared_mask(delta: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """The adaptive threshold rule: the dims whose divergence lies below
    ``tau = min + ratio * (max - min)`` of their pair are shared.

    Formula, per pair b::

        tau_b        = lerp(min_j delta_bj, max_j delta_bj, ratio)
        shared_bj    = delta_bj < tau_b

    Locatello et al. 2020's estimate of the shared set (ratio 1/2): disentanglement_lib's
    ``aggregate_argmax`` bins the divergences into two bins of equal width between their minimum and
    maximum and keeps the upper bin as changed, which is this rule at ratio 0.5; disent's
    ``estimate_shared_mask`` is this rule exactly (``torch.lerp``, strict ``<``). A pair whose divergences
    are all equal (e.g. an image with itself) shares nothing.

    Args:
        delta: ``(B, D)`` divergences (:func:`pair_divergence`).
        ratio: where between the smallest and the largest divergence the threshold lies, in [0, 1].

    Returns:
        ``(B, D)`` bool, True where shared.
    """
    lo = delta.min(dim=1, keepdim=True).values  # (B, 1)
    hi = delta.max(dim=1, keepdim=True).values  # (B, 1)
    return delta < torch.lerp(lo, hi, ratio)  # (B, D)


def top_k_shared_mask(delta: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The rule when k is known: the ``k`` dims of largest divergence changed, the others shared.

    Locatello et al. 2020: with the number of changed factors known, the k largest
    divergences are taken as changed (one latent dim per factor assumed). Ties go to the lower dim.

    Args:
        delta: ``(B, D)`` divergences.
        k: ``(B,)`` int, the number of changed factors of each pair (clipped to 0..D).

    Returns:
        ``(B, D)`` bool, True where shared.
    """
    order = torch.argsort(delta, dim=1, descending=True, stable=True)  # (B, D) dims by falling divergence
    rank = torch.argsort(order, dim=1)  # (B, D) each dim's place in that order
    return rank >= k.to(rank.dtype)[:, None]  # (B, D)


def aggregate_gvae(
    mu0: torch.Tensor, logvar0: torch.Tensor, mu1: torch.Tensor, logvar1: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """GVAE's aggregate: the arithmetic mean of the means and of the variances.

    Formula, per dim::

        mu     = 0.5 * (mu0 + mu1)
        var    = 0.5 * (var0 + var1)
        logvar = logaddexp(logvar0, logvar1) - log 2          (the same, without overflow)

    Hosoya 2019 as adapted by Locatello et al. 2020; disentanglement_lib's
    ``GroupVAEBase.model_fn``, disent's ``compute_average_gvae``.

    Returns:
        ``(mu, logvar)``, each ``(B, D)``.
    """
    mu = 0.5 * (mu0 + mu1)  # (B, D)
    logvar = torch.logaddexp(logvar0, logvar1) - _LOG_2  # (B, D)
    return mu, logvar


def aggregate_ml_vae(
    mu0: torch.Tensor, logvar0: torch.Tensor, mu1: torch.Tensor, logvar1: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """ML-VAE's aggregate, in the reference implementations' form.

    Formula, per dim::

        var    = 2 var0 var1 / (var0 + var1)                  (twice the product of Gaussians' variance)
        mu     = (mu0 var1 + mu1 var0) / (var0 + var1)        (the product's mean)
        logvar = log 2 + logvar0 + logvar1 - logaddexp(logvar0, logvar1)
        mu     = mu0 * sigmoid(logvar1 - logvar0) + mu1 * sigmoid(logvar0 - logvar1)

    Bouchacourt et al. 2018 as adapted by Locatello et al. 2020; disentanglement_lib's
    ``MLVae.model_fn`` (``new_var = 2*var_1*var_2/(var_1+var_2)``), disent's ``compute_average_ml_vae``.
    The product of the two Gaussians has half this variance; the references keep the factor 2.

    Returns:
        ``(mu, logvar)``, each ``(B, D)``.
    """
    w0 = torch.sigmoid(logvar1 - logvar0)  # (B, D) = var1 / (var0 + var1)
    mu = mu0 * w0 + mu1 * (1.0 - w0)  # (B, D)
    logvar = _LOG_2 + logvar0 + logvar1 - torch.logaddexp(logvar0, logvar1)  # (B, D)
    return mu, logvar


def share_posteriors(
    mu0: torch.Tensor,
    logvar0: torch.Tensor,
    mu1: torch.Tensor,
    logvar1: torch.Tensor,
    shared: torch.Tensor,
    aggregate: Literal["gvae", "ml_vae"] = "gvae",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Both posteriors of a pair with their shared dims replaced by the aggregate.

    Formula, per dim j of pair b::

        (mu_a, logvar_a) = aggregate(q0, q1)
        q0'_bj           = q_a,bj if shared_bj else q0_bj
        q1'_bj           = q_a,bj if shared_bj else q1_bj

    Args:
        mu0, logvar0, mu1, logvar1: ``(B, D)`` the two posteriors.
        shared: ``(B, D)`` bool (or ``(D,)``), the shared dims.
        aggregate: ``gvae`` (:func:`aggregate_gvae`) or ``ml_vae`` (:func:`aggregate_ml_vae`).

    Returns:
        ``(mu0', logvar0', mu1', logvar1')``, each ``(B, D)``.
    """
    if aggregate == "gvae":
        mu_a, logvar_a = aggregate_gvae(mu0, logvar0, mu1, logvar1)  # (B, D) each
    elif aggregate == "ml_vae":
        mu_a, logvar_a = aggregate_ml_vae(mu0, logvar0, mu1, logvar1)  # (B, D) each
    else:
        raise ValueError(f"unknown aggregate {aggregate!r}; use one of {', '.join(AGGREGATES)}")
    return (
        torch.where(shared, mu_a, mu0),  # (B, D)
        torch.where(shared, logvar_a, logvar0),  # (B, D)
        torch.where(shared, mu_a, mu1),  # (B, D)
        torch.where(shared, logvar_a, logvar1),  # (B, D)
    )
