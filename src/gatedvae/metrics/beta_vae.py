"""BetaVAE disentanglement metric of Higgins et al. (``002_b6b404b9b5e7b646.txt``; with an SVM in
``003_527384601d5c0438.txt``).

One training point:

1. choose a factor y uniformly;
2. draw L pairs of factor vectors (v1_l, v2_l) that agree on factor y, all else random;
3. encode both, ``z_diff_l = |z(v1_l) - z(v2_l)|``;
4. the feature is ``mean_l z_diff_l`` (D,), the label is y.

A low-capacity linear classifier is fitted on ``n_train`` such points and its accuracy reported
on them and on ``n_eval`` fresh points. If the fixed factor lives in one latent, that latent's
difference is ~0, which a linear rule detects. Default classifier: scikit-learn
``LogisticRegression`` (disentanglement_lib); ``classifier="linear_svc"`` is the linear SVM
the report in ``003_...`` used "for stability".

Known limitation (Kim & Mnih, in ``002_...``): it can score 100% with only K-1 factors
disentangled; prefer the FactorVAE score or MIG for ranking.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..errors import ConfigError, DataError
from .registry import register_metric
from .sampling import FactorSampler, GridSampler, RepresentationFn
from .utils import check_choice, check_positive_int, check_rng, seed_from

__all__ = [
    "beta_vae_score",
    "beta_vae_from_sampler",
    "beta_vae_features",
    "beta_vae_score_from_features",
    "BETA_VAE_DEFAULTS",
    "BETA_VAE_FAST",
]

BETA_VAE_DEFAULTS = dict(batch_size=64, n_train=10000, n_eval=5000, classifier="logistic", c=1.0, max_iter=1000)
BETA_VAE_FAST = dict(BETA_VAE_DEFAULTS, n_train=1000, n_eval=500)


def beta_vae_features(codes1, codes2) -> np.ndarray:
    """Features of the BetaVAE metric: ``mean_l |z1_l - z2_l|`` over each group of L pairs.

    Args:
        codes1, codes2: (V, L, D) codes of the two members of L pairs, for V training points.

    Returns:
        (V, D) feature vectors.
    """
    return np.mean(np.abs(np.asarray(codes1, dtype=np.float64) - np.asarray(codes2, dtype=np.float64)), axis=1)


def beta_vae_score_from_features(
    train_x,
    train_y,
    eval_x,
    eval_y,
    rng: np.random.Generator,
    *,
    classifier: str = "logistic",
    c: float = 1.0,
    max_iter: int = 1000,
) -> dict:
    """Fit the linear classifier on (train_x (V, D), train_y (V,)) and score it on both sets:
    ``train_accuracy``, ``eval_accuracy`` and their binomial standard errors (``*_se``)."""
    rng = check_rng(rng)
    check_choice(classifier, "classifier", ("logistic", "linear_svc"))
    if not float(c) > 0:
        raise ConfigError(f"c: expected a positive number, got {c!r}")
    max_iter = check_positive_int(max_iter, "max_iter")
    if np.unique(train_y).size < 2:
        raise DataError("too few samples: the training points cover a single factor; raise n_train")
    if classifier == "logistic":
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(C=float(c), max_iter=max_iter, random_state=seed_from(rng))
    else:
        from sklearn.svm import LinearSVC

        model = LinearSVC(C=float(c), max_iter=max_iter, random_state=seed_from(rng))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter on unscaled features
        model.fit(train_x, train_y)
    train_acc = float(np.mean(model.predict(train_x) == train_y))
    eval_acc = float(np.mean(model.predict(eval_x) == eval_y))
    return {
        "train_accuracy": train_acc,
        "eval_accuracy": eval_acc,
        # binomial standard errors: the sampling noise of the accuracies (independent points)
        "train_accuracy_se": float(np.sqrt(train_acc * (1 - train_acc) / len(train_y))),
        "eval_accuracy_se": float(np.sqrt(eval_acc * (1 - eval_acc) / len(eval_y))),
    }


def beta_vae_from_sampler(
    sampler: FactorSampler,
    rng: np.random.Generator,
    *,
    batch_size: int = 64,
    n_train: int = 10000,
    n_eval: int = 5000,
    classifier: str = "logistic",
    c: float = 1.0,
    max_iter: int = 1000,
    chunk_size: int = 16384,
) -> dict:
    """The BetaVAE score over any :class:`~.sampling.FactorSampler` (grid or observed draws).

    Draw order: the training points, then the evaluation points, then the classifier's seed;
    each point picks its fixed factor uniformly among ``sampler.eligible``. Arguments and
    result as :func:`beta_vae_score`.
    """
    rng = check_rng(rng)
    check_choice(classifier, "classifier", ("logistic", "linear_svc"))
    batch_size = check_positive_int(batch_size, "batch_size")
    n_train = check_positive_int(n_train, "n_train", minimum=2)
    n_eval = check_positive_int(n_eval, "n_eval")
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    if sampler.eligible.size == 0:
        raise DataError("every factor has a single class; nothing to score")
    per_chunk = max(1, chunk_size // (2 * batch_size))

    def points(n_points: int) -> tuple[np.ndarray, np.ndarray]:
        feats, labels = [], []
        for start in range(0, n_points, per_chunk):
            v = min(per_chunk, n_points - start)
            fixed = sampler.eligible[rng.integers(0, sampler.eligible.size, size=v)]  # (v,)
            z1, z2 = sampler.pair_codes(fixed, batch_size, rng)  # (v, L, D) each
            if feats and z1.shape[-1] != feats[0].shape[-1]:
                raise DataError(f"representation_fn: code width changed from {feats[0].shape[-1]} to {z1.shape[-1]}")
            feats.append(beta_vae_features(z1, z2))  # (v, D)
            labels.append(fixed)
        return np.concatenate(feats, axis=0), np.concatenate(labels)

    train_x, train_y = points(n_train)
    eval_x, eval_y = points(n_eval)
    if eval_x.shape[1] != train_x.shape[1]:
        raise DataError(f"representation_fn: code width changed from {train_x.shape[1]} to {eval_x.shape[1]}")
    out = beta_vae_score_from_features(
        train_x, train_y, eval_x, eval_y, rng, classifier=classifier, c=c, max_iter=max_iter
    )
    out["chance"] = 1.0 / int(sampler.eligible.size)
    return out


def beta_vae_score(
    representation_fn: RepresentationFn,
    factor_sizes,
    rng: np.random.Generator,
    *,
    batch_size: int = 64,
    n_train: int = 10000,
    n_eval: int = 5000,
    classifier: str = "logistic",
    c: float = 1.0,
    max_iter: int = 1000,
    chunk_size: int = 16384,
) -> dict:
    """BetaVAE metric (Higgins et al.) through a representation function of factor classes.

    Args:
        representation_fn: ``(n, K) int factor classes -> (n, D) codes``.
        factor_sizes: (K,) number of classes per factor.
        rng: the only source of randomness.
        batch_size: L, pairs averaged per training point (64 in disentanglement_lib).
        n_train, n_eval: training and evaluation points for the classifier.
        classifier: ``"logistic"`` (LogisticRegression, default) or ``"linear_svc"`` (LinearSVC).
        c: inverse regularisation strength of either classifier (sklearn's default 1.0).
        max_iter: solver iterations (sklearn's 100 often stops short on unscaled features).
        chunk_size: at most this many rows go to ``representation_fn`` at once.

    Returns:
        dict with ``train_accuracy``, ``eval_accuracy`` and ``chance`` (1 / number of factors
        with more than one class).
    """
    sampler = GridSampler(representation_fn, factor_sizes, check_positive_int(chunk_size, "chunk_size"))
    return beta_vae_from_sampler(
        sampler,
        rng,
        batch_size=batch_size,
        n_train=n_train,
        n_eval=n_eval,
        classifier=classifier,
        c=c,
        max_iter=max_iter,
        chunk_size=chunk_size,
    )


register_metric(
    "beta_vae",
    beta_vae_score,
    kind="sampler",
    default=BETA_VAE_DEFAULTS,
    fast=BETA_VAE_FAST,
    headline=("eval_accuracy",),
    aliases=("betavae",),
    from_sampler=beta_vae_from_sampler,
)
