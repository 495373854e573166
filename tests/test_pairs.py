"""Pair samplers: shared factors exactly as declared, clusters, noise, seeding."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import grid_dataset, labelled_dataset
from gatedvae.config import PartitionConfig
from gatedvae.data import ClusterPairSampler, ExactPairSampler, IdentityPairSampler, make_sampler
from gatedvae.errors import PartitionError

N_PAIRS = 10_000


@pytest.mark.parametrize("shared", [["f1"], ["f3", "f4"], ["f2"], ["f1", "f2", "f3", "f4"]])
def test_exact_grid_pairs_share_exactly_the_declared_factors(shared):
    ds = grid_dataset()
    sampler = ExactPairSampler(ds, shared)
    batch = sampler.sample(N_PAIRS, np.random.default_rng(0))
    fi, ft = ds.factors_of(batch.input), ds.factors_of(batch.target)
    keep = ds.factor_space.positions(shared)
    assert np.array_equal(fi[:, keep], ft[:, keep])
    assert batch.shared.tolist() == [k in keep for k in range(5)]
    assert not batch.noisy.any()
    # The other factors are drawn at random: they agree only at chance rate 1/size.
    for k in range(5):
        if k in keep or ds.factor_space.sizes[k] == 1:
            continue
        rate = (fi[:, k] == ft[:, k]).mean()
        assert abs(rate - 1 / ds.factor_space.sizes[k]) < 0.03, (k, rate)
    # Targets' free factors are uniform.
    free = [k for k in range(1, 5) if k not in keep]
    for k in free:
        counts = np.bincount(ft[:, k], minlength=ds.factor_space.sizes[k])
        expected = N_PAIRS / ds.factor_space.sizes[k]
        assert np.all(np.abs(counts - expected) < 6 * np.sqrt(expected))


def test_exact_grid_pairs_fetch_the_right_images():
    ds = grid_dataset()
    batch = ExactPairSampler(ds, ["f2"]).sample(64, np.random.default_rng(1))
    imgs = ds.images(batch.target).reshape(64, 64).numpy().astype(np.int64)
    assert np.array_equal((imgs * (1 << np.arange(64))).sum(1), batch.target)


@pytest.mark.parametrize("shared", [["a"], ["b", "c"]])
def test_exact_grouped_pairs_share_the_declared_factors(shared):
    ds = labelled_dataset()
    sampler = ExactPairSampler(ds, shared)
    batch = sampler.sample(N_PAIRS, np.random.default_rng(0))
    keep = ds.factor_space.positions(shared)
    assert np.array_equal(ds.factors[batch.input][:, keep], ds.factors[batch.target][:, keep])
    # Targets are spread over the group, not the input itself.
    assert (batch.input != batch.target).mean() > 0.9


def test_identity_pairs():
    ds = grid_dataset()
    batch = IdentityPairSampler(ds).sample(1000, np.random.default_rng(0))
    assert np.array_equal(batch.input, batch.target) and batch.shared.all()


def test_cluster_pairs_share_a_cluster_and_recover_blobs():
    ds = labelled_dataset()
    sampler = ClusterPairSampler(ds, ["pose", "au"], n_clusters=6, rng=np.random.default_rng(0))
    batch = sampler.sample(N_PAIRS, np.random.default_rng(1))
    assert np.array_equal(sampler.labels[batch.input], sampler.labels[batch.target])
    # Six well separated blobs: k-means with 6 clusters recovers them, so pairs share a blob.
    assert np.array_equal(ds.blob[batch.input], ds.blob[batch.target])
    assert not batch.shared.any()  # weak labels are not dataset factors


def test_cluster_sampler_on_factor_values_marks_the_factor_shared():
    ds = labelled_dataset()
    sampler = ClusterPairSampler(ds, ["a"], n_clusters=3, rng=np.random.default_rng(0))
    batch = sampler.sample(2000, np.random.default_rng(0))
    assert batch.shared.tolist() == [True, False, False]
    assert np.array_equal(ds.factors[batch.input, 0], ds.factors[batch.target, 0])


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5])
def test_noise_fraction_within_binomial_tolerance(p):
    ds = grid_dataset()
    batch = ExactPairSampler(ds, ["f1"], noise=p).sample(N_PAIRS, np.random.default_rng(2))
    sd = np.sqrt(p * (1 - p) / N_PAIRS)
    assert abs(batch.noisy.mean() - p) <= 4 * sd + 1e-12
    fi, ft = ds.factors_of(batch.input), ds.factors_of(batch.target)
    clean = ~batch.noisy
    assert np.array_equal(fi[clean, 1], ft[clean, 1])
    if p > 0:
        # Noisy targets are random: they match the shared factor at chance (1/3).
        assert abs((fi[~clean, 1] == ft[~clean, 1]).mean() - 1 / 3) < 0.06


@pytest.mark.parametrize(
    "make",
    [
        lambda: ExactPairSampler(grid_dataset(), ["f3"], noise=0.2),
        lambda: ExactPairSampler(labelled_dataset(), ["b"], noise=0.2),
        lambda: IdentityPairSampler(grid_dataset(), noise=0.2),
        lambda: ClusterPairSampler(labelled_dataset(), ["pose"], 4, np.random.default_rng(0), noise=0.2),
    ],
)
def test_seeded_samplers_reproduce(make):
    s = make()
    a = s.sample(500, np.random.default_rng(7))
    b = s.sample(500, np.random.default_rng(7))
    c = s.sample(500, np.random.default_rng(8))
    assert np.array_equal(a.input, b.input) and np.array_equal(a.target, b.target)
    assert np.array_equal(a.noisy, b.noisy)
    assert not np.array_equal(a.target, c.target)


def test_cluster_sampler_is_reproducible_across_constructions():
    ds = labelled_dataset()
    l1 = ClusterPairSampler(ds, ["pose", "au"], 20, np.random.default_rng(5)).labels
    l2 = ClusterPairSampler(ds, ["pose", "au"], 20, np.random.default_rng(5)).labels
    assert np.array_equal(l1, l2)


def test_sampler_errors_are_clear():
    ds = labelled_dataset(n=50)
    with pytest.raises(PartitionError, match="only 50 images"):
        ClusterPairSampler(ds, ["pose"], 100, np.random.default_rng(0))
    with pytest.raises(PartitionError, match="unknown label column 'pos'"):
        ClusterPairSampler(ds, ["pos"], 4, np.random.default_rng(0))
    with pytest.raises(PartitionError, match="lacks"):
        make_sampler(
            grid_dataset(), PartitionConfig(name="shape", size=2, factors=("shape",)), np.random.default_rng(0)
        )
    with pytest.raises(PartitionError):
        ExactPairSampler(grid_dataset(), ["f1"], noise=1.5)


def test_make_sampler_dispatch():
    ds = labelled_dataset()
    rng = np.random.default_rng(0)
    assert isinstance(
        make_sampler(ds, PartitionConfig(name="free", size=2, sampler="identity"), rng), IdentityPairSampler
    )
    assert isinstance(make_sampler(ds, PartitionConfig(name="a", size=2, factors=("a",)), rng), ExactPairSampler)
    s = make_sampler(
        ds, PartitionConfig(name="p", size=2, factors=("pose",), sampler="cluster", clusters=5, noise=0.1), rng
    )
    assert isinstance(s, ClusterPairSampler) and s.noise == 0.1
