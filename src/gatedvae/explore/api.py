"""The explorer's HTTP interface as plain functions: a request in, a :class:`Response` out.

No sockets here (:mod:`.server` does those), so every route and every refusal is testable by a
function call. Routes (``GET`` unless said; JSON answers unless said)::

    /                      the page (index.html); /explore.js, /explore.css its assets
    /api/info              the run's layout, factors, latent statistics and metrics
    /api/image?index=I     a dataset image, its posterior (mu, std) and reconstruction
    /api/random?seed=S     a dataset image drawn with S
    /api/sample?seed=S[&cond=..]   no input: a code drawn from the prior, and its decoded image
    /api/find?seed=S&<factor>=<class>...   an image with these factor classes (omitted: any)
    POST /api/upload[?cond=..]   an image file as the raw body (X-Filename: its name)
    /api/decode?z=..&noise=N[&cond=..]   PNG of the decoded code (the sliders' fast path)
    /api/traverse?z=..&span=K&unit=U&steps=S[&std=..][&noise=N][&cond=..]   traversal sprite + rows
    /api/swap?a=..&b=..&groups=g1,g2[&noise=N][&cond_a=..&cond_b=..]   A with B's groups and B with A's
    /api/swapgrid?a=..&b=..[&noise=N][&cond_a=..&cond_b=..]   every group swapped, and both reconstructions
    /api/prior?group=G&seed=S                    a prior draw of one group's dims

Codes (``z``, ``a``, ``b``, ``std``) are comma-separated decimals, exactly one per latent. Every
parameter is checked (unknown, repeated, missing, malformed, out of range) and a bad request gets
a 4xx status with ``{"error": "<one line>"}``; never a traceback.

A conditional VAE's labels (``cond``, ``cond_a``, ``cond_b``) are comma-separated class indices,
one per condition factor in ``model.condition``'s order (``/api/info``'s ``condition``). Its
decodes need them (``decode``, ``traverse``; a swap decodes A's outputs with ``cond_a`` and B's
with ``cond_b``: each keeps its own image's labels); an upload needs its own (the encoder reads
them where ``model.condition_encoder``); a prior draw takes them, or draws them with its seed. An
item's answer holds its own labels (``cond``); its reconstruction is decoded with them. A run that
is not conditional refuses them.
"""

from __future__ import annotations

import base64
import json
import math
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl

import numpy as np

from ..errors import GatedVAEError
from .session import MAX_ABS_CODE, Explorer, Item, png_bytes

__all__ = ["Response", "BadRequest", "handle", "asset", "ASSETS", "data_url", "MAX_QUERY"]

#: The page's files, served from the package (never a path taken from a request).
ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/explore.js": ("explore.js", "text/javascript; charset=utf-8"),
    "/explore.css": ("explore.css", "text/css; charset=utf-8"),
}
#: The longest query string a route reads (a code of a few hundred latents fits).
MAX_QUERY = 32 * 1024
MAX_STEPS = 25
MAX_SPAN = 10.0


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


