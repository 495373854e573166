"""DC-IGN clamping (``gating.mode=clamp``) and the conditional VAE's two conditions.

Issue 15: with the MLP decoder's Linear -> BatchNorm1d, training-mode batch norm cancelled the
clamped latents exactly (the decoder's output changed by 1.7e-6 when they were replaced by other
constants; their first-layer weight columns got 1.8e-7 of reconstruction gradient against 3.5).
Clamp batches are now normalised by an i.i.d. reference batch's statistics (gatedvae.nets.norm).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gatedvae.models.base as model_base
from conftest import tiny_config
from gatedvae.errors import ConfigError
from gatedvae.gating import clamp_to_mean
from gatedvae.nets.norm import batch_norm_layers, capture_statistics, use_statistics
from gatedvae.run import prepare, validate
from gatedvae.train.batch import Batcher
from gatedvae.train.step import make_generators

CPU = torch.device("cpu")


def _clamp_run(net: str, batch_size: int = 32, **dotted):
    hidden = 64 if net == "mlp" else 32
    cfg = tiny_config(
        {"gating.mode": "clamp", "model.net": net, "model.hidden": hidden, "train.batch_size": batch_size, **dotted}
    )
    prep = prepare(cfg, CPU)
    prep.model.train()
    return prep, Batcher(prep), make_generators(0, CPU)[0]


def _loss(model, batch, seed: int):
    return model.loss(
        batch.x,
        batch.target,
        0,
        torch.Generator().manual_seed(seed),
        cond=batch.cond,
        clamp_mask=batch.clamp_mask,
        enc_cond=batch.enc_cond,
        reference=batch.reference,
        reference_cond=batch.reference_cond,
    )


def _first_linear(model) -> torch.nn.Linear:
    return model.decoder.layers[0][0] if model.cfg.net == "mlp" else model.decoder.fc[0]


def _shifted(z: torch.Tensor, clamp: torch.Tensor):
    """:func:`clamp_to_mean` with the clamped values moved by 0.5: other constants."""
    z_dec, penalty = clamp_to_mean(z, clamp)
    return z_dec + 0.5 * clamp, penalty


def test_clamp_to_mean_forward_and_gradients():
    z = torch.randn(7, 4, requires_grad=True)
    clamp = torch.tensor([True, False, True, False])
    z_dec, penalty = clamp_to_mean(z, clamp)
    mean = z.detach().mean(0, keepdim=True)
    assert torch.allclose(z_dec[:, clamp], mean[:, clamp].expand(7, -1))
    assert torch.equal(z_dec[:, ~clamp], z.detach()[:, ~clamp])
    # the decoder's gradient reaches only the unclamped dims
    (g_dec,) = torch.autograd.grad(z_dec.sum(), z)
    assert torch.equal(g_dec[:, clamp], torch.zeros(7, 2)) and torch.equal(g_dec[:, ~clamp], torch.ones(7, 2))
    # the clamped dims get their deviation from the mean, scaled by 1/B as a batch-mean loss's gradient
    (g_pen,) = torch.autograd.grad(penalty, z)
    assert torch.allclose(g_pen[:, clamp], (z.detach() - mean)[:, clamp] / 7, atol=1e-7)
    assert torch.equal(g_pen[:, ~clamp], torch.zeros(7, 2))
    assert torch.isclose(penalty, 0.5 * ((z.detach() - mean)[:, clamp] ** 2).sum(1).mean())


def test_clamp_penalty_keeps_its_weight_as_the_batch_grows():
    """The per-sample pull is (z - mean) / B, like the reconstruction's 1/B: batch 8 and batch 64
    of the same distribution give penalties of the same size (the old replacement grew with B)."""
    clamp = torch.tensor([True, True])
    rng = torch.Generator().manual_seed(0)
    small = np.mean([float(clamp_to_mean(torch.randn(8, 2, generator=rng), clamp)[1]) for _ in range(200)])
    large = np.mean([float(clamp_to_mean(torch.randn(64, 2, generator=rng), clamp)[1]) for _ in range(200)])
    assert 0.8 < small / large < 1.0  # E = 0.5 * 2 * (B - 1) / B: 0.875 and 0.984


@pytest.mark.parametrize("net", ["mlp", "conv64"])
def test_clamped_latents_reach_the_decoder_in_training_mode(net, monkeypatch):
    """The issue's two measurements, in training mode, through the model's loss: replacing the
    clamped values by other constants changes what the decoder draws, and the reconstruction
    gradient on the decoder's first-layer weight columns of clamped dims is within 10x of the
    active dims' (before the fix: 1.7e-6 and 1.8e-7 vs 3.5 with the MLP)."""
    prep, batcher, rng = _clamp_run(net)
    model = prep.model
    if net == "mlp":
        assert batch_norm_layers(model.decoder)  # the case the issue is about
    drawn: list[torch.Tensor] = []
    model.decoder.register_forward_hook(lambda m, a, out: drawn.append(out.detach().clone()))
    active_norm, clamped_norm = [], []
    for step in range(4):
        batch = batcher.draw(step, rng)
        clamp = batch.clamp_mask
        assert clamp.any() and (~clamp).any()
        assert (batch.reference is not None) == (net == "mlp")
        out = _loss(model, batch, seed=step)
        model.zero_grad()
        out.terms["recon"].backward()
        column = _first_linear(model).weight.grad.norm(dim=0)  # (M,)
        active_norm.append(float(column[~clamp].mean()))
        clamped_norm.append(float(column[clamp].mean()))
        plain = drawn[-1]
        monkeypatch.setattr(model_base, "clamp_to_mean", _shifted)
        _loss(model, batch, seed=step)
        monkeypatch.setattr(model_base, "clamp_to_mean", clamp_to_mean)
        assert (drawn[-1] - plain).abs().max() > 1e-3  # before the fix (mlp): 1.7e-6
    ratio = np.mean(active_norm) / np.mean(clamped_norm)
    assert 0.1 < ratio < 10, ratio


