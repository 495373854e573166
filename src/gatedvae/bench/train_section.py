"""The ``train`` section: the matmul roofline, training rows per network and model family, the
per-item DataLoader baseline, variants of the step, and where a step's time goes.

Every timing is taken in interleaved rounds (:func:`.timing.interleaved`) so that ratios hold on a
shared machine; each training row is compared with the same products alone (its roofline) and
with the machine's peak (a large square product), both at the row's precision.

On a GPU (``--device cuda``) the same tables: the dataset on the device, the trainer's CUDA step,
the device synchronised around each timed stretch, the peak being that GPU's measured matmul
rate at each precision (fp32 = IEEE float32 with TF32 off, tf32 = float32 operands on TF32
tensor cores, bf16 / fp16 = 16-bit operands), and the run's default device settings
(deterministic algorithms, :func:`gatedvae.train.device.device_settings`). The variants that are
CPU matters (one thread, the sparse first layer, which runs on the CPU only, NCHW convolutions)
are left out there.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from .flops import Gemm, Operands, counted_flops, gemm_products, linalg_step, matmul_step, step_flops
from .options import BenchOptions
from .runner import PHASES, LoaderDraw, Spec, StepRunner, build_runner
from .timing import device_sync, interleaved, median, profile_step, ratio

__all__ = ["measure_train", "PRECISION_DTYPES"]

#: The operand dtype of each precision's matmuls (TF32 computes on float32 operands).
PRECISION_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _at_precision(fn: Callable[[], None], precision: str, device: torch.device) -> Callable[[], None]:
    """``fn`` with CUDA's TF32 flags as ``precision`` sets them (on for tf32, off otherwise) for
    the call: the interleaved rounds alternate precisions. The CPU has no such flag: ``fn`` itself."""
    if device.type != "cuda":
        return fn
    tf32 = precision == "tf32"

    def call() -> None:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        fn()

    return call


@contextlib.contextmanager
def _device_settings(device: torch.device) -> Iterator[None]:
    """The process-wide settings a default training run has on ``device`` (on CUDA: deterministic
    algorithms and cuDNN, TF32 off), put back afterwards."""
    if device.type != "cuda":
        yield
        return
    from ..config import TrainConfig
    from ..train.device import CUBLAS_WORKSPACE, device_settings

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)  # before cuBLAS's first use
    with device_settings(device, "fp32", TrainConfig().deterministic):
        yield


def _families() -> list[str]:
    """One registered model per objective class (``beta_vae`` for the VAE family)."""
    from ..models import MODELS

    seen: dict[type, str] = {}
    for name, entry in MODELS.items():
        if entry.cls not in seen or name == "beta_vae":
            seen[entry.cls] = name
    return sorted(seen.values())


def _train_specs(o: BenchOptions) -> dict[str, list[Spec]]:
    """The measured specs: the rows at every precision (the model families at the first), the
    DataLoader baselines, variants and phase splits at the first precision."""
    big, small = o.hidden_paper, o.hidden_small
    first = o.precisions[0]
    cpu = torch.device(o.device).type == "cpu"
    rows = []
    for precision in o.precisions:
        for label, net, hidden in (
            (f"mlp-{big}", "mlp", big),
            (f"mlp-{small}", "mlp", small),
            ("conv64", "conv64", small),
        ):
            for gated in (False, True):
                rows.append(Spec(label, "beta_vae", net, hidden, gated, precision=precision))
    if o.families:
        for name in _families():
            if name != "beta_vae":
                rows += [Spec(f"mlp-{small}", name, "mlp", small, g, precision=first) for g in (False, True)]
    paper = Spec(f"mlp-{big}", "beta_vae", "mlp", big, True, precision=first)
    small_g = Spec(f"mlp-{small}", "beta_vae", "mlp", small, True, precision=first)
    loaders = [replace(paper, loader=0), replace(small_g, loader=0), replace(small_g, gated=False, loader=0)]
    loaders += [replace(small_g, loader=w) for w in o.loader_workers if w > 0]
    variants = []
    for base in (paper, small_g):
        variants += [
            replace(base, adam=(("fused", False), ("foreach", True))),
            replace(base, adam=(("fused", False), ("foreach", False))),
        ]
        if cpu:  # the sparse first layer and the thread count are the CPU's
            variants.append(replace(base, dense_first=True))
            if torch.get_num_threads() > 1:
                variants.append(replace(base, threads=1))
    if cpu:  # the trainer keeps conv weights NHWC on the CPU only
        variants.append(Spec("conv64", "beta_vae", "conv64", small, True, channels_first=True, precision=first))
    return {"rows": rows, "loaders": loaders, "variants": variants, "split": [paper, small_g]}


def _peak_name(precision: str) -> str:
    return "peak" if precision == "fp32" else f"peak {precision}"


def measure_train(o: BenchOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The ``train`` section: roofline, training rows, DataLoader baselines, variants, profiles."""
    device = torch.device(o.device)
    with _device_settings(device):
        return _measure_train(o, device, log)


