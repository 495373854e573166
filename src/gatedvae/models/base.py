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
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, ClassVar, get_args

import torch
from torch import nn

from ..config import AT_LEAST_1, LEGACY_HYPERPARAMETERS, NON_NEGATIVE, ModelConfig, Setting, config_keys
from ..errors import ConfigError
from ..gating import clamp_to_mean, gate
from ..io import closest, unknown_choice
from ..losses import bernoulli_nll, gaussian_nll, kl_diag_normal, kl_diag_per_dim
from ..nets import Posterior, build_networks
from ..nets.norm import batch_norm_layers, capture_statistics, use_statistics

__all__ = [
    "GenerativeModel",
    "LossOutput",
    "ImagePanel",
    "Hyper",
    "NON_NEGATIVE",
    "AT_LEAST_1",
    "register",
    "register_variant",
    "MODELS",
    "ModelEntry",
    "build_model",
    "resolve_hyper",
    "validate_model_config",
    "check_trainable",
]

#: A range check: a predicate over the (converted) value and what it requires, as the error says it.


@dataclass(frozen=True)
class ImagePanel:
    """Images a model asks ``gatedvae evaluate`` to show (:meth:`GenerativeModel.figure_panels`).

    ``images`` in [0, 1] on the CPU: ``(N, C, H, W)`` is drawn as one grid of ``grid_rows`` rows;
    ``(R, S, C, H, W)`` as R rows of S images labelled by ``row_labels`` and ``col_labels``.
    :func:`gatedvae.viz.evaluation.draw_panels` writes it to ``figures/<name>.png``.
    """

    name: str
    images: torch.Tensor
    title: str = ""
    grid_rows: int = 1
    row_labels: tuple[str, ...] = ()
    col_labels: tuple[str, ...] = ()


#: One hyperparameter a model declares in its registration (default, one-line doc, type, range
#: check): the config layer's :class:`~gatedvae.config.Setting`, checked as ``model.<name>``.
Hyper = Setting


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its class, its hyperparameters (name -> :class:`Hyper`), one line of doc."""

    name: str
    cls: type
    hyper: dict[str, Hyper]
    description: str

    @property
    def defaults(self) -> dict[str, Any]:
        """The hyperparameters' defaults, by name."""
        return {k: h.default for k, h in self.hyper.items()}


MODELS: dict[str, ModelEntry] = {}


def _declared(model: str, key: str, spec: Any) -> Hyper:
    """``spec`` as a checked :class:`Hyper` (a bare value is a default with its own type, as in 0.1)."""
    if not isinstance(spec, Hyper):
        legacy = LEGACY_HYPERPARAMETERS.get(key)
        typ = next((a for a in get_args(legacy) if a is not type(None)), None) if legacy else None
        spec = Hyper(spec, type=typ)
    if key in config_keys(ModelConfig):  # a bug in the model's file, not user input
        raise TypeError(f"model {model}: '{key}' is a common model field, not a hyperparameter; rename it")
    legacy = LEGACY_HYPERPARAMETERS.get(key)
    if legacy is not None and {a for a in get_args(legacy) if a is not type(None)} != {spec.annotation}:
        raise TypeError(f"model {model}: hyperparameter '{key}' must keep 0.1's type {legacy} (the file format)")
    try:
        spec.validate(f"model.{key}", spec.default)
    except ConfigError as exc:
        raise TypeError(f"model {model}: the default of '{key}' is invalid: {exc}") from None
    return spec


def register(name: str, description: str = "", **hyper: Any) -> Callable[[type], type]:
    """Class decorator: register a model under ``name`` with the hyperparameters it declares.

    Each keyword is a hyperparameter: a :class:`Hyper` (default, doc, type, range check) or a bare
    default. Example::

        @register("my_vae", "KL weighted by beta, plus lam * my_penalty", beta=Hyper(1.0, "KL weight",
                  check=NON_NEGATIVE), lam=Hyper(10.0, "weight of my_penalty", check=NON_NEGATIVE))
        class MyVAE(GenerativeModel): ...
    """

    def deco(cls: type) -> type:
        specs = {k: _declared(name, k, v) for k, v in hyper.items()}
        MODELS[name] = ModelEntry(name, cls, specs, description or (cls.__doc__ or "").strip().splitlines()[0])
        cls.registered_name = name
        return cls

    return deco


