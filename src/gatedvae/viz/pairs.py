"""Pair grids: what a Gated-VAE partition is trained on, shown as input/target image pairs."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..data.base import FactorDataset
from ..data.pairs import PairBatch
from ..io import use_agg

__all__ = ["pair_grid", "save_figure"]


def save_figure(fig, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Save a matplotlib figure atomically (temporary file, then rename) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def grid_title(fig, title: str, extra_top: float = 0.0) -> None:
    """Title a grid of image axes with a fixed margin above it, in inches, whatever its height.

    ``fig.suptitle`` alone leaves the axes at matplotlib's default top, 88% of the figure's height:
    under the title of a tall grid (a face traversal of 14 rows is 12 inches high) that is an
    empty band of more than an inch. ``extra_top``: inches for labels above the first row.
    """
    if not title:
        return
    height = fig.get_figheight()  # inches
    fig.subplots_adjust(top=1.0 - (0.3 + extra_top) / height)
    fig.suptitle(title, fontsize=9, y=1.0 - 0.04 / height, va="top")


def pair_grid(dataset: FactorDataset, batches: Mapping[str, PairBatch], path: str | os.PathLike, n: int = 8) -> Path:
    """One block of two rows per partition: inputs above, their targets below.

    Args:
        dataset: the images.
        batches: partition name (or any label: ``k=1``) -> a batch of pairs from that sampler.
        path: PNG to write.
        n: pairs shown per partition.

    A batch whose pairs change different factors (``PairBatch.changed``: Locatello et al.'s pairs,
    :class:`~gatedvae.data.pairs.KChangedPairSampler`) names each pair's changed factors above it.
    """
    plt = use_agg()

    rows = 2 * len(batches)
    named = any(b.changed is not None for b in batches.values())  # room above the inputs for their names
    fig, axes = plt.subplots(rows, n, figsize=(n * 0.9, rows * (1.25 if named else 0.95)), squeeze=False)
    if named:
        fig.subplots_adjust(hspace=0.55)
    for r, (name, batch) in enumerate(batches.items()):
        shared = [f for f, s in zip(dataset.factor_space.names, batch.shared, strict=True) if s]
        for row, index, label in ((2 * r, batch.input[:n], f"{name}\ninput"), (2 * r + 1, batch.target[:n], "target")):
            imgs = dataset.store.gather_uint8(np.asarray(index)).cpu().numpy()  # (n, C, H, W)
            for c in range(n):
                ax = axes[row, c]
                ax.set_xticks([])
                ax.set_yticks([])
                if c < len(imgs):
                    img = imgs[c].transpose(1, 2, 0)  # (H, W, C)
                    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255)
                else:
                    ax.axis("off")
            axes[row, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
        if batch.changed is not None:
            names = dataset.factor_space.names
            for c, changed in enumerate(batch.changed[:n]):
                what = "\n".join(f for f, ch in zip(names, changed, strict=True) if ch)
                axes[2 * r, c].set_title(what or "none", fontsize=5, pad=2)
            continue
        axes[2 * r, n - 1].set_title(f"shared: {', '.join(shared) or 'cluster'}", fontsize=7, loc="right")
    return save_figure(fig, path)
