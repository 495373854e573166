"""The sampler interface shared by the metrics that must *choose* their factors (FactorVAE, BetaVAE).

Those metrics need batches in which one factor is held fixed, so they cannot work from a fixed
array of (codes, factors). They take instead:

* ``representation_fn(factor_classes) -> codes``: maps an (n, K) int array of factor classes to
  an (n, D) float array of codes (for a model: render or look up the images with those factors,
  encode, return the means);
* ``factor_sizes``: the number of classes of each of the K factors.

Factors are drawn uniformly and independently per factor (the full-grid datasets' distribution).
A factor of size 1 (dSprites' colour) is never chosen as the fixed factor: fixing a constant
changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..errors import ConfigError, DataError

__all__ = ["RepresentationFn", "check_factor_sizes", "sample_factors", "encode"]

RepresentationFn = Callable[[np.ndarray], np.ndarray]


def check_factor_sizes(factor_sizes: Sequence[int]) -> np.ndarray:
    """(K,) int64 array of factor sizes; ConfigError unless every size >= 1 and one is >= 2."""
    try:
        sizes = np.asarray(factor_sizes)
    except (TypeError, ValueError):
        raise ConfigError(f"factor_sizes: expected a list of positive integers, got {factor_sizes!r}") from None
    if sizes.ndim != 1 or sizes.size == 0 or not np.issubdtype(sizes.dtype, np.integer) or (sizes < 1).any():
        raise ConfigError(f"factor_sizes: expected a non-empty list of positive integers, got {factor_sizes!r}")
    if not (sizes >= 2).any():
        raise ConfigError(f"factor_sizes: every factor has a single class ({sizes.tolist()}); nothing to score")
    return sizes.astype(np.int64)


def sample_factors(rng: np.random.Generator, sizes: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform factor classes of shape ``shape + (K,)``."""
    return rng.integers(0, sizes, size=tuple(shape) + (sizes.size,))  # (..., K)


def encode(representation_fn: RepresentationFn, factors: np.ndarray, chunk_size: int) -> np.ndarray:
    """Apply ``representation_fn`` to (n, K) factors in chunks; returns (n, D) float64, checked."""
    if not callable(representation_fn):
        raise ConfigError(f"representation_fn: expected a callable (n, K) -> (n, D), got {type(representation_fn).__name__}")
    n = factors.shape[0]
    parts = []
    for start in range(0, n, chunk_size):
        chunk = factors[start : start + chunk_size]  # (c, K)
        try:
            z = np.asarray(representation_fn(chunk), dtype=np.float64)
        except (TypeError, ValueError) as exc:  # a non-numeric return value
            raise DataError(f"representation_fn: returned something that is not a numeric array ({exc})") from None
        if z.ndim != 2 or z.shape[0] != chunk.shape[0]:
            raise DataError(f"representation_fn: expected codes of shape ({chunk.shape[0]}, D), got {z.shape}")
        if parts and z.shape[1] != parts[0].shape[1]:
            raise DataError(f"representation_fn: code width changed from {parts[0].shape[1]} to {z.shape[1]}")
        if not np.isfinite(z).all():
            raise DataError("representation_fn: returned NaN or inf codes")
        parts.append(z)
    return np.concatenate(parts, axis=0)  # (n, D)
