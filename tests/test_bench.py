"""``gatedvae bench`` (``gatedvae.bench``): FLOP counting, the DataLoader baseline's pairs, the
sparse first layer, and a smoke run of every section at tiny sizes. No timing assertions:
speed is reported as ratios by the benchmark itself, not checked in tests (DESIGN.md, "Fast")."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gatedvae import bench
from gatedvae.cli import main
from gatedvae.config import DataConfig
from gatedvae.data import build_dataset
from gatedvae.nets.mlp import BinaryInputLinear


@pytest.fixture(scope="module")
def dsprites():
    return build_dataset(DataConfig(name="dsprites", stride={"posX": 4, "posY": 4}))


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One quick run of the default sections (the subprocess ones included), training rows at fp32
    and bf16 (``gatedvae bench --quick --device cpu --precision fp32,bf16``)."""
    threads = torch.get_num_threads()
    res = bench.run_bench(bench.BenchOptions.quick_mode(precisions=("fp32", "bf16")), log=lambda _: None)
    assert torch.get_num_threads() == threads  # the quick mode's one thread is undone
    return res


def test_mlp_flops_closed_form():
    # batch 128, 4096 pixels, hidden 1200, M = 8 (head 16): forward 2 B sum(in out); the step
    # is 3x that minus the first layer's input gradient.
    fwd = 2 * 128 * (4096 * 1200 + 1200 * 1200 + 1200 * 16 + 8 * 1200 + 1200 * 1200 + 1200 * 4096)
    first = 2 * 128 * 4096 * 1200
    assert bench.step_flops(bench.mlp_gemms(128, 4096, 1200, 8, 16)) == 3 * fwd - first == 8_525_414_400


@pytest.mark.parametrize("net", ["mlp", "conv64"])
def test_analytic_flops_equal_flop_counter(dsprites, net):
    runner, gemms = bench.build_runner(bench.Spec(f"{net}-test", "beta_vae", net, 32, gated=True), 4, dsprites)
    analytic = bench.network_gemms(runner.config, dsprites.image_shape)
    assert bench.counted_flops(runner) == bench.step_flops(analytic) == bench.step_flops(gemms) > 0
    shapes = sorted((g.rows, g.inner, g.cols, g.input_grad, g.weight_grad) for g in analytic)
    assert sorted((g.rows, g.inner, g.cols, g.input_grad, g.weight_grad) for g in gemms) == shapes
    if net == "mlp":
        assert runner.first_layer().sparse_binary  # counted_flops restores the sparse path


def _registered():
    from gatedvae.models import MODELS

    return sorted(MODELS)


@pytest.mark.parametrize("model", _registered())
def test_traced_flops_equal_flop_counter_for_every_model(dsprites, model):
    """The traced list counts the auxiliary networks too (FactorVAE's discriminator, frozen
    inside the VAE loss: no weight gradient there; InfoGAN's generator and discriminator)."""
    runner, gemms = bench.build_runner(bench.Spec("mlp-test", model, "mlp", 32), 4, dsprites)
    counted = bench.counted_flops(runner)
    if model == "infowgan_gp":  # the gradient penalty's double backward: the counter cannot follow it
        assert counted is None
        return
    traced = bench.step_flops(gemms)
    # the counter also sees products outside the layers (DIP-VAE's covariance of the means, the
    # full covariance's scale_tril @ eps): a few per mille at most here
    assert traced > 0 and 0 <= counted - traced < 0.005 * counted
    vae = bench.step_flops(bench.network_gemms(runner.config, dsprites.image_shape, runner.prep.cond_dim))
    if model == "factor_vae":
        frozen = [g for g in gemms if g.layer.startswith("discriminator") and not g.weight_grad]
        assert frozen and all(g.input_grad for g in frozen) and traced > vae
    elif model != "infogan":
        assert traced == vae  # the VAE networks alone


def test_per_item_pairs_share_the_partition_factors(dsprites):
    ds = bench.PerItemPairs(dsprites, ("scale",), np.random.default_rng(0))
    k = dsprites.factor_space.position("scale")
    idx = np.random.default_rng(1).integers(0, len(dsprites), 40)
    packed = dsprites.store.packed.numpy()  # (N, 512)
    for i in idx:
        x, target = ds[int(i)]
        assert torch.equal(x, dsprites.images([int(i)])[0])
        # the target is an image of the dataset (up to duplicates) whose scale equals the input's
        matches = np.flatnonzero((packed == np.packbits(target.numpy().astype(np.uint8).reshape(-1))).all(1))
        assert matches.size and (dsprites.factors_of(matches)[:, k] == dsprites.factors_of([int(i)])[0, k]).all()
    plain = bench.PerItemPairs(dsprites, None, np.random.default_rng(0))
    assert torch.equal(plain[5], dsprites.images([5])[0])


