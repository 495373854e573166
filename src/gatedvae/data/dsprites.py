"""dSprites: 737,280 binary 64x64 sprites over the full grid of five factors.

The dataset of Matthey et al. (2017) that the Gated-VAE paper
(``000_fc03c6fb001bc541.txt``, its dSprites protocol and Table I) and CHyVAE
(``004_1dabe4d22771e1b6.txt``, "2DShapes") evaluate on: a white sprite on a black
background, with the factors in the official file's order and values

=========== ===== ==========================================================
factor      size  values
=========== ===== ==========================================================
color       1     1.0
shape       3     1, 2, 3 (square, ellipse, heart)
scale       6     linspace(0.5, 1, 6)
orientation 40    linspace(0, 2*pi, 40), endpoint *included*
posX        32    linspace(0, 1, 32)
posY        32    linspace(0, 1, 32)
=========== ===== ==========================================================

Image ``i`` has the factor classes ``np.unravel_index(i, (1, 3, 6, 40, 32, 32))`` (row-major,
posY fastest), exactly as in ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz``.

A note on orientation: the issue that asked for this module described the orientations as
40 values in [0, 2*pi), but the official ``latents_values`` hold ``np.linspace(0, 2*pi, 40)``,
whose last value *is* 2*pi. We follow the official file, so the first and last orientation
class show the same image (the official data has the same duplicate).

Two sources:

* :func:`make_dsprites` renders the grid procedurally (no download, deterministic, a few
  seconds) in the official layout. The sprites are drawn by :func:`render_dsprites`; they are
  close to, not pixel-identical with, the official images.
* :func:`load_dsprites_npz` reads the official ``.npz`` without unpickling anything.

Both hold the images bit-packed (:class:`~gatedvae.data.base.PackedBinaryStore`, 377 MB).
"""

from __future__ import annotations

import functools
import os
import tempfile
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..config import DataConfig
from ..errors import DataError
from .base import FactorDataset, PackedBinaryStore
from .factors import FactorSpace
from .registry import data_dir, register_dataset

__all__ = [
    "DSPRITES_SPACE",
    "SHAPE_NAMES",
    "IMAGE_SIZE",
    "render_dsprites",
    "sprite_bank",
    "make_dsprites",
    "make_dsprites_strided",
    "load_dsprites_npz",
    "CACHE_FILE",
]

SHAPE_NAMES: tuple[str, ...] = ("square", "ellipse", "heart")
IMAGE_SIZE = 64
CACHE_FILE = "dsprites_procedural_v1.npy"
OFFICIAL_FILE = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"

DSPRITES_SPACE = FactorSpace(
    names=("color", "shape", "scale", "orientation", "posX", "posY"),
    sizes=(1, 3, 6, 40, 32, 32),
    values=(
        np.array([1.0]),
        np.array([1.0, 2.0, 3.0]),
        np.linspace(0.5, 1.0, 6),
        np.linspace(0.0, 2.0 * np.pi, 40),  # the official file includes the endpoint 2*pi
        np.linspace(0.0, 1.0, 32),
        np.linspace(0.0, 1.0, 32),
    ),
)

# Geometry of the procedural sprites (pixels, at scale 1). Each base sprite is drawn
# centred in a SPRITE x SPRITE canvas, its centre on the pixel corner (16, 16); posX class i
# puts that canvas at column offset i (sprite centre at x = 16 + i), posY class j at row
# offset j, so 32 positions span centres 16..47 and the largest rotated sprite (the square's
# half-diagonal, 14.1 px) always lies fully inside the 64x64 image.
SPRITE = 32
_CENTRE = SPRITE / 2.0
_SQUARE_HALF = 10.0  # the square is 20 px across
_ELLIPSE_AXES = (12.0, 6.0)  # semi-axes: 24 x 12 px, elongated 2:1 along x at orientation 0
_HEART_UNIT = 9.5  # px per unit of the heart curve (x^2 + y^2 - 1)^3 = x^2 y^3: 21.6 px across
_HEART_CY = 0.118  # centre of the curve's bounding box (y from -1 to 1.236), in curve units
_SUPERSAMPLE = 4
_N_BASE = 3 * 6 * 40


