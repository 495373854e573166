"""Disentanglement metrics: pure numpy functions with an explicit ``np.random.Generator``.

Four call shapes (``KINDS``):

* ``"arrays"``:  ``fn(codes (N, D), factors (N, K), rng, **kw)`` -- DCI, MIG, SAP, modularity;
* ``"sampler"``: ``fn(representation_fn, factor_sizes, rng, **kw)`` -- FactorVAE and BetaVAE
  scores, which choose their own factor batches (see :mod:`.sampling`);
* ``"models"``:  ``fn(codes_list, rng, **kw)`` -- UDR over several models' codes;
* ``"codes"``:   ``fn(codes, rng, **kw)`` -- factor-free scores.

Every metric returns a dict of scalars and arrays. ``METRICS`` maps a name to its function,
``PRESETS[name]`` holds its ``"default"`` (the published settings) and ``"fast"`` keyword
arguments, and :func:`compute` runs one by name with a preset.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

from ..errors import ConfigError
from .beta_vae import BETA_VAE_DEFAULTS, BETA_VAE_FAST, beta_vae_score, beta_vae_score_from_features
from .dci import (
    DCI_CLASSIFIER_DEFAULTS,
    DCI_CLASSIFIER_FAST,
    DCI_DEFAULTS,
    DCI_FAST,
    dci,
    dci_classifier,
    dci_from_importance,
    dci_lasso,
    dci_random_forest,
    group_importance,
)
from .factor_vae import (
    FACTOR_VAE_DEFAULTS,
    FACTOR_VAE_FAST,
    factor_vae_score,
    factor_vae_score_from_votes,
    factor_vae_votes,
)
from .mig import MIG_DEFAULTS, MIG_FAST, mig, mig_from_mutual_info
from .modularity import MODULARITY_DEFAULTS, MODULARITY_FAST, modularity_explicitness, modularity_from_mutual_info
from .sap import SAP_DEFAULTS, SAP_FAST, sap, sap_from_scores
from .udr import UDR_DEFAULTS, UDR_FAST, lasso_similarity, spearman_similarity, udr, udr_pair_score
from .unsupervised import (
    UNSUPERVISED_DEFAULTS,
    UNSUPERVISED_FAST,
    active_units,
    gaussian_mutual_info,
    gaussian_total_correlation,
    kl_per_dim,
    unsupervised_scores,
)
from .utils import discrete_entropy, discrete_mutual_info, discretize

__all__ = [
    "METRICS",
    "PRESETS",
    "KINDS",
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
    "gaussian_mutual_info",
    "active_units",
    "kl_per_dim",
    # helpers
    "discretize",
    "discrete_entropy",
    "discrete_mutual_info",
    # the adapter: a model and its dataset -> the metrics (imported last; it uses the registry)
    "evaluate_model",
    "encode",
    "encode_posterior",
    "representation_fn",
    "resolve_metrics",
    "headline",
    "CodeCache",
    "EVAL_METRICS",
    "SAMPLE_SIZES",
    "laplacian_sharpness",
    "assigned_importance_fraction",
]

_DCI_VARIANT_DEFAULTS = {k: v for k, v in DCI_DEFAULTS.items() if k != "regressor"}
_DCI_VARIANT_FAST = {k: v for k, v in DCI_FAST.items() if k != "regressor"}

#: name -> metric function.
METRICS: dict[str, Callable[..., dict]] = {
    "dci_lasso": dci_lasso,
    "dci_random_forest": dci_random_forest,
    "dci_classifier": dci_classifier,
    "mig": mig,
    "sap": sap,
    "modularity_explicitness": modularity_explicitness,
    "factor_vae": factor_vae_score,
    "beta_vae": beta_vae_score,
    "udr": udr,
    "unsupervised": unsupervised_scores,
}

#: name -> call shape (see the module docstring).
KINDS: dict[str, str] = {
    "dci_lasso": "arrays",
    "dci_random_forest": "arrays",
    "dci_classifier": "arrays",
    "mig": "arrays",
    "sap": "arrays",
    "modularity_explicitness": "arrays",
    "factor_vae": "sampler",
    "beta_vae": "sampler",
    "udr": "models",
    "unsupervised": "codes",
}

#: name -> {"default": kwargs, "fast": kwargs}.
PRESETS: dict[str, dict[str, dict]] = {
    "dci_lasso": {"default": _DCI_VARIANT_DEFAULTS, "fast": _DCI_VARIANT_FAST},
    "dci_random_forest": {"default": _DCI_VARIANT_DEFAULTS, "fast": _DCI_VARIANT_FAST},
    "dci_classifier": {"default": DCI_CLASSIFIER_DEFAULTS, "fast": DCI_CLASSIFIER_FAST},
    "mig": {"default": MIG_DEFAULTS, "fast": MIG_FAST},
    "sap": {"default": SAP_DEFAULTS, "fast": SAP_FAST},
    "modularity_explicitness": {"default": MODULARITY_DEFAULTS, "fast": MODULARITY_FAST},
    "factor_vae": {"default": FACTOR_VAE_DEFAULTS, "fast": FACTOR_VAE_FAST},
    "beta_vae": {"default": BETA_VAE_DEFAULTS, "fast": BETA_VAE_FAST},
    "udr": {"default": UDR_DEFAULTS, "fast": UDR_FAST},
    "unsupervised": {"default": UNSUPERVISED_DEFAULTS, "fast": UNSUPERVISED_FAST},
}


def _unknown(kind: str, value: str, valid) -> ConfigError:
    close = difflib.get_close_matches(str(value), list(valid), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; choose one of {', '.join(sorted(valid))}"
    return ConfigError(f"unknown {kind} {value!r}{hint}")


def preset_kwargs(name: str, preset: str = "default") -> dict:
    """A copy of the keyword arguments of ``preset`` ("default" or "fast") for metric ``name``."""
    if name not in METRICS:
        raise _unknown("metric", name, METRICS)
    if preset not in PRESETS[name]:
        raise _unknown("preset", preset, PRESETS[name])
    return dict(PRESETS[name][preset])


def compute(name: str, *args, preset: str = "default", **overrides) -> dict:
    """Run metric ``name`` on ``args`` with ``preset``'s keyword arguments, then ``overrides``."""
    kwargs = preset_kwargs(name, preset)
    kwargs.update(overrides)
    return METRICS[name](*args, **kwargs)


from .adapter import (  # noqa: E402  (after METRICS, KINDS and preset_kwargs, which it imports)
    EVAL_METRICS,
    SAMPLE_SIZES,
    CodeCache,
    assigned_importance_fraction,
    encode,
    encode_posterior,
    evaluate_model,
    headline,
    laplacian_sharpness,
    representation_fn,
    resolve_metrics,
)
