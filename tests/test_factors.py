"""FactorSpace: index <-> factor bijection, sampling, resampling, naming."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import grid_dataset
from gatedvae.data import FactorSpace, PackedBinaryStore, Uint8Store
from gatedvae.errors import DataError


@pytest.mark.parametrize("sizes", [(1, 3, 6, 40, 32, 32), (2,), (1,), (5, 1, 7), (1, 1, 1)])
def test_index_factor_round_trip_including_size_one(sizes):
    space = FactorSpace([f"f{i}" for i in range(len(sizes))], sizes)
    n = len(space)
    idx = np.arange(n) if n < 10_000 else np.random.default_rng(0).integers(0, n, 10_000)
    f = space.to_factors(idx)
    assert f.shape == (len(idx), len(sizes)) and f.dtype == np.int64
    assert np.array_equal(space.to_index(f), idx)
    # Matches numpy's row-major convention (the official dSprites order).
    assert np.array_equal(f, np.stack(np.unravel_index(idx, sizes), -1))
    # Every class in range, size-1 factors always 0.
    assert (f >= 0).all() and (f < np.array(sizes)).all()


def test_last_factor_varies_fastest():
    space = FactorSpace(["shape", "posX", "posY"], [3, 32, 32])
    assert space.to_factors(np.array([0, 1, 32, 1024])).tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0]]


def test_names_and_positions():
    space = FactorSpace(["color", "shape", "scale"], [1, 3, 6], values=[[1.0], [1, 2, 3], np.linspace(0.5, 1, 6)])
    assert space.position("scale") == 2 == space.position(2) == space.position(-1)
    assert space.positions(["scale", 1, "shape"]) == [1, 2]
    assert space.size("shape") == 3
    with pytest.raises(DataError, match="did you mean 'scale'"):
        space.position("scal")
    with pytest.raises(DataError, match="out of range"):
        space.position(3)
    vals = space.to_values(np.array([[0, 2, 5]]))
    assert np.allclose(vals, [[1.0, 3.0, 1.0]])


def test_invalid_spaces_and_indices():
    with pytest.raises(DataError):
        FactorSpace(["a", "a"], [2, 2])
    with pytest.raises(DataError):
        FactorSpace(["a"], [0])
    with pytest.raises(DataError):
        FactorSpace(["a", "b"], [2])
    space = FactorSpace(["a", "b"], [2, 3])
    with pytest.raises(DataError, match="out of range"):
        space.to_factors(np.array([6]))
    with pytest.raises(DataError, match="shape"):
        space.to_index(np.zeros((4, 3), dtype=int))


def test_sample_is_seeded_uniform_and_in_range():
    space = FactorSpace(["a", "b", "c"], [1, 4, 10])
    a = space.sample(20_000, np.random.default_rng(3))
    b = space.sample(20_000, np.random.default_rng(3))
    assert np.array_equal(a, b)
    assert (a[:, 0] == 0).all()
    counts = np.bincount(a[:, 2], minlength=10)
    assert counts.min() > 1700 and counts.max() < 2300  # 2000 +- ~7 sigma


def test_resample_keeps_exactly_the_kept_factors():
    space = FactorSpace(["a", "b", "c", "d"], [3, 5, 7, 11])
    rng = np.random.default_rng(0)
    f = space.sample(10_000, rng)
    g = space.resample(f, keep=["b", 3], rng=rng)
    assert np.array_equal(f[:, [1, 3]], g[:, [1, 3]])
    for k in (0, 2):
        # A free factor matches only by chance: about 1/size of the time.
        assert abs((f[:, k] == g[:, k]).mean() - 1 / space.sizes[k]) < 0.03
    assert np.array_equal(
        space.resample(f, keep=[], rng=np.random.default_rng(1)),
        space.resample(f, keep=[], rng=np.random.default_rng(1)),
    )


def test_subspace_is_a_grid_of_kept_classes():
    space = FactorSpace(["a", "b", "c"], [2, 8, 6], values=[[0, 1], np.arange(8) * 0.5, np.arange(6)])
    sub, index = space.subspace({"b": 4, "c": 3})
    assert sub.sizes == (2, 2, 2)
    assert np.allclose(sub.values[1], [0.0, 2.0])
    f = space.to_factors(index)
    assert np.array_equal(f[:, 1] // 4, sub.to_factors(np.arange(len(sub)))[:, 1])
    assert set(f[:, 2]) == {0, 3}


def test_dataset_subset_grid_keeps_images_aligned():
    ds = grid_dataset(sizes=(3, 4, 5))
    sub = ds.subset_grid({"f1": 2, "f2": 5})
    assert len(sub) == 3 * 2 * 1 and sub.is_grid
    # Image of sub item j encodes the original index in its bits.
    imgs = sub.images(np.arange(len(sub))).reshape(len(sub), 64).numpy().astype(np.int64)
    orig = (imgs * (1 << np.arange(64))).sum(1)
    _, expected = ds.factor_space.subspace({"f1": 2, "f2": 5})
    assert np.array_equal(orig, expected)


def test_stores_gather_exact_values():
    rng = np.random.default_rng(0)
    binary = rng.integers(0, 2, size=(10, 16, 16))
    store = PackedBinaryStore.from_images(binary)
    assert store.nbytes == 10 * 32
    out = store.gather(np.array([3, 0, 3]))
    assert out.shape == (3, 1, 16, 16) and out.dtype.is_floating_point
    assert np.array_equal(out[:, 0].numpy(), binary[[3, 0, 3]].astype(np.float32))
    assert store.gather_uint8(np.array([1])).max().item() in (0, 255)
    # The accelerator path (lookup table) unpacks identically.
    assert torch.equal(store.unpack_lut(store.packed[[3, 0, 3]]), out)
    gray = rng.integers(0, 256, size=(5, 3, 8, 8), dtype=np.uint8)
    u = Uint8Store(gray)
    assert np.allclose(u.gather(np.array([4]))[0].numpy(), gray[4] / 255.0)
    with pytest.raises(DataError):
        Uint8Store(gray.astype(np.float32))


def test_factor_grid_index_varies_one_factor():
    ds = grid_dataset(sizes=(3, 4, 5))
    base = np.array([[1, 2, 3], [0, 0, 0]])
    idx = ds.factor_grid_index(base, "f1")
    f = ds.factors_of(idx.reshape(-1)).reshape(2, 4, 3)
    assert (f[:, :, 1] == np.arange(4)).all()
    assert (f[0, :, [0, 2]] == np.array([[1], [3]])).all()
