"""Diagnostic figures of a trained run: KL per latent, training curves, traversal rows, swap grids.

Each figure has an array-producing function (pure numpy, tested on hand-made inputs, or a model
call that returns a tensor) and a plotting function that only draws what it is given:

* :func:`latent_groups`, :func:`traversal_order` -> :func:`plot_kl_bars`, :func:`plot_image_rows`
  (traversal rows grouped by partition and sorted by KL within each, as the issue asks; the
  sweep itself is :func:`gatedvae.viz.figures.traversal_images`, +-2.5 by default, between the
  +-2 and +-3 of the papers);
* :func:`read_training_log`, :func:`training_curves` -> :func:`plot_training_curves`;
* :func:`swap_codes`, :func:`swap_grid_images` -> :func:`plot_swap_grid`: the latent swap grid
  of the Gated-VAE paper (``000_fc03c6fb001bc541.txt``, the CelebA pose/expression figure): one
  partition taken from image i, every other latent from image j.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import DataError
from ..io import use_agg
from ..run import condition_vectors
from .pairs import grid_title

if TYPE_CHECKING:  # pragma: no cover
    from ..run import Prepared

__all__ = [
    "latent_groups",
    "traversal_order",
    "read_training_log",
    "training_curves",
    "swap_codes",
    "swap_grid_images",
    "plot_kl_bars",
    "plot_training_curves",
    "plot_image_rows",
    "plot_swap_grid",
]

_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


# --------------------------------------------------------------------------- arrays
def latent_groups(latent_dim: int, units: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """(M,) int: the partition of each latent (-1 for a latent in no partition, or all -1)."""
    groups = np.full(int(latent_dim), -1, dtype=np.int64)  # (M,)
    for p, u in enumerate(units or ()):
        idx = np.asarray(u, dtype=np.int64)
        if (idx < 0).any() or (idx >= latent_dim).any():
            raise DataError(f"units[{p}]: latent indices {idx.tolist()} out of range for {latent_dim} latents")
        if (groups[idx] >= 0).any():
            raise DataError(f"units[{p}]: latents {idx[groups[idx] >= 0].tolist()} already belong to another partition")
        groups[idx] = p
    return groups


def traversal_order(kl, units: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """Row order of a traversal figure: latents grouped by partition (in partition order), sorted
    by decreasing KL within each; latents in no partition come last, also by decreasing KL.

    Args:
        kl: (M,) mean KL per latent.
        units: latent indices of each partition, or None (then simply by decreasing KL).

    Returns:
        (M,) int64 permutation of ``range(M)``.
    """
    kl = np.asarray(kl, dtype=np.float64).reshape(-1)  # (M,)
    groups = latent_groups(kl.size, units)
    n_groups = len(units or ())
    # Sort key: group (ungrouped last), then -KL, then index (stable for ties).
    key_group = np.where(groups >= 0, groups, n_groups)
    return np.lexsort((np.arange(kl.size), -kl, key_group)).astype(np.int64)


def read_training_log(path: str | os.PathLike) -> list[dict]:
    """The lines of a run's ``metrics.jsonl`` (a torn last line is skipped); [] if absent."""
    p = Path(path)
    if not p.is_file():
        return []
    lines = []
    for raw in p.read_text(encoding="utf-8").splitlines():
        try:
            lines.append(json.loads(raw))
        except json.JSONDecodeError:
            break
    return lines


