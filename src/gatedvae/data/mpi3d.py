"""MPI3D (Gondal et al., NeurIPS 2019): 1,036,800 RGB 64x64 images of a robot arm holding an
object, over the full grid of seven factors, in three renderings: ``toy`` (simple rendering),
``realistic`` (realistic rendering) and ``real`` (camera images of the real platform).

Each official ``mpi3d_<variant>.npz`` holds one array, ``images`` (uint8 ``(1036800, 64, 64, 3)``),
in row-major order of the factors (the publishers' ``reshape([6, 6, 2, 3, 3, 40, 40, 64, 64, 3])``):

================= ===== ===================================================
factor            size  classes
================= ===== ===================================================
object_color      6     white, green, red, blue, brown, olive
object_shape      6     cone, cube, cylinder, hexagonal, pyramid, sphere
object_size       2     small, large
camera_height     3     top, center, bottom
background_color  3     purple, sea green, salmon
horizontal_axis   40    0..39 (first degree of freedom of the arm)
vertical_axis     40    0..39 (second degree of freedom)
================= ===== ===================================================

The file carries no labels: the classes are the grid position, so a file of another length is
refused. 12.7 GB of pixels: converted once, streaming (a deflated member is decompressed a chunk at
a time), into a memory-mapped cache (:mod:`gatedvae.data.cache`) that training gathers from with
the process's anonymous memory bounded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from ..config import DataConfig
from ..errors import DataError
from .base import FactorDataset
from .cache import STORE_OPTION, NpzMember, chunk_rows, materialise, nhwc_to_nchw, source_meta
from .factors import FactorSpace
from .registry import Option, register_dataset
from .sources import default_path, require_file

__all__ = ["MPI3D_SPACE", "MPI3D_VARIANTS", "load_mpi3d"]

MPI3D_VARIANTS = ("toy", "realistic", "real")
MPI3D_SPACE = FactorSpace(
    (
        "object_color",
        "object_shape",
        "object_size",
        "camera_height",
        "background_color",
        "horizontal_axis",
        "vertical_axis",
    ),
    (6, 6, 2, 3, 3, 40, 40),
)


def _download_name(variant: str) -> str:
    return "mpi3d" if variant == "toy" else f"mpi3d_{variant}"


def load_mpi3d(
    path: str | Path,
    variant: str = "toy",
    mode: str = "mmap",
    data_dir_setting: str = "",
    progress: bool = False,
    space: FactorSpace | None = None,
) -> FactorDataset:
    """An official ``mpi3d_<variant>.npz`` as a full-grid dataset over ``space`` (the official
    :data:`MPI3D_SPACE` when None; tests pass a smaller grid with a file of its size)."""
    space = MPI3D_SPACE if space is None else space
    path = Path(path).expanduser()
    hint = f"download it again (gatedvae data download {_download_name(variant)})"
    member = NpzMember(path, "images", hint)
    shape, dtype = tuple(member.shape), member.dtype
    if len(shape) != 4 or shape[1:] != (64, 64, 3) or dtype != np.uint8:
        raise DataError(f"{path}: 'images' is {shape} {dtype}, expected uint8 (N, 64, 64, 3); {hint}")
    n = shape[0]
    if n != len(space):
        raise DataError(
            f"{path}: 'images' holds {n:,} images, the MPI3D grid has {len(space):,} "
            f"({' x '.join(map(str, space.sizes))}); the file is truncated or not MPI3D, {hint}"
        )
    rows = chunk_rows(64 * 64 * 3)

    def chunks():
        for block in member.chunks(rows):  # (m, 64, 64, 3)
            yield nhwc_to_nchw(block)  # (m, 3, 64, 64)

    store = materialise(
        "mpi3d", mode, (n, 3, 64, 64), chunks, {"source": source_meta([path])}, data_dir_setting, variant, progress
    )
    return FactorDataset("mpi3d", store, space, description=f"MPI3D-{variant} from {path.name}")


@register_dataset(
    "mpi3d",
    "MPI3D (toy, realistic or real: data.options.variant): 1,036,800 RGB 64x64 images from mpi3d_<variant>.npz",
    factors=MPI3D_SPACE.listing(),
    uses=("path", "data_dir", "stride"),
    options={
        "variant": Option("toy", "which MPI3D: toy, realistic or real", type=Literal["toy", "realistic", "real"]),
        "store": STORE_OPTION,
    },
    image_shape=lambda cfg: (3, 64, 64),
)
def _build_mpi3d(cfg: DataConfig, options: dict, progress: bool) -> FactorDataset:
    variant = options["variant"]
    name = f"mpi3d_{variant}.npz"
    path = Path(cfg.path).expanduser() if cfg.path else default_path(_download_name(variant), cfg.data_dir) / name
    if path.is_dir():
        path = path / name
    require_file(path, f"MPI3D-{variant} file", _download_name(variant))
    mode = "mmap" if options["store"] == "auto" else options["store"]
    return load_mpi3d(path, variant, mode, cfg.data_dir, progress).subset_grid(dict(cfg.stride))
