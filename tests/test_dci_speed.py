"""dci_classifier's speed options (metrics issue 4): ``n_jobs`` (threads of the compiled trees,
processes of the scikit-learn backend), ``max_train`` (an optional cap on the training rows, in
no preset) and the float32 hand-off. Results must not depend on ``n_jobs`` and must equal a plain
scikit-learn fit on the same rows with the same seeds. No timing assertions (the benchmark
reports times; ``tests/test_metric_gbt.py`` checks the compiled trees tree by tree)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from sklearn.ensemble import GradientBoostingClassifier

from gatedvae.errors import ConfigError
from gatedvae.metrics import PRESETS, dci_classifier
from gatedvae.metrics.dci import DCI_CLASSIFIER_MAX_TRAIN, DCI_CLASSIFIER_REFERENCE
from gatedvae.metrics.utils import seed_from, split_indices

SIZES = (3, 6, 5)


def _data(n=400, d=5, seed=0):
    rng = np.random.default_rng(seed)
    f = np.stack([rng.integers(0, s, n) for s in SIZES], axis=1)  # (n, K)
    z = rng.normal(size=(n, d))  # (n, D)
    z[:, : len(SIZES)] += f / np.asarray(SIZES)  # informative on the first K latents
    return z, f


def _same(a: dict, b: dict) -> None:
    np.testing.assert_array_equal(a["importance"], b["importance"])
    for key in ("disentanglement", "completeness", "informativeness_train", "informativeness_test"):
        assert a[key] == b[key], key
    np.testing.assert_array_equal(a["informativeness_test_per_factor"], b["informativeness_test_per_factor"])


@pytest.mark.parametrize(
    "backend", ["gbt", pytest.param("sklearn", marks=pytest.mark.slow)]
)  # joblib processes: slow to start
def test_n_jobs_does_not_change_the_result(backend):
    z, f = _data()
    serial = dci_classifier(z, f, np.random.default_rng(3), n_estimators=5, max_train=200, n_jobs=1, backend=backend)
    parallel = dci_classifier(z, f, np.random.default_rng(3), n_estimators=5, max_train=200, n_jobs=2, backend=backend)
    _same(serial, parallel)


def test_max_train_none_or_large_is_the_reference():
    z, f = _data()
    full = dci_classifier(z, f, np.random.default_rng(1), n_estimators=5)
    _same(full, dci_classifier(z, f, np.random.default_rng(1), n_estimators=5, max_train=None))
    _same(full, dci_classifier(z, f, np.random.default_rng(1), n_estimators=5, max_train=10_000))


def test_max_train_fits_a_training_subset_and_tests_on_the_whole_split():
    z, f = _data()
    ours = dci_classifier(z, f, np.random.default_rng(7), n_estimators=5, max_train=120)
    rng = np.random.default_rng(7)
    tr, te = split_indices(rng, z.shape[0], 0.8)  # 320 / 80
    tr = np.sort(rng.choice(tr, size=120, replace=False))
    seeds = [seed_from(rng) for _ in SIZES]
    for k, seed in enumerate(seeds):
        m = GradientBoostingClassifier(n_estimators=5, random_state=seed).fit(z[tr], f[tr, k])  # float64 input
        np.testing.assert_array_equal(ours["importance"][:, k], m.feature_importances_)
        assert ours["informativeness_test_per_factor"][k] == np.mean(m.predict(z[te]) == f[te, k])
        assert ours["informativeness_train_per_factor"][k] == np.mean(m.predict(z[tr]) == f[tr, k])


def test_presets_and_reference_settings():
    # The default preset is disentanglement_lib's settings exactly (no training-row cap).
    assert PRESETS["dci_classifier"]["default"] == DCI_CLASSIFIER_REFERENCE
    assert DCI_CLASSIFIER_MAX_TRAIN < 10_000
    # the function's own defaults are disentanglement_lib's settings
    sig = inspect.signature(dci_classifier).parameters
    for key, value in DCI_CLASSIFIER_REFERENCE.items():
        assert sig[key].default == value, key
    assert DCI_CLASSIFIER_REFERENCE["max_train"] is None and DCI_CLASSIFIER_REFERENCE["n_estimators"] == 100


@pytest.mark.parametrize(
    "kw", [{"max_train": 1}, {"max_train": 2.5}, {"n_jobs": 0}, {"n_jobs": True}, {"backend": "xgb"}]
)
def test_bad_speed_options_raise(kw):
    z, f = _data(n=100)
    with pytest.raises(ConfigError):
        dci_classifier(z, f, np.random.default_rng(0), n_estimators=2, **kw)
