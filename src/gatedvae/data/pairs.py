"""Pair samplers: the weak supervision of the Gated-VAE.

A Gated-VAE partition is trained on (input, target) image pairs whose generative factors
agree on the partition's *shared* factors and are drawn at random elsewhere
(``000_fc03c6fb001bc541.txt``, section III-B and IV-A: "in order to train the partition that
is intended to learn the size of the shape ... the target batch is chosen such that the size
of the shape in each of the target images is the same as the size of the shape in each of
the paired input images"). The samplers here produce such pairs as index arrays:

* :class:`ExactPairSampler`: same classes of the shared factors. On a full-grid dataset this
  is index arithmetic (the target index is the input index with the other factors' digits
  replaced); on any other labelled dataset, a draw from the input's group of equal shared
  classes (grouped once, by sorting).
* :class:`ClusterPairSampler`: continuous weak labels (a face tracker's pose angles and
  action units) clustered by k-means; pairs share a cluster. The paper clusters OpenFace
  outputs into 2,500 pose and 4,000 expression clusters (section IV-B).
* :class:`IdentityPairSampler`: x = x', ordinary VAE training (a "free" partition).
* :class:`KChangedPairSampler`: the pairs of Locatello et al. 2020 ("Weakly-Supervised
  Disentanglement Without Compromises"): the two images share every factor but ``k`` (fixed, or
  uniform in 1..K-1 per pair), and which factors changed is recorded per pair
  (``PairBatch.changed``) for the models that may be told; index arithmetic on a full grid.

Every sampler takes the ``np.random.Generator`` to draw from, can replace a fraction
``noise`` of its pairs with random targets (to measure robustness to wrong weak labels),
and returns a :class:`PairBatch` carrying the declared shared-factor mask and which pairs
were replaced. No Python loop runs per pair.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import DataError, PartitionError
from ..io import closest
from .base import FactorDataset

__all__ = [
    "PairBatch",
    "PairSampler",
    "ExactPairSampler",
    "ClusterPairSampler",
    "IdentityPairSampler",
    "KChangedPairSampler",
    "make_sampler",
    "make_pair_sampler",
    "group_index",
    "PAPER_IMAGES_PER_CLUSTER",
    "MIN_IMAGES_PER_CLUSTER",
    "suggested_clusters",
]

#: Images per k-means cluster in the paper (section IV-B: 202,599 CelebA images in 4,000
#: expression and 2,500 pose clusters): about 51 and 81. docs/pairs.md, "How many clusters".
PAPER_IMAGES_PER_CLUSTER: tuple[int, int] = (50, 80)
#: Fewer images per cluster than this, on average, draw a warning: a pair's target is then its
#: input itself more than 10% of the time (the chance is exactly clusters / images).
MIN_IMAGES_PER_CLUSTER = 10


def suggested_clusters(n_images: int) -> tuple[int, int]:
    """The cluster counts that give ``n_images`` the paper's 50-80 images per cluster (at least 2)."""
    few, many = PAPER_IMAGES_PER_CLUSTER
    return max(2, round(n_images / many)), max(2, round(n_images / few))


def _clusters_hint(n_images: int) -> str:
    lo, hi = suggested_clusters(n_images)
    few, many = PAPER_IMAGES_PER_CLUSTER
    about = f"{lo}-{hi}" if lo < hi else f"{lo}"
    return f"use about {about} (the paper's {few}-{many} images per cluster; docs/pairs.md)"


@dataclass(frozen=True)
class PairBatch:
    """A batch of pairs.

    Attributes:
        input: ``(B,)`` int64 indices of the input images.
        target: ``(B,)`` int64 indices of the target images.
        shared: ``(K,)`` bool, the dataset factors that the sampler declares shared
            (all True for identity pairs; False for weak-label clusters, which are not
            dataset factors).
        noisy: ``(B,)`` bool, pairs whose target was replaced by a random image.
        changed: ``(B, K)`` bool, the factors each pair's draw changed (:class:`KChangedPairSampler`;
            None for the samplers whose pairs all share ``shared``). A noisy pair keeps the changes
            its draw intended: what a wrong weak label would say.
    """

    input: np.ndarray
    target: np.ndarray
    shared: np.ndarray
    noisy: np.ndarray
    changed: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.input)

    def shared_per_pair(self) -> np.ndarray:
        """``(B, K)`` bool: the factors each pair is declared to share (``shared`` for every pair, or the
        factors its draw did not change)."""
        if self.changed is None:
            return np.broadcast_to(self.shared, (len(self), len(self.shared))).copy()
        return self.shared[None, :] | ~self.changed  # (B, K)

    def k(self) -> np.ndarray:
        """``(B,)`` int64: how many factors each pair's draw changed (0 without ``changed``)."""
        if self.changed is None:
            return np.zeros(len(self), dtype=np.int64)
        return self.changed.sum(axis=1).astype(np.int64)


