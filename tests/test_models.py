"""Every registered model, gated and not: shapes, finite gradients, learning, save/load, gating."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gatedvae.checkpoint import load_checkpoint, save_checkpoint
from gatedvae.config import ModelConfig
from gatedvae.errors import ConfigError
from gatedvae.gating import gate
from gatedvae.models import MODELS, build_model, resolve_hyper

IMAGE = (1, 8, 8)
LATENT = 6
MASK = torch.tensor([False, False, True, True, False, False])


def make(name: str, net: str = "mlp", seed: int = 0, **kw):
    cond = (
        ("f1",)
        if MODELS[name].cls.__dict__.get("conditional") or getattr(MODELS[name].cls, "conditional", False)
        else ()
    )
    cfg = ModelConfig(name=name, net=net, latent_dim=LATENT, hidden=16, condition=cond, **kw)
    return build_model(cfg, IMAGE, dataset_size=500, cond_dim=3 if cond else 0, seed=seed)


def batch(model, b=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand((b, *model.image_shape), generator=g) > 0.5).float()
    cond = torch.eye(3)[torch.randint(0, 3, (b,), generator=g)] if model.cond_dim else None
    return x, cond


@pytest.mark.parametrize("gated", [False, True], ids=["ungated", "gated"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_backward_every_parameter_finite_gradient(name, gated):
    model = make(name)
    if gated and not model.reconstructs:
        pytest.skip("a GAN has no reconstruction to gate (the trainer refuses gating it)")
    x, cond = batch(model)
    out = model.loss(
        x, x.flip(0), step=5, generator=torch.Generator().manual_seed(1), cond=cond, gate_mask=MASK if gated else None
    )
    assert out.total.ndim == 0 and torch.isfinite(out.total)
    assert set(out.terms) >= ({"recon"} if model.reconstructs else set()) and all(
        v.ndim == 0 for v in out.terms.values()
    )
    out.total.backward()
    # Auxiliary modules (FactorVAE's discriminator) get their gradient in their own step.
    aux = {n: torch.optim.SGD(m.parameters(), lr=0.0) for n, m in model.auxiliary_modules().items()}
    model.auxiliary_step(out, aux, torch.Generator().manual_seed(2))
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {pname} has a non-finite gradient"
    assert out.z.shape == (12, LATENT)


@pytest.mark.parametrize("gated", [False, True], ids=["ungated", "gated"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_short_training_reduces_the_loss(name, gated):
    torch.manual_seed(0)
    model = make(name)
    if gated and not model.reconstructs:
        pytest.skip("a GAN has no reconstruction to gate (the trainer refuses gating it)")
    _, cond = batch(model, b=32)
    g0 = torch.Generator().manual_seed(0)
    prototypes = (torch.rand((4, *IMAGE), generator=g0) > 0.7).float()  # sparse, like sprites
    x = prototypes[torch.arange(32) % 4]  # (32, 1, 8, 8)
    opts = {"main": torch.optim.Adam(model.main_parameters(), lr=3e-3)}
    for aux, module in model.auxiliary_modules().items():
        opts[aux] = torch.optim.Adam(module.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)

    def loss_eval():
        # The whole objective at a fixed step and noise, in eval mode (batch-norm statistics).
        model.eval()
        with torch.no_grad():
            r = model.loss(x, x, 0, torch.Generator().manual_seed(5), cond=cond).total.item()
        model.train()
        return r

    before = loss_eval()
    masks = torch.eye(3, dtype=torch.bool).repeat_interleave(2, dim=1)  # 3 partitions of 2 dims
    for step in range(60):
        out = model.loss(x, x, step, g, cond=cond, gate_mask=masks[step % 3] if gated else None)
        opts["main"].zero_grad()
        out.total.backward()
        opts["main"].step()
        model.auxiliary_step(out, opts, g)
    after = loss_eval()
    assert after < before - 0.05 * abs(before), (before, after)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_save_load_gives_equal_tensors(name, tmp_path):
    model = make(name, seed=1)
    x, cond = batch(model)
    out = model.loss(x, x, 0, torch.Generator().manual_seed(0), cond=cond)
    out.total.backward()  # populate batch-norm statistics via a step
    opt = torch.optim.Adam(model.main_parameters(), lr=1e-3)
    opt.step()
    gen = torch.Generator().manual_seed(3)
    path = save_checkpoint(tmp_path / "c.safetensors", model, {"main": opt}, gen, {"step": 1})
    other = make(name, seed=2)
    opt2 = torch.optim.Adam(other.main_parameters(), lr=1e-3)
    gen2 = torch.Generator().manual_seed(99)
    header = load_checkpoint(path, other, {"main": opt2}, gen2)
    assert header["step"] == 1
    for (k, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert torch.equal(gen.get_state(), gen2.get_state())
    sa, sb = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for pid in sa:
        for key in sa[pid]:
            assert torch.equal(torch.as_tensor(sa[pid][key]), torch.as_tensor(sb[pid][key]))


# Every registered model that reconstructs its input can be gated; a GAN says so by its flag.
RECONSTRUCTING = [name for name in sorted(MODELS) if MODELS[name].cls.reconstructs]


@pytest.mark.parametrize("name", RECONSTRUCTING)
def test_gate_blocks_reconstruction_gradient_outside_the_active_partition(name):
    model = make(name)
    x, cond = batch(model)
    post = model.encode(x, cond)
    post.mu.retain_grad()
    post.logvar.retain_grad()
    z = post.rsample(torch.Generator().manual_seed(0))
    z.retain_grad()
    recon = model.reconstruction(model.decode(gate(z, MASK), cond), x.flip(0)).mean()
    recon.backward()
    assert torch.all(z.grad[:, ~MASK] == 0), "gradient leaked outside the active partition"
    assert torch.all(post.mu.grad[:, ~MASK] == 0)
    assert z.grad[:, MASK].abs().sum() > 0
    # Ungated, the same reconstruction reaches every dim.
    post = model.encode(x, cond)
    z = post.rsample(torch.Generator().manual_seed(0))
    z.retain_grad()
    model.reconstruction(model.decode(z, cond), x.flip(0)).mean().backward()
    assert torch.all(z.grad.abs().sum(0) > 0)


def _posterior_grad(model, **loss_kw):
    """The loss's gradient reaching each latent unit's posterior parameters, summed over the batch:
    the mean ``(M,)`` and the spread ``(M,)`` (log-variance, or the rows of a full covariance's
    Cholesky factor)."""
    x, cond = batch(model)
    model.zero_grad()
    out = model.loss(x, x.flip(0), 3, torch.Generator().manual_seed(0), cond=cond, **loss_kw)
    post = out.posterior
    spread = post.logvar if post.scale_tril is None else post.scale_tril  # (B, M) or (B, M, M)
    post.mu.retain_grad()
    spread.retain_grad()
    out.total.backward()
    g = torch.zeros_like(spread) if spread.grad is None else spread.grad.abs()
    return post.mu.grad.abs().sum(0), g.sum(dim=(0, 2)) if g.dim() == 3 else g.sum(0)


@pytest.mark.parametrize("name", RECONSTRUCTING)
def test_gated_step_with_gated_regulariser_leaves_other_partitions_untouched(name):
    model = make(name)
    mu_g, logvar_g = _posterior_grad(model, gate_mask=MASK, gate_regulariser=True)
    assert torch.all(mu_g[~MASK] == 0) and torch.all(logvar_g[~MASK] == 0)
    assert torch.all(mu_g[MASK] > 0)
    mu_u, logvar_u = _posterior_grad(model)
    assert torch.all(mu_u > 0) and torch.all(logvar_u > 0)
    # Default (the paper): regulariser over the whole latent, so every partition gets its KL gradient.
    mu_k, _ = _posterior_grad(model, gate_mask=MASK)
    assert torch.all(mu_k > 0)


def test_gate_forward_value_is_unchanged():
    z = torch.randn(5, LATENT, requires_grad=True)
    assert torch.equal(gate(z, MASK), z)


def test_conv64_models_run_on_64x64():
    cfg = ModelConfig(name="beta_vae", net="conv64", latent_dim=4, hidden=32)
    model = build_model(cfg, (3, 64, 64), 100)
    x = torch.rand(4, 3, 64, 64)
    out = model.loss(x, x, 0, torch.Generator().manual_seed(0))
    out.total.backward()
    assert model.decode(out.z).shape == (4, 3, 64, 64)


def test_gaussian_likelihood():
    cfg = ModelConfig(name="vae", likelihood="gaussian", latent_dim=4, hidden=16)
    model = build_model(cfg, IMAGE, 100)
    x = torch.rand(6, *IMAGE)
    assert torch.isfinite(model.loss(x, x, 0, None).total)


def test_seeded_construction_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b, c = make("factor_vae", seed=4), make("factor_vae", seed=4), make("factor_vae", seed=5)
    assert torch.equal(torch.get_rng_state(), before)
    for (k, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), k
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(), strict=True))


def test_hyperparameter_rules():
    assert resolve_hyper(ModelConfig(name="beta_vae")) == {"beta": 4.0}
    assert resolve_hyper(ModelConfig(name="beta_vae", beta=8))["beta"] == 8.0
    with pytest.raises(ConfigError, match="model.gamma is not a hyperparameter of beta_vae"):
        resolve_hyper(ModelConfig(name="beta_vae", gamma=3))
    with pytest.raises(ConfigError, match="did you mean 'beta_vae'"):
        resolve_hyper(ModelConfig(name="beta_vea"))
    with pytest.raises(ConfigError, match="must exceed latent_dim"):
        build_model(ModelConfig(name="chyvae", latent_dim=8, nu=5), IMAGE, 100)
    with pytest.raises(ConfigError, match="not conditional"):
        build_model(ModelConfig(name="vae", condition=("f1",)), IMAGE, 100)


def test_registry_variants_fix_hyperparameters():
    """Entries sharing a class (variants) declare the same hyperparameters and differ in a default,
    and that default reaches the objective: the built model's resolved hyperparameters are it."""
    by_cls: dict[type, list[str]] = {}
    for name, entry in MODELS.items():
        by_cls.setdefault(entry.cls, []).append(name)
    variants = [names for names in by_cls.values() if len(names) > 1]
    assert variants, "no variant registered"
    for names in variants:
        first = MODELS[names[0]]
        for other in names[1:]:
            assert set(MODELS[other].hyper) == set(first.hyper), other
            assert MODELS[other].defaults != first.defaults, f"{other} fixes nothing over {names[0]}"
    for name, entry in MODELS.items():
        assert make(name).hyper == entry.defaults


