"""Metrics: perfect, rotated, duplicated, constant and noise codes with value bounds; closed forms;
independent computations; reproducibility; one-line errors on bad input.

The toy factor space has sizes (3, 6, 10, 8, 8) (a dSprites-like mix of class counts); every
metric runs with its "fast" preset on a few thousand rows.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gatedvae.errors import ConfigError, DataError, GatedVAEError
from gatedvae.metrics import (
    KINDS,
    METRICS,
    PRESETS,
    active_units,
    beta_vae_score,
    compute,
    dci,
    dci_classifier,
    dci_from_importance,
    discrete_entropy,
    discrete_mutual_info,
    discretize,
    factor_vae_score,
    factor_vae_score_from_votes,
    factor_vae_votes,
    gaussian_mutual_info,
    gaussian_total_correlation,
    gaussian_wasserstein_correlation,
    group_importance,
    kl_per_dim,
    mig,
    preset_kwargs,
    sap,
    spearman_similarity,
    udr,
    udr_pair_score,
)

SIZES = (3, 6, 10, 8, 8)
N = 3000
CODE_KINDS = ("perfect", "rotated", "duplicated", "constant", "noise")


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(autouse=True, scope="module")
def _single_thread_blas():
    """The fits here are small; multi-threaded BLAS only adds contention on a shared 2-core box."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def make_codes(n: int = N, seed: int = 0):
    """Factors (n, 5) of SIZES and five kinds of codes built from them."""
    rng = np.random.default_rng(seed)
    sizes = np.array(SIZES)
    factors = rng.integers(0, sizes, size=(n, sizes.size))  # (n, K)
    fz = (factors - factors.mean(0)) / factors.std(0)  # (n, K)
    perm = rng.permutation(sizes.size)
    scale = rng.uniform(0.5, 2.0, sizes.size)
    shift = rng.normal(size=sizes.size)
    perfect = factors[:, perm] * scale + shift  # permuted, affinely rescaled latents
    q, _ = np.linalg.qr(rng.normal(size=(sizes.size, sizes.size)))  # random rotation
    rotated = fz @ q
    duplicated = np.concatenate(  # each factor in two latents (two noisy copies)
        [fz + 0.05 * rng.normal(size=fz.shape), fz + 0.05 * rng.normal(size=fz.shape)], axis=1
    )
    constant = np.concatenate([perfect[:, :2], np.full((n, 1), 3.0), perfect[:, 2:]], axis=1)  # latent 2 dead
    noise = rng.normal(size=(n, sizes.size))
    codes = dict(perfect=perfect, rotated=rotated, duplicated=duplicated, constant=constant, noise=noise)
    return factors, codes


@pytest.fixture(scope="module")
def data():
    return make_codes()


def _run(name, codes, factors, seed=1, **kw):
    return compute(name, codes, factors, np.random.default_rng(seed), preset="fast", **kw)


# Bounds per array metric and code kind: (result key, low, high). Derivations:
# * duplicated: two equal-weight latents per factor in D=10 give completeness 1 - log 2 / log 10 = 0.70,
#   and MIG / SAP ~0 (the top two latents are equally good).
# * SAP (default classifier="linear_svc", disentanglement_lib's) on perfect codes ~0.3: a one-vs-rest
#   linear rule on one axis isolates few of a factor's C_k classes (all 3 of the 3-class factor,
#   accuracy 1; 0.3-0.5 for 6-10 classes), minus the best unrelated latent's ~1/C_k. Measured
#   0.31-0.34 over three seeds. With classifier="threshold" it is mean_k (1 - 1/C_k) = 0.82
#   (test_sap_linear_svc_is_the_reference_choice).
# * constant: the dead latent costs modularity 1/6 (disentanglement_lib scores a silent latent 0).
C_DUP = 1.0 - math.log(2) / math.log(10)
EXPECT = {
    "dci_lasso": {
        "perfect": [("disentanglement", 0.9, 1.0), ("completeness", 0.9, 1.0), ("informativeness", 0.0, 0.1)],
        "rotated": [("disentanglement", 0.0, 0.3), ("completeness", 0.0, 0.3), ("informativeness", 0.0, 0.1)],
        "duplicated": [("disentanglement", 0.9, 1.0), ("completeness", C_DUP - 0.05, C_DUP + 0.05)],
        "constant": [("disentanglement", 0.9, 1.0), ("completeness", 0.9, 1.0)],
        # Lasso on noise: informativeness says "nothing"; D is computed from a few spurious
        # coefficients of size ~1e-3 and is not meaningful (see test_dci_lasso_noise_importance_is_tiny).
        "noise": [("informativeness", 0.95, 1.1)],
    },
    "dci_random_forest": {
        "perfect": [("disentanglement", 0.9, 1.0), ("completeness", 0.9, 1.0), ("informativeness", 0.0, 0.1)],
        "rotated": [("disentanglement", 0.0, 0.6), ("completeness", 0.0, 0.6)],
        "duplicated": [("disentanglement", 0.9, 1.0), ("completeness", C_DUP - 0.05, C_DUP + 0.05)],
        "constant": [("disentanglement", 0.9, 1.0), ("completeness", 0.9, 1.0)],
        "noise": [("disentanglement", 0.0, 0.3), ("completeness", 0.0, 0.3), ("informativeness", 0.95, 1.2)],
    },
    "dci_classifier": {
        "perfect": [("disentanglement", 0.9, 1.0), ("completeness", 0.9, 1.0), ("informativeness_test", 0.95, 1.0)],
        "rotated": [("disentanglement", 0.0, 0.6), ("completeness", 0.0, 0.6)],
        "duplicated": [("disentanglement", 0.9, 1.0), ("completeness", C_DUP - 0.07, C_DUP + 0.07)],
        "constant": [("disentanglement", 0.9, 1.0), ("completeness", 0.9, 1.0)],
        "noise": [("disentanglement", 0.0, 0.3), ("informativeness_test", 0.0, 0.3)],
    },
    "mig": {
        "perfect": [("mig", 0.9, 1.0)],
        "rotated": [("mig", 0.0, 0.4)],
        "duplicated": [("mig", 0.0, 0.1)],
        "constant": [("mig", 0.9, 1.0)],
        "noise": [("mig", 0.0, 0.05)],
    },
    "sap": {
        "perfect": [("sap", 0.25, 0.45)],
        "rotated": [("sap", 0.0, 0.2)],
        "duplicated": [("sap", 0.0, 0.05)],
        "constant": [("sap", 0.25, 0.45)],
        "noise": [("sap", 0.0, 0.05)],
    },
    "modularity_explicitness": {
        "perfect": [("modularity", 0.95, 1.0), ("explicitness", 0.99, 1.0)],
        "rotated": [("modularity", 0.0, 0.95), ("explicitness", 0.95, 1.0)],
        "duplicated": [("modularity", 0.95, 1.0), ("explicitness", 0.99, 1.0)],
        "constant": [("modularity", 5 / 6 - 0.03, 5 / 6 + 0.01), ("explicitness", 0.99, 1.0)],
        "noise": [("explicitness", 0.45, 0.55)],
    },
}
ARRAY_METRICS = sorted(n for n, k in KINDS.items() if k == "arrays")
# The classifier DCI trains D x K x 100 boosted trees; fewer rows keep the suite quick.
OVERRIDES = {"dci_classifier": {"max_samples": 1500}}