def group_index(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Group items by an integer key, once, for vectorised within-group draws.

    Args:
        keys: ``(N,)`` int64 group key of each item.

    Returns:
        ``order`` (N,) item indices sorted by group, ``start`` (G,) and ``count`` (G,)
        of each group within ``order``, and ``group`` (N,) the group of each item.
    """
    uniq, group, count = np.unique(keys, return_inverse=True, return_counts=True)  # (G,), (N,), (G,)
    order = np.argsort(group, kind="stable")  # (N,)
    start = np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int64)  # (G,)
    return order.astype(np.int64), start, count.astype(np.int64), group.reshape(-1).astype(np.int64)


class PairSampler:
    """Base class: ``sample(batch_size, rng) -> PairBatch``."""

    def __init__(self, dataset: FactorDataset, noise: float = 0.0) -> None:
        if not 0.0 <= noise <= 1.0:
            raise PartitionError(f"pair noise must lie in [0, 1], got {noise}")
        if len(dataset) == 0:
            raise DataError(f"{dataset.name}: the dataset has no images")
        self.dataset = dataset
        self.noise = float(noise)
        self.n = len(dataset)
        self.shared = np.zeros(dataset.factor_space.num_factors, dtype=bool)

    def _targets(self, inputs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def _draw(self, inputs: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
        """The targets ``(B,)`` and, for samplers whose pairs differ in what they share, the changed
        factors ``(B, K)`` (None otherwise)."""
        return self._targets(inputs, rng), None

    def sample(self, batch_size: int, rng: np.random.Generator) -> PairBatch:
        """Draw ``batch_size`` inputs uniformly and a target for each."""
        inputs = rng.integers(0, self.n, size=batch_size, dtype=np.int64)  # (B,)
        return self.pairs_for(inputs, rng)

    def pairs_for(self, inputs: np.ndarray, rng: np.random.Generator) -> PairBatch:
        """Targets for given inputs (the same draw order as :meth:`sample` after the inputs)."""
        inputs = np.asarray(inputs, dtype=np.int64)  # (B,)
        target, changed = self._draw(inputs, rng)  # (B,), (B, K) or None
        if self.noise > 0.0:
            noisy = rng.random(len(inputs)) < self.noise  # (B,)
            random_targets = rng.integers(0, self.n, size=len(inputs), dtype=np.int64)  # (B,)
            target = np.where(noisy, random_targets, target)
        else:
            noisy = np.zeros(len(inputs), dtype=bool)
        return PairBatch(inputs, target, self.shared.copy(), noisy, changed)


class IdentityPairSampler(PairSampler):
    """x = x': the target is the input (ordinary VAE training)."""

    def __init__(self, dataset: FactorDataset, noise: float = 0.0) -> None:
        super().__init__(dataset, noise)
        self.shared[:] = True

    def _targets(self, inputs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return inputs.copy()


class ExactPairSampler(PairSampler):
    """Targets with the same classes of ``factors`` as the input; other factors at random.

    On a full-grid dataset the other factors are drawn uniformly and independently (the
    paper's protocol); on other datasets the target is drawn uniformly from the images that
    share the input's classes, i.e. from the empirical conditional distribution.
    """

    def __init__(self, dataset: FactorDataset, factors: Sequence[str | int], noise: float = 0.0) -> None:
        super().__init__(dataset, noise)
        space = dataset.factor_space
        if not factors:
            raise PartitionError("an exact pair sampler needs at least one shared factor")
        try:
            self.keep = space.positions(factors)
        except DataError as exc:
            raise PartitionError(str(exc)) from None
        self.shared[self.keep] = True
        self.free = [k for k in range(space.num_factors) if k not in self.keep and space.sizes[k] > 1]
        if dataset.is_grid:
            # Row-major strides of the factor grid: index = sum_k class_k * stride_k.
            sizes = np.asarray(space.sizes, dtype=np.int64)
            self._strides = np.concatenate([np.cumprod(sizes[::-1])[::-1][1:], [1]]).astype(np.int64)  # (K,)
            self._sizes = sizes
        else:
            f = dataset.factors[:, self.keep]  # (N, |keep|)
            keys = np.ravel_multi_index(tuple(f.T), tuple(space.sizes[k] for k in self.keep))  # (N,)
            self._order, self._start, self._count, self._group = group_index(keys)

    def _targets(self, inputs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.dataset.is_grid:
            target = inputs.copy()  # (B,)
            for k in self.free:
                old = (inputs // self._strides[k]) % self._sizes[k]  # (B,)
                new = rng.integers(0, self._sizes[k], size=len(inputs), dtype=np.int64)  # (B,)
                target += (new - old) * self._strides[k]
            return target
        g = self._group[inputs]  # (B,)
        offset = (rng.random(len(inputs)) * self._count[g]).astype(np.int64)  # (B,)
        return self._order[self._start[g] + offset]


class KChangedPairSampler(PairSampler):
    """Pairs that share all factors but ``k``: the weak supervision of Locatello et al. 2020.

    "Weakly-Supervised Disentanglement Without Compromises" (Locatello, Poole, Raetsch, Schoelkopf,
    Bachem and Tschannen, ICML 2020) trains on pairs of observations that differ in a few factors
    (section 3): the input is uniform over the dataset, ``k`` of the K changeable factors are chosen
    uniformly at random (without replacement) and each takes another of its values, uniformly, the
    others stay. Which factors changed is not part of the pair a model sees; it is kept in
    ``PairBatch.changed`` for the models that are told (``pairs.tell_k``: k; GVAE / ML-VAE with
    known groups: the shared factors).

    Args:
        dataset: a full-grid dataset (every combination of factor values has an image: dSprites,
            3D Shapes, MPI3D, ...): the target is index arithmetic on the input's factor digits.
        k: the number of changed factors, 1..K-1, or ``"random"``: uniform in 1..K-1 per pair (the
            paper reports both k = 1 and k random).
        factors: the factors a pair may change (default: every factor with more than one value); the
            others are always shared (``PairBatch.shared``).
        noise: fraction of pairs whose target is replaced by a random image.
        draw: ``"exact"`` (exactly k factors differ) or ``"disentanglement_lib"``: the reference code's
            ``simple_dynamics`` (``methods/weak/train_weak_lib.py``): the number of factors resampled is 1
            or k with probability 1/2 each, and each resampled factor takes a uniform value, possibly its
            old one (``changed`` then marks the factors resampled).
        where: the config section the arguments came from (``pairs``), or a command's option
            (``--pairs``), for messages.

    A batch costs a few vectorised draws: k (when random), a ``(B, K)`` uniform array whose ranks pick
    the changed set, and a ``(B, K)`` array of value offsets; no Python loop per pair.
    """

    def __init__(
        self,
        dataset: FactorDataset,
        k: int | str = 1,
        factors: Sequence[str | int] = (),
        noise: float = 0.0,
        draw: str = "exact",
        where: str = "pairs",
    ) -> None:
        super().__init__(dataset, noise)
        space = dataset.factor_space

        def key(name: str) -> str:  # the setting a message names: pairs.k, ... (or a command's option)
            return where if where.startswith("-") else f"{where}.{name}"

        kind = where if where.startswith("-") else f"{where}.kind=k_changed"
        if not dataset.is_grid:
            raise PartitionError(
                f"{kind} needs a full factor grid (an image for every combination of factor values), "
                f"but dataset '{dataset.name}' is labelled items; use pairs.kind=partitions (exact or cluster "
                "partitions) with it"
            )
        if draw not in ("exact", "disentanglement_lib"):
            raise PartitionError(f"{key('draw')}: '{draw}' is not one of exact, disentanglement_lib")
        if factors:
            unknown = [f for f in factors if isinstance(f, str) and f not in space.names]
            if unknown:
                near = closest(str(unknown[0]), list(space.names))
                hint = f"; did you mean '{near}'?" if near else ";"
                raise PartitionError(
                    f"{key('factors')} names '{unknown[0]}', which dataset '{dataset.name}' lacks{hint} "
                    f"its factors are: {', '.join(space.names)}"
                )
            positions = space.positions(factors)
            fixed = [space.names[p] for p in positions if space.sizes[p] < 2]
            if fixed:
                raise PartitionError(
                    f"{key('factors')} names '{fixed[0]}', which has one value in dataset '{dataset.name}' and cannot "
                    "change; drop it"
                )
        else:
            positions = [p for p, size in enumerate(space.sizes) if size > 1]
        self.changeable = np.asarray(sorted(positions), dtype=np.int64)  # (K',)
        n_free = len(self.changeable)
        names = ", ".join(space.names[p] for p in self.changeable) or "none"
        if n_free < 2:
            raise PartitionError(
                f"{kind} needs at least 2 factors that can change (k lies in 1..K-1), "
                f"dataset '{dataset.name}' has {n_free} ({names})"
            )
        if k != "random" and not (isinstance(k, (int, np.integer)) and 1 <= int(k) <= n_free - 1):
            given = f"{where} {k}" if where.startswith("-") else f"{key('k')}={k}"
            raise PartitionError(
                f"{given} but {n_free} factors can change ({names}), so k must lie in 1..{n_free - 1} (or be 'random')"
            )
        self.k = k if k == "random" else int(k)
        self.draw = draw
        self.shared[:] = True
        self.shared[self.changeable] = False  # the declared shared factors: those that never change
        sizes = np.asarray(space.sizes, dtype=np.int64)
        strides = np.concatenate([np.cumprod(sizes[::-1])[::-1][1:], [1]]).astype(np.int64)  # (K,)
        self._sizes = sizes[self.changeable]  # (K',)
        self._strides = strides[self.changeable]  # (K',)

    @property
    def num_changeable(self) -> int:
        """K: how many factors a pair may change."""
        return len(self.changeable)

    def _draw(self, inputs: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        b, n_free = len(inputs), self.num_changeable
        if self.k == "random":
            k = rng.integers(1, n_free, size=b, dtype=np.int64)  # (B,) uniform in 1..K'-1
        else:
            k = np.full(b, self.k, dtype=np.int64)  # (B,)
        if self.draw == "disentanglement_lib":
            # simple_dynamics: random_state.choice([1, k]): 1 or k factors, each with probability 1/2
            k = np.where(rng.integers(0, 2, size=b) == 0, 1, k)  # (B,)
        # a uniform k-subset per row: the k smallest of K' uniform keys
        keys = rng.random((b, n_free))  # (B, K')
        rank = np.argsort(np.argsort(keys, axis=1), axis=1)  # (B, K') rank of each key in its row
        change = rank < k[:, None]  # (B, K')
        old = (inputs[:, None] // self._strides[None, :]) % self._sizes[None, :]  # (B, K')
        if self.draw == "disentanglement_lib":
            new = rng.integers(0, self._sizes[None, :], size=(b, n_free), dtype=np.int64)  # (B, K') may equal old
        else:
            offset = rng.integers(1, self._sizes[None, :], size=(b, n_free), dtype=np.int64)  # (B, K') in 1..size-1
            new = (old + offset) % self._sizes[None, :]  # (B, K') uniform over the other values
        delta = np.where(change, (new - old) * self._strides[None, :], 0)  # (B, K')
        target = inputs + delta.sum(axis=1)  # (B,)
        changed = np.zeros((b, len(self.shared)), dtype=bool)  # (B, K)
        changed[:, self.changeable] = change
        return target, changed


class ClusterPairSampler(PairSampler):
    """Targets in the same k-means cluster of continuous weak labels as the input.

    Args:
        dataset: a dataset with weak-label columns (or factors, whose values are then used).
        columns: the weak-label (or factor) columns to cluster together, e.g. the three
            head-pose angles.
        n_clusters: number of k-means clusters (2,500 for pose and 4,000 for expression
            in the paper, scaled to the dataset size).
        rng: the generator that seeds k-means (clustering is part of the sampler's set-up).
        noise: fraction of pairs replaced by random targets.
        name: the partition's name, for messages.

    More clusters than images is an error; fewer than :data:`MIN_IMAGES_PER_CLUSTER` images per
    cluster a ``RuntimeWarning`` (most pairs would be an image with itself or a near copy).
    Columns are standardised before clustering. ``MiniBatchKMeans`` is used above 20,000
    images (full ``KMeans`` below), so clustering 200,000 rows into thousands of clusters
    takes seconds, not hours.
    """

    def __init__(
        self,
        dataset: FactorDataset,
        columns: Sequence[str],
        n_clusters: int,
        rng: np.random.Generator,
        noise: float = 0.0,
        name: str = "",
    ) -> None:
        super().__init__(dataset, noise)
        who = f"partition '{name}': " if name else ""
        if not columns:
            raise PartitionError(f"{who}a cluster pair sampler needs at least one label column to cluster")
        if n_clusters < 2:
            raise PartitionError(f"{who}a cluster pair sampler needs at least 2 clusters, got {n_clusters}")
        if n_clusters > self.n:
            raise PartitionError(
                f"{who}{n_clusters} clusters requested but the dataset has only {self.n} images; "
                + _clusters_hint(self.n)
            )
        table = self._columns(dataset, columns, who)  # (N, C)
        std = table.std(axis=0)
        table = (table - table.mean(axis=0)) / np.where(std > 0, std, 1.0)  # (N, C)
        seed = int(rng.integers(0, 2**31 - 1))
        from sklearn.cluster import KMeans, MiniBatchKMeans

        if self.n > 20_000:
            km = MiniBatchKMeans(n_clusters=n_clusters, random_state=seed, batch_size=4096, n_init=3)
        else:
            km = KMeans(n_clusters=n_clusters, random_state=seed, n_init=3)
        self.labels = km.fit_predict(table).astype(np.int64)  # (N,)
        self._order, self._start, self._count, self._group = group_index(self.labels)
        self.n_clusters = int(len(self._count))
        if self.n < MIN_IMAGES_PER_CLUSTER * self.n_clusters:
            warnings.warn(
                f"{who}{self.n_clusters} clusters of {self.n} images hold {self.n / self.n_clusters:.1f} images "
                f"each, so {self.n_clusters / self.n:.0%} of the pairs are an image with itself; "
                + _clusters_hint(self.n),
                RuntimeWarning,
                stacklevel=2,
            )

    def _columns(self, dataset: FactorDataset, columns: Sequence[str], who: str = "") -> np.ndarray:
        cols = []
        for c in columns:
            if c in dataset.weak_names:
                cols.append(dataset.weak[:, dataset.weak_names.index(c)])  # type: ignore[index]
            elif c in dataset.factor_space.names:
                k = dataset.factor_space.position(c)
                cols.append(dataset.factor_space.values[k][dataset.factors[:, k]])
                self.shared[k] = True
            else:
                unloaded = _not_loaded(dataset, [c], "data.weak_columns", who)
                if unloaded is not None:
                    raise unloaded
                valid = list(dataset.weak_names) + list(dataset.factor_space.names)
                near = closest(c, valid) or closest(c, dataset.label_columns)
                hint = f"; did you mean '{near}'?" if near else ";"
                raise PartitionError(
                    f"{who}unknown label column '{c}' for clustering{hint} "
                    f"the dataset has: {', '.join(valid) or 'no labels'}"
                )
        return np.stack(cols, axis=-1).astype(np.float64)  # (N, C)

    def _targets(self, inputs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        g = self._group[inputs]  # (B,)
        offset = (rng.random(len(inputs)) * self._count[g]).astype(np.int64)  # (B,)
        return self._order[self._start[g] + offset]


def _not_loaded(dataset: FactorDataset, columns: Sequence[str], setting: str, who: str) -> PartitionError | None:
    """The error for columns that the labels file has but were not loaded: add them to ``setting``."""
    in_file = [c for c in columns if c in dataset.label_columns]
    if not in_file:
        return None
    names = ", ".join(f"'{c}'" for c in in_file)
    one = len(in_file) == 1
    return PartitionError(
        f"{who}{names} {'is a column' if one else 'are columns'} of {dataset.label_file} but not in {setting}; "
        f"add {'it' if one else 'them'} there ({setting}=[..., {', '.join(in_file)}])"
    )


def make_sampler(dataset: FactorDataset, partition, rng: np.random.Generator) -> PairSampler:
    """The sampler a :class:`~gatedvae.config.PartitionConfig` asks for."""
    if partition.sampler == "identity":
        return IdentityPairSampler(dataset, noise=partition.noise)
    if partition.sampler == "exact":
        missing = [f for f in partition.factors if f not in dataset.factor_space.names]
        if missing:
            unloaded = _not_loaded(dataset, missing, "data.factor_columns", f"partition '{partition.name}': ")
            if unloaded is not None:
                raise unloaded
            raise PartitionError(
                f"partition '{partition.name}' names factor(s) {missing} that dataset '{dataset.name}' lacks; "
                f"its factors are: {', '.join(dataset.factor_space.names) or 'none'}"
            )
        return ExactPairSampler(dataset, partition.factors, noise=partition.noise)
    if partition.sampler == "cluster":
        return ClusterPairSampler(
            dataset, partition.factors, partition.clusters, rng, noise=partition.noise, name=partition.name
        )
    raise PartitionError(f"unknown sampler '{partition.sampler}'; use exact, cluster or identity")


def make_pair_sampler(dataset: FactorDataset, pairs) -> PairSampler:
    """The sampler of an un-gated run's ``pairs`` section (:class:`~gatedvae.config.PairsConfig`,
    ``kind: k_changed``); ``kind: partitions`` uses the partitions' own samplers (:func:`make_sampler`)."""
    if pairs.kind == "k_changed":
        return KChangedPairSampler(dataset, pairs.k, pairs.factors, noise=pairs.noise, draw=pairs.draw)
    raise PartitionError(f"pairs.kind={pairs.kind} has no sampler of its own; use k_changed")
