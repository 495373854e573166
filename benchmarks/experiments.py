"""Optimisation candidates that are not part of the trainer, measured against its step.

Run: .venv/bin/python benchmarks/experiments.py [--only compile,prealloc,pinning,layout] [--seconds 2] [--rounds 5]
     [--hidden 256] [--json experiments.json]

* ``compile``: ``torch.compile`` (inductor, CPU) of the encoder and the decoder of the gated
  beta-VAE step; compile time and step time against the eager step, interleaved.
* ``prealloc``: the batch's input and target images gathered into two preallocated buffers
  (``ImageStore.gather(..., out=)``) instead of fresh tensors, inside the real step.
* ``layout``: the MLP's sparse first layer with its parameter stored the earlier way, an
  ``(out, in)`` parameter in column-major layout (which the fused Adam kernel copies to a
  contiguous tensor and back every step), against the trainer's ``weight_t`` ``(in, out)``,
  in one process, interleaved; ``--hidden`` sets the width (docs/performance.md used 1200
  and 256, ``--seconds 40 --rounds 8``).
* ``pinning``: the same step in fresh processes with ``OMP_PROC_BIND=close OMP_PLACES=cores``
  (threads pinned to cores) and without, alternated.

The results and the decisions taken on them are in docs/performance.md ("What was tried").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

from gatedvae import bench
from gatedvae.config import DataConfig
from gatedvae.data import build_dataset


def _spec(hidden: int) -> bench.Spec:
    return bench.Spec(f"mlp-{hidden}", "beta_vae", "mlp", hidden, True)


def exp_compile(args, dataset, log) -> dict:
    eager, _ = bench.build_runner(_spec(args.hidden), 128, dataset)
    compiled, _ = bench.build_runner(_spec(args.hidden), 128, dataset)
    model = compiled.model
    model.encoder = torch.compile(model.encoder)
    model.decoder = torch.compile(model.decoder)
    t0 = time.perf_counter()
    for _ in range(3):  # the first calls compile (forward and backward graphs)
        compiled()
    compile_s = time.perf_counter() - t0
    log(f"compile: first 3 steps took {compile_s:.1f} s")
    times, loads = bench.interleaved({"eager": eager, "compiled": compiled}, args.seconds, args.rounds, warmup=2)
    return {
        "hidden": args.hidden,
        "compile_seconds": compile_s,
        "eager_ms": bench.median(times["eager"]) * 1e3,
        "compiled_ms": bench.median(times["compiled"]) * 1e3,
        "relative_step_time": bench.ratio(times["compiled"], times["eager"]),
        "loadavg_per_round": loads,
    }


def exp_prealloc(args, dataset, log) -> dict:
    fresh, _ = bench.build_runner(_spec(args.hidden), 128, dataset)
    pre, _ = bench.build_runner(_spec(args.hidden), 128, dataset)
    store = dataset.store
    bx, bt = torch.empty(128, *dataset.image_shape), torch.empty(128, *dataset.image_shape)
    batcher = pre.batcher

    def draw(step, rng):
        active = batcher.schedule(step, rng)
        pairs = batcher.partitions.samplers[active].sample(128, rng)
        x = store.gather(pairs.input, out=bx)
        target = store.gather(pairs.target, out=bt)
        return x, target, None, batcher.masks[active], None, active

    pre.draw = draw
    a = fresh.batcher.draw(0, np.random.default_rng(0), False)
    b = draw(0, np.random.default_rng(0))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    times, loads = bench.interleaved({"fresh": fresh, "preallocated": pre}, args.seconds, args.rounds, warmup=2)
    return {
        "hidden": args.hidden,
        "fresh_ms": bench.median(times["fresh"]) * 1e3,
        "preallocated_ms": bench.median(times["preallocated"]) * 1e3,
        "relative_step_time": bench.ratio(times["preallocated"], times["fresh"]),
        "loadavg_per_round": loads,
    }


class _ColumnMajorFirstLayer(torch.nn.Linear):
    """The sparse first layer as it was before ``weight_t``: the ``(out, in)`` parameter itself
    stored column-major (``W^T`` contiguous underneath), the same sparse forward."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__(n_in, n_out)
        self.weight = torch.nn.Parameter(self.weight.detach().t().contiguous().t())  # (out, in), column-major
        self.sparse_binary = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wt = self.weight.t()  # (in, out), contiguous
        if not x.requires_grad and x.dim() == 2 and int(torch.count_nonzero(x)) <= 0.25 * x.numel():
            nz = x.nonzero()  # (nnz, 2), rows sorted
            if bool(x[nz[:, 0], nz[:, 1]].eq(1).all()):
                starts = torch.searchsorted(nz[:, 0].contiguous(), torch.arange(x.shape[0]))  # (B,)
                return torch.nn.functional.embedding_bag(nz[:, 1], wt, starts, mode="sum") + self.bias
        return torch.addmm(self.bias, x, wt)