@pytest.mark.parametrize("gated", [False, True])
def test_loader_runner_steps(dsprites, gated):
    runner, _ = bench.build_runner(bench.Spec("mlp-test", "beta_vae", "mlp", 16, gated, loader=0), 8, dsprites)
    for _ in range(3):
        runner()
    assert runner.step_no == 3 and runner.sums.count == 3 and runner.sums.sums["total"].isfinite()


def test_binary_input_linear_matches_linear():
    torch.manual_seed(3)
    ref = torch.nn.Linear(64, 12)
    torch.manual_seed(3)
    layer = BinaryInputLinear(64, 12)
    assert torch.equal(layer.weight, ref.weight) and torch.equal(layer.bias, ref.bias)  # same initialisation
    assert layer.weight_t.is_contiguous() and [n for n, _ in layer.named_parameters()] == ["weight_t", "bias"]
    x = (torch.rand(10, 64, generator=torch.Generator().manual_seed(0)) < 0.1).float()
    x[4] = 0  # an empty image: an empty bag
    g = torch.randn(10, 12, generator=torch.Generator().manual_seed(1))
    for sparse in (True, False):
        layer.sparse_binary = sparse
        layer.zero_grad()
        ref.zero_grad()
        y, y_ref = layer(x), ref(x)
        y.backward(g)
        y_ref.backward(g)
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(layer.weight_t.grad.t(), ref.weight.grad, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(layer.bias.grad, ref.bias.grad)
        assert layer.weight_t.grad.is_contiguous()  # the fused Adam kernel needs no layout copy
    layer.sparse_binary = True
    gray = x * 0.5  # not binary: the dense path, exactly nn.Linear's product
    torch.testing.assert_close(layer(gray), ref(gray))
    dense = torch.ones(3, 64)  # binary but dense: the dense path
    torch.testing.assert_close(layer(dense), ref(dense))
    state = {k: v.contiguous() for k, v in layer.state_dict().items()}
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in ref.state_dict().items()}  # nn.Linear's
    other = BinaryInputLinear(64, 12)
    other.load_state_dict(state)
    assert torch.equal(other.weight, layer.weight) and other.weight_t.is_contiguous()
    ref.load_state_dict(layer.state_dict())  # and the other way
    assert torch.equal(ref.weight, layer.weight)
    with pytest.raises(RuntimeError, match="weight"):
        other.load_state_dict({"bias": state["bias"]})


