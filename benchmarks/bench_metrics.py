"""Time per metric of the evaluation suite on one trained dSprites model, ``default`` and ``fast`` presets.

Run: .venv/bin/python benchmarks/bench_metrics.py [--run-dir DIR] [--stride 1] [--steps 2000] [--json out.json]

The model: the Gated-VAE paper's dSprites setting (``000_fc03c6fb001bc541.txt``: beta-VAE,
beta = 4, M = 8 in four partitions of two: shape, scale, orientation, position) with an MLP of
hidden width 256, trained for ``--steps`` steps (2000 by default; a minute or so on 2 cores). With
``--run-dir`` an existing run is reused (trained there first if it has no checkpoint yet).
``--stride k`` keeps every k-th posX/posY class (fewer images to encode).

What is timed: one :func:`gatedvae.metrics.adapter.evaluate_model` call per preset with every
per-run metric (figures excluded), i.e. exactly what ``gatedvae evaluate`` spends on metrics.
Each metric's time includes the encoding it triggers: the shared codes sample is encoded before
the first metric (reported as ``codes sample``), the sampler metrics (FactorVAE, BetaVAE) encode
the images they draw on first use (``encode`` column: the :class:`CodeCache` makes every image go
through the encoder at most once per evaluation). Target from the metrics issue: the whole
``default`` suite under 60 s on 2 cores. Other jobs may share the machine; the load average is
printed next to the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from gatedvae.config import Config, DataConfig, GatingConfig, ModelConfig, PartitionConfig, TrainConfig
from gatedvae.evaluate import load_trained
from gatedvae.metrics.adapter import EVAL_METRICS, evaluate_model
from gatedvae.train import latest_checkpoint, train

TARGET_SECONDS = 60.0


def bench_config(steps: int, hidden: int, stride: int, seed: int) -> Config:
    parts = (
        PartitionConfig(name="shape", size=2, factors=("shape",)),
        PartitionConfig(name="scale", size=2, factors=("scale",)),
        PartitionConfig(name="orientation", size=2, factors=("orientation",)),
        PartitionConfig(name="position", size=2, factors=("posX", "posY")),
    )
    return Config(
        data=DataConfig(name="dsprites", stride={"posX": stride, "posY": stride} if stride > 1 else {}),
        model=ModelConfig(name="beta_vae", net="mlp", latent_dim=8, hidden=hidden, beta=4.0),
        gating=GatingConfig(enabled=True, partitions=parts),
        train=TrainConfig(steps=steps, batch_size=128, lr=5e-4, seed=seed, log_every=100, checkpoint_every=min(500, steps)),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", help="reuse (or train into) this run directory; default: a temporary one")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--stride", type=int, default=1, help="keep every k-th posX/posY class")
    ap.add_argument("--presets", default="default,fast")
    ap.add_argument("--metrics", default=None, help="comma-separated subset (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    tmp = None
    if args.run_dir:
        run = Path(args.run_dir)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench_metrics_")
        run = Path(tmp.name) / "run"
    train_seconds = None
    if not (run / "config.yaml").is_file() or latest_checkpoint(run / "checkpoints") is None:
        t0 = time.perf_counter()
        train(bench_config(args.steps, args.hidden, args.stride, args.seed), run, quiet=True, tensorboard=False,
              resume=(run / "config.yaml").is_file())
        train_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    prep, step, _ = load_trained(run)
    load_seconds = time.perf_counter() - t0
    ds = prep.dataset
    print(f"model: {prep.model.describe()}, M={prep.model.latent_dim}, step {step}"
          + (f" (trained in {train_seconds:.0f} s)" if train_seconds else " (reused)"))
    print(f"data: {ds.name}, {len(ds):,} images; loaded in {load_seconds:.1f} s; torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} cpus, load average {os.getloadavg()[0]:.2f}")

    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    results: dict[str, dict] = {}
    for preset in presets:
        t0 = time.perf_counter()
        res = evaluate_model(prep, args.metrics, preset, rng=np.random.default_rng(args.seed))
        total = time.perf_counter() - t0
        results[preset] = {
            "total_seconds": total,
            "codes_sample_seconds": res["codes_seconds"],
            "codes_sample": res["samples"]["codes"],
            "encoded_images": res["encoded_images"],
            "encode_seconds": res["encode_seconds"],
            "load_average": os.getloadavg()[0],
            "metrics": {
                name: {"seconds": e["seconds"], "encode_seconds": e["encode_seconds"], "samples": e["samples"]}
                for name, e in res["results"].items()
            },
            "scores": {name: {k: v for k, v in e["scores"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
                       for name, e in res["results"].items()},
        }

    names = [m for m in EVAL_METRICS if any(m in r["metrics"] for r in results.values())]
    head = f"{'metric':<26}" + "".join(f"{p + ' s':>12}{'(encode)':>10}" for p in presets)
    print("\n" + head)
    print(f"{'codes sample':<26}" + "".join(f"{results[p]['codes_sample_seconds']:>12.2f}{'':>10}" for p in presets))
    for name in names:
        row = f"{name:<26}"
        for p in presets:
            e = results[p]["metrics"].get(name)
            row += f"{e['seconds']:>12.2f}{e['encode_seconds']:>10.2f}" if e else f"{'-':>12}{'':>10}"
        print(row)
    print(f"{'total':<26}" + "".join(f"{results[p]['total_seconds']:>12.2f}{'':>10}" for p in presets))
    print(f"{'images encoded':<26}" + "".join(f"{results[p]['encoded_images']:>12,}{'':>10}" for p in presets))
    for p in presets:
        verdict = "meets" if results[p]["total_seconds"] < TARGET_SECONDS else "misses"
        print(f"{p}: {results[p]['total_seconds']:.1f} s for {len(results[p]['metrics'])} metrics ({verdict} the {TARGET_SECONDS:.0f} s target)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "run": str(run), "step": step, "images": len(ds), "stride": args.stride, "hidden": args.hidden,
            "threads": torch.get_num_threads(), "presets": results,
        }, indent=2, default=float) + "\n")
        print(f"wrote {args.json}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
