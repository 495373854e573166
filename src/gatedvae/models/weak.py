"""Weakly-supervised pair models: Ada-GVAE, Ada-ML-VAE (Locatello et al. 2020), GVAE, ML-VAE.

Locatello, Poole, Raetsch, Schoelkopf, Bachem and Tschannen 2020, "Weakly-Supervised
Disentanglement Without Compromises" (ICML), train on pairs ``(x, x')`` of images that share all
factors but a few. Both images are encoded; the latent dims the pair shares get one aggregate
posterior, so each image is decoded from a code whose shared part is common to the pair::

    q0, q1     = q(z|x), q(z|x')                                      both images, one encoder call
    delta_j    = D(q0_j, q1_j)                                         kl | symmetric_kl | mean_distance
    shared_j   = delta_j < min + ratio (max - min)                     adaptive (ratio = 1/2), or
               = not among the k largest delta                         k told (pairs.tell_k), or
               = the dims of the partitions whose factors the pair shares   gvae / ml_vae (groups given)
    q0', q1'   = q0, q1 with shared dims replaced by aggregate(q0, q1)
                 GVAE: arithmetic means of means and variances;
                 ML-VAE: mean (m0 v1 + m1 v0) / (v0 + v1), variance 2 v0 v1 / (v0 + v1)
    recon      = 0.5 (-log p(x|z0') - log p(x'|z1')),   z0' ~ q0', z1' ~ q1'
    kl         = beta * 0.5 (KL(q0' || N(0, I)) + KL(q1' || N(0, I)))
    total      = recon + kl

the ELBO of both images, averaged (disentanglement_lib's ``GroupVAEBase``: ``0.5 * reconstruction_loss_1 +
0.5 * reconstruction_loss_2`` and the same for the KL; disent averages over its observations the same
way), so that the loss reads on the scale of a one-image VAE's. The pure functions are in
:mod:`gatedvae.losses.weak`.

``ada_gvae`` / ``ada_ml_vae`` infer the shared dims; ``gvae`` / ``ml_vae`` are told them: the factors the
pair sampler knows to be shared, mapped to latent dims by ``gating.partitions`` (a partition is shared
when all its factors are; identity partitions never are), the direct comparison with the Gated-VAE's
partitions. Without pairs (``pairs.kind: none``) every pair is an image with itself: an adaptive
model then shares nothing (all divergences equal) and a group model is told nothing, so each trains
as a beta-VAE (the trainer warns).

Both images go through the encoder in one call (and the decoder in one call), so batch norm sees
the 2B images of the step together; disentanglement_lib and disent call their (batch-norm-free)
networks once per image. ``representation`` is the encoder mean, as for every VAE.
"""

from __future__ import annotations

import warnings
from typing import ClassVar, Literal

import torch

from ..errors import ConfigError
from ..gating import gate
from ..losses import kl_diag_normal
from ..losses.weak import adaptive_shared_mask, pair_divergence, share_posteriors, top_k_shared_mask
from ..nets import Posterior
from .base import MODELS, NON_NEGATIVE, GenerativeModel, Hyper, LossOutput, register

__all__ = ["PairVAE", "AdaGVAE", "AdaMLVAE", "GroupVAE", "MLVAE", "check_pairs", "is_pair_model"]

_UNIT: tuple = (lambda v: 0.0 <= v <= 1.0, "must lie in [0, 1]")