class BadRequest(Exception):
    """A request the explorer refuses: ``status`` (4xx) and a one-line message."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def asset(name: str) -> bytes:
    """A page file from the package data (``gatedvae/explore/assets``)."""
    return resources.files(__package__).joinpath("assets", name).read_bytes()


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _json(data: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(data, allow_nan=False).encode("utf-8"))


def error_response(message: str, status: int) -> Response:
    return _json({"error": " ".join(str(message).split())}, status)


# --------------------------------------------------------------------------- parameters
class Params:
    """The query of one request, checked against the names its route takes."""

    def __init__(self, query: str, allowed: tuple[str, ...], prefix_ok: bool = False) -> None:
        if len(query) > MAX_QUERY:
            raise BadRequest(f"query string of {len(query):,} characters; at most {MAX_QUERY:,}", 414)
        try:
            pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query), max_num_fields=64)
        except ValueError as exc:
            raise BadRequest(f"malformed query string ({exc})") from None
        self.values: dict[str, str] = {}
        for key, value in pairs:
            if key in self.values:
                raise BadRequest(f"parameter {key!r} is given twice; give it once")
            if key not in allowed and not prefix_ok:
                takes = ", ".join(allowed) if allowed else "no parameters"
                raise BadRequest(f"unknown parameter {key!r}; this endpoint takes {takes}")
            self.values[key] = value

    def has(self, key: str) -> bool:
        return key in self.values

    def text(self, key: str, default: str | None = None) -> str:
        if key not in self.values:
            if default is None:
                raise BadRequest(f"missing parameter {key!r}")
            return default
        return self.values[key]

    def integer(self, key: str, lo: int, hi: int, default: int | None = None) -> int:
        if key not in self.values and default is not None:
            return default
        raw = self.text(key)
        try:
            value = int(raw, 10)
        except ValueError:
            raise BadRequest(f"parameter {key!r} must be an integer, got {raw[:40]!r}") from None
        if not lo <= value <= hi:
            raise BadRequest(f"parameter {key!r} must lie in {lo}..{hi}, got {value}")
        return value

    def number(self, key: str, lo: float, hi: float, default: float | None = None) -> float:
        if key not in self.values and default is not None:
            return default
        raw = self.text(key)
        try:
            value = float(raw)
        except ValueError:
            raise BadRequest(f"parameter {key!r} must be a number, got {raw[:40]!r}") from None
        if not math.isfinite(value) or not lo <= value <= hi:
            raise BadRequest(f"parameter {key!r} must be a finite number in [{lo:g}, {hi:g}], got {raw[:40]!r}")
        return value

    def vector(self, key: str, size: int, bound: float = MAX_ABS_CODE) -> np.ndarray:
        raw = self.text(key)
        parts = raw.split(",") if raw else []
        if len(parts) != size:
            raise BadRequest(
                f"parameter {key!r} needs {size} comma-separated numbers (one per latent), got {len(parts)}"
            )
        try:
            values = np.array([float(p) for p in parts], dtype=np.float64)
        except ValueError:
            raise BadRequest(f"parameter {key!r} holds something that is not a number: {raw[:60]!r}") from None
        if not np.isfinite(values).all() or (np.abs(values) > bound).any():
            raise BadRequest(f"parameter {key!r}: every value must be finite and within +-{bound:g}")
        return values


# --------------------------------------------------------------------------- routes
def _item_json(ex: Explorer, item: Item) -> dict[str, Any]:
    recon = ex.decode(item.mu[None], cond=item.cond)[0]  # (C, H, W)
    return {
        "source": item.source,
        "index": item.index,
        "factors": item.factors,
        "note": item.note,
        "cond": item.cond.tolist() if item.cond is not None else None,
        "labels": ex.describe_labels(item.cond),
        "mu": item.mu.tolist(),
        "std": item.std.tolist(),
        "input": data_url(png_bytes(item.image)) if item.image is not None else None,
        "recon": data_url(png_bytes(recon)),
    }


def _noise(ex: Explorer, p: Params) -> int:
    if not ex.is_gan:
        if p.has("noise") and p.text("noise") != "0":
            raise BadRequest("parameter 'noise' is for GAN runs (InfoGAN); this run is a VAE")
        return 0
    return p.integer("noise", 0, 2**31 - 1, default=0)


def _cond(ex: Explorer, p: Params, key: str = "cond", required: bool = True) -> np.ndarray | None:
    """A conditional run's labels from parameter ``key`` ``(F,)``: one class per condition factor."""
    if not ex.conditional:
        if p.has(key):
            raise BadRequest(f"parameter {key!r} is for conditional runs (model.condition); this run takes no labels")
        return None
    if not p.has(key):
        if not required:
            return None
        raise BadRequest(
            f"missing parameter {key!r}: this run's decoder is conditioned on {', '.join(ex.condition)}; "
            "give one class per factor, comma-separated"
        )
    raw = p.text(key)
    parts = raw.split(",") if raw else []
    if len(parts) != len(ex.condition):
        raise BadRequest(
            f"parameter {key!r} needs {len(ex.condition)} comma-separated classes (one per condition factor "
            f"{', '.join(ex.condition)}), got {len(parts)}"
        )
    out = []
    for name, size, part in zip(ex.condition, ex.condition_sizes, parts, strict=True):
        try:
            c = int(part, 10)
        except ValueError:
            raise BadRequest(
                f"parameter {key!r}: the class of {name!r} must be an integer, got {part[:40]!r}"
            ) from None
        if not 0 <= c < size:
            raise BadRequest(f"parameter {key!r}: factor {name!r} has classes 0..{size - 1}, got {c}")
        out.append(c)
    return np.array(out, dtype=np.int64)


def r_info(ex: Explorer, p: Params, body: bytes | None) -> Response:
    return _json(ex.info())