def _why(exc: BaseException) -> str:
    """The first line of an exception's message (error messages stay on one line)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _inside(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether the points ``(u, v)`` (pixels, sprite frame, v pointing up) lie in ``shape``."""
    if shape == 0:
        return (np.abs(u) <= _SQUARE_HALF) & (np.abs(v) <= _SQUARE_HALF)
    if shape == 1:
        a, b = _ELLIPSE_AXES
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0
    x = u / _HEART_UNIT
    y = v / _HEART_UNIT + _HEART_CY
    return (x * x + y * y - 1.0) ** 3 - x * x * y**3 <= 0.0


@functools.lru_cache(maxsize=1)
def sprite_bank() -> np.ndarray:
    """The 720 base sprites, centred: bool ``(3, 6, 40, SPRITE, SPRITE)`` (shape, scale, orientation).

    Each pixel is sampled on a 4x4 sub-pixel grid and is white when at least half of its
    samples fall inside the shape. Orientation rotates the sprite counter-clockwise on screen
    by the official angle (taken modulo 2*pi, so orientation 0 and 39 are the same image).
    Rows are image rows (y down), columns image columns (x right).
    """
    ss = _SUPERSAMPLE
    sub = (np.arange(SPRITE * ss) + 0.5) / ss - _CENTRE  # (S*ss,) sub-pixel offsets from the centre
    col, row = np.meshgrid(sub, sub, indexing="xy")  # (S*ss, S*ss) each
    x_up, y_up = col, -row  # maths frame: y points up
    angles = np.mod(DSPRITES_SPACE.values[3], 2.0 * np.pi)  # (40,)
    cos = np.cos(angles)[:, None, None]  # (40, 1, 1)
    sin = np.sin(angles)[:, None, None]  # (40, 1, 1)
    # a point is in the rotated sprite when its inverse rotation is in the upright sprite
    u = cos * x_up + sin * y_up  # (40, S*ss, S*ss)
    v = -sin * x_up + cos * y_up  # (40, S*ss, S*ss)
    bank = np.zeros((3, 6, 40, SPRITE, SPRITE), dtype=bool)  # (3, 6, 40, S, S)
    for shape in range(3):
        for k, scale in enumerate(DSPRITES_SPACE.values[2]):
            inside = _inside(shape, u / scale, v / scale)  # (40, S*ss, S*ss)
            cover = inside.reshape(40, SPRITE, ss, SPRITE, ss).mean(axis=(2, 4))  # (40, S, S)
            bank[shape, k] = cover >= 0.5
    bank.setflags(write=False)
    return bank


def _check_classes(factors: np.ndarray, what: str) -> np.ndarray:
    """``factors`` as int64 ``(N, 6)`` dSprites classes, or a one-line DataError."""
    factors = np.asarray(factors)
    if factors.ndim != 2 or factors.shape[1] != DSPRITES_SPACE.num_factors:
        raise DataError(f"{what}: expected dSprites factor classes of shape (N, 6), got {factors.shape}")
    if factors.size and not np.issubdtype(factors.dtype, np.integer):
        raise DataError(f"{what}: dSprites factor classes must be integers, got {factors.dtype}")
    factors = factors.astype(np.int64, copy=False)
    if len(factors):
        sizes = np.asarray(DSPRITES_SPACE.sizes)
        bad = (factors < 0) | (factors >= sizes)  # (N, 6)
        if bad.any():
            row, k = np.argwhere(bad)[0]
            name = DSPRITES_SPACE.names[k]
            raise DataError(
                f"{what}: row {row} has {name} class {factors[row, k]}, outside 0..{sizes[k] - 1}; "
                f"use classes of the official grid {dict(zip(DSPRITES_SPACE.names, DSPRITES_SPACE.sizes, strict=True))}"
            )
    return factors


