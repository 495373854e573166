"""The model base class and the registry.

A model is an encoder, a decoder, a likelihood and a *regulariser*; objectives differ only
in the regulariser (as in disentanglement_lib's ``regularizer`` hook), so each objective is
one small subclass in its own file, registered by name with :func:`register`. Variants that
only fix hyperparameters are registered with :func:`register_variant`.

The loss of one step (``GenerativeModel.loss``) follows the Gated-VAE paper
(``000_fc03c6fb001bc541.txt``, eqs. 1-3 and section III-B):

    z          = mu + sigma * eps                       (all partitions, forward)
    z_dec      = gate(z, active)                         (gradient only through the active partition)
    recon      = -log p(x_target | z_dec)                (summed over pixels, mean over the batch)
    regulariser(q(z|x_input))                            (over the whole latent; gated too if gate_kl)
    total      = recon + regulariser

Reductions: every per-sample term is summed over pixels / latent dims and averaged over the
batch once, here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError
from ..gating import clamp_to_mean, gate
from ..losses import bernoulli_nll, gaussian_nll, kl_diag_normal, kl_diag_per_dim
from ..nets import Posterior, build_networks

__all__ = [
    "GenerativeModel",
    "LossOutput",
    "register",
    "register_variant",
    "MODELS",
    "build_model",
    "resolve_hyper",
    "HYPER_FIELDS",
    "check_trainable",
]

#: ModelConfig fields that are objective hyperparameters (``None`` = the model's default).
HYPER_FIELDS: tuple[str, ...] = (
    "beta",
    "gamma",
    "c_max",
    "c_steps",
    "capacity_mode",
    "mmd_lambda",
    "info_alpha",
    "mmd_kernel",
    "lambda_od",
    "lambda_d",
    "tc_alpha",
    "tc_estimator",
    "nu",
    "info_lambda",
    "noise_dim",
    "categorical",
    "gp_weight",
)


@dataclass
class LossOutput:
    """The loss of one step: ``total`` (scalar, to minimise) and named scalar ``terms``.

    ``terms`` are for logging and for naming the culprit when a value is not finite; they
    keep their graph (the trainer detaches them when it logs).
    """

    total: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    z: torch.Tensor | None = None
    posterior: Posterior | None = None


@dataclass(frozen=True)
class ModelEntry:
    name: str
    cls: type
    defaults: dict[str, Any]
    description: str


MODELS: dict[str, ModelEntry] = {}


def register(name: str, description: str = "", **defaults: Any) -> Callable[[type], type]:
    """Class decorator: register a model under ``name`` with its hyperparameter defaults."""

    def deco(cls: type) -> type:
        unknown = set(defaults) - set(HYPER_FIELDS)
        if unknown:  # a bug in the model's file, not user input
            raise TypeError(f"model {name}: unknown hyperparameters {sorted(unknown)}")
        MODELS[name] = ModelEntry(name, cls, dict(defaults), description or (cls.__doc__ or "").strip().splitlines()[0])
        cls.registered_name = name
        return cls

    return deco


def register_variant(name: str, base: str, description: str, **defaults: Any) -> None:
    """Register ``name`` as ``base`` with some hyperparameter defaults changed."""
    entry = MODELS[base]
    merged = {**entry.defaults, **defaults}
    MODELS[name] = ModelEntry(name, entry.cls, merged, description)


def resolve_hyper(cfg: ModelConfig) -> dict[str, Any]:
    """The model's hyperparameters: its defaults, overridden by values set in ``cfg``.

    Raises ConfigError for an unknown model or for a set hyperparameter the model ignores.
    """
    if cfg.name not in MODELS:
        import difflib

        close = difflib.get_close_matches(cfg.name, list(MODELS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown model '{cfg.name}'{hint} models: {', '.join(sorted(MODELS))}")
    entry = MODELS[cfg.name]
    hyper = dict(entry.defaults)
    for key in HYPER_FIELDS:
        value = getattr(cfg, key)
        if value is None:
            continue
        if key not in entry.defaults:
            used = ", ".join(sorted(entry.defaults)) or "none"
            raise ConfigError(f"model.{key} is not a hyperparameter of {cfg.name} (it uses: {used}); remove it")
        hyper[key] = value
    return hyper


class GenerativeModel(nn.Module):
    """Encoder + decoder + likelihood; subclasses define :meth:`regulariser`.

    Args:
        cfg: the model section of the config.
        image_shape: ``(C, H, W)`` of the data.
        dataset_size: number of training images (beta-TCVAE's estimators need it).
        cond_dim: width of the condition vector fed to the decoder (conditional VAE).
        generator: seeds parameter initialisation (the trainer passes the run's seed).
    """

    registered_name: ClassVar[str] = ""
    covariance: ClassVar[str] = "diagonal"
    #: False for objectives without an encoder trained by reconstruction (InfoGAN): their loss has
    #: no "recon" term and they cannot be gated, clamped or decoder-fine-tuned (the trainer refuses).
    reconstructs: ClassVar[bool] = True

    def __init__(
        self,
        cfg: ModelConfig,
        image_shape: tuple[int, int, int],
        dataset_size: int,
        cond_dim: int = 0,
        hyper: dict[str, Any] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.init_seed = int(seed)
        self.cfg = cfg
        self.image_shape = tuple(image_shape)
        self.dataset_size = int(dataset_size)
        self.hyper = dict(hyper if hyper is not None else resolve_hyper(cfg))
        self.latent_dim = cfg.latent_dim
        self.cond_dim = cond_dim
        self.encoder, self.decoder = self.make_networks()

    def make_networks(self) -> tuple[nn.Module, nn.Module]:
        """The encoder and decoder of ``model.net`` (InfoGAN overrides this: discriminator, generator)."""
        cfg = self.cfg
        return build_networks(
            cfg.net,
            self.image_shape,
            cfg.latent_dim,
            cfg.hidden,
            enc_cond_dim=self.cond_dim if cfg.condition_encoder else 0,
            dec_cond_dim=self.cond_dim,
            covariance=self.covariance,
        )

    # ------------------------------------------------------------------ pieces
    def encode(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> Posterior:
        """q(z|x): ``x (B, C, H, W)`` -> Posterior with ``mu, logvar (B, M)``."""
        return self.encoder(x, cond if self.cfg.condition_encoder else None)

    def decode(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """``z (B, M)`` -> logits (Bernoulli) or means (Gaussian) ``(B, C, H, W)``."""
        return self.decoder(z, cond)

    def reconstruction(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """-log p(target | z) per sample ``(B,)``, summed over pixels."""
        if self.cfg.likelihood == "bernoulli":
            return bernoulli_nll(out, target)
        return gaussian_nll(torch.sigmoid(out), target)

    def mean_image(self, out: torch.Tensor) -> torch.Tensor:
        """Decoder output -> image in [0, 1]."""
        return torch.sigmoid(out)

    @torch.no_grad()
    def representation(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The code used by metrics: the posterior mean ``(B, M)`` (eval mode expected)."""
        return self.encode(x, cond).mu

    # ------------------------------------------------------------------ objective
    def regulariser(
        self, post: Posterior, z: torch.Tensor, step: int, generator: torch.Generator | None
    ) -> dict[str, torch.Tensor]:
        """Named scalar terms added to the reconstruction loss (already weighted).

        The default is the VAE's KL to N(0, I) weighted by ``beta`` (1 unless set).
        """
        beta = float(self.hyper.get("beta", 1.0))
        kl = kl_diag_normal(post.mu, post.logvar).mean()  # scalar
        return {"kl": beta * kl} if beta != 1.0 else {"kl": kl}

    def loss(
        self,
        x: torch.Tensor,
        target: torch.Tensor,
        step: int,
        generator: torch.Generator | None = None,
        cond: torch.Tensor | None = None,
        gate_mask: torch.Tensor | None = None,
        gate_regulariser: bool = False,
        clamp_mask: torch.Tensor | None = None,
    ) -> LossOutput:
        """One step's loss.

        Args:
            x: input images ``(B, C, H, W)``.
            target: images to reconstruct ``(B, C, H, W)`` (``x`` itself without gating).
            step: training step (for schedules such as the capacity target).
            generator: the run's torch generator (reparameterisation noise, permutations).
            cond: condition vectors ``(B, c)`` for the conditional VAE.
            gate_mask: ``(M,)`` bool, the active partition; None trains ungated.
            gate_regulariser: gate the regulariser's gradient with ``gate_mask`` too.
            clamp_mask: ``(M,)`` bool, DC-IGN: dims clamped to their batch mean.
        """
        post = self.encode(x, cond)
        z = post.rsample(generator)  # (B, M)
        z_dec = z
        if clamp_mask is not None:
            z_dec = clamp_to_mean(z_dec, clamp_mask)
        if gate_mask is not None:
            z_dec = gate(z_dec, gate_mask)
        recon = self.reconstruction(self.decode(z_dec, cond), target).mean()  # scalar
        if gate_mask is not None and gate_regulariser:
            reg_post = Posterior(
                gate(post.mu, gate_mask),
                gate(post.logvar, gate_mask),
                None if post.scale_tril is None else gate(post.scale_tril, gate_mask[:, None]),
            )
            reg_z = gate(z, gate_mask)
        else:
            reg_post, reg_z = post, z
        terms = {"recon": recon, **self.regulariser(reg_post, reg_z, step, generator)}
        total = torch.stack(list(terms.values())).sum()
        return LossOutput(total, terms, z, post)

    # ------------------------------------------------------------------ extras
    def kl_per_dim(self, post: Posterior) -> torch.Tensor:
        """``(B, M)`` KL of each latent dim (diagonal part) for diagnostics."""
        return kl_diag_per_dim(post.mu, post.logvar)

    def auxiliary_modules(self) -> dict[str, nn.Module]:
        """Modules with an optimiser of their own (FactorVAE's discriminator)."""
        return {}

    def main_parameters(self) -> list[nn.Parameter]:
        aux = {id(p) for m in self.auxiliary_modules().values() for p in m.parameters()}
        return [p for p in self.parameters() if id(p) not in aux]

    def auxiliary_optimizer_settings(self) -> dict[str, dict]:
        """Adam settings of each auxiliary module (defaults: the main learning rate)."""
        return {}

    def main_optimizer_settings(self) -> dict:
        """Adam settings of the main optimiser besides its learning rate (``train.lr``); GANs set betas."""
        return {}

    def extra_figures(self, prep, out_dir, rng) -> list:
        """Figures of this kind of model written into ``out_dir`` by ``gatedvae evaluate`` (paths).

        ``rng`` is a numpy Generator; the default writes none (InfoGAN: samples, code traversals).
        """
        return []

    def auxiliary_step(
        self, out: LossOutput, optimizers: dict[str, torch.optim.Optimizer], generator: torch.Generator | None
    ) -> dict[str, torch.Tensor]:
        """Update auxiliary modules after the main step; returns terms to log."""
        return {}

    def describe(self) -> str:
        return f"{self.registered_name} ({', '.join(f'{k}={v}' for k, v in sorted(self.hyper.items()))})"


def check_trainable(config) -> None:
    """Refuse, before anything is built or written, a run config its model cannot train:
    gating, DC-IGN clamping or decoder fine-tuning of a model without reconstruction (a GAN)."""
    entry = MODELS.get(config.model.name)
    if entry is None or entry.cls.reconstructs:
        return
    if config.gating.enabled:
        raise ConfigError(
            f"model {config.model.name} is a GAN: it has no reconstruction to gate or clamp; set gating.enabled=false"
        )
    if config.train.finetune_steps:
        raise ConfigError(
            f"model {config.model.name} is a GAN: it has no encoder-decoder to fine-tune; set train.finetune_steps=0"
        )


def build_model(
    cfg: ModelConfig, image_shape: tuple[int, int, int], dataset_size: int, cond_dim: int = 0, seed: int = 0
) -> GenerativeModel:
    """Instantiate the registered model ``cfg.name`` with parameters initialised from ``seed``.

    PyTorch's layers draw their initial weights from the global generator; it is forked and
    seeded here so that construction is reproducible and leaves the caller's state alone.
    """
    hyper = resolve_hyper(cfg)
    entry = MODELS[cfg.name]
    if cfg.condition and not getattr(entry.cls, "conditional", False):
        raise ConfigError(
            f"model.condition is set but {cfg.name} is not conditional; use model.name=cvae or drop model.condition"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = entry.cls(cfg, image_shape, dataset_size, cond_dim=cond_dim, hyper=hyper, seed=seed)
    model.registered_name = cfg.name
    return model
