"""FactorDataset: images held in memory compactly, plus their factor classes and weak labels.

Images live in an :class:`ImageStore` as one tensor (bit-packed for binary images, uint8
otherwise) and batches are made by index gather (``index_select``), never by a Python loop
per item. A store can be moved to the GPU whole, so batch assembly happens there.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..errors import DataError
from .factors import FactorSpace

__all__ = ["ImageStore", "PackedBinaryStore", "Uint8Store", "FactorDataset", "as_index_tensor", "host_to_device"]


def host_to_device(t: torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
    """``t`` on ``device``; from host memory to a CUDA device without the host waiting.

    A plain ``.to("cuda")`` of pageable memory makes the host wait for the copy (and so for
    all queued GPU work) every training step. Here the bytes go to pinned memory and are sent
    with ``non_blocking=True``; PyTorch's pinned-memory cache keeps the block until the copy has
    run, so ``t`` may be reused at once (docs/training.md, "CUDA").
    """
    dev = torch.device(device) if device is not None else t.device
    if dev.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(dev, non_blocking=True)
    return t.to(dev)


def as_index_tensor(
    index: np.ndarray | torch.Tensor | Sequence[int], device: torch.device | None = None
) -> torch.Tensor:
    """Indices as an int64 tensor on ``device`` (no copy when already there; see :func:`host_to_device`)."""
    if isinstance(index, torch.Tensor):
        return host_to_device(index.to(torch.int64), device)
    return host_to_device(torch.as_tensor(np.asarray(index, dtype=np.int64)), device)


class ImageStore:
    """N images of shape (C, H, W) in one tensor; ``gather`` returns float32 in [0, 1]."""

    channels: int
    height: int
    width: int

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        raise NotImplementedError

    def gather(self, index: np.ndarray | torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Images at ``index`` as float32 ``(B, C, H, W)`` in [0, 1] on the store's device."""
        raise NotImplementedError

    def gather_uint8(self, index: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Images at ``index`` as uint8 ``(B, C, H, W)`` in 0..255."""
        raise NotImplementedError

    def to(self, device: torch.device | str) -> ImageStore:
        raise NotImplementedError

    def subset(self, index: np.ndarray) -> ImageStore:
        raise NotImplementedError

    @property
    def nbytes(self) -> int:
        raise NotImplementedError


class PackedBinaryStore(ImageStore):
    """Binary images, 8 pixels a byte (``np.packbits`` order, most significant bit first).

    dSprites' 737,280 images of 64x64 take 377 MB this way instead of 3 GB as uint8.
    """

    def __init__(self, packed: np.ndarray | torch.Tensor, height: int, width: int) -> None:
        packed = torch.as_tensor(packed)
        if packed.dtype != torch.uint8 or packed.ndim != 2:
            raise DataError(
                f"packed binary images must be uint8 of shape (N, H*W/8), got {tuple(packed.shape)} {packed.dtype}"
            )
        if height * width % 8 or packed.shape[1] != height * width // 8:
            raise DataError(f"packed rows of {packed.shape[1]} bytes do not hold {height}x{width} images")
        self.packed = packed.contiguous()  # (N, H*W/8)
        self.channels, self.height, self.width = 1, int(height), int(width)
        # byte -> its 8 pixels as float32, for the gather on an accelerator.
        shifts = torch.arange(7, -1, -1)  # (8,)
        self._lut = (
            ((torch.arange(256).unsqueeze(-1) >> shifts) & 1).to(torch.float32).to(self.packed.device)
        )  # (256, 8)

    @classmethod
    def from_images(cls, images: np.ndarray) -> PackedBinaryStore:
        """From binary images ``(N, H, W)`` (any dtype, nonzero is white)."""
        images = np.asarray(images)
        n, h, w = images.shape[0], images.shape[-2], images.shape[-1]
        packed = np.packbits(images.reshape(n, h * w) != 0, axis=1)  # (N, H*W/8)
        return cls(packed, h, w)

    def __len__(self) -> int:
        return int(self.packed.shape[0])

    @property
    def device(self) -> torch.device:
        return self.packed.device

    @property
    def nbytes(self) -> int:
        return self.packed.numel()

    def gather(self, index: np.ndarray | torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        # Measured (benchmarks/bench_data.py): on the CPU numpy's unpackbits is the fastest
        # unpacking (about 7x a shift-and-mask in torch); elsewhere a 256-entry lookup table.
        idx = as_index_tensor(index, self.device)
        rows = self.packed.index_select(0, idx)  # (B, H*W/8)
        if rows.device.type == "cpu":
            bits = torch.from_numpy(np.unpackbits(rows.numpy(), axis=1))  # (B, H*W) uint8
            images = bits.view(-1, 1, self.height, self.width)  # (B, 1, H, W)
            return images.to(torch.float32) if out is None else out.copy_(images)
        images = self.unpack_lut(rows)  # (B, 1, H, W)
        return images if out is None else out.copy_(images)

    def unpack_lut(self, rows: torch.Tensor) -> torch.Tensor:
        """Packed rows ``(B, H*W/8)`` -> float32 images ``(B, 1, H, W)`` on any device."""
        return torch.nn.functional.embedding(rows.long(), self._lut).view(-1, 1, self.height, self.width)

    def gather_uint8(self, index: np.ndarray | torch.Tensor) -> torch.Tensor:
        return (self.gather(index) * 255).to(torch.uint8)

    def to(self, device: torch.device | str) -> PackedBinaryStore:
        return PackedBinaryStore(self.packed.to(device), self.height, self.width)

    def subset(self, index: np.ndarray) -> PackedBinaryStore:
        return PackedBinaryStore(
            self.packed.index_select(0, as_index_tensor(index, self.device)), self.height, self.width
        )


class Uint8Store(ImageStore):
    """Grayscale or RGB images as uint8 ``(N, C, H, W)``."""

    def __init__(self, images: np.ndarray | torch.Tensor) -> None:
        images = torch.as_tensor(images)
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise DataError(f"uint8 images must have shape (N, C, H, W), got {tuple(images.shape)} {images.dtype}")
        self.images = images.contiguous()  # (N, C, H, W)
        _, self.channels, self.height, self.width = (int(s) for s in images.shape)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def device(self) -> torch.device:
        return self.images.device

    @property
    def nbytes(self) -> int:
        return self.images.numel()

    def gather(self, index: np.ndarray | torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        rows = self.images.index_select(0, as_index_tensor(index, self.device))  # (B, C, H, W)
        if out is None:
            return rows.to(torch.float32).mul_(1.0 / 255.0)
        return out.copy_(rows).mul_(1.0 / 255.0)

    def gather_uint8(self, index: np.ndarray | torch.Tensor) -> torch.Tensor:
        return self.images.index_select(0, as_index_tensor(index, self.device))

    def to(self, device: torch.device | str) -> Uint8Store:
        return Uint8Store(self.images.to(device))

    def subset(self, index: np.ndarray) -> Uint8Store:
        return Uint8Store(self.images.index_select(0, as_index_tensor(index, self.device)))


class FactorDataset:
    """Images with discrete factor classes and optional continuous weak labels.

    Args:
        name: dataset name (for logs and figures).
        store: the images.
        factor_space: the discrete factors (names, sizes, values). May have no factors for
            a dataset that only carries weak labels.
        factors: ``(N, K)`` int64 classes per image. ``None`` means a *full grid*: image ``i``
            has the factors ``factor_space.to_factors(i)``, which exact pair sampling
            exploits with index arithmetic.
        weak: ``(N, L)`` float64 continuous weak labels (pose angles, action units) with
            ``weak_names`` naming the columns; clustered by the cluster pair sampler.
        description: one line about where the data came from.
        notes: lines about how the images were read that a user should see (``data describe``
            prints them), e.g. the source modes of an image folder and their conversion.
        label_file, label_columns: the labels file and every column it has, loaded or not; an
            error about a column that is in the file but was not loaded says which setting to add
            it to.
    """

    def __init__(
        self,
        name: str,
        store: ImageStore,
        factor_space: FactorSpace,
        factors: np.ndarray | None = None,
        weak: np.ndarray | None = None,
        weak_names: Sequence[str] = (),
        description: str = "",
        notes: Sequence[str] = (),
        label_file: str = "",
        label_columns: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.store = store
        self.factor_space = factor_space
        self.description = description
        self.notes: tuple[str, ...] = tuple(notes)
        self.label_file = str(label_file)
        self.label_columns: tuple[str, ...] = tuple(label_columns)
        n = len(store)
        if factors is None:
            if len(factor_space) != n:
                raise DataError(f"{name}: a full-grid dataset needs {len(factor_space)} images, has {n}")
            self.is_grid = True
            self._factors: np.ndarray | None = None
        else:
            factors = np.asarray(factors)
            if factors.shape != (n, factor_space.num_factors):
                raise DataError(
                    f"{name}: factor classes of shape {factors.shape} do not fit {n} images and "
                    f"{factor_space.num_factors} factors"
                )
            if not np.issubdtype(factors.dtype, np.integer):
                raise DataError(f"{name}: factor classes must be integers, got {factors.dtype}")
            sizes = np.asarray(factor_space.sizes)
            if n and (factors.min(axis=0) < 0).any() or n and (factors.max(axis=0) >= sizes).any():
                raise DataError(f"{name}: factor classes outside 0..size-1")
            self.is_grid = False
            self._factors = factors.astype(np.int64)
        if weak is not None:
            weak = np.asarray(weak, dtype=np.float64)
            if weak.ndim != 2 or weak.shape[0] != n or weak.shape[1] != len(weak_names):
                raise DataError(
                    f"{name}: weak labels of shape {weak.shape} do not fit {n} images and columns {list(weak_names)}"
                )
            if not np.isfinite(weak).all():
                raise DataError(f"{name}: weak labels contain NaN or infinite values; clean or drop those rows")
        self.weak = weak
        self.weak_names: tuple[str, ...] = tuple(weak_names)

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return len(self.store)

    def __repr__(self) -> str:
        shape = f"{self.store.channels}x{self.store.height}x{self.store.width}"
        return (
            f"FactorDataset({self.name!r}, n={len(self)}, images={shape}, factors={self.factor_space!r}, "
            f"weak={list(self.weak_names)})"
        )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.store.channels, self.store.height, self.store.width)

    @property
    def factors(self) -> np.ndarray:
        """``(N, K)`` int64 factor classes of every image."""
        if self._factors is None:
            self._factors = self.factor_space.to_factors(np.arange(len(self), dtype=np.int64))
        return self._factors

    def factors_of(self, index: np.ndarray) -> np.ndarray:
        """Factor classes ``(B, K)`` of the images at ``index``."""
        index = np.asarray(index, dtype=np.int64)
        if self.is_grid:
            return self.factor_space.to_factors(index)
        return self.factors[index]

    def index_of(self, factors: np.ndarray) -> np.ndarray:
        """Index of the image with each factor tuple (full-grid datasets only)."""
        if not self.is_grid:
            raise DataError(f"{self.name}: index_of needs a full-grid dataset; use the grouped pair sampler")
        return self.factor_space.to_index(factors)

    def images(self, index: np.ndarray | torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """float32 ``(B, C, H, W)`` in [0, 1] on the store's device (written into ``out`` where given:
        a slice of an ensemble's stacked batch)."""
        return self.store.gather(index, out=out)

    def to(self, device: torch.device | str) -> FactorDataset:
        """The same dataset with its images on ``device`` (labels stay in host memory)."""
        out = object.__new__(FactorDataset)
        out.__dict__.update(self.__dict__)
        out.store = self.store.to(device)
        return out

    def subset_grid(self, strides: dict[str, int]) -> FactorDataset:
        """A full-grid dataset keeping every k-th class of the named factors (still a grid)."""
        if not strides:
            return self
        if not self.is_grid:
            raise DataError(f"{self.name}: data.stride needs a full-grid dataset (dsprites); drop data.stride")
        sub, index = self.factor_space.subspace(strides)
        return FactorDataset(self.name, self.store.subset(index), sub, description=self.description, notes=self.notes)

    def factor_grid_index(self, base: np.ndarray, factor: str | int) -> np.ndarray:
        """For each base factor tuple ``(B, K)``, the indices that vary one factor over all its
        classes: ``(B, size)``. Grid datasets only; used by traversal figures and metrics."""
        k = self.factor_space.position(factor)
        base = np.asarray(base, dtype=np.int64)
        size = self.factor_space.sizes[k]
        grid = np.repeat(base[:, None, :], size, axis=1)  # (B, size, K)
        grid[:, :, k] = np.arange(size)
        return self.index_of(grid.reshape(-1, base.shape[1])).reshape(len(base), size)
