"""SmallNORB (LeCun, Huang and Bottou, CVPR 2004): 50 toys of 5 categories photographed by a stereo
camera at 9 elevations, 18 azimuths and 6 lightings, from the official binary files.

Each half (``training``: instances 4, 6, 7, 8, 9 of each category; ``testing``: 0, 1, 2, 3, 5) is
three files, gzipped as published or not (both are read):

* ``smallnorb-<half>-dat.mat``: uint8 matrix ``(24300, 2, 96, 96)``, the stereo pairs;
* ``smallnorb-<half>-cat.mat``: int32 ``(24300,)``, the category (0 animal, 1 human, 2 airplane,
  3 truck, 4 car);
* ``smallnorb-<half>-info.mat``: int32 ``(24300, 4)``: instance (0-9), elevation (0-8: 30 to 70
  degrees by 5), azimuth (0, 2, ..., 34: times 10 degrees) and lighting (0-5).

The NORB binary matrix format: a little-endian int32 magic number naming the element type
(``0x1E3D4C55`` bytes, ``0x1E3D4C54`` int32, ...), an int32 count of dimensions, then
``max(3, ndim)`` int32 sizes (unused ones are 1), then the elements in row-major order.

As in the usual protocol (disentanglement_lib's ``norb``): the first (left) camera's image, resized
to 64x64 with an antialiasing filter, and both halves together (48,600 images), which make the full
grid category 5 x instance 10 x elevation 9 x azimuth 18 x lighting 6 (put in that row-major order).
One half alone (``split=train`` or ``test``) holds 5 of the 10 instances: a labelled dataset.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Literal

import numpy as np

from ..config import DataConfig
from ..errors import DataError
from .base import FactorDataset
from .cache import STORE_OPTION, chunk_rows, materialise, resize_uint8, source_meta, why
from .factors import FactorSpace
from .registry import Option, register_dataset
from .sources import default_path, require_file

__all__ = ["NORB_SPACE", "NORB_FILES", "read_norb_header", "read_norb_matrix", "load_smallnorb", "norb_file"]

NORB_SPACE = FactorSpace(
    ("category", "instance", "elevation", "azimuth", "lighting"),
    (5, 10, 9, 18, 6),
    (np.arange(5.0), np.arange(10.0), 30.0 + 5.0 * np.arange(9), 20.0 * np.arange(18), np.arange(6.0)),
)
NORB_FILES = {
    "train": "smallnorb-5x46789x9x18x6x2x96x96-training-{}.mat",
    "test": "smallnorb-5x01235x9x18x6x2x96x96-testing-{}.mat",
}
_TYPES = {
    0x1E3D4C55: np.dtype("<u1"),
    0x1E3D4C54: np.dtype("<i4"),
    0x1E3D4C56: np.dtype("<i2"),
    0x1E3D4C51: np.dtype("<f4"),
    0x1E3D4C53: np.dtype("<f8"),
}
_HINT = "download it again (gatedvae data download smallnorb)"


def _open(path: Path):
    """The file, decompressed on the fly when it is gzipped (by its first two bytes)."""
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else open(path, "rb")


def read_norb_header(fh, path: Path) -> tuple[np.dtype, tuple[int, ...]]:
    """Element type and shape of a NORB binary matrix open as ``fh`` (positioned at its data after)."""
    head = fh.read(8)
    if len(head) != 8:
        raise DataError(f"{path} is too short for a NORB binary matrix header; {_HINT}")
    magic, ndim = (int(v) for v in np.frombuffer(head, dtype="<i4"))
    if magic not in _TYPES:
        raise DataError(f"{path} is not a NORB binary matrix (magic number {magic:#x}); {_HINT}")
    if not 0 < ndim <= 8:
        raise DataError(f"{path}: a NORB binary matrix with {ndim} dimensions; {_HINT}")
    raw = fh.read(4 * max(3, ndim))
    if len(raw) != 4 * max(3, ndim):
        raise DataError(f"{path}: the NORB header ends early; {_HINT}")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype="<i4")[:ndim])
    if any(d < 0 for d in dims):
        raise DataError(f"{path}: the NORB header has a negative size {dims}; {_HINT}")
    return _TYPES[magic], dims


def read_norb_matrix(path: Path) -> np.ndarray:
    """A whole (small) NORB binary matrix: the ``-cat`` and ``-info`` files."""
    try:
        with _open(path) as fh:
            dtype, dims = read_norb_header(fh, path)
            count = int(np.prod(dims, dtype=np.int64))
            buf = fh.read(count * dtype.itemsize)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path} is unreadable ({why(exc)}); {_HINT}") from None
    if len(buf) != count * dtype.itemsize:
        raise DataError(f"{path} is truncated: {len(buf)} of {count * dtype.itemsize} data bytes; {_HINT}")
    return np.frombuffer(buf, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def norb_file(folder: Path, split: str, part: str) -> Path:
    """The ``part`` (dat, cat, info) file of a half in ``folder``: gzipped or not."""
    base = folder / NORB_FILES[split].format(part)
    gz = base.with_name(base.name + ".gz")
    if gz.exists() and not base.exists():
        return gz
    return base if base.exists() else gz


def _dat_chunks(path: Path, n: int, camera: int, size: int):
    """The ``-dat`` file's images of one camera, resized: uint8 ``(m, 1, size, size)`` chunks."""
    rows = chunk_rows(2 * 96 * 96)
    try:
        with _open(path) as fh:
            dtype, dims = read_norb_header(fh, path)
            if dtype != np.uint8 or len(dims) != 4 or dims[1:] != (2, 96, 96) or dims[0] != n:
                raise DataError(f"{path}: a NORB matrix of {dims} {dtype}, expected uint8 ({n}, 2, 96, 96); {_HINT}")
            for s in range(0, n, rows):
                m = min(rows, n - s)
                buf = fh.read(m * 2 * 96 * 96)
                if len(buf) != m * 2 * 96 * 96:
                    raise DataError(f"{path} is truncated after {s + len(buf) // (2 * 96 * 96)} of {n} pairs; {_HINT}")
                pairs = np.frombuffer(buf, dtype=np.uint8).reshape(m, 2, 96, 96)  # (m, 2, 96, 96)
                yield resize_uint8(pairs[:, camera : camera + 1], size)  # (m, 1, size, size)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path} is unreadable ({why(exc)}); {_HINT}") from None


