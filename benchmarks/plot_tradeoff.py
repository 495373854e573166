"""Scatter one score against another for every finished run of a sweep, one colour per configuration
and the configuration means with +-1 std bars: the CHyVAE paper's Figures 2 and 3 (disentanglement
metric against reconstruction error, ``004_1dabe4d22771e1b6.txt``) for ``configs/sweeps/chyvae.yaml``.

Run:  gatedvae report sweeps/chyvae        # writes sweeps/chyvae/report/runs.csv
      .venv/bin/python benchmarks/plot_tradeoff.py sweeps/chyvae/report/runs.csv --out tradeoff.png \\
          --x reconstruction.squared_error --y factor_vae.eval_accuracy --split-prefix
"""

from __future__ import annotations

import argparse
import csv
import math
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs_csv", help="a sweep report's runs.csv")
    ap.add_argument("--out", required=True, help="PNG to write")
    ap.add_argument("--x", default="reconstruction.squared_error")
    ap.add_argument("--y", default="factor_vae.eval_accuracy")
    ap.add_argument(
        "--split-prefix",
        action="store_true",
        help="one panel per configuration-name prefix before the first '_' (e.g. dsprites_, ellipses_)",
    )
    args = ap.parse_args()
    points: dict[str, list[tuple[float, float]]] = defaultdict(list)
    with open(args.runs_csv, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            try:
                x, y = float(row[args.x]), float(row[args.y])
            except (KeyError, ValueError):
                continue
            if math.isfinite(x) and math.isfinite(y):
                points[row["configuration"]].append((x, y))
    if not points:
        raise SystemExit(f"error: no run in {args.runs_csv} has both {args.x} and {args.y}")
    panels = sorted({c.split("_", 1)[0] for c in points}) if args.split_prefix else [""]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        for conf in sorted(c for c in points if c.startswith(panel)):
            p = np.array(points[conf])
            label = conf[len(panel) + 1 :] if panel else conf
            dots = ax.scatter(p[:, 0], p[:, 1], s=18, alpha=0.5)
            ax.errorbar(
                p[:, 0].mean(),
                p[:, 1].mean(),
                xerr=p[:, 0].std(ddof=1) if len(p) > 1 else None,
                yerr=p[:, 1].std(ddof=1) if len(p) > 1 else None,
                fmt="o",
                ms=8,
                color=dots.get_facecolor()[0][:3],
                label=f"{label} (n={len(p)})",
            )
        ax.set_xlabel(args.x)
        ax.set_ylabel(args.y)
        ax.set_title(panel or "runs")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