def test_every_array_metric_has_expectations():
    assert sorted(EXPECT) == ARRAY_METRICS
    assert set(METRICS) == set(KINDS) == set(PRESETS)
    for name, presets in PRESETS.items():
        assert set(presets) == {"default", "fast"}, name


def _all_finite(result) -> bool:
    for value in result.values():
        if isinstance(value, dict):
            if not _all_finite(value):
                return False
        elif isinstance(value, (int, float, np.ndarray, np.floating, np.integer)):
            if not np.all(np.isfinite(np.asarray(value, dtype=np.float64))):
                return False
    return True


@pytest.mark.parametrize("kind", CODE_KINDS)
@pytest.mark.parametrize("name", ARRAY_METRICS)
def test_array_metric_bounds(name, kind, data):
    factors, codes = data
    result = _run(name, codes[kind], factors, **OVERRIDES.get(name, {}))
    assert _all_finite(result), f"{name} on {kind} codes produced NaN/inf"
    for key, lo, hi in EXPECT[name][kind]:
        assert lo <= result[key] <= hi, (
            f"{name}[{key}] on {kind} codes = {result[key]:.4f}, expected [{lo:.3f}, {hi:.3f}]"
        )


@pytest.mark.parametrize("name", ARRAY_METRICS)
def test_array_metric_reproducible(name, data):
    factors, codes = data
    kw = {"max_samples": 600, "n_estimators": 10} if name == "dci_classifier" else {}
    a = _run(name, codes["rotated"], factors, seed=7, **kw)
    b = _run(name, codes["rotated"], factors, seed=7, **kw)
    _assert_same(a, b)


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            _assert_same(a[key], b[key])
        elif isinstance(a[key], list):
            for x, y in zip(a[key], b[key], strict=True):
                np.testing.assert_array_equal(x, y)
        else:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# --------------------------------------------------------------------------- bad input
def _one_line(excinfo) -> None:
    msg = str(excinfo.value)
    assert msg and "\n" not in msg, msg
    assert isinstance(excinfo.value, GatedVAEError)


@pytest.mark.parametrize("name", ARRAY_METRICS)
def test_array_metric_bad_input(name, data):
    factors, codes = data
    good = codes["perfect"][:200]
    f = factors[:200]
    rng = np.random.default_rng(0)
    bad_cases = [
        (good[:, 0], f, DataError),  # 1-D codes
        (good, f[:150], DataError),  # row mismatch
        (np.where(np.arange(200)[:, None] == 3, np.nan, good), f, DataError),  # NaN in codes
        (good[:1], f[:1], DataError),  # one sample
        (good, np.concatenate([f, np.zeros((200, 1))], axis=1), DataError),  # constant factor column
        (good, f.astype(float) + np.where(np.arange(200)[:, None] == 0, np.inf, 0.0), DataError),  # inf factor
    ]
    for c, ff, err in bad_cases:
        with pytest.raises(err) as excinfo:
            METRICS[name](c, ff, rng)
        _one_line(excinfo)
    with pytest.raises(ConfigError) as excinfo:
        METRICS[name](good, f, None)  # no global RNG
    _one_line(excinfo)
    with pytest.raises(ConfigError) as excinfo:
        compute(name, good, f, rng, preset="fastest")
    _one_line(excinfo)
    assert "fast" in str(excinfo.value)  # suggests the nearest preset


