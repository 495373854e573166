"""Test oracle: disentanglement_lib's metric algorithms restated over plain arrays.

A re-statement, in our own words, of the array parts of google-research/disentanglement_lib
(``disentanglement_lib/evaluation/metrics/``, read at commit 76f41e39), used only by
``tests/test_metric_reference.py`` to check that ``gatedvae.metrics`` agrees with it on the same
arrays. The sampling from a ground-truth dataset (``generate_batch_factor_code``,
``_generate_training_batch``, ...) is left out: every function here takes the arrays that
sampling would have produced. Arrays are (N, D) codes and (N, K) factors (rows = samples);
disentanglement_lib stores them transposed, (D, N) and (K, N), so each function transposes once
at the top and then follows the reference step by step.

What mirrors what:

==========================  ==========================================================================
function here               reference (file: function)
==========================  ==========================================================================
``histogram_discretize``    utils.py: ``_histogram_discretize`` (np.digitize on np.histogram edges)
``discrete_mutual_info``    utils.py: ``discrete_mutual_info`` (sklearn ``mutual_info_score``)
``discrete_entropy``        utils.py: ``discrete_entropy`` (``mutual_info_score(y, y)``)
``mig``                     mig.py: ``compute_mig`` after sampling
``sap_score_matrix``        sap_score.py: ``_compute_score_matrix``
``sap``                     sap_score.py: ``compute_sap`` after sampling (+ ``_compute_avg_diff_top_two``)
``dci_importance_gbt``      dci.py: ``compute_importance_gbt``
``dci_disentanglement``     dci.py: ``disentanglement_per_code`` + ``disentanglement``
``dci_completeness``        dci.py: ``completeness_per_code`` + ``completeness``
``dci``                     dci.py: ``compute_dci`` after sampling
``factor_vae_vote``         factor_vae.py: ``_generate_training_sample`` after encoding
``factor_vae_votes``        factor_vae.py: ``_generate_training_batch`` after encoding
``factor_vae_accuracies``   factor_vae.py: ``compute_factor_vae`` (majority vote) after sampling
``prune_dims``              factor_vae.py: ``_prune_dims``
``beta_vae_feature``        beta_vae.py: ``_generate_training_sample`` after encoding
``beta_vae_accuracies``     beta_vae.py: ``compute_beta_vae_sklearn`` after sampling
``modularity``              modularity_explicitness.py: ``modularity``
``explicitness_per_factor`` modularity_explicitness.py: ``explicitness_per_factor``
``modularity_explicitness`` modularity_explicitness.py: ``compute_modularity_explicitness``
``unsupervised_metrics``    unsupervised_metrics.py: ``unsupervised_metrics`` after sampling, with
                            ``gaussian_total_correlation`` and ``gaussian_wasserstein_correlation``
==========================  ==========================================================================

The reference's quirks are kept on purpose (they are what we compare against): the ``1e-11``
added before DCI's entropies, bins numbered from 1, ``np.histogram`` refusing a column it cannot
cut into distinct bins, NaN from ``log 0`` and ``0 / 0`` in the unsupervised scores,
``LinearSVC`` and ``LogisticRegression`` at scikit-learn's defaults apart from what the reference
sets, standardisation by a std that may be 0, ``num_active_dims`` = length of the mask, votes
indexed by position among active latents.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.stats
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import mutual_info_score, roc_auc_score
from sklearn.preprocessing import MultiLabelBinarizer
from sklearn.svm import LinearSVC


# --------------------------------------------------------------------------- utils.py
def histogram_discretize(codes: np.ndarray, num_bins: int = 20) -> np.ndarray:
    """(N, D) -> (N, D) bin ids 1..num_bins: each column cut at the left edges of its own histogram."""
    target = np.asarray(codes, dtype=np.float64).T  # (D, N), the reference's layout
    out = np.zeros_like(target)
    for i in range(target.shape[0]):
        left_edges = np.histogram(target[i], num_bins)[1][:-1]  # (num_bins,)
        out[i] = np.digitize(target[i], left_edges)
    return out.T  # (N, D)


def discrete_mutual_info(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, D) and (N, K) labels -> (D, K) mutual information in nats, one sklearn call per pair."""
    a = np.asarray(a).T  # (D, N)
    b = np.asarray(b).T  # (K, N)
    m = np.zeros((a.shape[0], b.shape[0]))
    for i in range(a.shape[0]):
        for j in range(b.shape[0]):
            m[i, j] = mutual_info_score(b[j], a[i])
    return m