def training_curves(lines: Sequence[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """term -> (steps (T,), values (T,)) for every numeric term of the training log.

    ``step``, ``epoch`` and ``phase`` are not terms; a term missing from some lines (logged only
    in one phase) has only the steps where it appears; non-finite values are kept (plots skip them).
    """
    out: dict[str, tuple[list, list]] = {}
    for line in lines:
        step = line.get("step")
        if not isinstance(step, (int, float)):
            continue
        for key, value in line.items():
            if key in ("step", "epoch", "phase") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            steps, values = out.setdefault(key, ([], []))
            steps.append(step)
            values.append(float(value))
    return {k: (np.asarray(s, dtype=np.int64), np.asarray(v, dtype=np.float64)) for k, (s, v) in out.items()}


def swap_codes(z_part, z_rest, dims) -> np.ndarray:
    """Codes of a swap grid: ``out[i, j] = z_rest[j]`` with ``dims`` replaced by ``z_part[i, dims]``.

    Args:
        z_part: (n, M) codes that give the swapped partition (rows of the grid).
        z_rest: (m, M) codes that give every other latent (columns of the grid).
        dims: latent indices of the partition.

    Returns:
        (n, m, M) codes (numpy or torch, as ``z_rest``).
    """
    dims = np.asarray(dims, dtype=np.int64)
    if isinstance(z_rest, torch.Tensor):
        zp = torch.as_tensor(z_part, dtype=z_rest.dtype, device=z_rest.device)
        out = z_rest.unsqueeze(0).repeat(zp.shape[0], 1, 1)  # (n, m, M)
        d = torch.as_tensor(dims, device=z_rest.device)
        out[:, :, d] = zp[:, None, d]  # (n, m, |dims|)
        return out
    zp = np.asarray(z_part)
    zr = np.asarray(z_rest)
    if zp.ndim != 2 or zr.ndim != 2 or zp.shape[1] != zr.shape[1]:
        raise DataError(f"swap_codes: expected (n, M) and (m, M) codes, got {zp.shape} and {zr.shape}")
    out = np.repeat(zr[None], zp.shape[0], axis=0)  # (n, m, M)
    out[:, :, dims] = zp[:, None, dims]  # (n, m, |dims|)
    return out


@torch.no_grad()
def swap_grid_images(
    prep: Prepared, partition: int, index_part, index_rest
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images of a swap grid for partition ``partition`` of a gated run.

    Returns ``(part (n, C, H, W), rest (m, C, H, W), grid (n, m, C, H, W))``: the images giving
    the partition, the images giving the rest, and the decoded swaps (posterior means, model in
    eval mode; the decoder's condition, if any, is that of the image giving the rest).
    """
    if prep.partitions is None:
        raise DataError("swap grids need a gated run (partitions); this run has none")
    ds, model = prep.dataset, prep.model
    ip = np.asarray(index_part, dtype=np.int64)
    ir = np.asarray(index_rest, dtype=np.int64)
    xp, xr = ds.images(ip), ds.images(ir)  # (n, C, H, W), (m, C, H, W)
    names = prep.config.model.condition
    cp, cr = condition_vectors(ds, names, ip, prep.device), condition_vectors(ds, names, ir, prep.device)
    was = model.training
    model.eval()
    try:
        zp = model.encode(xp, cp).mu  # (n, M)
        zr = model.encode(xr, cr).mu  # (m, M)
        sl = prep.partitions.slice(partition)
        z = swap_codes(zp, zr, np.arange(sl.start, sl.stop))  # (n, m, M)
        n, m = ip.size, ir.size
        cond = cr.repeat(n, 1) if cr is not None else None  # (n m, c)
        imgs = model.mean_image(model.decode(z.reshape(n * m, -1), cond)).clamp(0, 1)  # (n m, C, H, W)
    finally:
        model.train(was)
    return xp.cpu(), xr.cpu(), imgs.view(n, m, *imgs.shape[1:]).cpu()


# --------------------------------------------------------------------------- plots
def _show(ax, img) -> None:
    arr = np.asarray(
        img.permute(1, 2, 0) if isinstance(img, torch.Tensor) else np.transpose(img, (1, 2, 0))
    )  # (H, W, C)
    ax.imshow(arr[..., 0] if arr.shape[-1] == 1 else arr, cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)


def plot_kl_bars(kl, groups=None, group_names: Sequence[str] | None = None, title: str = ""):
    """Bar chart of the mean KL of each latent, coloured by partition (``groups`` from :func:`latent_groups`)."""
    plt = use_agg()
    kl = np.asarray(kl, dtype=np.float64).reshape(-1)  # (M,)
    groups = np.full(kl.size, -1) if groups is None else np.asarray(groups)
    colors = [_COLORS[g % len(_COLORS)] if g >= 0 else "#7f7f7f" for g in groups]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * kl.size + 1.5), 2.8))
    ax.bar(np.arange(kl.size), kl, color=colors)
    ax.set_xticks(np.arange(kl.size))
    ax.set_xticklabels([f"z{d}" for d in range(kl.size)], fontsize=8)
    ax.set_ylabel("KL (nats)")
    if group_names:
        from matplotlib.patches import Patch

        handles = [Patch(color=_COLORS[p % len(_COLORS)], label=n) for p, n in enumerate(group_names)]
        ax.legend(
            handles=handles, fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0)
        )  # beside the bars
    ax.set_title(title or f"KL per latent (total {kl.sum():.2f} nats)", fontsize=9)
    return fig


def plot_training_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str = ""):
    """One small panel per logged term against the step (from :func:`training_curves`)."""
    plt = use_agg()
    names = sorted(curves, key=lambda k: (k != "total", k))
    if not names:
        fig, ax = plt.subplots(figsize=(4, 2))
        ax.text(0.5, 0.5, "no training log", ha="center", va="center")
        ax.axis("off")
        return fig
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.4 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):  # axes: a full grid, names: fewer
        steps, values = curves[name]
        ok = np.isfinite(values)
        ax.plot(steps[ok], values[ok], lw=1.2)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_image_rows(images, labels: Sequence[str], title: str = "", col_labels: Sequence[str] | None = None):
    """A grid of images ``(R, S, C, H, W)`` in [0, 1], one labelled row each (traversals)."""
    plt = use_agg()
    rows, steps = images.shape[0], images.shape[1]
    fig, axes = plt.subplots(rows, steps, figsize=(steps * 0.8 + 1.2, rows * 0.85), squeeze=False)
    for r in range(rows):
        for s in range(steps):
            _show(axes[r, s], images[r, s])
        axes[r, 0].set_ylabel(labels[r], rotation=0, ha="right", va="center", fontsize=8)
    if col_labels is not None:
        for s, lab in enumerate(col_labels):
            axes[0, s].set_title(lab, fontsize=7)
    grid_title(fig, title, extra_top=0.18 if col_labels is not None else 0.0)
    return fig


def plot_swap_grid(part, rest, grid, title: str = ""):
    """Swap grid: top row the images giving the rest, left column those giving the partition,
    cell (i, j) the decoded swap (from :func:`swap_grid_images`)."""
    plt = use_agg()
    n, m = grid.shape[0], grid.shape[1]
    fig, axes = plt.subplots(n + 1, m + 1, figsize=((m + 1) * 0.85, (n + 1) * 0.85), squeeze=False)
    axes[0, 0].axis("off")
    for j in range(m):
        _show(axes[0, j + 1], rest[j])
    for i in range(n):
        _show(axes[i + 1, 0], part[i])
        for j in range(m):
            _show(axes[i + 1, j + 1], grid[i, j])
    axes[0, 1].set_title("rest from", fontsize=7, loc="left")
    axes[1, 0].set_ylabel("partition\nfrom", fontsize=7)
    grid_title(fig, title, extra_top=0.18)
    return fig