def test_unknown_metric_and_option_are_config_errors(data):
    factors, codes = data
    rng = np.random.default_rng(0)
    with pytest.raises(ConfigError, match="did you mean 'mig'"):
        preset_kwargs("mig2")
    with pytest.raises(ConfigError, match="regressor"):
        dci(codes["perfect"], factors, rng, regressor="svm")
    with pytest.raises(ConfigError, match="train_frac"):
        dci(codes["perfect"], factors, rng, train_frac=1.5)
    with pytest.raises(ConfigError, match="classifier"):
        sap(codes["perfect"], factors, rng, classifier="knn")
    with pytest.raises(ConfigError, match="bins"):
        mig(codes["perfect"], factors, rng, bins=1)
    with pytest.raises(DataError, match="too few samples"):
        dci(codes["perfect"][:2], factors[:2], rng, train_frac=0.8)  # 2 train rows, 0 test rows


# --------------------------------------------------------------------------- DCI specifics
def test_dci_from_importance_closed_forms():
    eye = dci_from_importance(np.eye(4))
    assert eye["disentanglement"] == pytest.approx(1.0) and eye["completeness"] == pytest.approx(1.0)
    uniform = dci_from_importance(np.ones((4, 4)))
    assert uniform["disentanglement"] == pytest.approx(0.0, abs=1e-12)
    assert uniform["completeness"] == pytest.approx(0.0, abs=1e-12)
    # Latent 0 splits evenly over 2 of K=4 factors: D_0 = 1 - log2/log4 = 0.5.
    r = np.array([[1.0, 1.0, 0, 0], [0, 0, 2.0, 0], [0, 0, 0, 0]])
    s = dci_from_importance(r)
    np.testing.assert_allclose(s["disentanglement_per_latent"], [0.5, 1.0, 0.0])
    np.testing.assert_allclose(s["latent_weights"], [0.5, 0.5, 0.0])
    assert s["disentanglement"] == pytest.approx(0.75)
    # Factor 3 has no importance: completeness 0, weight 0; the others are single-latent (1).
    np.testing.assert_allclose(s["completeness_per_factor"], [1.0, 1.0, 1.0, 0.0])
    assert s["completeness"] == pytest.approx(0.75) and s["completeness_weighted"] == pytest.approx(1.0)


@settings(max_examples=60, deadline=None)
@given(
    arrays(
        np.float64,
        st.tuples(st.integers(1, 6), st.integers(1, 6)),
        elements=st.one_of(st.just(0.0), st.floats(1e-6, 10.0)),
    ),
    st.randoms(use_true_random=False),
)
def test_importance_scores_bounded_and_permutation_invariant(r, prng):
    """For any non-negative importance matrix: scores in [0, 1], never NaN, and invariant to the order
    of latents and factors; the UDR pair score likewise (on a square crop)."""
    s = dci_from_importance(r)
    for key in ("disentanglement", "completeness", "completeness_weighted"):
        assert 0.0 <= s[key] <= 1.0 + 1e-12 and math.isfinite(s[key])
    rows = list(range(r.shape[0]))
    cols = list(range(r.shape[1]))
    prng.shuffle(rows)
    prng.shuffle(cols)
    t = dci_from_importance(r[rows][:, cols])
    assert t["disentanglement"] == pytest.approx(s["disentanglement"], abs=1e-12)
    assert t["completeness"] == pytest.approx(s["completeness"], abs=1e-12)
    u = udr_pair_score(np.minimum(r, 1.0))
    assert 0.0 <= u <= 1.0 + 1e-12
    assert udr_pair_score(np.minimum(r, 1.0)[rows][:, cols]) == pytest.approx(u, abs=1e-12)


def test_dci_zero_importance_gives_zeros_not_nan():
    s = dci_from_importance(np.zeros((3, 2)))
    assert s["disentanglement"] == 0.0 and s["completeness"] == 0.0 and s["completeness_weighted"] == 0.0
    assert _all_finite(s)
    one_factor = dci_from_importance(np.array([[0.5], [0.0]]))  # K = 1: log base 1 must not divide by 0
    assert one_factor["disentanglement"] == 1.0 and _all_finite(one_factor)


def test_dci_constant_latent_has_zero_weight(data):
    factors, codes = data
    for name in ("dci_lasso", "dci_random_forest"):
        r = _run(name, codes["constant"], factors)
        assert r["importance"].shape == (6, 5)
        assert np.all(r["importance"][2] == 0), name
        assert r["latent_weights"][2] == 0 and r["disentanglement_per_latent"][2] == 0


def test_dci_lasso_noise_importance_is_tiny(data):
    """The flaw the Lasso form inherits: on pure noise, the *normalised* scores come from spurious
    coefficients; their total importance is orders of magnitude below that of real codes."""
    factors, codes = data
    noise = _run("dci_lasso", codes["noise"], factors)["importance"].sum()
    perfect = _run("dci_lasso", codes["perfect"], factors)["importance"].sum()
    assert noise < 0.02 * perfect


def test_dci_nrmse_is_rmse_in_train_std_units():
    rng = np.random.default_rng(3)
    v = rng.normal(size=(4000, 1))
    z = v + 0.5 * rng.normal(size=(4000, 1))  # R^2 = 0.8: best linear NRMSE = sqrt(0.2)
    r = dci(z, v, np.random.default_rng(0), regressor="lasso", alpha=1e-4)
    assert r["informativeness"] == pytest.approx(math.sqrt(0.2), abs=0.03)


