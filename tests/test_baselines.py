"""Baselines of the BetaVAE-metric table: codes of the declared size, agreement with scikit-learn,
seeded fits, the ground truth, the uncached code path for wide codes, errors and the command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import grid_dataset
from gatedvae.baselines import BASELINES, build_baseline, evaluate_baseline, fit_sample, prepare_baseline
from gatedvae.cli import main
from gatedvae.config import DataConfig, ModelConfig
from gatedvae.errors import ConfigError, GatedVAEError
from gatedvae.evaluation import CodeCache, evaluate_model
from gatedvae.models import build_model

SIZES = (1, 3, 4, 5, 6)  # 360 images of 8x8 (64 pixels)


@pytest.fixture(scope="module")
def ds():
    return grid_dataset(SIZES)


@pytest.mark.parametrize(
    "name, latent, width", [("raw_pixels", 10, 64), ("pca", 5, 5), ("ica", 4, 4), ("untrained_vae", 3, 3)]
)
def test_codes_have_the_declared_size(ds, name, latent, width):
    module = build_baseline(name, ds, latent_dim=latent, seed=0, fit_size=300, hidden=16)
    assert module.latent_dim == width
    post = module.encode(ds.images(np.arange(7)))
    assert post.mu.shape == (7, width) and torch.isfinite(post.mu).all()
    # Through the metrics adapter, as for a trained model.
    prep = prepare_baseline(name, DataConfig(), dataset=ds, latent_dim=latent, seed=0, fit_size=300, hidden=16)
    cache = CodeCache(prep)
    assert cache.codes(np.array([[0, 1], [2, 3]])).shape == (2, 2, width)
    out = module.decode(post.mu)
    assert out.shape == (7, 1, 8, 8) and torch.isfinite(module.reconstruction(out, ds.images(np.arange(7)))).all()


def test_pca_and_ica_agree_with_scikit_learn(ds):
    from sklearn.decomposition import PCA, FastICA

    _, x = fit_sample(ds, 300, seed=3)
    pca = PCA(n_components=5, random_state=3).fit(x)
    mod = build_baseline("pca", ds, latent_dim=5, seed=3, fit_size=300)
    probe = ds.images(np.arange(40))
    flat = probe.flatten(1).numpy()
    np.testing.assert_allclose(mod.encode(probe).mu.numpy(), pca.transform(flat), atol=1e-4)
    recon = np.clip(pca.inverse_transform(pca.transform(flat)), 1e-4, 1 - 1e-4)
    np.testing.assert_allclose(mod.mean_image(mod.decode(mod.encode(probe).mu)).flatten(1).numpy(), recon, atol=1e-4)
    assert 0 < mod.info["explained_variance_ratio"] <= 1
    white = PCA(n_components=4, whiten=True, random_state=3).fit(x)
    ica = FastICA(whiten=False, max_iter=1000, tol=1e-4, random_state=3).fit(white.transform(x))
    mod = build_baseline("ica", ds, latent_dim=4, seed=3, fit_size=300)
    sources = ica.transform(white.transform(flat))
    np.testing.assert_allclose(mod.encode(probe).mu.numpy(), sources, atol=1e-3)
    np.testing.assert_allclose(
        mod.decode(mod.encode(probe).mu).sigmoid().flatten(1).numpy(),
        np.clip(white.inverse_transform(ica.inverse_transform(sources)), 1e-4, 1 - 1e-4),
        atol=1e-3,
    )
    assert mod.encode(ds.images(np.arange(len(ds)))).mu.std(0).numpy() == pytest.approx(np.ones(4), abs=0.2)
    assert mod.info["fit_size"] == 300 and isinstance(mod.info["converged"], bool)


def test_fits_are_seeded(ds):
    a = build_baseline("pca", ds, latent_dim=3, seed=1, fit_size=100)
    b = build_baseline("pca", ds, latent_dim=3, seed=1, fit_size=100)
    c = build_baseline("pca", ds, latent_dim=3, seed=2, fit_size=100)
    assert torch.equal(a.mean, b.mean) and torch.equal(a.weight, b.weight)
    assert not torch.equal(a.mean, c.mean)
    assert not np.array_equal(fit_sample(ds, 100, 1)[0], fit_sample(ds, 100, 2)[0])


def test_untrained_vae_is_the_registered_model_at_init(ds):
    ref = build_model(ModelConfig(name="vae", latent_dim=3, hidden=16), ds.image_shape, len(ds), seed=5)
    x = ds.images(np.arange(9))
    raw = build_baseline("untrained_vae", ds, latent_dim=3, seed=5, hidden=16, bn_stats=False)
    assert torch.equal(raw.encode(x).mu, ref.eval().encode(x).mu) and not raw.info["bn_stats"]
    mod = build_baseline("untrained_vae", ds, latent_dim=3, seed=5, hidden=16, fit_size=300)
    assert all(torch.equal(a, b) for a, b in zip(mod.parameters(), ref.parameters(), strict=True))  # weights untouched
    # Batch-norm statistics: the mean and (unbiased) variance of the first layer's pre-activations on the sample.
    idx, pix = fit_sample(ds, 300, 5)
    pre = (
        torch.from_numpy(pix) @ ref.encoder.trunk.layers[0][0].weight.T + ref.encoder.trunk.layers[0][0].bias
    )  # (300, 16)
    bn = mod.encoder.trunk.layers[0][1]
    torch.testing.assert_close(bn.running_mean, pre.mean(0), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(bn.running_var, pre.var(0), atol=1e-4, rtol=1e-3)
    assert mod.info["bn_stats"] and not mod.training
    other = build_baseline("untrained_vae", ds, latent_dim=3, seed=6, hidden=16)
    assert not torch.equal(mod.encode(x).mu, other.encode(x).mu)
    with pytest.raises(ConfigError, match="GAN"):
        build_baseline("untrained_vae", ds, latent_dim=6, model="infogan", hidden=16)


def test_uncached_codes_equal_cached_codes(ds):
    prep = prepare_baseline("raw_pixels", DataConfig(), dataset=ds)
    kept, fresh = CodeCache(prep), CodeCache(prep, max_bytes=0)
    assert kept.keeps and not fresh.keeps and fresh.mu.shape == (0, 64)
    idx = np.array([[5, 7, 5], [0, 359, 7]])
    np.testing.assert_array_equal(kept.codes(idx), fresh.codes(idx))
    np.testing.assert_array_equal(kept.posterior(idx)[1], fresh.posterior(idx)[1])
    assert fresh.n_encoded == 12 and kept.n_encoded == 4  # repeats are encoded again without a cache


def test_raw_pixels_scores_through_evaluate_model_without_a_cache(ds, monkeypatch):
    import gatedvae.evaluation.encoding as adapter

    prep = prepare_baseline("raw_pixels", DataConfig(), dataset=ds)
    kw = dict(metrics="beta_vae,mig", preset="fast")
    a = evaluate_model(prep, rng=np.random.default_rng(0), **kw)
    monkeypatch.setattr(adapter, "CACHE_MAX_BYTES", 0)
    b = evaluate_model(prep, rng=np.random.default_rng(0), **kw)
    assert b["encoded_images"] > a["encoded_images"]
    assert a["results"]["beta_vae"]["scores"]["eval_accuracy"] == b["results"]["beta_vae"]["scores"]["eval_accuracy"]


def test_ground_truth_scores_perfectly(ds):
    doc = evaluate_baseline(
        "ground_truth", DataConfig(), dataset=ds, metrics="beta_vae,factor_vae,mig,recon", preset="fast"
    )
    assert doc["headline"]["beta_vae.eval_accuracy"] == 1.0
    assert doc["headline"]["factor_vae.eval_accuracy"] == 1.0
    assert doc["headline"]["mig.mig"] > 0.99
    assert "reconstruction" in doc["skipped"] and doc["latent_dim"] == 4


def test_errors(ds, tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'pca'"):
        build_baseline("pcaa", ds)
    with pytest.raises(ConfigError, match="exceeds the 64 pixels"):
        build_baseline("pca", ds, latent_dim=65)
    with pytest.raises(ConfigError, match="fit_size must be at least 2"):
        build_baseline("ica", ds, fit_size=1)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("{}")
    with pytest.raises(GatedVAEError, match="training run directory"):
        evaluate_baseline(
            "pca", DataConfig(), dataset=ds, out_dir=tmp_path / "run", latent_dim=2, metrics="mig", preset="fast"
        )
    assert set(BASELINES) == {"raw_pixels", "pca", "ica", "untrained_vae", "ground_truth"}


def test_command_writes_metrics_json(tmp_path, capsys):
    out = tmp_path / "pca"
    rc = main(
        [
            "baseline",
            "pca",
            "ellipses",
            "size=300",
            "levels=8",
            "--latent-dim",
            "3",
            "--fit-size",
            "200",
            "--metrics",
            "beta_vae,mig",
            "--preset",
            "fast",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 0
    doc = json.loads((out / "metrics.json").read_text())
    spec = json.loads((out / "baseline.json").read_text())
    assert doc["format"] == "gatedvae-metrics-1" and doc["latent_dim"] == 3 and spec["name"] == "pca"
    assert 0 <= doc["headline"]["beta_vae.eval_accuracy"] <= 1
    assert "beta_vae" in capsys.readouterr().out
    assert main(["baseline", "pca", "ellipses", "--latent-dim", "0"]) == 2
    assert "--latent-dim must be at least 1" in capsys.readouterr().err