def discrete_entropy(labels: np.ndarray) -> np.ndarray:
    """(N, K) labels -> (K,) entropy in nats, as the MI of each column with itself."""
    y = np.asarray(labels).T  # (K, N)
    return np.array([mutual_info_score(y[j], y[j]) for j in range(y.shape[0])])


def normalize_data(data: np.ndarray, mean=None, stddev=None):
    """(N, D) z-scoring with the given or the data's own mean and (ddof 0) std; no zero guard."""
    data = np.asarray(data, dtype=np.float64)
    if mean is None:
        mean = data.mean(axis=0)
    if stddev is None:
        stddev = data.std(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (data - mean) / stddev, mean, stddev


# --------------------------------------------------------------------------- mig.py
def mig(codes: np.ndarray, factors: np.ndarray, num_bins: int = 20) -> float:
    """Mean over factors of (largest - second largest MI over latents) / factor entropy."""
    m = discrete_mutual_info(histogram_discretize(codes, num_bins), factors)  # (D, K)
    entropy = discrete_entropy(factors)  # (K,)
    ranked = np.sort(m, axis=0)[::-1]  # (D, K) descending
    return float(np.mean((ranked[0] - ranked[1]) / entropy))


# --------------------------------------------------------------------------- sap_score.py
def sap_score_matrix(mus, ys, mus_test, ys_test, continuous_factors: bool) -> np.ndarray:
    """(D, K) score of each single latent for each factor (R^2, or held-out LinearSVC accuracy)."""
    mus, ys, mus_test, ys_test = (np.asarray(x, dtype=np.float64).T for x in (mus, ys, mus_test, ys_test))
    d, k = mus.shape[0], ys.shape[0]
    s = np.zeros((d, k))
    for i in range(d):
        for j in range(k):
            if continuous_factors:
                c = np.cov(mus[i], ys[j], ddof=1)  # (2, 2)
                s[i, j] = c[0, 1] ** 2 / (c[0, 0] * c[1, 1]) if c[0, 0] > 1e-12 else 0.0
            else:
                clf = LinearSVC(C=0.01, class_weight="balanced")  # the reference sets no random_state
                clf.fit(mus[i][:, None], ys[j])
                s[i, j] = np.mean(clf.predict(mus_test[i][:, None]) == ys_test[j])
    return s


def sap_from_matrix(score_matrix: np.ndarray) -> float:
    """Mean over factors of the gap between the two best latents (ascending sort, last two rows)."""
    ranked = np.sort(score_matrix, axis=0)
    return float(np.mean(ranked[-1] - ranked[-2]))


def sap(mus, ys, mus_test, ys_test, continuous_factors: bool = False) -> tuple[float, np.ndarray]:
    """SAP score and its (D, K) score matrix."""
    s = sap_score_matrix(mus, ys, mus_test, ys_test, continuous_factors)
    return sap_from_matrix(s), s


# --------------------------------------------------------------------------- dci.py
def dci_importance_gbt(x_train, y_train, x_test, y_test, random_state=None):
    """(D, K) |feature_importances_| of one default GradientBoostingClassifier per factor, and the
    mean train / test accuracy. ``random_state`` is None in the reference; it only breaks ties."""
    x_train, y_train, x_test, y_test = (np.asarray(a).T for a in (x_train, y_train, x_test, y_test))
    k, d = y_train.shape[0], x_train.shape[0]
    importance = np.zeros((d, k))
    acc_train, acc_test = [], []
    for j in range(k):
        seed = random_state[j] if isinstance(random_state, (list, tuple, np.ndarray)) else random_state
        model = GradientBoostingClassifier(random_state=seed)
        model.fit(x_train.T, y_train[j])
        importance[:, j] = np.abs(model.feature_importances_)
        acc_train.append(np.mean(model.predict(x_train.T) == y_train[j]))
        acc_test.append(np.mean(model.predict(x_test.T) == y_test[j]))
    return importance, float(np.mean(acc_train)), float(np.mean(acc_test))


def dci_disentanglement(importance: np.ndarray) -> float:
    """Sum over latents of (1 - H_K(row + 1e-11)) weighted by the latent's share of importance."""
    r = np.asarray(importance, dtype=np.float64)
    per_code = 1.0 - scipy.stats.entropy(r.T + 1e-11, base=r.shape[1])  # (D,)
    if r.sum() == 0.0:
        r = np.ones_like(r)
    return float(np.sum(per_code * r.sum(axis=1) / r.sum()))


def dci_completeness(importance: np.ndarray) -> float:
    """Sum over factors of (1 - H_D(column + 1e-11)) weighted by the factor's share of importance."""
    r = np.asarray(importance, dtype=np.float64)
    per_factor = 1.0 - scipy.stats.entropy(r + 1e-11, base=r.shape[0])  # (K,)
    if r.sum() == 0.0:
        r = np.ones_like(r)
    return float(np.sum(per_factor * r.sum(axis=0) / r.sum()))


def dci(x_train, y_train, x_test, y_test, random_state=None) -> dict:
    importance, acc_tr, acc_te = dci_importance_gbt(x_train, y_train, x_test, y_test, random_state)
    return {
        "informativeness_train": acc_tr,
        "informativeness_test": acc_te,
        "disentanglement": dci_disentanglement(importance),
        "completeness": dci_completeness(importance),
        "importance": importance,
    }


# --------------------------------------------------------------------------- factor_vae.py
def prune_dims(variances: np.ndarray, threshold: float = 0.0) -> np.ndarray:
    """Mask of latents whose global std reaches ``threshold`` (gin default 0; configs use 0.05)."""
    return np.sqrt(variances) >= threshold


def factor_vae_vote(batch_codes: np.ndarray, global_variances: np.ndarray, active_dims: np.ndarray) -> int:
    """(B, D) codes of one fixed-factor batch -> argmin of local / global variance over the active
    latents, as a position among the active latents (the reference's indexing)."""
    local = np.var(batch_codes, axis=0, ddof=1)  # (D,)
    return int(np.argmin(local[active_dims] / global_variances[active_dims]))


def factor_vae_votes(batches, factor_index, global_variances, active_dims, num_factors: int) -> np.ndarray:
    """(V, B, D) batches and their fixed factors (V,) -> (K, D) vote counts, one vote at a time."""
    votes = np.zeros((num_factors, global_variances.shape[0]), dtype=np.int64)
    for batch, k in zip(batches, factor_index, strict=True):
        votes[k, factor_vae_vote(batch, global_variances, active_dims)] += 1
    return votes


def factor_vae_accuracies(training_votes, eval_votes, active_dims) -> dict:
    """Majority-vote classifier (argmax of each vote column) scored on both vote tables."""
    classifier = np.argmax(training_votes, axis=0)  # (D,)
    cols = np.arange(training_votes.shape[1])
    return {
        "train_accuracy": float(np.sum(training_votes[classifier, cols]) / np.sum(training_votes)),
        "eval_accuracy": float(np.sum(eval_votes[classifier, cols]) / np.sum(eval_votes)),
        "num_active_dims": len(active_dims),
    }


# --------------------------------------------------------------------------- beta_vae.py
def beta_vae_feature(codes1: np.ndarray, codes2: np.ndarray) -> np.ndarray:
    """(L, D) codes of the two members of L pairs -> (D,) mean absolute difference."""
    return np.mean(np.abs(codes1 - codes2), axis=0)


def beta_vae_accuracies(train_points, train_labels, eval_points, eval_labels, random_state=None) -> dict:
    """LogisticRegression at scikit-learn's defaults, fitted on the training points."""
    model = LogisticRegression(random_state=random_state)
    model.fit(train_points, train_labels)
    return {
        "train_accuracy": float(np.mean(model.predict(train_points) == train_labels)),
        "eval_accuracy": float(model.score(eval_points, eval_labels)),
    }


# --------------------------------------------------------------------------- modularity_explicitness.py
def modularity(mutual_information: np.ndarray) -> float:
    """Mean over latents of 1 - (sum of squared MI off the best factor) / (max squared MI (K - 1))."""
    sq = np.square(mutual_information)  # (D, K)
    top = np.max(sq, axis=1)  # (D,)
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = (np.sum(sq, axis=1) - top) / (top * (sq.shape[1] - 1.0))
    score = 1.0 - delta
    score[top == 0.0] = 0.0
    return float(np.mean(score))


def explicitness_per_factor(x_train, y_train, x_test, y_test) -> tuple[float, float]:
    """Train / test macro ROC-AUC of a default LogisticRegression, labels one-hot by MultiLabelBinarizer."""
    clf = LogisticRegression().fit(x_train, y_train)
    mlb = MultiLabelBinarizer()
    auc_train = roc_auc_score(mlb.fit_transform(y_train[:, None]), clf.predict_proba(x_train))
    auc_test = roc_auc_score(mlb.fit_transform(y_test[:, None]), clf.predict_proba(x_test))
    return float(auc_train), float(auc_test)


def modularity_explicitness(mus_train, ys_train, mus_test, ys_test, num_bins: int = 20) -> dict:
    mi = discrete_mutual_info(histogram_discretize(mus_train, num_bins), ys_train)  # (D, K)
    x_train, mean, std = normalize_data(mus_train)
    x_test, _, _ = normalize_data(mus_test, mean, std)
    k = ys_train.shape[1]
    train, test = np.zeros(k), np.zeros(k)
    for j in range(k):
        train[j], test[j] = explicitness_per_factor(x_train, ys_train[:, j], x_test, ys_test[:, j])
    return {
        "modularity_score": modularity(mi),
        "explicitness_score_train": float(np.mean(train)),
        "explicitness_score_test": float(np.mean(test)),
        "mutual_info": mi,
    }


# --------------------------------------------------------------------------- unsupervised_metrics.py
def gaussian_total_correlation(cov: np.ndarray) -> float:
    """1/2 (sum log diag(cov) - log det cov); NaN or inf for a zero variance, as the reference."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(0.5 * (np.sum(np.log(np.diag(cov))) - np.linalg.slogdet(cov)[1]))


def gaussian_wasserstein_correlation(cov: np.ndarray) -> float:
    """2 tr(cov) - 2 tr(sqrtm(cov * diag(cov)[:, None])), scipy's matrix square root."""
    root = scipy.linalg.sqrtm(cov * np.expand_dims(np.diag(cov), axis=1))
    return float(2 * np.trace(cov) - 2 * np.real(np.trace(root)))


def unsupervised_metrics(mus: np.ndarray, num_bins: int = 20) -> dict:
    """The four scores of (N, D) codes: covariance of the (D, N) transpose (np.cov's default ddof 1),
    and the off-diagonal mean of the discrete MI of the histogram-discretised codes with themselves."""
    mus = np.asarray(mus, dtype=np.float64).T  # (D, N), the reference's layout
    num_codes = mus.shape[0]
    cov_mus = np.atleast_2d(np.cov(mus))  # (D, D)
    scores = {"gaussian_total_correlation": gaussian_total_correlation(cov_mus)}
    scores["gaussian_wasserstein_correlation"] = gaussian_wasserstein_correlation(cov_mus)
    with np.errstate(divide="ignore", invalid="ignore"):
        scores["gaussian_wasserstein_correlation_norm"] = scores["gaussian_wasserstein_correlation"] / np.sum(
            np.diag(cov_mus)
        )
    mus_discrete = histogram_discretize(mus.T, num_bins)  # (N, D)
    mutual_info_matrix = discrete_mutual_info(mus_discrete, mus_discrete)  # (D, D)
    np.fill_diagonal(mutual_info_matrix, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        scores["mutual_info_score"] = float(np.sum(mutual_info_matrix) / (num_codes**2 - num_codes))
    return scores
