"""Gradient-boosted trees for ``dci_classifier``: scikit-learn's ``GradientBoostingClassifier`` for
the one case DCI needs, reproduced step by step and compiled (numba), many times faster.

disentanglement_lib's DCI (Eastwood & Williams; restated in ``tests/reference_impl.py``) fits
``sklearn.ensemble.GradientBoostingClassifier()`` with its defaults per discrete factor: 100
stages, regression trees of depth 3 on the negative gradient, learning rate 0.1, multinomial
deviance with one tree per class and stage (one tree per stage for two classes), the class priors
as the initial model. On dSprites' factors that is 113 trees per stage, 11,300 per evaluation,
about 22 ms each in scikit-learn on our 2-core CPU (4 minutes). scikit-learn spends most of that
re-sorting every node's samples for every feature. Here:

* each feature is sorted **once** (the order never changes across stages; only the gradients do)
  and every tree keeps, per feature, its node's samples in that order (a stable partition per
  split), so a node's split search is one pass per feature;
* the trees of a stage are independent given the stage's gradient (scikit-learn also computes it
  once per stage), so they are grown in parallel (``n_threads``).

Everything else follows scikit-learn 1.9 (``ensemble/_gb.py``, ``tree/_splitter.pyx``,
``tree/_criterion.pyx``, ``tree/_partitioner.pyx``, ``tree/_tree.pyx``, ``_loss``) operation by
operation, including the order of floating-point sums:

* ``X`` as float32; a candidate split between consecutive sorted values of a node that differ by
  more than ``FEATURE_THRESHOLD = 1e-7`` (float32 arithmetic); threshold ``a / 2 + b / 2`` in
  float64; ``x <= threshold`` goes left; a feature whose node values span at most 1e-7 is
  constant there (and stays known-constant below);
* features visited in scikit-learn's random order: its Fisher-Yates draw with its xorshift
  generator (``our_rand_r``), one ``RandomState(random_state).randint(0, 2**31 - 1)`` seed per tree
  in fitting order, known and newly found constant features handled as the splitter does; the
  squared-error proxy ``S_l^2 / n_l + S_r^2 / n_r`` with ``S_l`` accumulated as the criterion's
  ``update`` does (forward, or backward from the node's end after a long jump); strict ``>``, so
  the first best split in visiting order wins (``criterion="friedman_mse"`` of the versions
  disentanglement_lib used picks the same split: its improvement differs from this proxy by a
  constant per node);
* depth-first growth, ``min_samples_split = 2``, ``min_samples_leaf = 1``; a node is a leaf when its
  impurity ``sum(g^2)/n - (sum(g)/n)^2`` is at most machine epsilon, computed from the same sums in
  the same order (the node's samples in the order the splitter's final partition leaves them);
* leaf values by one Newton step, ``(K - 1) / K * mean(r) / mean(p (1 - p))`` with ``r = y_k - p_k``
  and ``p = y - r`` (binomial: no ``(K - 1) / K``), 0 where the denominator is below 1e-150;
* initial raw scores ``log(prior / geometric_mean(prior))`` (``logit(prior)`` for two classes) from
  the training class frequencies clipped to ``[eps, 1 - eps]``; the multinomial gradient from a
  max-shifted softmax summed in class order;
* prediction: argmax of the raw scores (two classes: ``raw >= 0``);
* feature importances: per tree ``sum over splits of n imp - n_l imp_l - n_r imp_r`` per feature,
  divided by the root size, averaged over the trees that split at all, normalised to sum 1.

Rows with *equal* values of a feature: scikit-learn sorts a node's rows with an introsort whose
order among equal values depends on the order the previous sort left. With ``exact_ties=True``
that introsort is replayed (:func:`.gbt_kernels._introsort3`, a port of ``utils/_sorting.pyx``) whenever a
node holds equal values of the feature it sorts: bit-for-bit scikit-learn's trees on any input
(``tests/test_metric_gbt.py``: duplicated, integer-valued and constant codes), but as slow as
scikit-learn at those nodes. With ``exact_ties=False`` (what ``dci_classifier`` uses) such rows
keep their index order; only the order of a few additions changes, i.e. the last bits of some
sums. Measured on the benchmark model's dSprites codes (31 groups of identical rows among 12,500,
images that differ only in orientation; every code column has repeated values): 3,390 trees (30 stages, all five
factors) identical to the exact replay, importances within 3e-17, every prediction equal, at a
tenth of the time.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, DataError
from .gbt_kernels import _apply_all, _fit_trees, _neg_gradient, _numba
from .utils import check_positive_int

__all__ = ["GradientBoostedTrees", "fit_gbt", "FEATURE_THRESHOLD", "RAND_R_MAX"]

#: scikit-learn's tie threshold between consecutive sorted feature values (float32).
FEATURE_THRESHOLD = np.float32(1e-7)
#: scikit-learn's ``RAND_R_MAX`` (tree/_utils.pxd): tree seeds are ``randint(0, RAND_R_MAX)``.
RAND_R_MAX = 2147483647


@dataclass
class GradientBoostedTrees:
    """A fitted ensemble in heap layout: node ``h`` has children ``2h + 1`` and ``2h + 2``;
    ``H = 2^(max_depth + 1) - 1`` slots per tree, ``T`` trees per stage (the number of classes,
    or 1 for two classes).

    Attributes:
        classes: (C,) sorted training labels (what :meth:`predict` returns).
        init_raw: (T,) initial raw score of each tree's class.
        split: (S, T, H) bool, node is split.
        feature: (S, T, H) int32, split feature (-1 elsewhere).
        threshold: (S, T, H) float64, split threshold (``x <= t`` goes left).
        value: (S, T, H) float64, Newton leaf value (0 elsewhere).
        feature_importances: (D,) impurity-based importances, summing to 1 (or all 0).
        tree_importances: (S, T, D) each tree's unnormalised impurity decrease per feature over
            the training size (scikit-learn's ``compute_feature_importances(normalize=False)``).
        learning_rate: shrinkage of every leaf value.
        max_depth: depth of the trees.
    """

    classes: np.ndarray
    init_raw: np.ndarray
    split: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    value: np.ndarray
    feature_importances: np.ndarray
    tree_importances: np.ndarray
    learning_rate: float
    max_depth: int

    def decision_function(self, x) -> np.ndarray:
        """Raw scores (n, T) of the rows of ``x`` (cast to float32 as scikit-learn does)."""
        x = np.ascontiguousarray(x, dtype=np.float32)  # (n, D)
        raw = np.tile(self.init_raw, (x.shape[0], 1))  # (n, T)
        _require_numba()
        _apply_all(x, self.split, self.feature, self.threshold, self.value, self.max_depth, self.learning_rate, raw)
        return raw

    def predict(self, x) -> np.ndarray:
        """Predicted labels (n,) of the rows of ``x``."""
        return self.classes[_decide(self.decision_function(x))]


def _decide(raw: np.ndarray) -> np.ndarray:
    """Class indices from raw scores: argmax (first maximum), or ``raw >= 0`` with one column."""
    if raw.shape[1] == 1:
        return (raw[:, 0] >= 0).astype(np.int64)
    return np.argmax(raw, axis=1)


def _require_numba() -> None:
    if _numba is None:  # pragma: no cover
        raise ConfigError("dci_classifier needs the numba package (pip install numba); it is a dependency of gatedvae")


def fit_gbt(
    x,
    y,
    *,
    random_state: int,
    n_estimators: int = 100,
    max_depth: int = 3,
    learning_rate: float = 0.1,
    eval_x=None,
    n_threads: int = 1,
    exact_ties: bool = True,
) -> tuple[GradientBoostedTrees, np.ndarray, np.ndarray | None]:
    """Fit ``GradientBoostingClassifier(n_estimators, max_depth, learning_rate, random_state)``.

    Args:
        x: (N, D) features (cast to float32).
        y: (N,) labels, any sortable values, at least two distinct.
        random_state: the integer scikit-learn would get; seeds the per-tree feature order.
        n_estimators, max_depth, learning_rate: as scikit-learn's.
        eval_x: optional (M, D) rows to predict, tracked through every tree while fitting.
        n_threads: threads growing the trees of a stage (numba); the result does not depend on it.
        exact_ties: replay scikit-learn's introsort where a node holds equal feature values (see
            the module docstring); False keeps such rows in index order (last-bit differences).

    Returns:
        ``(model, train_pred (N,), eval_pred (M,) or None)``: the predicted labels of the training
        rows and of ``eval_x``.
    """
    _require_numba()
    n_estimators = check_positive_int(n_estimators, "n_estimators")
    max_depth = check_positive_int(max_depth, "max_depth")
    if max_depth > 10:  # trees live in heap arrays of 2^(depth+1) - 1 slots
        raise ConfigError(
            f"max_depth: at most 10 here (got {max_depth}); use dci_classifier(backend='sklearn') for deeper trees"
        )
    n_threads = check_positive_int(n_threads, "n_threads")
    learning_rate = float(learning_rate)
    if not learning_rate > 0:
        raise ConfigError(f"learning_rate: expected a positive number, got {learning_rate!r}")
    if (
        isinstance(random_state, bool)
        or not isinstance(random_state, (int, np.integer))
        or not 0 <= random_state < 2**32
    ):
        raise ConfigError(f"random_state: expected an integer in [0, 2**32), got {random_state!r}")
    x = np.ascontiguousarray(x, dtype=np.float32)  # (N, D) scikit-learn's tree dtype
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        raise DataError(f"x: expected shape (N, D) with N >= 2 and D >= 1, got {x.shape}")
    if not np.isfinite(x).all():
        raise DataError("x: NaN or inf")
    classes, y_enc = np.unique(np.asarray(y), return_inverse=True)
    y_enc = y_enc.reshape(-1).astype(np.int64)
    if y_enc.size != x.shape[0]:
        raise DataError(f"y: expected {x.shape[0]} labels, got {y_enc.size}")
    n_classes = classes.size
    if n_classes < 2:
        raise DataError("y: a single class; a classifier needs at least two")
    ex = None if eval_x is None else np.ascontiguousarray(eval_x, dtype=np.float32)  # (M, D)
    if ex is not None and (ex.ndim != 2 or ex.shape[1] != x.shape[1]):
        raise DataError(f"eval_x: expected shape (M, {x.shape[1]}), got {ex.shape}")
    n, d = x.shape
    t_count = n_classes if n_classes > 2 else 1

    # Initial model: DummyClassifier(strategy="prior") probabilities, clipped, through the link.
    from scipy.special import logit
    from scipy.stats import gmean

    eps = np.finfo(np.float64).eps
    prior = np.clip(np.bincount(y_enc, minlength=n_classes) / n, eps, 1 - eps)  # (C,)
    if t_count == 1:
        init_raw = np.array([logit(prior[1])])  # (1,)
    else:
        init_raw = np.log(prior / gmean(prior))  # (C,)
    raw = np.tile(init_raw, (n, 1))  # (N, T)
    raw_eval = np.tile(init_raw, (ex.shape[0], 1)) if ex is not None else np.zeros((0, t_count))  # (M, T)
    ex_arr = ex if ex is not None else np.zeros((0, d), dtype=np.float32)

    order = np.ascontiguousarray(np.argsort(x.T, axis=1, kind="stable").astype(np.int32))  # (D, N)
    sorted_x = np.ascontiguousarray(np.take_along_axis(x.T, order, axis=1))  # (D, N) float32
    has_dups = (sorted_x[:, 1:] == sorted_x[:, :-1]).any(axis=1) & bool(exact_ties)  # (D,) features with equal values
    with np.errstate(divide="ignore"):
        inv = np.where(np.arange(n + 1) > 0, 1.0 / np.arange(n + 1), 0.0)  # (N + 1,) 1 / i, for screening
    # Tree seeds exactly as scikit-learn draws them: one randint per tree, stage-major.
    seeds = np.random.RandomState(int(random_state)).randint(0, RAND_R_MAX, size=n_estimators * t_count)
    seeds = seeds.astype(np.int64).reshape(n_estimators, t_count)
    heap = 2 ** (max_depth + 1) - 1
    shape = (n_estimators, t_count, heap)
    split = np.zeros(shape, dtype=np.bool_)
    feature = np.full(shape, -1, dtype=np.int32)
    threshold = np.zeros(shape)
    value = np.zeros(shape)
    importance = np.zeros((n_estimators, t_count, d))
    factor = (n_classes - 1) / n_classes if t_count > 1 else 1.0
    grad = np.empty((t_count, n))  # (T, N) negative gradient
    chunks = [c for c in np.array_split(np.arange(t_count), min(n_threads, t_count)) if c.size]
    pool = ThreadPoolExecutor(len(chunks)) if len(chunks) > 1 else None
    try:
        for s in range(n_estimators):
            _neg_gradient(raw, y_enc, t_count == 1, grad)
            args = (
                x,
                order,
                sorted_x,
                has_dups,
                inv,
                grad,
                y_enc,
                seeds[s],
                max_depth,
                factor,
                learning_rate,
                t_count == 1,
                split[s],
                feature[s],
                threshold[s],
                value[s],
                importance[s],
                raw,
                ex_arr,
                raw_eval,
            )
            if pool is None:
                _fit_trees(0, t_count, *args)
            else:  # the kernel releases the GIL: one contiguous range of trees per thread
                list(pool.map(lambda c, a=args: _fit_trees(int(c[0]), int(c[-1]) + 1, *a), chunks))
    finally:
        if pool is not None:
            pool.shutdown()
    relevant = split[:, :, 0]  # (S, T) trees with more than one node
    imp = importance[relevant].mean(axis=0) if relevant.any() else np.zeros(d)
    total = imp.sum()
    importances = imp / total if total > 0 else np.zeros(d)
    model = GradientBoostedTrees(
        classes=classes,
        init_raw=init_raw,
        split=split,
        feature=feature,
        threshold=threshold,
        value=value,
        feature_importances=importances,
        tree_importances=importance,
        learning_rate=learning_rate,
        max_depth=max_depth,
    )
    train_pred = classes[_decide(raw)]
    eval_pred = classes[_decide(raw_eval)] if ex is not None else None
    return model, train_pred, eval_pred
