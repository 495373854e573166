"""Disentanglement, completeness and informativeness (DCI) of Eastwood & Williams.

Two forms:

* :func:`dci` -- the form the Gated-VAE paper reports (``000_fc03c6fb001bc541.txt``, section
  IV-A1 and Table I): codes and factors z-scored, one regressor per factor (Lasso with
  alpha=0.02, or a random forest of 10 trees of depth 12), importance matrix from ``|coef|`` or
  ``feature_importances_``, informativeness as the held-out NRMSE (lower is better).
* :func:`dci_classifier` -- the form of disentanglement_lib: a gradient-boosted classifier per
  discrete factor, informativeness as train/test accuracy (higher is better), completeness
  weighted by factor importance.

Both accept ``units``, a grouping of latent dimensions into partitions. "Partition DCI" sums the
importance rows of each partition and scores the partitions as if they were the latents: for a
Gated-VAE, it asks whether each *partition* holds its factors, regardless of how the factor is
spread over the partition's own dimensions. This is ours (gatedvae), not a published metric.

The scores, from an importance matrix ``R`` (D latents x K factors, non-negative)::

    P_ik   = R_ik / sum_k' R_ik'                       row-normalised: latent i's use by factor k
    D_i    = 1 - H_K(P_i.)  with H_K(p) = -sum_k p_k log_K p_k
    rho_i  = sum_k R_ik / sum_ik R_ik                   relative importance of latent i
    D      = sum_i rho_i D_i
    C_k    = 1 - H_D(P~_.k),  P~_ik = R_ik / sum_i' R_i'k
    C      = mean_k C_k        (paper; also ``completeness_weighted`` = sum_k (col weight) C_k)

A latent whose importances are all zero has ``rho_i = 0`` and ``D_i = 0`` (no NaN); if the whole
matrix is zero every score is 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError, DataError
from .registry import register_metric
from .utils import (
    check_choice,
    check_codes,
    check_factors,
    check_positive_int,
    check_rng,
    default_threads,
    encode_labels,
    normalized_entropy,
    seed_from,
    split_indices,
    standardize,
    subsample,
    within_float32,
)

__all__ = [
    "dci",
    "dci_lasso",
    "dci_random_forest",
    "dci_classifier",
    "dci_from_importance",
    "group_importance",
    "DCI_DEFAULTS",
    "DCI_FAST",
    "DCI_CLASSIFIER_DEFAULTS",
    "DCI_CLASSIFIER_FAST",
    "DCI_CLASSIFIER_REFERENCE",
    "DCI_CLASSIFIER_MAX_TRAIN",
]

#: The Gated-VAE paper's settings (``000_fc03c6fb001bc541.txt`` IV-A1).
DCI_DEFAULTS = dict(regressor="lasso", alpha=0.02, n_estimators=10, max_depth=12, train_frac=0.8, max_samples=None)
#: Same estimators on at most 5,000 samples.
DCI_FAST = dict(DCI_DEFAULTS, max_samples=5000)
#: disentanglement_lib's settings exactly: GradientBoostingClassifier() defaults, every training row
#: (10,000 of the evaluation's 12,500 at train_frac=0.8). ``n_jobs=None``: :func:`.utils.default_threads`.
DCI_CLASSIFIER_REFERENCE = dict(
    n_estimators=100, max_depth=3, learning_rate=0.1, train_frac=0.8, max_samples=None, max_train=None, n_jobs=None
)
#: A cap on the training rows some users want for budgets (``max_train``); no preset uses it: it
#: moves the scores away from the reference (docs/metrics.md, "Deliberate deviations").
DCI_CLASSIFIER_MAX_TRAIN = 2000
#: The ``default`` preset is the reference exactly (fitted by :mod:`.gbt`: 25 s of CPU on dSprites,
#: spread over ``n_jobs`` threads; scikit-learn took 244 s).
DCI_CLASSIFIER_DEFAULTS = dict(DCI_CLASSIFIER_REFERENCE)
#: Fewer boosting stages on at most 3,000 samples.
DCI_CLASSIFIER_FAST = dict(DCI_CLASSIFIER_REFERENCE, n_estimators=20, max_samples=3000)


# --------------------------------------------------------------------------- scores from R
def dci_from_importance(importance) -> dict:
    """Disentanglement and completeness from an importance matrix ``R`` of shape (D, K).

    Returns a dict with ``disentanglement`` (importance-weighted mean of ``D_i``),
    ``completeness`` (plain mean of ``C_k``, as Eastwood & Williams and the Gated-VAE paper),
    ``completeness_weighted`` (weighted by each factor's share of the total importance, as
    disentanglement_lib), and the per-latent / per-factor arrays and weights. See the module
    docstring for the formulas. A zero row gets weight 0 and score 0; no NaN is ever produced.
    """
    r = np.abs(np.asarray(importance, dtype=np.float64))  # (D, K)
    if r.ndim != 2 or r.size == 0:
        raise DataError(f"importance: expected a non-empty (D, K) matrix, got shape {r.shape}")
    if not np.isfinite(r).all():
        raise DataError("importance: NaN or inf in the importance matrix")
    row = r.sum(axis=1)  # (D,)
    col = r.sum(axis=0)  # (K,)
    total = float(r.sum())
    d_per = np.where(row > 0, 1.0 - normalized_entropy(r, axis=1), 0.0)  # (D,)
    c_per = np.where(col > 0, 1.0 - normalized_entropy(r, axis=0), 0.0)  # (K,)
    if total > 0:
        rho = row / total  # (D,)
        kappa = col / total  # (K,)
    else:
        rho = np.zeros_like(row)
        kappa = np.zeros_like(col)
    return {
        "disentanglement": float(np.sum(rho * d_per)),
        "completeness": float(np.mean(c_per)),
        "completeness_weighted": float(np.sum(kappa * c_per)),
        "disentanglement_per_latent": d_per,
        "latent_weights": rho,
        "completeness_per_factor": c_per,
        "factor_weights": kappa,
    }


def _check_units(units, d: int) -> list[np.ndarray]:
    if isinstance(units, (str, bytes)) or not isinstance(units, Sequence) or len(units) == 0:
        raise ConfigError("units: expected a non-empty list of index arrays, one per partition")
    out: list[np.ndarray] = []
    seen = np.zeros(d, dtype=bool)
    for p, u in enumerate(units):
        idx = np.asarray(u)
        if idx.ndim != 1 or idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
            raise ConfigError(f"units[{p}]: expected a non-empty 1-D array of latent indices, got {u!r}")
        if (idx < 0).any() or (idx >= d).any():
            raise ConfigError(f"units[{p}]: latent indices {idx.tolist()} out of range for {d} latents")
        if seen[idx].any() or np.unique(idx).size != idx.size:
            raise ConfigError(
                f"units[{p}]: latent(s) {idx[seen[idx]].tolist() or idx.tolist()} appear in more than one unit"
            )
        seen[idx] = True
        out.append(idx.astype(np.int64))
    return out


def group_importance(importance, units) -> np.ndarray:
    """Sum the importance rows of each unit: (D, K) -> (P, K). Latents in no unit are ignored."""
    r = np.asarray(importance, dtype=np.float64)
    groups = _check_units(units, r.shape[0])
    return np.stack([r[g].sum(axis=0) for g in groups])  # (P, K)


def _partition_scores(importance: np.ndarray, units) -> dict:
    grouped = group_importance(importance, units)  # (P, K)
    s = dci_from_importance(grouped)
    return {
        "disentanglement": s["disentanglement"],
        "completeness": s["completeness"],
        "completeness_weighted": s["completeness_weighted"],
        "disentanglement_per_unit": s["disentanglement_per_latent"],
        "unit_weights": s["latent_weights"],
        "completeness_per_factor": s["completeness_per_factor"],
        "importance": grouped,
    }


def _prepare(codes, factors, rng, max_samples):
    codes = check_codes(codes)
    factors = check_factors(factors, codes.shape[0])
    rng = check_rng(rng)
    keep = subsample(rng, codes.shape[0], max_samples)
    if keep is not None:
        codes, factors = codes[keep], factors[keep]
        check_factors(factors, codes.shape[0])  # the subset may have lost a factor's variation
    return codes, factors, rng


# --------------------------------------------------------------------------- regressor form
def dci(
    codes,
    factors,
    rng: np.random.Generator,
    *,
    regressor: str = "lasso",
    alpha: float = 0.02,
    n_estimators: int = 10,
    max_depth: int = 12,
    train_frac: float = 0.8,
    units: Sequence[Sequence[int]] | None = None,
    max_samples: int | None = None,
) -> dict:
    """DCI with regressors, as in the Gated-VAE paper (``000_fc03c6fb001bc541.txt`` IV-A1).

    Codes and factors are z-scored with the training split's mean and std (a zero-variance code
    column is only centred, so it stays all-zero and gets zero importance). For each factor k a
    regressor predicts factor k from all codes; ``R[:, k]`` is ``|coef|`` (Lasso) or the forest's
    ``feature_importances_``. Informativeness of factor k is the held-out NRMSE
    ``sqrt(mean((v_k - v_hat_k)^2))`` in z-scored units, i.e. RMSE over the training std of the
    factor: 0 is perfect, about 1 is no better than predicting the mean. Lower is better.

    Args:
        codes: (N, D) latent codes (encoder means).
        factors: (N, K) ground-truth factors (values or class indices; no constant column).
        rng: generator for the split, the subsample and the forest's ``random_state``.
        regressor: ``"lasso"`` (sklearn ``Lasso(alpha)``) or ``"random_forest"``
            (``RandomForestRegressor(n_estimators, max_depth)``).
        alpha: Lasso penalty (paper: 0.02).
        n_estimators, max_depth: random forest size (paper: 10 trees, depth 12).
        train_frac: fraction of rows used to fit; the rest measure informativeness.
        units: optional list of index arrays grouping latents into partitions; adds
            ``result["partition"]`` with partition DCI (ours, for Gated-VAE; see module docstring).
        max_samples: if set, a random subset of at most this many rows is used.

    Returns:
        dict with ``disentanglement``, ``completeness`` (equal mean over factors),
        ``completeness_weighted``, ``informativeness`` (mean test NRMSE, lower is better),
        ``informativeness_train``, per-latent / per-factor arrays
        (``disentanglement_per_latent``, ``latent_weights``, ``completeness_per_factor``,
        ``factor_weights``, ``informativeness_per_factor``, ``informativeness_train_per_factor``),
        ``importance`` (D, K) and, with ``units``, ``partition``.
    """
    check_choice(regressor, "regressor", ("lasso", "random_forest"))
    codes, factors, rng = _prepare(codes, factors, rng, max_samples)
    if units is not None:
        _check_units(units, codes.shape[1])
    tr, te = split_indices(rng, codes.shape[0], train_frac)
    x_tr, x_te = standardize(codes[tr], codes[te])  # (Ntr, D), (Nte, D)
    if np.any(np.all(factors[tr] == factors[tr][:1], axis=0)):
        raise DataError("too few samples: a factor is constant within the training split; pass more rows")
    y_tr, y_te = standardize(factors[tr], factors[te])  # (Ntr, K), (Nte, K)
    d, k_fac = codes.shape[1], factors.shape[1]
    importance = np.zeros((d, k_fac))  # (D, K)
    nrmse_te = np.zeros(k_fac)
    nrmse_tr = np.zeros(k_fac)
    for k in range(k_fac):
        model = _regressor(regressor, alpha, n_estimators, max_depth, seed_from(rng))
        model.fit(x_tr, y_tr[:, k])
        if regressor == "lasso":
            importance[:, k] = np.abs(model.coef_)
        else:
            importance[:, k] = np.abs(model.feature_importances_)
        nrmse_te[k] = np.sqrt(np.mean((model.predict(x_te) - y_te[:, k]) ** 2))
        nrmse_tr[k] = np.sqrt(np.mean((model.predict(x_tr) - y_tr[:, k]) ** 2))
    out = dci_from_importance(importance)
    out.update(
        informativeness=float(nrmse_te.mean()),
        informativeness_train=float(nrmse_tr.mean()),
        informativeness_per_factor=nrmse_te,
        informativeness_train_per_factor=nrmse_tr,
        importance=importance,
    )
    if units is not None:
        out["partition"] = _partition_scores(importance, units)
    return out


def _regressor(name: str, alpha: float, n_estimators: int, max_depth: int, seed: int):
    if name == "lasso":
        from sklearn.linear_model import Lasso

        if not float(alpha) > 0:
            raise ConfigError(f"alpha: expected a positive number, got {alpha!r}")
        return Lasso(alpha=float(alpha), random_state=seed, max_iter=5000)
    from sklearn.ensemble import RandomForestRegressor

    return RandomForestRegressor(
        n_estimators=check_positive_int(n_estimators, "n_estimators"),
        max_depth=check_positive_int(max_depth, "max_depth"),
        random_state=seed,
        n_jobs=1,
    )


# --------------------------------------------------------------------------- classifier form
def dci_classifier(
    codes,
    factors,
    rng: np.random.Generator,
    *,
    n_estimators: int = 100,
    max_depth: int = 3,
    learning_rate: float = 0.1,
    train_frac: float = 0.8,
    units: Sequence[Sequence[int]] | None = None,
    max_samples: int | None = None,
    max_train: int | None = None,
    n_jobs: int | None = None,
    backend: str = "gbt",
    exact_ties: bool = False,
) -> dict:
    """DCI with gradient-boosted classifiers, the disentanglement_lib form.

    Each factor column is treated as discrete labels; one gradient-boosted classifier per factor
    (scikit-learn's ``GradientBoostingClassifier`` with its defaults, as disentanglement_lib)
    predicts it from the raw codes (trees need no scaling). ``R[:, k]`` is the classifier's
    ``feature_importances_``. Informativeness is classification accuracy on the training and
    held-out rows (higher is better -- the opposite direction to :func:`dci`'s NRMSE, hence the
    different key names). Disentanglement is weighted by latent importance and ``completeness``
    by factor importance, as disentanglement_lib does (``completeness_mean`` is the plain mean,
    for comparison with :func:`dci`).

    The classifier is :func:`gatedvae.metrics.gbt.fit_gbt` (``backend="gbt"``): scikit-learn's
    algorithm reproduced operation by operation with presorted features and the trees of a
    stage grown in parallel -- the same trees, predictions and importances as
    ``GradientBoostingClassifier(random_state=seed)`` (bit for bit in ``tests/test_metric_gbt.py``),
    with about 11 times less CPU (measured on dSprites codes, docs/metrics.md) spread over ``n_jobs``
    threads. ``backend="sklearn"`` fits scikit-learn's own estimator (slow; for
    cross-checks).

    disentanglement_lib draws separate train and test sets from the dataset; here the given rows
    are split by ``train_frac``, which is the same in distribution.

    Args:
        codes: (N, D) latent codes.
        factors: (N, K) discrete factors (class indices or any hashable values per column).
        rng: generator for the split, subsample and the classifiers' ``random_state``.
        n_estimators, max_depth, learning_rate: ``GradientBoostingClassifier`` settings
            (defaults are sklearn's, as disentanglement_lib uses them).
        train_frac: fraction of rows for fitting.
        units: optional partitions of latents; adds ``result["partition"]`` (ours).
        max_samples: optional cap on the number of rows used.
        max_train: optional cap on the *training* rows: after the split, a random subset of at
            most this many training rows fits the classifiers; the whole held-out split still
            measures ``informativeness_test``. None (the default, and every preset) = every
            training row, disentanglement_lib's setting.
        n_jobs: threads growing the trees of a stage (``backend="gbt"``) or worker processes
            fitting the factors (``backend="sklearn"``); None = :func:`.utils.default_threads`
            (the run's ``train.threads`` under ``gatedvae evaluate``). Every classifier's
            ``random_state`` is drawn from ``rng`` in factor order before any fit, so the result
            is identical for every ``n_jobs``.
        backend: ``"gbt"`` (default) or ``"sklearn"``.
        exact_ties: ``backend="gbt"`` only. True: rows with *equal* code values are ordered inside
            a node exactly as scikit-learn's introsort leaves them (bit-for-bit its trees, but as
            slow as scikit-learn wherever codes repeat: dSprites has duplicate images, so its codes
            do). False (default): such rows keep their index order; only the last bits of a few
            sums change (measured: docs/metrics.md, "dci_classifier").

    Codes are passed as float32, the dtype scikit-learn's trees use internally anyway.

    Returns:
        dict with ``disentanglement``, ``completeness`` (factor-importance weighted),
        ``completeness_mean``, ``informativeness_train``, ``informativeness_test`` (mean
        accuracies), ``informativeness_test_se`` (its binomial standard error), per-latent /
        per-factor arrays, ``importance`` (D, K) and optionally ``partition``.
    """
    check_choice(backend, "backend", ("gbt", "sklearn"))
    codes, factors, rng = _prepare(codes, factors, rng, max_samples)
    if units is not None:
        _check_units(units, codes.shape[1])
    n_estimators = check_positive_int(n_estimators, "n_estimators")
    max_depth = check_positive_int(max_depth, "max_depth")
    if n_jobs is None:
        n_jobs = default_threads()
    n_jobs = check_positive_int(n_jobs, "n_jobs")
    tr, te = split_indices(rng, codes.shape[0], train_frac)
    if max_train is not None:
        max_train = check_positive_int(max_train, "max_train", minimum=2)
        if tr.size > max_train:
            tr = np.sort(rng.choice(tr, size=max_train, replace=False))  # (max_train,)
    k_fac = factors.shape[1]
    x = np.ascontiguousarray(within_float32(codes), dtype=np.float32)  # (N, D) sklearn's tree dtype
    labels = []
    for k in range(k_fac):
        lab, _ = encode_labels(factors[:, k])  # (N,)
        if np.unique(lab[tr]).size < 2:
            raise DataError(f"too few samples: factor {k} has a single class in the training split; pass more rows")
        labels.append(lab)
    seeds = [seed_from(rng) for _ in range(k_fac)]  # drawn in factor order: same for every n_jobs
    settings = dict(n_estimators=n_estimators, max_depth=max_depth, learning_rate=float(learning_rate))
    jobs = [(x[tr], labels[k][tr], x[te], labels[k][te], seeds[k], settings) for k in range(k_fac)]
    if backend == "gbt":
        fits = [_fit_gbt(*job, n_threads=n_jobs, exact_ties=exact_ties) for job in jobs]
    elif n_jobs == 1 or k_fac == 1:
        fits = [_fit_classifier(*job) for job in jobs]
    else:
        from joblib import Parallel, delayed

        # largest factors (most classes = most trees) first: the shortest makespan of the greedy schedule
        order = sorted(range(k_fac), key=lambda k: -np.unique(labels[k][tr]).size)
        done = Parallel(n_jobs=min(n_jobs, k_fac))(delayed(_fit_classifier)(*jobs[k]) for k in order)
        fits = [None] * k_fac
        for k, fit in zip(order, done, strict=True):
            fits[k] = fit
    importance = np.stack([f[0] for f in fits], axis=1)  # (D, K)
    acc_tr = np.array([f[1] for f in fits])  # (K,)
    acc_te = np.array([f[2] for f in fits])  # (K,)
    s = dci_from_importance(importance)
    out = {
        "disentanglement": s["disentanglement"],
        "completeness": s["completeness_weighted"],
        "completeness_mean": s["completeness"],
        "informativeness_train": float(acc_tr.mean()),
        "informativeness_test": float(acc_te.mean()),
        # standard error of the mean test accuracy from the held-out rows' binomial noise
        # (factors treated as independent): the sampling noise of the estimate
        "informativeness_test_se": float(np.sqrt(np.sum(acc_te * (1 - acc_te) / te.size)) / k_fac),
        "disentanglement_per_latent": s["disentanglement_per_latent"],
        "latent_weights": s["latent_weights"],
        "completeness_per_factor": s["completeness_per_factor"],
        "factor_weights": s["factor_weights"],
        "informativeness_train_per_factor": acc_tr,
        "informativeness_test_per_factor": acc_te,
        "importance": importance,
    }
    if units is not None:
        out["partition"] = _partition_scores(importance, units)
    return out


def _fit_gbt(
    x_tr, y_tr, x_te, y_te, seed: int, settings: dict, n_threads: int = 1, exact_ties: bool = False
) -> tuple[np.ndarray, float, float]:
    """One factor's classifier with :func:`.gbt.fit_gbt`: (importances (D,), train acc., test acc.)."""
    from .gbt import fit_gbt

    model, pred_tr, pred_te = fit_gbt(
        x_tr, y_tr, random_state=seed, eval_x=x_te, n_threads=n_threads, exact_ties=exact_ties, **settings
    )
    return (
        model.feature_importances.astype(np.float64),
        float(np.mean(pred_tr == y_tr)),
        float(np.mean(pred_te == y_te)),
    )


def _fit_classifier(x_tr, y_tr, x_te, y_te, seed: int, settings: dict) -> tuple[np.ndarray, float, float]:
    """One factor's scikit-learn GradientBoostingClassifier: (importances (D,), train acc., test acc.)."""
    from sklearn.ensemble import GradientBoostingClassifier

    model = GradientBoostingClassifier(random_state=seed, **settings)
    model.fit(x_tr, y_tr)
    imp = np.abs(model.feature_importances_).astype(np.float64)  # (D,)
    return imp, float(np.mean(model.predict(x_tr) == y_tr)), float(np.mean(model.predict(x_te) == y_te))


# --------------------------------------------------------------------------- registered variants
def dci_lasso(codes, factors, rng: np.random.Generator, **kwargs) -> dict:
    """:func:`dci` with the Lasso regressor (Gated-VAE Table I, upper half)."""
    return dci(codes, factors, rng, regressor="lasso", **kwargs)


def dci_random_forest(codes, factors, rng: np.random.Generator, **kwargs) -> dict:
    """:func:`dci` with the random-forest regressor (Gated-VAE Table I, lower half)."""
    return dci(codes, factors, rng, regressor="random_forest", **kwargs)


# --------------------------------------------------------------------------- registration
#: The regressor variants' presets: :data:`DCI_DEFAULTS` without ``regressor`` (the variant fixes it).
_VARIANT_DEFAULTS = {k: v for k, v in DCI_DEFAULTS.items() if k != "regressor"}
_VARIANT_FAST = {k: v for k, v in DCI_FAST.items() if k != "regressor"}
#: ``partition.*``: the scores of a gated run's partitions as units (the evaluation adds
#: ``assigned_fraction``, see :func:`gatedvae.evaluation.assigned_importance_fraction`).
_PARTITION_HEADLINE = ("partition.disentanglement", "partition.assigned_fraction.mean")

register_metric(
    "dci_lasso",
    dci_lasso,
    kind="arrays",
    default=_VARIANT_DEFAULTS,
    fast=_VARIANT_FAST,
    headline=("disentanglement", "completeness", "informativeness", *_PARTITION_HEADLINE),
    aliases=("dci",),
    partition_units=True,
)
register_metric(
    "dci_random_forest",
    dci_random_forest,
    kind="arrays",
    default=_VARIANT_DEFAULTS,
    fast=_VARIANT_FAST,
    headline=("disentanglement", "completeness", "informativeness", *_PARTITION_HEADLINE),
    aliases=("dci", "dci_rf"),
    partition_units=True,
)
register_metric(
    "dci_classifier",
    dci_classifier,
    kind="arrays",
    default=DCI_CLASSIFIER_DEFAULTS,
    fast=DCI_CLASSIFIER_FAST,
    headline=("disentanglement", "completeness", "informativeness_test", *_PARTITION_HEADLINE),
    aliases=("dci",),
    partition_units=True,
)
