"""Smoke test of ``benchmarks/bench_train.py``: its functions run in ``--quick`` mode and
return positive numbers with the expected keys. No timing assertions: speed is reported as
ratios by the benchmark itself, not checked in tests (DESIGN.md, "Fast")."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gatedvae.config import DataConfig
from gatedvae.data import build_dataset

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_train.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_train", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_train"] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_train", None)


@pytest.fixture(scope="module")
def dsprites():
    return build_dataset(DataConfig(name="dsprites"))


def test_mlp_flops_closed_form(bench):
    # batch 128, 4096 pixels, hidden 1200, M = 8 (head 16): forward 2 B sum(in out); the step
    # is 3x that minus the first layer's input gradient.
    fwd = 2 * 128 * (4096 * 1200 + 1200 * 1200 + 1200 * 16 + 8 * 1200 + 1200 * 1200 + 1200 * 4096)
    first = 2 * 128 * 4096 * 1200
    assert bench.step_flops(bench.mlp_gemms(128, 4096, 1200, 8, 16)) == 3 * fwd - first == 8_525_414_400


@pytest.mark.parametrize("net", ["mlp", "conv64"])
def test_analytic_flops_equal_flop_counter(bench, dsprites, net):
    spec = bench.Spec(f"{net}-test", "beta_vae", net, 32, gated=True)
    runner, gemms = bench.build_runner(spec, 4, dsprites)
    assert bench.counted_flops(runner) == bench.step_flops(gemms) > 0


@pytest.mark.parametrize("gated", [False, True])
def test_draw_timed_reproduces_batcher(bench, dsprites, gated):
    runner, _ = bench.build_runner(bench.Spec("mlp-test", "beta_vae", "mlp", 16, gated), 8, dsprites)
    times = dict.fromkeys(bench.PHASES, 0.0)
    for step in range(5):
        a = runner.batcher.draw(step, np.random.default_rng(step), False)
        b = bench.draw_timed(runner.batcher, step, np.random.default_rng(step), times)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert (a[3] is None) == (b[3] is None) and (a[3] is None or torch.equal(a[3], b[3]))
        assert a[5] == b[5]
    assert times["sample"] > 0 and times["gather"] > 0


def test_quick_run(bench, tmp_path):
    threads = torch.get_num_threads()
    out = tmp_path / "bench.json"
    res = bench.run(["--quick", "--models", "factor_vae", "--json", str(out)], log=lambda _: None)
    assert torch.get_num_threads() == threads  # the quick mode's one thread is undone
    assert set(res) >= {"machine", "settings", "peak", "shapes", "rows", "variants", "split", "top_ops"}
    assert len(res["machine"]["loadavg_start"]) == 3 and res["machine"]["threads"] >= 1
    assert res["peak"]["gflops"] > 0 and res["shapes"]
    assert all(s["gflops"] > 0 for s in res["shapes"])
    keys = {"images_per_s", "steps_per_s", "gflops", "flops_per_step", "flops_counted", "roofline_gflops",
            "fraction_of_shape_roofline", "fraction_of_peak"}
    assert {(r["net"], r["model"], r["gated"]) for r in res["rows"]} >= {
        ("mlp", "beta_vae", False), ("mlp", "beta_vae", True), ("conv64", "beta_vae", False),
        ("conv64", "beta_vae", True), ("mlp", "factor_vae", True),
    }
    for row in res["rows"]:
        assert keys <= set(row) and all(row[k] > 0 for k in keys), row
    fv = next(r for r in res["rows"] if r["model"] == "factor_vae")
    assert fv["flops_counted"] > fv["flops_per_step"]  # the discriminator's matmuls
    assert {v["variant"] for v in res["variants"][1:]} >= {"adam fused=False, adam foreach=False", "adam fused=False, adam foreach=True"}
    assert all(v["steps_per_s"] > 0 for v in res["variants"])
    split = res["split"]
    assert set(split["median_seconds"]) == set(bench.PHASES) and split["calls"] >= 1
    assert sum(split["share"].values()) == pytest.approx(1.0)
    assert res["top_ops"]["step_ms"] > 0 and all(o["self_ms_per_step"] >= 0 for o in res["top_ops"]["ops"])
    assert json.loads(out.read_text())["rows"][0]["images_per_s"] == pytest.approx(res["rows"][0]["images_per_s"])