def r_image(ex: Explorer, p: Params, body: bytes | None) -> Response:
    if ex.dataset is None:
        raise BadRequest("this run's dataset could not be built here; pick an input by uploading an image")
    return _json(_item_json(ex, ex.item(p.integer("index", 0, len(ex.dataset) - 1))))


def r_random(ex: Explorer, p: Params, body: bytes | None) -> Response:
    return _json(_item_json(ex, ex.random_item(p.integer("seed", 0, 2**31 - 1))))


def r_sample(ex: Explorer, p: Params, body: bytes | None) -> Response:
    return _json(_item_json(ex, ex.prior_item(p.integer("seed", 0, 2**31 - 1), _cond(ex, p, required=False))))


def r_find(ex: Explorer, p: Params, body: bytes | None) -> Response:
    names = ex.factor_names
    for key in p.values:
        if key != "seed" and key not in names:
            raise BadRequest(f"unknown factor {key!r}; this dataset's factors are: {', '.join(names) or 'none'}")
    seed = p.integer("seed", 0, 2**31 - 1, default=0)
    space = ex.dataset.factor_space if ex.dataset is not None else None
    classes: list[int | None] = []
    for k, name in enumerate(names):
        if not p.has(name) or p.text(name) in ("", "any"):
            classes.append(None)
        else:
            classes.append(p.integer(name, 0, space.sizes[k] - 1))
    return _json(_item_json(ex, ex.find(classes, seed)))


def r_upload(ex: Explorer, p: Params, body: bytes | None, name: str = "upload") -> Response:
    cond = _cond(ex, p)  # checked before the body is looked at
    if not body:
        raise BadRequest("the upload is empty; send an image file as the request body")
    return _json(_item_json(ex, ex.upload(body, name, cond)))


def r_decode(ex: Explorer, p: Params, body: bytes | None) -> Response:
    z = p.vector("z", ex.latent_dim)
    img = ex.decode(z[None], _noise(ex, p), _cond(ex, p))[0]  # (C, H, W)
    return Response(200, png_bytes(img), "image/png")


def r_traverse(ex: Explorer, p: Params, body: bytes | None) -> Response:
    z = p.vector("z", ex.latent_dim)
    span = p.number("span", 0.01, MAX_SPAN, default=2.0)
    unit = p.text("unit", "aggregate")
    if unit not in ("aggregate", "image", "prior"):
        raise BadRequest(f"parameter 'unit' must be aggregate, image or prior, got {unit[:40]!r}")
    std = p.vector("std", ex.latent_dim) if p.has("std") else None
    if unit == "image" and std is None:
        raise BadRequest("unit=image needs 'std': the input's posterior standard deviations")
    if std is not None and (std < 0).any():
        raise BadRequest("parameter 'std' must not be negative")
    steps = p.integer("steps", 2, MAX_STEPS, default=9)
    cond = _cond(ex, p)
    lo, hi = ex.traversal_ranges(z, std, span, unit)
    sprite, rows = ex.traversals(z, lo, hi, steps, _noise(ex, p), cond)
    return _json({"sprite": data_url(png_bytes(sprite)), "steps": steps, "rows": rows, "span": span, "unit": unit})


def _groups(ex: Explorer, p: Params) -> list:
    raw = p.text("groups", "")
    names = [n for n in raw.split(",") if n] if raw else []
    if not names:
        raise BadRequest("parameter 'groups' names no group; give one or more, comma-separated")
    known = {g.name: g for g in ex.groups}
    for n in names:
        if n not in known:
            raise BadRequest(f"unknown group {n[:60]!r}; this run's groups are: {', '.join(known)}")
    return [known[n] for n in dict.fromkeys(names)]


def _pair_cond(ex: Explorer, p: Params) -> np.ndarray | None:
    """``cond_a`` and ``cond_b`` stacked ``(2, F)``; None for a run that is not conditional."""
    ca, cb = _cond(ex, p, "cond_a"), _cond(ex, p, "cond_b")
    return None if ca is None else np.stack([ca, cb])


def r_swap(ex: Explorer, p: Params, body: bytes | None) -> Response:
    za, zb = p.vector("a", ex.latent_dim), p.vector("b", ex.latent_dim)
    groups = _groups(ex, p)
    conds = _pair_cond(ex, p)  # (2, F): A's output with A's labels, B's with B's
    codes = ex.swap(za, zb, groups)  # (2, M)
    imgs = ex.decode(codes, _noise(ex, p), conds)  # (2, C, H, W)
    return _json(
        {
            "groups": [g.name for g in groups],
            "a_from_b": data_url(png_bytes(imgs[0])),
            "b_from_a": data_url(png_bytes(imgs[1])),
            "codes": codes.tolist(),
        }
    )


