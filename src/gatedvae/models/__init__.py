"""Models, one objective a file, registered by name (``gatedvae list models``)."""

from . import annealed_vae, beta_tcvae, chyvae, cvae, dip_vae, factor_vae, info_vae, infogan, vae, weak  # noqa: F401  (registration)
from .base import (
    AT_LEAST_1,
    MODELS,
    NON_NEGATIVE,
    GenerativeModel,
    Hyper,
    LossOutput,
    build_model,
    check_trainable,
    register,
    register_variant,
    resolve_hyper,
    validate_model_config,
)

__all__ = [
    "MODELS",
    "GenerativeModel",
    "LossOutput",
    "Hyper",
    "NON_NEGATIVE",
    "AT_LEAST_1",
    "build_model",
    "check_trainable",
    "register",
    "register_variant",
    "resolve_hyper",
    "validate_model_config",
]
