"""Configuration: frozen stdlib dataclasses with strict loading and dotted overrides.

A configuration is a tree of frozen dataclasses. It is built from plain data (a dict read
from YAML or JSON) with :func:`from_dict`, which refuses unknown keys (naming the nearest
valid one) and values of the wrong type, and it is turned back into plain data with
:func:`to_dict`; ``from_dict(type(c), to_dict(c)) == c`` for every config.

Command-line overrides are ``dotted.key=value`` strings (``model.beta=4``,
``data.stride.posX=4``, ``gating.partitions.0.size=3``); values are parsed as YAML scalars
or flow collections and then checked against the field's type.

Two sections are open-ended, because what they hold belongs to a registry this layer does not
import: a model's hyperparameters (``model.beta``, ``model.gamma``, ...) are declared by each model's
file (:mod:`gatedvae.models`) and are type- and range-checked when the model is resolved
(``gatedvae.models.validate_model_config``, called before anything is built or written); a
dataset's own options (``data.options.NAME``) are declared by the dataset's file
(:mod:`gatedvae.data.registry`) and checked when the dataset is built.

No third-party config framework is used on purpose (see ``../shared/STYLE.md``, habit 6).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from .errors import ConfigError
from .io import closest

__all__ = [
    "DataConfig",
    "PartitionConfig",
    "GatingConfig",
    "PairsConfig",
    "ModelConfig",
    "TrainConfig",
    "Config",
    "from_dict",
    "to_dict",
    "apply_overrides",
    "load_config",
    "save_config",
    "config_keys",
    "Setting",
    "Check",
    "NON_NEGATIVE",
    "AT_LEAST_1",
    "LEGACY_HYPERPARAMETERS",
]


# --------------------------------------------------------------------------- generic machinery


def _field_types(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def config_keys(cls: type) -> list[str]:
    """The field names of a config dataclass, in declaration order."""
    return [f.name for f in dataclasses.fields(cls)]


def _suggest(key: str, valid: list[str], prefix: str = "") -> str:
    """``; did you mean 'size'? valid keys: ...`` for the unknown part ``key`` (written after ``prefix``)."""
    near = closest(key, valid, cutoff=0.5)
    hint = f"; did you mean '{prefix}{near}'?" if near else ";"
    return f"{hint} valid keys: {', '.join(valid)}"


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin is tuple:
        return f"list of {_type_name(get_args(tp)[0])}"
    if origin is dict:
        k, v = get_args(tp)
        return f"mapping of {_type_name(k)} to {_type_name(v)}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert it (list -> tuple, int -> float)."""
    origin = get_origin(tp)
    bad = ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}; fix the value of '{where}'")
    if tp is Any:
        return value
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(repr(a) for a in get_args(tp))}")
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                continue
        raise bad
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise bad
        (item,) = [a for a in get_args(tp) if a is not Ellipsis]
        return tuple(_coerce(v, item, f"{where}.{i}") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        kt, vt = get_args(tp)
        return {_coerce(k, kt, where): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise bad
        return from_dict(tp, value, _where=where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad
    if tp is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            out = float(value)
        elif isinstance(value, str):
            try:
                out = float(value)
            except ValueError:
                raise bad from None
        else:
            raise bad
        if not math.isfinite(out):
            raise ConfigError(f"{where}: must be a finite number, got {value!r}")
        return out
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    raise TypeError(f"unsupported config annotation {tp!r} at {where}")  # a bug, not user input


def from_dict(cls: type, data: dict[str, Any] | None, *, strict: bool = True, _where: str = "") -> Any:
    """Build the dataclass ``cls`` from plain data.

    With ``strict`` (the default) an unknown key raises :class:`ConfigError` naming the nearest
    valid key and listing all of them; without it unknown keys are ignored. Missing keys take
    their defaults. Values are type-checked and converted (lists become tuples).
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{_where or 'config'}: expected a mapping of keys to values, got {data!r}")
    hints = _field_types(cls)
    valid = config_keys(cls)
    open_field = getattr(cls, "_open_field", None)
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in data.items():
        where = f"{_where}.{key}" if _where else str(key)
        if open_field is not None and (key == open_field or key not in valid):
            # a key of the open-ended part (a model's hyperparameter): checked when it is resolved
            if key == open_field or not isinstance(key, str):
                section = _where or "model"
                raise ConfigError(f"'{where}' is not a valid key; write them directly under {section} ({section}.beta)")
            extra[key] = _coerce(value, cls._open_types.get(key, Any), where)
            continue
        if key not in hints or key not in valid:
            if strict:
                raise ConfigError(f"unknown config key '{where}'{_suggest(str(key), valid)}")
            continue
        kwargs[key] = _coerce(value, hints[key], where)
    if open_field is not None:
        kwargs[open_field] = extra
    for f in dataclasses.fields(cls):
        if (
            f.name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
        ):
            where = f"{_where}.{f.name}" if _where else f.name
            raise ConfigError(f"missing required config key '{where}'")
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        if _where and not str(exc).startswith(_where):
            raise ConfigError(f"{_where}: {exc}") from None
        raise


def to_dict(obj: Any) -> Any:
    """Plain data (dicts, lists, scalars) for a config dataclass; the inverse of :func:`from_dict`."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        plain = getattr(obj, "_to_plain", None)
        if plain is not None:  # a section whose file layout is not one key per field
            return plain()
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def _parse_override_value(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def _set_path(data: Any, cls: Any, parts: list[str], raw: str, where: str) -> Any:
    """Return a copy of plain ``data`` (typed by ``cls``) with ``parts`` set to ``raw``."""
    head, rest = parts[0], parts[1:]
    origin = get_origin(cls)
    if dataclasses.is_dataclass(cls):
        if data is None:  # a section written only when not at its defaults (``pairs``): start from them
            try:
                data = to_dict(cls())
            except (TypeError, ConfigError):
                data = {}
        valid = config_keys(cls)
        open_field = getattr(cls, "_open_field", None)
        if open_field is not None and head not in valid:  # a hyperparameter: typed if 0.1 had it, else as written
            new = dict(data)
            new[head] = _leaf_or_descend(data.get(head), cls._open_types.get(head, Any), rest, raw, where)
            return new
        if head not in valid:
            # named up to the unknown part; a part before the last also names the whole override,
            # and its suggestion is the key up to there (the last part's is the part, as in files)
            done = where.split(".")[: len(where.split(".")) - len(parts)]
            prefix = "".join(f"{p}." for p in done)
            inside = f" in '{where}={raw}'" if rest else ""
            hint = _suggest(head, valid, prefix if rest else "")
            raise ConfigError(f"unknown config key '{prefix}{head}'{inside}{hint}")
        sub_t = _field_types(cls)[head]
        new = dict(data)
        new[head] = _leaf_or_descend(data.get(head), sub_t, rest, raw, where)
        return new
    if origin is tuple:
        (item,) = [a for a in get_args(cls) if a is not Ellipsis]
        items = list(data or [])
        try:
            i = int(head)
        except ValueError:
            raise ConfigError(f"'{where}': '{head}' is not a list position (use 0, 1, ...)") from None
        if not -len(items) <= i < len(items):
            raise ConfigError(f"'{where}': position {i} is out of range (the list has {len(items)} items)")
        items[i] = _leaf_or_descend(items[i], item, rest, raw, where)
        return items
    if origin is dict:
        kt, vt = get_args(cls)
        new = dict(data or {})
        new[head] = _leaf_or_descend(new.get(head), vt, rest, raw, where)
        return new
    raise ConfigError(f"'{where}': cannot descend into a value of type {_type_name(cls)}")


def _leaf_or_descend(current: Any, tp: Any, rest: list[str], raw: str, where: str) -> Any:
    if rest:
        return _set_path(current, tp, rest, raw, where)
    if tp is str or (get_origin(tp) in (Union, types.UnionType) and str in get_args(tp)):
        parsed = raw
    else:
        parsed = _parse_override_value(raw)
    return to_dict(_coerce(parsed, tp, where.split("=")[0]))


def apply_overrides(config: Any, overrides: list[str] | tuple[str, ...]) -> Any:
    """Return ``config`` with ``key.path=value`` overrides applied, each type-checked."""
    cls = type(config)
    data = to_dict(config)
    for text in overrides:
        if "=" not in text:
            raise ConfigError(f"override '{text}' is not of the form key=value (for example model.beta=4)")
        key, raw = text.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override '{text}' has an empty key")
        data = _set_path(data, cls, key.split("."), raw, key)
    return from_dict(cls, data)


def load_config(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = (), cls: type | None = None) -> Any:
    """Read a YAML or JSON config file strictly, then apply dotted overrides."""
    cls = cls or Config
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file '{p}' does not exist; pass the path of a .yaml or .json file")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        mark = getattr(exc, "problem_mark", None)  # YAML: where the parser gave up
        if mark is not None:
            first = f"{getattr(exc, 'problem', None) or first} at line {mark.line + 1}, column {mark.column + 1}"
        raise ConfigError(
            f"config file '{p}' is not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {first}; fix the syntax there"
        ) from None
    return apply_overrides(from_dict(cls, data or {}), list(overrides))


def save_config(config: Any, path: str | os.PathLike) -> None:
    """Write ``config`` as YAML (``.yaml``/``.yml``) or JSON (anything else), atomically."""
    p = Path(path)
    data = to_dict(config)
    if p.suffix.lower() in (".yaml", ".yml"):
        text = yaml.safe_dump(data, sort_keys=False)
    else:
        text = json.dumps(data, indent=2) + "\n"
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, p)


#: A range check of a declared setting: a predicate over the converted value and what it requires.
Check = tuple[Callable[[Any], bool], str]
NON_NEGATIVE: Check = (lambda v: v >= 0, "must be non-negative")
AT_LEAST_1: Check = (lambda v: v >= 1, "must be at least 1")


@dataclass(frozen=True)
class Setting:
    """A setting declared by a registered extension rather than by a config field: a model's
    hyperparameter (``gatedvae.models.Hyper``) or a dataset's own option (``gatedvae.data.Option``).

    ``default``: its value when the config leaves it unset. ``type``: an annotation this module
    checks and converts (``float``, ``int``, ``str``, ``bool``, ``Literal["a", "b"]``,
    ``tuple[int, ...]``); ``None`` takes the default's type. ``check``: an optional range check
    (:data:`NON_NEGATIVE`, :data:`AT_LEAST_1` or ``(predicate, "must ...")``). ``doc``: one line
    for ``gatedvae list``.
    """

    default: Any
    doc: str = ""
    type: Any = None
    check: Check | None = None

    @property
    def annotation(self) -> Any:
        return self.type if self.type is not None else type(self.default)

    def validate(self, where: str, value: Any) -> Any:
        """``value`` converted to this setting's type; a one-line ConfigError naming ``where``
        (``model.beta``, ``data.options.width``) if it does not fit."""
        out = _coerce(value, self.annotation, where)
        if self.check is not None and not self.check[0](out):
            raise ConfigError(f"{where}: {self.check[1]}, got {out}")
        return out


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


# --------------------------------------------------------------------------- the configs


@dataclass(frozen=True)
class DataConfig:
    """Which dataset to use and how to build it.

    ``name``: a registered dataset (``gatedvae list datasets``; checked, with a did-you-mean, when the
    dataset is built): ``dsprites`` (procedural, 737,280 images), ``dsprites_file`` (the official
    ``.npz`` at ``path``), ``ellipses`` (CorrelatedEllipses of CHyVAE), ``images`` (a
    folder of images, or an ``.npy``/``.npz`` array, at ``path`` with a CSV of labels) or
    ``faces`` (procedural faces with tracker-like weak labels: ``pose_noise`` in degrees and
    ``au_noise`` in action-unit intensity, drawn with ``seed``; ``color``, ``image_size`` and
    ``stride`` apply).
    ``options``: the options of a dataset added after 0.1 (``data.options.NAME=value``), declared
    by its registration and checked when it is built; the fields above are the options 0.1's
    datasets use, kept as fields so that config files and run ids stay as they were.
    ``stride`` keeps every k-th value of the named factors, which keeps the factor grid
    intact for exact pair sampling (``{posX: 4, posY: 4}`` shrinks dSprites 16-fold).
    ``holdout`` is the fraction of images held out of training (drawn with ``seed``, the same
    images for every training seed): the trainer never draws them, evaluation measures
    reconstruction on them (docs/metrics.md). 0 (the default, the papers' protocol) trains on
    every image.
    """

    name: str = "dsprites"
    path: str = ""
    labels: str = ""
    data_dir: str = ""
    cache: bool = False
    stride: dict[str, int] = field(default_factory=dict)
    # CorrelatedEllipses
    size: int = 200_000
    correlation: float = 0.5
    levels: int = 16
    seed: int = 0
    # Bring your own images
    color: Literal["gray", "rgb"] = "gray"
    image_size: int = 64
    factor_columns: tuple[str, ...] = ()
    weak_columns: tuple[str, ...] = ()
    # Procedural faces: the tracker labels' noise
    pose_noise: float = 3.0
    au_noise: float = 0.75
    # Images held out of training (reconstruction is measured on them)
    holdout: float = 0.0
    # Options of datasets registered after 0.1 (written to files only when set)
    options: dict[str, Any] = field(default_factory=dict)

    def _to_plain(self) -> dict[str, Any]:
        out = {f.name: to_dict(getattr(self, f.name)) for f in dataclasses.fields(self)}
        if not self.options:
            del out["options"]  # a 0.1 config's file and run id stay byte-identical
        return out

    def __post_init__(self) -> None:
        _require(bool(self.name), "data.name: must not be empty; name a dataset (gatedvae list datasets)")
        _require(0.0 <= self.holdout < 0.5, f"data.holdout: a fraction in [0, 0.5), got {self.holdout}")
        _require(self.pose_noise >= 0, f"data.pose_noise: must be non-negative (degrees), got {self.pose_noise}")
        _require(self.au_noise >= 0, f"data.au_noise: must be non-negative, got {self.au_noise}")
        for k, v in self.stride.items():
            _require(v >= 1, f"data.stride.{k}: a stride must be at least 1, got {v}")
        _require(self.size >= 1, f"data.size: must be at least 1, got {self.size}")
        _require(-1.0 < self.correlation < 1.0, f"data.correlation: must lie in (-1, 1), got {self.correlation}")
        _require(self.levels >= 2, f"data.levels: at least 2 quantisation levels, got {self.levels}")
        _require(8 <= self.image_size <= 1024, f"data.image_size: must lie in 8..1024, got {self.image_size}")


SamplerName = Literal["exact", "cluster", "identity"]


@dataclass(frozen=True)
class PartitionConfig:
    """A named slice of the latent vector and the weak supervision that trains it.

    ``factors`` are the dataset factors (or weak-label columns, for ``cluster``) that
    input and target share in this partition's pairs. ``sampler``: ``exact`` (same factor
    values), ``cluster`` (same k-means cluster of continuous weak labels, ``clusters``
    of them) or ``identity`` (x = x', an ungated "free" partition). ``noise`` replaces that
    fraction of pairs with random targets. ``weight`` is its share in a random schedule.
    """

    name: str
    size: int
    factors: tuple[str, ...] = ()
    sampler: SamplerName = "exact"
    clusters: int = 0
    noise: float = 0.0
    weight: float = 1.0

    def __post_init__(self) -> None:
        _require(bool(self.name), "partition name must not be empty")
        # The name becomes part of file names in the run directory (figures/swap_<name>.png).
        _require(
            not any(c in "/\\:" or ord(c) < 32 for c in self.name)
            and not self.name.startswith(".")
            and len(self.name) <= 100,
            f"partition name {self.name!r} must be a plain name (no '/', '\\', ':', control characters or leading '.'; "
            "at most 100 characters); rename it",
        )
        _require(self.size >= 1, f"partition '{self.name}': size must be at least 1, got {self.size}")
        _require(0.0 <= self.noise <= 1.0, f"partition '{self.name}': noise must lie in [0, 1], got {self.noise}")
        _require(self.weight > 0, f"partition '{self.name}': weight must be positive, got {self.weight}")
        if self.sampler == "identity":
            _require(
                not self.factors,
                f"partition '{self.name}': an identity partition shares no factors; remove its factors",
            )
        else:
            _require(
                bool(self.factors),
                f"partition '{self.name}': name the factors its pairs share (factors: [...]) or use sampler: identity",
            )
        if self.sampler == "cluster":
            _require(
                self.clusters >= 2,
                f"partition '{self.name}': a cluster sampler needs clusters >= 2, got {self.clusters}",
            )


@dataclass(frozen=True)
class GatingConfig:
    """Gated-VAE: latent partitions, the schedule that picks the active one, KL gating.

    ``mode``: ``gate`` (the Gated-VAE: reconstruction gradient only through the active
    partition) or ``clamp`` (DC-IGN: batches in which only the active partition's factors
    vary; the other latents are clamped to their batch mean). ``gate_kl``: the regulariser's
    gradient reaches the encoder only through the step's active partition too (the unclamped one
    in clamp mode; the paper computes it over the whole latent: false).
    """

    enabled: bool = False
    partitions: tuple[PartitionConfig, ...] = ()
    schedule: Literal["cyclic", "random"] = "cyclic"
    gate_kl: bool = False
    mode: Literal["gate", "clamp"] = "gate"

    def __post_init__(self) -> None:
        names = [p.name for p in self.partitions]
        dup = sorted({n for n in names if names.count(n) > 1})
        _require(not dup, f"gating.partitions: duplicate partition names {dup}; give each a unique name")
        if self.enabled:
            _require(
                bool(self.partitions), "gating.enabled is true but gating.partitions is empty; declare the partitions"
            )


PairKind = Literal["none", "k_changed", "partitions"]


@dataclass(frozen=True)
class PairsConfig:
    """Weak supervision from pairs for an *un-gated* run (a gated run draws its pairs from
    ``gating.partitions``): what ``x`` (the input) and ``target`` (the second image) of a step are.

    ``kind``: ``none`` (default: x = x', the input is its own target), ``k_changed`` (Locatello et
    al. 2020: the two images share all factors but ``k``; which ones changed is not told to the
    model) or ``partitions`` (the pairs of ``gating.partitions``' samplers, one partition per step by
    ``gating.schedule``, with ``gating.enabled=false``: the Gated-VAE's own pairs without the gate).
    ``k``: the number of factors that change, an int in 1..K-1 (K = the factors that can change), or
    ``random``: uniform in 1..K-1, drawn per pair. ``tell_k``: hand the model each pair's k (Ada-GVAE
    and Ada-ML-VAE then take the k largest divergences as changed). ``factors``: the factors a pair
    may change (default: every factor with more than one value); the others are always shared.
    ``noise``: the fraction of pairs whose target is replaced by a random image. ``draw``: ``exact``
    (exactly k factors differ: each changed factor takes another of its values) or
    ``disentanglement_lib`` (the reference code's ``simple_dynamics``: the number of changed factors is
    1 or k with probability 1/2 each, and a changed factor's new value may equal the old one).
    ``tell_k``, ``factors``, ``noise``, ``draw`` and a ``k`` other than 1 apply to ``k_changed`` only.
    The section is written to files only when not at its defaults (a 0.1 or 0.2 run's id is unchanged).
    See docs/pairs.md.
    """

    kind: PairKind = "none"
    k: int | Literal["random"] = 1
    tell_k: bool = False
    factors: tuple[str, ...] = ()
    noise: float = 0.0
    draw: Literal["exact", "disentanglement_lib"] = "exact"

    def __post_init__(self) -> None:
        _require(
            self.k == "random" or (isinstance(self.k, int) and self.k >= 1),
            f"pairs.k: the number of changed factors must be at least 1 or 'random', got {self.k!r}",
        )
        _require(0.0 <= self.noise <= 1.0, f"pairs.noise: must lie in [0, 1], got {self.noise}")
        dup = sorted({f for f in self.factors if self.factors.count(f) > 1})
        _require(not dup, f"pairs.factors: {dup} named twice; name each factor once")
        if self.kind != "k_changed":
            changed = [
                key
                for key, value, default in (
                    ("k", self.k, 1),
                    ("tell_k", self.tell_k, False),
                    ("factors", self.factors, ()),
                    ("noise", self.noise, 0.0),
                    ("draw", self.draw, "exact"),
                )
                if value != default
            ]
            _require(
                not changed,
                f"pairs.{changed[0] if changed else ''} applies to pairs.kind=k_changed but pairs.kind is "
                f"'{self.kind}'; set pairs.kind=k_changed or drop it"
                + (" (partitions take their noise from gating.partitions.N.noise)" if "noise" in changed else ""),
            )


#: Serialization compatibility, not a registry: the objective hyperparameters 0.1's flat ``ModelConfig``
#: had as fields, with their 0.1 types. :func:`to_dict` always writes these keys, in this order and
#: ``null`` when unset, so that 0.1's config files, run directories (``config.yaml``, resume compares
#: it) and sweep run ids (the SHA-256 of ``to_dict``) stay byte-identical; :func:`from_dict` and the
#: dotted overrides convert them to these types. A new model declares its hyperparameters in its own
#: file (``gatedvae.models.base.Hyper``) and does not edit this list; a model that reuses one of
#: these names must declare it with the same type (registration checks).
LEGACY_HYPERPARAMETERS: dict[str, Any] = {
    "beta": float | None,
    "gamma": float | None,
    "c_max": float | None,
    "c_steps": int | None,
    "capacity_mode": Literal["abs", "relu"] | None,
    "mmd_lambda": float | None,
    "info_alpha": float | None,
    "mmd_kernel": Literal["rbf", "imq"] | None,
    "lambda_od": float | None,
    "lambda_d": float | None,
    "tc_alpha": float | None,
    "tc_estimator": Literal["mws", "mss"] | None,
    "nu": float | None,
    "info_lambda": float | None,
    "noise_dim": int | None,
    "categorical": tuple[int, ...] | None,
    "gp_weight": float | None,
}


def _frozen(value: Any) -> Any:
    """Lists (from YAML or a caller) as tuples, so that a config stays hashable and compares equal."""
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


@dataclass(frozen=True, init=False)
class ModelConfig:
    """Which objective and network, and the objective's hyperparameters.

    The hyperparameters belong to the model: each model's file declares them (type, default,
    range, a one-line doc; ``gatedvae list models`` prints them). Here they are a mapping,
    ``hyper``, holding only the values set; in files and overrides they sit directly under
    ``model`` (``model.beta: 4``), and ``ModelConfig(name="beta_vae", beta=4.0)``,
    ``cfg.beta`` (``None`` when unset), ``dataclasses.replace(cfg, beta=2.0)`` work as in 0.1.
    A value of ``None`` means the model's default. Unknown names, wrong types and out-of-range
    values are refused when the model is resolved (``gatedvae.models.validate_model_config``),
    before any data is built or anything written.
    """

    name: str = "beta_vae"
    net: Literal["mlp", "conv64"] = "mlp"
    latent_dim: int = 8
    hidden: int = 1200
    likelihood: Literal["bernoulli", "gaussian"] = "bernoulli"
    condition: tuple[str, ...] = ()
    condition_encoder: bool = False
    hyper: dict[str, Any] = field(default_factory=dict)

    # from_dict and the dotted overrides put keys that are not fields into ``hyper``, typed as below
    _open_field: ClassVar[str] = "hyper"
    _open_types: ClassVar[dict[str, Any]] = LEGACY_HYPERPARAMETERS

    def __init__(
        self,
        name: str = "beta_vae",
        net: Literal["mlp", "conv64"] = "mlp",
        latent_dim: int = 8,
        hidden: int = 1200,
        likelihood: Literal["bernoulli", "gaussian"] = "bernoulli",
        *,
        condition: tuple[str, ...] = (),
        condition_encoder: bool = False,
        hyper: dict[str, Any] | None = None,
        **hyperparameters: Any,
    ) -> None:
        values = {**(hyper or {}), **hyperparameters}  # keywords win: dataclasses.replace(cfg, beta=2.0)
        common = {f.name for f in dataclasses.fields(self)}
        for key in values:
            _require(
                isinstance(key, str) and key not in common,
                f"model.{key}: not a hyperparameter name; pass it as ModelConfig({key}=...)",
            )
        setattr_ = object.__setattr__
        setattr_(self, "name", name)
        setattr_(self, "net", net)
        setattr_(self, "latent_dim", latent_dim)
        setattr_(self, "hidden", hidden)
        setattr_(self, "likelihood", likelihood)
        setattr_(self, "condition", _frozen(condition))
        setattr_(self, "condition_encoder", condition_encoder)
        setattr_(self, "hyper", {k: _frozen(v) for k, v in values.items() if v is not None})
        self.__post_init__()

    def __post_init__(self) -> None:
        _require(self.latent_dim >= 1, f"model.latent_dim: must be at least 1, got {self.latent_dim}")
        _require(self.hidden >= 1, f"model.hidden: must be at least 1, got {self.hidden}")

    def __getattr__(self, key: str) -> Any:
        """``cfg.beta``: a hyperparameter's value, ``None`` when unset (the model's default)."""
        hyper = self.__dict__.get("hyper", {})
        if key in hyper:
            return hyper[key]
        if key in LEGACY_HYPERPARAMETERS:
            return None
        raise AttributeError(
            f"ModelConfig has no field or set hyperparameter {key!r}; read an unset one with cfg.hyper.get({key!r})"
        )

    def __hash__(self) -> int:
        common = tuple(getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "hyper")
        return hash((common, tuple(sorted(self.hyper.items()))))

    def _to_plain(self) -> dict[str, Any]:
        """The 0.1 layout: common keys, the legacy hyperparameters (null when unset), then any other
        set hyperparameter in name order, then the condition keys."""
        out: dict[str, Any] = {k: getattr(self, k) for k in ("name", "net", "latent_dim", "hidden", "likelihood")}
        for key in LEGACY_HYPERPARAMETERS:
            out[key] = to_dict(self.hyper.get(key))
        for key in sorted(k for k in self.hyper if k not in LEGACY_HYPERPARAMETERS):
            out[key] = to_dict(self.hyper[key])
        out["condition"] = to_dict(self.condition)
        out["condition_encoder"] = self.condition_encoder
        return out


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation in steps (papers report steps); an epoch-equivalent is shown in logs.

    ``finetune_steps``: after the main phase, train the decoder alone on x = x' with the
    encoder frozen (the Gated-VAE paper's fine-tuning phase, section III-B).
    ``device``: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda``, ``cuda:1``, ...
    ``threads``: torch's intra-op threads (0 = its default; 1 is best when other jobs share
    the cores). ``evaluate``: run ``gatedvae evaluate`` with that preset when training ends.
    ``precision``: ``fp32`` (IEEE float32 everywhere), ``tf32`` (CUDA: float32 matmuls and
    convolutions on TF32 tensor cores), ``bf16`` (CPU or CUDA: the networks' forward passes under
    bfloat16 autocast, the loss terms in float32), ``fp16`` (CUDA: float16 autocast with a
    gradient scaler). ``deterministic``: on CUDA, deterministic algorithms only (cuBLAS workspace,
    cuDNN), for exact resume; ``false`` lets cuDNN pick the fastest. See docs/training.md.
    Both are written to files only when not at their default (a 0.1 run's id is unchanged).
    """

    steps: int = 10_000
    batch_size: int = 128
    lr: float = 1e-4
    seed: int = 0
    device: str = "auto"
    finetune_steps: int = 0
    log_every: int = 100
    checkpoint_every: int = 1000
    image_every: int = 0
    keep_checkpoints: int = 2
    threads: int = 0
    evaluate: Literal["none", "fast", "default"] = "none"
    precision: Literal["fp32", "tf32", "bf16", "fp16"] = "fp32"
    deterministic: bool = True

    def _to_plain(self) -> dict[str, Any]:
        out = {f.name: to_dict(getattr(self, f.name)) for f in dataclasses.fields(self)}
        for key, default in (("precision", "fp32"), ("deterministic", True)):
            if out[key] == default:
                del out[key]  # added in 0.3: a 0.1 config's file and run id stay byte-identical
        return out

    def __post_init__(self) -> None:
        _require(self.steps >= 0, f"train.steps: must be non-negative, got {self.steps}")
        _require(self.batch_size >= 2, f"train.batch_size: must be at least 2 (batch norm), got {self.batch_size}")
        _require(self.lr > 0, f"train.lr: must be positive, got {self.lr}")
        _require(self.finetune_steps >= 0, f"train.finetune_steps: must be non-negative, got {self.finetune_steps}")
        _require(self.log_every >= 1, f"train.log_every: must be at least 1, got {self.log_every}")
        _require(self.checkpoint_every >= 1, f"train.checkpoint_every: must be at least 1, got {self.checkpoint_every}")
        _require(self.image_every >= 0, f"train.image_every: must be non-negative, got {self.image_every}")
        _require(self.keep_checkpoints >= 1, f"train.keep_checkpoints: must be at least 1, got {self.keep_checkpoints}")
        _require(self.threads >= 0, f"train.threads: must be non-negative (0 = torch's default), got {self.threads}")
        _require(
            self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda") or self.device == "mps",
            f"train.device: '{self.device}' is not a device; use auto, cpu, cuda or cuda:N",
        )


@dataclass(frozen=True)
class Config:
    """A whole run: data, model, gating, training, and the weak pairs of an un-gated run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    gating: GatingConfig = field(default_factory=GatingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)

    def _to_plain(self) -> dict[str, Any]:
        """The sections in file order; ``pairs`` (added in 0.3) only when not at its defaults, after
        ``gating``, so that the file and run id of a config without it stay byte-identical."""
        out = {name: to_dict(getattr(self, name)) for name in ("data", "model", "gating")}
        if self.pairs != PairsConfig():
            out["pairs"] = to_dict(self.pairs)
        out["train"] = to_dict(self.train)
        return out

    def __post_init__(self) -> None:
        if self.gating.partitions:
            total = sum(p.size for p in self.gating.partitions)
            _require(
                total == self.model.latent_dim,
                f"gating.partitions sizes sum to {total} but model.latent_dim is {self.model.latent_dim}; "
                "make them equal",
            )
        if self.pairs.kind != "none":
            _require(
                not self.gating.enabled,
                f"pairs.kind={self.pairs.kind} draws the pairs of an un-gated run, but gating.enabled is true (a gated "
                "run draws its pairs from gating.partitions); set gating.enabled=false or pairs.kind=none",
            )
        if self.pairs.kind == "partitions":
            _require(
                bool(self.gating.partitions),
                "pairs.kind=partitions draws from gating.partitions, which is empty; declare the partitions there "
                "(with gating.enabled=false)",
            )


# Used by tests to iterate over every config class.
ALL_CONFIGS: tuple[type, ...] = (DataConfig, GatingConfig, PairsConfig, ModelConfig, TrainConfig, Config)
_ = typing  # keep the import for get_type_hints on forward references
