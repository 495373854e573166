"""The ``ensemble`` section: K runs of one network shape trained as one ensemble step, against one
run, and against the roofline of K runs.

Rows, per hidden width (the small preset, and the paper's with the Table I protocol's arms):

* ``one run``: the trainer's step of one run (the gated beta-VAE of dSprites, batch ``o.batch``),
  the same step a solo run takes (the loop strategy of an ensemble of one);
* ``loop K``: K members, each its own step in turn;
* ``stacked K``: K members, networks stacked and evaluated in one vmapped call per network, one
  vectorised Adam (:mod:`gatedvae.train.stacked_step`).

Each member draws its own batches from its own generators (seed k); the hidden-1200 row alternates
gated and un-gated members (the Table I beta-VAE row: 5 seeds x 2 arms at K = 10). The
**roofline** of an ensemble is K times the single run's list of matrix products, the same shapes
back to back, so batching cannot lower its own bar: ``of roof`` = that time / the ensemble step's.
``vs one run`` is images/s of the row over images/s of one run, in the same rounds. The projected
wall time is the step time times the paper's 288,000 steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from ..config import Config, GatingConfig
from ..run import prepare
from ..train.batch import Batcher
from ..train.ensemble import make_stepper, stacked_refusal
from ..train.step import Precision, RunningSums, TrainingDiverged, make_generators, make_optimizers
from .flops import matmul_step, network_gemms, step_flops
from .options import BenchOptions
from .runner import Spec, _FiniteOrRaise, make_config
from .timing import device_sync, interleaved, median

__all__ = ["measure_ensemble", "PAPER_STEPS"]

#: The Gated-VAE paper's Table I budget: 50 epochs of dSprites at batch 128.
PAPER_STEPS = 288_000


@dataclass
class _Checks:
    guard: _FiniteOrRaise


@dataclass
class _BenchMember:
    """What an ensemble's step strategy reads of a member, without a run directory."""

    prep: Any
    optimizers: Any
    gen: torch.Generator
    rng: np.random.Generator
    precision: Precision
    ckpt: _Checks
    batcher: Batcher
    sums: RunningSums


def _members(config: Config, k: int, dataset, arms: bool) -> list[_BenchMember]:
    """K members of ``config`` with seeds 0..K-1 (``arms``: every other one un-gated)."""
    out = []
    for i in range(k):
        cfg = replace(config, train=replace(config.train, seed=i))
        if arms and i % 2:
            cfg = replace(cfg, gating=GatingConfig(enabled=False, partitions=()))
        prep = prepare(cfg, device=dataset.store.device, dataset=dataset)
        rng, gen = make_generators(i, prep.device)
        every = prep.device.type != "cuda"
        out.append(
            _BenchMember(
                prep,
                make_optimizers(prep.model, cfg.train.lr, prep.device),
                gen,
                rng,
                Precision(cfg.train.precision, prep.device),
                _Checks(_FiniteOrRaise(cfg.model.name, every_step=every)),
                Batcher(prep),
                RunningSums(),
            )
        )
    for m in out:
        m.prep.model.train()
    return out


class EnsembleRunner:
    """One ensemble step per call: every member's batch, the strategy's step, the loop's sums."""

    def __init__(self, members: list[_BenchMember], strategy: str) -> None:
        self.members = members
        self.stepper = make_stepper(strategy, members, solo=len(members) == 1 and strategy == "loop")
        self.step_no = 0

    def __call__(self) -> None:
        step = self.step_no
        batches = self.stepper.draw(self.members, step, False)
        results = self.stepper.step(self.members, batches, step, False)
        for m, terms in zip(self.members, results, strict=True):
            if isinstance(terms, TrainingDiverged):
                raise RuntimeError(f"ensemble bench: a member's loss is not finite at step {step}")
            m.sums.add(terms)
            if (step + 1) % 100 == 0:
                m.sums.reset()
        self.step_no += 1

    def verify(self) -> None:
        for m in self.members:
            m.ckpt.guard.verify()


def _sizes(o: BenchOptions, device: torch.device) -> list[tuple[int, int, bool]]:
    """``(hidden, K, arms)`` of the rows: the small preset at K = 8 (32 on a GPU) and the paper's
    width at K = 10 with gated and un-gated arms (the quick mode: tiny widths, K = 2)."""
    if o.quick:
        return [(o.hidden_small, 2, False), (o.hidden_paper, 2, True)]
    small_k = 32 if device.type == "cuda" else 8
    return [(o.hidden_small, small_k, False), (o.hidden_paper, 10, True)]


