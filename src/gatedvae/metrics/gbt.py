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
that introsort is replayed (:func:`_introsort3`, a port of ``utils/_sorting.pyx``) whenever a
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
from .utils import check_positive_int

try:  # numba is a runtime dependency; the import is guarded only to name the fix if it is missing
    import numba as _numba
    from numba import njit
except ImportError:  # pragma: no cover - exercised only in a broken install
    _numba = None

__all__ = ["GradientBoostedTrees", "fit_gbt", "FEATURE_THRESHOLD", "RAND_R_MAX"]

#: scikit-learn's tie threshold between consecutive sorted feature values (float32).
FEATURE_THRESHOLD = np.float32(1e-7)
#: scikit-learn's ``RAND_R_MAX`` (tree/_utils.pxd): tree seeds are ``randint(0, RAND_R_MAX)``.
RAND_R_MAX = 2147483647
_EPS = float(np.finfo(np.float64).eps)


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
                list(pool.map(lambda c: _fit_trees(int(c[0]), int(c[-1]) + 1, *args), chunks))
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


# --------------------------------------------------------------------------- compiled kernels
if _numba is not None:

    @njit(cache=True)
    def _rand_int(state, low, high):
        """scikit-learn's ``rand_int``: ``low + our_rand_r(state) % (high - low)`` (xorshift32)."""
        s = state[0]
        if s == 0:
            s = 1  # DEFAULT_SEED
        s ^= (s << 13) & 0xFFFFFFFF
        s ^= s >> 17
        s ^= (s << 5) & 0xFFFFFFFF
        state[0] = s
        return low + (s % 2147483648) % (high - low)

    @njit(cache=True)
    def _neg_gradient(raw, y, binary, out):
        """``out (T, N)`` = minus the gradient of the half multinomial (or binomial) deviance."""
        n, t_count = raw.shape
        if binary:
            for i in range(n):
                r = raw[i, 0]
                yt = float(y[i])
                if r > -37.0:
                    e = np.exp(-r)
                    grad = ((1.0 - yt) - yt * e) / (1.0 + e)
                else:
                    e = np.exp(r)
                    grad = e - yt
                out[0, i] = -grad
            return
        p = np.empty(t_count)
        for i in range(n):
            mx = raw[i, 0]
            for k in range(1, t_count):
                if raw[i, k] > mx:
                    mx = raw[i, k]
            total = 0.0
            for k in range(t_count):
                p[k] = np.exp(raw[i, k] - mx)
                total += p[k]
            for k in range(t_count):
                pk = p[k] / total
                out[k, i] = -(pk - (1.0 if y[i] == k else 0.0))

    @njit(cache=True)
    def _update_left(y, samples, start, end, pos, new_pos, sum_left, sum_total, n_node):
        """The criterion's ``update``: move ``samples[pos:new_pos]`` to the left; returns the new
        (sum_left, n_left), accumulated forward, or backward from ``end`` after a long jump."""
        if (new_pos - pos) <= (end - new_pos):
            n_left = float(pos - start)
            for q in range(pos, new_pos):
                sum_left += y[samples[q]]
                n_left += 1.0
        else:
            sum_left = sum_total
            n_left = n_node
            for q in range(end - 1, new_pos - 1, -1):
                sum_left -= y[samples[q]]
                n_left -= 1.0
        return sum_left, n_left

    @njit(cache=True)
    def _build_tree(
        x, order, sorted_x, has_dups, inv, y, seed, max_depth, split, feature, threshold, count, impurity, leaf_of
    ):
        """One regression tree on ``y (N,)``, grown as scikit-learn's best splitter and depth-first
        builder grow it (see the module docstring). Fills the heap arrays and ``leaf_of (N,)``."""
        n, d = x.shape
        ft = np.float32(1e-7)
        eps = 2.220446049250313e-16
        idx = order.copy()  # (D, N) per feature: node rows in sorted order
        vals = sorted_x.copy()  # (D, N) their values, kept alongside
        tmpv = np.empty(n, dtype=np.float32)
        tie_vals = np.empty(n, dtype=np.float32)
        cand_pos = np.empty(n, dtype=np.int64)
        cand_sum = np.empty(n)
        cand_n = np.empty(n)
        cand_proxy = np.empty(n)
        samples = np.arange(n).astype(np.int32)  # the splitter's sample order (sums follow it)
        tmp = np.empty(n, dtype=np.int32)
        left_flag = np.zeros(n, dtype=np.bool_)
        features = np.arange(d)
        constant_features = np.arange(d)
        state = np.array([seed], dtype=np.int64)
        heap = split.shape[0]
        st_start = np.empty(heap, dtype=np.int64)
        st_end = np.empty(heap, dtype=np.int64)
        st_depth = np.empty(heap, dtype=np.int64)
        st_heap = np.empty(heap, dtype=np.int64)
        st_nconst = np.empty(heap, dtype=np.int64)
        st_imp = np.empty(heap)
        top = 0
        st_start[0] = 0
        st_end[0] = n
        st_depth[0] = 0
        st_heap[0] = 0
        st_nconst[0] = 0
        st_imp[0] = 0.0
        top = 1
        first = True
        while top > 0:
            top -= 1
            start = st_start[top]
            end = st_end[top]
            depth = st_depth[top]
            h = st_heap[top]
            n_known = st_nconst[top]
            imp = st_imp[top]
            n_node_i = end - start
            n_node = float(n_node_i)
            # criterion.init over the node's samples, in the splitter's order
            sum_total = 0.0
            sq_total = 0.0
            for q in range(start, end):
                v = y[samples[q]]
                sum_total += v
                sq_total += v * v
            if first:
                imp = sq_total / n_node - (sum_total / n_node) ** 2.0
                first = False
            is_leaf = depth >= max_depth or n_node_i < 2 or imp <= eps
            count[h] = n_node
            impurity[h] = imp
            best_pos = end
            best_f = -1
            best_thr = 0.0
            n_total = n_known
            if not is_leaf:
                # ---- node_split: features in scikit-learn's random order (Fisher-Yates)
                best_proxy = -np.inf
                f_i = d
                n_visited = 0
                n_found = 0
                n_drawn = 0
                last_sorted = -1
                while f_i > n_total and (n_visited < d or n_visited <= n_found + n_drawn):
                    n_visited += 1
                    f_j = _rand_int(state, n_drawn, f_i - n_found)
                    if f_j < n_known:
                        tmpf = features[n_drawn]
                        features[n_drawn] = features[f_j]
                        features[f_j] = tmpf
                        n_drawn += 1
                        continue
                    f_j += n_found
                    cur = features[f_j]
                    # sort_samples_and_feature_values: the node's rows by this feature. With
                    # distinct values the sorted order is unique: our presorted rows. With equal
                    # values it depends on the splitter's previous order: run its introsort on it.
                    tied = False
                    if has_dups[cur]:
                        for q in range(start + 1, end):
                            if vals[cur, q] == vals[cur, q - 1]:
                                tied = True
                                break
                    if tied:
                        if last_sorted >= 0:
                            for q in range(start, end):
                                samples[q] = idx[last_sorted, q]
                        for q in range(start, end):
                            tie_vals[q] = x[samples[q], cur]
                        _introsort3(tie_vals, samples, start, end - start)
                        last_sorted = -1  # samples now hold the splitter's order
                        rows = samples
                        fv = tie_vals
                    else:
                        if vals[cur, end - 1] != vals[cur, start]:
                            last_sorted = cur
                        # (all values equal: the introsort moves nothing, the order stays)
                        rows = idx[cur]
                        fv = vals[cur]
                    if fv[end - 1] <= fv[start] + ft:
                        tmpf = features[f_j]
                        features[f_j] = features[n_total]
                        features[n_total] = tmpf
                        n_found += 1
                        n_total += 1
                        continue
                    f_i -= 1
                    tmpf = features[f_i]
                    features[f_i] = features[f_j]
                    features[f_j] = tmpf
                    # evaluate every split of this feature. Pass 1: the criterion's running sums
                    # at each candidate position (sequential, as scikit-learn adds them) and a
                    # cheap proxy (reciprocal table, within a few ulp of the exact one). Pass 2:
                    # the exact proxy ``S_l^2 / n_l + S_r^2 / n_r`` only where the cheap one is
                    # within 1e-12 of its maximum, first strict maximum wins (the exact answer:
                    # no other candidate can reach the maximum).
                    pos = start
                    sum_left = 0.0
                    n_left = 0.0
                    m = 0
                    a_max = 0.0
                    p = start
                    while p < end:
                        p += 1
                        while p < end and fv[p] <= fv[p - 1] + ft:
                            p += 1
                        if p == end:
                            break
                        if (p - pos) <= (end - p):  # the criterion's forward update
                            for q in range(pos, p):
                                sum_left += y[rows[q]]
                                n_left += 1.0
                        else:
                            sum_left, n_left = _update_left(y, rows, start, end, pos, p, sum_left, sum_total, n_node)
                        pos = p
                        sr = sum_total - sum_left
                        a = sum_left * sum_left * inv[p - start] + sr * sr * inv[end - p]
                        # keep only candidates that can still reach the final cut: one below
                        # (1 - 1e-12) x the running maximum is below it for good
                        if a >= a_max * (1.0 - 1e-12):
                            cand_pos[m] = p
                            cand_sum[m] = sum_left
                            cand_n[m] = n_left
                            cand_proxy[m] = a
                            m += 1
                            if a > a_max:
                                a_max = a
                    cut = a_max * (1.0 - 1e-12)
                    best_c = -1
                    for c in range(m):
                        if cand_proxy[c] >= cut:
                            sl = cand_sum[c]
                            sr = sum_total - sl
                            nl = cand_n[c]
                            proxy = sl * sl / nl + sr * sr / (n_node - nl)
                            if proxy > best_proxy:
                                best_proxy = proxy
                                best_c = c
                    if best_c >= 0:
                        p = cand_pos[best_c]
                        best_pos = p
                        best_f = cur
                        best_thr = np.float64(fv[p - 1]) / 2.0 + np.float64(fv[p]) / 2.0
                # the splitter leaves samples sorted by the last feature it sorted
                if last_sorted >= 0:  # else the tied path left them in place
                    for q in range(start, end):
                        samples[q] = idx[last_sorted, q]
                # restore / record constant features as the splitter does
                for q in range(n_known):
                    features[q] = constant_features[q]
                for q in range(n_known, n_known + n_found):
                    constant_features[q] = features[q]
                improvement = 0.0
                imp_left = 0.0
                imp_right = 0.0
                if best_pos < end:
                    # partition_samples_final: in-place two-pointer partition by the threshold
                    p = start
                    pe = end
                    while p < pe:
                        if x[samples[p], best_f] <= best_thr:
                            p += 1
                        else:
                            pe -= 1
                            tmpi = samples[p]
                            samples[p] = samples[pe]
                            samples[pe] = tmpi
                    # criterion.reset(); update(best_pos); children_impurity(); impurity_improvement()
                    sum_left, n_left = _update_left(y, samples, start, end, start, best_pos, 0.0, sum_total, n_node)
                    n_right = n_node - n_left
                    sum_right = sum_total - sum_left
                    sq_left = 0.0
                    for q in range(start, best_pos):
                        v = y[samples[q]]
                        sq_left += v * v
                    sq_right = sq_total - sq_left
                    imp_left = sq_left / n_left - (sum_left / n_left) ** 2.0
                    imp_right = sq_right / n_right - (sum_right / n_right) ** 2.0
                    improvement = (n_node / float(n)) * (
                        imp - (n_right / n_node * imp_right) - (n_left / n_node * imp_left)
                    )
                is_leaf = best_pos >= end or improvement + eps < 0.0
            if is_leaf:
                for q in range(start, end):
                    leaf_of[samples[q]] = h
                continue
            split[h] = True
            feature[h] = best_f
            threshold[h] = best_thr
            # stable partition of every feature's rows (and values): left rows first, in order;
            # not needed when the children are leaves by depth
            if depth + 1 < max_depth:
                for q in range(start, end):
                    left_flag[samples[q]] = q < best_pos
                for j in range(d):
                    a = start
                    b = 0
                    for q in range(start, end):  # branch-free: write both, advance one
                        r = idx[j, q]
                        v = vals[j, q]
                        go_left = left_flag[r]
                        idx[j, a] = r
                        vals[j, a] = v
                        tmp[b] = r
                        tmpv[b] = v
                        a += go_left
                        b += 1 - go_left
                    for q in range(b):
                        idx[j, a + q] = tmp[q]
                        vals[j, a + q] = tmpv[q]
            # push right, then left (popped first): depth-first, left to right
            st_start[top] = best_pos
            st_end[top] = end
            st_depth[top] = depth + 1
            st_heap[top] = 2 * h + 2
            st_nconst[top] = n_total
            st_imp[top] = imp_right
            top += 1
            st_start[top] = start
            st_end[top] = best_pos
            st_depth[top] = depth + 1
            st_heap[top] = 2 * h + 1
            st_nconst[top] = n_total
            st_imp[top] = imp_left
            top += 1

    @njit(cache=True)
    def _pairwise_block(a, lo, n):
        """NumPy's pairwise-sum base case (n <= 128): eight interleaved partial sums."""
        if n < 8:
            res = 0.0
            for i in range(lo, lo + n):
                res += a[i]
            return res
        r = np.empty(8)
        for j in range(8):
            r[j] = a[lo + j]
        stop = n - n % 8
        for i in range(8, stop, 8):
            for j in range(8):
                r[j] += a[lo + i + j]
        res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
        for i in range(stop, n):
            res += a[lo + i]
        return res

    @njit(cache=True)
    def _pairwise_sum(a, lo, n):
        """NumPy's pairwise summation of ``a[lo:lo + n]`` (``DOUBLE_pairwise_sum``), bit for bit:
        blocks of at most 128 summed by :func:`_pairwise_block`, halves (rounded down to a
        multiple of 8) added recursively, here with an explicit stack."""
        if n <= 128:
            return _pairwise_block(a, lo, n)
        los = np.empty(64, dtype=np.int64)
        ns = np.empty(64, dtype=np.int64)
        phase = np.zeros(64, dtype=np.int64)
        left = np.zeros(64)
        los[0] = lo
        ns[0] = n
        phase[0] = 0
        sp = 1
        ret = 0.0
        while sp > 0:
            f = sp - 1
            if ns[f] <= 128:
                ret = _pairwise_block(a, los[f], ns[f])
                sp -= 1
                # deliver ret to the parents
                while sp > 0:
                    f = sp - 1
                    if phase[f] == 0:
                        left[f] = ret
                        phase[f] = 1
                        n2 = ns[f] // 2
                        n2 -= n2 % 8
                        los[sp] = los[f] + n2
                        ns[sp] = ns[f] - n2
                        phase[sp] = 0
                        sp += 1
                        break
                    ret = left[f] + ret
                    sp -= 1
            else:
                n2 = ns[f] // 2
                n2 -= n2 % 8
                los[sp] = los[f]
                ns[sp] = n2
                phase[sp] = 0
                sp += 1
        return ret

    @njit(cache=True)
    def _swap(values, indices, i, j):
        tv = values[i]
        values[i] = values[j]
        values[j] = tv
        ti = indices[i]
        indices[i] = indices[j]
        indices[j] = ti

    @njit(cache=True)
    def _median3(values, off, n):
        a = values[off]
        b = values[off + n // 2]
        c = values[off + n - 1]
        if a < b:
            if b < c:
                return b
            elif a < c:
                return c
            return a
        elif b < c:
            if a < c:
                return a
            return c
        return b

    @njit(cache=True)
    def _sift_down(values, indices, off, start, end):
        root = start
        while True:
            child = root * 2 + 1
            maxind = root
            if child < end and values[off + maxind] < values[off + child]:
                maxind = child
            if child + 1 < end and values[off + maxind] < values[off + child + 1]:
                maxind = child + 1
            if maxind == root:
                break
            _swap(values, indices, off + root, off + maxind)
            root = maxind

    @njit(cache=True)
    def _heapsort(values, indices, off, n):
        start = (n - 2) // 2
        end = n
        while True:
            _sift_down(values, indices, off, start, end)
            if start == 0:
                break
            start -= 1
        end = n - 1
        while end > 0:
            _swap(values, indices, off, off + end)
            _sift_down(values, indices, off, 0, end)
            end = end - 1

    @njit(cache=True)
    def _introsort3(values, indices, off, n):
        """scikit-learn's ``simultaneous_sort(..., use_three_way_partition=True)`` (utils/_sorting.pyx):
        introsort, median-of-3 pivot, 3-way partition, heapsort past depth ``2 log2 n``, insertion
        sort below 16 -- the same swaps, so rows with equal values end in the same order. The
        recursion on the left part is an explicit stack (disjoint ranges: order does not matter)."""
        if n == 0:
            return
        maxd0 = 2 * int(np.log2(float(n)))
        st_off = np.empty(maxd0 + 2, dtype=np.int64)
        st_n = np.empty(maxd0 + 2, dtype=np.int64)
        st_d = np.empty(maxd0 + 2, dtype=np.int64)
        st_off[0] = off
        st_n[0] = n
        st_d[0] = maxd0
        sp = 1
        while sp > 0:
            sp -= 1
            o = st_off[sp]
            m = st_n[sp]
            md = st_d[sp]
            done = False
            while m > 15:
                if md <= 0:
                    _heapsort(values, indices, o, m)
                    done = True
                    break
                md -= 1
                pivot = _median3(values, o, m)
                i = 0
                lft = 0
                r = m
                while i < r:
                    if values[o + i] < pivot:
                        _swap(values, indices, o + i, o + lft)
                        i += 1
                        lft += 1
                    elif values[o + i] > pivot:
                        r -= 1
                        _swap(values, indices, o + i, o + r)
                    else:
                        i += 1
                st_off[sp] = o
                st_n[sp] = lft
                st_d[sp] = md
                sp += 1
                o += r
                m -= r
            if not done:
                for i in range(1, m):  # insertion sort
                    temp_val = values[o + i]
                    temp_idx = indices[o + i]
                    j = i
                    while j > 0 and values[o + j - 1] > temp_val:
                        values[o + j] = values[o + j - 1]
                        indices[o + j] = indices[o + j - 1]
                        j -= 1
                    values[o + j] = temp_val
                    indices[o + j] = temp_idx

    @njit(cache=True)
    def _preorder(heap):
        """Heap ids in depth-first preorder (root, left subtree, right subtree)."""
        out = np.empty(heap, dtype=np.int64)
        stack = np.empty(heap, dtype=np.int64)
        stack[0] = 0
        sp = 1
        m = 0
        while sp > 0:
            sp -= 1
            h = stack[sp]
            out[m] = h
            m += 1
            if 2 * h + 2 < heap:
                stack[sp] = 2 * h + 2
                stack[sp + 1] = 2 * h + 1
                sp += 2
        return out

    @njit(cache=True)
    def _leaf(x_row, split, feature, threshold, max_depth):
        h = 0
        for _ in range(max_depth):
            if not split[h]:
                break
            if x_row[feature[h]] <= threshold[h]:
                h = 2 * h + 1
            else:
                h = 2 * h + 2
        return h

    @njit(cache=True, nogil=True)
    def _fit_trees(
        lo,
        hi,
        x,
        order,
        sorted_x,
        has_dups,
        inv,
        grad,
        y,
        seeds,
        max_depth,
        factor,
        learning_rate,
        binary,
        split,
        feature,
        threshold,
        value,
        importance,
        raw,
        ex,
        raw_eval,
    ):
        """Grow trees ``lo..hi-1`` of one stage, set their Newton leaf values, add them to the raw
        scores of the training rows and of ``ex``, and record their importances. Releases the GIL:
        the stage's trees are independent, so threads run disjoint ranges side by side."""
        t_count, n = grad.shape
        d = x.shape[1]
        heap = split.shape[1]
        preorder = _preorder(heap)
        for k in range(lo, hi):
            count = np.zeros(heap)
            impurity = np.zeros(heap)
            leaf_of = np.empty(n, dtype=np.int64)
            _build_tree(
                x,
                order,
                sorted_x,
                has_dups,
                inv,
                grad[k],
                seeds[k],
                max_depth,
                split[k],
                feature[k],
                threshold[k],
                count,
                impurity,
                leaf_of,
            )
            # Newton step per leaf, as _update_terminal_regions: np.average over the leaf's rows in
            # index order (NumPy's pairwise sum), numerator times (K-1)/K, p = y - r
            buf_r = np.empty(n)
            buf_h = np.empty(n)
            fill = np.zeros(heap + 1, dtype=np.int64)
            for i in range(n):
                fill[leaf_of[i] + 1] += 1
            for h in range(heap):
                fill[h + 1] += fill[h]
            first = fill[:heap].copy()
            for i in range(n):
                h = leaf_of[i]
                r = grad[k, i]
                yk = (1.0 if y[i] == 1 else 0.0) if binary else (1.0 if y[i] == k else 0.0)
                pr = yk - r
                buf_r[fill[h]] = r
                buf_h[fill[h]] = pr * (1.0 - pr)
                fill[h] += 1
            for h in range(heap):
                m = fill[h] - first[h]
                if split[k, h] or m == 0:
                    continue
                numerator = _pairwise_sum(buf_r, first[h], m) / m
                numerator *= factor
                denominator = _pairwise_sum(buf_h, first[h], m) / m
                if abs(denominator) < 1e-150:
                    value[k, h] = 0.0
                else:
                    value[k, h] = numerator / denominator
            for i in range(n):
                raw[i, k] += learning_rate * value[k, leaf_of[i]]
            for i in range(ex.shape[0]):
                raw_eval[i, k] += learning_rate * value[k, _leaf(ex[i], split[k], feature[k], threshold[k], max_depth)]
            # compute_feature_importances(normalize=False), nodes in scikit-learn's id order
            # (depth-first preorder), so the per-feature sums add in the same order
            for h in preorder:
                if split[k, h]:
                    left = 2 * h + 1
                    right = 2 * h + 2
                    importance[k, feature[k, h]] += (
                        count[h] * impurity[h] - count[left] * impurity[left] - count[right] * impurity[right]
                    )
            for j in range(d):
                importance[k, j] /= count[0]

    @njit(cache=True)
    def _apply_all(x, split, feature, threshold, value, max_depth, learning_rate, raw):
        n_stages, t_count, _ = split.shape
        for s in range(n_stages):
            for k in range(t_count):
                for i in range(x.shape[0]):
                    raw[i, k] += (
                        learning_rate * value[s, k, _leaf(x[i], split[s, k], feature[s, k], threshold[s, k], max_depth)]
                    )
