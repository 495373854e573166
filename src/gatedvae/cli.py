"""Command line: thin commands that parse, build a config and call one library function.

User errors (:class:`~gatedvae.errors.GatedVAEError`) print ``error: <one line>`` and exit 2;
no traceback is shown for them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from . import __version__
from .config import DataConfig, apply_overrides
from .errors import GatedVAEError

__all__ = ["main", "build_parser"]


def _data_config(name: str, overrides: list[str]) -> DataConfig:
    # Accept both "stride.posX=4" and "data.stride.posX=4".
    cleaned = [o[len("data."):] if o.startswith("data.") else o for o in overrides]
    return apply_overrides(DataConfig(), [f"name={name}", *cleaned])


def cmd_data_describe(args: argparse.Namespace) -> int:
    from .data import build_dataset

    cfg = _data_config(args.name, args.overrides)
    t0 = time.perf_counter()
    ds = build_dataset(cfg, progress=not args.quiet)
    took = time.perf_counter() - t0
    print(describe_dataset(ds))
    print(f"built in {took:.1f} s")
    return 0


def describe_dataset(ds) -> str:
    """A few lines about a dataset: size, image shape, memory, factors and weak labels."""
    c, h, w = ds.image_shape
    lines = [
        f"{ds.name}: {len(ds):,} images of {c}x{h}x{w}, {ds.store.nbytes / 1e6:.1f} MB in memory"
        f" ({type(ds.store).__name__}), {'full factor grid' if ds.is_grid else 'labelled items'}",
    ]
    for name, size, values in zip(ds.factor_space.names, ds.factor_space.sizes, ds.factor_space.values):
        lo, hi = (float(values.min()), float(values.max())) if size else (0.0, 0.0)
        lines.append(f"  factor {name:<12} {size:>4} values in [{lo:.3g}, {hi:.3g}]")
    for name in ds.weak_names:
        col = ds.weak[:, ds.weak_names.index(name)]
        lines.append(f"  weak   {name:<12} continuous in [{col.min():.3g}, {col.max():.3g}]")
    return "\n".join(lines)


def cmd_data_preview(args: argparse.Namespace) -> int:
    from .data import build_dataset
    from .data.preview import preview

    cfg = _data_config(args.name, args.overrides)
    ds = build_dataset(cfg, progress=not args.quiet)
    out = Path(args.out or f"{args.name}_preview.png")
    path = preview(ds, out, np.random.default_rng(args.seed))
    print(f"wrote {path}")
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    from .quickstart import quickstart

    quickstart(Path(args.out), seed=args.seed, quiet=args.quiet)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gatedvae",
        description="Gated-VAE: disentangled VAEs with weak supervision; datasets, metrics, sweeps.",
    )
    parser.add_argument("--version", action="version", version=f"gatedvae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    q = sub.add_parser("quickstart", help="the demo: dSprites, its factors and Gated-VAE training pairs")
    q.add_argument("--out", default="quickstart", help="output directory (default: ./quickstart)")
    q.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    q.set_defaults(func=cmd_quickstart)

    d = sub.add_parser("data", help="datasets: describe, preview")
    dsub = d.add_subparsers(dest="data_command", metavar="ACTION")
    names = "dsprites, dsprites_file, ellipses, images"
    for action, func, helptext in (
        ("describe", cmd_data_describe, "print a dataset's size, memory and factors"),
        ("preview", cmd_data_preview, "write a PNG grid of samples and one traversal row per factor"),
    ):
        p = dsub.add_parser(action, help=helptext)
        p.add_argument("name", help=f"dataset: {names}")
        p.add_argument(
            "overrides",
            nargs="*",
            metavar="key=value",
            help="data settings, e.g. stride.posX=4 path=dsprites.npz size=20000 (see docs/datasets.md)",
        )
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        if action == "preview":
            p.add_argument("--out", help="PNG path (default: NAME_preview.png)")
            p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        p.set_defaults(func=func)
    d.set_defaults(func=lambda a: _usage(d))
    return parser


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        return _usage(parser)
    try:
        return int(args.func(args) or 0)
    except GatedVAEError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        # A file we were asked to read or write: name it and stop, no traceback.
        target = f" '{exc.filename}'" if getattr(exc, "filename", None) else ""
        print(f"error: {exc.strerror or exc}{target}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

