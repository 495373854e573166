"""The command line of ``gatedvae bench``: its options (:func:`add_arguments`, shared by
``gatedvae bench``, ``python -m gatedvae.bench`` and ``benchmarks/run.py``) and :func:`bench_command`
(measure or re-render ``--from``, print, write ``--out``). No import of :mod:`gatedvae.cli`: the
CLI imports this."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..io import atomic_write_text
from .options import DEFAULT_SECTIONS, SECTIONS, BenchOptions, bench_device, check_precisions
from .report import format_markdown, format_report
from .sections import run_bench

__all__ = ["add_arguments", "options_from_args", "bench_command"]


def add_arguments(p) -> None:
    """The options of ``gatedvae bench`` (also used by ``benchmarks/run.py``)."""
    p.add_argument(
        "--only", help=f"comma-separated sections: {', '.join(SECTIONS)} (default: all but quickstart and ensemble)"
    )
    p.add_argument(
        "--quick", action="store_true", help="a smoke run in under a minute: tiny sizes, meaningless timings"
    )
    p.add_argument("--out", default="bench.json", help="write the results here (default: bench.json)")
    p.add_argument("--markdown", action="store_true", help="print the tables as Markdown (for docs/performance.md)")
    p.add_argument("--from", dest="from_json", metavar="JSON", help="render a saved result instead of measuring")
    p.add_argument("--seconds", type=float, help="train section: seconds per item, split over the rounds (default 2.5)")
    p.add_argument("--rounds", type=int, help="train section: interleaved rounds (default 5)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own; quick mode: 1)")
    p.add_argument("--no-families", action="store_true", help="train section: skip the one-row-per-model-family rows")
    p.add_argument(
        "--metrics-run", help="metrics section: time the metrics on this trained run instead of training one"
    )
    p.add_argument("--metrics", help="metrics section: comma-separated subset (default: all)")
    p.add_argument(
        "--device",
        default="cpu",
        help="where the train and metrics sections (and the memory section's run) compute: cpu, cuda or cuda:N "
        "(default cpu); on a GPU the roofline is that GPU's measured matmul peak at each precision",
    )
    p.add_argument(
        "--precision",
        default="fp32",
        help="train section: comma-separated precisions of the training rows, each against the matmul peak at "
        "that precision: fp32, tf32, bf16, fp16 (default fp32; the CPU does fp32 and bf16)",
    )


def options_from_args(args) -> BenchOptions:
    sections = tuple(s.strip() for s in args.only.split(",") if s.strip()) if args.only else DEFAULT_SECTIONS
    kw: dict[str, Any] = {"sections": sections}
    if args.seconds is not None:
        if args.seconds <= 0:
            raise ConfigError(f"--seconds must be positive, got {args.seconds}")
        kw["seconds"] = args.seconds
    if args.rounds is not None:
        if args.rounds < 1:
            raise ConfigError(f"--rounds must be at least 1, got {args.rounds}")
        kw["rounds"] = args.rounds
    if args.threads:
        if args.threads < 0:
            raise ConfigError(f"--threads must be non-negative, got {args.threads}")
        kw["threads"] = args.threads
    if args.no_families:
        kw["families"] = False
    if args.metrics_run:
        kw["metrics_run"] = args.metrics_run
    if args.metrics:
        kw["metrics"] = args.metrics
    device = bench_device(getattr(args, "device", "cpu"))
    kw["device"] = str(device)
    raw = getattr(args, "precision", "fp32")
    kw["precisions"] = check_precisions(tuple(x.strip().lower() for x in raw.split(",") if x.strip()), device)
    o = BenchOptions.quick_mode(**kw) if args.quick else BenchOptions(**kw)
    unknown = [s for s in o.sections if s not in SECTIONS]
    if unknown:
        raise ConfigError(f"unknown bench section(s) {', '.join(unknown)} in --only; choose from {', '.join(SECTIONS)}")
    return o.for_device()


def bench_command(args, log: Callable[[str], None] = print) -> dict[str, Any]:
    """``gatedvae bench``: measure (or load ``--from``), print, write ``--out``."""
    if args.from_json:
        path = Path(args.from_json)
        try:
            res = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"--from {path}: no such file; run gatedvae bench --out {path} first") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"--from {path}: not a bench JSON file ({exc.msg} at line {exc.lineno}); re-run gatedvae bench"
            ) from None
        if not isinstance(res, dict) or "machine" not in res:
            raise ConfigError(f"--from {path}: not a gatedvae bench result (no 'machine'); re-run gatedvae bench")
        log(format_markdown(res) if args.markdown else format_report(res))
        return res
    o = options_from_args(args)
    out = Path(args.out)
    if out.parent and not out.parent.exists():
        raise ConfigError(f"--out {out}: the directory {out.parent} does not exist; create it or choose another path")
    res = run_bench(o, log=lambda s: print(s, file=sys.stderr, flush=True))
    atomic_write_text(out, json.dumps(res, indent=2, default=float) + "\n")
    log(format_markdown(res) if args.markdown else format_report(res))
    log(f"\nwrote {out}")
    return res
