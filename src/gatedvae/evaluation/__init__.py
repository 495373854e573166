"""Evaluating trained models with the metrics of :mod:`gatedvae.metrics`.

* :mod:`.encoding`: a model and its dataset -> codes (posterior means, a per-evaluation cache, the
  representation function of the sampler metrics, observed-combination sampling);
* :mod:`.reconstruction`: reconstruction error and sharpness;
* :mod:`.suite`: the metric suite over a prepared run (:func:`evaluate_model`), driven by the
  metric registry, and the headline scores;
* :mod:`.runs`: a run directory -> ``metrics.json`` and figures (:func:`evaluate_run`, on the
  device of :func:`evaluation_device`), UDR over several runs (:func:`udr_runs`).

Layering: this package imports :mod:`gatedvae.run` (the one loader of a trained run) and
:mod:`gatedvae.viz` (the figures), never :mod:`gatedvae.train`.
"""

from __future__ import annotations

from typing import Any

from ..viz.evaluation import write_figures
from . import suite as _suite
from .encoding import (
    CACHE_MAX_BYTES,
    CodeCache,
    ObservedFactors,
    ObservedSampler,
    beta_vae_observed,
    encode,
    encode_posterior,
    factor_vae_observed,
    representation_fn,
)
from .reconstruction import laplacian_sharpness, reconstruction_scores
from .runs import FORMAT, evaluate_run, evaluation_device, format_headline, to_jsonable, udr_runs, write_json
from .suite import (
    RECONSTRUCTION,
    SAMPLE_SIZES,
    assigned_importance_fraction,
    eval_metrics,
    evaluate_model,
    headline,
    headline_keys,
    metric_aliases,
    resolve_metrics,
)

__all__ = [
    # the suite
    "EVAL_METRICS",  # noqa: F822  (a live view of the metric registry: module __getattr__ below)
    "METRIC_ALIASES",  # noqa: F822  (a live view of the metric registry: module __getattr__ below)
    "HEADLINE",  # noqa: F822  (a live view of the metric registry: module __getattr__ below)
    "SAMPLE_SIZES",
    "RECONSTRUCTION",
    "eval_metrics",
    "metric_aliases",
    "headline_keys",
    "resolve_metrics",
    "evaluate_model",
    "headline",
    "assigned_importance_fraction",
    # encoding
    "CodeCache",
    "CACHE_MAX_BYTES",
    "ObservedFactors",
    "ObservedSampler",
    "encode",
    "encode_posterior",
    "representation_fn",
    "factor_vae_observed",
    "beta_vae_observed",
    # reconstruction
    "laplacian_sharpness",
    "reconstruction_scores",
    # runs
    "evaluate_run",
    "evaluation_device",
    "udr_runs",
    "format_headline",
    "to_jsonable",
    "write_json",
    "write_figures",
    "FORMAT",
]


def __getattr__(name: str) -> Any:
    """``EVAL_METRICS``, ``METRIC_ALIASES``, ``HEADLINE``: views of the metric registry, current when read."""
    if name in ("EVAL_METRICS", "METRIC_ALIASES", "HEADLINE"):
        return getattr(_suite, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
