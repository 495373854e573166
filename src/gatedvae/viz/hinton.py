"""Hinton diagrams of importance matrices (latents or partitions x factors), partitions outlined.

Eastwood & Williams show the DCI importance matrix R as a Hinton diagram: one square per
(latent, factor) entry, its *area* proportional to the weight, so a disentangled code is one
large square per row and a complete one one per column. The Gated-VAE paper
(``000_fc03c6fb001bc541.txt``) groups the latents into partitions; we draw the partition
boundaries across the rows and outline, for each partition, the factors it was trained to hold.

Arrays first (:func:`hinton_squares`, :func:`unit_spans`), then the plot (:func:`hinton_figure`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from ..errors import DataError
from ..io import use_agg
from .pairs import save_figure

__all__ = ["hinton_squares", "unit_spans", "hinton_figure"]


def hinton_squares(weights, max_weight: float | None = None) -> np.ndarray:
    """Side length in [0, 1] of each entry's square: ``sqrt(|w| / max_weight)`` (area ~ weight).

    Args:
        weights: (R, C) matrix (signs are ignored; NaN is drawn as nothing).
        max_weight: the weight that fills a cell; default the largest ``|w|``. An all-zero
            matrix gives all-zero sides.

    Returns:
        (R, C) float64 sides.
    """
    w = np.abs(np.asarray(weights, dtype=np.float64))  # (R, C)
    if w.ndim != 2:
        raise DataError(f"weights: expected a 2-D matrix, got shape {w.shape}")
    w = np.where(np.isfinite(w), w, 0.0)
    top = float(max_weight) if max_weight is not None else float(w.max(initial=0.0))
    if top <= 0:
        return np.zeros_like(w)
    return np.sqrt(np.clip(w / top, 0.0, 1.0))


def unit_spans(units: Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    """``(start, stop)`` row span of each partition, for partitions of contiguous latents.

    Raises DataError if a partition's latents are not one contiguous run (the diagram could
    not outline it as one block).
    """
    spans = []
    for p, u in enumerate(units):
        idx = np.sort(np.asarray(u, dtype=np.int64))
        if idx.size == 0 or not np.array_equal(idx, np.arange(idx[0], idx[0] + idx.size)):
            raise DataError(f"units[{p}]: latents {idx.tolist()} are not one contiguous run")
        spans.append((int(idx[0]), int(idx[-1]) + 1))
    return spans


def hinton_figure(
    weights,
    path: str | os.PathLike | None = None,
    *,
    factor_names: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    partitions: Sequence[Sequence[int]] | None = None,
    partition_names: Sequence[str] | None = None,
    highlight: Sequence[tuple[int, int, int]] | None = None,
    title: str = "",
):
    """The Hinton diagram of ``weights`` (R rows x C factor columns): a figure, or a PNG at ``path``.

    Args:
        weights: (R, C) matrix, e.g. DCI's importance (latents x factors); row 0 at the top.
        path: if given, the figure is written there atomically and the path returned;
            otherwise the matplotlib figure is returned.
        factor_names: column labels (default ``0..C-1``).
        row_labels: row labels (default ``z0..``, with the partition name when known).
        partitions: latent indices of each partition (contiguous runs, as
            :meth:`gatedvae.gating.Partitions.units`): a line between partitions and the
            partition's name at the right.
        partition_names: names of the partitions (default ``p0..``).
        highlight: ``(row_start, row_stop, col)`` cells outlined in colour: where a partition's
            factor is meant to live.
        title: the figure title.
    """
    plt = use_agg()
    from matplotlib.patches import Rectangle

    side = hinton_squares(weights)  # (R, C)
    rows, cols = side.shape
    spans = unit_spans(partitions) if partitions is not None else []
    names = list(partition_names) if partition_names is not None else [f"p{p}" for p in range(len(spans))]
    if len(names) != len(spans):
        raise DataError(f"partition_names: {len(names)} names for {len(spans)} partitions")
    if spans and spans[-1][1] > rows:
        raise DataError(f"partitions: latent {spans[-1][1] - 1} out of range for {rows} rows")
    if row_labels is None:
        row_labels = [f"z{r}" for r in range(rows)]
        for (start, stop), name in zip(spans, names, strict=True):
            for r in range(start, stop):
                row_labels[r] = f"z{r} {name}"
    fig, ax = plt.subplots(figsize=(1.4 + 0.55 * cols + (1.0 if spans else 0.0), 0.9 + 0.42 * rows))
    ax.set_facecolor("#f2f2f2")
    for r in range(rows):
        for c in range(cols):
            s = side[r, c]
            if s > 0:
                ax.add_patch(Rectangle((c - s / 2, r - s / 2), s, s, facecolor="#1f3b73", edgecolor="none"))
    for (start, stop), name in zip(spans, names, strict=True):
        if start > 0:
            ax.axhline(start - 0.5, color="#888888", lw=1.0)
        ax.text(cols - 0.35, (start + stop - 1) / 2, name, va="center", ha="left", fontsize=8)
    for r0, r1, c in highlight or ():
        ax.add_patch(Rectangle((c - 0.5, r0 - 0.5), 1, r1 - r0, fill=False, edgecolor="#d9541e", lw=1.6))
    ax.set_xlim(-0.5, cols - 0.5)
    ax.set_ylim(rows - 0.5, -0.5)
    ax.set_aspect("equal")
    ax.set_xticks(range(cols))
    ax.set_yticks(range(rows))
    ax.set_xticklabels(
        list(factor_names) if factor_names is not None else [str(c) for c in range(cols)],
        rotation=45,
        ha="right",
        fontsize=8,
    )
    ax.set_yticklabels(list(row_labels), fontsize=8)
    ax.tick_params(length=0)
    if title:
        ax.set_title(title, fontsize=9)
    if path is not None:
        return save_figure(fig, path)
    return fig
