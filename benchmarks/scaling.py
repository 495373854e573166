"""How cost grows: the plots of docs/performance.md (``docs/img/perf_*.png``) and their JSON.

Run: .venv/bin/python benchmarks/scaling.py [--only batch,hidden,latent,metrics,memory] [--seconds 1.0]
     [--rounds 3] [--threads N] [--metrics-run DIR] [--out-dir docs/img] [--json scaling.json] [--quick]

* ``batch``, ``hidden``, ``latent``: milliseconds per training step of the gated beta-VAE on
  dSprites (the trainer's step: pair sampling, gather, forward, backward, Adam) against batch
  size (mlp-256 and mlp-1200), hidden width (batch 128) and latent size (mlp-256, batch 128, four
  equal partitions), next to the same step's linear algebra alone; each point's step and
  its linear algebra are timed in interleaved rounds (``gatedvae.bench.interleaved``).
* ``metrics``: seconds per metric (``default`` preset settings) against the number of codes,
  on a trained model (``--metrics-run``, else the quickstart's gated model trained here for
  ``--metrics-steps``), plus the encoder's time for those codes. A metric whose time passes
  ``--metric-cap`` seconds is not run at larger sizes.
* ``memory``: peak resident memory against dataset size, in fresh processes: building the
  dataset, and building it plus 20 training steps of mlp-256 gated; dSprites at posX/posY
  strides 8, 4, 2, 1 and CorrelatedEllipses at 25,000 to 200,000 images.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from gatedvae import bench
from gatedvae.config import Config, DataConfig, GatingConfig, ModelConfig, TrainConfig
from gatedvae.data import build_dataset
from gatedvae.quickstart import DSPRITES_PARTITIONS
from gatedvae.run import prepare

ROOT = Path(__file__).resolve().parents[1]


def step_config(hidden: int, batch: int, latent: int = 8, net: str = "mlp") -> Config:
    parts = tuple(replace(p, size=latent // 4) for p in DSPRITES_PARTITIONS)
    return Config(
        data=DataConfig(name="dsprites"),
        model=ModelConfig(name="beta_vae", net=net, hidden=hidden, latent_dim=latent),
        gating=GatingConfig(enabled=True, partitions=parts),
        train=TrainConfig(batch_size=batch, device="cpu", seed=0),
    )


def time_steps(points: dict[str, Config], dataset, seconds: float, rounds: int, log) -> dict[str, dict]:
    """ms per step and per linear-algebra-only step for each config, interleaved."""
    items = {}
    flops = {}
    for name, cfg in points.items():
        prep = prepare(cfg, device=torch.device("cpu"), dataset=dataset)
        runner = bench.StepRunner(prep, bench.Spec(name, hidden=cfg.model.hidden, gated=True))
        gemms = bench.network_gemms(cfg, dataset.image_shape)
        rng = np.random.default_rng(0)
        batches = [dataset.images(rng.integers(0, len(dataset), cfg.train.batch_size)) for _ in range(8)]
        items[f"step {name}"] = runner
        items[f"linalg {name}"] = bench.linalg_step(gemms, runner.first_layer(), batches)
        items[f"dense {name}"] = bench.matmul_step(gemms)
        flops[name] = bench.step_flops(gemms)
    log(f"  {len(items)} items x {rounds} rounds")
    times, loads = bench.interleaved(items, seconds, rounds, warmup=2)
    out = {}
    for name, cfg in points.items():
        s, lin, dense = times[f"step {name}"], times[f"linalg {name}"], times[f"dense {name}"]
        out[name] = {
            "batch": cfg.train.batch_size,
            "hidden": cfg.model.hidden,
            "latent": cfg.model.latent_dim,
            "step_ms": bench.median(s) * 1e3,
            "linalg_ms": bench.median(lin) * 1e3,
            "dense_matmul_ms": bench.median(dense) * 1e3,
            "non_matmul_fraction": 1 - bench.ratio(lin, s),
            "flops_per_step": flops[name],
            "gflops": bench.median(flops[name] / x / 1e9 for x in s),
        }
    return {"points": out, "loadavg_per_round": loads}


def sweep_steps(kind: str, args, dataset, log) -> dict:
    if kind == "batch":
        sizes = [16, 32, 64] if args.quick else [16, 32, 64, 128, 256, 512]
        widths = [32] if args.quick else [256, 1200]
        points = {f"mlp-{h} B={b}": step_config(h, b) for h in widths for b in sizes}
    elif kind == "hidden":
        widths = [16, 32] if args.quick else [64, 128, 256, 512, 1024, 1200, 2048]
        points = {f"mlp-{h} B=128": step_config(h, 16 if args.quick else 128) for h in widths}
    else:
        latents = [4, 8] if args.quick else [4, 8, 16, 32, 64]
        points = {
            f"mlp-256 M={m}": step_config(32 if args.quick else 256, 16 if args.quick else 128, m) for m in latents
        }
    log(f"{kind}: {len(points)} configurations")
    return time_steps(points, dataset, args.seconds, args.rounds, log)


def sweep_metrics(args, log) -> dict:
    from gatedvae.evaluation import encode
    from gatedvae.metrics import KINDS, METRICS, preset_kwargs
    from gatedvae.run import load_trained
    from gatedvae.train import latest_checkpoint, train

    tmp = None
    run = Path(args.metrics_run) if args.metrics_run else None
    if run is None:
        tmp = tempfile.TemporaryDirectory(prefix="gatedvae_scaling_")
        run = Path(tmp.name) / "run"
    if not (run / "config.yaml").is_file() or latest_checkpoint(run / "checkpoints") is None:
        o = bench.BenchOptions.quick_mode() if args.quick else bench.BenchOptions(threads=args.threads)
        cfg = bench.metrics_config(args.metrics_steps, o)
        log(f"metrics: training {cfg.train.steps} + {cfg.train.finetune_steps} steps in {run}")
        train(cfg, run, quiet=True, tensorboard=False)
    prep, step, _ = load_trained(run)
    ds = prep.dataset
    sizes = [500, 1000, 2000] if args.quick else [1000, 2500, 5000, 12500, 25000, 50000]
    sizes = [n for n in sizes if n <= len(ds)]
    names = [n for n in METRICS if KINDS.get(n) in ("arrays", "codes")]
    if args.metric_names:
        names = [n for n in names if n in args.metric_names.split(",")]
    rng = np.random.default_rng(0)
    out: dict = {
        "model": prep.model.describe(),
        "step": step,
        "sizes": sizes,
        "encode_seconds": [],
        "metrics": {n: [] for n in names},
    }
    capped: set[str] = set()
    for n in sizes:
        idx = np.sort(rng.choice(len(ds), n, replace=False))
        t0 = time.perf_counter()
        mu = encode(prep, idx)  # (n, M)
        out["encode_seconds"].append(time.perf_counter() - t0)
        factors = ds.factors_of(idx)
        keep = np.flatnonzero(np.ptp(factors, axis=0) > 0)
        factors = factors[:, keep]
        for name in names:
            if name in capped:
                out["metrics"][name].append(None)
                continue
            kw = preset_kwargs(name, "default")
            t0 = time.perf_counter()
            if KINDS[name] == "arrays":
                METRICS[name](mu, factors, np.random.default_rng(1), **kw)
            else:
                METRICS[name](mu, np.random.default_rng(1), **kw)
            dt = time.perf_counter() - t0
            out["metrics"][name].append(dt)
            log(f"  n={n:>6} {name:<22}{dt:8.2f} s")
            if dt > args.metric_cap:
                capped.add(name)
    if tmp is not None:
        tmp.cleanup()
    return out


def sweep_memory(args, log) -> dict:
    rows = []
    strides = [8, 4] if args.quick else [8, 4, 2, 1]
    for s in strides:
        data = {"name": "dsprites", "stride": {"posX": s, "posY": s} if s > 1 else {}}
        log(f"memory: dsprites stride {s}")
        d = bench.run_child("data", {"data": data, "seconds": 0.1}, args.threads)
        m = bench.run_child(
            "memory",
            {"data": data, "hidden": 256, "steps": 20, "batch": 128, "evaluate": "none", "threads": args.threads},
            args.threads,
        )
        rows.append(
            {
                "dataset": "dsprites",
                "images": d["images"],
                "store_mb": d["store_bytes"] / 1e6,
                "build_peak_rss_mb": d["peak_rss_mb"],
                "baseline_rss_mb": d["baseline_rss_mb"],
                "train_peak_rss_mb": m["peak_rss_mb"],
            }
        )
    for size in [5000] if args.quick else [25_000, 50_000, 100_000, 200_000]:
        log(f"memory: ellipses {size}")
        d = bench.run_child("data", {"data": {"name": "ellipses", "size": size}, "seconds": 0.1}, args.threads)
        rows.append(
            {
                "dataset": "ellipses",
                "images": d["images"],
                "store_mb": d["store_bytes"] / 1e6,
                "build_peak_rss_mb": d["peak_rss_mb"],
                "baseline_rss_mb": d["baseline_rss_mb"],
                "train_peak_rss_mb": None,
            }
        )
    return {"rows": rows}


# --------------------------------------------------------------------------- plots


def _plot_steps(res: dict, key: str, xlabel: str, title: str, path: Path, group) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    series: dict[str, list] = {}
    for name, p in res["points"].items():
        series.setdefault(group(name, p), []).append(p)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, pts) in enumerate(series.items()):
        pts.sort(key=lambda p: p[key])
        x = [p[key] for p in pts]
        c = colors[i % len(colors)]
        ax.plot(x, [p["step_ms"] for p in pts], "o-", color=c, label=f"{label}: training step")
        ax.plot(x, [p["linalg_ms"] for p in pts], "s--", color=c, alpha=0.7, label=f"{label}: its linear algebra alone")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("ms per step")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_all(doc: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    load = doc.get("loadavg_start", [0])[0]
    written = []
    if "batch" in doc:
        p = out_dir / "perf_batch.png"
        _plot_steps(
            doc["batch"],
            "batch",
            "batch size",
            f"Gated beta-VAE step vs batch size (dSprites, 1-min load {load:.1f})",
            p,
            lambda name, pt: name.split()[0],
        )
        written.append(p)
    if "hidden" in doc:
        p = out_dir / "perf_hidden.png"
        _plot_steps(
            doc["hidden"],
            "hidden",
            "hidden width",
            "Gated beta-VAE step vs MLP hidden width (batch 128)",
            p,
            lambda name, pt: "mlp",
        )
        written.append(p)
    if "latent" in doc:
        p = out_dir / "perf_latent.png"
        _plot_steps(
            doc["latent"],
            "latent",
            "latent size M (4 equal partitions)",
            "Gated beta-VAE step vs latent size (mlp-256, batch 128)",
            p,
            lambda name, pt: "mlp-256",
        )
        written.append(p)
    if "metrics" in doc:
        m = doc["metrics"]
        fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
        ax.plot(m["sizes"], m["encode_seconds"], "k--", label="encoding the codes")
        for name, ts in m["metrics"].items():
            pts = [(n, t) for n, t in zip(m["sizes"], ts, strict=True) if t is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), "o-", label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("number of codes")
        ax.set_ylabel("seconds")
        ax.set_title("Metric time vs number of samples (default settings)", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        p = out_dir / "perf_metrics.png"
        fig.savefig(p)
        plt.close(fig)
        written.append(p)
    if "memory" in doc:
        rows = doc["memory"]["rows"]
        fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
        for ds, marker in (("dsprites", "o"), ("ellipses", "s")):
            r = sorted((x for x in rows if x["dataset"] == ds), key=lambda x: x["images"])
            if not r:
                continue
            n = [x["images"] for x in r]
            ax.plot(n, [x["store_mb"] for x in r], marker + ":", label=f"{ds}: image store")
            ax.plot(n, [x["build_peak_rss_mb"] for x in r], marker + "-", label=f"{ds}: peak RSS, building")
            if all(x["train_peak_rss_mb"] for x in r):
                ax.plot(
                    n,
                    [x["train_peak_rss_mb"] for x in r],
                    marker + "--",
                    label=f"{ds}: peak RSS, building + training (mlp-256)",
                )
        base = rows[0]["baseline_rss_mb"] if rows else 0
        ax.axhline(base, color="gray", lw=0.8, label=f"python + torch imported ({base:.0f} MB)")
        ax.set_xscale("log")
        ax.set_xlabel("images")
        ax.set_ylabel("MB")
        ax.set_title("Memory vs dataset size", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = out_dir / "perf_memory.png"
        fig.savefig(p)
        plt.close(fig)
        written.append(p)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--only", default="batch,hidden,latent,metrics,memory")
    ap.add_argument("--seconds", type=float, default=1.0, help="seconds per item, split over the rounds")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--metrics-run", help="a trained run for the metrics sweep (trained there if empty)")
    ap.add_argument("--metrics-steps", type=int, default=2000)
    ap.add_argument("--metric-names", help="comma-separated subset of the array metrics")
    ap.add_argument(
        "--metric-cap", type=float, default=60.0, help="stop growing a metric's sample once it takes this long"
    )
    ap.add_argument("--out-dir", default=str(ROOT / "docs" / "img"))
    ap.add_argument("--json", default="scaling.json")
    ap.add_argument("--plot-only", action="store_true", help="re-plot from --json without measuring")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    args = ap.parse_args(argv)

    def log(s: str) -> None:
        print(s, file=sys.stderr, flush=True)

    if args.plot_only:
        doc = json.loads(Path(args.json).read_text())
    else:
        if args.threads:
            torch.set_num_threads(args.threads)
        doc = {"machine": bench.machine_info(), "loadavg_start": list(os.getloadavg())}
        only = [s.strip() for s in args.only.split(",") if s.strip()]
        if any(k in only for k in ("batch", "hidden", "latent")):
            dataset = build_dataset(DataConfig(name="dsprites"))
            for kind in ("batch", "hidden", "latent"):
                if kind in only:
                    doc[kind] = sweep_steps(kind, args, dataset, log)
            del dataset
        if "metrics" in only:
            doc["metrics"] = sweep_metrics(args, log)
        if "memory" in only:
            doc["memory"] = sweep_memory(args, log)
        doc["loadavg_end"] = list(os.getloadavg())
        Path(args.json).write_text(json.dumps(doc, indent=2, default=float) + "\n")
        log(f"wrote {args.json}")
    for p in plot_all(doc, Path(args.out_dir)):
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
