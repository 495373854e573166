"""InfoGAN and InfoWGAN-GP: the L_I bound against an independent computation, the code space, the
gradient penalty, the two optimisers' separation, the trainer's refusals, and a tiny run with figures.
(The registry-wide forward/backward, training and save/load tests in test_models.py cover them too.)"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.distributions import Categorical, Normal, Uniform

from conftest import tiny_config
from gatedvae.cli import main
from gatedvae.config import Config, DataConfig, GatingConfig, ModelConfig, PartitionConfig, TrainConfig
from gatedvae.errors import ConfigError
from gatedvae.evaluation import evaluate_run
from gatedvae.models import build_model
from gatedvae.models.infogan import CodeSpace, GANOutput, code_cross_entropy, gradient_penalty, info_lower_bound
from gatedvae.train import train

IMAGE = (1, 8, 8)


def make(name="infogan", latent=6, **kw):
    return build_model(ModelConfig(name=name, latent_dim=latent, hidden=16, **kw), IMAGE, dataset_size=100, seed=0)


# --------------------------------------------------------------------------- L_I on hand-made cases
def test_l_i_is_code_entropy_minus_cross_entropy_hand_made():
    codes = CodeSpace(continuous=2, categorical=(3, 2))
    logits = [torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]]), torch.tensor([[0.5, -0.5], [3.0, 1.0]])]
    index = torch.tensor([[0, 1], [2, 0]])
    mu = torch.tensor([[0.1, -0.3], [0.5, 0.0]])
    logvar = torch.tensor([[0.0, -1.0], [0.7, -2.0]])
    value = torch.tensor([[0.4, -0.9], [-0.2, 0.05]])
    ce = code_cross_entropy(logits, index, mu, logvar, value)  # (2,)
    # Independently: -log Q(c|x) with torch.distributions.
    expected = -(
        Normal(mu, torch.exp(0.5 * logvar)).log_prob(value).sum(1)
        + Categorical(logits=logits[0]).log_prob(index[:, 0])
        + Categorical(logits=logits[1]).log_prob(index[:, 1])
    )
    assert ce.shape == (2,)
    torch.testing.assert_close(ce, expected)
    h = 2 * math.log(2.0) + math.log(3.0) + math.log(2.0)
    assert codes.entropy() == pytest.approx(h)
    # H(c) from torch.distributions: Unif(-1, 1) has log 2 nats, Cat(K, 1/K) has log K.
    h_dist = (
        2 * Uniform(-1.0, 1.0).entropy().item()
        + Categorical(probs=torch.ones(3) / 3).entropy().item()
        + Categorical(probs=torch.ones(2) / 2).entropy().item()
    )
    assert codes.entropy() == pytest.approx(h_dist, rel=1e-6)
    torch.testing.assert_close(info_lower_bound(ce, codes.entropy()), h - expected)


def test_l_i_reaches_h_c_for_a_perfect_categorical_q_and_is_zero_for_a_uniform_one():
    codes = CodeSpace(continuous=0, categorical=(10,))
    index = torch.arange(10)[:, None]  # (10, 1)
    empty = torch.zeros(10, 0)
    perfect = [100.0 * torch.eye(10)]
    uniform = [torch.zeros(10, 10)]
    l_perfect = info_lower_bound(code_cross_entropy(perfect, index, empty, empty, empty), codes.entropy())
    l_uniform = info_lower_bound(code_cross_entropy(uniform, index, empty, empty, empty), codes.entropy())
    # The lecture: the bound's maximum for discrete codes is H(c) = log 10 = 2.30.
    torch.testing.assert_close(l_perfect, torch.full((10,), math.log(10)), atol=1e-6, rtol=0)
    torch.testing.assert_close(l_uniform, torch.zeros(10), atol=1e-6, rtol=0)


def test_code_space_samples_uniform_codes_and_one_hot_blocks():
    codes = CodeSpace(continuous=3, categorical=(3, 4))
    g = torch.Generator().manual_seed(0)
    c, cont, idx = codes.sample(20000, g, torch.device("cpu"))
    assert c.shape == (20000, 10) and cont.shape == (20000, 3) and idx.shape == (20000, 2)
    assert cont.min() >= -1 and cont.max() <= 1 and abs(cont.mean().item()) < 0.02
    assert torch.equal(c[:, :3], cont)
    assert torch.equal(c[:, 3:6].argmax(1), idx[:, 0]) and torch.equal(c[:, 6:].argmax(1), idx[:, 1])
    assert torch.all(c[:, 3:6].sum(1) == 1) and torch.all(c[:, 6:].sum(1) == 1)
    freq = torch.bincount(idx[:, 1], minlength=4).float() / 20000
    assert torch.allclose(freq, torch.full((4,), 0.25), atol=0.02)
    c2, _, _ = codes.sample(20000, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert torch.equal(c, c2)


def test_gradient_penalty_of_a_linear_critic_is_closed_form():
    w = torch.tensor([0.3, -1.2, 2.0, 0.5])

    def critic(x):
        return x.flatten(1) @ w  # (B,)

    real, fake = torch.rand(5, 1, 2, 2), torch.rand(5, 1, 2, 2)
    gp = gradient_penalty(critic, real, fake, torch.Generator().manual_seed(0))
    torch.testing.assert_close(gp, torch.full((5,), (w.norm().item() - 1.0) ** 2))


# --------------------------------------------------------------------------- the model
@pytest.mark.parametrize("name", ["infogan", "infowgan_gp"])
def test_representation_is_q_mean_with_probabilities(name):
    model = make(name, latent=7, categorical=(3,))
    model.eval()
    x = torch.rand(5, *IMAGE)
    post = model.encode(x)
    assert post.mu.shape == (5, 7) and post.logvar.shape == (5, 7)
    torch.testing.assert_close(post.mu[:, 4:].sum(1), torch.ones(5))
    assert torch.all(post.logvar[:, :4].abs() < 6.0)
    assert model.decode(post.mu).shape == (5, *IMAGE)
    assert torch.equal(model.representation(x), post.mu)


def test_loss_terms_are_the_generator_objective():
    model = make("infogan", latent=6, categorical=(3,), info_lambda=0.5)
    x = torch.rand(8, *IMAGE)
    out = model.loss(x, x, 0, torch.Generator().manual_seed(3))
    assert isinstance(out, GANOutput) and set(out.terms) == {"gen", "info"}
    # Recompute from the same draws: info = lambda * (CE - H(c)), gen = softplus(-D(G)).
    adv, mu, logvar, logits = model.discriminator(out.fake)
    ce = code_cross_entropy(logits, out.index, mu, logvar, out.cont).mean()
    torch.testing.assert_close(out.terms["info"], 0.5 * (ce - model.codes.entropy()))
    torch.testing.assert_close(out.terms["gen"], torch.nn.functional.softplus(-adv).mean())
    torch.testing.assert_close(out.total, out.terms["gen"] + out.terms["info"])


@pytest.mark.parametrize("name", ["infogan", "infowgan_gp"])
def test_generator_step_leaves_d_alone_and_d_step_leaves_g_alone(name):
    model = make(name)
    x = (torch.rand(8, *IMAGE) > 0.5).float()
    out = model.loss(x, x, 0, torch.Generator().manual_seed(0))
    out.total.backward()
    assert all(p.grad is None for p in model.discriminator.parameters())
    assert all(p.grad is not None for p in model.main_parameters())
    model.zero_grad(set_to_none=True)
    g_before = [p.detach().clone() for p in model.main_parameters()]
    d_before = [p.detach().clone() for p in model.discriminator.parameters()]
    opts = {"discriminator": torch.optim.Adam(model.discriminator.parameters(), lr=1e-2)}
    terms = model.auxiliary_step(out, opts, torch.Generator().manual_seed(1))
    assert {"disc", "l_i"} <= set(terms) and all(math.isfinite(v.item()) for v in terms.values())
    if name == "infowgan_gp":
        assert "gp" in terms and terms["gp"].item() >= 0
    assert all(p.grad is None for p in model.main_parameters())
    assert all(torch.equal(a, b) for a, b in zip(g_before, model.main_parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(d_before, model.discriminator.parameters(), strict=True))
    assert terms["l_i"].item() <= model.codes.entropy() + 3 * 2.1  # categorical part <= H; Gaussian log-density bounded


def test_q_learns_the_codes_of_a_fixed_generator():
    """Trained on G's samples alone (lambda * CE), Q recovers the categorical code: L_I -> H(c)."""
    torch.manual_seed(0)
    model = make("infogan", latent=3, categorical=(3,), noise_dim=2)
    model.generator_net.requires_grad_(False)
    opts = {"discriminator": torch.optim.Adam(model.discriminator.parameters(), lr=3e-3)}
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a generator whose categories are distinct images
        model.generator_net.layers[-1].weight.mul_(10.0)
    for step in range(150):
        x = torch.rand(64, *IMAGE)
        out = model.loss(x, x, step, g)
        terms = model.auxiliary_step(out, opts, g)
    assert terms["l_i"].item() > 0.8 * math.log(3)


