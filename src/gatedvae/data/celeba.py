"""CelebA (Liu, Luo, Wang and Tang, ICCV 2015), aligned and cropped: 202,599 face images with 40
binary attributes, from the official folder ``img_align_celeba/`` and ``list_attr_celeba.txt``.

CelebA has no ground-truth factors of variation. Its 40 attributes (``Smiling``, ``Male``,
``Eyeglasses``, ...) are kept as weak labels (0 or 1), for cluster pairs (``sampler: cluster``
over some attribute columns) and for reading codes; metrics that need factors are skipped by
``gatedvae evaluate`` (and refused, in one line, when asked for by name). The Gated-VAE paper's
pose and expression labels come from a face tracker run on these images: the ``images`` route with
the tracker's CSV (docs/datasets.md, "Faces").

``list_attr_celeba.txt``: the image count on the first line, the 40 attribute names on the second,
then one line per image: its file name and 40 values of -1 or 1. ``list_eval_partition.txt``
(optional, for ``split``): file name and 0 (train), 1 (valid) or 2 (test).

The usual 64x64 protocol: a centred square crop of the 178x218 aligned image (``crop=148`` pixels
by default, as most VAE studies of CelebA use; 108 is DCGAN's tighter crop), resized to 64x64 with
Pillow's antialiasing bilinear filter. ``color`` is grey by default, as the Gated-VAE paper trains
on grey faces; ``color=rgb`` is the usual benchmark. Decoding 202,599 JPEGs takes minutes, so the
images are converted once into a memory-mapped cache (:mod:`gatedvae.data.cache`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from ..config import DataConfig
from ..errors import DataError
from .base import FactorDataset
from .cache import STORE_OPTION, chunk_rows, materialise, source_meta, why
from .factors import FactorSpace
from .registry import Option, register_dataset
from .sources import default_path, require_file

__all__ = ["ATTR_FILE", "PARTITION_FILE", "read_attributes", "read_partition", "load_celeba", "celeba_paths"]

ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
IMAGE_FOLDER = "img_align_celeba"
_SPLITS = {"train": 0, "valid": 1, "test": 2}
_HINT = "download it again (gatedvae data download celeba --accept-licence) or check the file"


def read_attributes(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """``(file names, attribute names, values (N, A) float64 in {0, 1})`` of ``list_attr_celeba.txt``."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is unreadable ({why(exc)}); {_HINT}") from None
    if len(lines) < 2:
        raise DataError(f"{path} has {len(lines)} line(s); it needs the image count, the attribute names, then rows")
    try:
        count = int(lines[0].strip())
    except ValueError:
        raise DataError(f"{path}: line 1 should be the image count, got '{lines[0].strip()[:40]}'") from None
    names = lines[1].split()
    if not names:
        raise DataError(f"{path}: line 2 should name the attributes; it is empty")
    files: list[str] = []
    values = np.empty((count, len(names)), dtype=np.float64)  # (N, A)
    rows = [ln for ln in lines[2:] if ln.strip()]
    if len(rows) != count:
        raise DataError(f"{path}: line 1 announces {count} images but {len(rows)} rows follow; {_HINT}")
    for i, line in enumerate(rows):
        parts = line.split()
        if len(parts) != len(names) + 1:
            raise DataError(
                f"{path}: line {i + 3} has {len(parts) - 1} values, expected {len(names)} (one per attribute); {_HINT}"
            )
        try:
            vals = [int(v) for v in parts[1:]]
        except ValueError:
            raise DataError(f"{path}: line {i + 3} has a value that is not -1 or 1; {_HINT}") from None
        if any(v not in (-1, 1) for v in vals):
            raise DataError(f"{path}: line {i + 3} has a value that is not -1 or 1; {_HINT}")
        files.append(parts[0])
        values[i] = vals
    return files, names, (values > 0).astype(np.float64)


def read_partition(path: Path) -> dict[str, int]:
    """``list_eval_partition.txt``: file name -> 0 (train), 1 (valid), 2 (test)."""
    out = {}
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise DataError(f"{path}: line {i + 1} should be '<file> <0|1|2>', got '{line.strip()[:60]}'")
        out[parts[0]] = int(parts[1])
    return out


def celeba_paths(root: Path) -> tuple[Path, Path]:
    """``(image folder, attribute file)`` under ``root``: the folder that holds both (the download's
    layout), or the image folder itself with the attribute file beside or inside it."""
    root = Path(root).expanduser()
    for folder, attr in (
        (root / IMAGE_FOLDER, root / ATTR_FILE),
        (root, root / ATTR_FILE),
        (root, root.parent / ATTR_FILE),
    ):
        if (
            folder.is_dir()
            and attr.is_file()
            and (folder != root or folder.name == IMAGE_FOLDER or any(folder.glob("*.jpg")))
        ):
            return folder, attr
    require_file(root, "CelebA folder", "celeba")
    raise DataError(
        f"CelebA folder {root} lacks {IMAGE_FOLDER}/ and {ATTR_FILE}; point data.path at the folder holding both "
        "(gatedvae data download celeba --accept-licence makes it)"
    )