class PairVAE(GenerativeModel):
    """Encodes both images of a pair; shared dims get an aggregate posterior (see the module)."""

    #: Encodes input and target both (the trainer hands it pairs; the stacked ensemble step refuses it).
    encodes_pairs: ClassVar[bool] = True
    #: ``gvae`` or ``ml_vae``: how the shared dims are aggregated.
    aggregate: ClassVar[Literal["gvae", "ml_vae"]] = "gvae"
    #: True: the shared dims are inferred from the posteriors (Ada-); False: given (``shared_dims``).
    adaptive: ClassVar[bool] = True

    def shared_mask(
        self, post0: Posterior, post1: Posterior, k_changed: torch.Tensor | None, shared_dims: torch.Tensor | None
    ) -> torch.Tensor:
        """``(B, M)`` bool: the dims both images share (no gradient flows through the choice)."""
        mu0, lv0, mu1, lv1 = post0.mu.detach(), post0.logvar.detach(), post1.mu.detach(), post1.logvar.detach()
        if not self.adaptive:
            if shared_dims is None:
                return torch.zeros_like(mu0, dtype=torch.bool)  # (B, M) told nothing: nothing shared
            return shared_dims.to(torch.bool).expand_as(mu0)  # (B, M)
        delta = pair_divergence(mu0, lv0, mu1, lv1, self.hyper["divergence"])  # (B, M)
        if k_changed is not None:
            return top_k_shared_mask(delta, k_changed)  # (B, M)
        return adaptive_shared_mask(delta, float(self.hyper["threshold_ratio"]))  # (B, M)

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
        """The pair's ELBO (see the module): ``x`` the first image, ``target`` the second.

        ``k_changed``: ``(B,)`` int, each pair's number of changed factors (``pairs.tell_k``): the
        adaptive models then take the k largest divergences as changed. ``shared_dims``: ``(B, M)``
        bool, the dims each pair shares (``gvae`` / ``ml_vae``). With ``gate_mask`` (a gated run) the
        decoder's gradient reaches the encoder through the active partition only, as in every model.
        Terms: ``recon``, ``kl`` and ``shared`` (the mean number of shared dims per pair, a count that
        is not part of the total).
        """
        if clamp_mask is not None:
            raise ValueError(f"{self.registered_name} encodes pairs; DC-IGN clamping is refused for it")
        b = x.shape[0]
        post = self.encode(torch.cat([x, target]), None)  # (2B, M) both images in one call
        post0 = Posterior(post.mu[:b], post.logvar[:b])  # (B, M)
        post1 = Posterior(post.mu[b:], post.logvar[b:])  # (B, M)
        shared = self.shared_mask(post0, post1, k_changed, shared_dims)  # (B, M)
        mu0, lv0, mu1, lv1 = share_posteriors(
            post0.mu, post0.logvar, post1.mu, post1.logvar, shared, self.aggregate
        )  # (B, M) each
        both = Posterior(torch.cat([mu0, mu1]), torch.cat([lv0, lv1]))  # (2B, M)
        z = both.rsample(generator)  # (2B, M)
        z_dec = z if gate_mask is None else gate(z, gate_mask)
        recon = self.reconstruction(self.decode(z_dec, None), torch.cat([x, target])).mean()  # scalar: 0.5 (r0 + r1)
        reg_post, reg_z = both, z
        if gate_mask is not None and gate_regulariser:
            reg_post, reg_z = Posterior(gate(both.mu, gate_mask), gate(both.logvar, gate_mask)), gate(z, gate_mask)
        terms = {"recon": recon, **self.regulariser(reg_post, reg_z, step, generator)}
        total = torch.stack(list(terms.values())).sum()
        terms["shared"] = shared.sum(dim=1).to(recon.dtype).mean().detach()  # scalar, logged only
        return LossOutput(total, terms, z[:b], post0)

    def regulariser(
        self, post: Posterior, z: torch.Tensor, step: int, generator: torch.Generator | None
    ) -> dict[str, torch.Tensor]:
        """``beta * KL(q' || N(0, I))`` over both images' aggregated posteriors, averaged."""
        kl = kl_diag_normal(post.mu, post.logvar).mean()  # scalar: 0.5 (kl0 + kl1)
        return {"kl": float(self.hyper["beta"]) * kl}


