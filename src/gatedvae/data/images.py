"""Bring your own images: a folder of image files, or an array, plus a CSV of labels.

This is the path for the data sets the seeds use beyond dSprites: CelebA with its
OpenFace pose and expression clusters in the Gated-VAE paper (``000_fc03c6fb001bc541.txt``),
3D chairs, 3D faces and CelebA in CHyVAE (``004_1dabe4d22771e1b6.txt``), MNIST, or a
practitioner's own product photos. Everything is resized to one square size and held as
uint8 in memory (:class:`~gatedvae.data.base.Uint8Store`).

Labels come from a CSV file with a header row, read with the standard ``csv`` module.
``factor_columns`` are discrete factors (any values; classes are the sorted unique values),
``weak_columns`` are continuous weak labels (floats, e.g. head-pose angles or action-unit
intensities) that the cluster pair sampler groups.
"""

from __future__ import annotations

import csv
import math
import re
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..config import DataConfig
from ..errors import DataError
from ..io import closest
from .base import FactorDataset, Uint8Store
from .factors import FactorSpace
from .registry import register_dataset

__all__ = ["load_images", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_ARRAY_EXTENSIONS = (".npy", ".npz")
_CHUNK = 1024


# ---------------------------------------------------------------------- image sources
def _why(exc: BaseException) -> str:
    """The first line of an exception's message (error messages stay on one line)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _image_files(folder: Path) -> list[Path]:
    kinds = "/".join(e[1:] for e in IMAGE_EXTENSIONS)
    files = sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS), key=lambda p: p.name
    )
    if not files:
        raise DataError(
            f"folder {folder} holds no images ({kinds}); point data.path at the image folder or an .npy/.npz array"
        )
    return files


#: Pillow's modes of unsigned 16-bit greyscale (byte orders); a 32-bit ``I`` image read from a
#: 16-bit file (PNG before Pillow 10, some TIFFs) is scaled the same way.
_GREY16 = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
#: How a source mode is read, when it is more than a colour conversion (``data describe`` says so).
_HOW = {
    "LA": "alpha dropped",
    "PA": "alpha dropped",
    "RGBA": "alpha dropped",
    "RGBa": "alpha dropped",
    "La": "alpha dropped",
    "I;16": "16-bit, scaled 65535 -> 255",
    "F": "float, scaled 1.0 -> 255",
}


def _int_bits(im) -> tuple[int | None, bool]:
    """(bits per sample, signed) of a Pillow ``I`` image: 16 from a PNG, else the TIFF tags."""
    if im.format == "PNG":
        return 16, False  # PNG has no 32-bit greyscale
    tags = getattr(im, "tag_v2", None)
    if tags is None:
        return None, False

    def first(tag: int, default: int) -> int:
        value = tags.get(tag, default)
        return int(value[0] if isinstance(value, tuple) else value)

    return first(258, 0) or None, first(339, 1) == 2  # BitsPerSample; SampleFormat 2 = signed integer


def _to_mode(im, mode: str, file: Path):
    """A Pillow image of any mode as 8-bit ``mode`` ("L" or "RGB").

    16-bit greyscale is scaled by its bit depth (``round(v * 255 / 65535)``), float greyscale
    (``F``) in [0, 1] by 255; 32-bit integer greyscale, signed integers and floats outside [0, 1]
    have no known white level and are refused. Alpha is dropped; every other mode goes through
    Pillow's own conversion (via RGB where Pillow has no direct path, as for LAB).
    """
    import warnings

    from PIL import Image

    source = im.mode
    if source in _GREY16 or source == "I":
        bits, signed = (16, False) if source in _GREY16 else _int_bits(im)
        if bits != 16 or signed:
            kind = f"{'signed ' if signed else ''}{bits or 32}-bit integer"
            raise DataError(
                f"image {file} is {kind} greyscale (Pillow mode {source}), whose white level is unknown; "
                "save it as 8- or 16-bit unsigned greyscale"
            )
        pixels = np.asarray(im).astype(np.float64)  # (H, W) in 0..65535
        im = Image.fromarray(np.rint(pixels * (255.0 / 65535.0)).astype(np.uint8))  # "L"
    elif source == "F":
        pixels = np.asarray(im, dtype=np.float64)  # (H, W)
        if pixels.size and not (np.isfinite(pixels).all() and pixels.min() >= 0.0 and pixels.max() <= 1.0):
            raise DataError(
                f"image {file} has float pixels outside [0, 1] (or NaN); "
                "scale them to [0, 1] or save it as 8- or 16-bit"
            )
        im = Image.fromarray(np.rint(pixels * 255.0).astype(np.uint8))  # "L"
    if im.mode != mode:
        with warnings.catch_warnings():  # a palette's transparency: dropped, as alpha is
            warnings.filterwarnings("ignore", "Palette images with Transparency", UserWarning)
            try:
                im = im.convert(mode)
            except ValueError:  # no direct conversion (LAB -> L)
                im = im.convert("RGB").convert(mode)
    return im


def _read_folder(files: list[Path], color: str, size: int, sources: dict[str, int] | None = None) -> np.ndarray:
    """Decode, convert and resize every file: uint8 ``(N, C, size, size)``.

    Any mode Pillow opens is read as 8-bit grey or RGB (:func:`_to_mode`); a photo with an EXIF
    orientation is turned upright, as image viewers (and face trackers reading with OpenCV) show
    it. ``sources``, when given, counts the files per source mode (and ``"EXIF-rotated"``).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    mode = "L" if color == "gray" else "RGB"
    channels = 1 if color == "gray" else 3
    out = np.empty((len(files), channels, size, size), dtype=np.uint8)  # (N, C, S, S)
    for i, file in enumerate(files):
        try:
            with Image.open(file) as im:
                opened = im.mode
                im.draft(mode, (size, size))  # JPEG: let the decoder downscale by powers of two
                rotated = im.getexif().get(0x0112, 1) not in (0, 1)  # Orientation
                if rotated:
                    im = ImageOps.exif_transpose(im)
                im = _to_mode(im, mode, file)
                if im.size != (size, size):
                    im = im.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
                pixels = np.asarray(im, dtype=np.uint8)  # (S, S) or (S, S, 3)
        except DataError:
            raise
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"image {file} is unreadable or corrupt ({_why(exc)}); remove or replace it") from None
        if sources is not None:
            source = "I;16" if opened in _GREY16 or opened == "I" else opened  # a 32-bit "I" was refused
            sources[source] = sources.get(source, 0) + 1
            if rotated:
                sources["EXIF-rotated"] = sources.get("EXIF-rotated", 0) + 1
        out[i] = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)  # (C, S, S)
    return out