def register_variant(name: str, base: str, description: str, **defaults: Any) -> None:
    """Register ``name`` as ``base`` with some of its hyperparameters' defaults changed."""
    entry = MODELS[base]
    specs = dict(entry.hyper)
    for key, value in defaults.items():
        if key not in specs:  # a bug in the model's file, not user input
            raise TypeError(f"model {name}: {base} has no hyperparameter '{key}' (it has: {', '.join(specs)})")
        specs[key] = _declared(name, key, Hyper(value, specs[key].doc, specs[key].type, specs[key].check))
    MODELS[name] = ModelEntry(name, entry.cls, specs, description)


def model_entry(name: str) -> ModelEntry:
    """The registered model ``name``; ConfigError with a did-you-mean otherwise."""
    if name not in MODELS:
        raise unknown_choice("model", name, MODELS)
    return MODELS[name]


def resolve_hyper(cfg: ModelConfig) -> dict[str, Any]:
    """The model's hyperparameters: its defaults, overridden by the values set in ``cfg``, each
    converted to its declared type and range-checked.

    Raises ConfigError (one line) for an unknown model, for a set hyperparameter the model does not
    declare (with a did-you-mean) and for a value of the wrong type or out of range.
    """
    entry = model_entry(cfg.name)
    hyper = dict(entry.defaults)
    for key, value in cfg.hyper.items():
        if key not in entry.hyper:
            used = ", ".join(sorted(entry.hyper)) or "none"
            near = closest(key, [*entry.hyper, *config_keys(ModelConfig)])
            fix = f"did you mean '{near}'?" if near and near != "hyper" else "remove it"
            raise ConfigError(f"model.{key} is not a hyperparameter of {cfg.name} (it uses: {used}); {fix}")
        hyper[key] = entry.hyper[key].validate(f"model.{key}", value)
    return hyper