def test_quick_run_sections(quick, tmp_path):
    res = quick
    assert set(res) >= {"machine", "options", "train", "data", "pairs", "metrics", "memory", "targets"}
    tr = res["train"]
    assert tr["peak"]["gflops"] > 0 and tr["shapes"] and all(s["gflops"] > 0 for s in tr["shapes"])
    keys = {
        "images_per_s",
        "steps_per_s",
        "gflops",
        "flops_per_step",
        "flops_counted",
        "roofline_gflops",
        "fraction_of_roofline",
        "fraction_of_peak",
        "linalg_ms",
    }
    assert {(r["net"], r["gated"], r["precision"]) for r in tr["rows"]} == {
        (net, gated, p) for net in ("mlp", "conv64") for gated in (False, True) for p in ("fp32", "bf16")
    }
    # each precision against its own measured peak: bf16 operands for the bf16 rows
    assert tr["device"] == "cpu" and tr["precisions"] == ["fp32", "bf16"]
    assert set(tr["peaks"]) == {"fp32", "bf16"} and tr["peaks"]["bf16"]["dtype"] == "bfloat16"
    assert all(pk["gflops"] > 0 for pk in tr["peaks"].values()) and tr["peak"] == {
        "precision": "fp32",
        **tr["peaks"]["fp32"],
    }
    raw = tr["raw_seconds_per_call"]
    for row in tr["rows"]:
        peak = raw["peak" if row["precision"] == "fp32" else "peak bf16"]
        want = np.median(
            [(row["flops_per_step"] / a) / (2 * 256**3 / b) for a, b in zip(raw[row["key"]], peak, strict=True)]
        )
        assert row["fraction_of_peak"] == pytest.approx(want)
        assert row["roofline"].endswith(" bf16") == (row["precision"] == "bf16")
    for row in tr["rows"]:
        assert keys <= set(row) and all(row[k] > 0 for k in keys), row
        assert row["non_matmul_fraction"] < 1
    assert {r["ours_key"] for r in tr["loaders"]} >= {tr["paper_key"], tr["small_key"]}
    assert all(r["speedup_of_ours"] > 0 for r in tr["loaders"])
    variants = {r["variant"] for r in tr["variants"]}
    assert {"adam fused=False, adam foreach=True", "dense first layer", "channels-first (NCHW)"} <= variants
    assert all(r["relative_step_time"] > 0 for r in tr["variants"])
    for sp in tr["split"]:
        assert set(sp["median_ms"]) == set(bench.PHASES) and sum(sp["share"].values()) == pytest.approx(1.0)
    for pr in tr["profiles"]:
        assert pr["step_ms"] > 0 and pr["categories_ms"]["matmul"] > 0
    assert not tr["errors"]
    da = res["data"]
    assert (
        da["images"] == 46_080 and da["store_bytes"] == 46_080 * 512 and da["peak_rss_mb"] >= da["baseline_rss_mb"] > 0
    )
    assert {r["sampler"] for r in res["pairs"]["rows"]} >= {"identity", "exact (posX, posY)"}
    assert all(r["image_pairs_per_s"] > 0 for r in res["pairs"]["rows"])
    me = res["metrics"]
    assert set(me["presets"]) == {"default", "fast"}
    assert all(set(p["metrics"]) == {"mig", "dci_lasso"} and p["total_seconds"] > 0 for p in me["presets"].values())
    # the same model trained at each precision, scored under the first preset
    assert me["scores_preset"] == "default" and list(me["by_precision"]) == ["fp32", "bf16"]
    for e in me["by_precision"].values():
        assert e["train_seconds"] > 0 and "mig.mig" in e["headline"], e
        assert all(np.isfinite(v) for v in e["headline"].values())
    assert me["by_precision"]["fp32"]["headline"]["mig.mig"] == me["presets"]["default"]["scores"]["mig"]["mig"]
    assert res["memory"]["peak_rss_mb"] > 0 and res["memory"]["steps"] == 4
    names = [t["target"] for t in res["targets"]]
    assert any("DataLoader" in n for n in names) and any("metric suite, fast" in n for n in names)
    assert all(isinstance(t["met"], bool) for t in res["targets"])
    # the text and Markdown reports render every section
    text, md = bench.format_report(res), bench.format_markdown(res)
    for needle in ("roofline", "DataLoader", "pairs", "metrics", "memory"):
        assert needle in text
    assert md.count("| target | measured |") == 1 and "| mlp-64 | beta_vae | yes | bf16 |" in md
    assert "scores by training precision (default preset" in text and "| score | fp32 | bf16 |" in md
    assert "memory-mapped cache, warm" in text and "| store | images/s | vs in memory |" in md
    assert "roofline: bf16 matmul 256^3 peak" in text and "Roofline: fp32 matmul 256^3" in md


def test_cli_renders_saved_json(quick, tmp_path, capsys):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(quick, default=float))
    assert main(["bench", "--from", str(path), "--markdown"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("> gatedvae bench") and "| net | model | gated |" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "--only", "trian"], "unknown bench section(s) trian"),
        (["bench", "--from", "/nonexistent/bench.json"], "no such file"),
        (["bench", "--quick", "--only", "pairs", "--out", "/nonexistent/dir/b.json"], "does not exist"),
        (["bench", "--seconds", "0"], "--seconds must be positive"),
        (["bench", "--precision", "tf32"], "--precision tf32 needs --device cuda (TF32 is an NVIDIA tensor-core mode)"),
        (["bench", "--precision", "fp32,fp8"], "unknown precision 'fp8'; choose from fp32, tf32, bf16, fp16"),
        (["bench", "--device", "meta"], "--device meta: only cpu and cuda are supported; use cpu, cuda or cuda:N"),
    ],
)
def test_cli_user_errors(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_cli_rejects_a_foreign_json(tmp_path, capsys):
    path = tmp_path / "other.json"
    path.write_text("[1, 2]")
    assert main(["bench", "--from", str(path)]) == 2
    assert "not a gatedvae bench result" in capsys.readouterr().err


def test_cli_quick_pairs_writes_json(tmp_path, capsys):
    out = tmp_path / "b.json"
    argv = ["bench", "--quick", "--only", "pairs", "--out", str(out), "--device", "cpu", "--precision", "fp32,bf16"]
    assert main(argv) == 0
    doc = json.loads(out.read_text())
    assert set(doc) >= {"machine", "pairs", "targets"} and "train" not in doc
    assert doc["options"]["device"] == "cpu" and doc["options"]["precisions"] == ["fp32", "bf16"]
    assert "pairs (" in capsys.readouterr().out


def test_a_missing_gpu_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU-only machine, also on a GPU one
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert main(["bench", "--device", "cuda", "--only", "pairs"]) == 2
    assert capsys.readouterr().err == "error: --device cuda but CUDA is not available here; use --device cpu\n"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the CUDA branch, forced
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert main(["bench", "--device", "cuda:1", "--only", "pairs"]) == 2
    assert (
        "--device cuda:1 but this machine has 1 CUDA device (cuda:0..cuda:0); choose one of them"
        in capsys.readouterr().err
    )


def test_device_timing_waits_for_the_device_rarely():
    """The CUDA timing, run on the CPU with a counting stand-in for torch.cuda.synchronize: the
    clock is read only after the device is synchronised, and synchronisations grow
    logarithmically with the calls (1, 2, 4, ... calls between them)."""
    from gatedvae.bench.timing import _timed

    calls, syncs = [], []
    per_call = _timed(lambda: calls.append(1), 0.05, lambda: syncs.append(len(calls)))
    assert per_call > 0 and len(calls) > 50
    assert syncs[0] == 0 and syncs[-1] == len(calls)  # before the clock starts, and at the last reading
    assert len(syncs) <= 2 + np.log2(len(calls)) and syncs[1:4] == [1, 3, 7]


def test_precision_flags_are_set_per_call_on_cuda():
    """Interleaved rounds alternate precisions: each CUDA item sets TF32 as its precision asks."""
    from gatedvae.bench.train_section import _at_precision

    seen = []

    def fn():
        seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))

    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        cuda = torch.device("cuda")  # no GPU needed: the flags are process-wide settings
        for precision in ("tf32", "fp32", "bf16", "tf32"):
            _at_precision(fn, precision, cuda)()
        assert seen == [(True, True), (False, False), (False, False), (True, True)]
        assert _at_precision(fn, "tf32", torch.device("cpu")) is fn  # the CPU has no TF32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.gpu
