"""Compare gatedvae's Ada-GVAE / Ada-ML-VAE with disent 0.8.0's AdaVae and AdaGVaeMinimal, once.

Not part of the package or its tests (disent is not a dependency). Run it with a Python that has
disent 0.8.0 and torch, and gatedvae's source on the path (docs/models.md, "Agreement with disent",
gives the commands). On identical posterior tensors it compares

1. the per-dim divergences (kl, symmetric_kl, mean distance) with ``AdaVae.compute_deltas_from_posteriors``;
2. the shared masks (ratios 0.3, 0.5, 0.7) with ``AdaVae.estimate_shared_mask``;
3. the aggregated posteriors (gvae, ml-vae) with ``AdaVae.make_shared_posteriors``, and the whole
   ``hook_intercept_ds`` of ``AdaVae`` (its defaults) and of ``AdaGVaeMinimal``;
4. the loss: gatedvae's ``PairVAE.loss`` (its encoder and decoder replaced by the fixed posteriors and
   a fixed linear decoder, its noise drawn from a seeded generator) against disent's pieces of
   ``Vae.do_training_step`` on the same posteriors, noise and decoder: ``hook_intercept_ds``, the
   ``bce`` reconstruction handler and the normal latents handler with ``loss_reduction="mean_sum"``
   (sum over pixels and latent dims, mean over the batch: gatedvae's reduction), beta times the KL;
   then the gradients of the total with respect to the four posterior tensors.

Prints one line per check with the largest absolute difference (and mask disagreements).
"""

from __future__ import annotations

import types

import torch