def test_partition_dci_groups_latents():
    """Gated-VAE setting: M=8 latents in 4 partitions of 2; factor pairs share a partition."""
    factors, codes = make_codes(n=2000, seed=4)
    z = codes["duplicated"][:, [0, 5, 1, 6, 2, 7, 3, 8]]  # (N, 8): copies of factors 0..3, adjacent
    units = [[0, 1], [2, 3], [4, 5], [6, 7]]
    r = dci(z, factors[:, :4], np.random.default_rng(0), units=units)
    assert r["completeness"] == pytest.approx(1 - math.log(2) / math.log(8), abs=0.05)  # split over two latents
    part = r["partition"]
    assert part["completeness"] > 0.95 and part["disentanglement"] > 0.95
    assert part["importance"].shape == (4, 4)
    np.testing.assert_allclose(part["importance"], group_importance(r["importance"], units))
    # Two factors in one partition (x and y position): disentanglement of that unit is 1 - log2/log K.
    r2 = dci(z, factors[:, :4], np.random.default_rng(0), units=[[0, 1], [2, 3], [4, 5, 6, 7]])
    assert r2["partition"]["disentanglement_per_unit"][2] == pytest.approx(1 - math.log(2) / math.log(4), abs=0.05)
    for bad in ([[0, 1], [1, 2]], [[0, 9]], [], [[]]):
        with pytest.raises(ConfigError):
            dci(z, factors[:, :4], np.random.default_rng(0), units=bad)


def test_dci_classifier_partition_and_keys():
    factors, codes = make_codes(n=1200, seed=5)
    r = dci_classifier(codes["perfect"], factors, np.random.default_rng(0), n_estimators=10, units=[[0, 1], [2, 3, 4]])
    assert {"informativeness_train", "informativeness_test", "completeness_mean"} <= set(r)
    assert "informativeness" not in r  # accuracy, not NRMSE: a different key on purpose
    assert r["partition"]["importance"].shape == (2, 5)


# --------------------------------------------------------------------------- MIG specifics
def test_discretize_equal_width():
    x = np.array([[0.0, 5.0], [1.0, 5.0], [2.0, 5.0], [10.0, 5.0]])
    b = discretize(x, bins=5)
    np.testing.assert_array_equal(b[:, 0], [0, 0, 1, 4])  # width 2; the max lands in the last bin
    # constant column: one bin, the middle one, as np.histogram's range (4.5, 5.5) gives it
    np.testing.assert_array_equal(b[:, 1], [2, 2, 2, 2])
    assert b.dtype == np.int64


def test_mutual_info_matches_sklearn(data):
    from sklearn.metrics import mutual_info_score

    factors, codes = data
    binned = discretize(codes["rotated"], 20)
    m = discrete_mutual_info(binned, factors)
    assert m.shape == (5, 5)
    for i in range(5):
        for k in range(5):
            assert m[i, k] == pytest.approx(mutual_info_score(factors[:, k], binned[:, i]), abs=1e-10)
    h = discrete_entropy(factors)
    np.testing.assert_allclose(h, [mutual_info_score(factors[:, k], factors[:, k]) for k in range(5)])


def test_mig_axes_per_latent_factor_pair():
    """One informative latent for factor 0 only, placed last: the MI matrix is (D, K) and the gap is
    read down each factor's column (the transposition trap)."""
    rng = np.random.default_rng(0)
    f = rng.integers(0, [4, 5], size=(3000, 2))
    z = np.column_stack([rng.normal(size=3000), rng.normal(size=3000), f[:, 0]])  # (N, 3)
    r = mig(z, f, np.random.default_rng(0))
    assert r["mutual_info"].shape == (3, 2)
    assert r["top_latent"][0] == 2
    assert r["mig_per_factor"][0] > 0.95 and r["mig_per_factor"][1] < 0.05
    single = mig(z[:, 2:], f, np.random.default_rng(0))  # D = 1: runner-up taken as 0
    assert single["mig_per_factor"][0] > 0.95


# --------------------------------------------------------------------------- SAP specifics
def test_sap_linear_svc_is_the_reference_choice(data):
    """The default is disentanglement_lib's LinearSVC; ``"threshold"`` stays an option, and on a
    perfect code scores mean_k (1 - 1/C_k) = 0.82 where one linear rule per axis cannot."""
    assert PRESETS["sap"]["default"]["classifier"] == PRESETS["sap"]["fast"]["classifier"] == "linear_svc"
    assert inspect.signature(sap).parameters["classifier"].default == "linear_svc"
    factors, codes = data
    r = sap(codes["perfect"][:1500], factors[:1500], np.random.default_rng(0))
    svc = sap(codes["perfect"][:1500], factors[:1500], np.random.default_rng(0), classifier="linear_svc", svc_c=0.01)
    np.testing.assert_array_equal(r["score_matrix"], svc["score_matrix"])
    assert r["score_matrix"].shape == (5, 5) and _all_finite(r)
    thr = sap(codes["perfect"][:1500], factors[:1500], np.random.default_rng(0), classifier="threshold")
    assert 0.7 <= thr["sap"] <= 0.9
    assert thr["sap"] > r["sap"] + 0.3  # a 1-D linear rule cannot isolate middle classes


def test_sap_continuous_is_squared_correlation():
    rng = np.random.default_rng(1)
    v = rng.normal(size=(5000, 2))
    z = np.column_stack([v[:, 0] + 0.5 * rng.normal(size=5000), v[:, 1], np.ones(5000)])
    r = sap(z, v, np.random.default_rng(0), continuous_factors=True)
    assert r["score_matrix"][0, 0] == pytest.approx(np.corrcoef(z[:, 0], v[:, 0])[0, 1] ** 2)
    assert r["score_matrix"][2].tolist() == [0.0, 0.0]  # a constant latent scores 0


# --------------------------------------------------------------------------- FactorVAE / BetaVAE
_MU = (np.array(SIZES) - 1) / 2
_SD = np.sqrt((np.array(SIZES) ** 2 - 1) / 12)
_Q = np.linalg.qr(np.random.default_rng(5).normal(size=(5, 5)))[0]