_ADAPTIVE = {
    "beta": Hyper(1.0, "weight of the KL to N(0, I), on both images", check=NON_NEGATIVE),
    "divergence": Hyper(
        "kl",
        "per-dim divergence between the pair's posteriors: kl (the paper's KL(q(z|x) || q(z|x'))), "
        "symmetric_kl (disent's default) or mean_distance (|mu - mu'|)",
        type=Literal["kl", "symmetric_kl", "mean_distance"],
    ),
    "threshold_ratio": Hyper(
        0.5, "dims below min + ratio (max - min) of the pair's divergences are shared", check=_UNIT
    ),
}
_GROUP = {"beta": Hyper(1.0, "weight of the KL to N(0, I), on both images", check=NON_NEGATIVE)}


@register(
    "ada_gvae",
    "Ada-GVAE (Locatello et al. 2020): pairs, shared dims inferred, arithmetic-mean aggregate",
    **_ADAPTIVE,
)
class AdaGVAE(PairVAE):
    """Ada-GVAE: adaptive shared dims, GVAE aggregate (arithmetic means of means and variances)."""

    aggregate = "gvae"
    adaptive = True


@register(
    "ada_ml_vae",
    "Ada-ML-VAE (Locatello et al. 2020): pairs, shared dims inferred, ML-VAE aggregate",
    **_ADAPTIVE,
)
class AdaMLVAE(PairVAE):
    """Ada-ML-VAE: adaptive shared dims, ML-VAE aggregate (precision-weighted mean, 2 v0 v1 / (v0 + v1))."""

    aggregate = "ml_vae"
    adaptive = True


@register("gvae", "GVAE (Hosoya 2019): pairs, shared dims given by gating.partitions, arithmetic means", **_GROUP)
class GroupVAE(PairVAE):
    """GVAE with the group given: the shared factors' partitions get the arithmetic-mean aggregate."""

    aggregate = "gvae"
    adaptive = False


@register("ml_vae", "ML-VAE (Bouchacourt et al. 2018): pairs, shared dims given by gating.partitions", **_GROUP)
class MLVAE(PairVAE):
    """ML-VAE with the group given: the shared factors' partitions get the ML-VAE aggregate."""

    aggregate = "ml_vae"
    adaptive = False


def is_pair_model(name: str) -> bool:
    """Whether registered model ``name`` encodes both images of a pair."""
    return bool(getattr(MODELS[name].cls, "encodes_pairs", False)) if name in MODELS else False


def check_pairs(config) -> None:
    """Refuse, in one line and before anything is built, what the pairs section and the model cannot
    do together; warn when a pair model gets no pairs (it then trains as a beta-VAE)."""
    name, pairs, gating = config.model.name, config.pairs, config.gating
    cls = MODELS[name].cls
    pair_model = bool(getattr(cls, "encodes_pairs", False))
    if pairs.kind != "none" and not cls.reconstructs:
        raise ConfigError(f"model {name} is a GAN: it reconstructs no pair; set pairs.kind=none")
    if pair_model and gating.enabled and gating.mode == "clamp":
        raise ConfigError(
            f"model {name} encodes both images of a pair, and a DC-IGN clamp batch is not pairs; use gating.mode=gate"
        )
    if pairs.tell_k and not (pair_model and cls.adaptive):
        raise ConfigError(
            f"pairs.tell_k hands each pair's k to the model, but {name} does not read it "
            "(ada_gvae and ada_ml_vae do); drop pairs.tell_k"
        )
    if pair_model and not cls.adaptive and pairs.kind == "k_changed" and not gating.partitions:
        raise ConfigError(
            f"model {name} averages the latent dims of the factors a pair shares, and gating.partitions maps factors "
            "to dims; declare them (with gating.enabled=false), or use ada_gvae / ada_ml_vae, which infer the dims"
        )
    if pair_model and pairs.kind == "none" and not gating.enabled:
        warnings.warn(
            f"model {name} is trained without pairs (pairs.kind=none): every pair is an image with itself, so it "
            "trains as a beta-VAE; set pairs.kind=k_changed (docs/pairs.md)",
            RuntimeWarning,
            stacklevel=2,
        )