def test_configuration_errors():
    with pytest.raises(ConfigError, match="latent_dim = continuous codes"):
        make("infogan", latent=2, categorical=(3,))
    with pytest.raises(
        ConfigError, match="at least 2 categories"
    ):  # checked when the model resolves its hyperparameters
        make("infogan", latent=3, categorical=(1,))
    with pytest.raises(ConfigError, match="gp_weight is not a hyperparameter of infogan"):
        make("infogan", gp_weight=10.0)
    only_cat = make("infogan", latent=3, categorical=(3,))
    assert only_cat.codes.continuous == 0


def test_infowgan_gp_defaults_reach_its_objective():
    """infowgan_gp's own defaults (lambda = 0.2, gp_weight = 10: the WGAN-GP settings) are what its
    loss and its critic step use: the same networks and noise give 0.2 times the L_I term and 10
    times the gradient penalty of lambda = gp_weight = 1."""
    x = torch.rand(16, *IMAGE, generator=torch.Generator().manual_seed(0))

    def terms(model) -> tuple[torch.Tensor, torch.Tensor]:
        out = model.loss(x, x, 0, torch.Generator().manual_seed(1))
        opts = {"discriminator": torch.optim.Adam(model.discriminator.parameters(), lr=1e-4)}
        aux = model.auxiliary_step(out, opts, torch.Generator().manual_seed(2))
        return out.terms["info"].detach(), aux["gp"].detach()

    info, gp = terms(make("infowgan_gp"))
    info_1, gp_1 = terms(make("infowgan_gp", info_lambda=1.0, gp_weight=1.0))
    assert info_1.abs() > 0 and gp_1 > 0
    torch.testing.assert_close(info, 0.2 * info_1)
    torch.testing.assert_close(gp, 10.0 * gp_1)


