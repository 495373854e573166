"""Mutual Information Gap (MIG) of Chen et al. (beta-TCVAE), as in ``002_b6b404b9b5e7b646.txt``.

    MIG = 1/K sum_k 1/H(v_k) ( I(z_{j(k)}; v_k) - max_{j != j(k)} I(z_j; v_k) ),
    j(k) = argmax_j I(z_j; v_k)

The mutual information is estimated per (latent, factor) pair with the plug-in estimator on a
histogram discretisation of each latent (``bins`` equal-width bins, 20 by default, as
disentanglement_lib), factors taken as discrete labels. Chen et al. estimate ``I(z_j; v_k)``
from the encoder's full posterior; the discretised form is the one the comparison studies
(disentanglement_lib) report, and the one implemented here.
"""

from __future__ import annotations

import numpy as np

from .registry import register_metric
from .utils import (
    check_codes,
    check_factors,
    check_positive_int,
    check_rng,
    discrete_entropy,
    discrete_mutual_info,
    discretize,
)

__all__ = ["mig", "mig_from_mutual_info", "MIG_DEFAULTS", "MIG_FAST"]

MIG_DEFAULTS = dict(bins=20)
#: MIG has no expensive part; the fast preset is the default.
MIG_FAST = dict(MIG_DEFAULTS)


def mig_from_mutual_info(mutual_info, factor_entropy) -> dict:
    """Gap of the two largest entries of each column of a (D, K) MI matrix, over ``H(v_k)``.

    With a single latent (D = 1) the runner-up is taken as 0. Returns ``mig`` (mean over
    factors), ``mig_per_factor`` (K,) and ``top_latent`` (K,), the latent with the largest MI.
    """
    m = np.asarray(mutual_info, dtype=np.float64)  # (D, K)
    h = np.asarray(factor_entropy, dtype=np.float64)  # (K,)
    ordered = np.sort(m, axis=0)[::-1]  # (D, K) descending down each column
    second = ordered[1] if m.shape[0] > 1 else np.zeros(m.shape[1])
    gap = np.where(h > 0, (ordered[0] - second) / np.where(h > 0, h, 1.0), 0.0)  # (K,)
    return {"mig": float(gap.mean()), "mig_per_factor": gap, "top_latent": np.argmax(m, axis=0)}


def mig(codes, factors, rng: np.random.Generator, *, bins: int = 20) -> dict:
    """MIG of codes against discrete factors.

    Args:
        codes: (N, D) latent codes.
        factors: (N, K) discrete factors (class indices; every distinct value is one class, so
            discretise continuous factors before calling).
        rng: accepted for the common metric signature; MIG draws no random numbers.
        bins: equal-width bins per latent. A factor with more classes than ``bins`` cannot reach
            MI = H(v_k) through one latent (dSprites' 40 orientations at 20 bins).

    Returns:
        dict with ``mig``, ``mig_per_factor`` (K,), ``mutual_info`` (D, K) in nats,
        ``normalized_mutual_info`` (D, K) = MI / H(v_k), ``factor_entropy`` (K,) and
        ``top_latent`` (K,).
    """
    codes = check_codes(codes)
    factors = check_factors(factors, codes.shape[0])
    check_rng(rng)
    bins = check_positive_int(bins, "bins", minimum=2)
    binned = discretize(codes, bins)  # (N, D)
    mi = discrete_mutual_info(binned, factors)  # (D, K)
    h = discrete_entropy(factors)  # (K,)
    out = mig_from_mutual_info(mi, h)
    out.update(mutual_info=mi, normalized_mutual_info=mi / h[None, :], factor_entropy=h)
    return out


register_metric("mig", mig, kind="arrays", default=MIG_DEFAULTS, fast=MIG_FAST, headline=("mig",))
