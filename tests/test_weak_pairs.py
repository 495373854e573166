"""Weak pairs (Locatello et al. 2020) and the pair models: Ada-GVAE, Ada-ML-VAE, GVAE, ML-VAE.

The aggregations against their closed forms, the threshold rules on constructed posteriors, the
k-changed sampler's statistics, the pairs section's one-line errors, what the Batcher tells each
model, exact resume, the loop ensemble (and the stacked step's refusal), no host sync, the preview,
and on a toy dataset whose pairs change one factor, a trained Ada-GVAE's inferred shared set.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import grid_dataset, tiny_config
from gatedvae.cli import main
from gatedvae.config import Config, from_dict, save_config, to_dict
from gatedvae.data import KChangedPairSampler, build_dataset
from gatedvae.data.base import FactorDataset, PackedBinaryStore
from gatedvae.data.factors import FactorSpace
from gatedvae.errors import ConfigError, GatedVAEError, PartitionError
from gatedvae.losses.weak import (
    adaptive_shared_mask,
    aggregate_gvae,
    aggregate_ml_vae,
    kl_between_diag,
    pair_divergence,
    share_posteriors,
    top_k_shared_mask,
)
from gatedvae.models import MODELS, build_model
from gatedvae.run import prepare, validate
from gatedvae.train import latest_checkpoint, train, train_ensemble
from gatedvae.train.batch import Batcher
from gatedvae.train.ensemble import choose_strategy
from test_sync import assert_quiet, counter, cuda_path, run_and_count  # noqa: F401  (fixtures)

PAIR_MODELS = ("ada_gvae", "ada_ml_vae", "gvae", "ml_vae")
#: the grid's factors for the Batcher and training tests: shape 3, scale 4, x 5, y 6 (8x8 binary images)
GRID = {"sizes": (3, 4, 5, 6), "names": ["shape", "scale", "x", "y"]}
LAYOUT = [
    {"name": "shape", "size": 1, "factors": ["shape"]},
    {"name": "scale", "size": 1, "factors": ["scale"]},
    {"name": "position", "size": 2, "factors": ["x", "y"]},
]


def posteriors(b=64, d=6, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    mu0, mu1 = torch.randn(b, d, generator=g, dtype=dtype), torch.randn(b, d, generator=g, dtype=dtype)
    lv0, lv1 = torch.randn(b, d, generator=g, dtype=dtype), torch.randn(b, d, generator=g, dtype=dtype)
    return mu0, lv0, mu1, lv1


def run_config(model="ada_gvae", **dotted) -> Config:
    """The tiny run on the 8x8 grid (pass ``dataset=grid()``): un-gated, k_changed pairs unless set."""
    base = {"model.name": model, "pairs.kind": "k_changed", "train.steps": 20, "train.batch_size": 16}
    if model in ("gvae", "ml_vae"):
        base["gating.partitions"] = LAYOUT
    return tiny_config({**base, **dotted}, gated=False)


def grid():
    return grid_dataset(**GRID)


# ----------------------------------------------------------------------------- the loss functions
def test_gvae_aggregate_is_the_arithmetic_mean_of_means_and_variances():
    mu0, lv0, mu1, lv1 = posteriors()
    mu, lv = aggregate_gvae(mu0, lv0, mu1, lv1)
    torch.testing.assert_close(mu, (mu0 + mu1) / 2)
    torch.testing.assert_close(lv.exp(), (lv0.exp() + lv1.exp()) / 2)
    # stable where exp would overflow
    big = torch.full((1, 1), 800.0, dtype=torch.float64)
    assert torch.isfinite(aggregate_gvae(big, big, big, big)[1]).all()


def test_ml_vae_aggregate_is_the_reference_form_twice_the_product_variance():
    mu0, lv0, mu1, lv1 = posteriors(seed=1)
    v0, v1 = lv0.exp(), lv1.exp()
    mu, lv = aggregate_ml_vae(mu0, lv0, mu1, lv1)
    torch.testing.assert_close(mu, (mu0 * v1 + mu1 * v0) / (v0 + v1))
    torch.testing.assert_close(lv.exp(), 2 * v0 * v1 / (v0 + v1))
    product_var = 1.0 / (1.0 / v0 + 1.0 / v1)  # the product of the two Gaussians (normalised)
    torch.testing.assert_close(lv.exp(), 2 * product_var)
    # disentanglement_lib's MLVae.model_fn, written as it is there
    new_var = 2 * v0 * v1 / (v0 + v1)
    torch.testing.assert_close(mu, (mu0 / v0 + mu1 / v1) * new_var * 0.5)


def test_share_posteriors_replaces_only_the_shared_dims_of_both():
    mu0, lv0, mu1, lv1 = posteriors(b=8, d=5, seed=2)
    shared = torch.rand(8, 5, generator=torch.Generator().manual_seed(3)) < 0.5
    for aggregate, fn in (("gvae", aggregate_gvae), ("ml_vae", aggregate_ml_vae)):
        a_mu, a_lv = fn(mu0, lv0, mu1, lv1)
        m0, l0, m1, l1 = share_posteriors(mu0, lv0, mu1, lv1, shared, aggregate)
        assert torch.equal(m0[shared], a_mu[shared]) and torch.equal(m1[shared], a_mu[shared])
        assert torch.equal(l0[shared], a_lv[shared]) and torch.equal(l1[shared], a_lv[shared])
        assert torch.equal(m0[~shared], mu0[~shared]) and torch.equal(l1[~shared], lv1[~shared])


def test_divergences_against_torch_distributions():
    mu0, lv0, mu1, lv1 = posteriors(seed=4)
    q0 = torch.distributions.Normal(mu0, (0.5 * lv0).exp())
    q1 = torch.distributions.Normal(mu1, (0.5 * lv1).exp())
    kl01, kl10 = torch.distributions.kl_divergence(q0, q1), torch.distributions.kl_divergence(q1, q0)
    torch.testing.assert_close(kl_between_diag(mu0, lv0, mu1, lv1), kl01)
    torch.testing.assert_close(pair_divergence(mu0, lv0, mu1, lv1, "kl"), kl01)
    torch.testing.assert_close(pair_divergence(mu0, lv0, mu1, lv1, "symmetric_kl"), 0.5 * (kl01 + kl10))
    torch.testing.assert_close(pair_divergence(mu0, lv0, mu1, lv1, "mean_distance"), (mu0 - mu1).abs())
    with pytest.raises(ValueError, match="unknown divergence"):
        pair_divergence(mu0, lv0, mu1, lv1, "js")


def test_adaptive_threshold_on_constructed_posteriors():
    # per pair: divergences 0, 0.1, 0.2 (unchanged) and 3, 4 (changed): threshold 2.0 at ratio 0.5
    delta = torch.tensor([[0.0, 0.1, 3.0, 0.2, 4.0], [4.0, 3.0, 0.2, 0.1, 0.0]])
    expected = torch.tensor([[True, True, False, True, False], [False, False, True, True, True]])
    assert torch.equal(adaptive_shared_mask(delta), expected)
    # the threshold moves with the ratio: 0 -> nothing below the minimum, 1 -> all but the maximum
    assert not adaptive_shared_mask(delta, 0.0).any()
    assert torch.equal(adaptive_shared_mask(delta, 1.0), delta < delta.max(dim=1, keepdim=True).values)
    assert torch.equal(adaptive_shared_mask(delta, 0.7), delta < 0.7 * 4.0)  # min is 0 here
    # an image with itself: all divergences equal, nothing shared
    assert not adaptive_shared_mask(torch.zeros(3, 4)).any()
    # the rule on posteriors: means that moved in dims 1 and 3 only
    mu0 = torch.zeros(2, 4)
    mu1 = mu0.clone()
    mu1[:, 1], mu1[:, 3] = 2.0, -1.5
    logvar = torch.zeros(2, 4)
    for mode in ("kl", "symmetric_kl", "mean_distance"):
        shared = adaptive_shared_mask(pair_divergence(mu0, logvar, mu1, logvar, mode))
        assert torch.equal(shared, torch.tensor([[True, False, True, False]] * 2)), mode


def test_top_k_rule_takes_the_k_largest_as_changed():
    delta = torch.tensor([[0.5, 9.0, 0.1, 3.0], [1.0, 1.0, 1.0, 1.0], [4.0, 3.0, 2.0, 1.0]])
    k = torch.tensor([1, 2, 3])
    expected = torch.tensor([[True, False, True, True], [False, False, True, True], [False, False, False, True]])
    assert torch.equal(top_k_shared_mask(delta, k), expected)  # ties: the lower dims go first
    assert top_k_shared_mask(delta, torch.zeros(3, dtype=torch.int64)).all()


# ----------------------------------------------------------------------------- the sampler
@pytest.mark.parametrize("k", [1, 2, 3])
def test_k_changed_pairs_differ_in_exactly_k_factors(k):
    ds = grid()
    batch = KChangedPairSampler(ds, k).sample(20_000, np.random.default_rng(0))
    diff = ds.factors_of(batch.input) != ds.factors_of(batch.target)  # (B, K)
    assert (diff.sum(axis=1) == k).all()
    assert np.array_equal(diff, batch.changed) and (batch.k() == k).all()
    assert np.array_equal(batch.shared_per_pair(), ~diff) and not batch.shared.any()
    # the changed set is uniform: each factor changes in k/K of the pairs
    np.testing.assert_allclose(diff.mean(axis=0), k / 4, atol=0.015)
    # a changed factor takes each of its other values equally often (scale: 3 others)
    scale = batch.changed[:, 1]
    new = ds.factors_of(batch.target)[scale, 1] - ds.factors_of(batch.input)[scale, 1]
    np.testing.assert_allclose(np.bincount(new % 4, minlength=4)[1:] / scale.sum(), 1 / 3, atol=0.03)


def test_random_k_is_uniform_in_1_to_K_minus_1_and_draws_repeat():
    ds = grid()
    sampler = KChangedPairSampler(ds, "random")
    batch = sampler.sample(30_000, np.random.default_rng(1))
    k = batch.k()
    counts = np.bincount(k, minlength=4)
    assert counts[0] == 0 and set(np.unique(k)) == {1, 2, 3}
    np.testing.assert_allclose(counts[1:] / len(k), 1 / 3, atol=0.015)
    diff = ds.factors_of(batch.input) != ds.factors_of(batch.target)
    assert np.array_equal(diff.sum(axis=1), k)
    again = sampler.sample(30_000, np.random.default_rng(1))
    assert np.array_equal(again.target, batch.target) and np.array_equal(again.changed, batch.changed)


def test_factors_limit_what_changes_and_noise_replaces_targets():
    ds = grid()
    batch = KChangedPairSampler(ds, 1, factors=["x", "y"], noise=0.25).sample(8000, np.random.default_rng(2))
    assert batch.shared.tolist() == [True, True, False, False]
    clean = ~batch.noisy
    diff = ds.factors_of(batch.input) != ds.factors_of(batch.target)
    assert not diff[clean][:, :2].any() and (diff[clean].sum(axis=1) == 1).all()
    assert abs(batch.noisy.mean() - 0.25) < 0.02
    assert (batch.changed.sum(axis=1) == 1).all()  # a noisy pair keeps its intended change (a wrong label)


def test_disentanglement_lib_draw_changes_one_or_k_factors_possibly_to_the_same_value():
    ds = grid()
    batch = KChangedPairSampler(ds, 3, draw="disentanglement_lib").sample(20_000, np.random.default_rng(3))
    k = batch.k()
    assert set(np.unique(k)) == {1, 3} and abs((k == 1).mean() - 0.5) < 0.02
    diff = ds.factors_of(batch.input) != ds.factors_of(batch.target)
    assert not (diff & ~batch.changed).any()  # only resampled factors differ ...
    kept = (~diff & batch.changed)[:, 1].sum() / batch.changed[:, 1].sum()  # ... and one may keep its value
    assert abs(kept - 1 / 4) < 0.03  # scale: 4 values, a uniform redraw keeps the old one 1 time in 4


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"k": 4}, r"pairs.k=4 but 4 factors can change \(shape, scale, x, y\), so k must lie in 1..3"),
        ({"k": 0}, "pairs.k=0"),
        ({"factors": ["sise"]}, "pairs.factors names 'sise'.*did you mean 'size'|pairs.factors names 'sise'"),
        ({"factors": ["x"]}, "needs at least 2 factors that can change"),
        ({"draw": "lib"}, "pairs.draw: 'lib' is not one of"),
    ],
)
def test_sampler_refusals_are_one_line(kwargs, match):
    with pytest.raises(PartitionError, match=match) as exc:
        KChangedPairSampler(grid(), **kwargs)
    assert "\n" not in str(exc.value)


def test_a_labelled_dataset_is_refused_for_k_changed_pairs():
    ds = build_dataset(from_dict(Config, {"data": {"name": "ellipses", "size": 300}}).data)
    with pytest.raises(PartitionError, match="needs a full factor grid.*'ellipses' is labelled items"):
        KChangedPairSampler(ds, 1)


# ----------------------------------------------------------------------------- the config section
def test_pairs_section_round_trips_and_is_absent_when_default(tmp_path):
    plain = tiny_config(gated=False)
    assert "pairs" not in to_dict(plain)  # files and run ids of configs without it are unchanged
    cfg = run_config("ada_gvae", **{"pairs.k": "random", "pairs.tell_k": True})
    data = to_dict(cfg)
    assert list(data) == ["data", "model", "gating", "pairs", "train"]
    assert data["pairs"]["k"] == "random" and from_dict(Config, data) == cfg
    save_config(cfg, tmp_path / "c.yaml")
    from gatedvae.config import apply_overrides, load_config

    assert load_config(tmp_path / "c.yaml") == cfg
    assert apply_overrides(plain, ["pairs.kind=k_changed", "pairs.k=3"]).pairs.k == 3
    assert apply_overrides(plain, ["pairs.kind=k_changed", "pairs.k=random"]).pairs.k == "random"


@pytest.mark.parametrize(
    "dotted, match",
    [
        ({"pairs.kind": "k_change"}, "pairs.kind: 'k_change' is not one of 'none', 'k_changed', 'partitions'"),
        ({"pairs.kind": "k_changed", "pairs.k": 0}, "pairs.k: the number of changed factors must be at least 1"),
        ({"pairs.kind": "k_changed", "pairs.k": "some"}, "pairs.k: expected int | 'random'"),
        ({"pairs.tell_k": True}, "pairs.tell_k applies to pairs.kind=k_changed but pairs.kind is 'none'"),
        ({"pairs.kind": "partitions", "pairs.noise": 0.1}, "pairs.noise applies to pairs.kind=k_changed.*gating"),
        ({"pairs.kind": "k_changed", "pairs.noise": 1.5}, r"pairs.noise: must lie in \[0, 1\]"),
        ({"pairs.kind": "k_changed", "pairs.factors": ["x", "x"]}, r"pairs.factors: \['x'\] named twice"),
        ({"pairs.kind": "partitions"}, "pairs.kind=partitions draws from gating.partitions, which is empty"),
        ({"pairs.kid": "k_changed"}, "unknown config key 'pairs.kid'; did you mean 'kind'"),
    ],
)
def test_bad_pairs_sections_fail_in_one_line(dotted, match):
    with pytest.raises(ConfigError, match=match) as exc:
        tiny_config(dotted, gated=False)
    assert "\n" not in str(exc.value)


def test_pairs_with_gating_enabled_is_refused():
    with pytest.raises(ConfigError, match="pairs.kind=k_changed draws the pairs of an un-gated run") as exc:
        tiny_config({"pairs.kind": "k_changed"})
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize(
    "model, dotted, match",
    [
        ("gvae", {"gating.partitions": []}, "model gvae averages the latent dims of the factors a pair shares"),
        ("beta_vae", {"pairs.tell_k": True}, "pairs.tell_k hands each pair's k to the model, but beta_vae"),
        ("ml_vae", {"pairs.tell_k": True}, "but ml_vae does not read it"),
        ("infogan", {"model.latent_dim": 4}, "model infogan is a GAN: it reconstructs no pair"),
    ],
)
def test_what_a_model_cannot_do_with_pairs_is_refused_before_anything_is_built(model, dotted, match):
    with pytest.raises(ConfigError, match=match) as exc:
        validate(run_config(model, **dotted))
    assert "\n" not in str(exc.value)


def test_clamping_a_pair_model_is_refused_and_no_pairs_warns():
    cfg = tiny_config({"model.name": "ada_gvae", "gating.mode": "clamp"})
    with pytest.raises(ConfigError, match="encodes both images of a pair, and a DC-IGN clamp batch is not pairs"):
        validate(cfg)
    with pytest.warns(RuntimeWarning, match="ada_gvae is trained without pairs .* trains as a beta-VAE"):
        validate(tiny_config({"model.name": "ada_gvae"}, gated=False))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        validate(run_config("ada_gvae"))  # with pairs: no warning


def test_cli_train_errors_are_one_line_exit_2(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    save_config(tiny_config({"model.name": "ada_gvae", "pairs.kind": "k_changed"}, gated=False), path)
    assert main(["train", str(path), "--run-dir", str(tmp_path / "run"), "--quiet"]) == 2  # ellipses: no grid
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: pairs.kind=k_changed needs a full factor grid") and "\n" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert main(["data", "preview", "ellipses", "size=300", "--pairs", "1,x", "--quiet"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: --pairs '1,x': each value is a number")


def test_a_partition_that_names_a_weak_label_cannot_be_a_group_of_k_changed_pairs():
    cfg = run_config("gvae", **{"gating.partitions": [{"name": "p", "size": 4, "factors": ["pose"]}]})
    with pytest.raises(GatedVAEError, match="partition 'p' names 'pose', which is not a factor of the dataset"):
        prepare(cfg, dataset=grid())


# ----------------------------------------------------------------------------- what the model is told
def test_batcher_hands_k_and_shared_dims_only_to_the_models_that_read_them():
    ds = grid()
    rng = np.random.default_rng(0)
    ada = Batcher(prepare(run_config("ada_gvae", **{"pairs.tell_k": True, "pairs.k": "random"}), dataset=ds))
    batch = ada.draw(0, rng)
    assert batch.shared_dims is None and batch.k_changed.dtype == torch.int64 and batch.k_changed.shape == (16,)
    diff = (batch.x != batch.target).flatten(1).any(dim=1)  # the grid's images encode their index
    assert diff.all() and set(batch.k_changed.tolist()) <= {1, 2, 3}
    assert set(batch.weak_labels()) == {"k_changed"}
    plain = Batcher(prepare(run_config("beta_vae"), dataset=ds)).draw(0, rng)
    assert plain.weak_labels() == {} and not torch.equal(plain.x, plain.target)

    gvae = Batcher(prepare(run_config("gvae", **{"pairs.k": 1}), dataset=ds))
    state = rng.bit_generator.state
    batch = gvae.draw(0, rng)
    rng.bit_generator.state = state
    pairs = gvae.prep.pair_sampler.sample(16, rng)  # the same draws
    changed = pairs.changed  # (16, 4): shape, scale, x, y
    expected = np.stack(
        [~changed[:, 0], ~changed[:, 1], ~(changed[:, 2] | changed[:, 3]), ~(changed[:, 2] | changed[:, 3])], axis=1
    )  # dims: shape | scale | position (2)
    assert torch.equal(batch.shared_dims, torch.from_numpy(expected))
    assert batch.k_changed is None

    part = Batcher(prepare(run_config("ml_vae", **{"pairs.kind": "partitions"}), dataset=ds))
    for step in range(3):
        b = part.draw(step, rng)
        assert b.active == step and b.gate_mask is None
        assert torch.equal(b.shared_dims, part.masks[step].expand(16, -1))


def test_held_out_images_are_redrawn_and_the_changes_follow_the_pairs():
    ds = grid()
    batcher = Batcher(prepare(run_config("ada_gvae", **{"data.holdout": 0.3, "pairs.k": "random"}), dataset=ds))
    sampler = batcher.prep.pair_sampler
    rng = np.random.default_rng(4)
    pairs = batcher._training_only(sampler.sample(4000, rng), sampler, rng)
    assert not (batcher.heldout[pairs.input] | batcher.heldout[pairs.target]).any()
    diff = ds.factors_of(pairs.input) != ds.factors_of(pairs.target)
    assert np.array_equal(diff, pairs.changed)  # the redrawn pairs brought their own changes


def test_a_gated_group_model_shares_the_active_partition():
    cfg = tiny_config({"model.name": "gvae", "gating.partitions": LAYOUT}, gated=True)
    batcher = Batcher(prepare(cfg, dataset=grid()))
    b = batcher.draw(2, np.random.default_rng(0))
    assert torch.equal(b.shared_dims[0], b.gate_mask) and b.gate_mask.tolist() == [False, False, True, True]


@pytest.mark.parametrize("name", PAIR_MODELS)
def test_told_shared_dims_change_the_loss_and_identity_pairs_are_a_vae(name):
    model = build_model(run_config(name).model, (1, 8, 8), 100, seed=0)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(6, 1, 8, 8, generator=g) > 0.5).float()
    y = (torch.rand(6, 1, 8, 8, generator=g) > 0.5).float()
    out = model.loss(x, x, 0, torch.Generator().manual_seed(1))
    assert out.terms["shared"] == 0  # an image with itself: nothing shared, by either rule
    if name.startswith("ada"):
        told = model.loss(x, y, 0, torch.Generator().manual_seed(1), k_changed=torch.full((6,), 3))
        assert told.terms["shared"] == model.latent_dim - 3
    else:
        dims = torch.tensor([True, False, True, True])
        told = model.loss(x, y, 0, torch.Generator().manual_seed(1), shared_dims=dims.expand(6, -1))
        assert told.terms["shared"] == 3
        alone = model.loss(x, y, 0, torch.Generator().manual_seed(1))
        assert alone.terms["shared"] == 0 and not torch.equal(alone.total, told.total)


# ----------------------------------------------------------------------------- training
def test_ada_gvae_resumes_bitwise(tmp_path):
    ds = grid()
    cfg = run_config("ada_gvae", **{"pairs.k": "random", "pairs.tell_k": True, "train.steps": 30})
    train(cfg, tmp_path / "full", quiet=True, tensorboard=False, dataset=ds)
    run = tmp_path / "stopped"
    assert train(cfg, run, quiet=True, tensorboard=False, dataset=ds, stop_after=13)["status"] == "stopped"
    train(None, run, resume=True, quiet=True, tensorboard=False, dataset=ds)
    full = load_file(str(latest_checkpoint(tmp_path / "full" / "checkpoints")[1]))
    resumed = load_file(str(latest_checkpoint(run / "checkpoints")[1]))
    assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full)
    assert (run / "metrics.jsonl").read_text() == (tmp_path / "full" / "metrics.jsonl").read_text()
    assert '"shared"' in (run / "metrics.jsonl").read_text()


def test_pair_models_train_as_a_loop_ensemble_and_the_stacked_step_refuses_them(tmp_path):
    ds = grid()
    configs = [run_config("gvae", **{"train.seed": 1}), run_config("gvae", **{"train.seed": 2, "pairs.k": 2})]
    dirs = [tmp_path / "m0", tmp_path / "m1"]
    with pytest.raises(ConfigError, match="gvae encodes both images of a pair and defines its own loss") as exc:
        choose_strategy("stacked", configs, torch.device("cpu"))
    assert "\n" not in str(exc.value)
    assert choose_strategy("auto", configs, torch.device("cuda")) == "loop"
    train_ensemble(configs, dirs, quiet=True, tensorboard=False, strategy="loop", dataset=ds)
    train(configs[1], tmp_path / "solo", quiet=True, tensorboard=False, dataset=ds)
    a = load_file(str(latest_checkpoint(dirs[1] / "checkpoints")[1]))
    b = load_file(str(latest_checkpoint(tmp_path / "solo" / "checkpoints")[1]))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("model, dotted", [("ada_gvae", {"pairs.tell_k": True}), ("gvae", {})])
def test_no_host_sync_in_a_pair_models_step(model, dotted, tmp_path, counter, cuda_path):  # noqa: F811
    train_kw = {"steps": 6, "batch_size": 8, "log_every": 6, "checkpoint_every": 6, "threads": 1}
    cfg = run_config(model, **dotted, **{f"train.{k}": v for k, v in train_kw.items()})
    per_step = run_and_count(counter, cfg, tmp_path, dataset=grid())
    assert_quiet(counter, per_step, cfg)


def toy_dataset() -> FactorDataset:
    """Three factors of 4 values, each a bar's position in its own band of an 8x8 binary image."""
    space = FactorSpace(["a", "b", "c"], (4, 4, 4))
    f = space.to_factors(np.arange(len(space)))  # (64, 3)
    images = np.zeros((len(space), 8, 8), dtype=np.uint8)
    for k in range(3):
        for i in range(len(space)):
            images[i, 3 * k : 3 * k + 2, 2 * f[i, k] : 2 * f[i, k] + 2] = 1
    return FactorDataset("bars", PackedBinaryStore.from_images(images), space)


