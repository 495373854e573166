"""Evaluation: the sampling layer, metrics.json and figures of a trained run, the evaluate command,
and the array functions behind the figures (Hinton diagrams, diagnostics, sharpness)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import grid_dataset, labelled_dataset, tiny_config
from gatedvae.cli import main
from gatedvae.config import Config, DataConfig, ModelConfig, TrainConfig, save_config
from gatedvae.errors import ConfigError, DataError, GatedVAEError
from gatedvae.evaluation import (
    EVAL_METRICS,
    HEADLINE,
    CodeCache,
    ObservedFactors,
    assigned_importance_fraction,
    encode,
    evaluate_model,
    evaluate_run,
    format_headline,
    laplacian_sharpness,
    representation_fn,
    resolve_metrics,
    to_jsonable,
    udr_runs,
)
from gatedvae.metrics import METRICS, get_metric, registered
from gatedvae.train import prepare, train
from gatedvae.viz.diagnostics import (
    latent_groups,
    read_training_log,
    swap_codes,
    training_curves,
    traversal_order,
)
from gatedvae.viz.hinton import hinton_figure, hinton_squares, unit_spans

PNG = b"\x89PNG\r\n\x1a\n"


def small_config(gated: bool = True, steps: int = 40) -> Config:
    return tiny_config(gated=gated, train={"steps": steps, "checkpoint_every": 20, "device": "cpu"})


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("evaluate") / "run"
    train(small_config(), path, quiet=True, tensorboard=False)
    return path


@pytest.fixture(scope="module")
def doc(run) -> dict:
    return evaluate_run(run, preset="fast", seed=0, progress=False, device="cpu")


# --------------------------------------------------------------------------- metrics.json
def _numbers(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from _numbers(v)
    elif isinstance(node, list):
        for v in node:
            yield from _numbers(v)
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        yield node


def test_metrics_json_has_every_score_with_parameters(run, doc):
    on_disk = json.loads(
        (run / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}")
    )
    assert on_disk == doc
    assert doc["format"] == "gatedvae-metrics-1" and doc["checkpoint_step"] == 40
    assert doc["checkpoint"] == "step-000000040.safetensors"
    assert doc["seed"] == 0 and doc["preset"] == "fast" and doc["gated"] is True
    assert set(doc["results"]) == set(EVAL_METRICS) and doc["metrics"] == list(EVAL_METRICS)
    assert doc["dataset"]["sampling"] == "observed" and doc["dataset"]["factors"] == ["x", "y", "scale", "orientation"]
    for name, entry in doc["results"].items():
        assert {"scores", "params", "samples", "seconds"} <= set(entry), name
        assert entry["seconds"] >= 0 and entry["samples"], name
    assert doc["results"]["dci_lasso"]["params"]["alpha"] == 0.02
    assert doc["results"]["factor_vae"]["samples"]["n_train"] == 1000  # the fast preset
    assert doc["samples"]["codes"] == 400  # the whole (small) dataset
    for key in (
        "dci_lasso.disentanglement",
        "dci_random_forest.completeness",
        "mig.mig",
        "sap.sap",
        "factor_vae.eval_accuracy",
        "beta_vae.eval_accuracy",
        "modularity_explicitness.explicitness",
        "reconstruction.nll",
        "reconstruction.sharpness_data",
    ):
        assert isinstance(doc["headline"][key], float) and math.isfinite(doc["headline"][key]), key
    for name in (n for n in EVAL_METRICS if n in METRICS and get_metric(n).needs_factors):
        assert all(math.isfinite(x) for x in _numbers(doc["results"][name]["scores"])), name
    # every registered headline key of a gated run's metrics is in the headline (None where NaN)
    assert set(doc["headline"]) == {f"{m}.{k}" for m, keys in HEADLINE.items() for k in keys}
    post = doc["posterior"]
    assert len(post["kl_per_dim"]) == 4 and all(k >= 0 for k in post["kl_per_dim"])
    assert 0 <= post["n_active"] <= 4
    rec = doc["results"]["reconstruction"]["scores"]
    assert rec["nll"] > 0 and rec["sharpness_data"] > 0 and rec["sharpness_reconstruction"] >= 0
    assert rec["source"].startswith("held-out")  # ellipses: a fresh draw
    assert set(doc["timing"]["per_metric_seconds"]) == set(EVAL_METRICS)


def test_partition_scores(doc):
    names = [s.name for s in registered() if s.partition_units]
    assert names  # DCI's three variants
    for name in names:
        part = doc["results"][name]["scores"]["partition"]
        assert part["names"] == ["position", "scale", "orientation"]
        assert np.asarray(part["importance"]).shape == (3, 4)  # partitions x factors
        assert 0.0 <= part["disentanglement"] <= 1.0 and 0.0 <= part["completeness"] <= 1.0
        frac = part["assigned_fraction"]
        assert frac["factors"] == ["x", "y", "scale", "orientation"]
        assert frac["chance"] == [0.5, 0.5, 0.25, 0.25]
        values = [v for v in frac["per_factor"] if v is not None]
        assert values and all(0.0 <= v <= 1.0 for v in values)
        assert 0.0 <= frac["mean"] <= 1.0


def test_figures_exist_and_are_png(run, doc):
    names = {Path(p).name for p in doc["figures"]}
    expected = {
        "hinton_dci_lasso.png",
        "hinton_dci_lasso_partitions.png",
        "traversals.png",
        "reconstructions.png",
        "kl_per_dim.png",
        "training_curves.png",
        "swap_position.png",
        "swap_scale.png",
        "swap_orientation.png",
    }
    assert expected <= names
    for rel in doc["figures"]:
        path = run / rel
        assert path.is_file() and path.read_bytes()[:8] == PNG, rel
    assert not list((run / "figures").glob(".*tmp*"))  # atomic writes leave no temporaries


def test_headline_table(doc):
    text = format_headline(doc)
    assert "dci_lasso" in text and "mig" in text and "step 40" in text


# --------------------------------------------------------------------------- errors and the command
def _untrained(tmp_path: Path) -> Path:
    run = tmp_path / "untrained"
    run.mkdir()
    save_config(small_config(), run / "config.yaml")
    return run


def _foreign(tmp_path: Path) -> Path:
    d = tmp_path / "photos"
    d.mkdir()
    (d / "cat.txt").write_text("not a run")
    return d


@pytest.mark.parametrize(
    "case,expected",
    [
        ("missing", "does not exist"),
        ("foreign", "is not a gatedvae run directory"),
        ("untrained", "has no checkpoint yet; train it first"),
    ],
)
def test_evaluate_bad_run_dir_is_one_line_error(tmp_path, case, expected):
    path = {
        "missing": lambda: tmp_path / "nope",
        "foreign": lambda: _foreign(tmp_path),
        "untrained": lambda: _untrained(tmp_path),
    }[case]()
    with pytest.raises(GatedVAEError) as info:
        evaluate_run(path, preset="fast", progress=False)
    assert expected in str(info.value) and "\n" not in str(info.value)
    assert not (path / "metrics.json").exists()


@pytest.mark.parametrize("case", ["missing", "foreign", "untrained"])
def test_cli_bad_run_dir_exits_2_without_traceback(tmp_path, capsys, case):
    path = {
        "missing": lambda: tmp_path / "nope",
        "foreign": lambda: _foreign(tmp_path),
        "untrained": lambda: _untrained(tmp_path),
    }[case]()
    assert main(["evaluate", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_cli_subprocess_untrained_run(tmp_path):
    run = _untrained(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "gatedvae", "evaluate", str(run), "--preset", "fast", "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: run {run} has no checkpoint yet; train it first"
    assert "Traceback" not in proc.stderr


def test_cli_unknown_metric_is_one_line_error(run, capsys):
    assert main(["evaluate", str(run), "--metrics", "dci,migg", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "unknown metric 'migg'" in err and "did you mean 'mig'" in err and err.count("\n") == 1


def test_cli_evaluates_a_subset_and_prints_a_table(run, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("metrics.json", "figures"))
    args = ["--metrics", "mig,sap", "--preset", "fast", "--seed", "3", "--device", "cpu", "--quiet"]
    assert main(["evaluate", str(copy), *args]) == 0
    out = capsys.readouterr().out
    assert "mig" in out and "sap" in out and "metrics.json" in out
    doc = json.loads((copy / "metrics.json").read_text())
    assert doc["metrics"] == ["mig", "sap"] and doc["seed"] == 3


def test_resolve_metrics():
    assert resolve_metrics(None) == list(EVAL_METRICS)
    assert resolve_metrics("mig,dci") == ["dci_lasso", "dci_random_forest", "dci_classifier", "mig"]
    assert resolve_metrics(["Factor-VAE".replace("-", "_"), "recon"]) == ["factor_vae", "reconstruction"]
    with pytest.raises(ConfigError, match="udr ranks several runs"):
        resolve_metrics("udr")
    with pytest.raises(ConfigError, match="did you mean 'sap'"):
        resolve_metrics("sapp")


def test_udr_over_runs_of_two_seeds(run, tmp_path):
    cfg = small_config()
    other = tmp_path / "seed1"
    train(replace(cfg, train=replace(cfg.train, seed=1)), other, quiet=True, tensorboard=False)
    out = udr_runs([run, other], preset="fast", device="cpu")
    assert out["runs"] == [str(run), str(other)] and out["samples"] == 400
    assert len(out["model_scores"]) == 2 and all(0.0 <= s <= 1.0 for s in out["model_scores"])
    assert out["pairwise"][0][1] == out["pairwise"][1][0]
    json.dumps(out, allow_nan=False)
    with pytest.raises(ConfigError, match="at least two runs"):
        udr_runs([run])


# --------------------------------------------------------------------------- the sampling layer
@pytest.fixture(scope="module")
def grid_prep():
    ds = grid_dataset()  # factors f0..f4 of sizes 1, 3, 4, 5, 6: 360 images of 8x8, a full grid
    cfg = Config(model=ModelConfig(name="vae", latent_dim=3, hidden=16), train=TrainConfig(batch_size=8, device="cpu"))
    return prepare(cfg, dataset=ds)


def test_grid_dataset_drops_constant_factor_and_samples_the_grid(grid_prep):
    names = ["dci_lasso", "mig", "factor_vae", "beta_vae", "unsupervised"]
    res = evaluate_model(grid_prep, names, "fast", rng=np.random.default_rng(0))
    assert res["dataset"]["sampling"] == "grid" and res["dataset"]["dropped_factors"] == ["f0"]
    assert res["factor_names"] == ["f1", "f2", "f3", "f4"]
    assert np.asarray(res["results"]["dci_lasso"]["scores"]["importance"]).shape == (3, 4)
    assert res["encoded_images"] <= 360  # every image through the encoder at most once
    assert np.asarray(res["results"]["factor_vae"]["scores"]["train_votes"]).shape == (5, 3)
    assert "partition" not in res["results"]["dci_lasso"]["scores"]  # ungated


def test_evaluate_model_reproducible_and_independent_of_selection(grid_prep):
    a = evaluate_model(grid_prep, ["mig", "beta_vae"], "fast", rng=np.random.default_rng(4))
    b = evaluate_model(grid_prep, ["dci_lasso", "mig", "beta_vae"], "fast", rng=np.random.default_rng(4))
    assert a["results"]["mig"]["scores"]["mig"] == b["results"]["mig"]["scores"]["mig"]
    assert a["results"]["beta_vae"]["scores"]["eval_accuracy"] == b["results"]["beta_vae"]["scores"]["eval_accuracy"]


def test_representation_fn_grid_and_labelled(grid_prep):
    ds = grid_prep.dataset
    idx = np.array([0, 17, 359, 200])
    fn = representation_fn(grid_prep)
    np.testing.assert_allclose(fn(ds.factors_of(idx)), encode(grid_prep, idx), rtol=1e-6)

    lab = labelled_dataset(n=40)  # 40 images over 3 x 4 x 5 = 60 combinations: some are missing
    prep = prepare(
        Config(model=ModelConfig(name="vae", latent_dim=2, hidden=8), train=TrainConfig(batch_size=8, device="cpu")),
        dataset=lab,
    )
    cache = CodeCache(prep)
    fn = representation_fn(prep, rng=np.random.default_rng(0), cache=cache)
    want = lab.factors[:5]  # (5, 3)
    z = fn(want)  # (5, M)
    for f, zi in zip(want, z, strict=True):
        same = np.all(lab.factors == f, axis=1)  # the images with exactly these classes
        assert np.any(np.all(np.isclose(cache.mu[same], zi), axis=1))
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in (3, 4, 5)], indexing="ij"), -1).reshape(-1, 3)  # (60, 3)
    absent = next(g for g in grid if not np.all(lab.factors == g, axis=1).any())
    with pytest.raises(DataError, match="no image has the factor classes"):
        fn(absent[None])


def test_weak_label_dataset_scores_what_needs_no_factors():
    from gatedvae.data import FactorDataset, FactorSpace, Uint8Store

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(64, 1, 8, 8), dtype=np.uint8)
    ds = FactorDataset(
        "weak",
        Uint8Store(images),
        FactorSpace([], []),
        factors=np.zeros((64, 0), dtype=np.int64),
        weak=rng.normal(size=(64, 1)),
        weak_names=["pose"],
    )
    prep = prepare(
        Config(model=ModelConfig(name="vae", latent_dim=2, hidden=8), train=TrainConfig(batch_size=8, device="cpu")),
        dataset=ds,
    )
    res = evaluate_model(prep, None, "fast", rng=np.random.default_rng(0))
    assert set(res["results"]) == {"unsupervised", "reconstruction"}
    assert set(res["skipped"]) == set(EVAL_METRICS) - {"unsupervised", "reconstruction"}
    with pytest.raises(DataError, match="need factors"):
        evaluate_model(prep, "mig", "fast", rng=np.random.default_rng(0))


def test_observed_groups_share_the_fixed_class():
    rng = np.random.default_rng(0)
    factors = rng.integers(0, [3, 4], size=(500, 2))  # (N, 2)
    obs = ObservedFactors(factors, [3, 4])
    fixed = np.array([0, 1, 1, 0])
    anchor = np.array([5, 6, 7, 8])
    members = obs.same_class(fixed, anchor, 50, rng)  # (4, 50)
    for r in range(4):
        assert np.all(factors[members[r], fixed[r]] == factors[anchor[r], fixed[r]])
    assert len(np.unique(members[0])) > 10  # drawn across the group, not one image


# --------------------------------------------------------------------------- pure pieces
def test_sharpness_blurred_below_sharp():
    rng = np.random.default_rng(0)
    sharp = (rng.random((2, 1, 32, 32)) > 0.5).astype(np.float64)  # (2, 1, 32, 32) binary noise
    p = np.pad(sharp, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    blurred = sum(p[..., i : i + 32, j : j + 32] for i in range(3) for j in range(3)) / 9.0  # 3x3 box blur
    s, b = laplacian_sharpness(sharp), laplacian_sharpness(blurred)
    assert s.shape == (2,) and np.all(b < 0.5 * s)
    assert laplacian_sharpness(np.full((1, 8, 8), 0.3))[0] == pytest.approx(0.0, abs=1e-9)
    np.testing.assert_allclose(
        laplacian_sharpness(torch.as_tensor(0.5 * sharp)), s / 4
    )  # variance scales with contrast^2
    # one bright pixel in the middle of a dark 5x5 image: Laplacian -4*255 there, +255 at 4 neighbours
    img = np.zeros((1, 5, 5))
    img[0, 2, 2] = 1.0
    lap = np.zeros(25)
    lap[12], lap[[7, 11, 13, 17]] = -4 * 255.0, 255.0
    assert laplacian_sharpness(img)[0] == pytest.approx(lap.var())
    with pytest.raises(DataError):
        laplacian_sharpness(np.zeros((4, 4)))


def test_assigned_importance_fraction_hand_made():
    r = np.array([[4.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 1.0, 0.0]])  # (4 latents, 3 factors)
    out = assigned_importance_fraction(r, [np.array([0, 1]), np.array([3]), None])
    np.testing.assert_allclose(out["fraction"][:2], [1.0, 0.25])
    assert np.isnan(out["fraction"][2])  # not assigned
    np.testing.assert_allclose(out["chance"][:2], [0.5, 0.25])
    assert out["mean"] == pytest.approx(0.625)
    zero = assigned_importance_fraction(np.zeros((2, 1)), [np.array([0])])
    assert np.isnan(zero["fraction"][0]) and math.isnan(zero["mean"])
    with pytest.raises(DataError):
        assigned_importance_fraction(r, [None])


def test_to_jsonable():
    data = {
        "a": np.array([1.0, np.nan, np.inf]),
        (0, 1): np.float32(2.5),
        "b": np.bool_(True),
        "c": (np.int64(3), -math.inf),
    }
    out = to_jsonable(data)
    assert out == {"a": [1.0, None, "inf"], "0,1": 2.5, "b": True, "c": [3, "-inf"]}
    json.dumps(out, allow_nan=False)


def test_hinton_arrays():
    side = hinton_squares(np.array([[4.0, 1.0], [0.0, -1.0]]))
    np.testing.assert_allclose(side, [[1.0, 0.5], [0.0, 0.5]])  # area proportional to |w|
    np.testing.assert_allclose(hinton_squares(np.array([[1.0, 4.0]]), max_weight=16.0), [[0.25, 0.5]])
    assert not hinton_squares(np.zeros((2, 3))).any()
    assert not hinton_squares(np.array([[np.nan, 0.0]])).any()
    assert unit_spans([np.arange(0, 2), [2], np.array([4, 3])]) == [(0, 2), (2, 3), (3, 5)]
    with pytest.raises(DataError, match="contiguous"):
        unit_spans([[0, 2]])


def test_hinton_figure_writes_png(tmp_path):
    path = hinton_figure(
        np.random.default_rng(0).random((4, 3)),
        tmp_path / "h.png",
        factor_names=["a", "b", "c"],
        partitions=[[0, 1], [2, 3]],
        partition_names=["p", "q"],
        highlight=[(0, 2, 0)],
    )
    assert path.read_bytes()[:8] == PNG
    with pytest.raises(DataError):
        hinton_figure(np.ones((2, 2)), partitions=[[0], [1]], partition_names=["only one"])


def test_diagnostics_arrays(tmp_path):
    kl = np.array([0.1, 0.5, 0.3, 0.9, 0.2])
    np.testing.assert_array_equal(traversal_order(kl, [[0, 1], [2, 3, 4]]), [1, 0, 3, 2, 4])
    np.testing.assert_array_equal(traversal_order(kl), [3, 1, 2, 4, 0])
    np.testing.assert_array_equal(traversal_order(kl, [[3, 4]]), [3, 4, 1, 2, 0])  # ungrouped last
    np.testing.assert_array_equal(latent_groups(5, [[3, 4], [0]]), [1, -1, -1, 0, 0])
    with pytest.raises(DataError):
        latent_groups(3, [[0, 1], [1]])

    log = tmp_path / "metrics.jsonl"
    log.write_text(
        '{"step": 5, "epoch": 0.1, "phase": "train", "recon": 3.0, "kl": 1.0}\n'
        '{"step": 10, "epoch": 0.2, "phase": "finetune", "recon": 2.0}\n{"step": 15, "re'
    )
    lines = read_training_log(log)
    assert len(lines) == 2 and read_training_log(tmp_path / "absent.jsonl") == []
    curves = training_curves(lines)
    assert set(curves) == {"recon", "kl"}
    np.testing.assert_array_equal(curves["recon"][0], [5, 10])
    np.testing.assert_array_equal(curves["recon"][1], [3.0, 2.0])
    np.testing.assert_array_equal(curves["kl"][0], [5])

    z_part = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])  # (2, 3)
    z_rest = np.array([[-1.0, -2.0, -3.0]])  # (1, 3)
    out = swap_codes(z_part, z_rest, [0, 2])  # (2, 1, 3)
    np.testing.assert_array_equal(out, [[[1.0, -2.0, 3.0]], [[4.0, -2.0, 6.0]]])
    t = swap_codes(torch.as_tensor(z_part), torch.as_tensor(z_rest), [1])
    assert torch.equal(t, torch.tensor([[[-1.0, 2.0, -3.0]], [[-1.0, 5.0, -3.0]]], dtype=torch.float64))


# --------------------------------------------------------------------------- held-out images (data.holdout)
def test_heldout_indices_fixed_by_the_data_config_not_the_training_seed():
    from gatedvae.run import heldout_indices

    data = DataConfig(name="ellipses", size=400, holdout=0.05)
    a = heldout_indices(data, 400)
    assert a.size == 20 and np.all(np.diff(a) > 0) and a.max() < 400
    np.testing.assert_array_equal(a, heldout_indices(data, 400))
    assert not np.array_equal(a, heldout_indices(replace(data, seed=1), 400))
    assert heldout_indices(DataConfig(), 737_280).size == 0  # the default trains on every image
    with pytest.raises(ConfigError, match="data.holdout"):
        DataConfig(holdout=0.7)


@pytest.mark.parametrize("gated", [True, False])
def test_trainer_never_draws_heldout_images(gated):
    from gatedvae.run import heldout_indices
    from gatedvae.train import Batcher

    cfg = small_config(gated=gated)
    cfg = replace(cfg, data=replace(cfg.data, holdout=0.2))
    prep = prepare(cfg)
    held = heldout_indices(cfg.data, len(prep.dataset))
    batcher = Batcher(prep)
    seen = []
    original = prep.dataset.images

    def spy(index, out=None):
        seen.append(np.asarray(index).copy())
        return original(index, out=out)

    prep.dataset.images = spy
    rng = np.random.default_rng(0)
    for step in range(60):
        batcher.draw(step, rng, finetune=step >= 50)  # gated steps, then decoder fine-tuning pairs
    drawn = np.unique(np.concatenate(seen))
    assert np.intersect1d(drawn, held).size == 0
    assert drawn.size > 200  # most of the 320 training images were drawn


def test_reconstruction_measured_on_heldout_images(tmp_path):
    cfg = small_config(steps=10)
    cfg = replace(cfg, data=replace(cfg.data, holdout=0.1))
    path = tmp_path / "run"
    train(cfg, path, quiet=True, tensorboard=False)
    doc = evaluate_run(path, metrics="reconstruction", preset="fast", progress=False, figures=False, device="cpu")
    rec = doc["results"]["reconstruction"]
    assert rec["params"]["source"] == "heldout" and rec["samples"]["images"] == 40
    assert rec["scores"]["source"].startswith("held-out images (40 of 400")
