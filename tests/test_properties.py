"""Property tests (hypothesis, issue 7): the factor space, the pair samplers, config overrides and
the metrics hold their contracts for every input hypothesis can think of, not only the examples.

Every property runs derandomised (the same examples on every machine and every run) with small
example counts, so the file stays within its ~30 s budget on the shared 2-core machine.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from conftest import grid_dataset
from gatedvae.config import (
    Config,
    DataConfig,
    GatingConfig,
    ModelConfig,
    PartitionConfig,
    TrainConfig,
    apply_overrides,
    from_dict,
    load_config,
    save_config,
    to_dict,
)
from gatedvae.data import (
    ClusterPairSampler,
    ExactPairSampler,
    FactorDataset,
    FactorSpace,
    IdentityPairSampler,
    Uint8Store,
)
from gatedvae.errors import GatedVAEError
from gatedvae.metrics import KINDS, METRICS, compute
from gatedvae.models import MODELS

SETTINGS = dict(deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])

sizes_st = st.lists(st.integers(1, 7), min_size=1, max_size=5)


# --------------------------------------------------------------------------- factor space
@settings(max_examples=80, **SETTINGS)
@given(sizes=sizes_st, data=st.data())
def test_factor_space_index_factor_round_trip(sizes, data):
    space = FactorSpace([f"f{k}" for k in range(len(sizes))], sizes)
    n = len(space)
    assert n == int(np.prod(sizes))
    index = np.array(data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=30)), dtype=np.int64)
    factors = space.to_factors(index)  # (B, K)
    assert factors.shape == (len(index), len(sizes)) and factors.dtype == np.int64
    assert ((factors >= 0) & (factors < np.array(sizes))).all()
    assert np.array_equal(space.to_index(factors), index)
    # The other direction, and the row-major order numpy uses.
    classes = np.stack(
        [np.array(data.draw(st.lists(st.integers(0, s - 1), min_size=len(index), max_size=len(index)))) for s in sizes],
        axis=1,
    )
    assert np.array_equal(space.to_factors(space.to_index(classes)), classes)
    assert np.array_equal(space.to_index(classes), np.ravel_multi_index(tuple(classes.T), tuple(sizes)))


@settings(max_examples=40, **SETTINGS)
@given(sizes=sizes_st, seed=st.integers(0, 2**32 - 1), data=st.data())
def test_factor_space_subspace_and_resample(sizes, seed, data):
    space = FactorSpace([f"f{k}" for k in range(len(sizes))], sizes)
    strides = {f"f{k}": data.draw(st.integers(1, 3)) for k in range(len(sizes)) if data.draw(st.booleans())}
    sub, parent = space.subspace(strides)
    assert len(parent) == len(sub) and len(np.unique(parent)) == len(parent)
    f = space.to_factors(parent)  # (n_sub, K)
    for name, stride in strides.items():
        assert (f[:, space.position(name)] % stride == 0).all()
    assert np.array_equal(sub.to_factors(np.arange(len(sub))), f // np.array([strides.get(n, 1) for n in space.names]))
    rng = np.random.default_rng(seed)
    keep = [n for n in space.names if data.draw(st.booleans())]
    base = space.sample(20, rng)
    new = space.resample(base, keep, rng)
    kept = space.positions(keep)
    assert np.array_equal(new[:, kept], base[:, kept])
    assert ((new >= 0) & (new < np.array(sizes))).all()


# --------------------------------------------------------------------------- pair samplers
@st.composite
def grid_and_partition(draw):
    sizes = draw(st.lists(st.integers(1, 5), min_size=2, max_size=4))
    ds = grid_dataset(tuple(sizes))
    names = list(ds.factor_space.names)
    shared = draw(st.lists(st.sampled_from(names), min_size=1, max_size=len(names), unique=True))
    return ds, shared


@settings(max_examples=40, **SETTINGS)
@given(
    dp=grid_and_partition(),
    seed=st.integers(0, 2**32 - 1),
    batch=st.integers(1, 64),
    noise=st.sampled_from([0.0, 0.0, 0.3, 1.0]),
)
def test_exact_sampler_on_a_grid(dp, seed, batch, noise):
    ds, shared = dp
    sampler = ExactPairSampler(ds, shared, noise=noise)
    pairs = sampler.sample(batch, np.random.default_rng(seed))
    keep = ds.factor_space.positions(shared)
    assert pairs.input.shape == pairs.target.shape == (batch,) and pairs.input.dtype == pairs.target.dtype == np.int64
    assert ((pairs.input >= 0) & (pairs.input < len(ds))).all() and (
        (pairs.target >= 0) & (pairs.target < len(ds))
    ).all()
    assert pairs.shared.tolist() == [k in keep for k in range(ds.factor_space.num_factors)]  # exactly the partition's
    clean = ~pairs.noisy
    fi, ft = ds.factors_of(pairs.input[clean]), ds.factors_of(pairs.target[clean])
    assert np.array_equal(fi[:, keep], ft[:, keep])
    if noise == 0.0:
        assert not pairs.noisy.any()
    again = sampler.sample(batch, np.random.default_rng(seed))  # the same seed, the same pairs
    assert np.array_equal(again.input, pairs.input) and np.array_equal(again.target, pairs.target)
    assert np.array_equal(again.noisy, pairs.noisy)
    # The images gathered for the targets are the targets' images (the grid encodes the index).
    imgs = ds.images(pairs.target).reshape(batch, 64).numpy().astype(np.int64)
    assert np.array_equal((imgs * (1 << np.arange(64))).sum(1), pairs.target)


@st.composite
def labelled_and_partition(draw):
    sizes = draw(st.lists(st.integers(1, 4), min_size=2, max_size=3))
    n = draw(st.integers(2, 80))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    space = FactorSpace([f"g{k}" for k in range(len(sizes))], sizes)
    factors = space.sample(n, rng)  # (N, K) with repeats: not a grid
    weak = rng.normal(size=(n, 2))  # (N, 2)
    ds = FactorDataset(
        "labelled",
        Uint8Store(rng.integers(0, 256, size=(n, 1, 4, 4), dtype=np.uint8)),
        space,
        factors=factors,
        weak=weak,
        weak_names=["u", "v"],
    )
    shared = draw(st.lists(st.sampled_from(list(space.names)), min_size=1, max_size=len(sizes), unique=True))
    return ds, shared


@settings(max_examples=40, **SETTINGS)
@given(dp=labelled_and_partition(), seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 50))
def test_exact_sampler_on_labelled_items(dp, seed, batch):
    ds, shared = dp
    sampler = ExactPairSampler(ds, shared)
    pairs = sampler.sample(batch, np.random.default_rng(seed))
    keep = ds.factor_space.positions(shared)
    assert ((pairs.target >= 0) & (pairs.target < len(ds))).all()
    assert np.array_equal(ds.factors[pairs.input][:, keep], ds.factors[pairs.target][:, keep])
    assert pairs.shared.tolist() == [k in keep for k in range(ds.factor_space.num_factors)]
    again = sampler.sample(batch, np.random.default_rng(seed))
    assert np.array_equal(again.target, pairs.target)


@settings(max_examples=8, **SETTINGS)
@given(dp=labelled_and_partition(), seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 40), data=st.data())
def test_cluster_and_identity_samplers(dp, seed, batch, data):
    ds, _ = dp
    assume(len(ds) >= 2)
    k = data.draw(st.integers(2, min(len(ds), 12)))
    cluster = ClusterPairSampler(ds, ["u", "v"], k, np.random.default_rng(seed))
    pairs = cluster.sample(batch, np.random.default_rng(seed + 1))
    assert ((pairs.target >= 0) & (pairs.target < len(ds))).all()
    assert np.array_equal(cluster.labels[pairs.input], cluster.labels[pairs.target])  # same cluster
    assert not pairs.shared.any()  # weak-label clusters are no dataset factor
    rebuilt = ClusterPairSampler(ds, ["u", "v"], k, np.random.default_rng(seed))
    assert np.array_equal(rebuilt.labels, cluster.labels)
    same = IdentityPairSampler(ds).sample(batch, np.random.default_rng(seed))
    assert np.array_equal(same.input, same.target) and same.shared.all()


# --------------------------------------------------------------------------- config overrides
names_st = st.text(
    st.characters(whitelist_categories=("Ll", "Lu", "Nd"), whitelist_characters="_-"), min_size=1, max_size=12
)
partition_st = st.builds(
    PartitionConfig,
    name=names_st,
    size=st.integers(1, 4),
    factors=st.lists(names_st, min_size=1, max_size=3).map(tuple),
    noise=st.floats(0.0, 1.0),
    weight=st.floats(0.01, 10.0),
)


@st.composite
def configs(draw):
    parts = draw(st.lists(partition_st, max_size=4, unique_by=lambda p: p.name))
    latent = sum(p.size for p in parts) or draw(st.integers(1, 16))
    return Config(
        data=DataConfig(
            name=draw(st.sampled_from(["dsprites", "ellipses", "images"])),
            path=draw(st.text(max_size=20)),
            size=draw(st.integers(1, 10**6)),
            correlation=draw(st.floats(-0.99, 0.99)),
            stride=draw(st.dictionaries(names_st, st.integers(1, 8), max_size=3)),
            weak_columns=tuple(draw(st.lists(names_st, max_size=3))),
        ),
        model=ModelConfig(
            name=draw(st.sampled_from(sorted(MODELS))),
            latent_dim=latent,
            hidden=draw(st.integers(1, 2048)),
            beta=draw(st.none() | st.floats(0.0, 1e3)),
            c_steps=draw(st.none() | st.integers(1, 10**6)),
        ),
        gating=GatingConfig(
            enabled=bool(parts) and draw(st.booleans()),
            partitions=tuple(parts),
            schedule=draw(st.sampled_from(["cyclic", "random"])),
        ),
        train=TrainConfig(
            steps=draw(st.integers(0, 10**7)),
            batch_size=draw(st.integers(2, 4096)),
            lr=draw(st.floats(1e-8, 1.0)),
            seed=draw(st.integers(0, 2**31)),
        ),
    )


@settings(max_examples=60, **SETTINGS)
@given(cfg=configs())
def test_config_round_trips_through_dicts_yaml_and_json(cfg, tmp_path_factory):
    assert from_dict(Config, to_dict(cfg)) == cfg
    assert from_dict(Config, json.loads(json.dumps(to_dict(cfg)))) == cfg
    d = tmp_path_factory.mktemp("rt")
    for name in ("c.yaml", "c.json"):
        save_config(cfg, d / name)
        assert load_config(d / name) == cfg


def _flatten(data, prefix=""):
    """Dotted ``key=value`` overrides that rebuild ``data`` field by field."""
    out = []
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and not key.endswith("stride"):
            out += _flatten(v, key + ".")
        else:
            out.append((key, v))
    return out


def _as_text(v) -> str:
    return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)


@settings(max_examples=40, **SETTINGS)
@given(cfg=configs())
def test_overrides_rebuild_any_config_with_types_kept(cfg):
    """Setting every leaf of a config by a dotted override on top of the defaults gives that config
    back, every value with its declared type (ints stay ints, floats floats, text stays text even
    when it looks like a number, lists become tuples)."""
    overrides = []
    for key, value in _flatten(to_dict(cfg)):
        if key == "gating.partitions":
            continue  # lists of mappings: set in one override below
        if key == "model.latent_dim":
            continue
        overrides.append(f"{key}={_as_text(value)}")
    data = to_dict(cfg)
    overrides.insert(0, f"model.latent_dim={cfg.model.latent_dim}")
    overrides.insert(1, f"gating.partitions={json.dumps(data['gating']['partitions'], ensure_ascii=False)}")
    # gating.enabled must come after the partitions it needs
    overrides.sort(key=lambda o: o.startswith("gating.enabled="))
    rebuilt = apply_overrides(Config(), overrides)
    assert rebuilt == cfg
    assert type(rebuilt.train.steps) is int and type(rebuilt.train.lr) is float
    assert isinstance(rebuilt.data.path, str) and isinstance(rebuilt.data.weak_columns, tuple)


@settings(max_examples=60, **SETTINGS)
@given(text=st.text(max_size=12))
def test_a_string_override_stays_the_string_typed(text):
    assume("\n" not in text and "\r" not in text)
    cfg = apply_overrides(Config(), [f"data.path={text}", f"data.labels={text}"])
    assert cfg.data.path == text and cfg.data.labels == text


@settings(max_examples=60, **SETTINGS)
@given(
    value=st.one_of(st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8), st.booleans())
)
def test_a_typed_override_is_accepted_only_when_it_fits(value):
    """``train.steps`` takes exactly the non-negative integers (and integral floats); anything else
    is a one-line GatedVAEError, never a crash or a silent coercion."""
    text = _as_text(value) if not isinstance(value, float) else repr(value)
    try:
        cfg = apply_overrides(Config(), [f"train.steps={text}"])
    except GatedVAEError as exc:
        assert "\n" not in str(exc) and "train.steps" in str(exc)
        return
    assert type(cfg.train.steps) is int and cfg.train.steps >= 0
    assert not isinstance(value, bool)
    if isinstance(value, (int, float)):
        assert cfg.train.steps == value


# --------------------------------------------------------------------------- metrics
FAST = {  # smaller settings than the "fast" preset where a metric would take too long here
    "dci_classifier": {"n_estimators": 5, "max_depth": 2},
    "modularity_explicitness": {"max_iter": 100},
    "factor_vae": {"n_train": 60, "n_eval": 30, "n_variance": 200, "batch_size": 16},
    "beta_vae": {"n_train": 60, "n_eval": 30, "batch_size": 16},
}


def _of_kind(kind: str) -> list[str]:
    """The registered metrics of one call shape: each property below runs over all of them."""
    return sorted(n for n, k in KINDS.items() if k == kind)


ARRAY_METRICS, SAMPLER_METRICS = _of_kind("arrays"), _of_kind("sampler")
CODE_METRICS, MODEL_METRICS = _of_kind("codes"), _of_kind("models")
PROPERTY_KINDS = ("arrays", "sampler", "codes", "models")  # the call shapes that have a property here


def _finite(result) -> bool:
    for value in result.values():
        if isinstance(value, dict):
            if not _finite(value):
                return False
        elif isinstance(value, (list, tuple)):
            if not all(np.all(np.isfinite(np.asarray(v, dtype=np.float64))) for v in value):
                return False
        elif isinstance(value, (int, float, np.ndarray, np.floating, np.integer)) and not isinstance(value, bool):
            if not np.all(np.isfinite(np.asarray(value, dtype=np.float64))):
                return False
    return True


@st.composite
def codes_and_factors(draw):
    """Any finite codes (constant columns, duplicates, 1e-300 to 1e300 in scale) and factors whose every
    class has at least 8 rows (a factor class seen only once is refused, by design, with a one-line
    'too few samples' error; that refusal is tested in tests/test_metrics.py)."""
    d = draw(st.integers(1, 4))
    k = draw(st.integers(1, 3))
    classes = [draw(st.integers(2, 4)) for _ in range(k)]
    n = draw(st.integers(8 * max(classes), 80))
    scale = draw(st.sampled_from([1e-300, 1e-8, 1.0, 1e6, 1e300]))
    element = st.one_of(st.just(0.0), st.just(1.0), st.floats(-1.0, 1.0, allow_subnormal=False))
    codes = draw(arrays(np.float64, (n, d), elements=element)) * scale  # (N, D)
    columns = []
    for c in classes:
        base = np.concatenate(
            [np.repeat(np.arange(c), 8), draw(arrays(np.int64, (n - 8 * c,), elements=st.integers(0, c - 1)))]
        )
        columns.append(np.array(draw(st.permutations(base.tolist())), dtype=np.int64))  # (N,)
    return codes, np.stack(columns, axis=1)  # (N, D), (N, K)


@pytest.mark.parametrize("name", ARRAY_METRICS)
@settings(max_examples=8, **SETTINGS)
@given(cf=codes_and_factors(), seed=st.integers(0, 2**32 - 1))
def test_array_metrics_give_finite_scores_for_any_finite_input(name, cf, seed):
    codes, factors = cf
    try:
        result = compute(name, codes, factors, np.random.default_rng(seed), preset="fast", **FAST.get(name, {}))
    except GatedVAEError as exc:  # a refusal must be a documented one-line error about the input
        pytest.fail(f"{name} refused finite input: {exc}")
    assert _finite(result), (name, result)


@pytest.mark.parametrize("name", SAMPLER_METRICS)
@settings(max_examples=10, **SETTINGS)
@given(
    sizes=st.lists(st.integers(2, 4), min_size=2, max_size=3),
    mix=arrays(np.float64, (3, 3), elements=st.floats(-3, 3)),
    const=st.floats(-1e3, 1e3),
    seed=st.integers(0, 2**32 - 1),
)
def test_sampler_metrics_give_finite_scores_for_any_finite_representation(name, sizes, mix, const, seed):
    """Scores that draw their own factor batches (FactorVAE, beta-VAE) for any finite representation
    of the factors (linear maps of any rank, including constant latents)."""
    k = len(sizes)

    def representation(factors):  # (B, K) -> (B, 3)
        return factors.astype(np.float64) @ mix[:k] + const

    try:
        result = compute(name, representation, sizes, np.random.default_rng(seed), preset="fast", **FAST.get(name, {}))
    except GatedVAEError as exc:
        pytest.fail(f"{name} refused a finite representation: {exc}")
    assert _finite(result), (name, result)


def _no_nan(result) -> bool:
    return all(
        _no_nan(v) if isinstance(v, dict) else not np.isnan(np.asarray(v, dtype=np.float64)).any()
        for v in result.values()
        if not isinstance(v, str)
    )


@settings(max_examples=10, **SETTINGS)
@given(cf=codes_and_factors(), seed=st.integers(0, 2**32 - 1))
def test_unsupervised_scores_are_true_quantities(cf, seed):
    """The factor-free scores never give NaN. They report true quantities, so two cases are infinite
    by definition: the Gaussian total correlation and mutual information of exactly collinear
    latents, and the variance of codes beyond ~1e154 (it exceeds float64); apart from those, finite."""
    codes, _ = cf
    rng = np.random.default_rng(seed)
    result = compute("unsupervised", codes, rng, preset="fast")
    assert _no_nan(result)
    assert result["gaussian_total_correlation"] >= 0.0 and (result["gaussian_mutual_info"] >= 0.0).all()
    if np.abs(codes).max() < 1e100:
        assert np.isfinite(result["variance"]).all()
        live = codes[:, codes.std(axis=0) > 1e-12 * np.maximum(1.0, np.abs(codes).max(axis=0))]  # (N, D')
        if live.shape[1] < 2 or np.linalg.matrix_rank(live - live.mean(axis=0)) == live.shape[1]:
            assert (
                math.isfinite(result["gaussian_total_correlation"]) or np.linalg.cond(np.cov(live, rowvar=False)) > 1e12
            )


@pytest.mark.parametrize("name", CODE_METRICS)
@settings(max_examples=6, **SETTINGS)
@given(cf=codes_and_factors(), seed=st.integers(0, 2**32 - 1))
def test_factor_free_metrics_never_give_nan(name, cf, seed):
    codes, _ = cf
    assert _no_nan(compute(name, codes, np.random.default_rng(seed), preset="fast")), name


@pytest.mark.parametrize("name", MODEL_METRICS)
@settings(max_examples=6, **SETTINGS)
@given(cf=codes_and_factors(), seed=st.integers(0, 2**32 - 1))
def test_multi_model_metrics_give_finite_scores(name, cf, seed):
    codes, _ = cf
    other = codes[:, ::-1] * 2.0 + 1.0
    assert _finite(compute(name, [codes, other], np.random.default_rng(seed), preset="fast")), name


def test_every_metric_has_a_property():
    """The properties above run over the registry by call shape; a metric of another shape would
    have none (and a call shape with no metric means the registry lost them)."""
    kinds = {name: KINDS[name] for name in METRICS}
    assert kinds and all(kind in PROPERTY_KINDS for kind in kinds.values()), kinds
    assert set(kinds.values()) == set(PROPERTY_KINDS), kinds


@pytest.mark.parametrize("scale", [1e300, 1e-300])
def test_array_metrics_at_the_ends_of_the_float_range(scale):
    """Pinned examples of the property above: codes near float64's limits. (SAP and the classifier
    DCI once turned 1e300 into float32 inf: a crash and a false 'NaN or inf' refusal.)"""
    rng = np.random.default_rng(0)
    factors = np.stack([np.repeat(np.arange(3), 20), np.tile(np.arange(2), 30)], axis=1)  # (60, 2)
    codes = (factors @ rng.normal(size=(2, 3)) + 0.1 * rng.normal(size=(60, 3))) * scale  # (60, 3)
    for name in ARRAY_METRICS:
        result = compute(name, codes, factors, np.random.default_rng(1), preset="fast", **FAST.get(name, {}))
        assert _finite(result), name
