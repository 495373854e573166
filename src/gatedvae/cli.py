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
from .errors import ConfigError, GatedVAEError

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


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .train import train

    if args.resume:
        if args.config or args.overrides:
            raise ConfigError("--resume takes the config saved in the run directory; drop the config file and overrides")
        summary = train(None, args.resume, resume=True, quiet=args.quiet, tensorboard=not args.no_tensorboard)
        run_dir = Path(args.resume)
    else:
        if not args.config:
            raise ConfigError("give a config file (see configs/) or --resume RUN_DIR")
        config = load_config(args.config, args.overrides)
        run_dir = Path(args.run_dir or Path("runs") / Path(args.config).stem)
        summary = train(config, run_dir, quiet=args.quiet, tensorboard=not args.no_tensorboard)
    final = summary.get("final", {})
    terms = ", ".join(f"{k} {v:.4g}" for k, v in final.items() if k not in ("step", "epoch", "phase"))
    print(f"finished {summary['steps']} steps in {summary['seconds']:.0f} s ({summary['images_per_second']:.0f} images/s): {terms}")
    if "evaluation" in summary:
        print("evaluation (metrics.json): " + ", ".join(f"{k} {v:.3g}" for k, v in summary["evaluation"].items()))
    print(f"run directory: {run_dir}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_run, format_headline

    doc = evaluate_run(args.run_dir, metrics=args.metrics, preset=args.preset, seed=args.seed, progress=not args.quiet)
    print(format_headline(doc))
    print(f"wrote {Path(args.run_dir) / 'metrics.json'}")
    return 0


def cmd_list_models(args: argparse.Namespace) -> int:
    from .models import MODELS

    width = max(len(n) for n in MODELS)
    for name in sorted(MODELS):
        entry = MODELS[name]
        hyper = ", ".join(f"{k}={v}" for k, v in sorted(entry.defaults.items())) or "-"
        print(f"{name:<{width}}  {hyper}")
        print(f"{'':<{width}}  {entry.description}")
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    from .quickstart import quickstart

    if args.steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {args.steps}")
    quickstart(Path(args.out), seed=args.seed, quiet=args.quiet, steps=args.steps)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gatedvae",
        description="Gated-VAE: disentangled VAEs with weak supervision; datasets, metrics, sweeps.",
    )
    parser.add_argument("--version", action="version", version=f"gatedvae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    q = sub.add_parser(
        "quickstart",
        help="the demo: gated vs un-gated beta-VAE on dSprites in a few minutes",
        description="Build dSprites, show the Gated-VAE training pairs, train an un-gated and a gated beta-VAE "
        "on a short budget, evaluate both (DCI, MIG) and write figures.",
    )
    q.add_argument("--steps", type=int, default=3000, help="training steps per model (default 3000)")
    q.add_argument("--out", default="quickstart", help="output directory (default: ./quickstart)")
    q.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    q.set_defaults(func=cmd_quickstart)

    t = sub.add_parser(
        "train",
        help="train a config (or resume a run)",
        description="Train the model a config describes, in a run directory; or resume a stopped run exactly.",
    )
    t.add_argument("config", nargs="?", help="YAML or JSON config (see configs/)")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. model.beta=4 train.steps=2000")
    t.add_argument("--run-dir", help="where to write the run (default: runs/<config name>); must be new or empty")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard logs")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser(
        "evaluate",
        help="score a trained run: metrics.json and figures in the run directory",
        description="Evaluate the latest checkpoint of a run: disentanglement metrics, partition scores and "
        "reconstruction into RUN_DIR/metrics.json, figures into RUN_DIR/figures/ (see docs/metrics.md).",
    )
    e.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by gatedvae train")
    e.add_argument("--metrics", help="comma-separated metrics or aliases, e.g. dci,mig,factor_vae (default: all)")
    e.add_argument("--preset", default="default", choices=("default", "fast"),
                   help="sample sizes: default (the reference papers') or fast (default: default)")
    e.add_argument("--seed", type=int, default=0, help="random seed of the evaluation (default 0)")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    e.set_defaults(func=cmd_evaluate)

    ls = sub.add_parser("list", help="list registered things: models")
    lsub = ls.add_subparsers(dest="list_command", metavar="WHAT")
    lm = lsub.add_parser("models", help="the registered models with their default hyperparameters")
    lm.set_defaults(func=cmd_list_models)
    ls.set_defaults(func=lambda a: _usage(ls))

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