def test_a_hyperparameter_reaches_the_loss():
    """beta_vae is vae with beta = 4: same weights and noise, a KL term exactly 4 times vae's."""
    vae, beta_vae = make("vae"), make("beta_vae")
    beta_vae.load_state_dict(vae.state_dict())
    x, _ = batch(vae)
    kl = [m.loss(x, x, 0, torch.Generator().manual_seed(3)).terms["kl"] for m in (vae, beta_vae)]
    torch.testing.assert_close(kl[1], 4.0 * kl[0])
    two = make("beta_vae", beta=2.0)
    two.load_state_dict(vae.state_dict())
    torch.testing.assert_close(two.loss(x, x, 0, torch.Generator().manual_seed(3)).terms["kl"], 2.0 * kl[0])


# Every pair of registered entries sharing one class (a model and its variants).
SAME_CLASS = [(a, b) for a in sorted(MODELS) for b in sorted(MODELS) if a < b and MODELS[a].cls is MODELS[b].cls]


@pytest.mark.parametrize("a, b", SAME_CLASS, ids=[f"{a}-{b}" for a, b in SAME_CLASS])
def test_a_variant_is_its_class_with_other_hyperparameters_that_change_the_loss(a, b):
    """``a`` built with ``b``'s hyperparameters set explicitly computes exactly ``b``'s loss terms
    (same seed, batch and noise); with its own defaults it computes other ones."""

    def terms(model) -> dict[str, torch.Tensor]:
        x, cond = batch(model)
        step = 10**7  # late in every schedule: an annealed capacity is at its maximum
        out = model.loss(x, x.flip(0), step, torch.Generator().manual_seed(0), cond=cond)
        return {k: v.detach() for k, v in out.terms.items()}

    as_b, own_b, own_a = terms(make(a, **MODELS[b].defaults)), terms(make(b)), terms(make(a))
    assert as_b.keys() == own_b.keys() and all(torch.equal(as_b[k], own_b[k]) for k in as_b), (as_b, own_b)
    assert own_a.keys() != own_b.keys() or any(not torch.equal(own_a[k], own_b[k]) for k in own_a), own_a