def _changed_dims(model, ds, pairs) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        post0, post1 = model.encode(ds.images(pairs.input)), model.encode(ds.images(pairs.target))
        return ~model.shared_mask(post0, post1, None, None).numpy()  # (B, M)


@pytest.mark.parametrize("name", ["ada_gvae", "ada_ml_vae"])
def test_trained_on_one_changed_factor_the_inferred_shared_set_is_the_unchanged_factors(name, tmp_path):
    ds = toy_dataset()
    dotted = {"model.name": name, "model.latent_dim": 3, "model.hidden": 32, "pairs.kind": "k_changed"}
    train_kw = {"steps": 400, "batch_size": 32, "lr": 3e-3, "log_every": 100, "checkpoint_every": 400, "threads": 1}
    cfg = tiny_config({**dotted, **{f"train.{k}": v for k, v in train_kw.items()}}, gated=False)
    pairs = KChangedPairSampler(ds, 1).sample(2000, np.random.default_rng(5))

    def accuracy(model) -> float:
        changed = _changed_dims(model, ds, pairs)  # (B, 3)
        # each factor's dim: the one most often judged changed when that factor changed
        dim_of = [np.argmax(changed[pairs.changed[:, k]].mean(axis=0)) for k in range(3)]
        if sorted(dim_of) != [0, 1, 2]:
            return 0.0
        expected = pairs.changed[:, np.argsort(dim_of)]  # (B, 3): in latent order
        return float((changed == expected).all(axis=1).mean())

    untrained = build_model(cfg.model, ds.image_shape, len(ds), seed=0)
    assert accuracy(untrained) < 0.8
    train(cfg, tmp_path / "run", quiet=True, tensorboard=False, dataset=ds)
    from gatedvae.run import load_trained

    prep, _, _ = load_trained(tmp_path / "run", dataset=ds, device="cpu")
    assert accuracy(prep.model) >= 0.95


def test_pair_models_are_registered_with_their_hyperparameters():
    for name in PAIR_MODELS:
        assert MODELS[name].cls.encodes_pairs and MODELS[name].defaults["beta"] == 1.0
    assert MODELS["ada_gvae"].defaults == {"beta": 1.0, "divergence": "kl", "threshold_ratio": 0.5}
    with pytest.raises(ConfigError, match="model.threshold_ratio: must lie in"):
        validate(run_config("ada_gvae", **{"model.threshold_ratio": 1.5}))
    with pytest.raises(ConfigError, match="model.divergence: 'js' is not one of"):
        validate(run_config("ada_gvae", **{"model.divergence": "js"}))


# ----------------------------------------------------------------------------- the preview
def test_preview_writes_the_pairs_figure(tmp_path, capsys, monkeypatch):
    import gatedvae.data as data_module

    monkeypatch.setattr(data_module, "build_dataset", lambda cfg, progress=False: grid())
    png = tmp_path / "p.png"
    assert main(["data", "preview", "dsprites", "--out", str(png), "--pairs", "1,random", "--quiet"]) == 0
    assert (tmp_path / "p_pairs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "p_pairs.png" in capsys.readouterr().out
