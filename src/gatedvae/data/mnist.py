"""MNIST (LeCun, Cortes and Burges): 70,000 handwritten digits, 28x28 grey, from the official IDX
files (gzipped as published, or not).

The IDX format: two zero bytes, a type code (``0x08`` unsigned byte, ``0x09`` signed byte, ``0x0B``
int16, ``0x0C`` int32, ``0x0D`` float32, ``0x0E`` float64), the number of dimensions, then each
dimension as a big-endian int32, then the elements, big-endian, row-major. ``train-images-idx3-ubyte``
holds ``(60000, 28, 28)`` bytes and ``train-labels-idx1-ubyte`` ``(60000,)``; ``t10k-*`` the 10,000
test digits. The digit is the one factor (10 classes): what the report's conditional VAE
(``003_527384601d5c0438.txt``) feeds its decoder.

Size: 28x28, MNIST's own, by default (``data.options.side=28``): the report's networks and the MLP
take it as it is, and nothing is invented by interpolation. The conv64 network needs 64x64:
``side=64`` resizes bilinearly (the digits get softer edges; the Laplacian sharpness of
reconstructions is then not comparable with 28x28 numbers).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Literal

import numpy as np

from ..config import DataConfig
from ..errors import DataError
from .base import FactorDataset, Uint8Store
from .cache import resize_uint8, why
from .factors import FactorSpace
from .registry import Option, register_dataset
from .sources import default_path

__all__ = ["MNIST_SPACE", "read_idx", "mnist_file", "load_mnist", "IDX_TYPES", "export_sklearn_digits"]

MNIST_SPACE = FactorSpace(("digit",), (10,), (np.arange(10.0),))
IDX_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_PREFIX = {"train": "train", "test": "t10k"}
_HINT = "download it again (gatedvae data download mnist)"


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not, by its first bytes) as a native-endian array."""
    try:
        with open(path, "rb") as fh:
            gz = fh.read(2) == b"\x1f\x8b"
        with gzip.open(path, "rb") if gz else open(path, "rb") as fh:
            head = fh.read(4)
            if len(head) != 4 or head[:2] != b"\x00\x00" or head[2] not in IDX_TYPES or not 1 <= head[3] <= 4:
                raise DataError(f"{path} is not an IDX file (header bytes {head.hex()}); {_HINT}")
            dtype, ndim = IDX_TYPES[head[2]], head[3]
            raw = fh.read(4 * ndim)
            if len(raw) != 4 * ndim:
                raise DataError(f"{path}: the IDX header ends early; {_HINT}")
            dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4"))
            count = int(np.prod(dims, dtype=np.int64))
            buf = fh.read(count * dtype.itemsize)
    except DataError:
        raise
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path} is unreadable ({why(exc)}); {_HINT}") from None
    if len(buf) != count * dtype.itemsize:
        raise DataError(f"{path} is truncated: {len(buf)} of {count * dtype.itemsize} data bytes; {_HINT}")
    return np.frombuffer(buf, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def mnist_file(folder: Path, split: str, kind: str) -> Path:
    """The ``kind`` (images or labels) file of ``split`` in ``folder``: ``.gz`` or not, and the
    ``train-images.idx3-ubyte`` spelling some mirrors use."""
    rank = 3 if kind == "images" else 1
    names = [f"{_PREFIX[split]}-{kind}-idx{rank}-ubyte", f"{_PREFIX[split]}-{kind}.idx{rank}-ubyte"]
    for name in names:
        for cand in (folder / name, folder / (name + ".gz")):
            if cand.is_file():
                return cand
    raise DataError(
        f"MNIST file {folder / (names[0] + '.gz')} does not exist; run `gatedvae data download mnist` "
        "(or fetch the four IDX files by hand) and set data.path to their folder"
    )


def load_mnist(folder: str | Path, split: str = "train", side: int = 28) -> FactorDataset:
    """MNIST from the folder of its IDX files: uint8 images ``(N, 1, side, side)``, factor ``digit``."""
    folder = Path(folder).expanduser()
    if folder.is_file():
        folder = folder.parent
    splits = ("train", "test") if split == "both" else (split,)
    images, labels = [], []
    for s in splits:
        img_file, lab_file = mnist_file(folder, s, "images"), mnist_file(folder, s, "labels")
        img, lab = read_idx(img_file), read_idx(lab_file)
        if img.ndim != 3 or img.dtype != np.uint8:
            raise DataError(f"{img_file}: an IDX array of {img.shape} {img.dtype}, expected uint8 (N, 28, 28); {_HINT}")
        if lab.shape != (len(img),):
            raise DataError(f"{lab_file}: {lab.shape} labels for {len(img)} images; {_HINT}")
        if len(lab) and (lab.min() < 0 or lab.max() > 9):
            raise DataError(f"{lab_file}: labels outside 0..9; {_HINT}")
        images.append(resize_uint8(img[:, None], side))  # (n, 1, side, side)
        labels.append(lab.astype(np.int64))
    store = Uint8Store(np.concatenate(images))  # (N, 1, side, side)
    factors = np.concatenate(labels)[:, None]  # (N, 1)
    return FactorDataset(
        "mnist", store, MNIST_SPACE, factors=factors, description=f"MNIST ({split}) from {folder}, {side}x{side}"
    )


@register_dataset(
    "mnist",
    "MNIST: the official IDX files (gzipped or not) in the folder data.path; 28x28 (options.side=64 for conv64)",
    factors="digit (10)",
    uses=("path", "data_dir"),
    options={
        "split": Option("train", "train (60,000), test (10,000) or both", type=Literal["train", "test", "both"]),
        "side": Option(
            28,
            "image side: 28 (native) or e.g. 64 for the conv64 net",
            check=(lambda v: 8 <= v <= 256, "must lie in 8..256"),
        ),
    },
    image_shape=lambda cfg: (1, int(cfg.options.get("side", 28)), int(cfg.options.get("side", 28))),
)
def _build_mnist(cfg: DataConfig, options: dict, progress: bool) -> FactorDataset:
    folder = Path(cfg.path).expanduser() if cfg.path else default_path("mnist", cfg.data_dir)
    return load_mnist(folder, options["split"], options["side"])


def export_sklearn_digits(folder: str | Path, n_test: int = 297) -> Path:
    """Write scikit-learn's 1,797 handwritten digits (8x8, intensities 0..16, shipped with the
    package) as MNIST IDX files in ``folder``: each digit upsampled bilinearly to 20x20 and centred
    in a 28x28 frame (MNIST's layout: its digits fit a 20x20 box), intensities scaled to 0..255.
    The last ``n_test`` digits are the ``t10k`` files, the rest ``train``. A stand-in for MNIST
    where the real files cannot be downloaded: the same loader, configs and sweeps read it; results
    on it are indicative only (8x8 sources, 1,797 digits instead of 70,000)."""
    from sklearn.datasets import load_digits

    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    small = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)  # (1797, 8, 8)
    big = resize_uint8(small[:, None], 20)[:, 0]  # (1797, 20, 20)
    images = np.zeros((len(big), 28, 28), dtype=np.uint8)  # (1797, 28, 28)
    images[:, 4:24, 4:24] = big
    labels = digits.target.astype(np.uint8)  # (1797,)
    cut = len(images) - n_test
    for prefix, sl in (("train", slice(0, cut)), ("t10k", slice(cut, None))):
        for kind, arr in (("images-idx3", images[sl]), ("labels-idx1", labels[sl])):
            head = bytes([0, 0, 0x08, arr.ndim]) + np.asarray(arr.shape, dtype=">i4").tobytes()
            with gzip.open(folder / f"{prefix}-{kind}-ubyte.gz", "wb") as fh:
                fh.write(head + np.ascontiguousarray(arr).tobytes())
    return folder
