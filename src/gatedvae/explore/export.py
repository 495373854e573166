"""``gatedvae explore RUN --export DIR``: the explorer as one self-contained HTML file, no server.

``DIR/index.html`` holds the same page as the server's, its script and style inline, and the
answers it would have asked for precomputed: ``n_images`` inputs (dataset images drawn with
``seed``; for a GAN, codes drawn from the prior) with posteriors and reconstructions, their
traversal strips at each span of ``spans`` (aggregate posterior spreads), and the swap of every
group between every two of them (one sprite: ``gatedvae evaluate``'s swap grids over all the
inputs). Images are PNG data URLs; a Content-Security-Policy forbids the page from loading
anything, so it can be attached to a paper, mailed or opened offline. On the page, a slider shows
the nearest precomputed frame of its latent (the other latents at the input's means). A conditional
VAE's images are decoded with each image's own labels (a swap tile with those of the image giving
the rest); the page shows them and cannot change them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..io import atomic_write_text
from ..viz.diagnostics import swap_codes
from ..viz.figures import image_grid
from .api import _item_json, asset, data_url
from .session import Explorer, png_bytes

__all__ = ["export_page", "static_data", "STATIC_CSP"]

STATIC_CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data: blob:"


def _items(ex: Explorer, n: int, seed: int) -> list[dict[str, Any]]:
    if ex.dataset is not None and not ex.is_gan:
        rng = np.random.default_rng([int(seed), 0xE7])
        index = rng.choice(len(ex.dataset), size=min(n, len(ex.dataset)), replace=False)
        return [_item_json(ex, ex.item(int(i))) for i in index]
    return [_item_json(ex, ex.prior_item(seed * 1000 + k)) for k in range(n)]


def static_data(
    ex: Explorer, n_images: int = 8, seed: int = 0, spans: Sequence[float] = (1.0, 2.0, 3.0), steps: int = 9
) -> dict[str, Any]:
    """Everything the static page shows (JSON-ready): the run's info, the items with their traversal
    sprites per span, and one swap sprite: tile ``(g * N + i, j)`` is image j with group g from image i
    (a conditional run: decoded with image j's labels)."""
    if n_images < 2:
        raise ConfigError(f"--export-images must be at least 2 (swaps need two images), got {n_images}")
    if not 2 <= steps <= 25:
        raise ConfigError(f"steps must lie in 2..25, got {steps}")
    items = _items(ex, n_images, seed)
    for item in items:
        z = np.asarray(item["mu"])
        item["traversals"] = {}
        for span in spans:
            lo, hi = ex.traversal_ranges(z, None, float(span), "aggregate")
            sprite, rows = ex.traversals(z, lo, hi, steps, cond=item["cond"])
            item["traversals"][f"{float(span):g}"] = {"sprite": data_url(png_bytes(sprite, 9)), "rows": rows}
    codes = np.stack([np.asarray(it["mu"]) for it in items])  # (N, M)
    n = len(items)
    # tile (g N + i, j): image j with group g from image i
    swapped = np.concatenate([swap_codes(codes, codes, g.dims).reshape(n * n, -1) for g in ex.groups])  # (G N N, M)
    # a conditional run: tile (g N + i, j) with image j's own labels (j, the image giving the rest)
    labels = np.tile(np.array([it["cond"] for it in items]), (len(ex.groups) * n, 1)) if ex.conditional else None
    imgs = ex.decode(swapped, cond=labels)  # (G N N, C, H, W)
    sprite = image_grid(torch.from_numpy(imgs), rows=len(ex.groups) * n, pad=0).numpy()  # (C, G*N*H, N*W)
    return {
        "static": True,
        "info": ex.info(),
        "items": items,
        "spans": [float(s) for s in spans],
        "steps": steps,
        "unit": "aggregate",
        "swaps": {"sprite": data_url(png_bytes(sprite, 9)), "n": n, "groups": [g.name for g in ex.groups]},
    }


def render_page(data: dict[str, Any]) -> str:
    """The static page: index.html with its style, script and data inline."""
    page = asset("index.html").decode("utf-8")
    css = asset("explore.css").decode("utf-8")
    js = asset("explore.js").decode("utf-8")
    blob = json.dumps(data, allow_nan=False, separators=(",", ":")).replace("<", "\\u003c")
    head = f'<meta http-equiv="Content-Security-Policy" content="{STATIC_CSP}">\n<style>\n{css}</style>'
    link = '<link rel="stylesheet" href="explore.css">'
    script = '<script src="explore.js" defer></script>'
    if link not in page or script not in page:  # pragma: no cover  (the template and this code go together)
        raise RuntimeError("explore/assets/index.html lost its stylesheet link or script tag")
    page = page.replace(link, head)
    return page.replace(
        script, f'<script type="application/json" id="static-data">{blob}</script>\n<script>\n{js}</script>'
    )


def export_page(
    ex: Explorer,
    out_dir: str | os.PathLike,
    n_images: int = 8,
    seed: int = 0,
    spans: Sequence[float] = (1.0, 2.0, 3.0),
    steps: int = 9,
) -> Path:
    """Write ``out_dir/index.html`` (atomically; the folder is created); returns its path."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--export {out} is a file; give a directory (index.html is written into it)")
    html = render_page(static_data(ex, n_images, seed, spans, steps))
    out.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(out / "index.html", html)