def _repr_fns(noise_seed: int = 9):
    noise_rng = np.random.default_rng(noise_seed)
    return {
        "perfect": lambda f: f * np.array([1.0, 0.5, 2.0, 1.0, 3.0]),
        "rotated": lambda f: ((f - _MU) / _SD) @ _Q,
        "duplicated": lambda f: np.concatenate([f, 2.0 * f], axis=1).astype(float),
        "constant": lambda f: np.concatenate([f, np.zeros((len(f), 1))], axis=1).astype(float),
        "noise": lambda f: noise_rng.normal(size=(len(f), 5)),
    }


SAMPLER_EXPECT = {  # (key, low, high); chance is 1/5
    "factor_vae": {
        "perfect": [("eval_accuracy", 1.0, 1.0), ("train_accuracy", 1.0, 1.0)],
        "rotated": [("eval_accuracy", 0.0, 0.95)],
        "duplicated": [("eval_accuracy", 1.0, 1.0)],
        "constant": [("eval_accuracy", 1.0, 1.0), ("num_active_dims", 5, 5)],
        "noise": [("eval_accuracy", 0.0, 0.35)],
    },
    "beta_vae": {
        "perfect": [("eval_accuracy", 1.0, 1.0), ("train_accuracy", 1.0, 1.0)],
        "rotated": [("eval_accuracy", 0.5, 0.99)],  # the metric is weak against rotations
        "duplicated": [("eval_accuracy", 1.0, 1.0)],
        "constant": [("eval_accuracy", 1.0, 1.0)],
        "noise": [("eval_accuracy", 0.0, 0.35)],
    },
}
SAMPLER_METRICS = sorted(n for n, k in KINDS.items() if k == "sampler")


def test_every_sampler_metric_has_expectations():
    assert sorted(SAMPLER_EXPECT) == SAMPLER_METRICS


@pytest.mark.parametrize("kind", CODE_KINDS)
@pytest.mark.parametrize("name", SAMPLER_METRICS)
def test_sampler_metric_bounds(name, kind):
    result = compute(name, _repr_fns()[kind], SIZES, np.random.default_rng(1), preset="fast")
    assert _all_finite(result)
    for key, lo, hi in SAMPLER_EXPECT[name][kind]:
        assert lo <= result[key] <= hi, f"{name}[{key}] on {kind} = {result[key]:.4f}, expected [{lo}, {hi}]"


@pytest.mark.parametrize("name", SAMPLER_METRICS)
def test_sampler_metric_reproducible(name):
    a = compute(name, _repr_fns()["noise"], SIZES, np.random.default_rng(3), preset="fast", n_train=300, n_eval=100)
    b = compute(name, _repr_fns()["noise"], SIZES, np.random.default_rng(3), preset="fast", n_train=300, n_eval=100)
    _assert_same(a, b)


def test_beta_vae_linear_svm_option():
    r = beta_vae_score(
        _repr_fns()["perfect"], SIZES, np.random.default_rng(0), n_train=500, n_eval=200, classifier="linear_svc"
    )
    assert r["eval_accuracy"] == 1.0 and r["chance"] == pytest.approx(0.2)


def test_factor_vae_votes_and_majority_classifier():
    votes = factor_vae_score_from_votes(np.array([[10, 0, 0], [0, 8, 2]]), np.array([[5, 0, 0], [0, 3, 2]]))
    assert votes["classifier"].tolist() == [0, 1, 1]
    assert votes["train_accuracy"] == 1.0 and votes["eval_accuracy"] == 1.0
    mixed = factor_vae_score_from_votes(np.array([[5, 5], [5, 5]]), np.array([[5, 5], [5, 5]]))
    assert mixed["train_accuracy"] == 0.5
    # Pure core: batch 0 fixes factor 1 and latent 2 is still; latent 1 is pruned (inactive).
    codes = np.zeros((1, 4, 3))
    codes[0, :, 0] = [0, 1, 2, 3]
    codes[0, :, 1] = 0.0
    codes[0, :, 2] = [0, 0, 0, 0.1]
    v = factor_vae_votes(codes, np.array([1]), np.array([1.0, 0.0, 1.0]), np.array([True, False, True]), 2)
    assert v.tolist() == [[0, 0, 0], [0, 0, 1]]  # vote recorded against the real latent index


def test_factor_vae_prunes_dead_latents_and_size_one_factors():
    def fn(f):
        return np.concatenate([np.zeros((len(f), 1)), f[:, 1:] * 1.0], axis=1)  # latent 0 dead

    r = factor_vae_score(fn, (1, 3, 6, 10), np.random.default_rng(0), n_train=300, n_eval=100, n_variance=1000)
    assert r["active"].tolist() == [False, True, True, True]
    assert r["train_votes"][0].sum() == 0  # the size-1 factor is never the fixed one
    assert r["eval_accuracy"] == 1.0
    dead = factor_vae_score(lambda f: np.zeros((len(f), 3)), SIZES, np.random.default_rng(0), n_train=10, n_eval=10)
    assert dead["eval_accuracy"] == 0.0 and dead["num_active_dims"] == 0


