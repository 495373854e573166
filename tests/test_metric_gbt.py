"""The compiled gradient-boosted trees of ``dci_classifier`` (``gatedvae.metrics.gbt``) against
scikit-learn's ``GradientBoostingClassifier`` with the same ``random_state``: every tree (feature
and threshold of every node), the leaf values, the raw scores, the predictions and the feature
importances must be *equal*, not close -- including the cases where the result hangs on
scikit-learn's tie-breaking (duplicated code columns, integer-valued codes, a constant column).

Small sizes here (seconds); the dSprites-sized comparison (10,000 rows, 40 classes, 100 stages) is
behind ``-m slow``. No timing assertions (``benchmarks/bench_metrics.py`` reports times).
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import GradientBoostingClassifier

from gatedvae.errors import ConfigError, DataError
from gatedvae.metrics import dci_classifier
from gatedvae.metrics.gbt import fit_gbt


def _codes(kind: str, n: int, classes: int, seed: int):
    """Codes (n, D) and labels (n,) of one factor, in the shapes DCI feeds the classifier."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, size=n)  # (n,)
    if kind == "noisy":
        x = rng.normal(size=(n, 4)) * 0.7  # (n, 4)
        x[:, 0] += y
        x[:, 2] -= 0.5 * y
    elif kind == "duplicated":  # [f, f]: every split has an exact twin on the other copy
        base = rng.normal(size=(n, 2)) * 0.5
        base[:, 0] += y
        x = np.concatenate([base, base], axis=1)
    elif kind == "integer":  # perfect codes: the factor classes themselves, plus another factor
        x = np.stack([y, rng.integers(0, 3, size=n), rng.integers(0, 5, size=n)], axis=1).astype(np.float64)
    elif kind == "constant":  # a collapsed latent, constant everywhere
        x = np.concatenate([rng.normal(size=(n, 2)) + y[:, None] * 0.8, np.full((n, 1), 0.25)], axis=1)
    elif kind == "rotated":
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        x = np.stack([y, rng.integers(0, 4, size=n), rng.normal(size=n)], axis=1) @ q
    else:  # pragma: no cover
        raise ValueError(kind)
    return x, y


def _heap(tree, size: int):
    """(feature, threshold) of a scikit-learn tree in our heap layout (children 2h+1, 2h+2)."""
    feat = np.full(size, -1)
    thr = np.zeros(size)

    def walk(node: int, h: int) -> None:
        if tree.children_left[node] == -1:
            return
        feat[h], thr[h] = tree.feature[node], tree.threshold[node]
        walk(tree.children_left[node], 2 * h + 1)
        walk(tree.children_right[node], 2 * h + 2)

    walk(0, 0)
    return feat, thr


def _assert_same_model(x, y, x_eval, stages: int, seed: int, depth: int = 3, lr: float = 0.1) -> None:
    ref = GradientBoostingClassifier(n_estimators=stages, max_depth=depth, learning_rate=lr, random_state=seed).fit(
        x, y
    )
    model, pred_tr, pred_ev = fit_gbt(
        x, y, random_state=seed, n_estimators=stages, max_depth=depth, learning_rate=lr, eval_x=x_eval
    )
    size = model.split.shape[2]
    for s in range(stages):
        for k in range(model.split.shape[1]):
            feat, thr = _heap(ref.estimators_[s, k].tree_, size)
            np.testing.assert_array_equal(model.feature[s, k], feat, err_msg=f"stage {s} tree {k}")
            np.testing.assert_array_equal(model.threshold[s, k], thr, err_msg=f"stage {s} tree {k}")
    np.testing.assert_array_equal(model.feature_importances, ref.feature_importances_)
    np.testing.assert_array_equal(pred_tr, ref.predict(x))
    np.testing.assert_array_equal(pred_ev, ref.predict(x_eval))
    np.testing.assert_array_equal(model.predict(x_eval), pred_ev)
    raw_ref = ref.decision_function(x_eval).reshape(len(x_eval), -1)
    np.testing.assert_array_equal(model.decision_function(x_eval), raw_ref)


@pytest.mark.parametrize("kind", ["noisy", "duplicated", "integer", "constant", "rotated"])
@pytest.mark.parametrize("classes", [2, 5])
def test_same_trees_predictions_and_importances_as_sklearn(kind, classes):
    x, y = _codes(kind, 400, classes, seed=classes)
    x_eval, _ = _codes(kind, 150, classes, seed=100 + classes)
    _assert_same_model(x, y, x_eval, stages=12, seed=7 + classes)


