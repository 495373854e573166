"""Config: strict loading, nearest-key suggestions, typed dotted overrides, round trips."""

from __future__ import annotations

import json

import pytest

from gatedvae.config import (
    ALL_CONFIGS,
    Config,
    DataConfig,
    GatingConfig,
    ModelConfig,
    PartitionConfig,
    apply_overrides,
    from_dict,
    load_config,
    save_config,
    to_dict,
)
from gatedvae.errors import ConfigError


def gated_config() -> Config:
    parts = (
        PartitionConfig(name="shape", size=2, factors=("shape",)),
        PartitionConfig(name="scale", size=2, factors=("scale",)),
        PartitionConfig(name="orientation", size=2, factors=("orientation",), noise=0.1),
        PartitionConfig(name="position", size=2, factors=("posX", "posY")),
    )
    return Config(
        data=DataConfig(stride={"posX": 4, "posY": 4}),
        gating=GatingConfig(enabled=True, partitions=parts, schedule="random"),
    )


@pytest.mark.parametrize("cls", ALL_CONFIGS)
def test_round_trip_every_config_class(cls):
    c = cls()
    assert from_dict(cls, to_dict(c)) == c
    assert from_dict(cls, json.loads(json.dumps(to_dict(c)))) == c


def test_round_trip_nested_and_through_files(tmp_path):
    c = gated_config()
    assert from_dict(Config, to_dict(c)) == c
    for name in ("run.yaml", "run.json"):
        save_config(c, tmp_path / name)
        assert load_config(tmp_path / name) == c


def test_unknown_key_names_nearest_and_lists_valid():
    with pytest.raises(ConfigError) as exc:
        from_dict(Config, {"model": {"betta": 4}})
    msg = str(exc.value)
    assert "model.betta" in msg and "did you mean 'beta'" in msg and "latent_dim" in msg
    assert "\n" not in msg
    with pytest.raises(ConfigError, match="did you mean 'train'"):
        from_dict(Config, {"trian": {}})


def test_non_strict_ignores_unknown_keys():
    assert from_dict(ModelConfig, {"beta": 2, "junk": 1}, strict=False) == ModelConfig(beta=2.0)


@pytest.mark.parametrize(
    "data, match",
    [
        ({"model": {"latent_dim": "eight"}}, "model.latent_dim: expected int"),
        ({"model": {"latent_dim": 2.5}}, "model.latent_dim"),
        ({"model": {"latent_dim": True}}, "model.latent_dim"),
        ({"train": {"lr": "fast"}}, "train.lr"),
        ({"train": {"lr": float("nan")}}, "finite"),
        ({"model": {"net": "resnet"}}, "not one of 'mlp', 'conv64'"),
        ({"data": {"name": "mnist"}}, "data.name"),
        ({"model": {"latent_dim": 0}}, "at least 1"),
        ({"train": {"batch_size": -1}}, "batch_size"),
        ({"gating": {"partitions": [{"size": 2}]}}, "missing required config key 'gating.partitions.0.name'"),
        ({"gating": {"partitions": [{"name": "a", "size": 2, "factors": "shape"}]}}, "expected list of str"),
        ({"gating": {"enabled": True}}, "partitions is empty"),
        ({"model": "beta_vae"}, "expected ModelConfig"),
    ],
)
def test_wrong_values_fail_with_one_line(data, match):
    with pytest.raises(ConfigError, match=match) as exc:
        from_dict(Config, data)
    assert "\n" not in str(exc.value)


def test_partition_sizes_must_sum_to_latent_dim():
    d = to_dict(gated_config())
    d["model"]["latent_dim"] = 10
    with pytest.raises(ConfigError, match="sum to 8 but model.latent_dim is 10"):
        from_dict(Config, d)


def test_partition_rules():
    with pytest.raises(ConfigError, match="identity partition shares no factors"):
        PartitionConfig(name="f", size=1, factors=("a",), sampler="identity")
    with pytest.raises(ConfigError, match="name the factors"):
        PartitionConfig(name="f", size=1)
    with pytest.raises(ConfigError, match="clusters >= 2"):
        PartitionConfig(name="f", size=1, factors=("pose",), sampler="cluster")
    with pytest.raises(ConfigError, match="duplicate partition names"):
        GatingConfig(partitions=(PartitionConfig(name="a", size=1, factors=("x",)),) * 2)


def test_overrides_are_typed():
    c = apply_overrides(
        Config(), ["model.beta=4", "data.name=ellipses", "train.lr=1e-3", "train.steps=50", "gating.gate_kl=true"]
    )
    assert c.model.beta == 4.0 and isinstance(c.model.beta, float)
    assert c.data.name == "ellipses" and c.train.lr == 1e-3 and c.train.steps == 50 and c.gating.gate_kl is True
    # Unchanged input (frozen, functional update).
    assert Config().model.beta is None


def test_overrides_into_dicts_lists_and_collections():
    c = apply_overrides(
        gated_config(),
        ["data.stride.orientation=4", "gating.partitions.1.noise=0.25", "gating.partitions.0.factors=[shape, scale]"],
    )
    assert c.data.stride == {"posX": 4, "posY": 4, "orientation": 4}
    assert c.gating.partitions[1].noise == 0.25
    assert c.gating.partitions[0].factors == ("shape", "scale")
    c2 = apply_overrides(Config(), ["data.factor_columns=[yaw, pitch]", "data.path=/tmp/x y.npz"])
    assert c2.data.factor_columns == ("yaw", "pitch") and c2.data.path == "/tmp/x y.npz"


@pytest.mark.parametrize(
    "override, match",
    [
        ("model.betta=4", "did you mean 'beta'"),
        ("modle.beta=4", "did you mean 'model'"),
        ("model.beta=four", "model.beta: expected float"),
        ("train.steps=1.5", "train.steps"),
        ("model.beta", "key=value"),
        ("=3", "empty key"),
        ("gating.partitions.7.size=3", "out of range"),
        ("gating.partitions.x.size=3", "not a list position"),
        ("model.beta.x=1", "cannot descend"),
        ("data.stride.posX=0", "at least 1"),
    ],
)
def test_bad_overrides(override, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(gated_config(), [override])


def test_load_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML") as exc:
        load_config(bad)
    assert "\n" not in str(exc.value)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty) == Config()


def test_yaml_is_loaded_safely(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("model: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(ConfigError):
        load_config(evil)
    assert not (tmp_path / "pwned").exists()