def _sources_note(sources: dict[str, int]) -> str:
    """One line for ``data describe``: ``read 300 files by Pillow mode: 297 L, 2 RGBA (alpha dropped), ...``."""
    rotated = sources.get("EXIF-rotated", 0)
    counts = sorted(((n, m) for m, n in sources.items() if m != "EXIF-rotated"), key=lambda t: (-t[0], t[1]))
    parts = [f"{n} {m}" + (f" ({_HOW[m]})" if m in _HOW else "") for n, m in counts]
    if rotated:
        parts.append(f"{rotated} turned upright by their EXIF orientation")
    return f"read {sum(n for n, _ in counts)} files by Pillow mode: {', '.join(parts)}"


def _load_array(path: Path) -> np.ndarray:
    """The image array of an ``.npy`` (memory-mapped) or ``.npz`` file, never unpickling."""
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, mmap_mode="r", allow_pickle=False)
        with np.load(path, allow_pickle=False) as npz:
            keys = list(npz.files)
            key = next((k for k in ("images", "imgs", "x", "arr_0") if k in keys), keys[0] if len(keys) == 1 else None)
            if key is None:
                raise DataError(
                    f"{path} holds arrays {', '.join(keys) or 'none'}; store the images under the key 'images'"
                )
            return npz[key]
    except DataError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        why = _why(exc)
        if "Python objects" in why or "allow_pickle" in why:  # a ragged list of images, saved pickled
            raise DataError(
                f"image array {path} holds Python objects (images of different sizes?) "
                "and pickled data is never loaded; "
                "stack images of one size into one uint8 array, or put the image files in a folder"
            ) from None
        raise DataError(
            f"image array {path} is unreadable ({why}); "
            "the file is truncated, corrupt or pickled, save it with numpy.save"
        ) from None
    except (zipfile.BadZipFile, zlib.error) as exc:  # a damaged .npz
        raise DataError(
            f"image array {path} is unreadable ({type(exc).__name__}: {_why(exc)}); the file is truncated or corrupt"
        ) from None