def test_quick_train_section_on_the_gpu():
    """``gatedvae bench --device cuda --quick --only train --precision fp32,tf32,bf16``."""
    o = bench.BenchOptions.quick_mode(sections=("train",), device="cuda", precisions=("fp32", "tf32", "bf16"))
    res = bench.run_bench(o, log=lambda _: None)
    tr = res["train"]
    assert tr["device"].startswith("cuda") and set(tr["peaks"]) == {"fp32", "tf32", "bf16"}
    assert tr["peak"]["square"] == 4096 and all(pk["gflops"] > 0 for pk in tr["peaks"].values())
    assert not tr["errors"] and {r["precision"] for r in tr["rows"]} == {"fp32", "tf32", "bf16"}
    assert all(r["images_per_s"] > 0 and 0 < r["fraction_of_peak"] for r in tr["rows"])
    assert res["machine"]["device_name"] and tr["profiles"][0]["device"].startswith("cuda")
    assert not any("dense first" in v["variant"] for v in tr["variants"])  # the CPU's sparse layer


@pytest.mark.slow
def test_quickstart_section():
    res = bench.run_bench(bench.BenchOptions.quick_mode(sections=("quickstart",)), log=lambda _: None)
    assert res["quickstart"]["seconds"] > 0 and res["quickstart"]["peak_rss_mb"] > 0
    assert any("quickstart" in t["target"] for t in res["targets"])


def test_strided_dsprites_equals_the_cut_full_grid():
    from gatedvae.data.dsprites import make_dsprites, make_dsprites_strided

    full = make_dsprites()
    for strides in ({"posX": 4, "posY": 4}, {"orientation": 8, "posY": 16}):
        _check_strided(make_dsprites_strided(strides), full.subset_grid(strides), strides)


def _check_strided(a, b, strides):
    assert torch.equal(a.store.packed, b.store.packed) and a.factor_space.sizes == b.factor_space.sizes
    assert (
        all(np.array_equal(x, y) for x, y in zip(a.factor_space.values, b.factor_space.values, strict=True))
        and a.is_grid
    )
    assert len(build_dataset(DataConfig(name="dsprites", stride=strides))) == len(a)


def test_quick_ensemble_section():
    """The ensemble section: one run, the loop and the stacked ensemble per width, each against K
    times one run's products; the rows render in both reports."""
    res = bench.run_bench(bench.BenchOptions.quick_mode(sections=("ensemble",)), log=lambda _: None)
    en = res["ensemble"]
    assert [(r["net"], r["strategy"], r["members"]) for r in en["rows"]] == [
        ("mlp-32", "one run", 1), ("mlp-32", "loop", 2), ("mlp-32", "stacked", 2),
        ("mlp-64", "one run", 1), ("mlp-64", "loop", 2), ("mlp-64", "stacked", 2),
    ]  # fmt: skip
    for r in en["rows"]:
        assert r["step_ms"] > 0 and r["fraction_of_roofline"] > 0
        assert r["images_per_s"] == pytest.approx(r["members"] * 16 / (r["step_ms"] / 1e3))
        assert r["projected_hours"] == pytest.approx(r["step_ms"] / 1e3 * 288_000 / 3600)
    assert en["rows"][0]["vs_one_run"] == 1.0 and not en["errors"]
    assert "ensembles on cpu" in bench.format_report(res) and "| mlp-64 | stacked | 2 |" in bench.format_markdown(res)
