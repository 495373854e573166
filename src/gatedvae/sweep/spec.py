"""Sweep files and plans: from a grid description to one resolved config per run.

A sweep file (YAML, see ``docs/sweeps.md``) names a base config, optional named variants, a grid
of dotted overrides and the seeds::

    name: table1
    base: ../dsprites_beta_vae.yaml        # a config file (relative to this file) or an inline mapping
    overrides: [train.steps=20000]         # applied to every run
    variants:                              # optional named arms, each a base and/or overrides
      - {name: beta_vae, base: ../dsprites_beta_vae.yaml}
      - {name: beta_vae_gated, base: ../dsprites_beta_vae_gated.yaml}
    grid:                                  # dotted key -> values; the runs are the cartesian product
      model.hidden: [256, 1200]
    seeds: 5                               # 0..4, or a list [0, 1, 7]
    evaluate: {metrics: [dci_lasso, dci_random_forest, mig], preset: fast}

A Python sweep file defines ``sweep()`` returning either such a mapping or a list of configs
(:class:`~gatedvae.config.Config` objects, plain mappings, or ``(name, config)`` pairs).

:func:`plan_sweep` resolves every run through :mod:`gatedvae.config` (so a typo fails here, with
the run's name, and not at run 317), checks what can be checked without training (the model's
hyperparameters, the metric names, the factor names of partitions against the dataset), gives
each run a stable id (a hash of its resolved config) and a readable name, and
:func:`write_manifest` stores the result as ``SWEEP_DIR/manifest.json``.

Runs that differ only in ``train.seed`` form one *configuration* (one row of the report); runs
whose configurations differ only in the ``gating`` section and in ``gating.enabled`` form a
gated vs un-gated comparison (Gated-VAE paper ``000_fc03c6fb001bc541.txt``, Table I).
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from ..config import Config, apply_overrides, from_dict, load_config, to_dict
from ..errors import ConfigError, GatedVAEError
from ..io import atomic_json, closest

__all__ = [
    "EvalSettings",
    "PlannedRun",
    "Plan",
    "load_sweep",
    "plan_sweep",
    "config_hash",
    "write_manifest",
    "read_manifest",
    "MANIFEST",
    "FORMAT",
]

FORMAT = "gatedvae-sweep-1"
MANIFEST = "manifest.json"

_SWEEP_KEYS = ("name", "base", "overrides", "variants", "grid", "seeds", "evaluate", "report", "resources")
_VARIANT_KEYS = ("name", "base", "overrides")
_EVAL_KEYS = ("metrics", "preset", "seed", "figures")
_REPORT_KEYS = ("metrics", "compare_ignore", "reference")
_RESOURCE_KEYS = ("cpus", "gpus")


@dataclass(frozen=True)
class EvalSettings:
    """How each run is evaluated when its training ends (``gatedvae evaluate`` settings).

    ``metrics``: metric names or aliases (None = every per-run metric); ``preset``: ``fast`` or
    ``default`` sample sizes; ``seed``: the evaluation's seed; ``figures``: write the figures
    (Hinton diagrams, traversals, ...) that the HTML report embeds.
    """

    metrics: tuple[str, ...] | None = None
    preset: str = "fast"
    seed: int = 0
    figures: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "metrics": list(self.metrics) if self.metrics is not None else None,
            "preset": self.preset,
            "seed": self.seed,
            "figures": self.figures,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> EvalSettings | None:
        if data is None:
            return None
        metrics = data.get("metrics")
        return cls(
            tuple(metrics) if metrics is not None else None,
            data.get("preset", "fast"),
            int(data.get("seed", 0)),
            bool(data.get("figures", True)),
        )


@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep: its resolved config, stable id and readable names."""

    id: str
    name: str
    label: str
    variant: str | None
    seed: int
    params: dict[str, Any]
    config: Config
    evaluate: EvalSettings | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "label": self.label,
            "variant": self.variant,
            "seed": self.seed,
            "params": self.params,
            "evaluate": self.evaluate.to_json() if self.evaluate else None,
            "config": to_dict(self.config),
        }


