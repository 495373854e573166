"""Cars3D (Reed, Zhang, Zhang and Lee, NeurIPS 2015, "Deep Visual Analogy-Making"): 183 car
models rendered at 4 elevations and 24 azimuths, from the official ``.mat`` files.

The archive ``nips2015-analogy-data.tar.gz`` holds ``data/cars/car_NNN_mesh.mat`` (one per car;
``list.txt`` names them in order), each a MATLAB file with ``im``, uint8 ``(128, 128, 3, 24, 4)``
(height, width, RGB, azimuth, elevation), and ``mask``. As in the usual protocol
(disentanglement_lib's ``cars3d``): every image resized to 64x64 with an antialiasing filter, and
the factors in the order elevation (4) x azimuth (24, 15 degrees apart) x object (183), row-major.
The cars are taken in ``list.txt``'s order when it is there, else sorted by file name. Reading
``.mat`` files uses scipy (a dependency already).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import DataConfig
from ..errors import DataError
from .base import FactorDataset
from .cache import STORE_OPTION, materialise, resize_uint8, source_meta, why
from .factors import FactorSpace
from .registry import register_dataset
from .sources import default_path, require_file

__all__ = ["CARS3D_OBJECTS", "cars3d_space", "cars3d_files", "load_cars3d"]

CARS3D_OBJECTS = 183
_HINT = "download it again (gatedvae data download cars3d)"


def cars3d_space(objects: int = CARS3D_OBJECTS) -> FactorSpace:
    """elevation (4) x azimuth (24) x object (``objects``)."""
    return FactorSpace(
        ("elevation", "azimuth", "object"),
        (4, 24, objects),
        (np.arange(4.0), 15.0 * np.arange(24), np.arange(float(objects))),
    )


def cars3d_files(folder: Path) -> list[Path]:
    """The cars' ``.mat`` files in ``folder`` (or its ``cars/`` or ``data/cars/``), in ``list.txt`` order."""
    for cand in (folder, folder / "cars", folder / "data" / "cars"):
        if cand.is_dir() and any(cand.glob("*.mat")):
            folder = cand
            break
    listing = folder / "list.txt"
    if listing.is_file():
        names = [ln.strip() for ln in listing.read_text(encoding="utf-8").splitlines() if ln.strip()]
        files = [folder / (n if n.endswith(".mat") else n + ".mat") for n in names]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise DataError(
                f"{listing} names {len(missing)} file(s) that are not in {folder}, e.g. {missing[0]}; {_HINT}"
            )
        return files
    files = sorted(folder.glob("*.mat"), key=lambda p: p.name)
    if not files:
        raise DataError(
            f"no Cars3D .mat files in {folder}; run `gatedvae data download cars3d` or unpack "
            "nips2015-analogy-data.tar.gz and set data.path to its data/cars folder"
        )
    return files


def _read_car(path: Path) -> np.ndarray:
    """One car's 96 images: uint8 ``(24 azimuth, 4 elevation, 3, 128, 128)``."""
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        mat = loadmat(path, variable_names=["im"])
    except (MatReadError, OSError, ValueError, TypeError, NotImplementedError) as exc:
        raise DataError(f"{path} is not a readable MATLAB file ({why(exc)}); {_HINT}") from None
    if "im" not in mat:
        raise DataError(f"{path} has no variable 'im'; expected a Cars3D car_NNN_mesh.mat; {_HINT}")
    im = np.asarray(mat["im"])
    if im.ndim != 5 or im.shape[2:] != (3, 24, 4):
        raise DataError(f"{path}: 'im' has shape {im.shape}, expected (H, W, 3, 24, 4); {_HINT}")
    if im.dtype != np.uint8:
        if np.issubdtype(im.dtype, np.floating) and im.size and im.max() <= 1.0:
            im = np.rint(im * 255.0)
        im = np.clip(im, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(im.transpose(3, 4, 2, 0, 1))  # (24, 4, 3, H, W)


def load_cars3d(
    folder: str | Path, image_size: int = 64, mode: str = "memory", data_dir_setting: str = "", progress: bool = False
) -> FactorDataset:
    """Cars3D from the folder of its ``.mat`` files: a full grid elevation x azimuth x object (the
    number of objects is the number of files: 183 in the official data)."""
    folder = Path(folder).expanduser()
    require_file(folder, "Cars3D folder", "cars3d")
    files = cars3d_files(folder)
    n_obj = len(files)
    space = cars3d_space(n_obj)

    def chunks():
        for f in files:
            car = _read_car(f)  # (24, 4, 3, H, W)
            yield resize_uint8(car.reshape(96, *car.shape[2:]), image_size)  # (96, 3, S, S), row az*4 + el

    meta = {"source": source_meta(files), "size": image_size}
    store = materialise(
        "cars3d",
        mode,
        (96 * n_obj, 3, image_size, image_size),
        chunks,
        meta,
        data_dir_setting,
        str(image_size),
        progress,
    )
    grid = space.to_factors(np.arange(len(space)))  # (N, 3) elevation, azimuth, object
    file_row = grid[:, 2] * 96 + grid[:, 1] * 4 + grid[:, 0]  # (N,) where each grid image sits in the files
    note = [] if n_obj == CARS3D_OBJECTS else [f"{n_obj} cars (the official data has {CARS3D_OBJECTS})"]
    return FactorDataset("cars3d", store.subset(file_row), space, description=f"Cars3D from {folder}", notes=note)


@register_dataset(
    "cars3d",
    "Cars3D: the official car_NNN_mesh.mat files in the folder data.path, resized to 64x64",
    factors="elevation (4), azimuth (24), object (183)",
    uses=("path", "data_dir", "image_size", "stride"),
    options={"store": STORE_OPTION},
    image_shape=lambda cfg: (3, cfg.image_size, cfg.image_size),
)
def _build_cars3d(cfg: DataConfig, options: dict, progress: bool) -> FactorDataset:
    folder = Path(cfg.path).expanduser() if cfg.path else default_path("cars3d", cfg.data_dir)
    mode = "memory" if options["store"] == "auto" else options["store"]
    return load_cars3d(folder, cfg.image_size, mode, cfg.data_dir, progress).subset_grid(dict(cfg.stride))
