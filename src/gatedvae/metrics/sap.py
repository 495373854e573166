"""Separated Attribute Predictability (SAP) of Kumar et al. (DIP-VAE).

A score ``S[i, k]`` says how well latent i *alone* predicts factor k; SAP is the mean over
factors of the gap between the best and second-best latent::

    SAP = 1/K sum_k ( S[(1), k] - S[(2), k] )

Scores per (latent, factor) pair:

* continuous factors: ``S = R^2`` of a 1-D linear fit, ``cov(z_i, v_k)^2 / (var z_i var v_k)``
  (0 for a constant latent), as Kumar et al. and disentanglement_lib.
* discrete factors: held-out accuracy of a classifier that sees the single latent.
  ``classifier="linear_svc"`` (the default) is disentanglement_lib's
  ``LinearSVC(C=0.01, class_weight="balanced")`` on the raw latent, so the default numbers are
  comparable with those computed with disentanglement_lib, which the literature quotes. A
  one-vs-rest linear rule on one feature cannot isolate a middle class, so with many classes even a
  perfect code scores far below 1 under it, and it is not invariant to the latent's scale.
  ``classifier="threshold"`` (the default before 0.3) is a 1-D decision tree with at most C_k
  leaves, i.e. C_k - 1 thresholds that cut the latent's axis into intervals, one class each: a
  perfect monotone code scores 1. It measures *which* latent carries the factor rather than the
  capacity of a linear rule on one axis, but its numbers are not comparable with published ones.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..errors import ConfigError, DataError
from .registry import register_metric
from .utils import (
    check_choice,
    check_codes,
    check_factors,
    check_rng,
    encode_labels,
    seed_from,
    split_indices,
    subsample,
    within_float32,
)

__all__ = ["sap", "sap_from_scores", "SAP_DEFAULTS", "SAP_FAST"]

SAP_DEFAULTS = dict(classifier="linear_svc", continuous_factors=False, svc_c=0.01, train_frac=0.8, max_samples=None)
SAP_FAST = dict(SAP_DEFAULTS, max_samples=5000)


def sap_from_scores(score_matrix) -> dict:
    """SAP from a (D, K) score matrix: mean over factors of (best - second best) latent score."""
    s = np.asarray(score_matrix, dtype=np.float64)  # (D, K)
    ordered = np.sort(s, axis=0)[::-1]  # (D, K) descending
    second = ordered[1] if s.shape[0] > 1 else np.zeros(s.shape[1])
    gap = ordered[0] - second  # (K,)
    return {"sap": float(gap.mean()), "sap_per_factor": gap}


def sap(
    codes,
    factors,
    rng: np.random.Generator,
    *,
    classifier: str = "linear_svc",
    continuous_factors: bool = False,
    svc_c: float = 0.01,
    train_frac: float = 0.8,
    max_samples: int | None = None,
) -> dict:
    """SAP score of codes against factors.

    Args:
        codes: (N, D) latent codes.
        factors: (N, K) factors; class labels unless ``continuous_factors``.
        rng: generator for the split, subsample and the classifiers' ``random_state``.
        classifier: ``"linear_svc"`` (disentanglement_lib's, the default) or ``"threshold"`` (1-D
            tree with at most C_k leaves); discrete factors only.
        continuous_factors: score with ``R^2`` on all rows instead of classification.
        svc_c: ``C`` of the LinearSVC (disentanglement_lib: 0.01).
        train_frac: fraction of rows to fit the classifiers; accuracy is measured on the rest.
        max_samples: optional cap on the number of rows used.

    Returns:
        dict with ``sap``, ``sap_per_factor`` (K,) and ``score_matrix`` (D, K).
    """
    codes = check_codes(codes)
    factors = check_factors(factors, codes.shape[0])
    rng = check_rng(rng)
    check_choice(classifier, "classifier", ("linear_svc", "threshold"))
    keep = subsample(rng, codes.shape[0], max_samples)
    if keep is not None:
        codes, factors = codes[keep], check_factors(factors[keep], keep.size)
    codes = within_float32(codes)  # trees work in float32; LinearSVC squares the codes
    d, k_fac = codes.shape[1], factors.shape[1]
    scores = np.zeros((d, k_fac))  # (D, K)
    if continuous_factors:
        zc = codes - codes.mean(axis=0)  # (N, D)
        fc = factors - factors.mean(axis=0)  # (N, K)
        cov = zc.T @ fc / (codes.shape[0] - 1)  # (D, K)
        var_z = zc.var(axis=0, ddof=1)  # (D,)
        var_v = fc.var(axis=0, ddof=1)  # (K,)
        ok = var_z > 1e-12
        scores[ok] = cov[ok] ** 2 / (var_z[ok, None] * var_v[None, :])
    else:
        tr, te = split_indices(rng, codes.shape[0], train_frac)
        for k in range(k_fac):
            labels, n_cls = encode_labels(factors[:, k])  # (N,)
            if np.unique(labels[tr]).size < 2:
                raise DataError(f"too few samples: factor {k} has a single class in the training split; pass more rows")
            for i in range(d):
                model = _classifier(classifier, n_cls, svc_c, seed_from(rng))
                x_tr = codes[tr, i : i + 1]  # (Ntr, 1)
                x_te = codes[te, i : i + 1]  # (Nte, 1)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # LinearSVC convergence chatter on 1-D data
                    model.fit(x_tr, labels[tr])
                scores[i, k] = np.mean(model.predict(x_te) == labels[te])
    out = sap_from_scores(scores)
    out["score_matrix"] = scores
    return out


def _classifier(name: str, n_classes: int, svc_c: float, seed: int):
    if name == "threshold":
        from sklearn.tree import DecisionTreeClassifier

        return DecisionTreeClassifier(max_leaf_nodes=max(2, n_classes), random_state=seed)
    from sklearn.svm import LinearSVC

    if not float(svc_c) > 0:
        raise ConfigError(f"svc_c: expected a positive number, got {svc_c!r}")
    return LinearSVC(C=float(svc_c), class_weight="balanced", random_state=seed)


register_metric("sap", sap, kind="arrays", default=SAP_DEFAULTS, fast=SAP_FAST, headline=("sap",))