def test_running_statistics_come_from_the_reference_batch_only():
    """A clamp batch holds few distinct images; batch norm's running statistics (what evaluation
    uses) are updated from the i.i.d. reference batch, and the clamp batch is normalised by the
    reference's statistics, so training-mode encoding equals evaluation-mode encoding with them."""
    prep, batcher, rng = _clamp_run("mlp")
    model = prep.model
    batch = batcher.draw(0, rng)
    bn = model.encoder.trunk.layers[0][1]  # the encoder's first BatchNorm1d
    before = bn.running_mean.clone()
    with torch.no_grad():
        ref_features = model.encoder.trunk.layers[0][0](batch.reference.flatten(1))  # (R, hidden)
    _loss(model, batch, seed=0)
    expected = (1 - bn.momentum) * before + bn.momentum * ref_features.mean(0)
    assert torch.allclose(bn.running_mean, expected, atol=1e-5)
    assert bn.training  # restored
    # the clamp batch's encoding in the step = eval-mode encoding under the reference's statistics
    layers = batch_norm_layers(model.encoder, model.decoder)
    with torch.no_grad():
        with capture_statistics(layers) as stats:
            model.decode(model.encode(batch.reference).rsample(torch.Generator().manual_seed(9)))
        with use_statistics(stats):
            in_step = model.encode(batch.x).mu
        copy = prepare(prep.config, CPU).model
        copy.load_state_dict(model.state_dict())
        copy.eval()
        for layer, twin in zip(layers, batch_norm_layers(copy.encoder, copy.decoder), strict=True):
            twin.running_mean.copy_(stats[layer][0])
            twin.running_var.copy_(stats[layer][1])
        assert torch.allclose(in_step, copy.encode(batch.x).mu, atol=1e-5)
        # own-batch statistics would differ: this batch is not i.i.d.
        assert not torch.allclose(in_step, model.encode(batch.x).mu, atol=1e-3)


def test_a_clamp_step_with_batch_norm_needs_a_reference_batch():
    prep, batcher, rng = _clamp_run("mlp")
    batch = batcher.draw(0, rng)
    with pytest.raises(ValueError, match="reference batch"):
        prep.model.loss(batch.x, batch.target, 0, clamp_mask=batch.clamp_mask)


@pytest.mark.parametrize("model", ["beta_tcvae", "beta_tcvae_mss", "dip_vae_i", "dip_vae_ii", "info_vae", "factor_vae"])
def test_batch_coupled_regularisers_are_refused_in_clamp_mode(model):
    with pytest.raises(ConfigError, match=r"^model \w+ estimates .* over the batch, .* use gating.mode=gate"):
        validate(tiny_config({"gating.mode": "clamp", "model.name": model}))
    validate(tiny_config({"model.name": model}))  # gate mode is fine