def load_smallnorb(
    folder: str | Path,
    split: str = "both",
    image_size: int = 64,
    camera: str = "left",
    mode: str = "memory",
    data_dir_setting: str = "",
    progress: bool = False,
) -> FactorDataset:
    """SmallNORB from the folder of its official files (``split``: both, train or test)."""
    folder = Path(folder).expanduser()
    halves = ("train", "test") if split == "both" else (split,)
    files = {(h, p): norb_file(folder, h, p) for h in halves for p in ("dat", "cat", "info")}
    for f in files.values():
        require_file(f, "SmallNORB file", "smallnorb")
    classes, counts = [], []
    for h in halves:
        cat = read_norb_matrix(files[h, "cat"]).reshape(-1)  # (n,)
        info = read_norb_matrix(files[h, "info"])  # (n, 4)
        n = len(cat)
        if info.shape != (n, 4):
            raise DataError(
                f"{files[h, 'info']}: shape {info.shape}, expected ({n}, 4) to match the -cat file; {_HINT}"
            )
        c = np.column_stack([cat, info]).astype(np.int64)  # (n, 5)
        if (c[:, 3] % 2).any():
            raise DataError(f"{files[h, 'info']}: an odd azimuth value; the official ones are 0, 2, ..., 34; {_HINT}")
        c[:, 3] //= 2
        classes.append(c)
        counts.append(n)
    factors = np.concatenate(classes)  # (N, 5)
    bad = (factors < 0) | (factors >= np.asarray(NORB_SPACE.sizes))
    if bad.any():
        row, k = np.argwhere(bad)[0]
        raise DataError(
            f"SmallNORB labels: row {row} has {NORB_SPACE.names[k]} class {factors[row, k]}, outside the official "
            f"0..{NORB_SPACE.sizes[k] - 1}; {_HINT}"
        )
    cam = 0 if camera == "left" else 1

    def chunks():
        for h, n in zip(halves, counts, strict=True):
            yield from _dat_chunks(files[h, "dat"], n, cam, image_size)

    total = int(sum(counts))
    meta = {"source": source_meta([files[h, "dat"] for h in halves]), "size": image_size, "camera": camera}
    tag = f"{split}-{camera}-{image_size}"
    store = materialise(
        "smallnorb", mode, (total, 1, image_size, image_size), chunks, meta, data_dir_setting, tag, progress
    )
    index = NORB_SPACE.to_index(factors)  # (N,)
    description = f"SmallNORB ({split}, {camera} camera) from {folder}"
    if total == len(NORB_SPACE) and np.array_equal(np.sort(index), np.arange(total)):
        order = np.argsort(index)  # (N,) file row of each grid position
        return FactorDataset("smallnorb", store.subset(order), NORB_SPACE, description=description)
    return FactorDataset("smallnorb", store, NORB_SPACE, factors=factors, description=description)


@register_dataset(
    "smallnorb",
    "SmallNORB: the official -dat/-cat/-info files (gzipped or not) in the folder data.path, resized to 64x64",
    factors=NORB_SPACE.listing(),
    uses=("path", "data_dir", "image_size", "stride"),
    options={
        "split": Option(
            "both", "both halves (48,600 images, a full grid), train or test", type=Literal["both", "train", "test"]
        ),
        "camera": Option("left", "which image of each stereo pair", type=Literal["left", "right"]),
        "store": STORE_OPTION,
    },
    image_shape=lambda cfg: (1, cfg.image_size, cfg.image_size),
)
def _build_smallnorb(cfg: DataConfig, options: dict, progress: bool) -> FactorDataset:
    folder = Path(cfg.path).expanduser() if cfg.path else default_path("smallnorb", cfg.data_dir)
    if folder.is_file():
        folder = folder.parent
    mode = "memory" if options["store"] == "auto" else options["store"]
    ds = load_smallnorb(folder, options["split"], cfg.image_size, options["camera"], mode, cfg.data_dir, progress)
    return ds.subset_grid(dict(cfg.stride))