@pytest.mark.parametrize("name", SAMPLER_METRICS)
def test_sampler_metric_bad_input(name):
    rng = np.random.default_rng(0)
    cases = [
        (lambda f: f[:, 0], SIZES, DataError),  # 1-D codes
        (lambda f: np.full((len(f), 3), np.nan), SIZES, DataError),  # NaN codes
        (lambda f: f[:-1] * 1.0, SIZES, DataError),  # wrong number of rows
        (lambda f: f * 1.0, (3, 0, 4), ConfigError),  # impossible factor size
        (lambda f: f * 1.0, (1, 1), ConfigError),  # nothing to fix
        ("not callable", SIZES, ConfigError),
    ]
    for fn, sizes, err in cases:
        with pytest.raises(err) as excinfo:
            METRICS[name](fn, sizes, rng, n_train=20, n_eval=10)
        _one_line(excinfo)
    with pytest.raises(ConfigError):
        METRICS[name](lambda f: f * 1.0, SIZES, rng, batch_size=0)


# --------------------------------------------------------------------------- UDR
def _seed_models(kind: str, n: int = 2000, m: int = 4):
    rng = np.random.default_rng(0)
    v = rng.normal(size=(n, 5))  # the shared inputs' true factors
    out = []
    for s in range(m):
        g = np.random.default_rng(100 + s)
        if kind == "disentangled":  # same factors, permuted, sign-flipped, monotone-warped
            out.append(np.tanh(v[:, g.permutation(5)] * g.choice([-1, 1], 5)) + 0.05 * g.normal(size=(n, 5)))
        else:  # a different rotation per seed
            out.append(v @ np.linalg.qr(g.normal(size=(5, 5)))[0])
    return out


@pytest.mark.parametrize("similarity", ["spearman", "lasso"])
def test_udr_ranks_disentangled_above_entangled(similarity):
    good = udr(_seed_models("disentangled"), np.random.default_rng(0), similarity=similarity)
    bad = udr(_seed_models("entangled"), np.random.default_rng(0), similarity=similarity)
    assert good["model_scores"].min() > 0.85
    assert bad["model_scores"].max() < 0.5
    assert good["pairwise"].shape == (4, 4) and np.allclose(good["pairwise"], good["pairwise"].T)
    assert _all_finite({k: v for k, v in good.items() if k not in ("similarity", "active", "partners")})


def test_udr_pair_score_closed_forms():
    assert udr_pair_score(np.eye(3)) == pytest.approx(1.0)
    assert udr_pair_score(np.ones((4, 4))) == pytest.approx(0.25)  # every latent matches all four: r^2/sum = 1/4
    assert udr_pair_score(np.zeros((3, 3))) == 0.0
    # Active masks: the dead latent's row and column are removed, the rest is a perfect match.
    r = np.array([[1.0, 0, 0.3], [0, 1.0, 0.3], [0.3, 0.3, 0.3]])
    assert udr_pair_score(r, [True, True, False], [True, True, False]) == pytest.approx(1.0)
    # Unequal numbers of active latents: weights d_a, d_b (paper), not 1/2 each.
    r = np.array([[1.0, 0.0], [0.0, 0.0]])
    assert udr_pair_score(r, [True, True], [True, False]) == pytest.approx((1.0 + 1.0 + 0.0) / 3)
    assert udr_pair_score(r, [False, False], [False, False]) == 0.0


def test_spearman_matches_scipy():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(2)
    a = rng.normal(size=(300, 3))
    b = np.column_stack([np.exp(a[:, 0]), rng.normal(size=300), np.round(a[:, 1])])  # ties in column 2
    s = spearman_similarity(a, b)
    for i in range(3):
        for j in range(3):
            assert s[i, j] == pytest.approx(abs(spearmanr(a[:, i], b[:, j])[0]), abs=1e-12)
    assert spearman_similarity(np.ones((10, 1)), a[:10])[0].tolist() == [0.0, 0.0, 0.0]


def test_udr_kl_mask_partners_and_errors():
    models = [
        np.concatenate([c, np.random.default_rng(s).normal(size=(2000, 2)) * 0.01], 1)
        for s, c in enumerate(_seed_models("disentangled"))
    ]
    kl = [np.r_[np.ones(5), 0.0, 0.0] for _ in models]
    masked = udr(models, np.random.default_rng(0), kl=kl)
    unmasked = udr(models, np.random.default_rng(0))
    assert masked["model_scores"].min() > unmasked["model_scores"].max()  # dead latents dilute the score
    assert all(a.tolist() == [True] * 5 + [False] * 2 for a in masked["active"])
    two = udr(models, np.random.default_rng(0), kl=kl, n_partners=2)
    assert all(len(p) == 2 and i not in p for i, p in enumerate(two["partners"]))
    rng = np.random.default_rng(0)
    with pytest.raises(DataError):
        udr(models[:1], rng)
    with pytest.raises(DataError):
        udr([models[0], models[1][:100]], rng)
    with pytest.raises(DataError):
        udr(models, rng, kl=kl[:2])
    with pytest.raises(DataError):
        udr(models, rng, kl=[np.ones(3)] * 4)
    with pytest.raises(ConfigError):
        udr(models, rng, n_partners=4)
    with pytest.raises(ConfigError):
        udr(models, rng, similarity="pearson")


def test_udr_reproducible_with_partners():
    models = _seed_models("entangled", n=500)
    a = udr(models, np.random.default_rng(4), n_partners=2, similarity="lasso")
    b = udr(models, np.random.default_rng(4), n_partners=2, similarity="lasso")
    np.testing.assert_array_equal(a["model_scores"], b["model_scores"])
    assert [p.tolist() for p in a["partners"]] == [p.tolist() for p in b["partners"]]


# --------------------------------------------------------------------------- unsupervised
def test_gaussian_tc_independent_is_zero():
    z = np.random.default_rng(0).normal(size=(5000, 5)) * [1, 2, 3, 4, 5]
    assert gaussian_total_correlation(z) == pytest.approx(0.0, abs=0.01)


