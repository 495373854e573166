"""Disentanglement metrics: pure numpy functions with an explicit ``np.random.Generator``.

Four call shapes (``KINDS``):

* ``"arrays"``:  ``fn(codes (N, D), factors (N, K), rng, **kw)`` -- DCI, MIG, SAP, modularity;
* ``"sampler"``: ``fn(representation_fn, factor_sizes, rng, **kw)`` -- FactorVAE and BetaVAE
  scores, which choose their own factor batches (see :mod:`.sampling`);
* ``"models"``:  ``fn(codes_list, rng, **kw)`` -- UDR over several models' codes;
* ``"codes"``:   ``fn(codes, rng, **kw)`` -- factor-free scores.

Every metric returns a dict of scalars and arrays. Each metric's file registers it once
(:func:`~.registry.register_metric`: function, kind, presets, headline keys); ``METRICS`` maps a
name to its function, ``PRESETS[name]`` holds its ``"default"`` (the published settings) and
``"fast"`` keyword arguments, and :func:`compute` runs one by name with a preset. This package
never imports torch: sampling a model and a dataset for the metrics is :mod:`gatedvae.evaluation`.
"""

from __future__ import annotations

from typing import Any

from ..io import unknown_choice
from .registry import KINDS, METRICS, PRESETS, MetricSpec, get_metric, register_metric, registered

# One import line per metric module; importing a module registers its metrics. The order of these
# lines is the order in which an evaluation runs the metrics and reports them (isort would sort it).
# isort: off
from .dci import dci, dci_classifier, dci_from_importance, dci_lasso, dci_random_forest, group_importance
from .mig import mig, mig_from_mutual_info
from .sap import sap, sap_from_scores
from .modularity import modularity_explicitness, modularity_from_mutual_info
from .factor_vae import factor_vae_score, factor_vae_score_from_votes, factor_vae_votes
from .beta_vae import beta_vae_score, beta_vae_score_from_features
from .udr import lasso_similarity, spearman_similarity, udr, udr_pair_score
from .unsupervised import (
    active_units,
    discrete_mutual_info_score,
    gaussian_mutual_info,
    gaussian_total_correlation,
    gaussian_wasserstein_correlation,
    kl_per_dim,
    unsupervised_scores,
)

# isort: on
from .utils import discrete_entropy, discrete_mutual_info, discretize

__all__ = [
    "METRICS",
    "PRESETS",
    "KINDS",
    "MetricSpec",
    "register_metric",
    "registered",
    "get_metric",
    "compute",
    "preset_kwargs",
    # arrays
    "dci",
    "dci_lasso",
    "dci_random_forest",
    "dci_classifier",
    "dci_from_importance",
    "group_importance",
    "mig",
    "mig_from_mutual_info",
    "sap",
    "sap_from_scores",
    "modularity_explicitness",
    "modularity_from_mutual_info",
    # sampler
    "factor_vae_score",
    "factor_vae_votes",
    "factor_vae_score_from_votes",
    "beta_vae_score",
    "beta_vae_score_from_features",
    # models
    "udr",
    "udr_pair_score",
    "spearman_similarity",
    "lasso_similarity",
    # codes only
    "unsupervised_scores",
    "gaussian_total_correlation",
    "gaussian_wasserstein_correlation",
    "discrete_mutual_info_score",
    "gaussian_mutual_info",
    "active_units",
    "kl_per_dim",
    # helpers
    "discretize",
    "discrete_entropy",
    "discrete_mutual_info",
]


def preset_kwargs(name: str, preset: str = "default") -> dict[str, Any]:
    """A copy of the keyword arguments of ``preset`` ("default" or "fast") for metric ``name``."""
    presets = get_metric(name).presets
    if preset not in presets:
        raise unknown_choice("preset", preset, presets)
    return dict(presets[preset])


def compute(name: str, *args, preset: str = "default", **overrides) -> dict:
    """Run metric ``name`` on ``args`` with ``preset``'s keyword arguments, then ``overrides``."""
    kwargs = preset_kwargs(name, preset)
    kwargs.update(overrides)
    return get_metric(name).fn(*args, **kwargs)