def _tiny(**train_kw) -> Config:
    """The tiny config as an ungated InfoWGAN-GP on 300 ellipses: 5 codes (one 2-way categorical), 4 noise dims."""
    return tiny_config(
        gated=False,
        data={"size": 300},
        model={"name": "infowgan_gp", "latent_dim": 5, "categorical": [2], "noise_dim": 4},
        train={"steps": 30, "log_every": 10, "checkpoint_every": 15, "device": "cpu", **train_kw},
    )


def test_trainer_refuses_gating_and_finetuning_a_gan_before_writing(tmp_path):
    gated = Config(
        data=DataConfig(name="ellipses", size=300, levels=8),
        model=ModelConfig(name="infogan", latent_dim=4, hidden=24, categorical=(2,)),
        gating=GatingConfig(enabled=True, partitions=(PartitionConfig(name="a", size=4, factors=("x",)),)),
        train=TrainConfig(steps=5, batch_size=16, device="cpu"),
    )
    with pytest.raises(ConfigError, match="no reconstruction to gate"):
        train(gated, tmp_path / "g", quiet=True, tensorboard=False)
    with pytest.raises(ConfigError, match="finetune_steps=0"):
        train(_tiny(finetune_steps=5), tmp_path / "f", quiet=True, tensorboard=False)
    assert not (tmp_path / "g").exists() and not (tmp_path / "f").exists()


def test_tiny_run_trains_resumes_and_writes_gan_figures(tmp_path):
    run = tmp_path / "run"
    assert train(_tiny(), run, quiet=True, tensorboard=False, stop_after=15)["status"] == "stopped"
    train(None, run, resume=True, quiet=True, tensorboard=False)
    other = tmp_path / "straight"
    train(_tiny(), other, quiet=True, tensorboard=False)
    from safetensors.torch import load_file

    a = load_file(str(run / "checkpoints" / "step-000000030.safetensors"))
    b = load_file(str(other / "checkpoints" / "step-000000030.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # exact resume, both optimisers
    assert any(k.startswith("optim/discriminator/") for k in a)
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"gen", "info", "disc", "gp", "l_i"} <= set(lines[-1])
    doc = evaluate_run(run, metrics="beta_vae,mig", preset="fast", seed=0, progress=False, device="cpu")
    assert 0.0 <= doc["headline"]["beta_vae.eval_accuracy"] <= 1.0
    assert {"figures/samples.png", "figures/code_traversals.png", "figures/traversals.png"} <= set(doc["figures"])
    for f in ("samples.png", "code_traversals.png"):
        assert (run / "figures" / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_lists_the_gans(capsys):
    assert main(["list", "models"]) == 0
    out = capsys.readouterr().out
    assert "infogan" in out and "infowgan_gp" in out and "gp_weight=10.0" in out
