"""Shared test helpers: small synthetic datasets that need no rendering, and the tiny run config."""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import Any

import numpy as np
import pytest

from gatedvae.config import Config, from_dict, to_dict
from gatedvae.data import FactorDataset, FactorSpace, PackedBinaryStore, Uint8Store


def grid_dataset(sizes=(1, 3, 4, 5, 6), names=None) -> FactorDataset:
    """A full-grid dataset whose image i encodes its own index in its pixels."""
    names = names or [f"f{k}" for k in range(len(sizes))]
    space = FactorSpace(names, sizes)
    n = len(space)
    idx = np.arange(n, dtype=np.int64)
    bits = ((idx[:, None] >> np.arange(64)) & 1).astype(np.uint8)  # (N, 64)
    images = np.zeros((n, 8, 8), dtype=np.uint8)
    images.reshape(n, 64)[:] = bits
    return FactorDataset("grid", PackedBinaryStore.from_images(images), space)


def labelled_dataset(n=3000, sizes=(3, 4, 5), seed=0) -> FactorDataset:
    """A non-grid dataset: random factor classes with repeats, plus two weak-label columns."""
    rng = np.random.default_rng(seed)
    space = FactorSpace(["a", "b", "c"], sizes)
    factors = space.sample(n, rng)  # (N, 3)
    centres = 10.0 * np.array([[0, 0], [1, 0], [2, 0], [0, 1], [1, 1], [2, 1]])  # well separated
    which = rng.integers(0, 6, size=n)
    weak = centres[which] + rng.normal(size=(n, 2)) * 0.1  # (N, 2) six tight blobs
    images = rng.integers(0, 256, size=(n, 1, 8, 8), dtype=np.uint8)
    ds = FactorDataset("labelled", Uint8Store(images), space, factors=factors, weak=weak, weak_names=["pose", "au"])
    ds.blob = which  # ground-truth blob of each item, for cluster tests
    return ds


# --------------------------------------------------------------------------- the tiny run config
# One gated beta-VAE small enough that a training step takes a few milliseconds: 400 ellipses, a
# 24-wide MLP, a 4-dim latent in three partitions. Every test that trains builds its config here,
# with its own changes as overrides; plain data, so a test can also write it to a YAML file.
TINY_PARTITIONS = (
    {"name": "position", "size": 2, "factors": ["x", "y"]},
    {"name": "scale", "size": 1, "factors": ["scale"]},
    {"name": "orientation", "size": 1, "factors": ["orientation"]},
)
TINY = {
    "data": {"name": "ellipses", "size": 400, "levels": 8},
    "model": {"name": "beta_vae", "latent_dim": 4, "hidden": 24},
    "gating": {"enabled": True, "partitions": list(TINY_PARTITIONS)},
    "train": {"steps": 40, "batch_size": 16, "lr": 1e-3, "log_every": 5, "checkpoint_every": 10, "device": "cpu"},
}


def merge(base: dict, patch: dict) -> dict:
    """A deep copy of ``base`` with ``patch`` merged in (nested dicts merge; anything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _plain(value: Any) -> Any:
    """A config dataclass (``GatingConfig(...)``) as plain data; anything else unchanged."""
    return to_dict(value) if dataclasses.is_dataclass(value) and not isinstance(value, type) else value


def tiny_dict(dotted: dict[str, Any] | None = None, *, gated: bool = True, **sections: Any) -> dict:
    """The tiny run config as plain data (see :data:`TINY`), with a test's changes.

    ``sections``: ``data=``, ``model=``, ``gating=``, ``train=`` as dicts merged into that section
    (``train={"steps": 5}``) or as config objects that replace it (``gating=GatingConfig(...)``).
    ``dotted``: ``{"train.steps": 5, "model.beta": 8}``, applied last. ``gated=False`` turns gating
    off and drops the partitions.
    """
    unknown = set(sections) - set(TINY)
    if unknown:
        raise TypeError(f"tiny_dict: unknown section(s) {sorted(unknown)}; use {sorted(TINY)}")
    data = copy.deepcopy(TINY)
    if not gated:
        data["gating"] = {"enabled": False, "partitions": []}
    for name, value in sections.items():
        # a dict changes some keys of the section; a config object (GatingConfig(...)) replaces it
        data[name] = merge(data[name], value) if isinstance(value, dict) else _plain(value)
    for key, value in (dotted or {}).items():
        *path, leaf = key.split(".")
        node = data
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = _plain(value)
    return data


def tiny_config(dotted: dict[str, Any] | None = None, *, gated: bool = True, **sections: Any) -> Config:
    """The tiny run config (a :class:`~gatedvae.config.Config`); arguments as :func:`tiny_dict`."""
    return from_dict(Config, tiny_dict(dotted, gated=gated, **sections))


# --------------------------------------------------------------------------- devices
# The default suite is about behaviour on the CPU and passes on any machine: every config a test
# trains names its device (TINY above says ``cpu``) and every evaluation passes ``device="cpu"``,
# never ``auto``, so a GPU machine runs the same tests on the same device. Tests that need a CUDA
# device carry ``@pytest.mark.gpu`` (registered in pyproject.toml); where torch sees no CUDA device
# they are skipped with the reason below.
#
# ``pytest --pretend-cuda`` audits that on a CPU-only machine: torch.cuda.is_available() answers True
# in the test process, so a default test that would run on CUDA on a GPU machine fails here with
# "Torch not compiled with CUDA enabled" (gpu-marked tests stay skipped). It cannot reach a test's
# subprocesses: one that trains or evaluates must name its device too.
GPU_SKIP_REASON = "needs a CUDA GPU"
# cuBLAS reads its workspace setting once, when a process first uses it; the trainer sets it for
# deterministic runs (train.deterministic), but a GPU test may use cuBLAS before a trainer does.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
_REAL_CUDA: list[bool] = []  # torch.cuda.is_available() before --pretend-cuda, once asked


def pytest_addoption(parser):
    parser.addoption(
        "--pretend-cuda",
        action="store_true",
        help="audit: torch.cuda.is_available() answers True, so a default test that would use CUDA fails",
    )


def pytest_configure(config):
    if config.getoption("--pretend-cuda", default=False):
        import torch

        _REAL_CUDA.append(bool(torch.cuda.is_available()))
        torch.cuda.is_available = lambda: True


def cuda_available() -> bool:
    """Whether torch says it sees a CUDA device (True under --pretend-cuda)."""
    import torch

    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if gpu_items and not (_REAL_CUDA[0] if _REAL_CUDA else cuda_available()):
        skip = pytest.mark.skip(reason=GPU_SKIP_REASON)
        for item in gpu_items:
            item.add_marker(skip)


@pytest.fixture
def grid():
    return grid_dataset()


@pytest.fixture
def labelled():
    return labelled_dataset()