def test_gaussian_tc_closed_form_two_dims():
    rho = 0.6
    rng = np.random.default_rng(1)
    z = rng.multivariate_normal([0, 0], [[1, rho], [rho, 1]], size=20000)
    tc = gaussian_total_correlation(z)
    assert tc == pytest.approx(-0.5 * math.log(1 - rho**2), abs=0.02)
    r = np.corrcoef(z, rowvar=False)[0, 1]  # exact identity with the sample correlation
    assert tc == pytest.approx(-0.5 * math.log(1 - r**2), rel=1e-9)
    assert gaussian_mutual_info(z)[0, 1] == pytest.approx(tc, rel=1e-9)


def test_gaussian_tc_matches_entropy_difference():
    from scipy.stats import multivariate_normal

    rng = np.random.default_rng(2)
    z = rng.normal(size=(3000, 4)) @ rng.normal(size=(4, 4))
    cov = np.cov(z, rowvar=False)
    expected = (
        sum(multivariate_normal(0, cov[i, i]).entropy() for i in range(4))
        - multivariate_normal(np.zeros(4), cov).entropy()
    )
    assert gaussian_total_correlation(z) == pytest.approx(expected, rel=1e-8)


def test_gaussian_tc_degenerate_codes():
    z = np.random.default_rng(3).normal(size=(1000, 3))
    with_const = np.column_stack([z, np.full(1000, 2.0)])
    assert gaussian_total_correlation(with_const) == pytest.approx(gaussian_total_correlation(z))
    mi = gaussian_mutual_info(with_const)
    assert np.all(mi[3] == 0) and np.all(np.isfinite(mi))
    dup = np.column_stack([z, z[:, 0]])
    assert gaussian_total_correlation(dup) == math.inf
    assert gaussian_mutual_info(dup)[0, 3] == math.inf
    assert gaussian_total_correlation(z[:, :1]) == 0.0


def test_unsupervised_score_names():
    """disentanglement_lib's four names; ours under names that say "gaussian" or "discrete", and the
    names before 0.3 (``mutual_info``, ``mean_mutual_info``) gone, so no key means two things."""
    z = np.random.default_rng(5).normal(size=(200, 3))
    r = compute("unsupervised", z, np.random.default_rng(0))
    assert set(r) == {
        "gaussian_total_correlation",
        "gaussian_wasserstein_correlation",
        "gaussian_wasserstein_correlation_norm",
        "mutual_info_score",
        "discrete_mutual_info",
        "gaussian_mutual_info",
        "gaussian_mean_mutual_info",
        "n_active",
        "active",
        "variance",
    }
    assert r["gaussian_mutual_info"].shape == r["discrete_mutual_info"].shape == (3, 3)
    assert r["mutual_info_score"] == pytest.approx(r["discrete_mutual_info"].sum() / 6, rel=1e-12)
    assert r["gaussian_mean_mutual_info"] == pytest.approx(r["gaussian_mutual_info"].sum() / 6, rel=1e-12)
    assert PRESETS["unsupervised"]["default"]["bins"] == 20  # disentanglement_lib's configs


def test_gaussian_wasserstein_correlation_closed_form_two_dims():
    """For S = [[a, c], [c, b]]: tr sqrtm(M) = sqrt(tr M + 2 sqrt(det M)) for a 2 x 2 PSD M, with
    M ~ diag(S)^(1/2) S diag(S)^(1/2): GWC = 2(a + b) - 2 sqrt(a^2 + b^2 + 2 sqrt(ab(ab - c^2))).
    The normalised form is unchanged by a common scale (the GWC scales with its square) and reaches
    its bound 2 - 2 / sqrt(D) for D identical latents."""
    rng = np.random.default_rng(6)
    z = rng.multivariate_normal([0, 0], [[1.0, 1.2], [1.2, 4.0]], size=5000)  # (N, 2)
    (a, c), (_, b) = np.cov(z, rowvar=False)
    expected = 2 * (a + b) - 2 * math.sqrt(a * a + b * b + 2 * math.sqrt(a * b * (a * b - c * c)))
    gwc, norm = gaussian_wasserstein_correlation(z)
    assert gwc == pytest.approx(expected, rel=1e-10) and norm == pytest.approx(expected / (a + b), rel=1e-10)
    gwc7, norm7 = gaussian_wasserstein_correlation(7.0 * z)
    assert gwc7 == pytest.approx(49 * gwc, rel=1e-10) and norm7 == pytest.approx(norm, rel=1e-10)
    assert gaussian_wasserstein_correlation(np.column_stack([z, np.full(5000, 3.0)])) == pytest.approx((gwc, norm))
    same = np.repeat(z[:, :1], 3, axis=1)  # (N, 3) identical latents: the largest normalised value
    assert gaussian_wasserstein_correlation(same)[1] == pytest.approx(2 - 2 / math.sqrt(3), rel=1e-10)
    huge_gwc, huge_norm = gaussian_wasserstein_correlation(1e300 * z)  # beyond float64: inf, not NaN
    assert huge_gwc == math.inf and huge_norm == pytest.approx(norm, rel=1e-10)


def test_kl_per_dim_matches_torch():
    import torch
    from torch.distributions import Normal, kl_divergence

    rng = np.random.default_rng(4)
    mu = rng.normal(size=(200, 3))
    logvar = rng.normal(size=(200, 3))
    ref = kl_divergence(Normal(torch.tensor(mu), torch.tensor(np.exp(0.5 * logvar))), Normal(0.0, 1.0))
    np.testing.assert_allclose(kl_per_dim(mu, logvar), ref.numpy().mean(0), rtol=1e-10)
    with pytest.raises(DataError):
        kl_per_dim(mu, logvar[:, :2])


