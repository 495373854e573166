"""Reconstructions and latent traversals, as tensors (TensorBoard) and labelled PNG figures."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..io import use_agg
from ..run import condition_vectors, eval_mode
from .pairs import grid_title, save_figure

if TYPE_CHECKING:  # pragma: no cover
    from ..run import Prepared

__all__ = [
    "image_grid",
    "reconstruction_tensor",
    "traversal_tensor",
    "traversal_figure",
    "reconstruction_figure",
    "traversal_images",
]


def image_grid(images: torch.Tensor, rows: int, pad: int = 2) -> torch.Tensor:
    """``(N, C, H, W)`` in [0, 1] -> one ``(C, rows*(H+pad)+pad, cols*(W+pad)+pad)`` grid image."""
    n, c, h, w = images.shape
    cols = math_ceil(n / rows)
    grid = torch.full((c, rows * (h + pad) + pad, cols * (w + pad) + pad), 0.5, dtype=images.dtype)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[:, pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w] = images[
            i
        ]
    return grid


def math_ceil(x: float) -> int:
    return int(-(-x // 1))


def _fixed_index(n_items: int, count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).choice(n_items, size=min(count, n_items), replace=False)


@torch.no_grad()
def _decode_mean(model, z: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
    return model.mean_image(model.decode(z, cond)).clamp(0, 1)


@torch.no_grad()
def reconstruction_tensor(prep: Prepared, count: int = 8) -> torch.Tensor:
    """Top row: images; bottom row: reconstructions from the posterior means."""
    idx = _fixed_index(len(prep.dataset), count)
    x = prep.dataset.images(idx)  # (n, C, H, W)
    cond = condition_vectors(prep.dataset, prep.config.model.condition, idx, prep.device)
    with eval_mode(prep.model) as model:
        recon = _decode_mean(model, model.encode(x, cond).mu, cond)  # (n, C, H, W)
    return image_grid(torch.cat([x, recon]).cpu(), rows=2)


@torch.no_grad()
def traversal_images(prep: Prepared, base_index: int | None = None, steps: int = 9, span: float = 2.5) -> torch.Tensor:
    """Decoded traversals ``(M, steps, C, H, W)``: each latent dim swept over [-span, span]
    from one image's posterior mean, the others held."""
    idx = np.array([base_index if base_index is not None else int(_fixed_index(len(prep.dataset), 1)[0])])
    x = prep.dataset.images(idx)  # (1, C, H, W)
    cond = condition_vectors(prep.dataset, prep.config.model.condition, idx, prep.device)
    m = prep.config.model.latent_dim
    values = torch.linspace(-span, span, steps, device=prep.device)  # (S,)
    with eval_mode(prep.model) as model:
        mu = model.encode(x, cond).mu  # (1, M)
        z = mu.repeat(m * steps, 1).view(m, steps, m)  # (M, S, M)
        dims = torch.arange(m, device=prep.device)
        z[dims, :, dims] = values  # sweep dim d in row d
        cond_rep = cond.repeat(m * steps, 1) if cond is not None else None
        imgs = _decode_mean(model, z.view(m * steps, m), cond_rep)  # (M*S, C, H, W)
    return imgs.view(m, steps, *imgs.shape[1:]).cpu()


def traversal_tensor(prep: Prepared) -> torch.Tensor:
    imgs = traversal_images(prep)
    return image_grid(imgs.flatten(0, 1), rows=imgs.shape[0])


def _row_labels(prep: Prepared) -> list[str]:
    m = prep.config.model.latent_dim
    labels = [f"z{d}" for d in range(m)]
    if prep.partitions is not None:
        for i, name in enumerate(prep.partitions.names):
            sl = prep.partitions.slice(i)
            for d in range(sl.start, sl.stop):
                labels[d] = f"{name} z{d}"
    return labels


def _show(ax, img: torch.Tensor) -> None:
    arr = img.permute(1, 2, 0).numpy()  # (H, W, C)
    ax.imshow(arr[..., 0] if arr.shape[-1] == 1 else arr, cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])


def traversal_figure(prep: Prepared, path: str | os.PathLike, title: str = "", steps: int = 9) -> Path:
    """PNG: one row per latent dim (labelled with its partition), swept over [-2.5, 2.5]."""
    plt = use_agg()

    imgs = traversal_images(prep, steps=steps)  # (M, S, C, H, W)
    m = imgs.shape[0]
    fig, axes = plt.subplots(m, steps, figsize=(steps * 0.8, m * 0.85), squeeze=False)
    for d, label in enumerate(_row_labels(prep)):
        for s in range(steps):
            _show(axes[d, s], imgs[d, s])
        axes[d, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    grid_title(fig, title)
    return save_figure(fig, path)


def reconstruction_figure(prep: Prepared, path: str | os.PathLike, title: str = "", count: int = 8) -> Path:
    """PNG: images (top) and their reconstructions (bottom)."""
    plt = use_agg()

    grid = reconstruction_tensor(prep, count)
    fig, ax = plt.subplots(figsize=(count * 0.8, 2.0))
    _show(ax, grid)
    if title:
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path)
