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

Both metrics run one sampling loop (in :mod:`.factor_vae` and :mod:`.beta_vae`) over a
:class:`FactorSampler`: the three draws they need, as codes. :class:`GridSampler` draws factor
tuples (the published procedure); the evaluation's ``ObservedSampler`` draws observed combinations
of a labelled dataset (:mod:`gatedvae.evaluation.encoding`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..errors import ConfigError, DataError

__all__ = ["RepresentationFn", "FactorSampler", "GridSampler", "check_factor_sizes", "sample_factors", "encode"]

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
        raise ConfigError(
            f"representation_fn: expected a callable (n, K) -> (n, D), got {type(representation_fn).__name__}"
        )
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


class FactorSampler:
    """What the FactorVAE and BetaVAE scores draw, as codes. Subclasses fill in the three draws.

    Attributes:
        num_factors: K, the rows of the vote tables.
        eligible: (E,) int indices of the factors that may be held fixed (more than one class).
    """

    num_factors: int
    eligible: np.ndarray

    def random_codes(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Codes (n, D) of n independent random inputs."""
        raise NotImplementedError

    def group_codes(self, fixed: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
        """Codes (v, size, D): for each row r, ``size`` inputs sharing one random class of factor ``fixed[r]``."""
        raise NotImplementedError

    def pair_codes(self, fixed: np.ndarray, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Codes (v, size, D) twice: ``size`` pairs per row r that share their class of factor ``fixed[r]``."""
        raise NotImplementedError


class GridSampler(FactorSampler):
    """Factor tuples drawn uniformly and independently, encoded by ``representation_fn``.

    Args:
        representation_fn: ``(n, K) int factor classes -> (n, D) codes``.
        factor_sizes: (K,) classes per factor.
        chunk_size: at most this many rows go to ``representation_fn`` at once.
    """

    def __init__(self, representation_fn: RepresentationFn, factor_sizes: Sequence[int], chunk_size: int) -> None:
        self.fn = representation_fn
        self.sizes = check_factor_sizes(factor_sizes)
        self.num_factors = int(self.sizes.size)
        self.eligible = np.flatnonzero(self.sizes >= 2)
        self.chunk_size = chunk_size
        self.width: int | None = None

    def _encode(self, factors: np.ndarray) -> np.ndarray:
        z = encode(self.fn, factors, self.chunk_size)  # (n, D)
        if self.width is not None and z.shape[1] != self.width:
            raise DataError(f"representation_fn: code width changed from {self.width} to {z.shape[1]}")
        self.width = z.shape[1]
        return z

    def random_codes(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self._encode(sample_factors(rng, self.sizes, (n,)))  # (n, D)

    def group_codes(self, fixed: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
        v = fixed.size
        f = sample_factors(rng, self.sizes, (v, size))  # (v, B, K)
        rows = np.arange(v)
        f[rows, :, fixed] = f[rows, 0, fixed][:, None]  # hold factor fixed[r] at its first draw
        return self._encode(f.reshape(v * size, -1)).reshape(v, size, -1)  # (v, B, D)

    def pair_codes(self, fixed: np.ndarray, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        v = fixed.size
        f1 = sample_factors(rng, self.sizes, (v, size))  # (v, L, K)
        f2 = sample_factors(rng, self.sizes, (v, size))  # (v, L, K)
        rows = np.arange(v)
        f2[rows, :, fixed] = f1[rows, :, fixed]  # pairs agree on the fixed factor
        both = np.concatenate([f1, f2], axis=0).reshape(2 * v * size, -1)  # (2 v L, K)
        z = self._encode(both).reshape(2, v, size, -1)  # (2, v, L, D)
        return z[0], z[1]
