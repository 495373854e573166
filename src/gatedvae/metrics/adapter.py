"""The sampling layer: from a trained model and its FactorDataset to what each metric needs.

The metrics in this package are pure functions over arrays (see :mod:`gatedvae.metrics`). This
module is the one place that touches a model and a dataset, as disentanglement_lib separates
``compute_mig`` (sampling) from ``_compute_mig`` (arithmetic):

* :func:`encode` / :func:`encode_posterior`: images at given indices -> posterior means (and
  log-variances), model in eval mode, under ``torch.inference_mode``, in chunks;
* :class:`CodeCache`: the representation is deterministic (the encoder mean), so every image is
  encoded at most once per evaluation however many metrics ask for it. On dSprites the
  FactorVAE and BetaVAE scores request ~2.9 million codes at their published sample sizes,
  i.e. nearly every one of the 737,280 images several times; the cache turns that into one
  pass over the data;
* :func:`representation_fn`: ``(n, K) factor classes -> (n, M) codes``, the call shape of the
  sampler metrics (:mod:`.sampling`);
* :func:`evaluate_model`: every requested metric with a preset's sample sizes, plus the
  partition scores, reconstruction and posterior diagnostics.

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

Factor columns. The array metrics (DCI, MIG, SAP, modularity) get the factor *class indices*
(affine in the value for every factor of our procedural datasets; DCI z-scores them anyway).
Factors with a single class (dSprites' colour) and factors constant over the sample are dropped
first: they carry no information and would make the metrics refuse the input.

Partition scores (ours, for Gated-VAE, ``000_fc03c6fb001bc541.txt`` section III-B): with the
run's partitions, DCI also scores the *partitions* as units (``metrics.dci(units=...)``), and
:func:`assigned_importance_fraction` gives, for each factor a partition declares, the share of
that factor's DCI importance that lies inside its partition (1 = the factor is predicted from its
own partition only; ``chance`` = partition size / M for importance spread evenly).

Reconstruction: ``-log p(x | z = mu)`` of the model's likelihood (Bernoulli or Gaussian, summed
over pixels), the summed squared error, and the sharpness score of the report
``003_527384601d5c0438.txt`` (section 3.3.1: variance of the image Laplacian, after Pech-Pacheco
et al.) of the reconstructions and of the data (:func:`laplacian_sharpness`).
"""

from __future__ import annotations

import difflib
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import ConfigError, DataError
from . import KINDS, METRICS, preset_kwargs
from .beta_vae import beta_vae_from_sampler
from .factor_vae import factor_vae_from_sampler
from .sampling import FactorSampler
from .unsupervised import active_units, kl_per_dim
from .utils import check_positive_int, check_rng

if TYPE_CHECKING:  # pragma: no cover
    from ..data.base import FactorDataset
    from ..train.loop import Prepared

__all__ = [
    "EVAL_METRICS",
    "METRIC_ALIASES",
    "SAMPLE_SIZES",
    "HEADLINE",
    "CodeCache",
    "CACHE_MAX_BYTES",
    "ObservedFactors",
    "ObservedSampler",
    "encode",
    "encode_posterior",
    "representation_fn",
    "resolve_metrics",
    "evaluate_model",
    "headline",
    "laplacian_sharpness",
    "assigned_importance_fraction",
    "factor_vae_observed",
    "beta_vae_observed",
    "reconstruction_scores",
]

#: Per-run metrics in the order they run (UDR compares several runs and is not among them).
EVAL_METRICS: tuple[str, ...] = (
    "dci_lasso",
    "dci_random_forest",
    "dci_classifier",
    "mig",
    "sap",
    "modularity_explicitness",
    "factor_vae",
    "beta_vae",
    "unsupervised",
    "reconstruction",
)

#: Short names accepted by :func:`resolve_metrics` (and ``gatedvae evaluate --metrics``).
METRIC_ALIASES: dict[str, tuple[str, ...]] = {
    "dci": ("dci_lasso", "dci_random_forest", "dci_classifier"),
    "dci_rf": ("dci_random_forest",),
    "modularity": ("modularity_explicitness",),
    "explicitness": ("modularity_explicitness",),
    "factorvae": ("factor_vae",),
    "betavae": ("beta_vae",),
    "recon": ("reconstruction",),
    "all": EVAL_METRICS,
}

