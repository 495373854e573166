"""Unsupervised Disentanglement Ranking (UDR) of Duan et al. (``002_b6b404b9b5e7b646.txt``).

Idea: disentangled solutions are alike across seeds (up to permutation and sign of the latents),
entangled ones differ. Given the codes of M models (same hyperparameters, different seeds) on the
*same* N inputs:

1. z-score each model's codes; a latent is *active* when its mean KL to the prior exceeds
   ``kl_threshold`` (0.01): ``I_KL(a) = 1[KL(q(z_a|x) || p(z_a)) > 0.01]``;
2. for each pair of models, a similarity matrix ``R(a, b)`` between latent a of one and latent b
   of the other: ``|Spearman correlation|`` or ``|Lasso coefficient|`` (model b's latent
   regressed on all of model a's, alpha 0.1);
3. the pair score, on active latents only (``d_a``, ``d_b`` = number of active latents)::

       UDR_ij = 1/(d_a + d_b) [ sum_b  r_a(b)^2 / sum_a R(a, b)  +  sum_a  r_b(a)^2 / sum_b R(a, b) ]
       r_a(b) = max_a R(a, b),   r_b(a) = max_b R(a, b)

   Each term is 1 when a latent matches exactly one latent of the other model with similarity 1,
   and shrinks when the match is weak or shared (a latent correlated with several);
4. a model's score is the median of its pair scores over ``P`` partners (all others by default).

Choices, stated: for ``"lasso"`` R is not symmetric, so the pair score is the mean of the two
regression directions. disentanglement_lib averages the two terms with equal weight
(``(mean_b + mean_a) / 2``) instead of weighting by ``d_a`` and ``d_b``; this differs only when
the two models have different numbers of active latents. We follow the paper's formula. A column
or row whose similarities are all zero contributes 0 (no NaN).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError, DataError
from .registry import register_metric
from .utils import check_choice, check_codes, check_positive_int, check_rng, seed_from, standardize, subsample

__all__ = ["udr", "udr_pair_score", "spearman_similarity", "lasso_similarity", "UDR_DEFAULTS", "UDR_FAST"]

UDR_DEFAULTS = dict(similarity="spearman", kl_threshold=0.01, lasso_alpha=0.1, n_partners=None, max_samples=None)
UDR_FAST = dict(UDR_DEFAULTS, max_samples=5000)


def spearman_similarity(a, b) -> np.ndarray:
    """``|Spearman rank correlation|`` between every column of a (N, Da) and of b (N, Db): (Da, Db).

    A constant column has correlation 0 with everything.
    """
    from scipy.stats import rankdata

    ra = rankdata(np.asarray(a, dtype=np.float64), axis=0)  # (N, Da) average ranks for ties
    rb = rankdata(np.asarray(b, dtype=np.float64), axis=0)  # (N, Db)
    ra = ra - ra.mean(axis=0)
    rb = rb - rb.mean(axis=0)
    na = np.sqrt((ra**2).sum(axis=0))  # (Da,)
    nb = np.sqrt((rb**2).sum(axis=0))  # (Db,)
    denom = np.outer(na, nb)  # (Da, Db)
    corr = np.where(denom > 0, (ra.T @ rb) / np.where(denom > 0, denom, 1.0), 0.0)  # (Da, Db)
    return np.clip(np.abs(corr), 0.0, 1.0)


def lasso_similarity(a, b, alpha: float = 0.1, seed: int = 0) -> np.ndarray:
    """``|coef|`` of a Lasso predicting every column of b (N, Db) from all of a (N, Da): (Da, Db).

    Both inputs should be z-scored. Row a, column b: how much latent a is used for latent b.
    """
    from sklearn.linear_model import Lasso

    model = Lasso(alpha=float(alpha), random_state=seed, max_iter=5000)
    model.fit(a, b)
    coef = np.atleast_2d(model.coef_)  # (Db, Da)
    return np.abs(coef).T  # (Da, Db)


def udr_pair_score(similarity, active_a=None, active_b=None) -> float:
    """Duan et al.'s pair score from a (Da, Db) similarity matrix, restricted to active latents.

    See the module docstring for the formula. Returns 0 when neither model has an active latent.
    """
    r = np.abs(np.asarray(similarity, dtype=np.float64))  # (Da, Db)
    if active_a is not None:
        r = r[np.asarray(active_a, dtype=bool)]
    if active_b is not None:
        r = r[:, np.asarray(active_b, dtype=bool)]
    d_a, d_b = r.shape
    if d_a + d_b == 0 or r.size == 0:
        return 0.0
    col_sum = r.sum(axis=0)  # (Db,)
    row_sum = r.sum(axis=1)  # (Da,)
    col_term = np.where(col_sum > 0, r.max(axis=0) ** 2 / np.where(col_sum > 0, col_sum, 1.0), 0.0)  # (Db,)
    row_term = np.where(row_sum > 0, r.max(axis=1) ** 2 / np.where(row_sum > 0, row_sum, 1.0), 0.0)  # (Da,)
    return float((col_term.sum() + row_term.sum()) / (d_a + d_b))


def _check_inputs(codes_list, kl):
    if isinstance(codes_list, np.ndarray) and codes_list.ndim == 3:
        codes_list = list(codes_list)
    if not isinstance(codes_list, Sequence) or len(codes_list) < 2:
        raise DataError("codes_list: UDR needs the codes of at least 2 models (a list of (N, D) arrays)")
    codes = [check_codes(c, name=f"codes_list[{m}]") for m, c in enumerate(codes_list)]
    n = codes[0].shape[0]
    for m, c in enumerate(codes):
        if c.shape[0] != n:
            raise DataError(f"codes_list[{m}]: has {c.shape[0]} rows but codes_list[0] has {n}; encode the same inputs")
    if kl is None:
        return codes, None
    if not isinstance(kl, Sequence) and not (isinstance(kl, np.ndarray) and kl.ndim == 2):
        raise DataError("kl: expected one (D,) array of per-latent KL per model")
    if len(kl) != len(codes):
        raise DataError(f"kl: got {len(kl)} arrays for {len(codes)} models")
    kls = []
    for m, (k, c) in enumerate(zip(kl, codes, strict=True)):
        k = np.asarray(k, dtype=np.float64)
        if k.shape != (c.shape[1],):
            raise DataError(f"kl[{m}]: expected shape ({c.shape[1]},) to match the codes, got {k.shape}")
        if not np.isfinite(k).all():
            raise DataError(f"kl[{m}]: NaN or inf in the per-latent KL")
        kls.append(k)
    return codes, kls


def udr(
    codes_list,
    rng: np.random.Generator,
    *,
    kl=None,
    kl_threshold: float = 0.01,
    similarity: str = "spearman",
    lasso_alpha: float = 0.1,
    n_partners: int | None = None,
    max_samples: int | None = None,
) -> dict:
    """UDR scores of M models from their codes on the same inputs.

    Args:
        codes_list: M arrays (N, D_m) of encoder means on the same N inputs (D_m may differ).
        rng: generator for partner choice, subsample and Lasso ``random_state``.
        kl: optional M arrays (D_m,) of the mean KL per latent (e.g. :func:`kl_per_dim`); a latent
            is active when its KL exceeds ``kl_threshold``. Without it every latent is active.
        kl_threshold: activity threshold in nats (paper: 0.01).
        similarity: ``"spearman"`` or ``"lasso"``.
        lasso_alpha: Lasso penalty (disentanglement_lib: 0.1).
        n_partners: P, partners per model (sampled without replacement); default all others.
        max_samples: optional cap on the number of rows used (the same rows for every model).

    Returns:
        dict with ``model_scores`` (M,), ``pairwise`` (M, M) symmetric pair scores (diagonal 0,
        unused), ``active`` (list of (D_m,) bool), ``partners`` (list of index arrays) and
        ``similarity`` (dict ``(i, j) -> (D_i, D_j)`` matrix, for i != j).
    """
    rng = check_rng(rng)
    check_choice(similarity, "similarity", ("spearman", "lasso"))
    codes, kls = _check_inputs(codes_list, kl)
    m = len(codes)
    keep = subsample(rng, codes[0].shape[0], max_samples)
    if keep is not None:
        codes = [c[keep] for c in codes]
    codes = [standardize(c)[0] for c in codes]  # (N, D_m) z-scored, constants stay 0
    if kls is None:
        active = [np.ones(c.shape[1], dtype=bool) for c in codes]
    else:
        active = [k > float(kl_threshold) for k in kls]
    if similarity == "lasso" and not float(lasso_alpha) > 0:
        raise ConfigError(f"lasso_alpha: expected a positive number, got {lasso_alpha!r}")
    if n_partners is None:
        n_partners = m - 1
    n_partners = check_positive_int(n_partners, "n_partners")
    if n_partners > m - 1:
        raise ConfigError(f"n_partners: {n_partners} partners requested but only {m - 1} other models")

    sims: dict[tuple[int, int], np.ndarray] = {}
    pairwise = np.zeros((m, m))
    for i in range(m):
        for j in range(i + 1, m):
            if similarity == "spearman":
                r = spearman_similarity(codes[i], codes[j])  # (D_i, D_j)
                sims[(i, j)], sims[(j, i)] = r, r.T
                score = udr_pair_score(r, active[i], active[j])
            else:
                scores = []
                for a, b in ((i, j), (j, i)):
                    xa = codes[a][:, active[a]]  # inactive latents are neither used nor predicted
                    xb = codes[b][:, active[b]]
                    r = np.zeros((codes[a].shape[1], codes[b].shape[1]))  # (D_a, D_b)
                    if xa.shape[1] and xb.shape[1]:
                        r[np.ix_(active[a], active[b])] = lasso_similarity(xa, xb, lasso_alpha, seed_from(rng))
                    sims[(a, b)] = r
                    scores.append(udr_pair_score(r, active[a], active[b]))
                score = 0.5 * (scores[0] + scores[1])
            pairwise[i, j] = pairwise[j, i] = score
    partners = []
    model_scores = np.zeros(m)
    for i in range(m):
        others = np.array([j for j in range(m) if j != i])
        if n_partners < m - 1:
            others = np.sort(rng.choice(others, size=n_partners, replace=False))
        partners.append(others)
        model_scores[i] = np.median(pairwise[i, others])
    return {
        "model_scores": model_scores,
        "pairwise": pairwise,
        "active": active,
        "partners": partners,
        "similarity": sims,
    }


register_metric(
    "udr",
    udr,
    kind="models",
    default=UDR_DEFAULTS,
    fast=UDR_FAST,
    suite=False,
    not_in_suite=(
        "udr ranks several runs of one configuration against each other, not one run; "
        "use gatedvae.evaluation.udr_runs(run_dirs)"
    ),
)
