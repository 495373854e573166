"""The BetaVAE metric with the linear SVM of the annealed-capacity report (``003_527384601d5c0438.txt``,
section 3.3.2: "we generated 10000 samples then chose a SVM as the classifier"), on trained runs.

``gatedvae evaluate`` scores the BetaVAE metric with disentanglement_lib's logistic regression; this
script scores the same runs with ``classifier="linear_svc"`` (scikit-learn's LinearSVC, C = 1), the
rest of the protocol unchanged (L = 64 pairs per point, 10,000 training and 5,000 evaluation
points), evaluation seed 0.

Run:  .venv/bin/python benchmarks/annealed_svm.py sweeps/annealed/runs/*/ --out sweeps/annealed/betavae_svm.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from gatedvae.evaluation import representation_fn
from gatedvae.metrics.beta_vae import beta_vae_score
from gatedvae.run import load_trained


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run directories (a sweep's runs/*/)")
    ap.add_argument("--out", required=True, help="JSON file: run name (or directory) -> SVM eval accuracy")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out: dict[str, float] = {}
    for run in args.runs:
        prep, _, _ = load_trained(run)
        t0 = time.perf_counter()
        s = beta_vae_score(
            representation_fn(prep),
            list(prep.dataset.factor_space.sizes),
            np.random.default_rng(args.seed),
            classifier="linear_svc",
        )
        meta = Path(run) / "sweep.json"
        name = json.loads(meta.read_text())["name"] if meta.is_file() else str(run)
        out[name] = s["eval_accuracy"]
        print(f"{name}: {s['eval_accuracy']:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