@pytest.mark.parametrize("kind", ["duplicated", "integer", "constant"])
def test_index_order_inside_ties_changes_only_last_bits(kind):
    """exact_ties=False (dci_classifier's default) keeps rows with equal codes in index order instead
    of replaying scikit-learn's introsort: same predictions, importances equal to ~1e-16."""
    x, y = _codes(kind, 400, 5, seed=3)
    x_eval, _ = _codes(kind, 150, 5, seed=4)
    exact = fit_gbt(x, y, random_state=2, n_estimators=12, eval_x=x_eval, exact_ties=True)
    fast = fit_gbt(x, y, random_state=2, n_estimators=12, eval_x=x_eval, exact_ties=False)
    np.testing.assert_array_equal(exact[1], fast[1])
    np.testing.assert_array_equal(exact[2], fast[2])
    np.testing.assert_allclose(exact[0].feature_importances, fast[0].feature_importances, rtol=0, atol=1e-12)


def test_other_depth_learning_rate_and_seeds():
    x, y = _codes("noisy", 300, 4, seed=1)
    for seed in (0, 123456, 2**31 - 2):
        _assert_same_model(x, y, x[:50], stages=6, seed=seed, depth=2, lr=0.3)
    _assert_same_model(x, y, x[:50], stages=4, seed=5, depth=5)


def test_labels_are_returned_as_given_and_threads_do_not_matter():
    x, y = _codes("noisy", 300, 3, seed=2)
    names = np.array(["circle", "heart", "square"])[y]
    one, tr1, ev1 = fit_gbt(x, names, random_state=3, n_estimators=5, eval_x=x[:40], n_threads=1)
    two, tr2, ev2 = fit_gbt(x, names, random_state=3, n_estimators=5, eval_x=x[:40], n_threads=2)
    assert set(np.unique(tr1)) <= set(names)
    np.testing.assert_array_equal(tr1, tr2)
    np.testing.assert_array_equal(ev1, ev2)
    np.testing.assert_array_equal(one.feature_importances, two.feature_importances)
    np.testing.assert_array_equal(one.threshold, two.threshold)


def test_dci_classifier_backends_agree():
    rng = np.random.default_rng(4)
    f = np.stack([rng.integers(0, 3, 500), rng.integers(0, 6, 500)], axis=1)  # (n, 2)
    z = np.concatenate([f + 0.3 * rng.normal(size=(500, 2)), rng.normal(size=(500, 2))], axis=1)  # (n, 4)
    ours = dci_classifier(z, f, np.random.default_rng(9), n_estimators=8)
    ref = dci_classifier(z, f, np.random.default_rng(9), n_estimators=8, backend="sklearn", n_jobs=1)
    np.testing.assert_array_equal(ours["importance"], ref["importance"])
    for key in ("disentanglement", "completeness", "informativeness_train", "informativeness_test"):
        assert ours[key] == ref[key], key


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda x, y: fit_gbt(x, np.zeros(len(x)), random_state=0), DataError),  # one class
        (lambda x, y: fit_gbt(x[:, 0], y, random_state=0), DataError),  # not 2-D
        (lambda x, y: fit_gbt(x, y[:-1], random_state=0), DataError),  # wrong length
        (lambda x, y: fit_gbt(np.where(x > 1, np.nan, x), y, random_state=0), DataError),
        (lambda x, y: fit_gbt(x, y, random_state=-1), ConfigError),
        (lambda x, y: fit_gbt(x, y, random_state=0, n_estimators=0), ConfigError),
        (lambda x, y: fit_gbt(x, y, random_state=0, learning_rate=0.0), ConfigError),
        (lambda x, y: fit_gbt(x, y, random_state=0, max_depth=11), ConfigError),
        (lambda x, y: fit_gbt(x, y, random_state=0, eval_x=x[:, :2]), DataError),
        (lambda x, y: dci_classifier(x, y[:, None], np.random.default_rng(0), backend="xgboost"), ConfigError),
    ],
)
def test_bad_input_is_refused(call, error):
    x, y = _codes("noisy", 60, 3, seed=0)
    with pytest.raises(error):
        call(x, y)


@pytest.mark.slow
def test_dsprites_sized_fit_matches_sklearn():
    """The DCI default preset's size: 10,000 training rows of 8 codes, a 40-class factor, 100 stages."""
    rng = np.random.default_rng(0)
    n, classes = 12_500, 40
    y = rng.integers(0, classes, size=n)
    z = rng.normal(size=(n, 8)).astype(np.float32)
    z[:, 3] += np.cos(2 * np.pi * y / classes) * 2  # orientation-like: a circle over two latents
    z[:, 4] += np.sin(2 * np.pi * y / classes) * 2
    _assert_same_model(z[:10_000], y[:10_000], z[10_000:], stages=100, seed=11)
