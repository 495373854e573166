"""Agreement of ``gatedvae.metrics`` with disentanglement_lib on the same arrays.

The oracle is ``tests/reference_impl.py``, a re-statement of disentanglement_lib's
``evaluation/metrics/{mig,sap_score,dci,factor_vae,beta_vae,modularity_explicitness,utils}.py``
without the sampling. Each test calls our function with the options that select the reference
behaviour and the oracle on the *same* rows: where our function splits one array by
``train_frac`` (the reference draws separate train and test sets), the test reproduces the split
from the same seed with :func:`gatedvae.metrics.utils.split_indices` and hands the two halves to
the oracle. FactorVAE and BetaVAE are compared on identical encoded batches / feature arrays.

Test arrays (``CASES``): N = 1000 rows, K = 4 discrete factors with (2, 3, 4, 5) classes, and
codes that are perfect (the factors themselves), rotated (a random orthogonal mix), noisy
(factors + N(0, 0.7^2)) or perfect-ish with an extra constant latent. ``QUANTISED``: codes whose
values lie on histogram bin edges (dSprites' factor values used as codes, multiples of 1/3,
integers, codes rounded to 0.1), against dSprites-sized factors (3, 6, 40, 32, 32 classes).

Tolerances: 1e-12 where both sides do the same arithmetic; 1e-6 for DCI's D and C, whose only
difference is the reference's ``+ 1e-11`` inside the entropy (a documented deviation).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_impl as ref  # noqa: E402
from gatedvae.metrics import (  # noqa: E402
    beta_vae_score_from_features,
    dci_classifier,
    dci_from_importance,
    factor_vae_score_from_votes,
    factor_vae_votes,
    mig,
    mig_from_mutual_info,
    modularity_explicitness,
    sap,
    unsupervised_scores,
)
from gatedvae.metrics.beta_vae import beta_vae_features  # noqa: E402
from gatedvae.metrics.utils import discrete_entropy, discrete_mutual_info, discretize, seed_from, split_indices  # noqa: E402

SIZES = (2, 3, 4, 5)
N = 1000
CASES = ("perfect", "rotated", "noisy", "constant")
EXACT = 1e-12


def _arrays(kind: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    f = np.stack([rng.integers(0, s, N) for s in SIZES], axis=1).astype(np.float64)  # (N, K)
    if kind == "perfect":
        z = f.copy()  # (N, K)
    elif kind == "rotated":
        q, _ = np.linalg.qr(rng.normal(size=(len(SIZES), len(SIZES))))  # (K, K) orthogonal
        z = (f - f.mean(axis=0)) @ q  # (N, K)
    elif kind == "noisy":
        z = f + 0.7 * rng.normal(size=f.shape)  # (N, K)
    else:  # a constant latent next to informative ones
        z = np.concatenate([f + 0.2 * rng.normal(size=f.shape), np.zeros((N, 1))], axis=1)  # (N, K + 1)
    return z, f


def _split(seed: int):
    """The train/test rows our split-based metrics use for ``np.random.default_rng(seed)``."""
    return split_indices(np.random.default_rng(seed), N, 0.8)


# --------------------------------------------------------------------------- utils
@pytest.mark.parametrize("kind", CASES)
def test_discretize_entropy_and_mutual_info_match_reference(kind):
    """Our 0-based equal-width bins are the reference's np.digitize bins minus 1, cell for cell,
    including a constant column (np.histogram widens its range to (x - 0.5, x + 0.5); both put it
    in the same single bin) and values exactly on a bin edge (the integer-valued perfect codes)."""
    z, f = _arrays(kind)
    np.testing.assert_array_equal(discretize(z, 20), ref.histogram_discretize(z, 20) - 1)
    np.testing.assert_allclose(discrete_entropy(f), ref.discrete_entropy(f), rtol=0, atol=EXACT)
    binned = discretize(z, 20)
    np.testing.assert_allclose(discrete_mutual_info(binned, f), ref.discrete_mutual_info(binned, f), rtol=0, atol=EXACT)


DSPRITES = (3, 6, 40, 32, 32)
QUANTISED = ("ground_truth", "thirds", "integers", "rounded")


def _quantised(kind: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Codes (N, D) whose values sit on histogram bin edges, and dSprites-sized factors (N, 5)."""
    rng = np.random.default_rng(seed)
    f = np.stack([rng.integers(0, s, N) for s in DSPRITES], axis=1)  # (N, K)
    if kind == "ground_truth":  # dSprites' factor values as codes: the ground-truth baseline
        values = [np.arange(3.0), np.linspace(0.5, 1, 6), np.linspace(0, 2 * np.pi, 40)] + [np.linspace(0, 1, 32)] * 2
        z = np.stack([v[f[:, k]] for k, v in enumerate(values)], axis=1)  # (N, K)
    elif kind == "thirds":  # quantised codes and a constant latent
        z = np.concatenate([rng.integers(0, 7, size=(N, 4)) / 3.0, np.full((N, 1), 2.0)], axis=1)  # (N, 5)
    elif kind == "integers":  # factor classes as codes, and a 45-valued integer latent
        z = np.concatenate([f, rng.integers(0, 45, size=(N, 1))], axis=1).astype(np.float64)  # (N, 6)
    else:  # noisy codes rounded to one decimal
        z = np.round(f / np.array(DSPRITES) + 0.3 * rng.normal(size=f.shape), 1)  # (N, K)
    return z, f


