"""The dataset registry: each dataset's file registers its builder under a name.

A registration states what a user needs to pick and configure the dataset: its name, a one-line
description, its factors, the :class:`~gatedvae.config.DataConfig` fields it reads (``uses``) and
the options of its own (``options``: set as ``data.options.NAME=value``, type- and range-checked
here). :func:`build_dataset` looks the name up (an unknown one fails with a did-you-mean, before
anything is built), checks the options and calls the builder. ``gatedvae list datasets`` prints the
registry; ``gatedvae data describe NAME`` and ``data preview NAME`` build through it.

Adding a dataset is one new file in ``data/`` plus its import line in ``data/__init__.py``::

    from ..config import DataConfig
    from .registry import Option, register_dataset

    @register_dataset(
        "stripes",
        "vertical stripes: period x phase",
        factors="period (8), phase (16)",
        uses=("seed", "stride"),
        options={"width": Option(64, "image side in pixels", check=(lambda v: v >= 8, "must be at least 8"))},
    )
    def build_stripes(cfg: DataConfig, options: dict, progress: bool) -> FactorDataset:
        return make_stripes(options["width"], seed=cfg.seed).subset_grid(dict(cfg.stride))
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import DataConfig, Setting
from ..errors import ConfigError
from ..io import closest
from .base import FactorDataset

__all__ = [
    "DATASETS",
    "DatasetEntry",
    "Option",
    "register_dataset",
    "dataset_entry",
    "resolve_options",
    "validate_data_config",
    "image_shape_of",
    "build_dataset",
    "data_dir",
]

#: Builds the dataset of a config: ``(cfg, options, progress) -> FactorDataset``; ``options`` holds
#: the dataset's own options, checked and with their defaults filled in; ``cfg.stride`` is the
#: builder's to apply (``FactorDataset.subset_grid``, or rendering only the kept classes).
Builder = Callable[[DataConfig, dict[str, Any], bool], FactorDataset]


#: An option a dataset declares (``data.options.NAME``): default, one-line doc, type and range
#: check, the config layer's :class:`~gatedvae.config.Setting`.
Option = Setting


@dataclass(frozen=True)
class DatasetEntry:
    """A registered dataset."""

    name: str
    build: Builder
    description: str
    factors: str
    uses: tuple[str, ...] = ()
    options: dict[str, Option] = field(default_factory=dict)
    image_shape: Callable[[DataConfig], tuple[int, int, int]] | None = None


#: name -> entry, in registration order (iterating gives the names, as 0.1's tuple did).
DATASETS: dict[str, DatasetEntry] = {}


def register_dataset(
    name: str,
    description: str,
    *,
    factors: str,
    uses: tuple[str, ...] = (),
    options: dict[str, Option] | None = None,
    image_shape: Callable[[DataConfig], tuple[int, int, int]] | None = None,
) -> Callable[[Builder], Builder]:
    """Decorator: register ``build`` as the dataset ``name``.

    ``factors``: one line naming the factors (and their class counts). ``uses``: the
    :class:`~gatedvae.config.DataConfig` fields the builder reads. ``options``: its own options.
    ``image_shape``: ``cfg -> (C, H, W)`` of the images without building them (loading a trained
    model to encode new images then skips the dataset); None: build the dataset to know.
    """
    fields = set(DataConfig.__dataclass_fields__)
    unknown = [u for u in uses if u not in fields]
    if unknown:  # a bug in the dataset's file, not user input
        raise TypeError(f"dataset {name}: uses {unknown}, which are not DataConfig fields")
    specs = dict(options or {})
    for key, spec in specs.items():
        if key in fields:
            raise TypeError(f"dataset {name}: option '{key}' is a DataConfig field; list it in uses instead")
        try:
            spec.validate(f"data.options.{key}", spec.default)
        except ConfigError as exc:
            raise TypeError(f"dataset {name}: the default of option '{key}' is invalid: {exc}") from None

    def deco(build: Builder) -> Builder:
        DATASETS[name] = DatasetEntry(name, build, description, factors, tuple(uses), specs, image_shape)
        return build

    return deco


def dataset_entry(name: str) -> DatasetEntry:
    """The registered dataset ``name``; a one-line ConfigError with a did-you-mean otherwise."""
    if name not in DATASETS:
        near = closest(name, DATASETS)
        hint = f"; did you mean {near!r}?" if near else ""
        raise ConfigError(f"data.name: {name!r} is not one of {', '.join(repr(n) for n in DATASETS)}{hint}")
    return DATASETS[name]


def resolve_options(cfg: DataConfig) -> dict[str, Any]:
    """The dataset's own options: its defaults, overridden by ``cfg.options`` (converted and checked)."""
    entry = dataset_entry(cfg.name)
    out = {k: o.default for k, o in entry.options.items()}
    for key, value in cfg.options.items():
        if key not in entry.options:
            has = ", ".join(sorted(entry.options)) or "none"
            near = closest(key, entry.options)
            fix = f"did you mean '{near}'?" if near else "remove it"
            raise ConfigError(f"data.options.{key} is not an option of dataset {cfg.name} (it has: {has}); {fix}")
        out[key] = entry.options[key].validate(f"data.options.{key}", value)
    return out


def validate_data_config(cfg: DataConfig) -> None:
    """What can be refused about the data section before anything is built or written: the
    dataset's name and its options."""
    resolve_options(cfg)


def image_shape_of(cfg: DataConfig) -> tuple[int, int, int] | None:
    """``(C, H, W)`` of the images ``cfg`` describes, when its dataset can tell without building them."""
    entry = dataset_entry(cfg.name)
    return tuple(entry.image_shape(cfg)) if entry.image_shape is not None else None


def build_dataset(cfg: DataConfig, progress: bool = False) -> FactorDataset:
    """Build (or load from the cache) the dataset a :class:`DataConfig` describes."""
    options = resolve_options(cfg)
    return DATASETS[cfg.name].build(cfg, options, progress)


def data_dir(configured: str = "") -> Path:
    """The on-disk cache directory: ``data.data_dir``, else ``$GATEDVAE_DATA``, else
    ``~/.cache/gatedvae``."""
    if configured:
        return Path(configured).expanduser()
    env = os.environ.get("GATEDVAE_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "gatedvae"