def _array_layout(shape: tuple[int, ...], path: Path) -> str:
    """'NHW', 'NHWC' or 'NCHW' for an image array of ``shape``."""
    if len(shape) == 3:
        return "NHW"
    if len(shape) == 4:
        last, second = shape[3] in (1, 3, 4), shape[1] in (1, 3, 4)
        if last and not second:
            return "NHWC"
        if second and not last:
            return "NCHW"
    raise DataError(
        f"image array {path} has shape {shape}; expected (N, H, W), (N, H, W, C) or (N, C, H, W) with C in 1, 3, 4"
    )


def _to_uint8(chunk: np.ndarray, path: Path) -> np.ndarray:
    """A chunk of uint8, bool or [0, 1] float images as uint8."""
    if chunk.dtype == np.uint8:
        return chunk
    if chunk.dtype == np.bool_:
        return chunk.astype(np.uint8) * 255
    if np.issubdtype(chunk.dtype, np.floating):
        if chunk.size and not (np.isfinite(chunk).all() and chunk.min() >= 0.0 and chunk.max() <= 1.0):
            raise DataError(
                f"image array {path} has float values outside [0, 1] (or NaN); scale it to [0, 1] or save it as uint8"
            )
        return np.rint(chunk * 255.0).astype(np.uint8)
    if np.issubdtype(chunk.dtype, np.integer):
        if chunk.size and (chunk.min() < 0 or chunk.max() > 255):
            raise DataError(
                f"image array {path} has integer values outside 0..255; save it as uint8 or as floats in [0, 1]"
            )
        return chunk.astype(np.uint8)
    raise DataError(f"image array {path} has dtype {chunk.dtype}; expected uint8 or floats in [0, 1]")


def _read_array(arr: np.ndarray, path: Path, color: str, size: int) -> np.ndarray:
    """Convert, colour-map and resize an image array chunk by chunk: uint8 ``(N, C, size, size)``."""
    layout = _array_layout(arr.shape, path)
    n = arr.shape[0]
    channels = 1 if color == "gray" else 3
    out = np.empty((n, channels, size, size), dtype=np.uint8)  # (N, C, S, S)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)  # (1, 3, 1, 1) ITU-R 601-2, as Pillow's "L"
    for s in range(0, n, _CHUNK):
        chunk = _to_uint8(np.asarray(arr[s : s + _CHUNK]), path)
        if layout == "NHW":
            chunk = chunk[:, None]  # (B, 1, H, W)
        elif layout == "NHWC":
            chunk = chunk.transpose(0, 3, 1, 2)  # (B, C, H, W)
        x = torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float32))  # (B, C, H, W) a fresh copy
        if x.shape[1] == 4:
            x = x[:, :3]  # (B, 3, H, W) drop alpha
        if color == "gray" and x.shape[1] == 3:
            x = (x * luma).sum(dim=1, keepdim=True)  # (B, 1, H, W)
        elif color == "rgb" and x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)  # (B, 3, H, W)
        if x.shape[-2:] != (size, size):
            x = torch.nn.functional.interpolate(
                x, size=(size, size), mode="bilinear", align_corners=False, antialias=True
            )  # (B, C, S, S)
        out[s : s + len(x)] = x.round_().clamp_(0, 255).to(torch.uint8).numpy()  # (B, C, S, S)
    return out


