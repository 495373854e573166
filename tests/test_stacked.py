"""The stacked ensemble computation (:mod:`gatedvae.train.stacked`) against each member's own.

K = 3 tiny members of one shape: the vmapped networks give each member's own outputs, gradients
and batch-norm statistics; StackedAdam makes torch Adam's updates with a learning rate per member;
the conversions to and from the members' modules and optimisers, the checkpoint written from them
and the removal of a member keep every value bitwise.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gatedvae.checkpoint import load_checkpoint, save_checkpoint
from gatedvae.config import ModelConfig
from gatedvae.models import build_model
from gatedvae.train.stacked import StackedAdam, StackedNetworks, check_stackable
from gatedvae.train.step import Precision, make_optimizers

K, B, LATENT, HIDDEN, COND = 3, 6, 4, 32, 3
LRS = [1e-3, 3e-3, 5e-4]


def members(name="beta_vae", net="mlp", cond=False, k=K, **kw):
    image = (1, 64, 64) if net == "conv64" else (1, 16, 16)
    cfg = ModelConfig(
        name=name,
        net=net,
        latent_dim=LATENT,
        hidden=HIDDEN,
        condition=("f",) if cond else (),
        condition_encoder=cond,
        **kw,
    )
    return [build_model(cfg, image, 100, cond_dim=COND if cond else 0, seed=10 + i) for i in range(k)]


def inputs(models, seed=0, sparse=False):
    g = torch.Generator().manual_seed(seed)
    k, shape = len(models), models[0].image_shape
    x = torch.rand((k, B, *shape), generator=g)  # (K, B, C, H, W)
    if sparse:  # binary and 10% dense: the members' first layer takes its sparse path
        x = (x < 0.1).float()
    cond = torch.eye(COND)[torch.randint(0, COND, (k, B), generator=g)] if models[0].cond_dim else None  # (K, B, c)
    eps = torch.randn((k, B, LATENT), generator=g)  # (K, B, M)
    return x, cond, eps


def loss_of(mu, logvar, out, x):
    """Per-sample BCE + KL, batch mean: ``(...,)`` over leading member axes."""
    rec = F.binary_cross_entropy_with_logits(out, x, reduction="none").flatten(-3).sum(-1)  # (..., B)
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(-1)  # (..., B)
    return (rec + kl).mean(-1)


def solo_loss(model, x, cond, eps):
    post = model.encode(x, cond)
    z = post.mu + torch.exp(0.5 * post.logvar) * eps  # (B, M)
    return loss_of(post.mu, post.logvar, model.decode(z, cond), x)


def stacked_loss(nets, x, cond, eps):
    mu, logvar = nets.encode(x, cond)  # (K, B, M)
    z = mu + torch.exp(0.5 * logvar) * eps  # (K, B, M)
    return loss_of(mu, logvar, nets.decode(z, cond), x)  # (K,)


def bn_buffers(model):
    return {k: v for k, v in model.named_buffers() if "running" in k or "num_batches" in k}


CASES = [("mlp", False), ("mlp", True), ("conv64", True)]


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("net,cond", CASES, ids=[f"{n}-{'cond' if c else 'plain'}" for n, c in CASES])
def test_vmapped_networks_equal_each_members_own(net, cond, train):
    models = members("cvae" if cond else "beta_vae", net, cond)
    g = torch.Generator().manual_seed(1)
    for m in models:
        m.train(train)
        for name, buf in bn_buffers(m).items():  # each member's own running statistics
            if "running" in name:
                buf.copy_(torch.rand(buf.shape, generator=g) + (0.5 if "var" in name else -0.5))
    nets = StackedNetworks(models).train(train)
    x, c, eps = inputs(models, sparse=not cond)
    mu, logvar = nets.encode(x, c)  # (K, B, M)
    out = nets.decode(mu, c)  # (K, B, C, H, W)
    assert mu.shape == logvar.shape == (K, B, LATENT) and out.shape == x.shape
    for k, m in enumerate(models):
        post = m.encode(x[k], None if c is None else c[k])
        torch.testing.assert_close(mu[k], post.mu, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(logvar[k], post.logvar, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(out[k], m.decode(mu[k], None if c is None else c[k]), atol=1e-6, rtol=1e-6)
    if not cond:  # sparse binary images took the batched sparse first layer; the dense vmapped one agrees
        assert nets._sparse_input(x) is not None
        dense = StackedNetworks(models).train(train)
        dense.sparse_input = False
        torch.testing.assert_close(dense.encode(x), (mu, logvar), atol=1e-6, rtol=1e-6)
    nets_buffers = {f"{n}.{k}": v for n in nets.names for k, v in nets.buffers[n].items()}
    for k, m in enumerate(models):
        own = bn_buffers(m)
        assert own or net == "conv64"  # the MLP has batch norm; the conv net none
        for name, v in own.items():  # each updated once in train mode, by the member's call and by the stack's
            assert not name.endswith("num_batches_tracked") or int(v) == int(train)
            torch.testing.assert_close(nets_buffers[name][k], v, atol=1e-7, rtol=1e-6)


def test_gradients_and_discriminator_equal_each_members_own():
    models = members("factor_vae")
    nets = StackedNetworks(models)
    x, c, eps = inputs(models, sparse=True)
    mu, logvar = nets.encode(x)
    z = (mu + torch.exp(0.5 * logvar) * eps).detach().requires_grad_()  # (K, B, M)
    d = nets.auxiliary("discriminator", z, grad_params=False)  # (K, B, 2)
    assert d.shape == (K, B, 2)
    d.sum().backward()
    assert all(p.grad is None for p in nets.parameters_of("discriminator"))  # gradient to z only
    for k, m in enumerate(models):
        zk = z[k].detach().requires_grad_()
        dk = m.discriminator(zk)
        torch.testing.assert_close(d[k], dk, atol=1e-6, rtol=1e-6)
        dk.sum().backward()
        torch.testing.assert_close(z.grad[k], zk.grad, atol=1e-6, rtol=1e-6)
    # the whole main loss: each member's gradient is its own (the sum of totals decouples them)
    for m in models:
        m.zero_grad(set_to_none=True)
    stacked_loss(nets, x, None, eps).sum().backward()
    main = nets.parameters_of("main")
    for k, m in enumerate(models):
        solo_loss(m, x[k], None, eps[k]).backward()
        for p, q in zip(main, m.main_parameters(), strict=True):
            torch.testing.assert_close(p.grad[k], q.grad, atol=1e-5, rtol=1e-5)  # through train-mode BN of 6
    nets.auxiliary("discriminator", z.detach(), grad_params=True).sum().backward()
    assert all(p.grad is not None for p in nets.parameters_of("discriminator"))


def own_grad(q, g):
    """``g`` in the layout of the member's parameter ``q`` (torch's fused Adam pairs elements by storage)."""
    return torch.empty_like(q).copy_(g)


def train_steps(nets, adam, x, c, eps, n):
    for _ in range(n):
        adam.zero_grad()
        stacked_loss(nets, x, c, eps).sum().backward()
        adam.step()


@pytest.mark.parametrize("lrs", [LRS, [2e-3] * K], ids=["own-lr", "shared-lr"])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "foreach"])
def test_stacked_adam_equals_torch_adam_per_member(fused, lrs):
    models = members("cvae", "mlp", cond=True)
    nets = StackedNetworks(models)
    params = nets.parameters_of("main")
    opts = [
        torch.optim.Adam(m.main_parameters(), lr=lr, fused=fused, foreach=not fused)
        for m, lr in zip(models, lrs, strict=True)
    ]
    adam = StackedAdam.from_optimizers(params, opts)
    assert adam.lr == lrs and adam.size == K and len(adam._runs) == len(set(lrs))
    x, c, eps = inputs(models)
    for step in range(5):
        adam.zero_grad()
        stacked_loss(nets, x, c, eps).sum().backward()
        for k, m in enumerate(models):  # the member's own Adam on the same gradient
            for p, q in zip(params, m.main_parameters(), strict=True):
                q.grad = own_grad(q, p.grad[k])
            opts[k].step()
        adam.step()
        for k, m in enumerate(models):
            for p, q in zip(params, m.main_parameters(), strict=True):
                if fused:  # the same kernel on the same numbers
                    assert torch.equal(p[k], q), (step, k)
                else:
                    torch.testing.assert_close(p[k], q.detach(), atol=1e-6, rtol=0)
    assert adam.steps.eq(5).all()


def test_discriminator_adam_settings_and_first_step_from_empty_state():
    models = members("factor_vae")
    nets = StackedNetworks(models)
    opts = [make_optimizers(m, 1e-3, torch.device("cpu")).steps["discriminator"] for m in models]
    adam = StackedAdam.from_optimizers(nets.parameters_of("discriminator"), opts)  # no state yet: step 0
    assert adam.betas == (0.5, 0.9) and adam.lr == [1e-4] * K and adam.steps.eq(0).all()
    adam.to_members(opts)
    assert all(not o.state for o in opts)  # step 0 writes no state, as torch's Adam before its first step
    x, _, eps = inputs(models)
    adam.zero_grad()
    nets.auxiliary("discriminator", eps, grad_params=True).square().mean(dim=(1, 2)).sum().backward()
    for k, m in enumerate(models):
        for p, q in zip(nets.parameters_of("discriminator"), m.discriminator.parameters(), strict=True):
            q.grad = own_grad(q, p.grad[k])
        opts[k].step()
    adam.step()
    for k, m in enumerate(models):
        for p, q in zip(nets.parameters_of("discriminator"), m.discriminator.parameters(), strict=True):
            assert torch.equal(p[k], q)
    assert adam._runs == [(0, K)]  # one learning rate, one step count: one kernel call for all members
    # member 1 starts over (a fresh optimiser): its step counts differ, the members' updates stay their own
    opts[1] = torch.optim.Adam(models[1].discriminator.parameters(), lr=1e-4, betas=(0.5, 0.9), fused=True)
    adam.from_members(opts)
    assert adam._runs == [(0, 1), (1, 2), (2, 3)] and adam.steps[:, 1].eq(0).all() and adam.steps[:, 0].eq(1).all()
    for _ in range(2):
        adam.zero_grad()
        nets.auxiliary("discriminator", eps, grad_params=True).square().mean(dim=(1, 2)).sum().backward()
        for k, m in enumerate(models):
            for p, q in zip(nets.parameters_of("discriminator"), m.discriminator.parameters(), strict=True):
                q.grad = own_grad(q, p.grad[k])
            opts[k].step()
        adam.step()
    for k, m in enumerate(models):
        for p, q in zip(nets.parameters_of("discriminator"), m.discriminator.parameters(), strict=True):
            assert torch.equal(p[k], q)
    assert adam._host_steps[0] == [3, 2, 3] and adam.steps[0].tolist() == [3.0, 2.0, 3.0]


def stacked_state(nets, adam):
    out = {f"{n}.{k}": v.detach().clone() for n in nets.names for k, v in {**nets.params[n], **nets.buffers[n]}.items()}
    out.update({f"m{i}": m.clone() for i, m in enumerate(adam.exp_avg)})
    out.update({f"v{i}": v.clone() for i, v in enumerate(adam.exp_avg_sq)})
    out["steps"] = adam.steps.clone()
    return out


def assert_bitwise(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def test_to_members_from_members_round_trip_bitwise():
    models = members("beta_vae", "mlp")
    opts = [make_optimizers(m, lr, torch.device("cpu")).steps["main"] for m, lr in zip(models, LRS, strict=True)]
    nets = StackedNetworks(models)
    adam = StackedAdam.from_optimizers(nets.parameters_of("main"), opts)
    x, c, eps = inputs(models, sparse=True)
    train_steps(nets, adam, x, c, eps, 3)
    before = stacked_state(nets, adam)
    nets.to_members()
    adam.to_members(opts)
    for k, (m, opt) in enumerate(zip(models, opts, strict=True)):
        for p, q in zip(nets.parameters_of("main"), m.main_parameters(), strict=True):
            assert torch.equal(p[k], q) and q.is_contiguous()  # weight_t stays (in, out) in its own layout
            st = opt.state[q]
            assert st["exp_avg"].stride() == q.stride() and float(st["step"]) == 3.0
            assert st["step"].device == q.device  # the fused Adam keeps its step count on the device
    # a new stack of the members holds the same numbers
    again = StackedNetworks(models)
    assert_bitwise(before, stacked_state(again, StackedAdam.from_optimizers(again.parameters_of("main"), opts)))
    # in place: scribble over the stack, read the members back
    with torch.no_grad():
        for p in nets.parameters_of("main"):
            p.add_(1.0)
        for m in adam.exp_avg:
            m.zero_()
        adam.steps.fill_(7)
    nets.from_members()
    adam.from_members(opts)
    assert_bitwise(before, stacked_state(nets, adam))


def test_member_checkpoint_loads_into_a_solo_run_and_continues(tmp_path):
    models = members("beta_vae", "mlp")
    opts = [make_optimizers(m, lr, torch.device("cpu")).steps["main"] for m, lr in zip(models, LRS, strict=True)]
    nets = StackedNetworks(models)
    adam = StackedAdam.from_optimizers(nets.parameters_of("main"), opts)
    x, c, eps = inputs(models, sparse=True)
    train_steps(nets, adam, x, c, eps, 3)
    nets.to_members()
    adam.to_members(opts)
    k = 1
    path = save_checkpoint(tmp_path / "step.safetensors", models[k], {"main": opts[k]}, torch.Generator(), {"step": 3})
    solo = build_model(models[k].cfg, models[k].image_shape, 100, seed=99)  # other initial values
    solo_opt = make_optimizers(solo, 0.1, torch.device("cpu")).steps["main"]
    load_checkpoint(path, solo, {"main": solo_opt})
    assert solo_opt.param_groups[0]["lr"] == LRS[k]
    for key, v in models[k].state_dict().items():
        assert torch.equal(solo.state_dict()[key], v), key
    for p, q in zip(models[k].main_parameters(), solo.main_parameters(), strict=True):
        for name, v in opts[k].state[p].items():
            assert torch.equal(solo_opt.state[q][name], v), name
    # the same function: the solo model's loss (its own forward, sparse first layer) is the member's
    torch.testing.assert_close(solo_loss(solo, x[k], None, eps[k]), stacked_loss(nets, x, c, eps)[k], rtol=1e-6, atol=0)
    # and the same update: one step of each from the same gradient
    adam.zero_grad()
    stacked_loss(nets, x, c, eps).sum().backward()
    for p, q in zip(nets.parameters_of("main"), solo.main_parameters(), strict=True):
        q.grad = own_grad(q, p.grad[k])
    solo_opt.step()
    adam.step()
    for p, q in zip(nets.parameters_of("main"), solo.main_parameters(), strict=True):
        assert torch.equal(p[k], q)


def test_dropping_a_member_keeps_the_others_bitwise():
    models = members("factor_vae")
    nets = StackedNetworks(models)
    opts = [make_optimizers(m, lr, torch.device("cpu")).steps["main"] for m, lr in zip(models, LRS, strict=True)]
    adam = StackedAdam.from_optimizers(nets.parameters_of("main"), opts)
    x, c, eps = inputs(models)
    train_steps(nets, adam, x, c, eps, 2)
    before = stacked_state(nets, adam)
    nets.drop(1)
    adam.drop(1, nets.parameters_of("main"))
    after = stacked_state(nets, adam)
    assert nets.size == adam.size == 2 and nets.models == [models[0], models[2]] and adam.lr == [LRS[0], LRS[2]]
    keep = torch.tensor([0, 2])
    for name, v in before.items():
        want = v[:, keep] if name == "steps" else v[keep]
        assert torch.equal(after[name], want), name
    for p in nets.parameters_of("main"):  # the Linear weights keep the layout their gradient comes in
        assert p.is_leaf and p.requires_grad
    train_steps(nets, adam, x[keep], None, eps[keep], 1)  # and the ensemble goes on
    assert adam.steps.eq(3).all()


def test_frozen_encoder_and_bf16():
    models = members("beta_vae", "mlp")
    hooks = Precision("bf16")
    for m in models:
        hooks.attach(m)  # a member's own precision hooks stay with the member
    nets = StackedNetworks(models)
    nets.set_encoder_frozen(True)
    x, c, eps = inputs(models)
    enc_stats = {k: v.clone() for k, v in nets.buffers["encoder"].items()}
    dec_stats = {k: v.clone() for k, v in nets.buffers["decoder"].items()}
    stacked_loss(nets, x, c, eps).sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in nets.params["encoder"].values())
    assert all(p.grad is not None for p in nets.parameters_of("decoder"))
    assert all(torch.equal(v, nets.buffers["encoder"][k]) for k, v in enc_stats.items())  # eval-mode batch norm
    assert not torch.equal(dec_stats["layers.0.1.running_mean"], nets.buffers["decoder"]["layers.0.1.running_mean"])
    nets.set_encoder_frozen(False)
    assert all(p.requires_grad for p in nets.params["encoder"].values())
    fp32 = StackedNetworks(models).eval()
    bf16 = StackedNetworks(models, precision="bf16").eval()
    mu32, _ = fp32.encode(x)
    mu16, _ = bf16.encode(x)
    assert mu16.dtype == torch.float32 and bf16.decode(mu16).dtype == torch.float32
    torch.testing.assert_close(mu16, mu32, atol=0.1, rtol=0.05)
    assert not torch.equal(mu16, mu32)


def test_refusals():
    with pytest.raises(ValueError, match="diagonal-Gaussian"):
        StackedNetworks(members("chyvae", k=2))
    a, b = members(k=1)[0], members(k=1, beta=2.0)[0]
    check_stackable([a, b])  # hyperparameters may differ
    wide = build_model(ModelConfig(name="beta_vae", latent_dim=LATENT, hidden=HIDDEN + 1), (1, 16, 16), 100)
    with pytest.raises(ValueError, match="share one network shape"):
        StackedNetworks([a, wide])
    with pytest.raises(ValueError, match="fp16"):
        StackedNetworks([a], precision="fp16")
