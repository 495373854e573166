"""Config: strict loading, nearest-key suggestions, typed dotted overrides, round trips."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from gatedvae.config import (
    ALL_CONFIGS,
    LEGACY_HYPERPARAMETERS,
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
from gatedvae.models import MODELS, resolve_hyper

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


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
        from_dict(Config, {"data": {"sise": 4}})
    msg = str(exc.value)
    assert "data.sise" in msg and "did you mean 'size'" in msg and "correlation" in msg
    assert "\n" not in msg
    with pytest.raises(ConfigError, match="did you mean 'train'"):
        from_dict(Config, {"trian": {}})


def test_misspelled_hyperparameter_fails_when_the_model_is_resolved():
    """The model section is open-ended (each model declares its hyperparameters): a misspelled
    one loads, and resolving the model (before anything is built or written) names the nearest."""
    cfg = from_dict(Config, {"model": {"betta": 4}})
    with pytest.raises(ConfigError) as exc:
        resolve_hyper(cfg.model)
    assert str(exc.value) == "model.betta is not a hyperparameter of beta_vae (it uses: beta); did you mean 'beta'?"
    with pytest.raises(ConfigError, match="did you mean 'latent_dim'"):
        resolve_hyper(apply_overrides(Config(), ["model.latnt_dim=3"]).model)


def test_non_strict_ignores_unknown_keys():
    assert from_dict(DataConfig, {"size": 2, "junk": 1}, strict=False) == DataConfig(size=2)


@pytest.mark.parametrize(
    "data, match",
    [
        ({"model": {"latent_dim": "eight"}}, "model.latent_dim: expected int"),
        ({"model": {"latent_dim": 2.5}}, "model.latent_dim"),
        ({"model": {"latent_dim": True}}, "model.latent_dim"),
        ({"train": {"lr": "fast"}}, "train.lr"),
        ({"train": {"lr": float("nan")}}, "finite"),
        ({"model": {"net": "resnet"}}, "not one of 'mlp', 'conv64'"),
        ({"model": {"beta": "four"}}, "model.beta: expected float"),
        ({"model": {"categorical": 3}}, "model.categorical: expected list of int"),
        ({"model": {"hyper": {"beta": 4}}}, "write them directly under model"),
        ({"model": {"latent_dim": 0}}, "at least 1"),
        ({"train": {"batch_size": -1}}, "batch_size"),
        ({"gating": {"partitions": [{"size": 2}]}}, "missing required config key 'gating.partitions.0.name'"),
        ({"gating": {"partitions": [{"name": "a", "size": 2, "factors": "shape"}]}}, "expected list of str"),
        ({"gating": {"enabled": True}}, "partitions is empty"),
        ({"model": "beta_vae"}, "expected ModelConfig"),
        ({"train": {"precision": "fp8"}}, "train.precision: 'fp8' is not one of 'fp32', 'tf32', 'bf16', 'fp16'"),
        ({"train": {"deterministic": "yes"}}, "train.deterministic"),
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
        ("data.sise=4", "did you mean 'size'"),
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


@pytest.mark.parametrize(
    "override, message",
    [
        # a wrong part before the last: named at its place, in the whole override, with the key to use
        (
            "gating.partitons.0.clusters=3",
            "unknown config key 'gating.partitons' in 'gating.partitons.0.clusters=3'; "
            "did you mean 'gating.partitions'? valid keys: enabled, partitions, schedule, gate_kl, mode",
        ),
        (
            "data.strid.posX=2",
            "unknown config key 'data.strid' in 'data.strid.posX=2'; did you mean 'data.stride'? valid keys: name, ",
        ),
        ("trian.steps=3", "unknown config key 'trian' in 'trian.steps=3'; did you mean 'train'? valid keys: data, "),
        # the last part: as before
        (
            "gating.partitions.0.clustrs=3",
            "unknown config key 'gating.partitions.0.clustrs'; did you mean 'clusters'? valid keys: name, size, ",
        ),
        ("train.stesp=5", "unknown config key 'train.stesp'; did you mean 'steps'? valid keys: steps, "),
    ],
)
def test_a_wrong_part_of_a_dotted_override_is_named_where_it_is(override, message):
    with pytest.raises(ConfigError) as exc:
        apply_overrides(gated_config(), [override])
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value), str(exc.value)


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


# --------------------------------------------------------------------------- hyperparameters owned by the models


def test_hyperparameters_keep_the_0_1_python_api():
    m = ModelConfig(name="beta_vae", beta=4)
    assert m.beta == 4 and m.gamma is None and m.hyper == {"beta": 4}
    assert dataclasses.replace(m, beta=2.0).beta == 2.0 and dataclasses.replace(m, beta=None) == ModelConfig()
    assert ModelConfig(beta=None) == ModelConfig() and hash(ModelConfig(beta=1.0)) == hash(ModelConfig(beta=1.0))
    assert ModelConfig(categorical=[3, 2]).categorical == (3, 2)  # frozen: hashable and equal to the tuple
    with pytest.raises(AttributeError, match="hyper.get"):
        _ = m.not_a_field
    with pytest.raises(ConfigError, match="not a hyperparameter name"):
        ModelConfig(hyper={"latent_dim": 3})


def test_a_new_models_hyperparameter_round_trips_after_the_0_1_keys():
    c = apply_overrides(Config(), ["model.name=my_model", "model.zeta=[1, 2]", "model.alpha=0.5"])
    assert c.model.zeta == (1, 2) and c.model.alpha == 0.5
    keys = list(to_dict(c.model))
    assert keys[-4:] == ["alpha", "zeta", "condition", "condition_encoder"]  # sorted, after gp_weight
    assert keys.index("gp_weight") == keys.index("alpha") - 1
    assert from_dict(Config, to_dict(c)) == c
    with pytest.raises(ConfigError, match="cannot descend"):
        apply_overrides(c, ["model.zeta.x=1"])


def test_out_of_range_hyperparameters_fail_when_resolved_with_the_0_1_messages():
    for cfg, msg in [
        (ModelConfig(beta=-4.0), "model.beta: must be non-negative, got -4.0"),
        (ModelConfig(name="annealed_vae", c_steps=0), "model.c_steps: must be at least 1, got 0"),
        (ModelConfig(name="infogan", noise_dim=-1), "model.noise_dim: must be non-negative, got -1"),
        (
            ModelConfig(name="infogan", categorical=(1,)),
            "model.categorical: every categorical code needs at least 2 categories, got (1,)",
        ),
        (ModelConfig(name="info_vae", mmd_kernel="cosine"), "model.mmd_kernel: 'cosine' is not one of 'rbf', 'imq'"),
    ]:
        with pytest.raises(ConfigError) as exc:
            resolve_hyper(cfg)
        assert str(exc.value) == msg


def test_every_registered_hyperparameter_is_typed_and_checked_by_its_model():
    """Each model's declared defaults pass its own checks; 0.1's names keep 0.1's file type."""
    seen = set()
    for name, entry in MODELS.items():
        assert resolve_hyper(ModelConfig(name=name)) == entry.defaults
        for key, spec in entry.hyper.items():
            seen.add(key)
            assert spec.doc, f"{name}.{key} has no doc line"
            wrong = "x" if spec.annotation is not str else 3
            with pytest.raises(ConfigError, match=f"model.{key}"):
                resolve_hyper(ModelConfig(name=name, **{key: wrong}))
    assert seen >= set(LEGACY_HYPERPARAMETERS)  # every 0.1 field is still some model's hyperparameter