def _floor_bins(z: np.ndarray, bins: int = 20) -> np.ndarray:
    """The discretiser before 0.3, ``floor((x - lo) / width)``: kept to show that these cases bite."""
    lo, hi = z.min(axis=0), z.max(axis=0)  # (D,)
    width = np.where(hi > lo, (hi - lo) / bins, 1.0)  # (D,)
    return np.clip(np.floor((z - lo) / width).astype(np.int64), 0, bins - 1)  # (N, D)


def test_discretize_matches_reference_on_bin_edges():
    """Values exactly on np.histogram's edges land in the reference's bin. The floor formula puts
    some of them in the neighbouring bin (dSprites' scale values, the 45-valued integers, the
    rounded codes) and moves MIG by ~1e-3 on the rounded codes; the reference and ours do not."""
    moved = {}
    for kind in QUANTISED:
        z, _ = _quantised(kind)
        theirs = ref.histogram_discretize(z, 20) - 1  # (N, D)
        np.testing.assert_array_equal(discretize(z, 20), theirs, err_msg=kind)
        moved[kind] = int(np.sum(_floor_bins(z) != theirs))
    assert moved["ground_truth"] > 0 and moved["integers"] > 0 and moved["rounded"] > 0, moved
    z, f = _quantised("rounded")
    floor_mig = mig_from_mutual_info(discrete_mutual_info(_floor_bins(z), f), discrete_entropy(f))["mig"]
    assert abs(floor_mig - ref.mig(z, f, num_bins=20)) > 1e-4


def test_discretize_where_the_reference_refuses():
    """np.histogram refuses a constant column of 1e17 (x - 0.5 == x: no distinct edges) and a
    range that overflows; ours scales such a column by a power of two first: one bin for the
    constant, the middle one as for any constant, and the order kept for the wide range."""
    big = np.column_stack([np.full(6, 1e17), np.full(6, 2.0)])  # (6, 2)
    with pytest.raises(ValueError):
        ref.histogram_discretize(big[:, :1])
    np.testing.assert_array_equal(discretize(big, 20), ref.histogram_discretize(np.full((6, 2), 2.0)) - 1)
    wide = np.array([[-1.5e308], [-1e308], [0.0], [1e308], [1.5e308]])  # (5, 1): hi - lo overflows
    with pytest.raises(ValueError), np.errstate(over="ignore", invalid="ignore"):
        ref.histogram_discretize(wide)
    np.testing.assert_array_equal(discretize(wide, 20), ref.histogram_discretize(wide / 2) - 1)  # [0, 3, 10, 16, 19]


@pytest.mark.parametrize("kind", QUANTISED)
def test_mig_and_modularity_match_reference_on_quantised_codes(kind):
    """MIG and modularity, the two metrics built on the discretiser, on codes with values on bin
    edges: equal to the reference to rounding."""
    z, f = _quantised(kind)
    assert abs(mig(z, f, np.random.default_rng(0))["mig"] - ref.mig(z, f, num_bins=20)) < EXACT
    seed, few = 5, f[:, :2]  # the 3- and 6-class factors: explicitness (not compared) fits quickly
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = modularity_explicitness(z, few, np.random.default_rng(seed), max_iter=20)
    tr, _ = _split(seed)
    mi = ref.discrete_mutual_info(ref.histogram_discretize(z[tr], 20), few[tr])  # (D, 2)
    np.testing.assert_allclose(ours["mutual_info"], mi, rtol=0, atol=EXACT)
    assert abs(ours["modularity"] - ref.modularity(mi)) < EXACT


