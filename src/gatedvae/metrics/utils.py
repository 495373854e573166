"""Shared pieces of the metrics: input validation, discretisation, entropy and mutual information.

Every metric in this package is a pure function over numpy arrays:

* ``codes``   (N, D) float: one row per input, one column per latent dimension (encoder means);
* ``factors`` (N, K): the ground-truth factor of each input (class indices for discrete factors);
* ``rng``     an explicit :class:`numpy.random.Generator` (never the global ``np.random``).

Bad input (a wrong shape, NaN in the codes, too few samples, a wrong option) raises
:class:`~gatedvae.errors.DataError` or :class:`~gatedvae.errors.ConfigError` with one line that
names the problem. The helpers here do that checking once, so every metric words it the same way.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError, DataError

__all__ = [
    "default_threads",
    "check_codes",
    "check_factors",
    "check_rng",
    "check_fraction",
    "check_positive_int",
    "check_choice",
    "discretize",
    "discrete_entropy",
    "discrete_mutual_info",
    "encode_labels",
    "normalized_entropy",
    "seed_from",
    "split_indices",
    "standardize",
    "subsample",
]


# --------------------------------------------------------------------------- validation
def check_codes(codes, name: str = "codes", min_samples: int = 2) -> np.ndarray:
    """Return ``codes`` as a float64 (N, D) array, or raise DataError in one line.

    Checks: numeric, exactly 2-D, at least one column, at least ``min_samples`` rows, all finite.
    """
    try:
        arr = np.asarray(codes, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{name}: expected a numeric array of shape (N, D), got {type(codes).__name__}") from None
    if arr.ndim != 2:
        raise DataError(f"{name}: expected shape (N, D), got shape {arr.shape}")
    n, d = arr.shape
    if d < 1:
        raise DataError(f"{name}: expected at least one column, got shape {arr.shape}")
    if n < min_samples:
        raise DataError(f"{name}: need at least {min_samples} samples (rows), got {n}")
    if not np.isfinite(arr).all():
        bad = np.flatnonzero(~np.isfinite(arr).all(axis=0))
        raise DataError(f"{name}: NaN or inf in column(s) {bad.tolist()}")
    return arr


def check_factors(factors, n: int, name: str = "factors", allow_constant: bool = False) -> np.ndarray:
    """Return ``factors`` as a float64 (N, K) array matching ``n`` rows, or raise DataError.

    A constant factor column (dSprites' colour, a size-1 factor) carries no information and
    makes every per-factor normalisation 0/0, so it is refused unless ``allow_constant``:
    drop it first (``factors[:, sizes > 1]``).
    """
    arr = check_codes(factors, name=name)
    if arr.shape[0] != n:
        raise DataError(f"{name}: has {arr.shape[0]} rows but codes have {n}; pass one factor row per code row")
    if not allow_constant:
        const = np.flatnonzero(np.all(arr == arr[:1], axis=0))
        if const.size:
            raise DataError(
                f"{name}: column(s) {const.tolist()} are constant and cannot be scored; drop them "
                "(e.g. dSprites' colour) before computing metrics"
            )
    return arr


def check_rng(rng) -> np.random.Generator:
    """Require an explicit ``np.random.Generator`` (STYLE.md habit 4: no global numpy RNG)."""
    if not isinstance(rng, np.random.Generator):
        raise ConfigError(
            f"rng: expected a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng).__name__}"
        )
    return rng


def check_fraction(value, name: str) -> float:
    """A number strictly between 0 and 1, else ConfigError."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected a number in (0, 1), got {value!r}") from None
    if not 0.0 < v < 1.0:
        raise ConfigError(f"{name}: expected a number in (0, 1), got {value!r}")
    return v


def check_positive_int(value, name: str, minimum: int = 1) -> int:
    """An integer >= ``minimum``, else ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def check_choice(value, name: str, choices: Sequence[str]) -> str:
    """One of ``choices``, else ConfigError naming the valid ones."""
    if value not in choices:
        raise ConfigError(f"{name}: unknown value {value!r}; choose one of {', '.join(map(repr, choices))}")
    return value


# --------------------------------------------------------------------------- sampling helpers
def seed_from(rng: np.random.Generator) -> int:
    """An int seed drawn from ``rng``, for scikit-learn's ``random_state`` arguments."""
    return int(rng.integers(0, 2**31 - 1))


def subsample(rng: np.random.Generator, n: int, max_samples: int | None) -> np.ndarray | None:
    """Indices of a random subset of size ``max_samples`` (sorted), or None when no cut is needed."""
    if max_samples is None or n <= max_samples:
        return None
    check_positive_int(max_samples, "max_samples", minimum=2)
    return np.sort(rng.choice(n, size=max_samples, replace=False))


