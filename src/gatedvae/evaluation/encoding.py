"""Encoding a dataset with a trained model, for the metrics: the one place that touches a model
and a dataset on the metrics' behalf, as disentanglement_lib separates ``compute_mig`` (sampling)
from ``_compute_mig`` (arithmetic; here :mod:`gatedvae.metrics`):

* :func:`encode` / :func:`encode_posterior`: images at given indices -> posterior means (and
  log-variances), model in eval mode, under ``torch.inference_mode``, in chunks;
* :class:`CodeCache`: the representation is deterministic (the encoder mean), so every image is
  encoded at most once per evaluation however many metrics ask for it. On dSprites the
  FactorVAE and BetaVAE scores request ~2.9 million codes at their published sample sizes,
  i.e. nearly every one of the 737,280 images several times; the cache turns that into one
  pass over the data;
* :func:`representation_fn`: ``(n, K) factor classes -> (n, M) codes``, the call shape of the
  sampler metrics (:mod:`gatedvae.metrics.sampling`);
* :class:`ObservedFactors` / :class:`ObservedSampler`: the sampler metrics on a labelled dataset.

Grid and non-grid datasets. On a full-grid dataset (dSprites) every factor tuple names one image,
so the FactorVAE and BetaVAE scores run exactly as published: factors drawn uniformly and
independently, one held fixed. A labelled (non-grid) dataset (CorrelatedEllipses, a folder of
images with a CSV) holds only some combinations -- CorrelatedEllipses is built to correlate x
with y -- so uniform independent tuples mostly name images that do not exist. There we restrict
sampling to *observed* combinations (our choice, stated): a FactorVAE group holds factor k at
the class of a random image and draws its members uniformly from the images with that class; a
BetaVAE pair is a random image and a random image sharing its class of factor k. The other
factors then follow the data's distribution given factor k instead of being independent: on
correlated data a factor correlated with the fixed one also varies less within a group, which
is what such data can show. :func:`representation_fn` on a non-grid dataset maps each tuple to
an image with exactly those classes (a random one when given an ``rng``) and raises DataError
for a tuple no image has.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import DataError
from ..metrics.beta_vae import beta_vae_from_sampler
from ..metrics.factor_vae import factor_vae_from_sampler
from ..metrics.sampling import FactorSampler
from ..metrics.utils import check_positive_int
from ..run import condition_vectors, eval_mode

if TYPE_CHECKING:  # pragma: no cover
    from ..run import Prepared

__all__ = [
    "CodeCache",
    "CACHE_MAX_BYTES",
    "ObservedFactors",
    "ObservedSampler",
    "encode",
    "encode_posterior",
    "representation_fn",
    "factor_vae_observed",
    "beta_vae_observed",
    "conditions",
    "DEFAULT_CHUNK",
]

DEFAULT_CHUNK = 4096  # images per encoder call (measured: ~2x the images/s of 1024 on 2 cores)


def conditions(prep: Prepared, index: np.ndarray) -> torch.Tensor | None:
    """The decoder's condition vectors of the images at ``index`` (None for an unconditional model)."""
    return condition_vectors(prep.dataset, prep.config.model.condition, index, prep.device)


