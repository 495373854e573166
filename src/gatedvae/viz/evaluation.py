"""The figures of an evaluated run (``gatedvae evaluate``), written into ``RUN/figures/``.

Hinton diagrams of the DCI importance (latents x factors with the partitions outlined, and
partitions x factors), latent traversals (rows grouped by partition, sorted by KL),
reconstructions, KL per latent, training curves, for gated runs one latent swap grid per
partition, and the panels the model supplies itself (:meth:`GenerativeModel.figure_panels`:
InfoGAN's samples and code traversals), drawn by :func:`draw_panels`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..io import use_agg
from . import diagnostics as dg
from .figures import image_grid, reconstruction_figure, traversal_images
from .hinton import hinton_figure
from .pairs import save_figure

if TYPE_CHECKING:  # pragma: no cover
    from ..models.base import ImagePanel
    from ..run import Prepared

__all__ = ["write_figures", "draw_panels"]


def draw_panels(panels: Sequence[ImagePanel], out_dir: str | os.PathLike) -> list[Path]:
    """Draw a model's :class:`~gatedvae.models.base.ImagePanel` s into ``out_dir/<name>.png``; the paths.

    A panel of ``(N, C, H, W)`` images is one grid of ``grid_rows`` rows (7 x 7 inches, no axes);
    one of ``(R, S, C, H, W)`` images is R labelled rows of S images (:func:`.diagnostics.plot_image_rows`).
    """
    out_dir = Path(out_dir)
    written = []
    for panel in panels:
        path = out_dir / f"{panel.name}.png"
        if panel.images.dim() == 4:
            plt = use_agg()
            grid = image_grid(panel.images, rows=panel.grid_rows)  # (C, H', W')
            fig, ax = plt.subplots(figsize=(7, 7))
            arr = grid.permute(1, 2, 0).numpy()  # (H', W', C)
            ax.imshow(arr[..., 0] if arr.shape[-1] == 1 else arr, cmap="gray", vmin=0, vmax=1)
            ax.axis("off")
            ax.set_title(panel.title, fontsize=9)
        else:
            fig = dg.plot_image_rows(
                panel.images, list(panel.row_labels), title=panel.title, col_labels=list(panel.col_labels) or None
            )
        written.append(save_figure(fig, path))
    return written


def _importance_sources(result: dict) -> list[str]:
    """The metrics of ``result`` with a (latents x factors) ``importance`` matrix and its
    disentanglement and completeness (the DCI variants), in run order."""
    return [
        m for m, entry in result["results"].items() if {"importance", "disentanglement"} <= set(entry.get("scores", {}))
    ]


def write_figures(prep: Prepared, result: dict, run_dir: str | os.PathLike, seed: int = 0) -> list[Path]:
    """Write the evaluation figures of ``result`` (from :func:`gatedvae.evaluation.evaluate_model`) into
    ``RUN/figures/``; returns the paths written."""
    out_dir = Path(run_dir) / "figures"
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 4])
    written: list[Path] = []
    parts = prep.partitions
    m = prep.model.latent_dim
    units = parts.units() if parts is not None else None
    groups = dg.latent_groups(m, units)
    part_names = list(parts.names) if parts is not None else []
    factor_names = result["factor_names"]
    latent_labels = [f"z{d}" + (f" {part_names[groups[d]]}" if groups[d] >= 0 else "") for d in range(m)]
    spans = [
        (p.start, p.stop, name)
        for name, p in zip(part_names, (parts.slice(i) for i in range(len(part_names))), strict=True)
    ]
    claimed = (
        [[factor_names.index(f) for f in p.factors if f in factor_names] for p in prep.config.gating.partitions]
        if parts
        else []
    )

    for name in _importance_sources(result):
        scores = result["results"][name]["scores"]
        highlight = [(s, e, c) for (s, e, _), cols in zip(spans, claimed, strict=True) for c in cols]
        written.append(
            hinton_figure(
                scores["importance"],
                out_dir / f"hinton_{name}.png",
                factor_names=factor_names,
                row_labels=latent_labels,
                partitions=units,
                partition_names=part_names or None,
                highlight=highlight or None,
                title=f"{name}: importance (D={scores['disentanglement']:.2f}, C={scores['completeness']:.2f})",
            )
        )
        if "partition" in scores:
            pscores = scores["partition"]
            written.append(
                hinton_figure(
                    pscores["importance"],
                    out_dir / f"hinton_{name}_partitions.png",
                    factor_names=factor_names,
                    row_labels=part_names,
                    highlight=[(p, p + 1, c) for p, cols in enumerate(claimed) for c in cols] or None,
                    title=f"{name} by partition (D={pscores['disentanglement']:.2f}, C={pscores['completeness']:.2f})",
                )
            )

    kl = np.asarray(result["posterior"]["kl_per_dim"])
    order = dg.traversal_order(kl, units)
    base = int(rng.integers(0, len(prep.dataset)))
    steps, span = 9, 2.5
    imgs = traversal_images(prep, base_index=base, steps=steps, span=span)[torch.as_tensor(order)]  # (M, S, C, H, W)
    labels = [f"{latent_labels[d]} ({kl[d]:.2f})" for d in order]
    cols = [f"{v:+.1f}" for v in np.linspace(-span, span, steps)]
    written.append(
        save_figure(
            dg.plot_image_rows(imgs, labels, title=f"traversals of image {base} (KL in nats)", col_labels=cols),
            out_dir / "traversals.png",
        )
    )
    written.append(
        reconstruction_figure(prep, out_dir / "reconstructions.png", title="images (top) and reconstructions")
    )
    written.append(save_figure(dg.plot_kl_bars(kl, groups, part_names), out_dir / "kl_per_dim.png"))
    curves = dg.training_curves(dg.read_training_log(Path(run_dir) / "metrics.jsonl"))
    written.append(save_figure(dg.plot_training_curves(curves, title="training"), out_dir / "training_curves.png"))
    if parts is not None:
        n = min(6, len(prep.dataset))
        for p, pname in enumerate(part_names):
            ip = rng.choice(len(prep.dataset), size=n, replace=False)
            ir = rng.choice(len(prep.dataset), size=n, replace=False)
            a, b, grid = dg.swap_grid_images(prep, p, ip, ir)
            written.append(
                save_figure(
                    dg.plot_swap_grid(
                        a, b, grid, title=f"partition '{pname}' from the left column, the rest from the top row"
                    ),
                    out_dir / f"swap_{pname}.png",
                )
            )
    written.extend(draw_panels(prep.model.figure_panels(rng), out_dir))  # the model's own (InfoGAN: samples)
    return written
