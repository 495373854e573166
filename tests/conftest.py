"""Shared fixtures: small synthetic datasets that need no rendering."""

from __future__ import annotations

import numpy as np
import pytest

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


@pytest.fixture
def grid():
    return grid_dataset()


@pytest.fixture
def labelled():
    return labelled_dataset()
