"""The lecture's BetaVAE-metric table (``002_b6b404b9b5e7b646.txt``, beta-VAE slides) and its FactorVAE-
metric comparison (beta-VAE 0.81 at beta 4, FactorVAE 0.89 at gamma 35), regenerated on dSprites.

Rows: the table's baselines (ground truth, raw pixels, PCA, ICA, untrained VAE; ``gatedvae.baselines``),
the trained models of the table (DC-IGN as our clamping mode, InfoGAN, InfoWGAN-GP, VAE, beta-VAE) and
the other registered models, plus the Gated-VAE. Every trained row starts from its config in
``configs/`` with one scaled form (MLP of hidden 256, ``--steps`` steps, VAE family at batch 128 and
lr 1e-3 -- the quickstart's short-budget setting --, GANs at their configs' batch and rates);
``train.threads=1``. Each run is scored with ``gatedvae evaluate``'s BetaVAE and FactorVAE metrics
at the ``--preset`` sample sizes (``default``: the published ones).

Resumable: a row/seed whose result file exists is skipped; a run directory is resumed from its
last checkpoint. Split the rows over processes with ``--rows``.

Run:  .venv/bin/python benchmarks/study_betavae_table.py --out runs/betavae_table [--steps 3000]
          [--seeds 0] [--baseline-seeds 0,1,2] [--preset default] [--rows a,b] [--list]
Then: .venv/bin/python benchmarks/study_betavae_table.py --out runs/betavae_table --table
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from gatedvae.baselines import evaluate_baseline
from gatedvae.config import DataConfig, load_config
from gatedvae.data import build_dataset
from gatedvae.evaluation import evaluate_run
from gatedvae.train import train

ROOT = Path(__file__).resolve().parents[1]
LECTURE = {  # BetaVAE metric (%), lecture table; FactorVAE metric, lecture (Kim and Mnih)
    "ground_truth": (100.0, None),
    "raw_pixels": (45.75, None),
    "pca": (84.9, None),
    "ica": (42.03, None),
    "dcign": (99.3, None),
    "infogan": (73.5, None),
    "untrained_vae": (44.14, None),
    "vae": (61.58, None),
    "beta_vae": (99.23, 0.814),
    "factor_vae": (None, 0.889),
}
VAE_COMMON = ["model.net=mlp", "model.hidden=256", "train.batch_size=128", "train.lr=1e-3"]
GAN_COMMON = ["model.net=mlp", "model.hidden=256"]

#: row -> (label, config file, overrides); "{steps}" is filled in.
TRAINED = {
    "dcign": (
        "DC-IGN (our clamp mode, VAE, 4 partitions)",
        "dsprites_beta_vae_gated.yaml",
        VAE_COMMON + ["model.name=vae", "model.beta=1.0", "gating.mode=clamp"],
    ),
    "infogan": ("InfoGAN", "dsprites_infogan.yaml", GAN_COMMON),
    "infowgan_gp": ("InfoWGAN-GP", "dsprites_infowgan_gp.yaml", GAN_COMMON),
    "vae": ("VAE", "dsprites_vae.yaml", VAE_COMMON + ["model.latent_dim=10"]),
    "beta_vae": ("beta-VAE (beta 4)", "dsprites_beta_vae.yaml", VAE_COMMON + ["model.latent_dim=10"]),
    "beta_vae_gated": (
        "Gated beta-VAE (beta 4, 4 partitions, KL gated)",
        "dsprites_beta_vae_gated.yaml",
        VAE_COMMON + ["gating.gate_kl=true"],
    ),
    "factor_vae": ("FactorVAE (gamma 35)", "dsprites_factor_vae.yaml", VAE_COMMON + ["model.latent_dim=10"]),
    "beta_tcvae": (
        "beta-TCVAE (beta 6)",
        "dsprites_vae.yaml",
        VAE_COMMON + ["model.name=beta_tcvae", "model.latent_dim=10"],
    ),
    "annealed_vae": (
        "annealed capacity (C to 20 nats over the run)",
        "dsprites_annealed_vae.yaml",
        VAE_COMMON + ["model.latent_dim=10", "model.c_steps={steps}"],
    ),
    "info_vae": ("InfoVAE (lambda 500)", "dsprites_info_vae.yaml", VAE_COMMON + ["model.latent_dim=10"]),
    "dip_vae_ii": ("DIP-VAE-II (250, 250)", "dsprites_dip_vae_ii.yaml", VAE_COMMON + ["model.latent_dim=10"]),
    "chyvae": ("CHyVAE (nu 13000)", "dsprites_chyvae.yaml", VAE_COMMON + ["model.latent_dim=10"]),
}
#: row -> (label, baseline name, keyword arguments of evaluate_baseline)
BASELINE_ROWS = {
    "ground_truth": ("Ground truth (factor classes)", "ground_truth", {}),
    "raw_pixels": ("Raw pixels (4,096 dims)", "raw_pixels", {}),
    "pca": ("PCA (10 components)", "pca", {"latent_dim": 10}),
    "ica": ("ICA (10 components)", "ica", {"latent_dim": 10}),
    "untrained_vae": ("VAE untrained (batch-norm statistics of data)", "untrained_vae", {"latent_dim": 10}),
    "untrained_vae_init_bn": (
        "VAE untrained (batch norm at init: identity)",
        "untrained_vae",
        {"latent_dim": 10, "bn_stats": False},
    ),
}
ORDER = [
    "ground_truth",
    "raw_pixels",
    "pca",
    "ica",
    "dcign",
    "infogan",
    "infowgan_gp",
    "untrained_vae",
    "untrained_vae_init_bn",
    "vae",
    "beta_vae",
    "beta_vae_gated",
    "factor_vae",
    "beta_tcvae",
    "annealed_vae",
    "info_vae",
    "dip_vae_ii",
    "chyvae",
]
METRICS = "beta_vae,factor_vae"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_trained(row: str, seed: int, steps: int, preset: str, out: Path, dataset) -> dict:
    label, cfg_file, overrides = TRAINED[row]
    ov = [o.format(steps=steps) for o in overrides] + [
        f"train.steps={steps}",
        f"train.seed={seed}",
        "train.threads=1",
        "train.finetune_steps=0",
        "train.log_every=250",
        f"train.checkpoint_every={max(steps // 4, 1)}",
        "train.image_every=0",
        "train.evaluate=none",
    ]
    config = load_config(ROOT / "configs" / cfg_file, ov)
    run = out / "runs" / f"{row}_s{seed}"
    t0 = time.perf_counter()
    status = json.loads((run / "status.json").read_text()) if (run / "status.json").exists() else {}
    if status.get("status") == "finished":
        summary = json.loads((run / "summary.json").read_text())
    elif status:
        summary = train(None, run, resume=True, quiet=True, tensorboard=False, dataset=dataset)
    else:
        summary = train(config, run, quiet=True, tensorboard=False, dataset=dataset)
    t_train = time.perf_counter() - t0
    doc = evaluate_run(run, metrics=METRICS, preset=preset, seed=seed, progress=False, figures=True)
    return {
        "row": row,
        "label": label,
        "seed": seed,
        "kind": "trained",
        "config": f"configs/{cfg_file}",
        "overrides": ov,
        "headline": doc["headline"],
        "train_seconds": round(t_train, 1),
        "train_summary": {k: summary.get(k) for k in ("steps", "seconds", "final")},
        "eval_seconds": round(doc["timing"]["elapsed_seconds"], 1),
        "run": str(run),
    }


def run_baseline(row: str, seed: int, preset: str, dataset) -> dict:
    label, name, kw = BASELINE_ROWS[row]
    t0 = time.perf_counter()
    doc = evaluate_baseline(
        name, DataConfig(name="dsprites"), metrics=METRICS, preset=preset, seed=seed, dataset=dataset, **kw
    )
    return {
        "row": row,
        "label": label,
        "seed": seed,
        "kind": "baseline",
        "baseline": doc["baseline"],
        "headline": doc["headline"],
        "eval_seconds": round(time.perf_counter() - t0, 1),
    }


def _fmt(values: list[float], scale: float, digits: int) -> str:
    v = [x * scale for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not v:
        return "-"
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{np.mean(v):.{digits}f} +- {np.std(v, ddof=1):.{digits}f}"


def table(out: Path) -> str:
    """The markdown table of every result file in ``out/results``."""
    results: dict[str, list[dict]] = {}
    for f in sorted((out / "results").glob("*.json")):
        r = json.loads(f.read_text())
        results.setdefault(r["row"], []).append(r)
    lines = [
        "| model | lecture BetaVAE | ours BetaVAE (%) | lecture FactorVAE | ours FactorVAE | seeds |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in ORDER:
        if row not in results:
            continue
        rs = sorted(results[row], key=lambda r: r["seed"])
        lb, lf = LECTURE.get(row, (None, None))
        bv = _fmt([r["headline"].get("beta_vae.eval_accuracy") for r in rs], 100.0, 1)
        fv = _fmt([r["headline"].get("factor_vae.eval_accuracy") for r in rs], 1.0, 3)
        lines.append(
            f"| {rs[0]['label']} | {'-' if lb is None else f'{lb}%'} | {bv} | {'-' if lf is None else lf} | {fv} | "
            f"{','.join(str(r['seed']) for r in rs)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--out", default="runs/betavae_table")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--seeds", default="0", help="seeds of the trained rows")
    ap.add_argument("--baseline-seeds", default="0,1,2", help="seeds of PCA, ICA and the untrained VAE")
    ap.add_argument("--preset", default="default", choices=("default", "fast"))
    ap.add_argument("--rows", default=",".join(ORDER))
    ap.add_argument("--table", action="store_true", help="only print (and write) the table of the results so far")
    ap.add_argument("--list", action="store_true", help="list the rows")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.list:
        for row in ORDER:
            print(f"{row:<24} {(TRAINED.get(row) or BASELINE_ROWS[row])[0]}")
        return 0
    if args.table:
        text = table(out)
        print(text)
        (out / "table.md").write_text(text + "\n", encoding="utf-8")
        return 0
    torch.set_num_threads(1)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ORDER]
    if unknown:
        print(f"error: unknown rows {unknown}; see --list", file=sys.stderr)
        return 2
    (out / "results").mkdir(parents=True, exist_ok=True)
    log("building dSprites")
    dataset = build_dataset(DataConfig(name="dsprites"))
    for row in rows:
        seeds = (
            args.seeds if row in TRAINED else (args.baseline_seeds if row in ("pca", "ica", "untrained_vae") else "0")
        )
        for seed in (int(s) for s in seeds.split(",")):
            path = out / "results" / f"{row}_s{seed}.json"
            if path.exists():
                continue
            log(f"{row} seed {seed}")
            r = (
                run_trained(row, seed, args.steps, args.preset, out, dataset)
                if row in TRAINED
                else run_baseline(row, seed, args.preset, dataset)
            )
            r.update(steps=args.steps if row in TRAINED else None, preset=args.preset)
            path.write_text(json.dumps(r, indent=1) + "\n", encoding="utf-8")
            log(f"{row} seed {seed}: {r['headline']}")
    print(table(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