def measure_ensemble(o: BenchOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Images/s and step time of one run, the loop ensemble and the stacked ensemble, with each
    ensemble against the roofline of its K runs (see the module)."""
    from ..data import build_dataset

    device = torch.device(o.device)
    precision = o.precisions[0]
    log(f"ensemble: building dSprites on {device} ...")
    dataset = build_dataset(o.data_config()).to(device)
    sync = device_sync(device)
    rows, errors = [], {}
    for hidden, k, arms in _sizes(o, device):
        spec = Spec(f"mlp-{hidden}", hidden=hidden, gated=True, precision=precision)
        config = make_config(spec, o.batch, data=o.data_config(), device=str(device))
        gemms = network_gemms(config, dataset.image_shape)
        items: dict[str, Callable[[], None]] = {
            "one run": EnsembleRunner(_members(config, 1, dataset, False), "loop"),
            "matmuls": matmul_step(gemms, o.seed, device=device),
        }
        strategies = ["loop"]
        why = stacked_refusal([config])
        if why is None:
            strategies.append("stacked")
        else:
            errors[f"mlp-{hidden} stacked"] = why
        for strategy in strategies:
            items[f"{strategy} {k}"] = EnsembleRunner(_members(config, k, dataset, arms), strategy)
        log(f"ensemble: mlp-{hidden}, K = {k} ({', '.join(items)}) ...")
        times, loads = interleaved(items, o.seconds * len(items), o.rounds, o.warmup, sync=sync)
        for fn in items.values():
            if isinstance(fn, EnsembleRunner):
                fn.verify()
        one = median(times["one run"])
        roof_one = median(times["matmuls"])
        rows.append(
            _row(f"mlp-{hidden}", "one run", 1, one, one, roof_one, o.batch, arms=False, flops=step_flops(gemms))
        )
        for strategy in strategies:
            t = median(times[f"{strategy} {k}"])
            rows.append(_row(f"mlp-{hidden}", strategy, k, t, one, roof_one, o.batch, arms, step_flops(gemms)))
        rows[-1]["loadavg"] = loads
    return {"device": str(device), "precision": precision, "batch": o.batch, "rows": rows, "errors": errors,
            "paper_steps": PAPER_STEPS}  # fmt: skip


def _row(
    label: str, strategy: str, k: int, t: float, one: float, roof_one: float, batch: int, arms: bool, flops: int
) -> dict[str, Any]:
    return {
        "net": label,
        "strategy": strategy,
        "members": k,
        "arms": arms,
        "step_ms": t * 1e3,
        "images_per_s": k * batch / t,
        "vs_one_run": (k * batch / t) / (batch / one),
        "roofline_ms": k * roof_one * 1e3,
        "fraction_of_roofline": k * roof_one / t,
        "gflops": k * flops / t / 1e9,
        "projected_hours": t * PAPER_STEPS / 3600,
    }


def format_ensemble(en: dict[str, Any]) -> list[str]:
    """The section as text lines."""
    heap = "; malloc from the heap (train.device.cpu_heap)" if en.get("cpu_heap") else ""
    out = [
        f"\nensembles on {en['device']} ({en['precision']}, batch {en['batch']} per member; roofline = K x one run's "
        f"products back to back{heap}):",
        f"  {'net':<10}{'strategy':<10}{'K':>4}{'ms/step':>10}{'images/s':>11}{'vs one run':>12}{'of roof':>9}"
        f"{'288k steps':>12}",
    ]
    for r in en["rows"]:
        out.append(
            f"  {r['net']:<10}{r['strategy']:<10}{r['members']:>4}{r['step_ms']:>10.2f}{r['images_per_s']:>11,.0f}"
            f"{r['vs_one_run']:>11.2f}x{r['fraction_of_roofline']:>9.0%}{r['projected_hours']:>10.1f} h"
        )
    for key, why in en["errors"].items():
        out.append(f"  not measured: {key}: {why}")
    return out


def format_ensemble_markdown(en: dict[str, Any]) -> list[str]:
    heap = "; malloc from the heap (train.device.cpu_heap)" if en.get("cpu_heap") else ""
    out = [
        "",
        f"Ensembles on {en['device']} ({en['precision']}, batch {en['batch']} per member; roofline = K x one run's "
        f"products back to back; 288k steps = the paper's budget at this step time{heap}):",
        "",
        "| net | strategy | K | ms/step | images/s | vs one run | of roofline | 288k steps |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in en["rows"]:
        out.append(
            f"| {r['net']} | {r['strategy']} | {r['members']} | {r['step_ms']:.2f} | {r['images_per_s']:,.0f} | "
            f"{r['vs_one_run']:.2f}x | {r['fraction_of_roofline']:.0%} | {r['projected_hours']:.1f} h |"
        )
    return out