def _measure_train(o: BenchOptions, device: torch.device, log: Callable[[str], None]) -> dict[str, Any]:
    from ..data import build_dataset

    t0 = time.perf_counter()
    host = build_dataset(o.data_config())
    dataset = host.to(device)  # one copy on the device, shared by every runner
    log(f"train: dSprites {len(dataset):,} images built in {time.perf_counter() - t0:.1f} s, on {device}")
    specs = _train_specs(o)
    runners: dict[str, StepRunner] = {}
    gemm_lists: dict[str, list[Gemm]] = {}
    errors: dict[str, str] = {}
    for group in ("rows", "loaders", "variants"):
        for spec in specs[group]:
            try:
                # build_runner traces one real step: a model that cannot run fails here, not in the rounds
                runners[spec.key], gemm_lists[spec.key] = build_runner(spec, o.batch, dataset, host=host)
            except Exception as exc:  # noqa: BLE001 - a model that cannot run the step is reported, not fatal
                errors[spec.key] = f"{type(exc).__name__}: {exc}"
                runners.pop(spec.key, None)
    split_runners = {s.key: build_runner(s, o.batch, dataset, split=True, host=host)[0] for s in specs["split"]}
    flops_counted = {s.key: counted_flops(runners[s.key]) for s in specs["rows"] if s.key in runners}

    # Matmul-only steps per network shape and precision, and each network's real linear algebra
    # (the CPU's sparse first layer, at fp32).
    gen = torch.Generator().manual_seed(o.seed)
    roof_names: dict[str, str] = {}
    linalg_names: dict[str, str] = {}
    items: dict[str, Callable[[], None]] = {}
    for p in o.precisions:
        items[_peak_name(p)] = _at_precision(
            Operands(o.square, o.square, o.square, "dx", gen, device, PRECISION_DTYPES[p]), p, device
        )
    for spec in specs["rows"]:
        if spec.key not in runners:
            continue
        gk = repr(gemm_lists[spec.key]) + spec.precision
        if gk not in roof_names:
            name = f"roofline {spec.label}" + ("" if spec.model == "beta_vae" else f" {spec.model}")
            name += "" if spec.precision == "fp32" else f" {spec.precision}"
            roof_names[gk] = name
            dtype = PRECISION_DTYPES[spec.precision]
            items[name] = _at_precision(
                matmul_step(gemm_lists[spec.key], o.seed, device=device, dtype=dtype), spec.precision, device
            )
            first = runners[spec.key].first_layer()
            if first is not None and first.sparse_binary and device.type == "cpu" and spec.precision == "fp32":
                rng = np.random.default_rng(o.seed)
                batches = [dataset.images(rng.integers(0, len(dataset), o.batch)) for _ in range(8)]
                linalg_names[gk] = f"linalg {spec.label}" + ("" if spec.model == "beta_vae" else f" {spec.model}")
                first_name = next(n for n, m in runners[spec.key].model.named_modules() if m is first)
                items[linalg_names[gk]] = linalg_step(gemm_lists[spec.key], first, batches, o.seed, first_name)
        items[spec.key] = _at_precision(runners[spec.key], spec.precision, device)
    for group in ("loaders", "variants"):
        for spec in specs[group]:
            if spec.key in runners:
                items[spec.key] = _at_precision(runners[spec.key], spec.precision, device)
    for key, r in split_runners.items():
        items["split " + key] = _at_precision(r, r.spec.precision, device)
    # Each distinct product of the paper-preset step (layers under 1% of the FLOPs left out), at
    # the first precision.
    paper = specs["split"][0]
    first_p = paper.precision
    paper_gemms = gemm_lists[paper.key]
    total_fwd = sum(g.flops for g in paper_gemms)
    products: dict[str, tuple[int, int, int, str, list[str]]] = {}
    for g in paper_gemms:
        if g.flops >= 0.01 * total_fwd:
            for name, m, k, n, layout in gemm_products([g]):
                products.setdefault(f"{layout} {m}x{k} @ {k}x{n}", (m, k, n, layout, []))[4].append(name)
    for sig, (m, k, n, layout, _) in products.items():
        items[f"shape {sig}"] = _at_precision(
            Operands(m, k, n, layout, gen, device, PRECISION_DTYPES[first_p]), first_p, device
        )

    log(
        f"train: {len(items)} items x {o.rounds} rounds x {o.seconds / o.rounds:.2f} s "
        f"(about {len(items) * o.seconds:.0f} s)"
    )
    t_run = time.perf_counter()
    times, loads = interleaved(items, o.seconds, o.rounds, o.warmup, log=log, sync=device_sync(device))
    run_seconds = time.perf_counter() - t_run
    for r in [*runners.values(), *split_runners.values()]:
        r.check.verify()  # CUDA: the deferred non-finite record
        if isinstance(r.draw, LoaderDraw):  # stop DataLoader workers
            r.draw.iters = []

    peak_flops = 2 * o.square**3

    def row_of(spec: Spec) -> dict[str, Any]:
        gemms = gemm_lists[spec.key]
        flops = step_flops(gemms)
        gk = repr(gemms) + spec.precision
        roof = roof_names[gk]
        t = times[spec.key]
        peak_t = times[_peak_name(spec.precision)]
        out = {
            "key": spec.key,
            "label": spec.label,
            "model": spec.model,
            "net": spec.net,
            "hidden": spec.hidden,
            "gated": spec.gated,
            "precision": spec.precision,
            "variant": spec.variant,
            "batch": o.batch,
            "flops_per_step": flops,
            "steps_per_s": median(1 / x for x in t),
            "images_per_s": median(o.batch / x for x in t),
            "step_ms": median(t) * 1e3,
            "gflops": median(flops / x / 1e9 for x in t),
            "roofline": roof,
            "roofline_gflops": median(flops / x / 1e9 for x in times[roof]),
            "fraction_of_roofline": ratio(times[roof], t),
            "fraction_of_peak": median((flops / a) / (peak_flops / b) for a, b in zip(t, peak_t, strict=True)),
        }
        # The step's own linear algebra: the dense products, or with the sparse first layer.
        lin = times[linalg_names[gk]] if gk in linalg_names and not spec.dense_first else times[roof]
        out["linalg_ms"] = median(lin) * 1e3
        out["non_matmul_fraction"] = 1 - ratio(lin, t)
        return out

    rows = []
    for spec in specs["rows"]:
        if spec.key in runners:
            row = row_of(spec)
            row["flops_counted"] = flops_counted[spec.key]
            rows.append(row)
    loaders = []
    for spec in specs["loaders"]:
        if spec.key not in runners:
            continue
        base = replace(spec, loader=None).key
        row = row_of(spec)
        row["ours_key"] = base
        row["speedup_of_ours"] = ratio(times[spec.key], times[base]) if base in times else float("nan")
        loaders.append(row)
    variants = []
    for spec in specs["variants"]:
        if spec.key not in runners:
            continue
        base = replace(spec, adam=(), threads=0, dense_first=False, channels_first=False).key
        row = row_of(spec)
        row["base_key"] = base
        row["relative_step_time"] = ratio(times[spec.key], times[base]) if base in times else float("nan")
        variants.append(row)
    splits = []
    for key, r in split_runners.items():
        recs = r.records[o.warmup :] or r.records
        phase = {p: median(rec[p] for rec in recs) for p in PHASES}
        total = sum(phase.values())
        splits.append(
            {
                "key": key,
                "calls": len(recs),
                "median_ms": {p: v * 1e3 for p, v in phase.items()},
                "share": {p: v / total for p, v in phase.items()},
                "step_ms": median(sum(x.values()) for x in recs) * 1e3,
            }
        )
    shapes = []
    peak_t = times[_peak_name(first_p)]
    for sig, (m, k, n, _layout, layers) in products.items():
        t = times[f"shape {sig}"]
        shapes.append(
            {
                "product": sig,
                "layers": layers,
                "gflops": median(2 * m * k * n / x / 1e9 for x in t),
                "fraction_of_peak": median(
                    (2 * m * k * n / a) / (peak_flops / b) for a, b in zip(t, peak_t, strict=True)
                ),
            }
        )
    log("train: profiling operators ...")
    _at_precision(lambda: None, first_p, device)()  # the profiled steps' TF32 flags (CUDA)
    profiles = [profile_step(r, o.profile_steps) for r in split_runners.values()]
    peaks = {
        p: {
            "square": o.square,
            "dtype": str(PRECISION_DTYPES[p]).removeprefix("torch."),
            "gflops": median(peak_flops / x / 1e9 for x in times[_peak_name(p)]),
        }
        for p in o.precisions
    }
    return {
        "device": str(device),
        "precisions": list(o.precisions),
        "dataset_images": len(dataset),
        "batch": o.batch,
        "measure_seconds": run_seconds,
        "loadavg_per_round": loads,
        "peak": {"precision": first_p, **peaks[first_p]},
        "peaks": peaks,
        "shapes_precision": first_p,
        "shapes": shapes,
        "rows": rows,
        "loaders": loaders,
        "variants": variants,
        "split": splits,
        "profiles": profiles,
        "errors": errors,
        "raw_seconds_per_call": times,
        "paper_key": paper.key,
        "small_key": specs["split"][1].key,
    }