# disent imports torchvision, whose PyPI wheel for this torch may lack its compiled operators on a CPU
# machine; declaring the two schemas it registers fake kernels for lets the import through (no
# torchvision operator is used here).
for _name in ("nms", "qnms"):
    try:
        torch.library.define(f"torchvision::{_name}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    except RuntimeError:
        pass

import disent  # noqa: E402
from disent.frameworks.helper.latent_distributions import make_latent_distribution  # noqa: E402
from disent.frameworks.helper.reconstructions import make_reconstruction_loss  # noqa: E402
from disent.frameworks.vae import AdaGVaeMinimal, AdaVae  # noqa: E402
from torch.distributions import Normal  # noqa: E402

from gatedvae.config import ModelConfig  # noqa: E402
from gatedvae.losses.weak import adaptive_shared_mask, pair_divergence, share_posteriors  # noqa: E402
from gatedvae.models import build_model  # noqa: E402
from gatedvae.nets import Posterior  # noqa: E402

B, D, PIXELS, SEED = 256, 10, 64, 0
DTYPE = torch.float32


def posteriors(seed: int = SEED):
    g = torch.Generator().manual_seed(seed)
    mu0 = torch.randn(B, D, generator=g, dtype=DTYPE)
    lv0 = torch.randn(B, D, generator=g, dtype=DTYPE) * 0.5 - 1.0
    # a pair that changed a few dims: the second posterior moves in 2-4 random dims, a little elsewhere
    moved = torch.rand(B, D, generator=g) < 0.3
    mu1 = mu0 + torch.where(moved, 2.0 * torch.randn(B, D, generator=g), 0.05 * torch.randn(B, D, generator=g))
    lv1 = lv0 + 0.1 * torch.randn(B, D, generator=g, dtype=DTYPE)
    return mu0, lv0, mu1, lv1


def normal(mu: torch.Tensor, lv: torch.Tensor) -> Normal:
    return Normal(mu, torch.exp(0.5 * lv))  # disent's LatentDistsHandlerNormal.encoding_to_dists


def line(what: str, diff: float, extra: str = "") -> None:
    print(f"{what:<58} max |diff| = {diff:.3e}{extra}")


def main() -> None:
    print(f"disent {disent.__version__ if hasattr(disent, '__version__') else '0.8.0'}, torch {torch.__version__}")
    mu0, lv0, mu1, lv1 = posteriors()
    d0, d1 = normal(mu0, lv0), normal(mu1, lv1)

    # 1. divergences (disent's "kl" is KL(q1 || q0): the pair swapped)
    for ours, theirs, swap in (
        ("kl", "kl", True),
        ("symmetric_kl", "symmetric_kl", False),
        ("mean_distance", "dist", False),
    ):
        a = pair_divergence(mu1, lv1, mu0, lv0, ours) if swap else pair_divergence(mu0, lv0, mu1, lv1, ours)
        b = AdaVae.compute_deltas_from_posteriors(d0, d1, thresh_mode=theirs)
        line(
            f"divergence {ours} vs thresh_mode={theirs}{' (pair swapped)' if swap else ''}", (a - b).abs().max().item()
        )

    # 2. the threshold rule on identical divergences, and on each side's own divergences
    for ratio in (0.3, 0.5, 0.7):
        delta = AdaVae.compute_deltas_from_posteriors(d0, d1, thresh_mode="symmetric_kl")
        same = (adaptive_shared_mask(delta, ratio) != AdaVae.estimate_shared_mask(delta, ratio)).sum().item()
        own = adaptive_shared_mask(pair_divergence(mu0, lv0, mu1, lv1, "symmetric_kl"), ratio)
        theirs = AdaVae.compute_shared_mask_from_posteriors(d0, d1, thresh_mode="symmetric_kl", ratio=ratio)
        print(
            f"shared mask, ratio {ratio}: disagreements {same} of {B * D} on the same deltas, "
            f"{(own != theirs).sum().item()} on each side's own; shared dims per pair {own.sum(1).float().mean():.3f}"
        )

    # the one-way KL's direction: ours (the paper's, disentanglement_lib's) against disent's, as each is
    ours_kl = adaptive_shared_mask(pair_divergence(mu0, lv0, mu1, lv1, "kl"))
    theirs_kl = AdaVae.compute_shared_mask_from_posteriors(d0, d1, thresh_mode="kl", ratio=0.5)
    print(
        f"shared mask, kl: KL(q0 || q1) (ours) vs disent's KL(q1 || q0): {(ours_kl != theirs_kl).sum().item()} "
        f"of {B * D} disagree on these posteriors; the same pair swapped: "
        f"{(adaptive_shared_mask(pair_divergence(mu1, lv1, mu0, lv0, 'kl')) != theirs_kl).sum().item()}"
    )

    # 3. aggregates and the whole hook
    shared = AdaVae.compute_shared_mask_from_posteriors(d0, d1, thresh_mode="symmetric_kl", ratio=0.5)
    for ours, theirs in (("gvae", "gvae"), ("ml_vae", "ml-vae")):
        m0, l0, m1, l1 = share_posteriors(mu0, lv0, mu1, lv1, shared, ours)
        t0, t1 = AdaVae.make_shared_posteriors(d0, d1, shared, average_mode=theirs)
        loc = max((m0 - t0.loc).abs().max().item(), (m1 - t1.loc).abs().max().item())
        scale = max(((0.5 * l0).exp() - t0.scale).abs().max().item(), ((0.5 * l1).exp() - t1.scale).abs().max().item())
        line(f"aggregate {ours} vs average_mode={theirs}: loc", loc)
        line(f"aggregate {ours} vs average_mode={theirs}: scale", scale)
    ours = share_posteriors(
        mu0, lv0, mu1, lv1, adaptive_shared_mask(pair_divergence(mu0, lv0, mu1, lv1, "symmetric_kl"))
    )
    for cls in (AdaVae, AdaGVaeMinimal):
        fake = types.SimpleNamespace(
            cfg=AdaVae.cfg(),  # ada_average_mode='gvae', ada_thresh_mode='symmetric_kl', ada_thresh_ratio=0.5
            compute_shared_mask_from_posteriors=AdaVae.compute_shared_mask_from_posteriors,
            make_shared_posteriors=AdaVae.make_shared_posteriors,
        )
        (t0, t1), _, logs = cls.hook_intercept_ds(fake, (d0, d1), (None, None))
        diff = max(
            (ours[0] - t0.loc).abs().max().item(),
            (ours[2] - t1.loc).abs().max().item(),
            ((0.5 * ours[1]).exp() - t0.scale).abs().max().item(),
            ((0.5 * ours[3]).exp() - t1.scale).abs().max().item(),
        )
        line(
            f"{cls.__name__}.hook_intercept_ds vs ada_gvae(symmetric_kl)",
            diff,
            f"; disent 'shared' {logs['shared']:.3f}",
        )

    # 4. the loss and its gradients
    for model_name, average_mode in (("ada_gvae", "gvae"), ("ada_ml_vae", "ml-vae")):
        for divergence, thresh_mode in (("symmetric_kl", "symmetric_kl"), ("mean_distance", "dist")):
            compare_loss(model_name, average_mode, divergence, thresh_mode, beta=4.0)


def compare_loss(model_name: str, average_mode: str, divergence: str, thresh_mode: str, beta: float) -> None:
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(D, PIXELS, generator=g) * 0.5  # a fixed linear decoder, z -> logits
    x0 = (torch.rand(B, 1, 8, 8, generator=g) > 0.5).to(DTYPE)
    x1 = (torch.rand(B, 1, 8, 8, generator=g) > 0.5).to(DTYPE)
    eps = torch.randn(2 * B, D, generator=torch.Generator().manual_seed(7))  # what our rsample draws

    # gatedvae: the real PairVAE.loss with its networks replaced
    leaves = [t.clone().requires_grad_(True) for t in posteriors()]
    cfg = ModelConfig(name=model_name, latent_dim=D, hidden=8, beta=beta, divergence=divergence)
    model = build_model(cfg, (1, 8, 8), 100)
    model.encode = lambda x, cond=None: Posterior(torch.cat([leaves[0], leaves[2]]), torch.cat([leaves[1], leaves[3]]))
    model.decode = lambda z, cond=None: (z @ weight).reshape(-1, 1, 8, 8)
    out = model.loss(x0, x1, 0, torch.Generator().manual_seed(7))
    out.total.backward()
    ours_grad = [t.grad.clone() for t in leaves]

    # disent: hook_intercept_ds, sampling with the same noise, its recon and KL handlers (mean_sum)
    theirs = [t.clone().requires_grad_(True) for t in posteriors()]
    d0, d1 = normal(theirs[0], theirs[1]), normal(theirs[2], theirs[3])
    prior = Normal(torch.zeros_like(theirs[0]), torch.ones_like(theirs[0]))
    fake = types.SimpleNamespace(
        cfg=AdaVae.cfg(ada_average_mode=average_mode, ada_thresh_mode=thresh_mode, ada_thresh_ratio=0.5),
        compute_shared_mask_from_posteriors=AdaVae.compute_shared_mask_from_posteriors,
        make_shared_posteriors=AdaVae.make_shared_posteriors,
    )
    (q0, q1), priors, _ = AdaVae.hook_intercept_ds(fake, (d0, d1), (prior, prior))
    zs = (q0.loc + q0.scale * eps[:B], q1.loc + q1.scale * eps[B:])
    recon_handler = make_reconstruction_loss("bce", reduction="mean_sum")
    latents = make_latent_distribution("normal", kl_mode="direct", reduction="mean_sum")
    partial = [(z @ weight).reshape(-1, 1, 8, 8) for z in zs]
    recon = recon_handler.compute_ave_loss_from_partial(partial, (x0, x1))
    kl = latents.compute_ave_kl_loss((q0, q1), priors, zs)
    total = recon + beta * kl
    total.backward()
    grad = max((a - b.grad).abs().max().item() for a, b in zip(ours_grad, theirs, strict=True))
    print(
        f"loss {model_name} ({divergence}) vs AdaVae({average_mode}, {thresh_mode}), beta {beta}: "
        f"recon {out.terms['recon'].item():.6f} / {recon.item():.6f}, "
        f"kl {out.terms['kl'].item():.6f} / {beta * kl.item():.6f}, "
        f"total {out.total.item():.6f} / {total.item():.6f} (|diff| {abs(out.total.item() - total.item()):.2e}); "
        f"gradients max |diff| {grad:.2e}"
    )


if __name__ == "__main__":
    main()
