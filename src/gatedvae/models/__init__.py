"""Models, one objective a file, registered by name (``gatedvae list models``)."""

from . import annealed_vae, beta_tcvae, chyvae, cvae, dip_vae, factor_vae, info_vae, infogan, vae  # noqa: F401  (registration)
from .base import MODELS, GenerativeModel, LossOutput, build_model, register, register_variant, resolve_hyper

__all__ = ["MODELS", "GenerativeModel", "LossOutput", "build_model", "register", "register_variant", "resolve_hyper"]