def validate_model_config(cfg: ModelConfig) -> dict[str, Any]:
    """Everything about the model section that can be refused before data is built or anything
    written: the model's name, its hyperparameters (:func:`resolve_hyper`) and a condition on a
    model that is not conditional. Returns the resolved hyperparameters."""
    hyper = resolve_hyper(cfg)
    if cfg.condition and not getattr(MODELS[cfg.name].cls, "conditional", False):
        raise ConfigError(
            f"model.condition is set but {cfg.name} is not conditional; use model.name=cvae or drop model.condition"
        )
    return hyper


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
    #: What in the regulariser couples the samples of a batch (beta-TCVAE's log q(z) estimator,
    #: DIP-VAE's covariance of the means, ...), "" for a per-sample regulariser. Such a term needs an
    #: i.i.d. batch, which a DC-IGN clamp batch is not, so clamp mode is refused for it.
    batch_coupling: ClassVar[str] = ""

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

    #: Auxiliary networks the regulariser evaluates on ``z`` (FactorVAE: its discriminator). An
    #: ensemble's stacked step evaluates them for all members at once and calls
    #: :meth:`regulariser_given` with their outputs.
    regulariser_networks: ClassVar[tuple[str, ...]] = ()

    def regulariser_given(
        self,
        post: Posterior,
        z: torch.Tensor,
        step: int,
        generator: torch.Generator | None,
        outputs: dict[str, torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """:meth:`regulariser` with the outputs of :attr:`regulariser_networks` on ``z`` given."""
        return self.regulariser(post, z, step, generator)

    def auxiliary_inputs(self, z: torch.Tensor, generator: torch.Generator | None) -> dict[str, list[torch.Tensor]]:
        """What each auxiliary module's own step evaluates it on (FactorVAE: ``z`` and its
        dimension-wise shuffle), from the detached codes; none by default."""
        return {}

    def auxiliary_loss(self, outputs: dict[str, list[torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Each auxiliary module's loss from its outputs on :meth:`auxiliary_inputs`."""
        return {}

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
        *,
        enc_cond: torch.Tensor | None = None,
        reference: torch.Tensor | None = None,
        reference_cond: torch.Tensor | None = None,
        k_changed: torch.Tensor | None = None,
        shared_dims: torch.Tensor | None = None,
    ) -> LossOutput:
        """One step's loss.

        Args:
            x: input images ``(B, C, H, W)``.
            target: images to reconstruct ``(B, C, H, W)`` (``x`` itself without gating).
            step: training step (for schedules such as the capacity target).
            generator: the run's torch generator (reparameterisation noise, permutations).
            cond: condition vectors ``(B, c)`` of the conditional VAE: the *target's* labels, fed
                to the decoder.
            gate_mask: ``(M,)`` bool, the active partition; None trains ungated.
            gate_regulariser: the regulariser's gradient reaches the encoder only through the
                step's active partition (``gate_mask``, or the dims ``clamp_mask`` leaves free).
            clamp_mask: ``(M,)`` bool, DC-IGN: dims clamped to their batch mean.
            enc_cond: the *input's* labels ``(B, c)`` for an encoder that is conditioned
                (``model.condition_encoder``); ``cond`` when None (input and target share labels).
            reference: DC-IGN: an i.i.d. batch of images ``(R, C, H, W)`` whose batch-norm
                statistics normalise the clamp batch (:mod:`gatedvae.nets.norm`); required with
                ``clamp_mask`` when the networks have batch norm.
            reference_cond: the reference images' labels (conditional VAE).
            k_changed, shared_dims: what a weak pair's sampler tells the model (``(B,)`` changed factors,
                ``(B, M)`` shared dims; ``pairs.tell_k``, group models): read by the pair models of
                :mod:`gatedvae.models.weak`, ignored here (the trainer passes them only when set).
        """
        norm = nullcontext()
        if clamp_mask is not None:
            layers = batch_norm_layers(self.encoder, self.decoder)
            if layers and self.training:
                if reference is None:
                    raise ValueError("a clamp step with batch norm needs an i.i.d. reference batch (reference=...)")
                with torch.no_grad(), capture_statistics(layers) as stats:
                    ref = self.encode(reference, reference_cond).rsample(generator)  # (R, M)
                    self.decode(ref, reference_cond)
                norm = use_statistics(stats)
        with norm:
            post = self.encode(x, cond if enc_cond is None else enc_cond)
            z = post.rsample(generator)  # (B, M)
            z_dec, clamp_penalty = z, None
            if clamp_mask is not None:
                z_dec, clamp_penalty = clamp_to_mean(z, clamp_mask)
            if gate_mask is not None:
                z_dec = gate(z_dec, gate_mask)
            recon = self.reconstruction(self.decode(z_dec, cond), target).mean()  # scalar
        active = gate_mask if gate_mask is not None else (None if clamp_mask is None else ~clamp_mask)
        if active is not None and gate_regulariser:
            reg_post = Posterior(
                gate(post.mu, active),
                gate(post.logvar, active),
                None if post.scale_tril is None else gate(post.scale_tril, active[:, None]),
            )
            reg_z = gate(z, active)
        else:
            reg_post, reg_z = post, z
        terms = {"recon": recon, **self.regulariser(reg_post, reg_z, step, generator)}
        if clamp_penalty is not None:
            terms["clamp"] = clamp_penalty
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

    def figure_panels(self, rng) -> list[ImagePanel]:
        """Images of this kind of model that ``gatedvae evaluate`` draws into ``figures/<name>.png``.

        ``rng`` is a numpy Generator. The model supplies the images only; :mod:`gatedvae.viz` draws
        them. The default has none (InfoGAN: samples, code traversals).
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
    """Refuse, before anything is built or written, a run config its model cannot train: an
    invalid model section (:func:`validate_model_config`), gating, DC-IGN clamping or decoder
    fine-tuning of a model without reconstruction (a GAN), or DC-IGN clamping of an objective
    whose regulariser couples the samples of a batch (``batch_coupling``)."""
    validate_model_config(config.model)
    entry = MODELS[config.model.name]
    clamp = config.gating.enabled and config.gating.mode == "clamp"
    if clamp and entry.cls.reconstructs and entry.cls.batch_coupling:
        raise ConfigError(
            f"model {config.model.name} estimates {entry.cls.batch_coupling} over the batch, and a DC-IGN clamp batch "
            "is not i.i.d. (one factor group varies); use gating.mode=gate or a per-sample objective (vae, beta_vae)"
        )
    if entry.cls.reconstructs:
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
    hyper = validate_model_config(cfg)
    entry = MODELS[cfg.name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = entry.cls(cfg, image_shape, dataset_size, cond_dim=cond_dim, hyper=hyper, seed=seed)
    model.registered_name = cfg.name
    return model
