"""Time per metric of the evaluation suite on one trained dSprites model, ``default`` and
``fast`` presets (the ``metrics`` section of ``gatedvae bench``; the implementation is
``gatedvae.bench.measure_metrics``).

Run: .venv/bin/python benchmarks/bench_metrics.py [--run-dir DIR] [--steps 2000] [--hidden 256]
     [--stride 1] [--presets default,fast] [--metrics a,b] [--seed 0] [--json out.json]

The model: the quickstart's gated beta-VAE on dSprites (``000_fc03c6fb001bc541.txt``: beta = 4,
M = 8 in four partitions of two), trained for ``--steps`` steps (plus a third of that of decoder
fine-tuning). With ``--run-dir`` an existing run is reused (trained there first if it has no
checkpoint yet). What is timed: one ``evaluate_model`` call per preset with every per-run metric,
i.e. exactly what ``gatedvae evaluate`` spends on metrics (figures excluded); each metric's time
includes the encoding it triggers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gatedvae.bench import BenchOptions, format_report, run_bench


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--run-dir", help="reuse (or train into) this run directory; default: a temporary one")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--stride", type=int, default=1, help="keep every k-th posX/posY class")
    ap.add_argument("--presets", default="default,fast")
    ap.add_argument("--metrics", default=None, help="comma-separated subset (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    o = BenchOptions(
        sections=("metrics",),
        metrics_run=args.run_dir,
        metrics_steps=args.steps,
        hidden_small=args.hidden,
        stride=args.stride,
        presets=tuple(p.strip() for p in args.presets.split(",") if p.strip()),
        metrics=args.metrics,
        seed=args.seed,
    )
    res = run_bench(o, log=lambda s: print(s, file=sys.stderr, flush=True))
    print(format_report(res))
    if args.json:  # the layout this script has always written
        me = res["metrics"]
        presets = {
            name: {
                "total_seconds": p["total_seconds"],
                "codes_sample_seconds": p["codes_seconds"],
                "codes_sample": p["codes"],
                "encoded_images": p["encoded_images"],
                "encode_seconds": p["encode_seconds"],
                "load_average": p["loadavg"][0],
                "metrics": p["metrics"],
                "scores": p["scores"],
            }
            for name, p in me["presets"].items()
        }
        doc = {
            "run": me["run"],
            "step": me["step"],
            "images": me["images"],
            "stride": args.stride,
            "hidden": args.hidden,
            "threads": res["machine"]["threads"],
            "presets": presets,
        }
        Path(args.json).write_text(json.dumps(doc, indent=2, default=float) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