# ---------------------------------------------------------------------- labels
def _near_column(column: str, header: Sequence[str]) -> str | None:
    """The column a misspelt ``column`` most likely means: the nearest spelling, else the only
    column that differs in case or holds the name as a part (``yaw`` -> ``true_yaw``)."""
    close = closest(column, header)
    if close:
        return close
    low = column.lower()
    parts = [h for h in header if h.lower() == low or low in re.split(r"[^0-9a-z]+", h.lower())]
    return parts[0] if len(parts) == 1 else None


def _unknown_column(column: str, header: list[str], labels: Path) -> DataError:
    close = _near_column(column, header)
    hint = f"; did you mean '{close}'?" if close else ";"
    return DataError(f"column '{column}' is not in {labels}{hint} its columns are: {', '.join(header)}")


def _read_labels(
    labels: Path, needed: Sequence[str], key: str | None
) -> tuple[list[str], dict[str, list[str]], list[int]]:
    """Read the CSV: (header, the needed columns (and ``key``) as strings, CSV line of each row)."""
    if not labels.is_file():
        raise DataError(f"labels file {labels} does not exist; set data.labels to a CSV with a header row")
    try:
        with labels.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise DataError(f"labels file {labels} is empty; it needs a header row naming the columns")
            header = [h.strip() for h in header]
            wanted = list(dict.fromkeys([*needed, *([key] if key else [])]))
            for column in wanted:
                if column not in header:
                    if column == key:
                        raise DataError(
                            f"labels file {labels} has no '{key}' column; "
                            "for an image folder it must name each image's file "
                            f"(columns are: {', '.join(header)})"
                        )
                    raise _unknown_column(column, header, labels)
            pos = {c: header.index(c) for c in wanted}
            cols: dict[str, list[str]] = {c: [] for c in wanted}
            lines: list[int] = []
            for row in reader:
                if not row or all(not cell.strip() for cell in row):
                    continue  # blank line
                if len(row) < len(header):
                    raise DataError(
                        f"{labels} line {reader.line_num} has {len(row)} fields, "
                        f"the header has {len(header)}; fix that row"
                    )
                for c, k in pos.items():
                    cols[c].append(row[k].strip())
                lines.append(reader.line_num)
    except UnicodeDecodeError as exc:
        raise DataError(f"labels file {labels} is not UTF-8 text ({exc.reason}); save it as UTF-8 CSV") from None
    except csv.Error as exc:
        raise DataError(f"labels file {labels} is not valid CSV ({_why(exc)}); fix the quoting") from None
    return header, cols, lines


def _factor(column: str, cells: list[str], lines: list[int], labels: Path) -> tuple[np.ndarray, np.ndarray]:
    """Classes ``(N,)`` and class values of one discrete column."""
    for cell, line in zip(cells, lines, strict=True):
        if cell == "":
            raise DataError(f"factor column '{column}' is empty at line {line} of {labels}; fill it in or drop the row")
    try:
        numbers = np.array([float(c) for c in cells], dtype=np.float64)  # (N,)
    except ValueError:
        numbers = None
    if numbers is not None and np.isfinite(numbers).all():
        uniq, classes = np.unique(numbers, return_inverse=True)  # (n,), (N,)
        return classes.reshape(-1).astype(np.int64), uniq
    if numbers is not None:
        bad = int(np.flatnonzero(~np.isfinite(numbers))[0])
        raise DataError(
            f"factor column '{column}' has '{cells[bad]}' at line {lines[bad]} of {labels}; "
            "use a finite value or drop the row"
        )
    uniq_str, classes = np.unique(np.array(cells, dtype=str), return_inverse=True)  # (n,), (N,)
    return classes.reshape(-1).astype(np.int64), np.arange(len(uniq_str), dtype=np.float64)