def split_indices(
    rng: np.random.Generator, n: int, train_frac: float, min_test: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Random train/test split of ``range(n)``; DataError if either side would be too small."""
    train_frac = check_fraction(train_frac, "train_frac")
    n_train = int(round(train_frac * n))
    if n_train < 2 or n - n_train < min_test:
        raise DataError(
            f"too few samples: {n} rows give {n_train} train / {n - n_train} test at train_frac={train_frac}"
        )
    perm = rng.permutation(n)  # (N,)
    return perm[:n_train], perm[n_train:]


def within_float32(codes: np.ndarray) -> np.ndarray:
    """``codes`` (N, D) with each column scaled into float32's range when it leaves that range.

    Tree learners (scikit-learn's, :mod:`.gbt`) work in float32, where codes beyond ~3.4e38 become
    inf and codes below ~1e-38 become 0. Dividing a column by a positive constant changes none of a
    tree's splits, so every score stays what it is; such columns are divided by their largest
    magnitude. Codes within range (every real encoder's) are returned untouched.
    """
    peak = np.abs(codes).max(axis=0) if codes.size else np.ones(codes.shape[1:])  # (D,)
    odd = (peak > 1e30) | ((peak < 1e-30) & (peak > 0))
    if not odd.any():
        return codes
    return codes / np.where(odd, peak, 1.0)  # (N, D)


def standardize(train: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """Z-score columns with the mean and std of ``train``; a zero-variance column is only centred.

    Returns the transformed ``train`` followed by each of ``others`` (same statistics).
    """
    # Columns so large that their squares overflow are first divided by their largest magnitude:
    # the z-scores are the same and the variance stays finite. (Tiny columns are left alone: a std
    # below 1e-12 counts as constant.)
    peak = np.abs(train).max(axis=0) if train.size else np.ones(train.shape[1:])  # (D,)
    odd = peak > 1e100
    if odd.any():
        unit = np.where(odd, peak, 1.0)  # (D,)
        train, others = train / unit, tuple(a / unit for a in others)
    mean = train.mean(axis=0)  # (D,)
    std = train.std(axis=0)  # (D,)
    std = np.where(std > 1e-12 * np.maximum(1.0, np.abs(mean)), std, 1.0)  # guard constant columns
    return tuple((a - mean) / std for a in (train, *others))


def encode_labels(column: np.ndarray) -> tuple[np.ndarray, int]:
    """Map arbitrary label values of one column to 0..C-1; returns (labels (N,) int64, C)."""
    uniq, inv = np.unique(column, return_inverse=True)
    return inv.reshape(-1).astype(np.int64), int(uniq.size)


# --------------------------------------------------------------------------- discretisation
def _left_edges(lo: np.ndarray, hi: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Left bin edges (bins, D) of ``np.histogram(column, bins)`` for columns with minima ``lo`` and
    maxima ``hi`` (D,), computed as ``np.linspace`` does, and a mask (D,) of the columns whose edges
    ``np.histogram`` accepts (finite, strictly increasing). A constant column's range is widened to
    ``(x - 0.5, x + 0.5)``, as ``np.histogram`` does."""
    const = lo == hi  # (D,)
    first = np.where(const, lo - 0.5, lo)  # (D,)
    last = np.where(const, hi + 0.5, hi)  # (D,)
    with np.errstate(over="ignore", invalid="ignore"):
        step = (last - first) / bins  # (D,) linspace's step
        edges = np.arange(bins, dtype=np.float64)[:, None] * step + first  # (bins, D), linspace's arithmetic
        rising = np.all(np.diff(np.vstack([edges, last]), axis=0) > 0, axis=0)  # (D,)
    return edges, np.isfinite(step) & (step > 0) & rising


def discretize(codes, bins: int = 20) -> np.ndarray:
    """Histogram-discretise each column into ``bins`` equal-width bins over its own range.

    Bin ``b`` (0-based) holds the values ``x`` with ``e_b <= x < e_(b+1)``, where ``e_0..e_bins`` are
    the edges ``np.histogram(column, bins)`` returns; the maximum falls in the last bin. This is the
    equal-width ("histogram") discretiser used for MIG by Chen et al. (``002_b6b404b9b5e7b646.txt``)
    and disentanglement_lib's ``_histogram_discretize``, ``np.digitize(x, np.histogram(x, bins)[1][:-1])``:
    every value lands in the same bin as there, including values that lie exactly on an edge
    (quantised codes, factor values used as codes), because the edges are computed with
    ``np.histogram``'s own arithmetic and compared with the values, not re-derived by a division.
    disentanglement_lib's bin ids are ours + 1. A constant column lands entirely in one bin, the one
    ``np.histogram``'s widened range ``(x - 0.5, x + 0.5)`` gives it, as there.

    Columns ``np.histogram`` refuses with a ValueError (a range that overflows float64, or one too
    narrow for distinct edges: subnormal ranges, a constant column of magnitude 2^48 or more) are first
    multiplied by a power of two, which is exact, and then binned the same way.

    The codes are converted to float64 first (as every metric here does; the evaluation passes
    float64 codes), so the match is with ``np.histogram`` on float64 values. disentanglement_lib
    given float32 codes computes float32 edges, which can move a value lying within float32
    rounding of an edge into the neighbouring bin.

    Args:
        codes: (N, D) array.
        bins: number of bins per column (>= 2).

    Returns:
        (N, D) int64 array of bin indices in ``0..bins-1``.
    """
    codes = check_codes(codes, min_samples=1)
    bins = check_positive_int(bins, "bins", minimum=2)
    lo = codes.min(axis=0)  # (D,)
    hi = codes.max(axis=0)  # (D,)
    edges, ok = _left_edges(lo, hi, bins)  # (bins, D), (D,)
    if not ok.all():
        peak = np.maximum(np.abs(lo), np.abs(hi))  # (D,)
        _, exp = np.frexp(np.where(ok | (peak == 0), 1.0, peak))  # (D,) peak = m 2^exp, 0.5 <= m < 1
        exp = np.where(ok, 0, exp)  # (D,) columns np.histogram accepts stay as they are
        codes = np.ldexp(codes, -exp)  # (N, D) largest magnitude now in [0.5, 1)
        scaled, _ = _left_edges(np.ldexp(lo, -exp), np.ldexp(hi, -exp), bins)  # (bins, D)
        edges = np.where(ok, edges, scaled)  # (bins, D)
    out = np.empty(codes.shape, dtype=np.int64)  # (N, D)
    for j in range(codes.shape[1]):
        # np.digitize(x, left_edges) - 1: the number of inner edges e_1..e_(bins-1) at or below x
        out[:, j] = np.searchsorted(edges[1:, j], codes[:, j], side="right")  # (N,)
    return out


# --------------------------------------------------------------------------- information
def discrete_entropy(labels) -> np.ndarray:
    """Plug-in entropy (nats) of each column of a (N, K) array of discrete labels; returns (K,)."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        labels = labels[:, None]
    out = np.empty(labels.shape[1])
    for k in range(labels.shape[1]):
        _, counts = np.unique(labels[:, k], return_counts=True)
        p = counts / counts.sum()
        out[k] = -np.sum(p * np.log(p))
    return out


def discrete_mutual_info(a, b) -> np.ndarray:
    """Plug-in mutual information (nats) between every column of ``a`` and every column of ``b``.

    ``I(a_i; b_k) = sum_{x,y} p(x, y) log(p(x, y) / (p(x) p(y)))`` from the contingency table of
    the two label columns (equal to ``sklearn.metrics.mutual_info_score``). One pair at a time,
    rows are latents and columns are factors: no transposes to get wrong.

    Args:
        a: (N, D) discrete labels (e.g. ``discretize(codes)``).
        b: (N, K) discrete labels (e.g. factor classes).

    Returns:
        (D, K) float array, ``out[i, k] = I(a_i; b_k) >= 0``.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.ndim == 1:
        a = a[:, None]
    if b.ndim == 1:
        b = b[:, None]
    n = a.shape[0]
    a_codes = [encode_labels(a[:, i]) for i in range(a.shape[1])]
    b_codes = [encode_labels(b[:, k]) for k in range(b.shape[1])]
    out = np.zeros((a.shape[1], b.shape[1]))
    for i, (ai, ca) in enumerate(a_codes):
        pa = np.bincount(ai, minlength=ca) / n  # (Ca,)
        for k, (bk, cb) in enumerate(b_codes):
            pb = np.bincount(bk, minlength=cb) / n  # (Cb,)
            joint = np.bincount(ai * cb + bk, minlength=ca * cb).reshape(ca, cb) / n  # (Ca, Cb)
            nz = joint > 0
            ratio = joint[nz] / np.outer(pa, pb)[nz]
            out[i, k] = max(float(np.sum(joint[nz] * np.log(ratio))), 0.0)
    return out


def normalized_entropy(p: np.ndarray, axis: int) -> np.ndarray:
    """Entropy of non-negative weights along ``axis`` after normalising them, in base = their count.

    ``H_n(P) = -sum_j P_j log_n P_j`` with ``P = w / sum(w)`` and ``0 log 0 = 0``; the result lies in
    [0, 1]. A slice whose weights are all zero gets entropy 1 (no structure: callers give it weight
    0 anyway), and a length-1 axis gets entropy 0 (one outcome, nothing to spread over).
    """
    p = np.asarray(p, dtype=np.float64)
    n = p.shape[axis]
    total = p.sum(axis=axis, keepdims=True)
    safe = np.where(total > 0, total, 1.0)
    q = p / safe
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(q > 0, q * np.log(q), 0.0)
    h = -terms.sum(axis=axis)
    if n <= 1:
        h = np.zeros_like(h)
    else:
        h = h / np.log(n)
    zero = np.squeeze(total, axis=axis) <= 0
    return np.where(zero, 1.0, np.clip(h, 0.0, 1.0))


def default_threads() -> int:
    """Threads for a metric's parallel fits when its ``n_jobs`` is None: PyTorch's setting when
    PyTorch is already loaded (a run's ``train.threads`` under ``gatedvae evaluate``), else the
    CPUs this process may run on. This package never imports torch itself."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return int(torch.get_num_threads())
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
