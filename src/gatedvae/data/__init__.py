"""Datasets with known factors, and the weak-supervision pair samplers.

``build_dataset(DataConfig)`` is the one entry point the trainer and the CLI use.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..config import DataConfig
from ..errors import DataError
from .base import FactorDataset, ImageStore, PackedBinaryStore, Uint8Store
from .factors import FactorSpace
from .pairs import (
    ClusterPairSampler,
    ExactPairSampler,
    IdentityPairSampler,
    PairBatch,
    PairSampler,
    make_sampler,
)

__all__ = [
    "FactorDataset",
    "FactorSpace",
    "ImageStore",
    "PackedBinaryStore",
    "Uint8Store",
    "build_dataset",
    "PairBatch",
    "PairSampler",
    "ExactPairSampler",
    "ClusterPairSampler",
    "IdentityPairSampler",
    "make_sampler",
    "data_dir",
    "DATASETS",
]

DATASETS = ("dsprites", "dsprites_file", "ellipses", "images", "faces")


def data_dir(configured: str = "") -> Path:
    """The on-disk cache directory: ``data.data_dir``, else ``$GATEDVAE_DATA``, else
    ``~/.cache/gatedvae``."""
    if configured:
        return Path(configured).expanduser()
    env = os.environ.get("GATEDVAE_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "gatedvae"


def build_dataset(cfg: DataConfig, progress: bool = False) -> FactorDataset:
    """Build (or load from the cache) the dataset a :class:`DataConfig` describes."""
    if cfg.name == "dsprites":
        from .dsprites import make_dsprites, make_dsprites_strided

        if cfg.stride and not cfg.cache:
            # only the kept classes are rendered: memory in proportion (docs/performance.md)
            return make_dsprites_strided(dict(cfg.stride))
        ds = make_dsprites(cache_dir=data_dir(cfg.data_dir) if cfg.cache else None, progress=progress)
    elif cfg.name == "dsprites_file":
        from .dsprites import load_dsprites_npz

        if not cfg.path:
            raise DataError("data.path is empty; set it to the official dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz")
        ds = load_dsprites_npz(cfg.path)
    elif cfg.name == "ellipses":
        from .ellipses import make_ellipses

        ds = make_ellipses(size=cfg.size, correlation=cfg.correlation, levels=cfg.levels, seed=cfg.seed)
    elif cfg.name == "faces":
        from .faces import make_faces

        # rendered strided (only the kept classes are drawn), so no subset_grid afterwards
        return make_faces(
            stride=dict(cfg.stride),
            color=cfg.color,
            image_size=cfg.image_size,
            pose_noise=cfg.pose_noise,
            au_noise=cfg.au_noise,
            seed=cfg.seed,
            progress=progress,
        )
    elif cfg.name == "images":
        from .images import load_images

        ds = load_images(
            cfg.path,
            labels=cfg.labels,
            factor_columns=cfg.factor_columns,
            weak_columns=cfg.weak_columns,
            color=cfg.color,
            image_size=cfg.image_size,
        )
    else:  # pragma: no cover - DataConfig's Literal already refuses other names
        raise DataError(f"unknown dataset '{cfg.name}'; choose one of {', '.join(DATASETS)}")
    return ds.subset_grid(dict(cfg.stride))