#: Sample sizes the adapter draws per preset. ``codes``: images encoded once and shared by every
#: array metric and the posterior diagnostics; 12,500 rows give 10,000 fitting rows at the
#: metrics' ``train_frac=0.8``, disentanglement_lib's ``num_train``. ``reconstruction``: images
#: decoded for the reconstruction scores. The sampler metrics' own sizes (votes, points) are in
#: their presets (:data:`gatedvae.metrics.PRESETS`).
SAMPLE_SIZES: dict[str, dict[str, int]] = {
    "default": {"codes": 12_500, "reconstruction": 5_000},
    "fast": {"codes": 5_000, "reconstruction": 1_000},
}

#: The scores shown in summaries: metric -> keys of its result (``partition.*`` = nested).
HEADLINE: dict[str, tuple[str, ...]] = {
    "dci_lasso": (
        "disentanglement",
        "completeness",
        "informativeness",
        "partition.disentanglement",
        "partition.assigned_fraction.mean",
    ),
    "dci_random_forest": (
        "disentanglement",
        "completeness",
        "informativeness",
        "partition.disentanglement",
        "partition.assigned_fraction.mean",
    ),
    "dci_classifier": (
        "disentanglement",
        "completeness",
        "informativeness_test",
        "partition.disentanglement",
        "partition.assigned_fraction.mean",
    ),
    "mig": ("mig",),
    "sap": ("sap",),
    "modularity_explicitness": ("modularity", "explicitness"),
    "factor_vae": ("eval_accuracy",),
    "beta_vae": ("eval_accuracy",),
    "unsupervised": ("gaussian_total_correlation", "n_active"),
    "reconstruction": ("nll", "sharpness_reconstruction", "sharpness_data"),
}

_DEFAULT_CHUNK = 4096  # images per encoder call (measured: ~2x the images/s of 1024 on 2 cores)