def _weak(column: str, cells: list[str], lines: list[int], labels: Path) -> np.ndarray:
    """Floats ``(N,)`` of one weak-label column; text, empty cells, NaN and inf are errors."""
    out = np.empty(len(cells), dtype=np.float64)  # (N,)
    for i, (cell, line) in enumerate(zip(cells, lines, strict=True)):
        try:
            value = float(cell)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value):
            raise DataError(
                f"weak column '{column}' has '{cell}' at line {line} of {labels}, "
                "not a finite number; fix or drop the row"
            )
        out[i] = value
    return out


# ---------------------------------------------------------------------- entry point
def load_images(
    path: str | Path,
    labels: str | Path = "",
    factor_columns: Sequence[str] = (),
    weak_columns: Sequence[str] = (),
    color: str = "gray",
    image_size: int = 64,
) -> FactorDataset:
    """Images from a folder or an array, with optional discrete factors and weak labels.

    Args:
        path: a folder of ``png/jpg/jpeg/bmp/gif/tif/tiff/webp`` files (read with Pillow, in order
            of file name; sub-folders are not searched; any mode Pillow opens: 16-bit greyscale
            is scaled by 255/65535, float greyscale in [0, 1] by 255, 32-bit integer greyscale is
            refused; photos are turned upright by their EXIF orientation) or an ``.npy``/``.npz``
            array of shape ``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)`` (C in 1, 3, 4)
            holding uint8 or floats in [0, 1]. An ``.npz`` uses its ``images`` (or ``imgs``)
            array, or its only one.
        labels: a CSV with a header row. For a folder it needs a ``file`` column with each
            image's file name (rows in any order; rows naming files that are not in the folder
            are ignored, with a warning that counts them; an image without a row is an error).
            For an array its rows follow the array order and there must be exactly N of them.
        factor_columns: discrete columns. Classes are the sorted unique values; the
            :class:`FactorSpace` values are the numbers when every cell is numeric, else 0..n-1.
        weak_columns: continuous float columns, kept as ``dataset.weak``.
        color: ``"gray"`` (one channel, ITU-R 601-2 luma) or ``"rgb"`` (three; alpha dropped).
        image_size: every image is resized to ``image_size x image_size`` with (antialiased)
            bilinear filtering, so folders of mixed sizes are fine; aspect ratios are not kept.

    Without labels (or with labels but no columns asked for) the dataset has zero factors.
    Every problem with the input raises a one-line :class:`DataError`.
    """
    path = Path(path).expanduser()
    if color not in ("gray", "rgb"):
        raise DataError(f"color must be 'gray' or 'rgb', got '{color}'")
    size = int(image_size)
    if size < 1:
        raise DataError(f"image_size must be positive, got {image_size}")
    factor_columns, weak_columns = [str(c) for c in factor_columns], [str(c) for c in weak_columns]
    if not path.exists():
        raise DataError(f"image path {path} does not exist; set data.path to a folder of images or an .npy/.npz array")
    if (factor_columns or weak_columns) and not labels:
        raise DataError(
            f"columns {', '.join(factor_columns + weak_columns)} were asked for but data.labels is empty; "
            "set it to a CSV of labels"
        )

    files: list[Path] | None = None
    array: np.ndarray | None = None
    if path.is_dir():
        files = _image_files(path)
        n = len(files)
    elif path.suffix.lower() in _ARRAY_EXTENSIONS:
        array = _load_array(path)  # memory-mapped for .npy: only the shape is read here
        _array_layout(array.shape, path)
        n = int(array.shape[0])
        if n == 0:
            raise DataError(f"image array {path} holds no images")
    else:
        raise DataError(f"image path {path} is neither a folder nor an .npy/.npz array")

    # labels first: a typo in a column name should fail before minutes of decoding
    factor_classes: list[np.ndarray] = []
    factor_values: list[np.ndarray] = []
    weak = None
    header: list[str] = []
    label_cols: dict[str, list[str]] = {}
    lines: list[int] = []
    labels_path = Path(labels).expanduser() if labels else None
    if labels_path is not None:
        header, label_cols, lines = _read_labels(
            labels_path, [*factor_columns, *weak_columns], "file" if files is not None else None
        )
        if files is not None:
            row_of: dict[str, int] = {}
            for i, name in enumerate(label_cols["file"]):
                name = Path(name).name
                if name in row_of:
                    raise DataError(
                        f"{labels_path} names file '{name}' twice (lines {lines[row_of[name]]} and {lines[i]}); "
                        "keep one row per image"
                    )
                row_of[name] = i
            missing = [f.name for f in files if f.name not in row_of]
            if missing:
                raise DataError(
                    f"{labels_path} has no row for image '{missing[0]}' ({len(missing)} of {n} images lack one); "
                    "add rows or remove the images"
                )
            present = {f.name for f in files}
            extra = [name for name in row_of if name not in present]
            if extra:
                warnings.warn(
                    f"{labels_path}: {len(extra)} of {len(row_of)} rows name images that are not in {path} "
                    f"(e.g. '{extra[0]}'); those rows are ignored",
                    RuntimeWarning,
                    stacklevel=2,
                )
            order = np.array([row_of[f.name] for f in files], dtype=np.int64)  # (N,)
            label_cols = {c: [cells[i] for i in order] for c, cells in label_cols.items()}
            lines = [lines[i] for i in order]
        elif len(lines) != n:
            raise DataError(
                f"{labels_path} has {len(lines)} label rows but {path} holds {n} images; "
                "give one row per image, in array order"
            )

    notes: list[str] = []
    if files is not None:
        sources: dict[str, int] = {}
        images = _read_folder(files, color, size, sources)  # (N, C, S, S)
        notes.append(_sources_note(sources))
    else:
        images = _read_array(array, path, color, size)  # (N, C, S, S)

    for column in factor_columns:
        classes, values = _factor(column, label_cols[column], lines, labels_path)
        factor_classes.append(classes)
        factor_values.append(values)
    if weak_columns:
        weak = np.stack([_weak(c, label_cols[c], lines, labels_path) for c in weak_columns], axis=1)  # (N, L)

    space = FactorSpace(factor_columns, [len(v) for v in factor_values], factor_values)
    factors = np.stack(factor_classes, axis=1) if factor_classes else np.zeros((n, 0), dtype=np.int64)  # (N, K)
    return FactorDataset(
        path.stem or path.name,
        Uint8Store(images),
        space,
        factors=factors,
        weak=weak,
        weak_names=weak_columns,
        description=f"images from {path}" + (f" with labels {labels_path}" if labels_path else ""),
        notes=notes,
        label_file=str(labels_path or ""),
        label_columns=header,
    )


@register_dataset(
    "images",
    "your images: a folder, or an .npy/.npz array, at data.path, with a CSV of labels at data.labels",
    factors="the CSV's data.factor_columns (discrete); data.weak_columns as continuous weak labels",
    uses=("path", "labels", "factor_columns", "weak_columns", "color", "image_size", "stride"),
    image_shape=lambda cfg: (1 if cfg.color == "gray" else 3, cfg.image_size, cfg.image_size),
)
def _build_images(cfg: DataConfig, options: dict, progress: bool) -> FactorDataset:
    ds = load_images(
        cfg.path,
        labels=cfg.labels,
        factor_columns=cfg.factor_columns,
        weak_columns=cfg.weak_columns,
        color=cfg.color,
        image_size=cfg.image_size,
    )
    return ds.subset_grid(dict(cfg.stride))