@dataclass
class Plan:
    """A resolved sweep: what ``manifest.json`` holds."""

    name: str
    source: str
    runs: list[PlannedRun]
    report: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, float] = field(default_factory=lambda: {"cpus": 1, "gpus": 0})

    def to_json(self) -> dict[str, Any]:
        from .. import __version__

        return {
            "format": FORMAT,
            "name": self.name,
            "source": self.source,
            "gatedvae_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "resources": self.resources,
            "report": self.report,
            "runs": [r.to_json() for r in self.runs],
        }


# --------------------------------------------------------------------------- helpers
def config_hash(config: Config) -> str:
    """The run id: 12 hex digits of the SHA-256 of the resolved config's canonical JSON."""
    text = json.dumps(to_dict(config), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def _strict_keys(data: dict, valid: tuple[str, ...], where: str) -> None:
    for key in data:
        if key not in valid:
            close = closest(str(key), valid, cutoff=0.5)
            hint = f"; did you mean '{close}'?" if close else ""
            raise ConfigError(f"{where}: unknown key '{key}'{hint} valid keys: {', '.join(valid)}")


def _override_text(key: str, value: Any) -> str:
    """A typed YAML value as the text of a dotted override (JSON is a YAML subset)."""
    return f"{key}={value if isinstance(value, str) else json.dumps(value)}"


def _short(value: Any) -> str:
    """A value as it appears in a run's name."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list) and value and all(isinstance(v, dict) and "name" in v for v in value):
        return "[" + ",".join(str(v["name"]) for v in value) + "]"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _part(shown: str, key: str, value: Any) -> str:
    """One component of a run's name: ``beta=4``; ``gating.enabled`` reads ``gated``/``ungated``."""
    if key == "gating.enabled" and isinstance(value, bool):
        return "gated" if value else "ungated"
    return f"{shown}={_short(value)}"


def _display_keys(keys: list[str]) -> dict[str, str]:
    """Dotted key -> the name shown in labels: the last component unless two keys share it."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last, strict=True)}


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: data}


def _load_base(spec: Any, sweep_path: Path, where: str) -> Config:
    if isinstance(spec, dict):
        try:
            return from_dict(Config, spec)
        except ConfigError as exc:
            raise ConfigError(f"{where}: inline base: {exc}") from None
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"{where}: base must be a config file path or an inline mapping, got {spec!r}")
    tried = [sweep_path.parent / spec, Path(spec)]
    for p in tried:
        if p.is_file():
            try:
                return load_config(p)
            except ConfigError as exc:
                raise ConfigError(f"{where}: base {p}: {exc}") from None
    raise ConfigError(
        f"{where}: base config '{spec}' not found (looked in {tried[0].parent or '.'} and the current "
        "directory); fix the path"
    )


def _overrides(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: overrides must be a list of 'key=value' strings, got {value!r}")
    return list(value)


def _seeds(value: Any, where: str) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise ConfigError(f"{where}: seeds must be a count or a list of integers, got {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise ConfigError(f"{where}: seeds: a count must be at least 1, got {value}")
        return list(range(value))
    if (
        isinstance(value, list)
        and value
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value)
    ):
        if len(set(value)) != len(value):
            raise ConfigError(f"{where}: seeds {value} repeat a seed; list each once")
        return list(value)
    raise ConfigError(f"{where}: seeds must be a count or a non-empty list of non-negative integers, got {value!r}")


def _eval_settings(value: Any, where: str) -> EvalSettings | None:
    from ..evaluation import SAMPLE_SIZES, resolve_metrics

    if value is None or value is False:
        return None
    if value is True:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(
            f"{where}: evaluate must be a mapping (metrics, preset, seed, figures) or false, got {value!r}"
        )
    _strict_keys(value, _EVAL_KEYS, f"{where}: evaluate")
    metrics = value.get("metrics")
    if metrics is not None:
        if isinstance(metrics, str):
            metrics = [m for m in metrics.split(",") if m.strip()]
        if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
            raise ConfigError(f"{where}: evaluate.metrics must be a list of metric names, got {metrics!r}")
        try:
            resolve_metrics(metrics)
        except ConfigError as exc:
            raise ConfigError(f"{where}: evaluate.metrics: {exc}") from None
        metrics = tuple(m.strip() for m in metrics)
    preset = value.get("preset", "fast")
    if preset not in SAMPLE_SIZES:
        raise ConfigError(f"{where}: evaluate.preset '{preset}' is not one of {', '.join(SAMPLE_SIZES)}")
    seed = value.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"{where}: evaluate.seed must be a non-negative integer, got {seed!r}")
    figures = value.get("figures", True)
    if not isinstance(figures, bool):
        raise ConfigError(f"{where}: evaluate.figures must be true or false, got {figures!r}")
    return EvalSettings(metrics, preset, seed, figures)


def _report_settings(value: Any, where: str) -> dict[str, Any]:
    """``report:``: the scores shown (``metrics``) and what to ignore when pairing gated with
    un-gated configurations (``compare_ignore``: dotted config keys or sections; default ``[gating]``)."""
    report = value or {}
    if not isinstance(report, dict):
        raise ConfigError(f"{where}: report must be a mapping (metrics, compare_ignore), got {report!r}")
    _strict_keys(report, _REPORT_KEYS, f"{where}: report")
    metrics = report.get("metrics")
    if metrics is not None and (not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics)):
        raise ConfigError(f"{where}: report.metrics must be a list of score names like dci_lasso.disentanglement")
    ignore = report.get("compare_ignore", ["gating"])
    if not isinstance(ignore, list) or not all(isinstance(k, str) for k in ignore):
        raise ConfigError(
            f"{where}: report.compare_ignore must be a list of dotted config keys, e.g. [gating, train.finetune_steps]"
        )
    flat = _flatten(to_dict(Config()))
    sections = {k.rsplit(".", 1)[0] for k in flat} | set(flat)
    for key in ignore:
        if key not in sections:
            close = closest(key, sorted(sections))
            hint = f"; did you mean '{close}'?" if close else ""
            raise ConfigError(f"{where}: report.compare_ignore: '{key}' is not a config key or section{hint}")
    if "gating" not in ignore and "gating.enabled" not in ignore:
        ignore = ["gating.enabled", *ignore]  # the arms differ in gating.enabled by definition
    reference = report.get("reference")
    if reference is not None and (not isinstance(reference, str) or not reference.strip()):
        raise ConfigError(
            f"{where}: report.reference must name one configuration (a variant's name, e.g. gated_vae), "
            f"got {reference!r}"
        )
    out = {"metrics": list(metrics) if metrics else None, "compare_ignore": list(ignore)}
    if reference is not None:
        out["reference"] = reference.strip()  # (absent otherwise: manifests and run ids as before)
    return out


def _resources(value: Any, where: str) -> dict[str, float]:
    out = {"cpus": 1, "gpus": 0}
    if value is None:
        return out
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: resources must be a mapping (cpus, gpus), got {value!r}")
    _strict_keys(value, _RESOURCE_KEYS, f"{where}: resources")
    for key in _RESOURCE_KEYS:
        if key in value:
            v = value[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (key == "cpus" and v <= 0):
                raise ConfigError(
                    f"{where}: resources.{key} must be a {'positive' if key == 'cpus' else 'non-negative'} number, "
                    f"got {v!r}"
                )
            out[key] = v
    return out


# --------------------------------------------------------------------------- loading
def load_sweep(path: str | os.PathLike) -> dict[str, Any]:
    """Read a sweep file (``.yaml``/``.yml``/``.json`` or ``.py``) into its plain mapping or list.

    Returns ``{"spec": mapping}`` or ``{"configs": [...], "module": {...}}`` for the list form of
    a Python file.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"sweep file '{p}' does not exist; pass a .yaml or .py sweep file (see configs/sweeps/)")
    if p.suffix == ".py":
        name = f"_gatedvae_sweep_{abs(hash(str(p.resolve())))}"
        spec = importlib.util.spec_from_file_location(name, p)
        if spec is None or spec.loader is None:
            raise ConfigError(f"sweep file '{p}' cannot be imported as Python")
        module = importlib.util.module_from_spec(spec)
        try:
            sys.modules[name] = module
            spec.loader.exec_module(module)
            fn = getattr(module, "sweep", None)
            if not callable(fn):
                raise ConfigError(
                    f"sweep file '{p}' defines no function sweep(); define one that returns a list of configs"
                )
            result = fn()
        except GatedVAEError:
            raise
        except Exception as exc:  # the user's code: report it in one line
            raise ConfigError(f"sweep file '{p}': {type(exc).__name__}: {exc}") from None
        finally:
            sys.modules.pop(name, None)
        if isinstance(result, dict):
            return {"spec": result}
        if isinstance(result, (list, tuple)):
            extra = {
                k.lower(): getattr(module, k) for k in ("NAME", "EVALUATE", "REPORT", "RESOURCES") if hasattr(module, k)
            }
            return {"configs": list(result), "module": extra}
        raise ConfigError(
            f"sweep file '{p}': sweep() returned {type(result).__name__}; return a list of configs or a mapping"
        )
    try:
        text = p.read_text(encoding="utf-8")
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"sweep file '{p}' is not valid YAML: {first}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"sweep file '{p}' must hold a mapping (base, grid, seeds, ...), got {type(data).__name__}")
    return {"spec": data}