def r_swapgrid(ex: Explorer, p: Params, body: bytes | None) -> Response:
    za, zb = p.vector("a", ex.latent_dim), p.vector("b", ex.latent_dim)
    conds = _pair_cond(ex, p)  # (2, F)
    grid = ex.swap_grid(za, zb)  # (G, 2, 2, M)
    g = grid.shape[0]
    # entry [g, i, j] has the rest from image j: decoded with j's labels
    cond = np.tile(conds, (g * 2, 1)) if conds is not None else None  # (G*2*2, F)
    imgs = ex.decode(grid.reshape(g * 4, -1), _noise(ex, p), cond).reshape(g, 2, 2, *ex.image_shape)
    rows = [
        {
            "group": grp.name,
            "a_from_b": data_url(png_bytes(imgs[i, 1, 0])),  # B's group, A's rest
            "b_from_a": data_url(png_bytes(imgs[i, 0, 1])),  # A's group, B's rest
        }
        for i, grp in enumerate(ex.groups)
    ]
    return _json(
        {"recon_a": data_url(png_bytes(imgs[0, 0, 0])), "recon_b": data_url(png_bytes(imgs[0, 1, 1])), "rows": rows}
    )


def r_prior(ex: Explorer, p: Params, body: bytes | None) -> Response:
    name = p.text("group")
    known = [g.name for g in ex.groups]
    if name not in known:
        raise BadRequest(f"unknown group {name[:60]!r}; this run's groups are: {', '.join(known)}")
    group = ex.group(name)
    values = ex.prior(group, p.integer("seed", 0, 2**31 - 1))
    return _json({"group": name, "start": group.start, "values": values.tolist()})


Route = Callable[[Explorer, Params, "bytes | None"], Response]
#: path -> (method, handler, parameters it takes; None: any factor name and seed)
ROUTES: dict[str, tuple[str, Route, tuple[str, ...] | None]] = {
    "/api/info": ("GET", r_info, ()),
    "/api/image": ("GET", r_image, ("index",)),
    "/api/random": ("GET", r_random, ("seed",)),
    "/api/sample": ("GET", r_sample, ("seed", "cond")),
    "/api/find": ("GET", r_find, None),
    "/api/upload": ("POST", r_upload, ("cond",)),
    "/api/decode": ("GET", r_decode, ("z", "noise", "cond")),
    "/api/traverse": ("GET", r_traverse, ("z", "span", "unit", "std", "steps", "noise", "cond")),
    "/api/swap": ("GET", r_swap, ("a", "b", "groups", "noise", "cond_a", "cond_b")),
    "/api/swapgrid": ("GET", r_swapgrid, ("a", "b", "noise", "cond_a", "cond_b")),
    "/api/prior": ("GET", r_prior, ("group", "seed")),
}


def handle(
    ex: Explorer,
    method: str,
    path: str,
    query: str = "",
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """Answer one request. Refusals are 4xx with a one-line JSON message; an unexpected failure is a
    500 with a one-line message (its traceback goes to the server's stderr, never to the client)."""
    try:
        if path in ASSETS:
            if method not in ("GET", "HEAD"):
                raise BadRequest(f"{method} is not allowed on {path}; use GET", 405)
            if query:
                raise BadRequest(f"{path} takes no parameters")
            name, kind = ASSETS[path]
            return Response(200, asset(name), kind)
        if path not in ROUTES:
            raise BadRequest(f"no such page or endpoint: {path[:80]!r}", 404)
        want, fn, allowed = ROUTES[path]
        if method != want and not (want == "GET" and method == "HEAD"):
            raise BadRequest(f"{method} is not allowed on {path}; use {want}", 405)
        params = Params(query, allowed or (), prefix_ok=allowed is None)
        if fn is r_upload:
            name = (headers or {}).get("X-Filename", "upload")
            return r_upload(ex, params, body, name=name)
        return fn(ex, params, body)
    except BadRequest as exc:
        return error_response(str(exc), exc.status)
    except GatedVAEError as exc:  # the explorer's own checks (an index out of range, a bad upload)
        return error_response(str(exc), 400)
    except Exception as exc:  # a bug: the client gets one line, the terminal the traceback
        traceback.print_exc(file=sys.stderr)
        return error_response(f"internal error ({type(exc).__name__}); the explorer's terminal shows the details", 500)
