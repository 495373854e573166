"""Memory-mapped image caches: a dataset larger than memory, converted once, gathered from disk.

MPI3D holds 12.7 GB of pixels and 3D Shapes 5.9 GB; neither fits the memory a laptop lends one
process. Each is converted once, streaming, into a cache file of uint8 images ``(N, C, H, W)``
(an ``.npy`` file: a 128-byte header, then every image's ``C*H*W`` bytes one after the other, the
layout a batch gathers from with one contiguous read per image), and trained from through a
memory map (:class:`MemmapStore`). Mapped file pages belong to the page cache, not to the process:
the process's own anonymous memory (``RssAnon``) stays that of the model, the batch and the
labels, whatever the size of the data set.

The conversion is bounded too: :func:`write_cache` takes the images as an iterator of chunks
(:func:`chunk_rows` sizes them to :data:`CHUNK_BYTES`), writes each with ``write()`` and never
holds more than one chunk; the sources stream theirs (:class:`NpzMember` decompresses an ``.npz``
member a chunk at a time, h5py reads a slice of its chunks). The file is written under a temporary
name and renamed into place, and its sidecar ``<cache>.json`` (the source's size and modification
time, the options that shaped the pixels, the format version) is written last: a conversion killed
at any moment leaves no cache that looks complete, and a cache whose source or options changed is
converted again.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import shutil
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..errors import DataError
from .base import ImageStore, Uint8Store, as_index_tensor, host_to_device
from .registry import Option, data_dir

__all__ = [
    "CACHE_VERSION",
    "CHUNK_BYTES",
    "MemmapStore",
    "NpzMember",
    "STORE_OPTION",
    "cache_dir",
    "chunk_rows",
    "materialise",
    "nhwc_to_nchw",
    "resize_uint8",
    "open_cache",
    "rss_anon_mb",
    "source_meta",
    "write_cache",
    "why",
]

CACHE_VERSION = 1
#: The most bytes of images a conversion holds at once (one chunk; a few copies of it in flight).
CHUNK_BYTES = 16 * 2**20

#: The ``data.options.store`` every file dataset takes.
STORE_OPTION = Option(
    "auto",
    "where the images live: memory (one uint8 tensor), mmap (a memory-mapped cache under data_dir, "
    "converted once) or auto (mmap for the data sets larger than about 1 GB)",
    type=Literal["auto", "memory", "mmap"],
)


def why(exc: BaseException) -> str:
    """The first line of an exception's message (error messages stay on one line)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def rss_anon_mb() -> float:
    """This process's anonymous resident memory (``RssAnon`` of ``/proc/self/status``) in MB; NaN
    where the kernel does not report it. Mapped file pages (a :class:`MemmapStore`) are not in it."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def chunk_rows(row_bytes: int, budget: int = CHUNK_BYTES) -> int:
    """How many rows of ``row_bytes`` make a chunk of at most ``budget`` bytes (at least one)."""
    return max(1, budget // max(1, int(row_bytes)))


def cache_dir(configured: str = "") -> Path:
    """Where converted caches live: ``<data_dir>/cache``."""
    return data_dir(configured) / "cache"


def source_meta(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Identity of the source files (name, size, modification time): a cache of another source
    (or of this one before it changed) is stale."""
    out = []
    for p in paths:
        st = Path(p).stat()
        out.append({"file": str(Path(p).resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


# --------------------------------------------------------------------------- the store
class MemmapStore(ImageStore):
    """uint8 images ``(N, C, H, W)`` in a memory-mapped ``.npy`` cache file.

    ``rows`` (optional): the file rows this store holds, in order (a strided subset of a grid is a
    view, not a copy). ``device``: where :meth:`gather` returns its batch; the file stays on the
    host and each batch is read there and sent (pinned, non-blocking on CUDA). The map is advised
    ``MADV_RANDOM``: a batch of random rows reads only their pages, not the kernel's read-ahead.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        rows: np.ndarray | None = None,
        device: torch.device | str | None = None,
        _mm: np.ndarray | None = None,
    ) -> None:
        self.path = Path(path)
        if _mm is None:
            try:
                _mm = np.load(self.path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError, EOFError) as exc:
                raise DataError(
                    f"image cache {self.path} is unreadable ({why(exc)}); delete it to convert again"
                ) from None
            if _mm.dtype != np.uint8 or _mm.ndim != 4:
                raise DataError(f"image cache {self.path} holds {_mm.shape} {_mm.dtype}, not uint8 (N, C, H, W)")
            raw = getattr(_mm, "_mmap", None)
            if raw is not None and hasattr(mmap, "MADV_RANDOM"):
                try:
                    raw.madvise(mmap.MADV_RANDOM)
                except OSError:  # pragma: no cover - advice only
                    pass
        self._mm = _mm  # (N_file, C, H, W)
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)  # (N,) file rows
        self._device = torch.device(device) if device is not None else torch.device("cpu")
        _, self.channels, self.height, self.width = (int(s) for s in _mm.shape)

    def __len__(self) -> int:
        return int(len(self.rows) if self.rows is not None else self._mm.shape[0])

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def nbytes(self) -> int:
        return len(self) * self.channels * self.height * self.width

    def host_rows(self, index: np.ndarray | torch.Tensor) -> np.ndarray:
        """The images at ``index`` read from the map: uint8 ``(B, C, H, W)`` in host memory.

        Rows are read in file order (fewer seeks on a cold cache) and returned in ``index``'s order.
        """
        if isinstance(index, torch.Tensor):
            index = index.detach().to("cpu").numpy()
        idx = np.asarray(index, dtype=np.int64).reshape(-1)  # (B,)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"image index out of range for {len(self)} images")
        idx = np.where(idx < 0, idx + len(self), idx)  # (B,)
        if self.rows is not None:
            idx = self.rows[idx]  # (B,) file rows
        order = np.argsort(idx, kind="stable")  # (B,)
        out = np.empty((len(idx), self.channels, self.height, self.width), dtype=np.uint8)  # (B, C, H, W)
        out[order] = self._mm[idx[order]]
        return out

    def gather_uint8(self, index: np.ndarray | torch.Tensor) -> torch.Tensor:
        return host_to_device(torch.from_numpy(self.host_rows(index)), self._device)  # (B, C, H, W)

    def gather(self, index: np.ndarray | torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        rows = self.gather_uint8(index)  # (B, C, H, W) uint8 on the device
        if out is None:
            return rows.to(torch.float32).mul_(1.0 / 255.0)
        return out.copy_(rows).mul_(1.0 / 255.0)

    def to(self, device: torch.device | str) -> MemmapStore:
        return MemmapStore(self.path, self.rows, device, _mm=self._mm)

    def subset(self, index: np.ndarray) -> MemmapStore:
        idx = as_index_tensor(index).numpy()  # (n,)
        rows = idx if self.rows is None else self.rows[idx]
        return MemmapStore(self.path, rows, self._device, _mm=self._mm)

    def load(self) -> Uint8Store:
        """The same images read whole into memory (a :class:`Uint8Store`)."""
        if self.rows is None:
            return Uint8Store(np.array(self._mm)).to(self._device)
        return Uint8Store(self.host_rows(np.arange(len(self)))).to(self._device)

    def drop_page_cache(self) -> None:
        """Ask the kernel to drop this file's pages from the page cache (``posix_fadvise``
        ``DONTNEED``): the next reads come from the disk, as on a cold start. Best effort."""
        raw = getattr(self._mm, "_mmap", None)
        if raw is not None and hasattr(mmap, "MADV_DONTNEED"):
            try:  # unmap this process's pages first: the kernel keeps pages that are still mapped
                raw.madvise(mmap.MADV_DONTNEED)
            except OSError:  # pragma: no cover - advice only
                pass
        if not hasattr(os, "posix_fadvise"):
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


# --------------------------------------------------------------------------- writing a cache
def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def open_cache(path: Path, meta: dict[str, Any]) -> MemmapStore | None:
    """The cache at ``path`` when it is complete and was converted from the same source with the
    same options (``meta``); None (with a warning when a stale or damaged one is found) otherwise."""
    side = _sidecar(path)
    if not path.is_file():
        return None
    try:
        recorded = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        warnings.warn(
            f"image cache {path} has no valid {side.name} (an interrupted conversion); converting again",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    want = {"version": CACHE_VERSION, **meta}
    if recorded != json.loads(json.dumps(want)):
        warnings.warn(
            f"image cache {path} was converted from another source or with other options; converting again",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    try:
        store = MemmapStore(path)
    except DataError as exc:
        warnings.warn(f"{exc}; converting again", RuntimeWarning, stacklevel=3)
        return None
    if [len(store), store.channels, store.height, store.width] != list(meta["shape"]):
        warnings.warn(
            f"image cache {path} holds images of another shape; converting again", RuntimeWarning, stacklevel=3
        )
        return None
    return store


def write_cache(
    path: Path,
    shape: tuple[int, int, int, int],
    chunks: Iterable[np.ndarray],
    meta: dict[str, Any],
    progress: bool = False,
    desc: str = "converting",
    on_chunk: Callable[[int], None] | None = None,
) -> MemmapStore:
    """Write the uint8 chunks ``(m, C, H, W)`` of ``shape`` images into the cache ``path``.

    Streams: one chunk at a time goes through ``write()``. Refuses (one line) when the disk lacks
    the room, when a chunk has the wrong shape or dtype and when the chunks end early; nothing is
    left at ``path`` unless the whole file was written. ``on_chunk(images_so_far)`` is called after
    each chunk (tests measure memory there).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n, c, h, w = (int(s) for s in shape)
    need = n * c * h * w + 4096
    free = shutil.disk_usage(path.parent).free
    if free < need:
        raise DataError(
            f"converting into {path} needs {need / 1e9:.1f} GB free, {path.parent} has {free / 1e9:.1f} GB; "
            "set data.data_dir (or $GATEDVAE_DATA) to a disk with room"
        )
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    bar = None
    try:
        with os.fdopen(fd, "wb") as fh:
            np.lib.format.write_array_header_1_0(
                fh, {"descr": np.dtype(np.uint8).str, "fortran_order": False, "shape": (n, c, h, w)}
            )
            if progress:
                from ..progress import progress_bar

                bar = progress_bar(total=n, desc=desc, unit="img", leave=False)
            done = 0
            for chunk in chunks:
                chunk = np.asarray(chunk)
                if chunk.dtype != np.uint8 or chunk.shape[1:] != (c, h, w):
                    raise DataError(
                        f"{desc}: a chunk of {chunk.shape} {chunk.dtype} does not fit uint8 (m, {c}, {h}, {w})"
                    )
                if done + len(chunk) > n:
                    raise DataError(f"{desc}: the source holds more than the {n} images its header says")
                fh.write(memoryview(np.ascontiguousarray(chunk)).cast("B"))
                done += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
                if on_chunk is not None:
                    on_chunk(done)
            if done != n:
                raise DataError(
                    f"{desc}: the source ended after {done} of {n} images; it is truncated, download it again"
                )
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    side = _sidecar(path)
    fd, tmp_side = tempfile.mkstemp(prefix=side.name + ".", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump({"version": CACHE_VERSION, **meta}, fh, indent=1)
    os.replace(tmp_side, side)
    return MemmapStore(path)


def materialise(
    name: str,
    mode: str,
    shape: tuple[int, int, int, int],
    chunks: Callable[[], Iterable[np.ndarray]],
    meta: dict[str, Any],
    data_dir_setting: str = "",
    tag: str = "",
    progress: bool = False,
) -> ImageStore:
    """The images of a file dataset as a store: converted into (or reopened from) the memory-mapped
    cache ``<data_dir>/cache/<name>[-<tag>]-v1.npy`` when ``mode`` is ``mmap``, else read into one
    uint8 tensor (``memory``). ``chunks()`` yields the converted uint8 images ``(m, C, H, W)``."""
    if mode == "mmap":
        file = cache_dir(data_dir_setting) / f"{name}{'-' + tag if tag else ''}-v{CACHE_VERSION}.npy"
        meta = {**meta, "shape": list(shape)}
        store = open_cache(file, meta)
        if store is None:
            store = write_cache(file, shape, chunks(), meta, progress=progress, desc=f"{name}: converting")
        return store
    n = shape[0]
    out = np.empty(shape, dtype=np.uint8)  # (N, C, H, W)
    done = 0
    for chunk in chunks():
        if done + len(chunk) > n:
            raise DataError(f"{name}: the source holds more than the {n} images its header says")
        out[done : done + len(chunk)] = chunk
        done += len(chunk)
    if done != n:
        raise DataError(f"{name}: the source ended after {done} of {n} images; it is truncated, download it again")
    return Uint8Store(out)


# --------------------------------------------------------------------------- streaming sources
class NpzMember:
    """One array of an ``.npz`` archive, read a chunk of rows at a time (stored or deflated member),
    never unpickling: ``shape``, ``dtype`` and :meth:`chunks`. Errors are one line naming the file
    and ``hint`` (what to do, e.g. download it again)."""

    def __init__(self, path: Path, key: str, hint: str) -> None:
        self.path, self.key, self.hint = Path(path), key, hint
        try:
            with zipfile.ZipFile(self.path) as zf:
                names = {n[:-4] for n in zf.namelist() if n.endswith(".npy")}
                if key not in names:
                    has = ", ".join(sorted(names)) or "none"
                    raise DataError(f"{self.path} has no array '{key}' (it has: {has}); {hint}")
                with zf.open(key + ".npy") as fh:
                    self.shape, self.fortran, self.dtype = self._header(fh)
        except DataError:
            raise
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as exc:
            raise DataError(f"{self.path} is not a readable .npz archive ({why(exc)}); {hint}") from None
        if self.dtype.hasobject:
            raise DataError(f"{self.path}: array '{key}' holds Python objects, which are never unpickled; {hint}")

    def _header(self, fh) -> tuple[tuple[int, ...], bool, np.dtype]:
        try:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                return np.lib.format.read_array_header_1_0(fh)
            return np.lib.format.read_array_header_2_0(fh)
        except (ValueError, EOFError, OSError, zlib.error, zipfile.BadZipFile) as exc:
            raise DataError(f"{self.path}: array '{self.key}' is corrupt ({why(exc)}); {self.hint}") from None

    def chunks(self, rows: int) -> Iterator[np.ndarray]:
        """The array ``rows`` leading-axis entries at a time (the last chunk may be shorter)."""
        if self.fortran:
            raise DataError(f"{self.path}: array '{self.key}' is stored in Fortran order; re-save it with numpy.save")
        n = self.shape[0] if self.shape else 0
        row_shape = tuple(self.shape[1:])
        row_bytes = int(math.prod(row_shape)) * self.dtype.itemsize
        try:
            with zipfile.ZipFile(self.path) as zf, zf.open(self.key + ".npy") as fh:
                self._header(fh)
                for s in range(0, n, rows):
                    m = min(rows, n - s)
                    buf = fh.read(m * row_bytes)
                    if len(buf) != m * row_bytes:
                        raise EOFError(f"'{self.key}' ends after {s + len(buf) // max(row_bytes, 1)} of {n} rows")
                    yield np.frombuffer(buf, dtype=self.dtype).reshape((m, *row_shape))
        except (ValueError, EOFError, OSError, zlib.error, zipfile.BadZipFile) as exc:
            raise DataError(f"{self.path}: '{self.key}' is truncated or corrupt ({why(exc)}); {self.hint}") from None

    def read(self) -> np.ndarray:
        """The whole (small) array."""
        parts = list(self.chunks(max(1, self.shape[0] if self.shape else 1)))
        return parts[0] if parts else np.empty(self.shape, dtype=self.dtype)


def nhwc_to_nchw(chunk: np.ndarray) -> np.ndarray:
    """uint8 images ``(m, H, W, C)`` -> ``(m, C, H, W)`` (a contiguous copy)."""
    return np.ascontiguousarray(chunk.transpose(0, 3, 1, 2))  # (m, C, H, W)


def resize_uint8(chunk: np.ndarray, size: int) -> np.ndarray:
    """uint8 images ``(m, C, H, W)`` resized to ``(m, C, size, size)`` (bilinear with antialiasing,
    the area-weighted downscale PIL's ``ANTIALIAS`` filter gives), rounded back to uint8."""
    if chunk.shape[-2:] == (size, size):
        return np.ascontiguousarray(chunk)
    x = torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float32))  # (m, C, H, W)
    y = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return y.round_().clamp_(0, 255).to(torch.uint8).numpy()  # (m, C, size, size)
