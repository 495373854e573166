"""Modularity and explicitness of Ridgeway & Mozer, in the form of disentanglement_lib.

**Modularity** (from the (D, K) mutual-information matrix ``m``, estimated as for MIG on a
20-bin histogram of each latent): an ideally modular latent i carries information about one
factor only, i.e. matches the template ``t_i = theta_i * e_{argmax}`` with
``theta_i = max_k m_ik``. The deviation from it and the score are::

    delta_i = sum_k (m_ik - t_ik)^2 / (theta_i^2 (K - 1)) = sum_{k != argmax} m_ik^2 / (theta_i^2 (K - 1))
    modularity_i = 1 - delta_i           (0 for a latent with no information at all)
    modularity = mean_i modularity_i

Modularity is relative: a pure-noise latent whose (small, estimator-bias) MI happens to be
largest for one factor scores well. Read it with explicitness.

**Explicitness**: for each factor, a logistic regression predicts its class from all
(standardised) codes; the score is the one-vs-rest ROC-AUC averaged over classes, on the
training and held-out rows. 0.5 is chance, 1 is perfect.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..errors import ConfigError, DataError
from .registry import register_metric
from .utils import (
    check_codes,
    check_factors,
    check_positive_int,
    check_rng,
    discrete_mutual_info,
    discretize,
    encode_labels,
    seed_from,
    split_indices,
    standardize,
    subsample,
)

__all__ = ["modularity_explicitness", "modularity_from_mutual_info", "MODULARITY_DEFAULTS", "MODULARITY_FAST"]

MODULARITY_DEFAULTS = dict(bins=20, train_frac=0.8, c=1.0, max_iter=1000, max_samples=None)
MODULARITY_FAST = dict(MODULARITY_DEFAULTS, max_iter=300, max_samples=3000)


def modularity_from_mutual_info(mutual_info) -> dict:
    """Modularity from a (D, K) MI matrix; returns ``modularity`` and ``modularity_per_latent`` (D,).

    A latent with zero MI to every factor scores 0 (no division by zero); with K = 1 every
    informative latent is trivially modular (score 1).
    """
    m2 = np.square(np.asarray(mutual_info, dtype=np.float64))  # (D, K)
    theta2 = m2.max(axis=1)  # (D,)
    k_fac = m2.shape[1]
    if k_fac > 1:
        delta = (m2.sum(axis=1) - theta2) / np.where(theta2 > 0, theta2 * (k_fac - 1), 1.0)  # (D,)
    else:
        delta = np.zeros_like(theta2)
    per = np.where(theta2 > 0, 1.0 - delta, 0.0)
    return {"modularity": float(per.mean()), "modularity_per_latent": per}


def _auc_ovr(labels: np.ndarray, proba: np.ndarray, classes: np.ndarray) -> float:
    """Mean one-vs-rest ROC-AUC over the classes that have positives and negatives in ``labels``."""
    from sklearn.metrics import roc_auc_score

    aucs = []
    for j, c in enumerate(classes):
        pos = labels == c
        if pos.any() and not pos.all():
            aucs.append(roc_auc_score(pos, proba[:, j]))
    return float(np.mean(aucs)) if aucs else 0.5


def modularity_explicitness(
    codes,
    factors,
    rng: np.random.Generator,
    *,
    bins: int = 20,
    train_frac: float = 0.8,
    c: float = 1.0,
    max_iter: int = 1000,
    max_samples: int | None = None,
) -> dict:
    """Modularity and explicitness (Ridgeway & Mozer).

    Args:
        codes: (N, D) latent codes.
        factors: (N, K) discrete factors (class labels).
        rng: generator for the split, subsample and the classifiers' ``random_state``.
        bins: histogram bins per latent for the MI estimate.
        train_frac: rows used for the MI and for fitting the classifiers.
        c, max_iter: LogisticRegression settings (sklearn's C=1; more iterations than its 100).
        max_samples: optional cap on the number of rows used.

    Returns:
        dict with ``modularity``, ``modularity_per_latent`` (D,), ``explicitness`` (mean held-out
        AUC), ``explicitness_train``, ``explicitness_per_factor`` (K,) and ``mutual_info`` (D, K).
    """
    from sklearn.linear_model import LogisticRegression

    codes = check_codes(codes)
    factors = check_factors(factors, codes.shape[0])
    rng = check_rng(rng)
    bins = check_positive_int(bins, "bins", minimum=2)
    max_iter = check_positive_int(max_iter, "max_iter")
    if not float(c) > 0:
        raise ConfigError(f"c: expected a positive number, got {c!r}")
    keep = subsample(rng, codes.shape[0], max_samples)
    if keep is not None:
        codes, factors = codes[keep], check_factors(factors[keep], keep.size)
    tr, te = split_indices(rng, codes.shape[0], train_frac)
    mi = discrete_mutual_info(discretize(codes[tr], bins), factors[tr])  # (D, K)
    out = modularity_from_mutual_info(mi)
    x_tr, x_te = standardize(codes[tr], codes[te])  # (Ntr, D), (Nte, D)
    k_fac = factors.shape[1]
    auc_tr = np.zeros(k_fac)
    auc_te = np.zeros(k_fac)
    for k in range(k_fac):
        labels, _ = encode_labels(factors[:, k])  # (N,)
        if np.unique(labels[tr]).size < 2:
            raise DataError(f"too few samples: factor {k} has a single class in the training split; pass more rows")
        model = LogisticRegression(C=float(c), max_iter=max_iter, random_state=seed_from(rng))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence chatter
            model.fit(x_tr, labels[tr])
        auc_tr[k] = _auc_ovr(labels[tr], model.predict_proba(x_tr), model.classes_)
        auc_te[k] = _auc_ovr(labels[te], model.predict_proba(x_te), model.classes_)
    out.update(
        explicitness=float(auc_te.mean()),
        explicitness_train=float(auc_tr.mean()),
        explicitness_per_factor=auc_te,
        mutual_info=mi,
    )
    return out


register_metric(
    "modularity_explicitness",
    modularity_explicitness,
    kind="arrays",
    default=MODULARITY_DEFAULTS,
    fast=MODULARITY_FAST,
    headline=("modularity", "explicitness"),
    aliases=("modularity", "explicitness"),
)
