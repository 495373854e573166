"""The sections of ``gatedvae bench`` besides ``train`` (data, pairs, metrics, memory, quickstart)
and :func:`run_bench`, which measures the chosen sections in one process so that ratios hold."""

from __future__ import annotations

import os
import platform
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import Config
from ..errors import ConfigError
from ..train.device import cpu_heap
from .children import dsprites_partitions, run_child
from .ensemble_section import measure_ensemble
from .options import SECTIONS, BenchOptions, bench_device, check_precisions
from .report import targets
from .timing import loadavg, rate
from .train_section import measure_train

__all__ = [
    "measure_data",
    "measure_gather",
    "measure_pairs",
    "measure_metrics",
    "measure_memory",
    "measure_quickstart",
    "metrics_config",
    "machine_info",
    "run_bench",
]


def measure_data(o: BenchOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """dSprites generation time, store size and resident memory, in a fresh process; then the gather
    rates of a memory-mapped cache against the in-memory store (:func:`measure_gather`)."""
    log("data: generating dSprites in a subprocess ...")
    data = asdict(o.data_config())
    out = run_child("data", {"data": data, "seconds": 0.2 if o.quick else 1.0}, o.threads)
    out["gather"] = measure_gather(o, log)
    return out


def measure_gather(o: BenchOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Images/s of a batch of ``o.batch`` random rows gathered (as float32, as the trainer does) from
    an MPI3D-layout memory-mapped cache (uint8 ``(N, 3, 64, 64)``, :mod:`gatedvae.data.cache`) with a
    warm page cache and a cold one (the file's pages dropped with ``posix_fadvise(DONTNEED)`` before
    every batch: each batch read from the disk), against the same images in memory (``Uint8Store``).
    The cache is synthetic (65,536 images, 805 MB; quick: 4,096) in a temporary folder, removed after.
    """
    from ..data.cache import rss_anon_mb, write_cache

    n = 4096 if o.quick else 65536
    seconds = 0.1 if o.quick else 1.0
    rng = np.random.default_rng(o.seed)
    log(f"data: gather rates of a memory-mapped cache of {n:,} RGB 64x64 images ...")

    def chunks():
        for start in range(0, n, 1024):
            m = min(1024, n - start)
            block = np.empty((m, 3, 64, 64), dtype=np.uint8)  # (m, 3, 64, 64)
            block[:] = (np.arange(start, start + m) % 251).astype(np.uint8)[:, None, None, None]
            yield block

    def images_per_s(gather: Callable[[np.ndarray], Any], before: Callable[[], None] | None = None) -> float:
        batches, spent = 0, 0.0
        end = time.perf_counter() + seconds
        while time.perf_counter() < end or batches < 3:
            if before is not None:
                before()  # not timed
            idx = rng.integers(0, n, o.batch)
            t0 = time.perf_counter()
            gather(idx)
            spent += time.perf_counter() - t0
            batches += 1
        return batches * o.batch / spent

    with tempfile.TemporaryDirectory(prefix="gatedvae_bench_gather_") as tmp:
        t0 = time.perf_counter()
        store = write_cache(Path(tmp) / "cache.npy", (n, 3, 64, 64), chunks(), {"synthetic": True})
        write_s = time.perf_counter() - t0
        anon0 = rss_anon_mb()
        cold = images_per_s(store.gather, store.drop_page_cache)
        for start in range(0, n, 4096):  # warm: every page read once
            store.gather_uint8(np.arange(start, min(start + 4096, n)))
        warm = images_per_s(store.gather)
        anon_gain = rss_anon_mb() - anon0
        memory = store.load()
        in_memory = images_per_s(memory.gather)
        del memory, store
    rows = [
        {"store": "in memory (Uint8Store)", "images_per_s": in_memory, "vs_memory": 1.0},
        {"store": "memory-mapped cache, warm", "images_per_s": warm, "vs_memory": warm / in_memory},
        {
            "store": "memory-mapped cache, cold (pages dropped per batch)",
            "images_per_s": cold,
            "vs_memory": cold / in_memory,
        },
    ]
    for r in rows:
        log(f"  gather {o.batch}: {r['store']:<52} {r['images_per_s']:>12,.0f} images/s ({r['vs_memory']:.3f}x)")
    return {
        "images": n,
        "batch": o.batch,
        "cache_bytes": n * 3 * 64 * 64,
        "write_seconds": write_s,
        "rss_anon_gain_mb": anon_gain,
        "rows": rows,
    }


def measure_pairs(o: BenchOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Index pairs/s and assembled image pairs/s (sample + gather input and target) per sampler."""
    from ..data import ClusterPairSampler, ExactPairSampler, IdentityPairSampler, build_dataset

    ds = build_dataset(o.data_config())
    rng = np.random.default_rng(o.seed)
    B = o.batch
    samplers: dict[str, Any] = {
        f"exact ({', '.join(p.factors)})": ExactPairSampler(ds, list(p.factors)) for p in dsprites_partitions()
    }
    samplers["exact (orientation) + 10% noise"] = ExactPairSampler(ds, ["orientation"], noise=0.1)
    samplers["identity"] = IdentityPairSampler(ds)
    setup = {}
    if not o.quick:
        t0 = time.perf_counter()
        samplers["cluster (posX, posY; 1000)"] = ClusterPairSampler(ds, ["posX", "posY"], 1000, rng)
        setup["cluster (posX, posY; 1000)"] = time.perf_counter() - t0
    seconds = 0.06 if o.quick else 1.5
    rows = []
    buf = torch.empty(B, *ds.image_shape)
    for name, s in samplers.items():
        log(f"pairs: {name}")

        def assemble(s=s):
            p = s.sample(B, rng)
            ds.images(p.input), ds.images(p.target)

        def assemble_into(s=s):
            p = s.sample(B, rng)
            ds.store.gather(p.input, out=buf)
            ds.store.gather(p.target, out=buf)

        rows.append(
            {
                "sampler": name,
                "index_pairs_per_s": rate(lambda s=s: s.sample(B, rng), B, seconds),
                "index_pairs_per_s_65536": rate(lambda s=s: s.sample(65_536, rng), 65_536, seconds),
                "image_pairs_per_s": rate(assemble, B, seconds),
                "image_pairs_per_s_preallocated": rate(assemble_into, B, seconds),
                "setup_seconds": setup.get(name, 0.0),
            }
        )
    return {"images": len(ds), "batch": B, "rows": rows}


def metrics_config(steps: int, o: BenchOptions, precision: str | None = None) -> Config:
    """The quickstart's gated beta-VAE at the bench's size, on ``o.device``, trained at ``precision``
    (default: the first of ``o.precisions``)."""
    from ..quickstart import quickstart_config

    cfg = quickstart_config(True, steps=steps, seed=o.seed)
    return replace(
        cfg,
        data=o.data_config(),
        model=replace(cfg.model, hidden=o.hidden_small),
        train=replace(cfg.train, device=o.device, threads=o.threads, precision=precision or o.precisions[0]),
    )


def _train_metrics_run(o: BenchOptions, run: Path, precision: str, log: Callable[[str], None]) -> float:
    """Train the bench's metrics model at ``precision`` into ``run``; its wall seconds."""
    from ..train import train

    cfg = metrics_config(o.metrics_steps, o, precision)
    log(
        f"metrics: training the quickstart's gated beta-VAE (hidden {o.hidden_small}, {precision}) for "
        f"{cfg.train.steps} + {cfg.train.finetune_steps} steps in {run} ..."
    )
    t0 = time.perf_counter()
    train(cfg, run, quiet=True, tensorboard=False)
    return time.perf_counter() - t0


def measure_metrics(o: BenchOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Seconds per metric for each preset on a trained model (``--metrics-run`` or trained here),
    the model encoding on ``o.device`` (the metrics themselves are numpy on the CPU).

    ``by_precision``: the same model trained at each of ``o.precisions`` (same seed, same data),
    with its training seconds and headline scores under the first preset; with ``--metrics-run``
    only that run's own precision (nothing else is trained)."""
    from ..evaluation import evaluate_model, headline
    from ..run import load_trained
    from ..train import latest_checkpoint

    tmp = tempfile.TemporaryDirectory(prefix="gatedvae_bench_metrics_")
    train_seconds = None
    run = Path(o.metrics_run) if o.metrics_run else Path(tmp.name) / "run"
    try:
        if not (run / "config.yaml").is_file() or latest_checkpoint(run / "checkpoints") is None:
            # A new (or empty) --metrics-run is trained here and kept for the next time.
            train_seconds = _train_metrics_run(o, run, o.precisions[0], log)
        prep, step, _ = load_trained(run, device=torch.device(o.device))
        out: dict[str, Any] = {
            "device": o.device,
            "run": None if o.metrics_run is None else str(run),
            "step": step,
            "images": len(prep.dataset),
            "model": prep.model.describe(),
            "train_seconds": train_seconds,
            "presets": {},
        }
        first: dict[str, float] = {}
        for preset in o.presets:
            log(f"metrics: preset {preset} ...")
            t0 = time.perf_counter()
            res = evaluate_model(prep, o.metrics, preset, rng=np.random.default_rng(o.seed))
            total = time.perf_counter() - t0
            if not first:
                first = headline(res)
            out["presets"][preset] = {
                "total_seconds": total,
                "codes_seconds": res["codes_seconds"],
                "codes": res["samples"]["codes"],
                "encoded_images": res["encoded_images"],
                "encode_seconds": res["encode_seconds"],
                "loadavg": loadavg(),
                "metrics": {
                    name: {"seconds": e["seconds"], "encode_seconds": e["encode_seconds"], "samples": e["samples"]}
                    for name, e in res["results"].items()
                },
                "scores": {
                    name: {
                        k: float(v)
                        for k, v in e["scores"].items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)
                    }
                    for name, e in res["results"].items()
                },
            }
        out["scores_preset"] = o.presets[0]
        out["by_precision"] = {
            prep.config.train.precision: {"train_seconds": train_seconds, "headline": first},
        }
        if not o.metrics_run:
            for precision in o.precisions[1:]:
                other = Path(tmp.name) / f"run-{precision}"
                seconds = _train_metrics_run(o, other, precision, log)
                prep_p, _, _ = load_trained(other, device=torch.device(o.device))
                log(f"metrics: scores of the {precision} run (preset {o.presets[0]}) ...")
                res = evaluate_model(prep_p, o.metrics, o.presets[0], rng=np.random.default_rng(o.seed))
                out["by_precision"][precision] = {"train_seconds": seconds, "headline": headline(res)}
        return out
    finally:
        tmp.cleanup()


def measure_memory(o: BenchOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Peak RSS of a dSprites training run of the paper preset (fresh process)."""
    evaluate = "none" if o.quick else "fast"
    log(
        f"memory: training mlp-{o.hidden_paper} gated for {o.memory_steps} steps (evaluate={evaluate}) "
        "in a subprocess ..."
    )
    args = {
        "data": asdict(o.data_config()),
        "hidden": o.hidden_paper,
        "steps": o.memory_steps,
        "batch": o.batch,
        "evaluate": evaluate,
        "threads": o.threads,
        "device": o.device,
        "precision": o.precisions[0],
    }
    return run_child("memory", args, o.threads)


def measure_quickstart(o: BenchOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """``gatedvae quickstart`` end to end in a fresh process (30 steps per model in quick mode).
    ``seconds``: inside the process; ``process_seconds``: including interpreter start-up."""
    log("quickstart: running gatedvae quickstart in a subprocess ...")
    return run_child("quickstart", {"steps": 30 if o.quick else 3000}, o.threads)


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """The machine; with a CUDA ``device`` also the GPU (name, compute capability, memory) and the
    CUDA and cuDNN versions."""
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "device": str(device),
    }
    dev = torch.device(device)
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        info.update(
            device_name=props.name,
            capability=f"{props.major}.{props.minor}",
            device_memory_gb=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    return info


#: sections whose steps run in the trainer's CPU heap setting (:func:`gatedvae.train.device.cpu_heap`)
_TRAINER_HEAP = ("train", "ensemble")


def run_bench(o: BenchOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure the chosen sections; returns the results as plain data (JSON-safe)."""
    unknown = [s for s in o.sections if s not in SECTIONS]
    if unknown:
        raise ConfigError(f"unknown bench section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    device = bench_device(o.device)  # a device or precision this machine lacks: one line, nothing measured
    o = replace(o, device=str(device), precisions=check_precisions(tuple(o.precisions), device)).for_device()
    before = torch.get_num_threads()
    if o.threads:
        torch.set_num_threads(o.threads)
    t0 = time.perf_counter()
    res: dict[str, Any] = {
        "machine": machine_info(o.device),
        "options": asdict(o),
        "loadavg_start": loadavg(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    fns = {
        "train": measure_train,
        "data": measure_data,
        "pairs": measure_pairs,
        "metrics": measure_metrics,
        "memory": measure_memory,
        "quickstart": measure_quickstart,
        "ensemble": measure_ensemble,
    }
    try:
        for s in SECTIONS:
            if s in o.sections:
                # the steps timed as the trainer runs them: on the CPU in its heap setting (train.device)
                with cpu_heap() if s in _TRAINER_HEAP and device.type == "cpu" else nullcontext(False) as heap:
                    res[s] = fns[s](o, log)
                if heap and isinstance(res[s], dict):
                    res[s]["cpu_heap"] = True
    finally:
        torch.set_num_threads(before)
    res["loadavg_end"] = loadavg()
    res["seconds"] = time.perf_counter() - t0
    res["targets"] = targets(res)
    return res