# --------------------------------------------------------------------------- planning
def plan_sweep(path: str | os.PathLike, check_data: bool = True) -> Plan:
    """Resolve a sweep file into a :class:`Plan`: one validated config per run.

    Raises ConfigError naming the sweep file, the run and the key for any invalid value.
    ``check_data``: build each distinct dataset once to check factor names (cheap for the
    procedural datasets; turn off for huge image folders).
    """
    p = Path(path)
    loaded = load_sweep(p)
    where = f"sweep '{p}'"
    if "configs" in loaded:
        plan = _plan_list(loaded["configs"], loaded["module"], p, where)
    else:
        plan = _plan_spec(loaded["spec"], p, where)
    _validate(plan, check_data, where)
    return plan


def _resolve(base: Config, overrides: list[str], where: str, run: str) -> Config:
    try:
        return apply_overrides(base, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{where}, run '{run}': {exc}") from None


def _finish_eval(config: Config, sweep_eval: EvalSettings | None) -> tuple[Config, EvalSettings | None]:
    """Evaluation is the sweep's job: the run's own ``train.evaluate`` moves into the plan."""
    ev = sweep_eval
    if ev is None and config.train.evaluate != "none":
        ev = EvalSettings(None, config.train.evaluate, config.train.seed, True)
    if config.train.evaluate != "none":
        config = replace(config, train=replace(config.train, evaluate="none"))
    return config, ev


def _plan_spec(spec: dict[str, Any], p: Path, where: str) -> Plan:
    _strict_keys(spec, _SWEEP_KEYS, where)
    name = spec.get("name", p.stem)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: name must be a non-empty string, got {name!r}")
    common = _overrides(spec.get("overrides"), f"{where}: overrides")
    grid = spec.get("grid") or {}
    if not isinstance(grid, dict):
        raise ConfigError(f"{where}: grid must map dotted keys to lists of values, got {grid!r}")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: grid.{key} must be a non-empty list of values, got {values!r}")
        try:
            json.dumps(values)
        except (TypeError, ValueError):
            raise ConfigError(
                f"{where}: grid.{key} holds a value that is not plain data (number, string, list, "
                f"mapping): {values!r}; quote it"
            ) from None
    seeds = _seeds(spec.get("seeds"), where)
    if seeds is not None and "train.seed" in grid:
        raise ConfigError(f"{where}: both seeds and grid['train.seed'] are given; keep one")
    if seeds is None and "train.seed" in grid:
        grid = dict(grid)
        seeds = _seeds(grid.pop("train.seed"), f"{where}: grid.train.seed")
    sweep_eval = _eval_settings(spec.get("evaluate"), where)
    report = _report_settings(spec.get("report"), where)

    variants_spec = spec.get("variants")
    variants: list[tuple[str | None, Config, list[str]]] = []
    if variants_spec is None:
        if "base" not in spec:
            raise ConfigError(f"{where}: no base; give base: (a config file or an inline mapping) or variants:")
        variants.append((None, _load_base(spec["base"], p, where), []))
    else:
        if not isinstance(variants_spec, list) or not variants_spec:
            raise ConfigError(f"{where}: variants must be a non-empty list of {{name, base, overrides}}")
        seen: set[str] = set()
        for i, v in enumerate(variants_spec):
            vw = f"{where}: variants.{i}"
            if not isinstance(v, dict):
                raise ConfigError(f"{vw}: expected a mapping with name, base, overrides, got {v!r}")
            _strict_keys(v, _VARIANT_KEYS, vw)
            vname = v.get("name")
            if not isinstance(vname, str) or not vname:
                raise ConfigError(f"{vw}: every variant needs a name")
            if vname in seen:
                raise ConfigError(f"{vw}: variant name '{vname}' is used twice; give each a unique name")
            seen.add(vname)
            if "base" in v:
                base = _load_base(v["base"], p, f"{vw} ({vname})")
            elif "base" in spec:
                base = _load_base(spec["base"], p, where)
            else:
                raise ConfigError(f"{vw} ({vname}): no base; give the variant or the sweep a base")
            variants.append((vname, base, _overrides(v.get("overrides"), f"{vw}: overrides")))

    keys = list(grid)
    shown = _display_keys(keys)
    runs: list[PlannedRun] = []
    for vname, base, v_over in variants:
        for combo in itertools.product(*(grid[k] for k in keys)):
            params = dict(zip(keys, combo, strict=True))
            parts = ([vname] if vname else []) + [_part(shown[k], k, v) for k, v in params.items()]
            label = ",".join(parts) or name
            over = common + v_over + [_override_text(k, v) for k, v in params.items()]
            resolved = _resolve(base, over, where, label)
            for seed in seeds if seeds is not None else [resolved.train.seed]:
                run_name = f"{label},seed={seed}"
                cfg = _resolve(resolved, [f"train.seed={seed}"], where, run_name)
                cfg, ev = _finish_eval(cfg, sweep_eval)
                runs.append(PlannedRun(config_hash(cfg), run_name, label, vname, seed, params, cfg, ev))
    _check_unique(runs, where)
    return Plan(name, str(p), runs, report, _resources(spec.get("resources"), where))


def _plan_list(items: list[Any], module: dict[str, Any], p: Path, where: str) -> Plan:
    if not items:
        raise ConfigError(f"{where}: sweep() returned no configs")
    named: list[tuple[str | None, Config]] = []
    for i, item in enumerate(items):
        given = None
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            given, item = item
        run = given or f"#{i}"
        try:
            if isinstance(item, Config):
                cfg = from_dict(Config, to_dict(item))
            elif isinstance(item, dict):
                cfg = from_dict(Config, item)
            else:
                raise ConfigError(f"expected a Config, a mapping or a (name, config) pair, got {type(item).__name__}")
        except ConfigError as exc:
            raise ConfigError(f"{where}, run '{run}': {exc}") from None
        named.append((given, cfg))
    sweep_eval = _eval_settings(module.get("evaluate"), where)
    # Labels from the keys that differ between the configs (the seed aside).
    flats = [_flatten({k: v for k, v in to_dict(c).items()}) for _, c in named]
    varying = [k for k in flats[0] if k != "train.seed" and any(f.get(k) != flats[0].get(k) for f in flats)]
    shown = _display_keys(varying)
    name = module.get("name") or p.stem
    runs = []
    for (given, cfg), flat in zip(named, flats, strict=True):
        params = {k: flat[k] for k in varying}
        label = ",".join(_part(shown[k], k, v) for k, v in params.items()) or str(name)
        run_name = given or f"{label},seed={cfg.train.seed}"
        cfg, ev = _finish_eval(cfg, sweep_eval)
        runs.append(PlannedRun(config_hash(cfg), run_name, label, None, cfg.train.seed, params, cfg, ev))
    _check_unique(runs, where)
    return Plan(
        str(name),
        str(p),
        runs,
        _report_settings(module.get("report"), where),
        _resources(module.get("resources"), where),
    )


def _check_unique(runs: list[PlannedRun], where: str) -> None:
    seen: dict[str, str] = {}
    names: set[str] = set()
    for r in runs:
        if r.id in seen:
            raise ConfigError(
                f"{where}: runs '{seen[r.id]}' and '{r.name}' resolve to the same config; remove the duplicate"
            )
        seen[r.id] = r.name
        if r.name in names:
            raise ConfigError(f"{where}: two runs are named '{r.name}'; give them distinct names")
        names.add(r.name)


def _validate(plan: Plan, check_data: bool, where: str) -> None:
    """What can be checked before training: the model and its hyperparameters, the dataset's name
    and options, conditions, factor names."""
    from ..data import build_dataset
    from ..run import validate

    datasets: dict[str, Any] = {}
    for run in plan.runs:
        cfg = run.config
        try:
            validate(cfg)  # model, hyperparameters, data options, partitions, what the model cannot train
            if check_data and (cfg.gating.enabled or cfg.model.condition):
                key = json.dumps(to_dict(cfg.data), sort_keys=True)
                if key not in datasets:
                    datasets[key] = build_dataset(cfg.data)
                ds = datasets[key]
                known = list(ds.factor_space.names) + list(ds.weak_names)
                used = (
                    [(f"gating.partitions '{q.name}'", f) for q in cfg.gating.partitions for f in q.factors]
                    if cfg.gating.enabled
                    else []
                )
                used += [("model.condition", f) for f in cfg.model.condition]
                for what, f in used:
                    if f not in known:
                        close = closest(f, known)
                        hint = f"; did you mean '{close}'?" if close else ";"
                        raise ConfigError(
                            f"{what} names factor '{f}' that dataset '{ds.name}' lacks{hint} it has: {', '.join(known)}"
                        )
                if cfg.train.batch_size > len(ds):
                    raise ConfigError(
                        f"train.batch_size={cfg.train.batch_size} exceeds the dataset's {len(ds)} images; lower it"
                    )
        except GatedVAEError as exc:
            raise ConfigError(f"{where}, run '{run.name}': {exc}") from None


# --------------------------------------------------------------------------- manifest
def write_manifest(plan: Plan, sweep_dir: str | os.PathLike) -> tuple[Path, dict[str, int]]:
    """Write ``SWEEP_DIR/manifest.json`` (atomically); returns its path and counts.

    Re-planning into an existing sweep keeps the ids of runs whose resolved config is unchanged
    (so a config field added to gatedvae later does not orphan finished runs); run directories
    no longer in the plan are left on disk untouched (counted as ``dropped``).
    """
    d = Path(sweep_dir)
    d.mkdir(parents=True, exist_ok=True)
    old_ids: dict[str, str] = {}
    old = d / MANIFEST
    dropped = 0
    if old.is_file():
        try:
            previous = read_manifest(d)
        except GatedVAEError:
            previous = None
        if previous is not None:
            for entry in previous["runs"]:
                try:
                    key = json.dumps(to_dict(from_dict(Config, entry["config"])), sort_keys=True)
                except GatedVAEError:
                    continue
                old_ids[key] = entry["id"]
    runs = []
    kept = 0
    for r in plan.runs:
        key = json.dumps(to_dict(r.config), sort_keys=True)
        if key in old_ids:
            kept += 1
            r = replace(r, id=old_ids.pop(key))
        runs.append(r)
    dropped = len(old_ids)
    plan.runs = runs
    doc = plan.to_json()
    atomic_json(d / MANIFEST, doc, indent=1)
    return d / MANIFEST, {"runs": len(runs), "kept": kept, "dropped": dropped}


def read_manifest(sweep_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a sweep directory (one-line error when it is missing or foreign)."""
    d = Path(sweep_dir)
    path = d / MANIFEST
    if not d.is_dir():
        raise GatedVAEError(
            f"sweep directory '{d}' does not exist; create it with gatedvae sweep plan SWEEP_FILE --out {d}"
        )
    if not path.is_file():
        raise GatedVAEError(
            f"'{d}' is not a sweep directory (no {MANIFEST}); create it with gatedvae sweep plan SWEEP_FILE --out {d}"
        )
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise GatedVAEError(f"'{path}' is damaged ({exc.msg} at line {exc.lineno}); plan the sweep again") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise GatedVAEError(
            f"'{path}' is not a gatedvae sweep manifest "
            f"(format {doc.get('format') if isinstance(doc, dict) else None!r})"
        )
    return doc