def encode_posterior(prep: Prepared, index, chunk_size: int = DEFAULT_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Posterior means and log-variances of the images at ``index``: two float32 (N, M) arrays.

    The model runs in eval mode (batch-norm running statistics) under ``torch.inference_mode``, in
    chunks of ``chunk_size`` images; its training mode is restored afterwards. For a
    full-covariance posterior the log-variance is that of Sigma's diagonal.
    """
    index = np.asarray(index, dtype=np.int64).reshape(-1)  # (N,)
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    m = prep.model.latent_dim
    mu = np.empty((index.size, m), dtype=np.float32)  # (N, M)
    logvar = np.empty((index.size, m), dtype=np.float32)  # (N, M)
    store = prep.dataset.store
    # One reused input buffer and inference mode: ~25% more images/s than fresh tensors under
    # no_grad on 2 cores (allocating and zeroing 64 MB per chunk is not free).
    buf = torch.empty(
        (min(chunk_size, max(index.size, 1)), *prep.dataset.image_shape), dtype=torch.float32, device=prep.device
    )
    with eval_mode(prep.model) as model, torch.inference_mode():
        for start in range(0, index.size, chunk_size):
            idx = index[start : start + chunk_size]  # (c,)
            x = store.gather(idx, out=buf[: idx.size])  # (c, C, H, W)
            post = model.encode(x, conditions(prep, idx))
            mu[start : start + idx.size] = post.mu.float().cpu().numpy()  # (c, M)
            logvar[start : start + idx.size] = post.logvar.float().cpu().numpy()  # (c, M)
    return mu, logvar


def encode(prep: Prepared, index, chunk_size: int = DEFAULT_CHUNK) -> np.ndarray:
    """Codes (posterior means) of the images at ``index``: float64 (N, M)."""
    return encode_posterior(prep, index, chunk_size)[0].astype(np.float64)


#: The largest cache (means and log-variances, float32, for every image) :class:`CodeCache` keeps.
#: Wider representations -- raw pixels: 4,096 dims x 737,280 dSprites images = 24 GB -- are encoded
#: again on every request instead (cheap for a baseline whose "encoder" is a gather or a matmul).
CACHE_MAX_BYTES = 2 * 2**30


class CodeCache:
    """Posterior means and log-variances of a dataset's images, encoded on first use and kept.

    Holds two float32 (N, M) arrays for the whole dataset (59 MB for dSprites at M = 10) and a
    mask of the rows already encoded; ``n_encoded`` counts the images that went through the
    encoder. When the two arrays would exceed ``max_bytes`` (default :data:`CACHE_MAX_BYTES`)
    nothing is kept (``keeps`` is False) and every request is encoded afresh.
    """

    def __init__(self, prep: Prepared, chunk_size: int = DEFAULT_CHUNK, max_bytes: int | None = None) -> None:
        self.prep = prep
        self.chunk_size = check_positive_int(chunk_size, "chunk_size")
        n, m = len(prep.dataset), prep.model.latent_dim
        self.keeps = 2 * 4 * n * m <= (CACHE_MAX_BYTES if max_bytes is None else max_bytes)
        rows = n if self.keeps else 0
        self.mu = np.zeros((rows, m), dtype=np.float32)  # (N, M)
        self.logvar = np.zeros((rows, m), dtype=np.float32)  # (N, M)
        self.done = np.zeros(rows, dtype=bool)  # (N,)
        self.n_encoded = 0
        self.seconds = 0.0

    def _encode(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t0 = time.perf_counter()
        mu, logvar = encode_posterior(self.prep, index, self.chunk_size)
        self.n_encoded += int(index.size)
        self.seconds += time.perf_counter() - t0
        return mu, logvar

    def fill(self, index) -> None:
        """Encode the images at ``index`` that are not cached yet (nothing when not keeping)."""
        if not self.keeps:
            return
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        todo = np.unique(index[~self.done[index]])  # (t,) sorted: contiguous gathers
        if todo.size:
            self.mu[todo], self.logvar[todo] = self._encode(todo)
            self.done[todo] = True

    def codes(self, index) -> np.ndarray:
        """float64 codes of the images at ``index``: shape ``index.shape + (M,)``."""
        index = np.asarray(index, dtype=np.int64)
        if not self.keeps:
            return self.posterior(index)[0]
        self.fill(index)
        return self.mu[index].astype(np.float64)

    def posterior(self, index) -> tuple[np.ndarray, np.ndarray]:
        """float64 (mu, logvar) of the images at ``index``: each of shape ``index.shape + (M,)``."""
        index = np.asarray(index, dtype=np.int64)
        if not self.keeps:
            mu, logvar = self._encode(index.reshape(-1))  # (n, M) each
            shape = index.shape + (mu.shape[1],)
            return mu.astype(np.float64).reshape(shape), logvar.astype(np.float64).reshape(shape)
        self.fill(index)
        return self.mu[index].astype(np.float64), self.logvar[index].astype(np.float64)


# --------------------------------------------------------------------------- factors -> images
class _TupleLookup:
    """Factor tuple -> the images that have it, for a non-grid dataset (sorted keys, searchsorted)."""

    def __init__(self, factors: np.ndarray, sizes: Sequence[int]) -> None:
        self.sizes = tuple(int(s) for s in sizes)
        keys = np.ravel_multi_index(factors.T, self.sizes)  # (N,)
        self.order = np.argsort(keys, kind="stable")  # (N,)
        self.keys, self.starts, self.counts = np.unique(keys[self.order], return_index=True, return_counts=True)

    def images(self, factors: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        factors = np.asarray(factors, dtype=np.int64)
        sizes = np.asarray(self.sizes)
        if factors.ndim != 2 or factors.shape[1] != sizes.size:
            raise DataError(f"factor classes: expected shape (n, {sizes.size}), got {factors.shape}")
        if (factors < 0).any() or (factors >= sizes).any():
            raise DataError(f"factor classes outside 0..size-1 for factor sizes {list(self.sizes)}")
        q = np.ravel_multi_index(factors.T, self.sizes)  # (n,)
        pos = np.clip(np.searchsorted(self.keys, q), 0, self.keys.size - 1)  # (n,)
        missing = self.keys[pos] != q
        if missing.any():
            bad = factors[np.flatnonzero(missing)[0]].tolist()
            raise DataError(
                f"no image has the factor classes {bad} ({int(missing.sum())} of {q.size} requested tuples are "
                "missing); this labelled dataset does not cover every combination -- sample observed combinations "
                "instead (evaluate_model does)"
            )
        offset = rng.integers(0, self.counts[pos]) if rng is not None else 0  # (n,) or 0
        return self.order[self.starts[pos] + offset]


def representation_fn(
    prep: Prepared, rng: np.random.Generator | None = None, cache: CodeCache | None = None
) -> Callable[[np.ndarray], np.ndarray]:
    """The representation as the sampler metrics call it: ``(n, K) factor classes -> (n, M) codes``.

    Full-grid dataset: the image with each tuple (``dataset.index_of``). Non-grid dataset: an
    image with exactly those classes -- a random one when ``rng`` is given, else the first --
    and DataError for a tuple that no image has (see the module docstring). Codes come from
    ``cache`` (a fresh :class:`CodeCache` if None).
    """
    cache = cache or CodeCache(prep)
    ds = prep.dataset
    if ds.is_grid:

        def fn(factors: np.ndarray) -> np.ndarray:
            return cache.codes(ds.index_of(np.asarray(factors, dtype=np.int64)))  # (n, M)
    else:
        lookup = _TupleLookup(ds.factors, ds.factor_space.sizes)

        def fn(factors: np.ndarray) -> np.ndarray:
            return cache.codes(lookup.images(factors, rng))  # (n, M)

    return fn


class ObservedFactors:
    """Images grouped by the class of each factor, for sampling observed combinations.

    Args:
        factors: (N, K) int factor classes of the dataset's images.
        sizes: (K,) number of classes of each factor.
    """

    def __init__(self, factors: np.ndarray, sizes: Sequence[int]) -> None:
        self.factors = np.asarray(factors, dtype=np.int64)  # (N, K)
        self.sizes = np.asarray(sizes, dtype=np.int64)  # (K,)
        self.order = [np.argsort(self.factors[:, k], kind="stable") for k in range(self.sizes.size)]
        self.counts = [np.bincount(self.factors[:, k], minlength=int(s)) for k, s in enumerate(self.sizes)]
        self.starts = [np.cumsum(c) - c for c in self.counts]
        #: factors with at least two observed classes: the ones a metric may hold fixed.
        self.eligible = np.array([k for k, c in enumerate(self.counts) if (c > 0).sum() >= 2], dtype=np.int64)

    def __len__(self) -> int:
        return int(self.factors.shape[0])

    def same_class(self, factor: np.ndarray, anchor: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
        """For each row r, ``count`` random images sharing factor ``factor[r]``'s class with image ``anchor[r]``.

        Args:
            factor: (n,) factor index per row.
            anchor: (n,) image index per row.
            count: images drawn per row (with replacement; the anchor itself may be drawn).

        Returns:
            (n, count) int64 image indices.
        """
        factor = np.asarray(factor, dtype=np.int64)
        anchor = np.asarray(anchor, dtype=np.int64)
        out = np.empty((factor.size, count), dtype=np.int64)  # (n, count)
        for k in np.unique(factor):
            rows = np.flatnonzero(factor == k)  # (r,)
            cls = self.factors[anchor[rows], k]  # (r,)
            offset = rng.integers(0, self.counts[k][cls][:, None], size=(rows.size, count))  # (r, count)
            out[rows] = self.order[k][self.starts[k][cls][:, None] + offset]
        return out


class ObservedSampler(FactorSampler):
    """The FactorVAE / BetaVAE draws on observed combinations of a labelled dataset, as codes.

    A group holds factor k at the class of a random image and draws its members uniformly from
    the images with that class; a pair is a random image and a random image sharing its class of
    factor k; random codes are those of uniformly drawn images (see the module docstring).
    """

    def __init__(self, cache: CodeCache, observed: ObservedFactors) -> None:
        self.cache = cache
        self.observed = observed
        self.num_factors = int(observed.sizes.size)
        self.eligible = observed.eligible

    def random_codes(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.cache.codes(rng.integers(0, len(self.observed), size=n))  # (n, M)

    def group_codes(self, fixed: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
        anchor = rng.integers(0, len(self.observed), size=fixed.size)  # (v,)
        return self.cache.codes(self.observed.same_class(fixed, anchor, size, rng))  # (v, B, M)

    def pair_codes(self, fixed: np.ndarray, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        v = fixed.size
        first = rng.integers(0, len(self.observed), size=(v, size))  # (v, L)
        second = self.observed.same_class(np.repeat(fixed, size), first.reshape(-1), 1, rng)  # (v L, 1)
        return self.cache.codes(first), self.cache.codes(second.reshape(v, size))  # (v, L, M) each


def factor_vae_observed(cache: CodeCache, observed: ObservedFactors, rng: np.random.Generator, **kwargs) -> dict:
    """The FactorVAE score (:func:`gatedvae.metrics.factor_vae_score`) on observed combinations:
    :func:`~gatedvae.metrics.factor_vae.factor_vae_from_sampler` over an :class:`ObservedSampler`
    (same keyword arguments, votes, classifier and keys as the grid version)."""
    return factor_vae_from_sampler(ObservedSampler(cache, observed), rng, **kwargs)


def beta_vae_observed(cache: CodeCache, observed: ObservedFactors, rng: np.random.Generator, **kwargs) -> dict:
    """The BetaVAE score (:func:`gatedvae.metrics.beta_vae_score`) on observed combinations:
    :func:`~gatedvae.metrics.beta_vae.beta_vae_from_sampler` over an :class:`ObservedSampler`."""
    return beta_vae_from_sampler(ObservedSampler(cache, observed), rng, **kwargs)