def exp_layout(args, dataset, log) -> dict:
    from gatedvae.train import make_optimizers

    ours, _ = bench.build_runner(_spec(args.hidden), 128, dataset)
    before, _ = bench.build_runner(_spec(args.hidden), 128, dataset)
    block = before.model.encoder.trunk.layers[0]
    old = _ColumnMajorFirstLayer(block[0].in_features, block[0].out_features)
    old.load_state_dict(block[0].state_dict())
    block[0] = old
    before.optimizers = make_optimizers(before.model, before.config.train.lr, torch.device("cpu"))
    assert not old.weight.is_contiguous() and ours.first_layer().weight_t.is_contiguous()
    times, loads = bench.interleaved({"weight_t": ours, "column-major": before}, args.seconds, args.rounds, warmup=3)
    return {
        "hidden": args.hidden,
        "weight_t_ms": bench.median(times["weight_t"]) * 1e3,
        "column_major_ms": bench.median(times["column-major"]) * 1e3,
        "relative_step_time": bench.ratio(times["weight_t"], times["column-major"]),
        "loadavg_per_round": loads,
    }


_CHILD = """
import sys, time, json, torch
from gatedvae import bench
from gatedvae.config import DataConfig
from gatedvae.data import build_dataset
ds = build_dataset(DataConfig(name="dsprites"))
r, _ = bench.build_runner(bench.Spec("mlp", "beta_vae", "mlp", int(sys.argv[1]), True), 128, ds)
for _ in range(5): r()
t0 = time.perf_counter(); n = 0
while time.perf_counter() - t0 < float(sys.argv[2]): r(); n += 1
print(json.dumps({"ms": (time.perf_counter() - t0) / n * 1e3}))
"""


def exp_pinning(args, dataset, log) -> dict:
    envs = {
        "default": {},
        "pinned (OMP_PROC_BIND=close, OMP_PLACES=cores)": {"OMP_PROC_BIND": "close", "OMP_PLACES": "cores"},
    }
    ms: dict[str, list[float]] = {k: [] for k in envs}
    for r in range(args.rounds):
        for name, extra in envs.items():
            env = {**os.environ, **extra}
            out = subprocess.run(
                [sys.executable, "-c", _CHILD, str(args.hidden), str(args.seconds)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            ms[name].append(json.loads(out.stdout.strip().splitlines()[-1])["ms"])
        log(f"pinning: round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} ms" for k, v in ms.items()))
    names = list(envs)
    return {"hidden": args.hidden, "ms": ms, "relative_step_time": bench.ratio(ms[names[1]], ms[names[0]])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--only", default="compile,prealloc,pinning")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--json", default="experiments.json")
    args = ap.parse_args(argv)

    def log(s: str) -> None:
        print(s, file=sys.stderr, flush=True)

    dataset = build_dataset(DataConfig(name="dsprites"))
    doc = {"machine": bench.machine_info(), "loadavg_start": list(os.getloadavg())}
    for name in [s.strip() for s in args.only.split(",") if s.strip()]:
        doc[name] = {"compile": exp_compile, "prealloc": exp_prealloc, "pinning": exp_pinning, "layout": exp_layout}[
            name
        ](args, dataset, log)
        log(f"{name}: {json.dumps({k: v for k, v in doc[name].items() if k != 'loadavg_per_round'}, default=float)}")
    doc["loadavg_end"] = list(os.getloadavg())
    with open(args.json, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2, default=float)
    print(json.dumps(doc, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