# --------------------------------------------------------------------------- MIG
@pytest.mark.parametrize("kind", CASES)
def test_mig_matches_reference(kind):
    """mig.py ``compute_mig``: our defaults (bins=20) are the reference's configuration."""
    z, f = _arrays(kind)
    ours = mig(z, f, np.random.default_rng(0))["mig"]
    assert abs(ours - ref.mig(z, f, num_bins=20)) < EXACT


# --------------------------------------------------------------------------- SAP
@pytest.mark.parametrize("kind", CASES)
def test_sap_linear_svc_matches_reference(kind):
    """sap_score.py ``_compute_score_matrix`` (discrete): our defaults, ``classifier="linear_svc"``
    with ``svc_c=0.01`` (LinearSVC, C=0.01, balanced), are the reference's. ``"threshold"`` is an
    option that deliberately differs (docs/metrics.md)."""
    z, f = _arrays(kind)
    seed = 3
    ours = sap(z, f, np.random.default_rng(seed))
    tr, te = _split(seed)
    score, matrix = ref.sap(z[tr], f[tr], z[te], f[te], continuous_factors=False)
    np.testing.assert_allclose(ours["score_matrix"], matrix, rtol=0, atol=EXACT)
    assert abs(ours["sap"] - score) < EXACT


@pytest.mark.parametrize("kind", CASES)
def test_sap_continuous_matches_reference(kind):
    """sap_score.py, ``continuous_factors=True``: R^2 per pair on the training rows (all our rows)."""
    z, f = _arrays(kind)
    ours = sap(z, f, np.random.default_rng(0), continuous_factors=True)
    score, matrix = ref.sap(z, f, z, f, continuous_factors=True)
    np.testing.assert_allclose(ours["score_matrix"], matrix, rtol=0, atol=EXACT)
    assert abs(ours["sap"] - score) < EXACT


# --------------------------------------------------------------------------- DCI
@pytest.mark.parametrize("kind", CASES)
def test_dci_classifier_matches_reference(kind):
    """dci.py ``compute_dci``: our ``dci_classifier`` at its defaults (GradientBoostingClassifier()
    defaults; ``completeness`` is the factor-importance-weighted one).

    Same rows and the same ``random_state`` per factor (the seeds our function draws after the
    split): the trees then agree to rounding, and so do the importances and accuracies. Without a
    shared ``random_state`` the reference's ``None`` breaks ties between equally good splits
    differently and the importances move by up to ~1e-3. D and C differ only by the reference's
    ``scipy.stats.entropy(p + 1e-11)`` against our exact ``0 log 0 = 0``: below 1e-6.
    """
    z, f = _arrays(kind)
    seed = 4
    ours = dci_classifier(z, f, np.random.default_rng(seed))
    rng = np.random.default_rng(seed)
    tr, te = split_indices(rng, N, 0.8)
    seeds = [seed_from(rng) for _ in SIZES]  # our per-factor random_state, drawn after the split
    theirs = ref.dci(z[tr], f[tr], z[te], f[te], random_state=seeds)
    np.testing.assert_allclose(ours["importance"], theirs["importance"], rtol=0, atol=EXACT)
    assert ours["informativeness_train"] == theirs["informativeness_train"]
    assert ours["informativeness_test"] == theirs["informativeness_test"]
    assert abs(ours["disentanglement"] - theirs["disentanglement"]) < 1e-6
    assert abs(ours["completeness"] - theirs["completeness"]) < 1e-6