def render_dsprites(factors: np.ndarray) -> np.ndarray:
    """Render dSprites images from factor classes: bool ``(N, 64, 64)``, white sprite on black.

    Deterministic: the same classes always give the same image. ``factors`` is ``(N, 6)``
    integer classes in :data:`DSPRITES_SPACE` order (color, shape, scale, orientation, posX,
    posY). posX moves the sprite along columns (x, the width axis), posY along rows (y, down),
    one pixel per class. A base sprite of :func:`sprite_bank` is composed by integer
    translation, so every position step moves the sprite by exactly one pixel.

    Symmetries (as in the official data): orientation 0 and 39 are 0 and a full turn, the
    same image. All three sprites are mirror-symmetric when upright, so orientation class o is
    the left-right mirror of class 39 - o. The square looks the same after a quarter turn and
    the ellipse after a half turn; no other step of 2*pi/39 lands on those, so consecutive
    orientations differ, except the middle pair (19, 20) of the square at the two smallest
    scales, whose +-4.6 degree tilts round to the same pixels (pinned in the tests).
    """
    factors = _check_classes(factors, "render_dsprites")
    n = len(factors)
    bank = sprite_bank().reshape(_N_BASE, SPRITE, SPRITE)  # (720, S, S)
    out = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE), dtype=bool)  # (N, 64, 64)
    if n == 0:
        return out
    sprite = np.ravel_multi_index((factors[:, 1], factors[:, 2], factors[:, 3]), (3, 6, 40))  # (N,) base sprite
    where = factors[:, 4] * 32 + factors[:, 5]  # (N,) position key
    order = np.argsort(where, kind="stable")  # (N,)
    keys, starts = np.unique(where[order], return_index=True)  # (G,), (G,)
    ends = np.append(starts[1:], n)  # (G,)
    for key, a, b in zip(keys.tolist(), starts.tolist(), ends.tolist(), strict=True):  # one slice copy per position
        x, y = divmod(key, 32)
        idx = order[a:b]  # (M,)
        out[idx, y : y + SPRITE, x : x + SPRITE] = bank[sprite[idx]]  # (M, S, S)
    return out


def _packed_block(sprite: np.ndarray, packed_out: np.ndarray) -> None:
    """Write the 1024 packed images of one base sprite (every posX, posY) into ``packed_out``.

    ``packed_out`` is the ``(32 posX, 32 posY, 64 rows, 8 bytes)`` view of the block's rows of
    the packed dataset, zero on entry. Rows of a sprite shifted along x are packed once per
    shift (a sliding window over a padded strip); posY is then a row offset into the view.
    """
    strip = np.zeros((SPRITE, IMAGE_SIZE + SPRITE - 1), dtype=bool)  # (S, 95)
    strip[:, SPRITE - 1 : 2 * SPRITE - 1] = sprite
    windows = np.lib.stride_tricks.sliding_window_view(strip, IMAGE_SIZE, axis=1)  # (S, 32, 64): window s = posX 31 - s
    shifted = windows.transpose(1, 0, 2)[::-1]  # (32 posX, S rows, 64 cols)
    rows = np.packbits(shifted, axis=-1)  # (32 posX, S rows, 8 bytes)
    for j in range(32):
        packed_out[:, j, j : j + SPRITE, :] = rows  # (32 posX, S rows, 8) at rows j..j+S-1


