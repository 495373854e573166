"""A one-page look at a dataset: random samples, then one traversal row per factor.

The figure a user opens first to check that the factors mean what they think: the dSprites
protocol of the Gated-VAE paper (``000_fc03c6fb001bc541.txt``) and the CorrelatedEllipses
traversals of CHyVAE (``004_1dabe4d22771e1b6.txt``, Fig. 5) are read the same way.
Drawn with matplotlib's Agg canvas directly (no pyplot state, no display needed).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import FactorDataset

__all__ = ["preview", "traversal_indices", "describe_dataset"]

MAX_COLUMNS = 16


def _classes_shown(size: int) -> np.ndarray:
    """Up to 16 evenly spaced classes of a factor with ``size`` classes: ``(<=16,)``."""
    return np.unique(np.round(np.linspace(0, size - 1, min(size, MAX_COLUMNS))).astype(np.int64))


def traversal_indices(dataset: FactorDataset, factor: str | int, base: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Image index for each class of ``factor`` with the other factors as close to ``base`` as possible.

    ``base`` is one factor tuple ``(K,)``; returns ``(len(classes),)`` int64, -1 where the dataset
    has no image of that class. Grid datasets give the exact tuple
    (:meth:`FactorDataset.factor_grid_index`). Non-grid datasets give, among the images of the
    class, the one *closest in the other factors* to the base: smallest sum over the other
    factors of ``|class - base class| / (size - 1)``, ties to the lowest index.
    """
    space = dataset.factor_space
    k = space.position(factor)
    base = np.asarray(base, dtype=np.int64)
    if dataset.is_grid:
        return dataset.factor_grid_index(base[None], k)[0][classes]  # (n_classes,)
    factors = dataset.factors  # (N, K)
    scale = np.maximum(np.asarray(space.sizes, dtype=np.float64) - 1.0, 1.0)  # (K,)
    diff = np.abs(factors - base[None]) / scale  # (N, K)
    diff[:, k] = 0.0
    dist = diff.sum(axis=1)  # (N,)
    out = np.full(len(classes), -1, dtype=np.int64)  # (n_classes,)
    for j, c in enumerate(classes):
        members = np.flatnonzero(factors[:, k] == c)  # (M,)
        if len(members):
            out[j] = members[np.argmin(dist[members])]
    return out


def _draw(ax, image: np.ndarray | None) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if image is None:
        ax.set_facecolor("0.85")
        return
    if image.shape[0] == 1:
        ax.imshow(image[0], cmap="gray", vmin=0, vmax=255, interpolation="antialiased")
    else:
        ax.imshow(image.transpose(1, 2, 0), interpolation="antialiased")


def preview(
    dataset: FactorDataset,
    path: str | Path,
    rng: np.random.Generator,
    n_samples: int = 16,
    traversal_factors: Sequence[str | int] | None = None,
) -> Path:
    """Write a PNG: a row of ``n_samples`` random images, then one row per factor traversed.

    Each traversal row shows up to 16 evenly spaced classes of its factor with every other
    factor fixed at one random base image's classes (exact for grid datasets; for non-grid
    datasets the image closest in the other factors, see :func:`traversal_indices`; a grey cell
    marks a class without images). ``traversal_factors`` defaults to every factor with more
    than one class. The file is written atomically (temp file, then ``os.replace``).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path).expanduser()
    n = len(dataset)
    if n == 0:
        raise DataError(f"{dataset.name}: the dataset is empty; nothing to preview")
    if n_samples < 1:
        raise DataError(f"preview: n_samples must be at least 1, got {n_samples}")
    space = dataset.factor_space
    if traversal_factors is None:
        ks = [k for k, s in enumerate(space.sizes) if s > 1]
    else:
        ks = [space.position(f) for f in traversal_factors]

    samples = rng.choice(n, size=n_samples, replace=n < n_samples)  # (n_samples,)
    base_index = int(rng.integers(n))
    base = dataset.factors_of(np.array([base_index]))[0]  # (K,)
    rows: list[tuple[str, list[int]]] = [("samples", [int(i) for i in samples])]
    for k in ks:
        classes = _classes_shown(space.sizes[k])
        rows.append((space.names[k], [int(i) for i in traversal_indices(dataset, k, base, classes)]))

    wanted = sorted({i for _, idx in rows for i in idx if i >= 0})
    images = dataset.store.gather_uint8(np.array(wanted, dtype=np.int64)).cpu().numpy()  # (U, C, H, W)
    lookup = dict(zip(wanted, images, strict=True))

    ncols = max(len(idx) for _, idx in rows)
    fig = Figure(figsize=(0.9 * ncols + 1.2, 0.95 * len(rows) + 0.4), dpi=120)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), ncols, squeeze=False, gridspec_kw={"wspace": 0.05, "hspace": 0.12})
    for r, (label, idx) in enumerate(rows):
        for c in range(ncols):
            ax = axes[r, c]
            if c >= len(idx):
                ax.set_axis_off()
                continue
            _draw(ax, lookup.get(idx[c]) if idx[c] >= 0 else None)
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(f"{dataset.name}: {n} images", fontsize=10)

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def describe_dataset(ds) -> str:
    """A few lines about a dataset: size, image shape, memory, factors, weak labels and how it was read
    (an image folder's source modes and their conversion: 16-bit scaled, alpha dropped, ...)."""
    c, h, w = ds.image_shape
    cache = getattr(ds.store, "path", None)  # a MemmapStore: the pixels stay in the file
    where = f"memory-mapped from {cache}" if cache is not None else "in memory"
    lines = [
        f"{ds.name}: {len(ds):,} images of {c}x{h}x{w}, {ds.store.nbytes / 1e6:.1f} MB {where}"
        f" ({type(ds.store).__name__}), {'full factor grid' if ds.is_grid else 'labelled items'}",
    ]
    for name, size, values in zip(ds.factor_space.names, ds.factor_space.sizes, ds.factor_space.values, strict=True):
        lo, hi = (float(values.min()), float(values.max())) if size else (0.0, 0.0)
        lines.append(f"  factor {name:<12} {size:>4} values in [{lo:.3g}, {hi:.3g}]")
    for name in ds.weak_names:
        col = ds.weak[:, ds.weak_names.index(name)]
        lines.append(f"  weak   {name:<12} continuous in [{col.min():.3g}, {col.max():.3g}]")
    lines.extend(f"  note   {note}" for note in ds.notes)
    return "\n".join(lines)