def test_dci_scores_epsilon_effect_on_sparse_importance():
    """The 1e-11 epsilon on hand-made importance matrices with exact zeros (the worst case: every
    zero entry contributes -1e-11 log 1e-11 ~ 2.5e-10 to the entropy), including a zero row
    (weight 0 in both) and an all-zero matrix (0 in both)."""
    mats = [
        np.eye(4),
        np.array([[0.9, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 0.0], [0.1, 0.0, 1.2]]),
        np.array([[0.3, 0.3], [0.0, 0.4], [0.0, 0.0]]),
        np.zeros((3, 2)),
    ]
    for r in mats:
        ours = dci_from_importance(r)
        assert abs(ours["disentanglement"] - ref.dci_disentanglement(r)) < 1e-6
        assert abs(ours["completeness_weighted"] - ref.dci_completeness(r)) < 1e-6


# --------------------------------------------------------------------------- modularity / explicitness
@pytest.mark.parametrize("kind", CASES)
def test_modularity_explicitness_matches_reference(kind):
    """modularity_explicitness.py: ``max_iter=100`` (scikit-learn's default, which the reference
    inherits; ours defaults to 1000) reproduces it. Modularity uses the MI of the training rows.

    Constant latent: the reference divides by its zero std (NaN, and LogisticRegression refuses
    NaN); ours only centres it, leaving an all-zero column whose L2-penalised coefficient stays 0.
    So the explicitness there is compared with the oracle on the codes without that column.
    """
    z, f = _arrays(kind)
    seed = 5
    ours = modularity_explicitness(z, f, np.random.default_rng(seed), max_iter=100)
    tr, te = _split(seed)
    theirs = ref.modularity_explicitness(z[tr], f[tr], z[te], f[te]) if kind != "constant" else None
    mi = ref.discrete_mutual_info(ref.histogram_discretize(z[tr]), f[tr])  # (D, K)
    np.testing.assert_allclose(ours["mutual_info"], mi, rtol=0, atol=EXACT)
    assert abs(ours["modularity"] - ref.modularity(mi)) < EXACT
    if kind == "constant":
        with np.errstate(divide="ignore", invalid="ignore"):
            x_tr, _, _ = ref.normalize_data(z[tr])
        assert np.isnan(x_tr[:, -1]).all()  # the reference would feed NaN to the classifier
        theirs = ref.modularity_explicitness(z[tr, :-1], f[tr], z[te, :-1], f[te])
    assert abs(ours["explicitness"] - theirs["explicitness_score_test"]) < 1e-9
    assert abs(ours["explicitness_train"] - theirs["explicitness_score_train"]) < 1e-9


# --------------------------------------------------------------------------- unsupervised
UNSUPERVISED_KEYS = (
    "gaussian_total_correlation",
    "gaussian_wasserstein_correlation",
    "gaussian_wasserstein_correlation_norm",
    "mutual_info_score",
)


def _ref_unsupervised(z: np.ndarray) -> dict:
    """The oracle's four scores; scipy warns that the covariance of a constant latent is singular."""
    import scipy.linalg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        return ref.unsupervised_metrics(z, num_bins=20)


def _assert_unsupervised_match(ours: dict, theirs: dict, keys=UNSUPERVISED_KEYS) -> None:
    """Total correlation and MI score: same arithmetic (1e-12, TC relative); the Wasserstein
    correlation: our eigenvalue form against scipy's sqrtm (relative 1e-9)."""
    for key in keys:
        tol = 1e-9 if "wasserstein" in key else EXACT
        assert ours[key] == pytest.approx(theirs[key], rel=tol, abs=EXACT), key


@pytest.mark.parametrize("kind", [*CASES, *QUANTISED])
def test_unsupervised_scores_match_reference(kind):
    """unsupervised_metrics.py on the same codes (20 bins, as its configs). A constant latent
    makes the reference's total correlation NaN (log 0); ours leaves that latent out, which is the
    reference's value on the other latents, and the Wasserstein scores are compared there too
    (scipy's sqrtm of the singular matrix is unreliable). Its MI score is compared with it in."""
    z = _arrays(kind)[0] if kind in CASES else _quantised(kind)[0]
    ours = unsupervised_scores(z, np.random.default_rng(0))
    live = np.ptp(z, axis=0) > 0  # (D,)
    _assert_unsupervised_match(ours, _ref_unsupervised(z[:, live]), UNSUPERVISED_KEYS[:3])
    assert ours["mutual_info_score"] == pytest.approx(_ref_unsupervised(z)["mutual_info_score"], abs=EXACT)
    if not live.all():
        assert np.isnan(ref.gaussian_total_correlation(np.cov(z, rowvar=False)))
    if kind in ("perfect", "thirds"):  # uncorrelated columns: exactly 0 in expectation, not in sample
        assert 0 < ours["gaussian_wasserstein_correlation_norm"] < 0.01