def generate_packed(progress: bool = False) -> np.ndarray:
    """The full procedural grid, bit-packed: uint8 ``(737280, 512)`` in canonical order.

    Written block by block (one block per (shape, scale, orientation) = 1024 images) straight
    into the packed array; no unpacked copy of the dataset ever exists.
    """
    n = len(DSPRITES_SPACE)
    row_bytes = IMAGE_SIZE * IMAGE_SIZE // 8
    packed = np.zeros((n, row_bytes), dtype=np.uint8)  # (737280, 512)
    view = packed.reshape(_N_BASE, 32, 32, IMAGE_SIZE, IMAGE_SIZE // 8)  # (720, posX, posY, 64, 8)
    bank = sprite_bank().reshape(_N_BASE, SPRITE, SPRITE)  # (720, S, S), (shape, scale, orientation) row-major
    blocks = range(_N_BASE)
    if progress:
        from ..progress import progress_bar  # plain lines when stderr is not a terminal

        blocks = progress_bar(blocks, desc="dsprites", unit="sprite", leave=False)
    for b in blocks:
        _packed_block(bank[b], view[b])
    return packed


def _checksum(packed: np.ndarray) -> str:
    """CRC-32 of the packed bytes as 8 hex digits (0.1 s for the full grid)."""
    return f"{zlib.crc32(memoryview(np.ascontiguousarray(packed)).cast('B')):08x}"


def _checksum_file(file: Path) -> Path:
    return file.with_name(file.name + ".crc32")


def _load_cache(file: Path) -> np.ndarray | None:
    """The cached packed array, or None (with a warning) when it is missing or unusable.

    Checks, in order: the ``.npy`` parses (no pickle) with the expected shape and dtype; its
    CRC-32 equals the one in the sidecar ``<file>.crc32`` written with it (damaged bytes
    anywhere); a spread of 257 images equals the renderer's (a cache from another renderer).
    """
    if not file.exists():
        return None
    expected = (len(DSPRITES_SPACE), IMAGE_SIZE * IMAGE_SIZE // 8)

    def stale(reason: str) -> None:
        warnings.warn(f"dsprites cache {file} {reason}; regenerating it", RuntimeWarning, stacklevel=4)

    try:
        packed = np.load(file, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        stale(f"is unreadable ({_why(exc)})")
        return None
    if packed.shape != expected or packed.dtype != np.uint8:
        stale(f"holds {packed.shape} {packed.dtype}, expected {expected} uint8")
        return None
    try:
        recorded = _checksum_file(file).read_text().strip()
    except (OSError, UnicodeDecodeError):
        recorded = ""
    if recorded != _checksum(packed):
        stale("fails its checksum (damaged, or its .crc32 file is missing)")
        return None
    probe = np.linspace(0, expected[0] - 1, 257).astype(np.int64)  # (257,)
    want = np.packbits(render_dsprites(DSPRITES_SPACE.to_factors(probe)).reshape(len(probe), -1), axis=1)  # (257, 512)
    if not np.array_equal(packed[probe], want):
        stale("does not match the renderer")
        return None
    return packed


def _atomic_write(file: Path, write) -> None:
    """Call ``write(fh)`` on a temp file next to ``file``, then ``os.replace`` it into place."""
    file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=file.name + ".", suffix=".tmp", dir=file.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _save_cache(file: Path, packed: np.ndarray) -> None:
    """Atomically write the packed array to ``file``, then its checksum to ``<file>.crc32``.

    A crash between the two leaves a checksum that does not match, so the cache is rebuilt.
    """
    _atomic_write(file, lambda fh: np.save(fh, packed, allow_pickle=False))
    _atomic_write(_checksum_file(file), lambda fh: fh.write((_checksum(packed) + "\n").encode()))


def make_dsprites(cache_dir: Path | str | None = None, progress: bool = False) -> FactorDataset:
    """The full procedural dSprites grid (737,280 images, canonical order, bit-packed).

    Takes a few seconds and 377 MB. With ``cache_dir`` the packed array is kept in
    ``cache_dir/dsprites_procedural_v1.npy`` (written atomically, with its CRC-32 in
    ``dsprites_procedural_v1.npy.crc32``); a cache file that is truncated, of the wrong shape
    or dtype, fails its checksum or disagrees with the renderer is regenerated with a warning.
    (Generating takes about as long as reading 377 MB from disk, so the cache mostly helps on
    slow CPUs.) Factors: :data:`DSPRITES_SPACE`; see :func:`render_dsprites` for the drawing.
    """
    packed = None
    file = Path(cache_dir).expanduser() / CACHE_FILE if cache_dir is not None else None
    if file is not None:
        packed = _load_cache(file)
    if packed is None:
        packed = generate_packed(progress=progress)
        if file is not None:
            try:
                _save_cache(file, packed)
            except OSError as exc:
                warnings.warn(
                    f"could not write the dsprites cache {file} ({_why(exc)}); continuing without it",
                    RuntimeWarning,
                    stacklevel=2,
                )
    store = PackedBinaryStore(packed, IMAGE_SIZE, IMAGE_SIZE)
    return FactorDataset(
        "dsprites",
        store,
        DSPRITES_SPACE,
        description="procedural dSprites (Matthey et al. 2017 layout): shape x scale x orientation x posX x posY",
    )


def make_dsprites_strided(strides: dict[str, int], chunk: int = 16384) -> FactorDataset:
    """``make_dsprites().subset_grid(strides)`` without building the full grid: the kept
    images are rendered by :func:`render_dsprites` in chunks and bit-packed, so memory is in
    proportion to the subset (a sixteenth of dSprites: 24 MB instead of the full 377 MB first).
    Rendering image by image is slower per image than the full grid's block generation, so a
    subset of more than a quarter of the grid is cut from the full grid instead.
    """
    sub, index = DSPRITES_SPACE.subspace(strides)  # index: (n,) positions in the full grid
    if len(index) > len(DSPRITES_SPACE) // 4:
        return make_dsprites().subset_grid(strides)
    packed = np.empty((len(index), IMAGE_SIZE * IMAGE_SIZE // 8), dtype=np.uint8)  # (n, 512)
    for start in range(0, len(index), chunk):
        stop = min(start + chunk, len(index))
        images = render_dsprites(DSPRITES_SPACE.to_factors(index[start:stop]))  # (c, 64, 64) bool
        packed[start:stop] = np.packbits(images.reshape(stop - start, -1), axis=1)  # (c, 512)
    return FactorDataset(
        "dsprites",
        PackedBinaryStore(packed, IMAGE_SIZE, IMAGE_SIZE),
        sub,
        description="procedural dSprites (Matthey et al. 2017 layout): shape x scale x orientation x posX x posY",
    )


# ---------------------------------------------------------------------- official .npz
_REQUIRED_KEYS = ("imgs", "latents_values", "latents_classes")
_CHUNK_IMAGES = 16384


def _read_header(fh, path: Path, key: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Shape, Fortran order and dtype of the ``.npy`` member ``key`` open as ``fh``."""
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(fh)
        return np.lib.format.read_array_header_2_0(fh)
    except (ValueError, EOFError, OSError, zlib.error, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: array '{key}' is corrupt ({_why(exc)}); download {OFFICIAL_FILE} again") from None


def _read_small(zf: zipfile.ZipFile, path: Path, key: str) -> np.ndarray:
    """Read a whole (small) array member without unpickling."""
    try:
        with zf.open(key + ".npy") as fh:
            return np.lib.format.read_array(fh, allow_pickle=False)
    except (ValueError, EOFError, OSError, zlib.error, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: array '{key}' is unreadable ({_why(exc)}); download {OFFICIAL_FILE} again") from None


def _read_images_packed(zf: zipfile.ZipFile, path: Path) -> np.ndarray:
    """Stream ``imgs`` out of the archive and bit-pack it chunk by chunk: uint8 ``(N, 512)``."""
    try:
        fh = zf.open("imgs.npy")
    except (OSError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"{path}: array 'imgs' is unreadable ({_why(exc)}); download {OFFICIAL_FILE} again") from None
    with fh:
        shape, fortran, dtype = _read_header(fh, path, "imgs")
        if len(shape) != 3 or shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise DataError(
                f"{path}: 'imgs' has shape {shape}, expected (N, 64, 64); is this the dSprites .npz ({OFFICIAL_FILE})?"
            )
        if dtype.hasobject or not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
            raise DataError(f"{path}: 'imgs' has dtype {dtype}, expected uint8 0/1 images")
        n = shape[0]
        row_bytes = IMAGE_SIZE * IMAGE_SIZE // 8
        packed = np.empty((n, row_bytes), dtype=np.uint8)  # (N, 512)
        try:
            if fortran:  # rare: no row-streaming possible, read whole
                fh.seek(0)
                imgs = np.lib.format.read_array(fh, allow_pickle=False)  # (N, 64, 64)
                for s in range(0, n, _CHUNK_IMAGES):
                    packed[s : s + _CHUNK_IMAGES] = _pack(imgs[s : s + _CHUNK_IMAGES])
                return packed
            per_image = IMAGE_SIZE * IMAGE_SIZE * dtype.itemsize
            for s in range(0, n, _CHUNK_IMAGES):
                m = min(_CHUNK_IMAGES, n - s)
                buf = fh.read(m * per_image)
                if len(buf) != m * per_image:
                    raise EOFError(f"'imgs' ends after {s + len(buf) // per_image} of {n} images")
                chunk = np.frombuffer(buf, dtype=dtype).reshape(m, IMAGE_SIZE, IMAGE_SIZE)  # (m, 64, 64)
                packed[s : s + m] = _pack(chunk)  # (m, 512)
        except (ValueError, EOFError, OSError, zlib.error, zipfile.BadZipFile) as exc:
            raise DataError(
                f"{path}: 'imgs' is truncated or corrupt ({_why(exc)}); download {OFFICIAL_FILE} again"
            ) from None
    return packed


def _pack(chunk: np.ndarray) -> np.ndarray:
    """Binary images ``(m, 64, 64)`` -> packed rows ``(m, 512)``; floats are white from 0.5."""
    white = chunk >= 0.5 if np.issubdtype(chunk.dtype, np.floating) else chunk != 0  # (m, 64, 64)
    return np.packbits(white.reshape(len(chunk), -1), axis=1)  # (m, 512)


def load_dsprites_npz(path: str | Path) -> FactorDataset:
    """The official dSprites file ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz``.

    Reads ``imgs`` ``(N, 64, 64)`` (streamed and bit-packed in chunks, so the 3 GB of uint8
    never exist at once), ``latents_values`` ``(N, 6)`` and ``latents_classes`` ``(N, 6)``.
    Nothing is unpickled: the archive's pickled ``metadata`` member is never opened.

    When the file holds the whole grid in canonical order (the official file does) the result
    is a full-grid dataset over :data:`DSPRITES_SPACE`; otherwise (a subset, or another
    order) a non-grid dataset whose factors are ``latents_classes``. ``latents_values`` that
    disagree with :data:`DSPRITES_SPACE`'s values only warn, since the classes are what the
    metrics and pair samplers use.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(
            f"dSprites file {path} does not exist; download {OFFICIAL_FILE} from github.com/deepmind/dsprites-dataset "
            "and set data.path"
        )
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        why = _why(exc)
        raise DataError(
            f"{path} is not a readable .npz archive ({why}); the file is truncated or corrupt, "
            f"download {OFFICIAL_FILE} again"
        ) from None
    with zf:
        members = {name[:-4] for name in zf.namelist() if name.endswith(".npy")}
        missing = [k for k in _REQUIRED_KEYS if k not in members]
        if missing:
            has = ", ".join(sorted(members)) or "none"
            raise DataError(
                f"{path} lacks the array(s) {', '.join(missing)} (has {has}); expected the official {OFFICIAL_FILE}"
            )
        classes = _read_small(zf, path, "latents_classes")
        values = _read_small(zf, path, "latents_values")
        packed = _read_images_packed(zf, path)
    n = len(packed)
    if classes.shape != (n, 6):
        raise DataError(f"{path}: 'latents_classes' has shape {classes.shape}, expected ({n}, 6) to match 'imgs'")
    if values.shape != (n, 6):
        raise DataError(f"{path}: 'latents_values' has shape {values.shape}, expected ({n}, 6) to match 'imgs'")
    classes = _check_classes(classes, f"{path}: latents_classes")
    if n and np.issubdtype(values.dtype, np.number):
        expect = DSPRITES_SPACE.to_values(classes)  # (N, 6)
        if not np.allclose(values, expect, rtol=0.0, atol=1e-5):
            warnings.warn(
                f"{path}: latents_values differ from the official dSprites values; using latents_classes",
                RuntimeWarning,
                stacklevel=2,
            )
    store = PackedBinaryStore(packed, IMAGE_SIZE, IMAGE_SIZE)
    grid = n == len(DSPRITES_SPACE) and np.array_equal(DSPRITES_SPACE.to_index(classes), np.arange(n, dtype=np.int64))
    return FactorDataset(
        "dsprites_file",
        store,
        DSPRITES_SPACE,
        factors=None if grid else classes,
        description=f"dSprites from {path.name}",
    )


# --------------------------------------------------------------------------- registration
@register_dataset(
    "dsprites",
    "dSprites rendered procedurally (737,280 64x64 binary images, the official data's grid)",
    factors=DSPRITES_SPACE.listing(),
    uses=("stride", "cache", "data_dir"),
    image_shape=lambda cfg: (1, 64, 64),
)
def _build_dsprites(cfg: DataConfig, options: dict, progress: bool) -> FactorDataset:
    if cfg.stride and not cfg.cache:
        # only the kept classes are rendered: memory in proportion (docs/performance.md)
        return make_dsprites_strided(dict(cfg.stride))
    cache = data_dir(cfg.data_dir) if cfg.cache else None
    return make_dsprites(cache_dir=cache, progress=progress).subset_grid(dict(cfg.stride))


@register_dataset(
    "dsprites_file",
    f"the official dSprites file at data.path ({OFFICIAL_FILE})",
    factors=DSPRITES_SPACE.listing(),
    uses=("path", "stride"),
    image_shape=lambda cfg: (1, 64, 64),
)
def _build_dsprites_file(cfg: DataConfig, options: dict, progress: bool) -> FactorDataset:
    if not cfg.path:
        raise DataError(f"data.path is empty; set it to the official {OFFICIAL_FILE}")
    return load_dsprites_npz(cfg.path).subset_grid(dict(cfg.stride))
