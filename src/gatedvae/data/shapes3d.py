"""3D Shapes (Burgess and Kim, DeepMind 2018): 480,000 RGB 64x64 renderings of one object in a
room, over the full grid of six factors, from the official ``3dshapes.h5``.

The file holds ``images`` (uint8 ``(480000, 64, 64, 3)``) and ``labels`` (float64
``(480000, 6)``, the factor values), in row-major order of the factors

=========== ===== ===========================================
factor      size  values
=========== ===== ===========================================
floor_hue   10    10 hues in [0, 1)
wall_hue    10    as floor_hue
object_hue  10    as floor_hue
scale       8     linspace(0.75, 1.25, 8)
shape       4     0, 1, 2, 3
orientation 15    linspace(-30, 30, 15) degrees
=========== ===== ===========================================

Each image's classes are read from its labels (the nearest official value; the values of a
complete file are the file's own), so a file in another order or a subset still loads, as a
labelled dataset; the official file is a full grid. The 5.9 GB of pixels are converted once,
streaming, into a memory-mapped cache (:mod:`gatedvae.data.cache`). Reading HDF5 needs h5py
(``pip install 'gatedvae[h5]'``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import DataConfig
from ..errors import DataError
from .base import FactorDataset
from .cache import STORE_OPTION, chunk_rows, materialise, nhwc_to_nchw, source_meta, why
from .factors import FactorSpace
from .registry import register_dataset
from .sources import default_path, require_file

__all__ = ["SHAPES3D_SPACE", "SHAPES3D_FILE", "load_shapes3d", "require_h5py", "classes_from_values"]

SHAPES3D_FILE = "3dshapes.h5"
SHAPES3D_SPACE = FactorSpace(
    ("floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation"),
    (10, 10, 10, 8, 4, 15),
    (
        np.linspace(0.0, 0.9, 10),
        np.linspace(0.0, 0.9, 10),
        np.linspace(0.0, 0.9, 10),
        np.linspace(0.75, 1.25, 8),
        np.arange(4.0),
        np.linspace(-30.0, 30.0, 15),
    ),
)
_HINT = "download 3dshapes.h5 again (gatedvae data download shapes3d)"


def require_h5py(what: str):
    """The h5py module, or a one-line DataError naming the extra that installs it."""
    try:
        import h5py
    except ImportError:
        raise DataError(f"{what} is an HDF5 file and reading it needs h5py: pip install 'gatedvae[h5]'") from None
    return h5py


def classes_from_values(values: np.ndarray, space: FactorSpace, where: str) -> tuple[np.ndarray, FactorSpace]:
    """Factor values ``(N, K)`` -> classes ``(N, K)`` int64 and the space they index.

    A column holding exactly as many distinct values as its factor has classes takes those values
    (the file's own, sorted); otherwise each value maps to the nearest value of ``space``, and one
    farther than a tenth of the smallest spacing is a one-line DataError naming the row.
    """
    values = np.asarray(values, dtype=np.float64)
    classes = np.empty(values.shape, dtype=np.int64)  # (N, K)
    out_values = []
    for k, (name, size, official) in enumerate(zip(space.names, space.sizes, space.values, strict=True)):
        col = values[:, k]  # (N,)
        uniq = np.unique(col)
        table = uniq if len(uniq) == size else official
        pos = np.searchsorted(table, col)  # (N,) in 0..L
        below = np.clip(pos - 1, 0, len(table) - 1)  # (N,)
        above = np.clip(pos, 0, len(table) - 1)  # (N,)
        cls = np.where(np.abs(col - table[below]) <= np.abs(col - table[above]), below, above)  # (N,) nearest
        tol = 0.1 * (np.min(np.diff(table)) if len(table) > 1 else 1.0)
        bad = np.abs(table[cls] - col) > tol
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{where}: row {row} has {name} = {col[row]:.6g}, which is none of the official values "
                f"{np.round(table, 4).tolist()}"
            )
        classes[:, k] = cls
        out_values.append(table)
    return classes, FactorSpace(space.names, space.sizes, out_values)


def load_shapes3d(
    path: str | Path, mode: str = "mmap", data_dir_setting: str = "", progress: bool = False
) -> FactorDataset:
    """The official ``3dshapes.h5`` as a dataset (``mode``: ``mmap`` or ``memory``, see
    :func:`~gatedvae.data.cache.materialise`)."""
    path = Path(path).expanduser()
    h5py = require_h5py(f"3D Shapes file {path}")
    try:
        fh = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path} is not a readable HDF5 file ({why(exc)}); {_HINT}") from None
    with fh:
        missing = [k for k in ("images", "labels") if k not in fh]
        if missing:
            raise DataError(f"{path} lacks the dataset(s) {', '.join(missing)} (has {', '.join(fh)}); {_HINT}")
        images, labels = fh["images"], fh["labels"]
        if images.ndim != 4 or images.shape[1:] != (64, 64, 3) or images.dtype != np.uint8:
            raise DataError(
                f"{path}: 'images' is {images.shape} {images.dtype}, expected uint8 (N, 64, 64, 3); {_HINT}"
            )
        n = images.shape[0]
        if labels.shape != (n, 6):
            raise DataError(f"{path}: 'labels' has shape {labels.shape}, expected ({n}, 6) to match 'images'; {_HINT}")
        try:
            values = labels[...]  # (N, 6) float64, 23 MB for the full file
        except OSError as exc:
            raise DataError(f"{path}: 'labels' is unreadable ({why(exc)}); {_HINT}") from None
    classes, space = classes_from_values(values, SHAPES3D_SPACE, str(path))
    rows = chunk_rows(64 * 64 * 3)

    def chunks():
        with h5py.File(path, "r") as f:
            ds = f["images"]
            for s in range(0, n, rows):
                try:
                    block = ds[s : s + rows]  # (m, 64, 64, 3)
                except OSError as exc:
                    raise DataError(f"{path}: 'images' is truncated or corrupt ({why(exc)}); {_HINT}") from None
                yield nhwc_to_nchw(block)  # (m, 3, 64, 64)

    store = materialise(
        "shapes3d", mode, (n, 3, 64, 64), chunks, {"source": source_meta([path])}, data_dir_setting, progress=progress
    )
    grid = n == len(space) and np.array_equal(space.to_index(classes), np.arange(n, dtype=np.int64))
    return FactorDataset(
        "shapes3d",
        store,
        space,
        factors=None if grid else classes,
        description=f"3D Shapes from {path.name}",
    )


@register_dataset(
    "shapes3d",
    "3D Shapes (DeepMind): 480,000 RGB 64x64 images from the official 3dshapes.h5 at data.path",
    factors=SHAPES3D_SPACE.listing(),
    uses=("path", "data_dir", "stride"),
    options={"store": STORE_OPTION},
    image_shape=lambda cfg: (3, 64, 64),
)
def _build_shapes3d(cfg: DataConfig, options: dict, progress: bool) -> FactorDataset:
    path = Path(cfg.path).expanduser() if cfg.path else default_path("shapes3d", cfg.data_dir) / SHAPES3D_FILE
    if path.is_dir():
        path = path / SHAPES3D_FILE
    require_file(path, "3D Shapes file", "shapes3d")
    mode = "mmap" if options["store"] == "auto" else options["store"]
    return load_shapes3d(path, mode, cfg.data_dir, progress).subset_grid(dict(cfg.stride))