def test_unsupervised_scores_degenerate_codes():
    """Where the reference divides by zero: D = 1 (no pair: ``D^2 - D = 0``) and all-constant codes
    (``tr S = 0``) give NaN there; ours reports 0 for the MI score and the normalised Wasserstein
    correlation (no two latents share anything; docs/metrics.md). The Wasserstein correlation of one
    latent is 0 on both sides."""
    z = _arrays("noisy")[0][:, :1]  # (N, 1)
    ours, theirs = unsupervised_scores(z, np.random.default_rng(0)), _ref_unsupervised(z)
    assert np.isnan(theirs["mutual_info_score"]) and ours["mutual_info_score"] == 0.0
    assert ours["gaussian_mean_mutual_info"] == 0.0
    assert ours["gaussian_wasserstein_correlation"] == pytest.approx(
        theirs["gaussian_wasserstein_correlation"], abs=1e-12
    )
    flat = np.full((50, 3), 1.5)
    ours, theirs = unsupervised_scores(flat, np.random.default_rng(0)), _ref_unsupervised(flat)
    assert np.isnan(theirs["gaussian_wasserstein_correlation_norm"])
    assert ours["gaussian_wasserstein_correlation"] == ours["gaussian_wasserstein_correlation_norm"] == 0.0
    assert ours["mutual_info_score"] == theirs["mutual_info_score"] == 0.0


# --------------------------------------------------------------------------- FactorVAE
def _factor_vae_batches(kind: str, n_votes: int, seed: int):
    """Encoded fixed-factor batches (V, B, D), their fixed factors and the global variances."""
    rng = np.random.default_rng(seed)
    k_fac, b = len(SIZES), 64
    mix = np.eye(k_fac)
    if kind == "rotated":
        mix, _ = np.linalg.qr(rng.normal(size=(k_fac, k_fac)))

    def encode(f):  # (..., K) -> (..., D)
        z = f @ mix
        if kind in ("noisy", "constant"):
            z = z + 0.7 * rng.normal(size=z.shape)
        if kind == "constant":
            z = np.concatenate([z, np.zeros(z.shape[:-1] + (1,))], axis=-1)
        return z

    sizes = np.array(SIZES)
    glob = encode(rng.integers(0, sizes, size=(2000, k_fac)).astype(float))  # (2000, D)
    global_var = np.var(glob, axis=0, ddof=1)  # (D,)
    fixed = rng.integers(0, k_fac, size=n_votes)  # (V,)
    f = rng.integers(0, sizes, size=(n_votes, b, k_fac)).astype(float)  # (V, B, K)
    f[np.arange(n_votes), :, fixed] = f[np.arange(n_votes), 0, fixed][:, None]
    return encode(f), fixed, global_var  # (V, B, D), (V,), (D,)


@pytest.mark.parametrize("kind", CASES)
def test_factor_vae_votes_and_accuracy_match_reference(kind):
    """factor_vae.py ``_generate_training_sample`` / ``compute_factor_vae`` on the same batches,
    ``prune_dims.threshold = 0.05`` (disentanglement_lib's configs; our default).

    Deliberate deviation: our vote table puts a vote in the latent's real column, the reference in
    its position among active latents. Columns are relabelled consistently, so the tables agree
    after mapping and both accuracies are identical.
    """
    codes_tr, fixed_tr, gv = _factor_vae_batches(kind, 300, seed=7)
    codes_ev, fixed_ev, _ = _factor_vae_batches(kind, 150, seed=8)
    active = ref.prune_dims(gv, 0.05)  # (D,) bool
    act = np.flatnonzero(active)
    k_fac = len(SIZES)
    ours_tr = factor_vae_votes(codes_tr, fixed_tr, gv, active, k_fac)  # (K, D)
    ours_ev = factor_vae_votes(codes_ev, fixed_ev, gv, active, k_fac)
    ref_tr = ref.factor_vae_votes(codes_tr, fixed_tr, gv, active, k_fac)  # (K, D), active positions
    ref_ev = ref.factor_vae_votes(codes_ev, fixed_ev, gv, active, k_fac)
    np.testing.assert_array_equal(ours_tr[:, act], ref_tr[:, : act.size])
    np.testing.assert_array_equal(ours_ev[:, act], ref_ev[:, : act.size])
    ours = factor_vae_score_from_votes(ours_tr, ours_ev)
    theirs = ref.factor_vae_accuracies(ref_tr, ref_ev, active)
    assert abs(ours["train_accuracy"] - theirs["train_accuracy"]) < EXACT
    assert abs(ours["eval_accuracy"] - theirs["eval_accuracy"]) < EXACT
    if kind == "constant":
        assert not active[-1]  # std 0 < 0.05: pruned by both