@pytest.mark.parametrize("model", ["vae", "beta_vae", "annealed_vae", "chyvae", "cvae"])
def test_per_sample_objectives_clamp(model):
    validate(tiny_config({"gating.mode": "clamp", "model.name": model}))


def test_gate_kl_in_clamp_mode_gates_the_regulariser_to_the_active_partition():
    prep, batcher, rng = _clamp_run("mlp")
    model = prep.model
    batch = batcher.draw(0, rng)
    gen = torch.Generator().manual_seed(0)
    out = model.loss(
        batch.x, batch.target, 0, gen, clamp_mask=batch.clamp_mask, gate_regulariser=True, reference=batch.reference
    )
    (g,) = torch.autograd.grad(out.terms["kl"], out.posterior.mu)
    assert torch.equal(g[:, batch.clamp_mask], torch.zeros_like(g[:, batch.clamp_mask]))
    assert g[:, ~batch.clamp_mask].abs().sum() > 0
    out = model.loss(batch.x, batch.target, 0, gen, clamp_mask=batch.clamp_mask, reference=batch.reference)
    (g,) = torch.autograd.grad(out.terms["kl"], out.posterior.mu)
    assert (g[:, batch.clamp_mask].abs().sum(0) > 0).all()  # without gate_kl: every dim
    assert "clamp" in out.terms


def test_gated_cvae_encoder_sees_the_inputs_labels_and_decoder_the_targets():
    """With gating, input and target are different images: q(z|x, y) must get the input's y; the
    decoder draws the target, so it gets the target's (before the fix the encoder got the target's
    on every row, the input's on 26.6% of them)."""
    cfg = tiny_config(
        {"model.name": "cvae", "model.condition": ["scale"], "model.condition_encoder": True, "train.batch_size": 64}
    )
    prep = prepare(cfg, CPU)
    batcher, rng = Batcher(prep), make_generators(0, CPU)[0]
    ds = prep.dataset
    scale = ds.factor_space.position("scale")
    seen: list[torch.Tensor] = []
    prep.model.encoder.register_forward_pre_hook(lambda m, args: seen.append(args[1]))
    rows = agree = 0
    for step in range(3):  # position, scale and orientation partitions
        batch = batcher.draw(step, rng)
        sampler = prep.samplers[batch.active]
        assert sampler is not None
        # which images were drawn: recover them from the images (the tiny data has no duplicates)
        flat = ds.images(np.arange(len(ds))).flatten(1)
        inp = torch.cdist(batch.x.flatten(1), flat).argmin(1).numpy()
        tgt = torch.cdist(batch.target.flatten(1), flat).argmin(1).numpy()
        onehot = np.eye(ds.factor_space.sizes[scale], dtype=np.float32)
        assert np.array_equal(batch.enc_cond.numpy(), onehot[ds.factors_of(inp)[:, scale]])
        assert np.array_equal(batch.cond.numpy(), onehot[ds.factors_of(tgt)[:, scale]])
        _loss(prep.model, batch, seed=step)
        assert torch.equal(seen[-1], batch.enc_cond)
        rows += len(inp)
        agree += int((ds.factors_of(inp)[:, scale] == ds.factors_of(tgt)[:, scale]).sum())
    assert agree < rows  # the pairs do differ in scale on some rows, so the test can tell


def test_a_clamp_run_resumes_bitwise(tmp_path):
    """The reference batch (its draw, its noise, the running statistics it updates) is part of the
    checkpointed state: a stopped clamp run resumes to the uninterrupted run's parameters."""
    from safetensors.torch import load_file

    from gatedvae.checkpoint import latest_checkpoint
    from gatedvae.train import train

    cfg = tiny_config({"gating.mode": "clamp", "train.steps": 20, "train.checkpoint_every": 10})

    def final(run):
        return load_file(str(latest_checkpoint(run / "checkpoints")[1]))

    train(cfg, tmp_path / "full", quiet=True, tensorboard=False)
    assert train(cfg, tmp_path / "stopped", quiet=True, tensorboard=False, stop_after=7)["status"] == "stopped"
    train(None, tmp_path / "stopped", resume=True, quiet=True, tensorboard=False)
    full, resumed = final(tmp_path / "full"), final(tmp_path / "stopped")
    assert full.keys() == resumed.keys() and any("running_mean" in k for k in full)
    for k in full:
        assert torch.equal(full[k], resumed[k]), k
