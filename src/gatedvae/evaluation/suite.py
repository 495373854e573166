"""The metric suite over a prepared run: which metrics run, on which samples, with which seeds.

:func:`evaluate_model` runs every requested metric of the registry (:mod:`gatedvae.metrics`) on a
trained model and its dataset with a preset's sample sizes, plus the reconstruction scores
(:mod:`.reconstruction`) and posterior diagnostics. What it knows about a metric comes from the
metric's registration (kind, presets, headline keys, ``partition_units``, ``from_sampler``); it
tests no metric by name.

Factor columns. The array metrics (DCI, MIG, SAP, modularity) get the factor *class indices*
(affine in the value for every factor of our procedural datasets; DCI z-scores them anyway).
Factors with a single class (dSprites' colour) and factors constant over the sample are dropped
first: they carry no information and would make the metrics refuse the input.

Partition scores (ours, for Gated-VAE, ``000_fc03c6fb001bc541.txt`` section III-B): with the
run's partitions, a metric registered with ``partition_units`` (DCI) also scores the *partitions*
as units (``metrics.dci(units=...)``), and :func:`assigned_importance_fraction` gives, for each
factor a partition declares, the share of that factor's DCI importance that lies inside its
partition (1 = the factor is predicted from its own partition only; ``chance`` = partition size
/ M for importance spread evenly).

``EVAL_METRICS``, ``METRIC_ALIASES`` and ``HEADLINE`` are computed from the registry when read, so
a metric registered after this module was imported is in them too.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError, DataError
from ..io import closest, unknown_choice
from ..metrics import METRICS, get_metric, preset_kwargs, registered
from ..metrics.unsupervised import active_units, kl_per_dim
from ..metrics.utils import check_rng
from .encoding import DEFAULT_CHUNK, CodeCache, ObservedFactors, ObservedSampler, representation_fn
from .reconstruction import reconstruction_scores

if TYPE_CHECKING:  # pragma: no cover
    from ..data.base import FactorDataset
    from ..run import Prepared

__all__ = [
    "EVAL_METRICS",  # noqa: F822  (a live view of the registry: module __getattr__ below)
    "METRIC_ALIASES",  # noqa: F822  (a live view of the registry: module __getattr__ below)
    "SAMPLE_SIZES",
    "HEADLINE",  # noqa: F822  (a live view of the registry: module __getattr__ below)
    "RECONSTRUCTION",
    "eval_metrics",
    "metric_aliases",
    "headline_keys",
    "resolve_metrics",
    "evaluate_model",
    "headline",
    "assigned_importance_fraction",
]

#: The evaluation's own score besides the registered metrics: it needs the decoder, so it is not a
#: pure metric (:func:`.reconstruction.reconstruction_scores`). It runs last.
RECONSTRUCTION = "reconstruction"
_OWN_ALIASES: dict[str, tuple[str, ...]] = {"recon": (RECONSTRUCTION,)}
_OWN_HEADLINE: dict[str, tuple[str, ...]] = {RECONSTRUCTION: ("nll", "sharpness_reconstruction", "sharpness_data")}

#: Sample sizes the suite draws per preset. ``codes``: images encoded once and shared by every
#: array metric and the posterior diagnostics; 12,500 rows give 10,000 fitting rows at the
#: metrics' ``train_frac=0.8``, disentanglement_lib's ``num_train``. ``reconstruction``: images
#: decoded for the reconstruction scores. The sampler metrics' own sizes (votes, points) are in
#: their presets (:data:`gatedvae.metrics.PRESETS`).
SAMPLE_SIZES: dict[str, dict[str, int]] = {
    "default": {"codes": 12_500, "reconstruction": 5_000},
    "fast": {"codes": 5_000, "reconstruction": 1_000},
}


def eval_metrics() -> tuple[str, ...]:
    """Per-run metrics in the order they run: the registered suite metrics, then reconstruction
    (UDR compares several runs and is not among them)."""
    return (*(s.name for s in registered() if s.suite), RECONSTRUCTION)


def metric_aliases() -> dict[str, tuple[str, ...]]:
    """Short names accepted by :func:`resolve_metrics` (and ``gatedvae evaluate --metrics``)."""
    out: dict[str, tuple[str, ...]] = {}
    for spec in registered():
        for alias in spec.aliases if spec.suite else ():
            out[alias] = (*out.get(alias, ()), spec.name)
    return {**out, **_OWN_ALIASES, "all": eval_metrics()}


def headline_keys() -> dict[str, tuple[str, ...]]:
    """The scores shown in summaries: metric -> keys of its result (``partition.*`` = nested)."""
    return {**{s.name: s.headline for s in registered() if s.headline}, **_OWN_HEADLINE}


_VIEWS = {"EVAL_METRICS": eval_metrics, "METRIC_ALIASES": metric_aliases, "HEADLINE": headline_keys}


def __getattr__(name: str) -> Any:
    """``EVAL_METRICS``, ``METRIC_ALIASES``, ``HEADLINE``: views of the registry, current when read."""
    if name in _VIEWS:
        return _VIEWS[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------- partition scores
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


# --------------------------------------------------------------------------- the suite
def resolve_metrics(metrics: str | Iterable[str] | None) -> list[str]:
    """Metric names (comma-separated string or list; aliases allowed) -> canonical names in run order.

    ``None`` means every per-run metric. ConfigError names an unknown metric with the nearest
    valid one; a registered metric that cannot run on one model (UDR) is refused with the way to
    run it.
    """
    suite = eval_metrics()
    if metrics is None:
        return list(suite)
    aliases = metric_aliases()
    items = metrics.split(",") if isinstance(metrics, str) else list(metrics)
    chosen: set[str] = set()
    for raw in items:
        name = str(raw).strip().lower().replace("-", "_")
        if not name:
            continue
        if name in aliases:
            chosen.update(aliases[name])
        elif name in suite:
            chosen.add(name)
        elif name in METRICS:
            raise ConfigError(get_metric(name).not_in_suite or f"metric {name!r} does not run on one model")
        else:
            valid = list(suite) + list(aliases)
            near = closest(name, valid)
            hint = f"; did you mean '{near}'?" if near else ";"
            raise ConfigError(f"unknown metric '{raw}'{hint} metrics: {', '.join(valid)}")
    if not chosen:
        raise ConfigError("no metric named; give e.g. --metrics dci,mig")
    return [m for m in suite if m in chosen]


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
    chunk_size: int = DEFAULT_CHUNK,
) -> dict:
    """Run the requested metrics on a prepared (trained) model and its dataset.

    Args:
        prep: the run's dataset, model and partitions (:func:`gatedvae.run.prepare`, weights loaded).
        metrics: names or aliases (see :func:`resolve_metrics`); None = all of :data:`EVAL_METRICS`.
        preset: ``"default"`` (the published sample sizes and settings) or ``"fast"``.
        rng: the only source of randomness. One number is drawn from it; every metric then gets a
            generator derived from that number and its own name, so a metric's result does not
            depend on which other metrics ran.
        progress: a bar over the metrics (:func:`gatedvae.progress.progress_bar`).
        heldout: where the reconstruction scores are measured: an index array into
            ``prep.dataset`` (the images ``data.holdout`` kept out of training,
            :func:`gatedvae.run.heldout_indices`), or a separate dataset (same image shape
            and factors); default None: a sample of ``prep.dataset``, i.e. training images.
        chunk_size: images per encoder call.

    Returns:
        dict with ``preset``, ``rng_base``, ``dataset`` (name, kept and dropped factors, grid or
        observed sampling), ``samples`` (sizes drawn by the suite), ``posterior`` (KL per dim,
        active units over the codes sample), ``results`` (metric -> ``scores`` (the metric's full
        output; DCI results carry ``partition`` for gated runs), ``params`` (its keyword
        arguments), ``samples``, ``seconds``), ``encoded_images`` and ``encode_seconds``.
        With ``metrics=None`` on a dataset without varying factors, the supervised metrics are
        left out and listed under ``skipped``. Arrays stay numpy (the caller makes them JSON-safe).
    """
    names = resolve_metrics(metrics)
    if preset not in SAMPLE_SIZES:
        raise unknown_choice("preset", preset, SAMPLE_SIZES)
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
    supervised = [n for n in names if n in METRICS and get_metric(n).needs_factors]
    if keep.size == 0 and supervised:
        if metrics is not None:
            free = [n for n in eval_metrics() if n not in METRICS or not get_metric(n).needs_factors]
            labels = (
                " or name discrete label columns in data.factor_columns" if prep.config.data.name == "images" else ""
            )
            raise DataError(
                f"{ds.name}: no factor varies over the sampled images, and these metrics need factors: "
                f"{', '.join(supervised)}; run --metrics {','.join(free)} (they need none){labels}"
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
        from ..progress import progress_bar  # plain lines when stderr is not a terminal

        bar = progress_bar(names, desc="metrics", unit="metric")
        iterator = bar
    for name in iterator:
        if bar is not None:
            bar.set_postfix_str(name)
        t0 = time.perf_counter()
        enc0 = cache.seconds
        mrng = _stream(base, name)
        entry: dict[str, Any] = {}
        if name == RECONSTRUCTION:
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
            spec = get_metric(name)
            params = preset_kwargs(name, preset)
            if spec.kind == "arrays":
                by_partition = units is not None and spec.partition_units
                scores = spec.fn(mu, factors, mrng, **params, **({"units": units} if by_partition else {}))
                if by_partition:
                    _partition_extras(prep, scores, factor_names)
                    params = dict(params, units=list(prep.partitions.names))
                entry.update(scores=scores, params=params, samples={"codes": int(idx.size)})
            elif spec.kind == "codes":
                scores = spec.fn(mu, mrng, **params)
                entry.update(scores=scores, params=params, samples={"codes": int(idx.size)})
            elif spec.kind == "sampler":
                if ds.is_grid or spec.from_sampler is None:
                    fn = representation_fn(prep, cache=cache)
                    scores = spec.fn(fn, list(ds.factor_space.sizes), mrng, **params)
                else:
                    observed = observed or ObservedFactors(ds.factors, ds.factor_space.sizes)
                    scores = spec.from_sampler(ObservedSampler(cache, observed), mrng, **params)
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
    for name, keys in headline_keys().items():
        entry = result.get("results", {}).get(name)
        if not entry:
            continue
        for key in keys:
            value = _lookup(entry["scores"], key)
            if value is not None and not isinstance(value, (dict, list, np.ndarray, str)):
                out[f"{name}.{key}"] = float(value)
    return out