def test_active_units_and_unsupervised_scores(data):
    _, codes = data
    au = active_units(codes["constant"])
    assert au["n_active"] == 5 and not au["active"][2]
    tiny = active_units(np.random.default_rng(0).normal(size=(1000, 2)) * [1.0, 0.05])  # var 0.0025 < 0.01
    assert tiny["active"].tolist() == [True, False]
    for kind in CODE_KINDS:
        r = compute("unsupervised", codes[kind], np.random.default_rng(0), preset="fast")
        assert r["gaussian_total_correlation"] >= 0 and _all_finite(r), kind
    scores = {kind: compute("unsupervised", codes[kind], np.random.default_rng(0)) for kind in CODE_KINDS}
    assert scores["rotated"]["gaussian_total_correlation"] < 0.01
    assert scores["duplicated"]["gaussian_total_correlation"] > 5
    # Uncorrelated codes: both Gaussian scores ~0. A rotation of uniform-ish factors is uncorrelated
    # but not independent, which only the discrete MI sees (0.10 against the plug-in bias of
    # noise, ~(20 - 1)^2 / (2N) = 0.06 nats); two copies of each factor dominate both.
    for kind in ("perfect", "rotated", "noise"):
        assert scores[kind]["gaussian_wasserstein_correlation_norm"] < 0.001, kind
    assert scores["duplicated"]["gaussian_wasserstein_correlation_norm"] > 0.5
    assert scores["perfect"]["mutual_info_score"] < 0.01 < scores["noise"]["mutual_info_score"] < 0.07
    assert scores["rotated"]["mutual_info_score"] > scores["noise"]["mutual_info_score"] + 0.03
    assert scores["duplicated"]["mutual_info_score"] > 0.2
    with pytest.raises(DataError):
        compute("unsupervised", np.full((10, 2), np.nan), np.random.default_rng(0))


# --------------------------------------------------------------------------- registry
def test_registry_runs_every_metric_by_kind(data):
    """Every registered metric runs through compute() with its fast preset (tiny sizes)."""
    factors, codes = data
    z, f = codes["perfect"][:600], factors[:600]
    for name, kind in KINDS.items():
        rng = np.random.default_rng(0)
        if kind == "arrays":
            r = compute(name, z, f, rng, preset="fast", **({"n_estimators": 5} if name == "dci_classifier" else {}))
        elif kind == "sampler":
            r = compute(name, _repr_fns()["perfect"], SIZES, rng, preset="fast", n_train=50, n_eval=20)
        elif kind == "models":
            r = compute(name, [z, z[:, ::-1]], rng, preset="fast")
        else:
            r = compute(name, z, rng, preset="fast")
        assert isinstance(r, dict) and r, name
        assert preset_kwargs(name, "default") == PRESETS[name]["default"]


# --------------------------------------------------------------------------- one registration per metric
def test_every_registration_is_complete():
    """Each metric's file registers it with both presets, accepted by its function, and a kind."""
    from gatedvae.metrics import registered

    assert [s.name for s in registered()] == list(METRICS) == list(KINDS) == list(PRESETS)
    for spec in registered():
        assert METRICS[spec.name] is spec.fn and KINDS[spec.name] == spec.kind, spec.name
        assert set(spec.presets) == {"default", "fast"}, spec.name
        assert preset_kwargs(spec.name, "fast") == PRESETS[spec.name]["fast"], spec.name
        assert spec.suite or spec.not_in_suite, f"{spec.name}: say how to run a metric outside the suite"
        assert (spec.from_sampler is not None) == (spec.kind == "sampler"), spec.name
        assert spec.partition_units <= (spec.kind == "arrays"), spec.name
    with pytest.raises(ConfigError, match="did you mean 'fast'"):
        preset_kwargs("mig", "fats")


def test_register_metric_is_all_it_takes(monkeypatch):
    """A metric registered from outside shows up in every view, in compute() and in the evaluation suite."""
    from gatedvae.evaluation import suite
    from gatedvae.metrics import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # undone after the test

    def spread(codes, factors, rng, *, scale=1.0):
        return {"spread": scale * float(np.ptp(codes))}

    registry.register_metric(
        "spread",
        spread,
        kind="arrays",
        default={"scale": 1.0},
        fast={"scale": 2.0},
        headline=("spread",),
        aliases=("sp",),
    )
    assert "spread" in METRICS and KINDS["spread"] == "arrays" and PRESETS["spread"]["fast"] == {"scale": 2.0}
    z = np.array([[0.0], [3.0]])
    assert compute("spread", z, z, np.random.default_rng(0), preset="fast") == {"spread": 6.0}
    assert suite.EVAL_METRICS[-2:] == ("spread", "reconstruction")  # after the built-in metrics
    assert suite.resolve_metrics("sp") == ["spread"] and suite.HEADLINE["spread"] == ("spread",)
    assert suite.headline({"results": {"spread": {"scores": {"spread": 6.0}}}}) == {"spread.spread": 6.0}
    with pytest.raises(ConfigError, match="registered twice"):
        registry.register_metric("spread", spread, kind="arrays", default={}, fast={})
    with pytest.raises(ConfigError, match="unknown metric kind 'array'; did you mean 'arrays'"):
        registry.register_metric("other", spread, kind="array", default={}, fast={})


def test_the_metrics_package_never_loads_torch():
    import subprocess
    import sys

    code = "import sys, gatedvae.metrics; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
