"""The sections measured in a fresh interpreter (``python -m gatedvae.bench --child KIND ARGS``):
dSprites generation and its memory, a whole training run's peak memory, the quickstart end to
end. A fresh process is the only honest way to read a peak resident set size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config, DataConfig, GatingConfig, ModelConfig, TrainConfig
from .runner import LATENT_DIM
from .timing import peak_rss_mb

__all__ = ["run_child", "child_main", "dsprites_partitions"]


def run_child(kind: str, args: dict[str, Any], threads: int) -> dict[str, Any]:
    """Run ``_child_<kind>(args)`` in a fresh interpreter; its JSON result (which carries its
    own peak RSS) plus the wall time of the whole process."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "gatedvae.bench", "--child", kind, json.dumps(args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    seconds = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = proc.stdout.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"bench child '{kind}' failed (exit {proc.returncode}): {tail[0]}")
    doc = json.loads(lines[-1])
    doc["process_seconds"] = seconds
    return doc


def _child_data(args: dict[str, Any]) -> dict[str, Any]:
    import torch  # noqa: F401  (count the library's import in the baseline)

    from ..data import build_dataset

    base = peak_rss_mb()
    t0 = time.perf_counter()
    ds = build_dataset(DataConfig(**args["data"]))
    seconds = time.perf_counter() - t0
    after = peak_rss_mb()
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(ds), 128)
    ds.images(idx)
    t0 = time.perf_counter()
    n = 0
    while time.perf_counter() - t0 < args.get("seconds", 0.5):
        ds.images(rng.integers(0, len(ds), 128))
        n += 1
    gather = (time.perf_counter() - t0) / n
    return {
        "images": len(ds),
        "seconds": seconds,
        "store_bytes": int(ds.store.nbytes),
        "baseline_rss_mb": base,
        "peak_rss_mb": after,
        "rss_gain_mb": after - base,
        "gather_128_ms": gather * 1e3,
    }


def _child_memory(args: dict[str, Any]) -> dict[str, Any]:
    from ..callbacks import standard_callbacks
    from ..train import train

    cfg = Config(
        data=DataConfig(**args["data"]),
        model=ModelConfig(name="beta_vae", net="mlp", latent_dim=LATENT_DIM, hidden=args["hidden"], beta=4.0),
        gating=GatingConfig(enabled=True, partitions=dsprites_partitions()),
        train=TrainConfig(
            steps=args["steps"],
            batch_size=args["batch"],
            seed=0,
            device=args.get("device", "cpu"),
            precision=args.get("precision", "fp32"),
            threads=args.get("threads", 0),
            log_every=max(args["steps"] // 4, 1),
            checkpoint_every=max(args["steps"] // 2, 1),
            image_every=max(args["steps"] // 2, 1),
            evaluate=args["evaluate"],
        ),
    )
    with tempfile.TemporaryDirectory(prefix="gatedvae_bench_") as tmp:
        t0 = time.perf_counter()
        summary = train(cfg, Path(tmp) / "run", quiet=True, tensorboard=True, callbacks=standard_callbacks())
        seconds = time.perf_counter() - t0
    out = {
        "steps": args["steps"],
        "hidden": args["hidden"],
        "evaluate": args["evaluate"],
        "device": args.get("device", "cpu"),
        "precision": args.get("precision", "fp32"),
        "seconds": seconds,
        "images_per_second": summary.get("images_per_second"),
        "peak_rss_mb": peak_rss_mb(),
    }
    import torch

    if torch.device(out["device"]).type == "cuda":  # the GPU's own peak (tensors the run allocated)
        out["peak_device_mb"] = torch.cuda.max_memory_allocated(torch.device(out["device"])) / 2**20
    return out


def _child_quickstart(args: dict[str, Any]) -> dict[str, Any]:
    import contextlib
    import io

    from ..quickstart import quickstart

    with tempfile.TemporaryDirectory(prefix="gatedvae_bench_qs_") as tmp:
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # what gatedvae quickstart --quiet runs
            quickstart(Path(tmp) / "qs", seed=0, quiet=True, steps=args["steps"])
        seconds = time.perf_counter() - t0
    return {"steps": args["steps"], "seconds": seconds, "peak_rss_mb": peak_rss_mb()}


def dsprites_partitions():
    from ..quickstart import DSPRITES_PARTITIONS

    return DSPRITES_PARTITIONS


def child_main(argv: list[str]) -> int:
    kind, args = argv[0], json.loads(argv[1])
    fn = {"data": _child_data, "memory": _child_memory, "quickstart": _child_quickstart}[kind]
    print(json.dumps(fn(args)), flush=True)
    return 0