# 0.1's to_dict of these configs, hashed as sweep.spec.config_hash does (computed with fc8c70c's code):
# the file layout and the run ids of every config 0.1 could express must not change.
PINNED = {
    "default": (Config(), "9a4d115d857f"),
    "beta_vae beta=4 on ellipses": (
        apply_overrides(
            Config(),
            ["model.name=beta_vae", "model.beta=4", "model.latent_dim=8", "data.name=ellipses", "data.size=1000"],
        ),
        "c8d46403ddd5",
    ),
    "infogan categorical": (
        from_dict(Config, {"model": {"name": "infogan", "categorical": [3, 2], "noise_dim": 10, "latent_dim": 7}}),
        "4a902700b243",
    ),
}


@pytest.mark.parametrize("key", sorted(PINNED))
def test_to_dict_is_byte_identical_to_0_1(key):
    from gatedvae.sweep.spec import config_hash

    cfg, pinned = PINNED[key]
    assert config_hash(cfg) == pinned


def test_precision_and_determinism_are_written_only_when_set():
    """``train.precision`` / ``train.deterministic`` (0.3) at their defaults leave a 0.1 config's
    file and run id as they were; set, they are part of both."""
    from gatedvae.sweep.spec import config_hash

    plain = to_dict(Config())["train"]
    assert "precision" not in plain and "deterministic" not in plain
    for override in ("train.precision=bf16", "train.deterministic=false"):
        cfg = apply_overrides(Config(), [override])
        key, value = override.removeprefix("train.").split("=")
        assert str(to_dict(cfg)["train"][key]).lower() == value
        assert from_dict(Config, to_dict(cfg)) == cfg
        assert config_hash(cfg) != config_hash(Config())


def test_shipped_configs_keep_their_0_1_layout():
    """Every shipped config (and so every 0.1 run directory's config.yaml): the model section is
    flat, every 0.1 hyperparameter key present (null when unset), in 0.1's order."""
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        model = to_dict(load_config(path))["model"]
        assert list(model) == [
            "name",
            "net",
            "latent_dim",
            "hidden",
            "likelihood",
            *LEGACY_HYPERPARAMETERS,
            "condition",
            "condition_encoder",
        ]
        assert from_dict(Config, to_dict(load_config(path))) == load_config(path)