# --------------------------------------------------------------------------- encoding
class _EvalMode:
    """Put a model in eval mode for a block and restore its mode after."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def __enter__(self) -> torch.nn.Module:
        self.was_training = self.model.training
        self.model.eval()
        return self.model

    def __exit__(self, *exc: Any) -> None:
        self.model.train(self.was_training)


def _conditions(prep: Prepared, index: np.ndarray) -> torch.Tensor | None:
    from ..train.loop import condition_vectors

    return condition_vectors(prep.dataset, prep.config.model.condition, index, prep.device)


def encode_posterior(prep: Prepared, index, chunk_size: int = _DEFAULT_CHUNK) -> tuple[np.ndarray, np.ndarray]:
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
    with _EvalMode(prep.model) as model, torch.inference_mode():
        for start in range(0, index.size, chunk_size):
            idx = index[start : start + chunk_size]  # (c,)
            x = store.gather(idx, out=buf[: idx.size])  # (c, C, H, W)
            post = model.encode(x, _conditions(prep, idx))
            mu[start : start + idx.size] = post.mu.float().cpu().numpy()  # (c, M)
            logvar[start : start + idx.size] = post.logvar.float().cpu().numpy()  # (c, M)
    return mu, logvar


def encode(prep: Prepared, index, chunk_size: int = _DEFAULT_CHUNK) -> np.ndarray:
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

    def __init__(self, prep: Prepared, chunk_size: int = _DEFAULT_CHUNK, max_bytes: int | None = None) -> None:
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


# --------------------------------------------------------------------------- pure scores
def laplacian_sharpness(images) -> np.ndarray:
    """Sharpness score of each image: the variance of its Laplacian (report ``003_...`` 3.3.1).

    The report follows Pech-Pacheco et al. (its ref. [9]): convolve with the Laplacian, take the
    variance of the response; low means few edges, i.e. blur. We use the 4-neighbour kernel
    ``[[0, 1, 0], [1, -4, 1], [0, 1, 0]]`` (OpenCV's ``Laplacian`` with ``ksize=1``), borders
    reflected without repeating the edge pixel (OpenCV's default ``BORDER_REFLECT_101``), and
    intensities on the 0..255 scale, so the numbers are on the scale of the report's Table 1.
    The variance is over every pixel and channel of an image.

    Args:
        images: (N, C, H, W) or (N, H, W) floats in [0, 1] (numpy or torch), H, W >= 2.

    Returns:
        (N,) float64 sharpness scores.
    """
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    x = np.asarray(images, dtype=np.float64) * 255.0
    if x.ndim == 3:
        x = x[:, None]  # (N, 1, H, W)
    if x.ndim != 4 or x.shape[-1] < 2 or x.shape[-2] < 2:
        raise DataError(f"images: expected shape (N, C, H, W) with H, W >= 2, got {x.shape}")
    p = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")  # (N, C, H+2, W+2)
    lap = p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:] - 4.0 * x  # (N, C, H, W)
    return lap.reshape(lap.shape[0], -1).var(axis=1)


def assigned_importance_fraction(importance, assigned: Sequence[np.ndarray | None]) -> dict:
    """Share of each factor's importance that lies in the latents assigned to it.

    Args:
        importance: (D, K) non-negative importance matrix (DCI's R).
        assigned: K entries, each the latent indices assigned to factor k (its partition's
            dims; the union when several partitions share the factor) or None if none are.

    Returns:
        dict with ``fraction`` (K,) in [0, 1] (NaN where the factor is not assigned or has no
        importance at all), ``chance`` (K,) = assigned dims / D (the share under importance
        spread evenly over the latents; NaN where not assigned) and ``mean`` (mean over the
        finite entries of ``fraction``; NaN if there are none).
    """
    r = np.abs(np.asarray(importance, dtype=np.float64))  # (D, K)
    if r.ndim != 2:
        raise DataError(f"importance: expected a (D, K) matrix, got shape {r.shape}")
    d, k_fac = r.shape
    if len(assigned) != k_fac:
        raise DataError(f"assigned: expected {k_fac} entries (one per factor), got {len(assigned)}")
    frac = np.full(k_fac, np.nan)
    chance = np.full(k_fac, np.nan)
    col = r.sum(axis=0)  # (K,)
    for k, dims in enumerate(assigned):
        if dims is None or len(dims) == 0:
            continue
        dims = np.unique(np.asarray(dims, dtype=np.int64))
        if (dims < 0).any() or (dims >= d).any():
            raise DataError(f"assigned[{k}]: latent indices {dims.tolist()} out of range for {d} latents")
        chance[k] = dims.size / d
        if col[k] > 0:
            frac[k] = r[dims, k].sum() / col[k]
    finite = frac[np.isfinite(frac)]
    return {"fraction": frac, "chance": chance, "mean": float(finite.mean()) if finite.size else float("nan")}


# --------------------------------------------------------------------------- reconstruction
def reconstruction_scores(prep: Prepared, index, chunk_size: int = 1024) -> dict:
    """Reconstruction error and sharpness on the images at ``index`` of ``prep.dataset``.

    The code is the posterior mean (deterministic). Returns ``nll`` (mean over images of
    ``-log p(x | mu)`` under the model's likelihood, summed over pixels; nats),
    ``squared_error`` (mean per-image sum of squared pixel errors of the mean image),
    ``sharpness_data`` / ``sharpness_reconstruction`` (mean :func:`laplacian_sharpness`),
    ``sharpness_ratio`` (reconstruction over data; 1 = as sharp as the data), per-image
    standard deviations ``*_std``, ``likelihood`` and ``n_images``.
    """
    index = np.asarray(index, dtype=np.int64).reshape(-1)  # (N,)
    nll, se, sharp_x, sharp_r = [], [], [], []
    with _EvalMode(prep.model) as model, torch.no_grad():
        for start in range(0, index.size, chunk_size):
            idx = index[start : start + chunk_size]
            x = prep.dataset.images(idx)  # (c, C, H, W)
            cond = _conditions(prep, idx)
            out = model.decode(model.encode(x, cond).mu, cond)  # (c, C, H, W) logits / pre-activations
            recon = model.mean_image(out).clamp(0, 1)  # (c, C, H, W)
            nll.append(model.reconstruction(out, x).double().cpu().numpy())  # (c,)
            se.append(((recon - x) ** 2).flatten(1).sum(1).double().cpu().numpy())  # (c,)
            sharp_x.append(laplacian_sharpness(x))  # (c,)
            sharp_r.append(laplacian_sharpness(recon))  # (c,)
    nll_a, se_a, sx, sr = (np.concatenate(a) for a in (nll, se, sharp_x, sharp_r))
    return {
        "nll": float(nll_a.mean()),
        "nll_std": float(nll_a.std()),
        "squared_error": float(se_a.mean()),
        "squared_error_std": float(se_a.std()),
        "sharpness_data": float(sx.mean()),
        "sharpness_reconstruction": float(sr.mean()),
        "sharpness_ratio": float(sr.mean() / sx.mean()) if sx.mean() > 0 else float("nan"),
        "sharpness_data_std": float(sx.std()),
        "sharpness_reconstruction_std": float(sr.std()),
        "likelihood": prep.config.model.likelihood,
        "n_images": int(index.size),
    }


# --------------------------------------------------------------------------- the suite
def resolve_metrics(metrics: str | Iterable[str] | None) -> list[str]:
    """Metric names (comma-separated string or list; aliases allowed) -> canonical names in run order.

    ``None`` means every per-run metric. ConfigError names an unknown metric with the nearest
    valid one; ``udr`` is refused with the way to run it.
    """
    if metrics is None:
        return list(EVAL_METRICS)
    items = metrics.split(",") if isinstance(metrics, str) else list(metrics)
    chosen: set[str] = set()
    for raw in items:
        name = str(raw).strip().lower().replace("-", "_")
        if not name:
            continue
        if name == "udr":
            raise ConfigError(
                "udr ranks several runs of one configuration against each other, not one run; "
                "use gatedvae.evaluate.udr_runs(run_dirs)"
            )
        if name in METRIC_ALIASES:
            chosen.update(METRIC_ALIASES[name])
        elif name in EVAL_METRICS:
            chosen.add(name)
        else:
            valid = list(EVAL_METRICS) + list(METRIC_ALIASES)
            close = difflib.get_close_matches(name, valid, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"unknown metric '{raw}'{hint} metrics: {', '.join(valid)}")
    if not chosen:
        raise ConfigError("no metric named; give e.g. --metrics dci,mig")
    return [m for m in EVAL_METRICS if m in chosen]


def _stream(base: int, name: str) -> np.random.Generator:
    """The generator of one named part of an evaluation: independent of which other parts run."""
    return np.random.default_rng([base, zlib.crc32(name.encode())])


def _assignment(prep: Prepared, factor_names: Sequence[str]) -> list[np.ndarray | None]:
    """Latent dims assigned to each factor by the run's partitions (None: no partition claims it)."""
    out: list[np.ndarray | None] = []
    for name in factor_names:
        dims = [
            np.arange(prep.partitions.slice(i).start, prep.partitions.slice(i).stop)
            for i, p in enumerate(prep.config.gating.partitions)
            if name in p.factors
        ]
        out.append(np.concatenate(dims) if dims else None)
    return out


def _partition_extras(prep: Prepared, scores: dict, factor_names: Sequence[str]) -> None:
    """Add names and the assigned-importance fractions to a DCI result's ``partition`` entry."""
    part = scores["partition"]
    frac = assigned_importance_fraction(scores["importance"], _assignment(prep, factor_names))
    part["names"] = list(prep.partitions.names)
    part["assigned_fraction"] = {
        "factors": list(factor_names),
        "per_factor": frac["fraction"],
        "chance": frac["chance"],
        "mean": frac["mean"],
    }


def _dataset_info(ds: FactorDataset, keep: np.ndarray, sampling: str) -> dict:
    names = list(ds.factor_space.names)
    return {
        "name": ds.name,
        "images": len(ds),
        "grid": bool(ds.is_grid),
        "factors": [names[k] for k in keep],
        "factor_sizes": [int(ds.factor_space.sizes[k]) for k in keep],
        "dropped_factors": [n for k, n in enumerate(names) if k not in set(keep.tolist())],
        "sampling": sampling,
    }


def evaluate_model(
    prep: Prepared,
    metrics: str | Iterable[str] | None = None,
    preset: str = "default",
    *,
    rng: np.random.Generator,
    progress: bool = False,
    heldout: FactorDataset | np.ndarray | None = None,
    chunk_size: int = _DEFAULT_CHUNK,
) -> dict:
    """Run the requested metrics on a prepared (trained) model and its dataset.

    Args:
        prep: the run's dataset, model and partitions (:func:`gatedvae.train.prepare`, weights loaded).
        metrics: names or aliases (see :func:`resolve_metrics`); None = all of :data:`EVAL_METRICS`.
        preset: ``"default"`` (the published sample sizes and settings) or ``"fast"``.
        rng: the only source of randomness. One number is drawn from it; every metric then gets a
            generator derived from that number and its own name, so a metric's result does not
            depend on which other metrics ran.
        progress: a tqdm bar over the metrics.
        heldout: where the reconstruction scores are measured: an index array into
            ``prep.dataset`` (the images ``data.holdout`` kept out of training,
            :func:`gatedvae.train.loop.heldout_indices`), or a separate dataset (same image shape
            and factors); default None: a sample of ``prep.dataset``, i.e. training images.
        chunk_size: images per encoder call.

    Returns:
        dict with ``preset``, ``rng_base``, ``dataset`` (name, kept and dropped factors, grid or
        observed sampling), ``samples`` (sizes drawn by the adapter), ``posterior`` (KL per dim,
        active units over the codes sample), ``results`` (metric -> ``scores`` (the metric's full
        output; DCI results carry ``partition`` for gated runs), ``params`` (its keyword
        arguments), ``samples``, ``seconds``), ``encoded_images`` and ``encode_seconds``.
        With ``metrics=None`` on a dataset without varying factors, the supervised metrics are
        left out and listed under ``skipped``. Arrays stay numpy (the caller makes them JSON-safe).
    """
    names = resolve_metrics(metrics)
    if preset not in SAMPLE_SIZES:
        close = difflib.get_close_matches(str(preset), list(SAMPLE_SIZES), n=1)
        raise ConfigError(
            f"unknown preset {preset!r}" + (f"; did you mean {close[0]!r}?" if close else "; use default or fast")
        )
    rng = check_rng(rng)
    base = int(rng.integers(0, 2**63 - 1))
    sizes = SAMPLE_SIZES[preset]
    ds = prep.dataset
    cache = CodeCache(prep, chunk_size)
    n_data = len(ds)

    # The shared codes sample: encoded once, used by every array metric and the diagnostics.
    idx = np.sort(_stream(base, "codes").choice(n_data, size=min(sizes["codes"], n_data), replace=False))  # (n,)
    factors_all = ds.factors_of(idx)  # (n, K)
    keep = np.flatnonzero(np.ptp(factors_all, axis=0) > 0)  # drops size-1 and sample-constant factors
    factor_names = [ds.factor_space.names[k] for k in keep]
    factors = factors_all[:, keep]  # (n, K')
    mu, logvar = cache.posterior(idx)  # (n, M), (n, M)
    t_codes = cache.seconds
    sampling = "grid" if ds.is_grid else "observed"
    out: dict[str, Any] = {
        "preset": preset,
        "rng_base": base,
        "metrics": names,
        "dataset": _dataset_info(ds, keep, sampling),
        "samples": {"codes": int(idx.size)},
        "posterior": {},
        "results": {},
    }
    kl = kl_per_dim(mu, logvar)  # (M,)
    au = active_units(mu)
    out["posterior"] = {
        "kl_per_dim": kl,
        "kl_total": float(kl.sum()),
        "n_active": au["n_active"],
        "active": au["active"],
        "variance": au["variance"],
        "n_images": int(idx.size),
    }
    supervised = [n for n in names if KINDS.get(n) in ("arrays", "sampler")]
    if keep.size == 0 and supervised:
        if metrics is not None:
            raise DataError(
                f"{ds.name}: no factor varies over the sampled images; {', '.join(supervised)} need factors"
            )
        # Weak labels only (bring-your-own images without factor columns): score what needs no factors.
        names = [n for n in names if n not in supervised]
        out["metrics"] = names
        out["skipped"] = {n: "the dataset has no factor that varies" for n in supervised}

    units = prep.partitions.units() if prep.partitions is not None else None
    observed = None
    iterator: Iterable[str] = names
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(names, desc="metrics", unit="metric", dynamic_ncols=True)
        iterator = bar
    for name in iterator:
        if bar is not None:
            bar.set_postfix_str(name)
        t0 = time.perf_counter()
        enc0 = cache.seconds
        mrng = _stream(base, name)
        entry: dict[str, Any] = {}
        if name == "reconstruction":
            params = {"n_images": sizes["reconstruction"], "code": "posterior mean"}
            if isinstance(heldout, np.ndarray):  # indices of prep.dataset the trainer never drew
                rprep = prep
                pool = np.asarray(heldout, dtype=np.int64)
                source = f"held-out images ({pool.size} of {len(ds)} held out of training: data.holdout)"
                ridx = np.sort(mrng.choice(pool, size=min(sizes["reconstruction"], pool.size), replace=False))
            else:
                if heldout is not None:
                    rprep = replace(prep, dataset=heldout.to(prep.device))
                    source = f"held-out images ({heldout.name}, {len(heldout)} images)"
                else:
                    rprep = prep
                    source = "training images (data.holdout = 0: every image was a training image)"
                m = len(rprep.dataset)
                ridx = np.sort(mrng.choice(m, size=min(sizes["reconstruction"], m), replace=False))
            params = dict(params, source="heldout" if heldout is not None else "training")
            scores = reconstruction_scores(rprep, ridx)
            scores["source"] = source
            entry.update(scores=scores, params=params, samples={"images": int(ridx.size)})
        else:
            kind = KINDS[name]
            params = preset_kwargs(name, preset)
            if kind == "arrays":
                kwargs = dict(params)
                if units is not None and name.startswith("dci"):
                    kwargs["units"] = units
                scores = METRICS[name](mu, factors, mrng, **kwargs)
                if units is not None and name.startswith("dci"):
                    _partition_extras(prep, scores, factor_names)
                    params = dict(params, units=list(prep.partitions.names))
                entry.update(scores=scores, params=params, samples={"codes": int(idx.size)})
            elif kind == "codes":
                scores = METRICS[name](mu, mrng, **params)
                entry.update(scores=scores, params=params, samples={"codes": int(idx.size)})
            elif kind == "sampler":
                if ds.is_grid:
                    fn = representation_fn(prep, cache=cache)
                    scores = METRICS[name](fn, list(ds.factor_space.sizes), mrng, **params)
                else:
                    observed = observed or ObservedFactors(ds.factors, ds.factor_space.sizes)
                    sampler = factor_vae_observed if name == "factor_vae" else beta_vae_observed
                    scores = sampler(cache, observed, mrng, **params)
                scores["factors"] = list(ds.factor_space.names)  # rows of the vote tables
                samples = {k: params[k] for k in ("batch_size", "n_train", "n_eval", "n_variance") if k in params}
                entry.update(scores=scores, params=dict(params, sampling=sampling), samples=samples)
            else:  # pragma: no cover - resolve_metrics admits no other kind
                raise ConfigError(f"metric {name} cannot run on one model")
        entry["seconds"] = time.perf_counter() - t0
        entry["encode_seconds"] = cache.seconds - enc0
        out["results"][name] = entry
    if bar is not None:
        bar.close()
    out["samples"]["reconstruction"] = out["results"].get("reconstruction", {}).get("samples", {}).get("images", 0)
    out["encoded_images"] = cache.n_encoded
    out["encode_seconds"] = cache.seconds
    out["codes_seconds"] = t_codes
    out["factor_names"] = factor_names
    return out


def _lookup(scores: dict, dotted: str) -> Any:
    node: Any = scores
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def headline(result: dict) -> dict[str, float]:
    """``"metric.key" -> value`` of the :data:`HEADLINE` scores present in an evaluation result."""
    out: dict[str, float] = {}
    for name, keys in HEADLINE.items():
        entry = result.get("results", {}).get(name)
        if not entry:
            continue
        for key in keys:
            value = _lookup(entry["scores"], key)
            if value is not None and not isinstance(value, (dict, list, np.ndarray, str)):
                out[f"{name}.{key}"] = float(value)
    return out