def test_a_model_declares_its_hyperparameters_in_one_file():
    """A new model with a new hyperparameter: one registration, no config or registry edit."""
    from gatedvae.models.base import NON_NEGATIVE, GenerativeModel, Hyper, register

    @register("_test_scaled_vae", "KL times lam", lam=Hyper(3.0, "KL weight", check=NON_NEGATIVE))
    class ScaledVAE(GenerativeModel):
        def regulariser(self, post, z, step, generator):
            return {"kl": self.hyper["lam"] * super().regulariser(post, z, step, generator)["kl"]}

    try:
        assert resolve_hyper(ModelConfig(name="_test_scaled_vae")) == {"lam": 3.0}
        assert resolve_hyper(ModelConfig(name="_test_scaled_vae", lam=1)) == {"lam": 1.0}
        with pytest.raises(ConfigError, match="model.lam: must be non-negative, got -1.0"):
            resolve_hyper(ModelConfig(name="_test_scaled_vae", lam=-1))
        with pytest.raises(ConfigError, match="model.lam: expected float"):
            resolve_hyper(ModelConfig(name="_test_scaled_vae", lam="big"))
        with pytest.raises(ConfigError, match="did you mean 'lam'"):
            resolve_hyper(ModelConfig(name="_test_scaled_vae", lamb=1.0))
        model = make("_test_scaled_vae", lam=0.5)
        assert model.hyper == {"lam": 0.5}
        with pytest.raises(TypeError, match="0.1's type"):
            register("_test_bad", beta=Hyper(1, "an int beta"))(ScaledVAE)
    finally:
        MODELS.pop("_test_scaled_vae", None)
        MODELS.pop("_test_bad", None)


def test_factor_vae_discriminator_step_does_not_touch_the_encoder():
    model = make("factor_vae")
    x, _ = batch(model)
    out = model.loss(x, x, 0, torch.Generator().manual_seed(0))
    out.total.backward()
    # The VAE's TC term reaches z, not the discriminator's weights (they train in their own step).
    assert all(p.grad is None for p in model.discriminator.parameters())
    model.zero_grad()
    opts = {"discriminator": torch.optim.Adam(model.discriminator.parameters(), lr=1e-4)}
    before = [p.detach().clone() for p in model.encoder.parameters()]
    terms = model.auxiliary_step(out, opts, torch.Generator().manual_seed(0))
    assert "disc" in terms and np.isfinite(terms["disc"].item())
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.encoder.parameters(), strict=True))
