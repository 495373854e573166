"""Every shipped config in configs/ loads strictly and builds its data, partitions and model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gatedvae.config import apply_overrides, load_config
from gatedvae.run import condition_vectors, prepare

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_configs_exist():
    names = {p.stem for p in CONFIGS}
    for need in (
        "dsprites_beta_vae",
        "dsprites_beta_vae_gated",
        "dsprites_info_vae_gated",
        "dsprites_dip_vae_ii_gated",
        "ellipses_chyvae",
        "ellipses_factor_vae",
        "dsprites_annealed_vae_relu",
    ):
        assert need in names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_builds(path):
    cfg = load_config(path)
    if cfg.data.name == "images":  # loads and validates above; the data is the user's own folder
        pytest.skip("reads the user's image folder; tests/test_faces.py trains it on a folder the test writes")
    if cfg.data.name == "faces":  # same factors and partitions, 27x fewer images and fewer clusters
        cfg = apply_overrides(
            cfg,
            ["data.stride.width=3", "data.stride.skin=3", "data.stride.hair=3"]
            + [
                f"gating.partitions.{i}.clusters=50"
                for i, p in enumerate(cfg.gating.partitions)
                if p.sampler == "cluster"
            ],
        )
    if cfg.data.name == "ellipses":
        cfg = apply_overrides(cfg, ["data.size=2000"])  # same factors, fewer images
    prep = prepare(cfg, device=torch.device("cpu"))
    # Run a few images through the built networks: the encoder's output width (not an attribute
    # copied from the config) is the configured latent, and the decoder maps it back to images.
    idx = np.arange(4)
    x = prep.dataset.images(idx)  # (4, C, H, W)
    cond = condition_vectors(prep.dataset, cfg.model.condition, idx, prep.device)
    model = prep.model.eval()
    with torch.no_grad():
        mu = model.encode(x, cond).mu  # (4, M)
        out = model.decode(mu, cond)  # (4, C, H, W)
    assert mu.shape == (4, cfg.model.latent_dim) and torch.isfinite(mu).all()
    assert out.shape == x.shape and torch.isfinite(out).all()
    if cfg.gating.enabled:
        # The partitions tile the encoder's latent: each unit in exactly one, in the configured order and sizes.
        masks = prep.partitions.masks()  # (P, M) bool
        assert masks.shape == (len(cfg.gating.partitions), mu.shape[1])
        assert masks.sum(0).tolist() == [1] * mu.shape[1]
        assert masks.sum(1).tolist() == [p.size for p in cfg.gating.partitions]
        assert masks.int().argmax(1).tolist() == sorted(masks.int().argmax(1).tolist())
    else:
        assert prep.partitions is None
