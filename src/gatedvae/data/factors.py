"""The factor space: K named discrete factors and the index <-> factor-tuple bijection.

A full-grid dataset (dSprites) holds one image per point of the product of its factors,
stored in row-major ("C") order of the factor tuple, so an image's index and its factor
classes are two views of the same number (``np.ravel_multi_index``). Every conversion here
is vectorised over a batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from ..errors import DataError
from ..io import closest

__all__ = ["FactorSpace"]


class FactorSpace:
    """K discrete factors, each with a name, a number of classes and the class values.

    Args:
        names: factor names, in the dataset's canonical order.
        sizes: number of classes of each factor (a size of 1 is allowed: dSprites' colour).
        values: optional per-factor arrays of the physical value of each class (scale 0.5..1,
            orientation in radians, ...). Defaults to ``arange(size)``.
    """

    def __init__(
        self,
        names: Sequence[str],
        sizes: Sequence[int],
        values: Sequence[np.ndarray] | None = None,
    ) -> None:
        names = [str(n) for n in names]
        sizes = [int(s) for s in sizes]
        if len(names) != len(sizes):
            raise DataError(f"factor space: {len(names)} names but {len(sizes)} sizes")
        if len(set(names)) != len(names):
            raise DataError(f"factor space: duplicate factor names in {names}")
        if any(s < 1 for s in sizes):
            raise DataError(f"factor space: every factor needs at least one value, got sizes {sizes}")
        if values is None:
            values = [np.arange(s, dtype=np.float64) for s in sizes]
        values = [np.asarray(v, dtype=np.float64) for v in values]
        if [len(v) for v in values] != sizes:
            raise DataError("factor space: the value arrays do not match the factor sizes")
        self.names: tuple[str, ...] = tuple(names)
        self.sizes: tuple[int, ...] = tuple(sizes)
        self.values: tuple[np.ndarray, ...] = tuple(values)
        self._shape = tuple(sizes)

    # ------------------------------------------------------------------ basics
    @property
    def num_factors(self) -> int:
        return len(self.names)

    def __len__(self) -> int:
        """Number of points of the full grid (product of the sizes)."""
        return int(np.prod(self._shape, dtype=np.int64))

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={s}" for n, s in zip(self.names, self.sizes, strict=True))
        return f"FactorSpace({inner})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, FactorSpace)
            and self.names == other.names
            and self.sizes == other.sizes
            and all(np.array_equal(a, b) for a, b in zip(self.values, other.values, strict=True))
        )

    def __hash__(self) -> int:
        return hash((self.names, self.sizes))

    def listing(self) -> str:
        """The factors with their class counts, ``shape (3), scale (6), ...`` (dataset registrations)."""
        return ", ".join(f"{n} ({s})" for n, s in zip(self.names, self.sizes, strict=True))

    def position(self, factor: str | int) -> int:
        """Position of a factor given by name or position (negative positions allowed)."""
        if isinstance(factor, (int, np.integer)) and not isinstance(factor, bool):
            k = int(factor)
            if not -self.num_factors <= k < self.num_factors:
                raise DataError(
                    f"factor position {k} is out of range for {self.num_factors} factors {list(self.names)}"
                )
            return k % self.num_factors
        if factor in self.names:
            return self.names.index(factor)
        close = closest(str(factor), self.names)
        hint = f"; did you mean '{close}'?" if close else ""
        raise DataError(f"unknown factor '{factor}'{hint} factors are: {', '.join(self.names)}")

    def positions(self, factors: Iterable[str | int]) -> list[int]:
        """Sorted unique positions of several factors."""
        return sorted({self.position(f) for f in factors})

    def size(self, factor: str | int) -> int:
        return self.sizes[self.position(factor)]

    # ------------------------------------------------------------------ bijection
    def to_index(self, factors: np.ndarray) -> np.ndarray:
        """Factor classes ``(N, K)`` -> flat indices ``(N,)`` in row-major order."""
        factors = np.asarray(factors)
        if factors.ndim != 2 or factors.shape[1] != self.num_factors:
            raise DataError(f"expected factor classes of shape (N, {self.num_factors}), got {factors.shape}")
        return np.ravel_multi_index(tuple(factors.T.astype(np.int64)), self._shape).astype(np.int64)  # (N,)

    def to_factors(self, index: np.ndarray) -> np.ndarray:
        """Flat indices ``(N,)`` -> factor classes ``(N, K)`` (int64)."""
        index = np.asarray(index, dtype=np.int64)
        if index.size and (index.min() < 0 or index.max() >= len(self)):
            raise DataError(f"index out of range [0, {len(self)})")
        return np.stack(np.unravel_index(index, self._shape), axis=-1).astype(np.int64)  # (N, K)

    def to_values(self, factors: np.ndarray) -> np.ndarray:
        """Factor classes ``(N, K)`` -> physical values ``(N, K)`` (float64)."""
        factors = np.asarray(factors, dtype=np.int64)
        return np.stack([self.values[k][factors[:, k]] for k in range(self.num_factors)], axis=-1)

    # ------------------------------------------------------------------ sampling
    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` factor tuples drawn uniformly and independently per factor: ``(n, K)`` int64."""
        return np.stack([rng.integers(0, s, size=n) for s in self.sizes], axis=-1).astype(np.int64)

    def resample(
        self,
        factors: np.ndarray,
        keep: Iterable[str | int],
        rng: np.random.Generator,
    ) -> np.ndarray:
        """Copy of ``factors (N, K)`` with every factor not in ``keep`` drawn afresh at random."""
        factors = np.asarray(factors, dtype=np.int64)
        kept = set(self.positions(keep))
        out = factors.copy()
        for k, s in enumerate(self.sizes):
            if k not in kept:
                out[:, k] = rng.integers(0, s, size=len(out))
        return out

    def subspace(self, strides: dict[str, int]) -> tuple[FactorSpace, np.ndarray]:
        """The grid that keeps every ``stride``-th class of the named factors.

        Returns the smaller space and, for each of its points, the index in this space
        (``(len(sub),)`` int64) so a dataset can be subset while staying a full grid.
        """
        keep = [np.arange(s) for s in self.sizes]
        for name, stride in strides.items():
            k = self.position(name)
            keep[k] = np.arange(0, self.sizes[k], int(stride))
        sub = FactorSpace(self.names, [len(c) for c in keep], [v[c] for v, c in zip(self.values, keep, strict=True)])
        grid = np.stack(np.meshgrid(*keep, indexing="ij"), axis=-1).reshape(-1, self.num_factors)  # (n_sub, K)
        return sub, self.to_index(grid)
