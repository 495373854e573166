"""The benchmark data sets' configs and grids (configs/datasets/, issue 20), and RGB data through
both networks: every config loads strictly and its partitions name the data set's factors (or, for
CelebA, its attribute columns); every grid plans; a gated conv64 run on a tiny MPI3D file and an
MLP run on color-dSprites train; a run on CelebA (no factors) refuses a factor metric in one line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gatedvae.config import Config, apply_overrides, load_config, to_dict
from gatedvae.data import DATASETS
from gatedvae.data import mpi3d as mpi3d_mod
from gatedvae.data.cars3d import cars3d_space
from gatedvae.data.dsprites import DSPRITES_SPACE
from gatedvae.data.mnist import MNIST_SPACE
from gatedvae.data.mpi3d import MPI3D_SPACE
from gatedvae.data.shapes3d import SHAPES3D_SPACE
from gatedvae.data.smallnorb import NORB_SPACE
from gatedvae.errors import GatedVAEError
from gatedvae.sweep import plan_sweep

ROOT = Path(__file__).resolve().parents[1] / "configs" / "datasets"
CONFIGS = sorted(ROOT.glob("*.yaml"))
GRIDS = sorted((ROOT / "grids").glob("*.yaml"))


def _factor_names(name: str) -> tuple[str, ...]:
    from test_datasets_formats import CELEBA_ATTRS

    return {
        "shapes3d": SHAPES3D_SPACE.names,
        "mpi3d": MPI3D_SPACE.names,
        "smallnorb": NORB_SPACE.names,
        "cars3d": cars3d_space().names,
        "mnist": MNIST_SPACE.names,
        "celeba": tuple(CELEBA_ATTRS),
    }.get(name, DSPRITES_SPACE.names)


def test_every_benchmark_dataset_has_a_config_a_gated_config_and_a_grid():
    names = {"shapes3d", "mpi3d", "smallnorb", "cars3d", "mnist", "celeba"}
    names |= {"color_dsprites", "noisy_dsprites", "scream_dsprites"}
    assert names <= set(DATASETS)
    assert {p.stem for p in CONFIGS} == names | {n + "_gated" for n in names}
    assert {p.stem for p in GRIDS} == names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_loads_and_partitions_name_real_factors(path):
    cfg = load_config(path)
    assert cfg.data.name in DATASETS and cfg.model.net == "conv64" and cfg.model.likelihood == "bernoulli"
    if not path.stem.endswith("_gated"):
        assert not cfg.gating.enabled
        return
    assert cfg.gating.enabled and sum(p.size for p in cfg.gating.partitions) == cfg.model.latent_dim
    names = _factor_names(cfg.data.name)
    for p in cfg.gating.partitions:
        assert set(p.factors) <= set(names), (p.name, p.factors)


@pytest.mark.parametrize("path", GRIDS, ids=[p.stem for p in GRIDS])
def test_grid_plans_the_standard_study(path):
    plan = plan_sweep(path, check_data=False)
    models = {r.config.model.name for r in plan.runs}
    assert models == {"beta_vae", "factor_vae", "beta_tcvae", "dip_vae_i", "dip_vae_ii"}
    assert len(plan.runs) == 36 * 5 and sum(r.config.gating.enabled for r in plan.runs) == 6 * 5
    betas = sorted(
        {r.config.model.beta for r in plan.runs if r.config.model.name == "beta_vae" and not r.config.gating.enabled}
    )
    assert betas == [1, 2, 4, 6, 8, 16]


def _tiny(cfg: Config, **train) -> Config:
    over = {"steps": 3, "batch_size": 8, "log_every": 1, "checkpoint_every": 3, "image_every": 0, "threads": 1}
    over.update(train)
    return apply_overrides(cfg, [f"train.{k}={v}" for k, v in over.items()] + ["train.evaluate=none"])


def test_rgb_through_conv64_gated_and_mlp(tmp_path, monkeypatch):
    from gatedvae.train import train
    from test_datasets_formats import TINY_MPI3D, write_mpi3d

    monkeypatch.setattr(mpi3d_mod, "MPI3D_SPACE", TINY_MPI3D)
    write_mpi3d(tmp_path / "mpi3d_toy.npz", len(TINY_MPI3D))
    cfg = load_config(ROOT / "mpi3d_gated.yaml")
    cfg = apply_overrides(cfg, [f"data.path={tmp_path}", f"data.data_dir={tmp_path / 'd'}", "model.hidden=32"])
    summary = train(_tiny(cfg), tmp_path / "conv", quiet=True, tensorboard=False)
    assert summary["status"] == "finished" and summary["steps"] == 3 and np.isfinite(summary["final"]["total"])
    cfg = load_config(ROOT / "color_dsprites_gated.yaml")
    strides = [f"data.stride.{k}={v}" for k, v in {"posX": 8, "posY": 8, "orientation": 10, "scale": 3}.items()]
    cfg = apply_overrides(cfg, [*strides, "model.net=mlp", "model.hidden=32"])
    summary = train(_tiny(cfg), tmp_path / "mlp", quiet=True, tensorboard=False)
    assert summary["status"] == "finished" and summary["steps"] == 3 and np.isfinite(summary["final"]["total"])


@pytest.mark.filterwarnings("ignore:partition .* clusters of")
def test_celeba_run_refuses_factor_metrics_in_one_line(tmp_path):
    from gatedvae.evaluation import evaluate_run
    from gatedvae.train import train
    from test_datasets_formats import write_celeba

    write_celeba(tmp_path / "celeba", 12)
    cfg = load_config(ROOT / "celeba_gated.yaml")
    over = [f"data.path={tmp_path / 'celeba'}", f"data.data_dir={tmp_path / 'd'}", "data.image_size=64"]
    over += ["model.hidden=32", "model.net=mlp"] + [f"gating.partitions.{i}.clusters=2" for i in range(4)]
    cfg = _tiny(apply_overrides(cfg, over), batch_size=4)
    assert to_dict(cfg)["data"]["color"] == "rgb"
    train(cfg, tmp_path / "run", quiet=True, tensorboard=False)
    with pytest.raises(GatedVAEError) as exc:
        evaluate_run(tmp_path / "run", metrics=["mig"], preset="fast")
    msg = str(exc.value)
    assert "\n" not in msg and "need factors" in msg and "mig" in msg
