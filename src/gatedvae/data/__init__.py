"""Datasets with known factors, and the weak-supervision pair samplers.

``build_dataset(DataConfig)`` is the one entry point the trainer and the CLI use; it looks the
dataset up in the registry (:mod:`gatedvae.data.registry`), where each dataset's file registers
its builder. Adding a dataset: one file, plus its import line below.
"""

from __future__ import annotations

from . import dsprites, ellipses, faces, images  # noqa: F401  (registration; the order is data.name's listing)
from .base import FactorDataset, ImageStore, PackedBinaryStore, Uint8Store
from .factors import FactorSpace
from .pairs import (
    ClusterPairSampler,
    ExactPairSampler,
    IdentityPairSampler,
    KChangedPairSampler,
    PairBatch,
    PairSampler,
    make_pair_sampler,
    make_sampler,
)
from .registry import (
    DATASETS,
    DatasetEntry,
    Option,
    build_dataset,
    data_dir,
    dataset_entry,
    register_dataset,
    validate_data_config,
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
    "KChangedPairSampler",
    "make_sampler",
    "make_pair_sampler",
    "data_dir",
    "DATASETS",
    "DatasetEntry",
    "Option",
    "dataset_entry",
    "register_dataset",
    "validate_data_config",
]

# The benchmark data sets read from their official files (issue 20), listed after 0.1's.
from . import cars3d, celeba, dsprites_variants, mnist, mpi3d, shapes3d, smallnorb  # noqa: E402, F401