def test_factor_vae_constant_latent_without_pruning():
    """With the reference's gin default ``threshold = 0`` a constant latent stays active, its ratio
    is 0/0 = NaN and ``np.argmin`` returns the NaN's index: every vote goes to the constant latent
    (accuracy = share of the most frequent factor). Ours never activates a zero-variance latent."""
    codes, fixed, gv = _factor_vae_batches("constant", 200, seed=9)
    with np.errstate(invalid="ignore"):
        ref_votes = ref.factor_vae_votes(codes, fixed, gv, ref.prune_dims(gv, 0.0), len(SIZES))
    assert ref_votes[:, -1].sum() == 200
    ours_active = (np.sqrt(gv) >= 0.0) & (gv > 0)  # what factor_vae_score uses at prune_threshold=0
    ours = factor_vae_votes(codes, fixed, gv, ours_active, len(SIZES))
    assert ours[:, -1].sum() == 0


# --------------------------------------------------------------------------- BetaVAE
def _beta_vae_points(kind: str, n_points: int, seed: int):
    """Feature arrays (V, D) and labels (V,) from L = 64 pairs per point, plus the raw pair codes."""
    rng = np.random.default_rng(seed)
    k_fac, pairs = len(SIZES), 64
    mix = np.eye(k_fac)
    if kind == "rotated":
        mix, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(k_fac, k_fac)))
    sizes = np.array(SIZES)
    labels = rng.integers(0, k_fac, size=n_points)  # (V,)
    f1 = rng.integers(0, sizes, size=(n_points, pairs, k_fac)).astype(float)  # (V, L, K)
    f2 = rng.integers(0, sizes, size=(n_points, pairs, k_fac)).astype(float)  # (V, L, K)
    f2[np.arange(n_points), :, labels] = f1[np.arange(n_points), :, labels]
    z1, z2 = f1 @ mix, f2 @ mix  # (V, L, D)
    if kind in ("noisy", "constant"):
        z1 = z1 + 0.7 * rng.normal(size=z1.shape)
        z2 = z2 + 0.7 * rng.normal(size=z2.shape)
    if kind == "constant":
        z1 = np.concatenate([z1, np.zeros(z1.shape[:-1] + (1,))], axis=-1)  # (V, L, D + 1)
        z2 = np.concatenate([z2, np.zeros(z2.shape[:-1] + (1,))], axis=-1)
    return z1, z2, labels


@pytest.mark.parametrize("kind", CASES)
def test_beta_vae_matches_reference(kind):
    """beta_vae.py ``compute_beta_vae_sklearn`` on identical features: ``classifier="logistic"``,
    ``c=1``, ``max_iter=100`` (LogisticRegression() defaults, as the reference) reproduce it."""
    z1, z2, y_tr = _beta_vae_points(kind, 400, seed=11)
    e1, e2, y_ev = _beta_vae_points(kind, 200, seed=12)
    x_tr = beta_vae_features(z1, z2)  # (V, D)
    x_ev = beta_vae_features(e1, e2)
    np.testing.assert_allclose(x_tr[0], ref.beta_vae_feature(z1[0], z2[0]), rtol=0, atol=EXACT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs may stop at 100 iterations, in both
        theirs = ref.beta_vae_accuracies(x_tr, y_tr, x_ev, y_ev)
    ours = beta_vae_score_from_features(
        x_tr, y_tr, x_ev, y_ev, np.random.default_rng(0), classifier="logistic", c=1.0, max_iter=100
    )
    assert abs(ours["train_accuracy"] - theirs["train_accuracy"]) < EXACT
    assert abs(ours["eval_accuracy"] - theirs["eval_accuracy"]) < EXACT