def _decode(files: list[Path], crop: int, size: int, color: str, rows: int):
    """Decode, centre-crop and resize the JPEGs, ``rows`` at a time: uint8 ``(m, C, size, size)``."""
    from PIL import Image, UnidentifiedImageError

    mode = "L" if color == "gray" else "RGB"
    channels = 1 if color == "gray" else 3
    for s in range(0, len(files), rows):
        part = files[s : s + rows]
        out = np.empty((len(part), channels, size, size), dtype=np.uint8)  # (m, C, S, S)
        for i, f in enumerate(part):
            try:
                with Image.open(f) as im:
                    im = im.convert(mode)
                    w, h = im.size
                    c = min(crop, w, h)
                    left, top = (w - c) // 2, (h - c) // 2
                    im = im.crop((left, top, left + c, top + c)).resize((size, size), Image.Resampling.BILINEAR)
                    px = np.asarray(im, dtype=np.uint8)  # (S, S) or (S, S, 3)
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
                raise DataError(f"CelebA image {f} is unreadable ({why(exc)}); {_HINT}") from None
            out[i] = px[None] if channels == 1 else px.transpose(2, 0, 1)
        yield out


def load_celeba(
    root: str | Path,
    image_size: int = 64,
    color: str = "gray",
    crop: int = 148,
    split: str = "all",
    limit: int = 0,
    mode: str = "mmap",
    data_dir_setting: str = "",
    progress: bool = False,
) -> FactorDataset:
    """CelebA (aligned) with its 40 attributes as weak labels and no factors."""
    folder, attr_file = celeba_paths(Path(root))
    names, attrs, values = read_attributes(attr_file)
    keep = np.ones(len(names), dtype=bool)
    if split != "all":
        part_file = attr_file.with_name(PARTITION_FILE)
        require_file(part_file, f"CelebA split file (for split={split})", "celeba")
        parts = read_partition(part_file)
        missing = [n for n in names if n not in parts]
        if missing:
            raise DataError(f"{part_file} has no row for {len(missing)} image(s), e.g. {missing[0]}; {_HINT}")
        keep = np.array([parts[n] == _SPLITS[split] for n in names])
    idx = np.flatnonzero(keep)
    if limit:
        idx = idx[:limit]
    files = [folder / names[i] for i in idx]
    absent = [f for f in files if not f.is_file()]
    if absent:
        raise DataError(
            f"{attr_file} lists {len(absent)} image(s) missing from {folder}, e.g. {absent[0].name}; {_HINT}"
        )
    channels = 1 if color == "gray" else 3
    meta = {
        "source": source_meta([attr_file]),
        "images": len(files),
        "first": files[0].name if files else "",
        "last": files[-1].name if files else "",
        "crop": crop,
        "size": image_size,
        "color": color,
        "split": split,
    }
    tag = f"{split}-{len(files)}-{color}-{crop}-{image_size}"
    rows = chunk_rows(channels * image_size * image_size, 2**22)
    store = materialise(
        "celeba",
        mode,
        (len(files), channels, image_size, image_size),
        lambda: _decode(files, crop, image_size, color, rows),
        meta,
        data_dir_setting,
        tag,
        progress,
    )
    return FactorDataset(
        "celeba",
        store,
        FactorSpace((), ()),
        factors=np.zeros((len(files), 0), dtype=np.int64),
        weak=values[idx],
        weak_names=attrs,
        description=f"CelebA aligned ({split}) from {folder}: {crop}px crop -> {image_size}x{image_size} {color}",
        notes=["no ground-truth factors: metrics that need them are skipped; the 40 attributes are weak labels"],
    )


@register_dataset(
    "celeba",
    "CelebA aligned (img_align_celeba/ + list_attr_celeba.txt at data.path): 40 attributes as weak labels",
    factors="none (no ground truth); weak labels: the 40 attributes (0/1)",
    uses=("path", "data_dir", "image_size", "color"),
    options={
        "crop": Option(
            148, "centre square crop in pixels before resizing", check=(lambda v: 16 <= v <= 218, "must lie in 16..218")
        ),
        "split": Option(
            "all",
            "all, or train / valid / test by list_eval_partition.txt",
            type=Literal["all", "train", "valid", "test"],
        ),
        "limit": Option(0, "keep only the first N images (0: all)", check=(lambda v: v >= 0, "must be non-negative")),
        "store": STORE_OPTION,
    },
    image_shape=lambda cfg: (1 if cfg.color == "gray" else 3, cfg.image_size, cfg.image_size),
)
def _build_celeba(cfg: DataConfig, options: dict, progress: bool) -> FactorDataset:
    root = Path(cfg.path).expanduser() if cfg.path else default_path("celeba", cfg.data_dir)
    mode = "mmap" if options["store"] == "auto" else options["store"]
    return load_celeba(
        root,
        cfg.image_size,
        cfg.color,
        options["crop"],
        options["split"],
        options["limit"],
        mode,
        cfg.data_dir,
        progress,
    )
