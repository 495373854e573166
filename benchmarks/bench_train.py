"""Training images/s next to the machine's matrix-multiply roofline, measured in one run.

Run: .venv/bin/python benchmarks/bench_train.py [--json out.json] [--seconds 3] [--models beta_vae|all|a,b] [--quick]

What it measures (the models issue's acceptance item):

* **Roofline.** fp32 GFLOP/s of ``torch.mm`` for a large square product (``2048^3``, the
  machine's peak) and for exactly the products one training step of each network performs:
  per layer the forward ``X @ W^T``, the input gradient ``G @ W`` (skipped for the first
  layer: images need no gradient) and the weight gradient ``G^T @ X``, with the layouts
  autograd uses for ``nn.Linear``. Convolutions enter as their im2col GEMM (rows = batch x
  output positions, inner = C_in k k, cols = C_out; a transposed convolution as the GEMM
  before its col2im). Running that list of products back to back is the network's "matmul-only
  step": its rate is the shape roofline a perfect step could reach on this machine.
* **FLOPs per step**, counted analytically (:func:`mlp_gemms`, :func:`conv64_gemms`):
  ``Linear 2 B in out``, ``Conv2d 2 B C_out H_out W_out C_in k k``, ``ConvTranspose2d
  2 B C_in H_in W_in C_out k k``; a training step = forward + weight gradients + input
  gradients (all layers but the first), i.e. a little under 3x the forward FLOPs. Included:
  every Linear / Conv / ConvTranspose of the encoder, the posterior head and the decoder.
  Not included (memory-bound, O(parameters) or O(activations)): biases, batch norm, ReLU,
  reparameterisation, the loss, Adam, and any extra network an objective brings (FactorVAE's
  discriminator; those show up in ``flops_counted``, the count of
  ``torch.utils.flop_counter`` over one real step, which equals the analytic count for the
  plain VAE objectives).
* **Training throughput on the real step**: procedural dSprites (all 737,280 images), the
  trainer's ``_Batcher`` (pair sampling + gather of input and target images), ``model.loss``,
  the finiteness check, ``zero_grad`` / ``backward`` / Adam ``step`` and the auxiliary step,
  built with ``train.loop.prepare`` from a :class:`~gatedvae.config.Config`; gated = the
  paper's 4 dSprites partitions (latent_dim 8), un-gated = x = x'. Networks: ``mlp`` hidden
  1200 (the paper preset), ``mlp`` hidden 256 and ``conv64`` (hidden 256), batch 128.
* **Where the time goes** in the mlp-1200 gated step: pair sampling, image gather, forward,
  backward and optimiser, timed per call (median over calls), plus the top operators from
  ``torch.profiler``; the trainer's fused Adam against the for-loop and ``foreach=True`` kernels;
  and the same step with one thread.

Other jobs may share the machine, so absolute numbers move; every measurement is taken in
rounds that alternate all items (roofline and model timings side by side), each ratio is
computed within a round and the median over rounds is reported, with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from gatedvae.config import Config, DataConfig, GatingConfig, ModelConfig, TrainConfig
from gatedvae.data import FactorDataset, build_dataset
from gatedvae.models import MODELS
from gatedvae.quickstart import DSPRITES_PARTITIONS
from gatedvae.train.loop import Prepared, _Batcher, _optimizers, condition_vectors, prepare

__all__ = [
    "Gemm",
    "mlp_gemms",
    "conv64_gemms",
    "network_gemms",
    "step_flops",
    "Spec",
    "StepRunner",
    "draw_timed",
    "counted_flops",
    "run",
    "main",
]

LATENT_DIM = 8
#: Phases of the split profile: pair sampling (+ condition labels), image gather (input and
#: target), ``model.loss`` + finiteness check, ``zero_grad`` + ``backward``, Adam step +
#: auxiliary step + the loop's running sums of the logged terms.
PHASES = ("sample", "gather", "forward", "backward", "optimizer")


# --------------------------------------------------------------------------- FLOP counting


@dataclass(frozen=True)
class Gemm:
    """One layer as a matrix product ``(rows, inner) @ (inner, cols)``.

    ``input_grad``: whether backward computes the gradient w.r.t. the layer's input (False
    for a network's first layer, whose input, the images, needs no gradient).
    """

    layer: str
    rows: int
    inner: int
    cols: int
    input_grad: bool = True

    @property
    def flops(self) -> int:
        """Forward FLOPs: one multiply and one add per term."""
        return 2 * self.rows * self.inner * self.cols


def mlp_gemms(batch: int, n_pixels: int, hidden: int, latent_dim: int, head_out: int, enc_cond: int = 0, dec_cond: int = 0) -> list[Gemm]:
    """The paper's MLP (``nets/mlp.py``): every Linear is ``2 B in out`` forward FLOPs."""
    B = batch
    return [
        Gemm("enc.fc1", B, n_pixels + enc_cond, hidden, input_grad=False),
        Gemm("enc.fc2", B, hidden, hidden),
        Gemm("enc.head", B, hidden, head_out),
        Gemm("dec.fc1", B, latent_dim + dec_cond, hidden),
        Gemm("dec.fc2", B, hidden, hidden),
        Gemm("dec.out", B, hidden, n_pixels),
    ]


def conv64_gemms(batch: int, channels: int, hidden: int, latent_dim: int, head_out: int, enc_cond: int = 0, dec_cond: int = 0) -> list[Gemm]:
    """The 64x64 conv net (``nets/conv64.py``), 4x4 kernels, stride 2, padding 1.

    Conv2d ``C_in -> C_out``, ``H_out x W_out``: ``2 B C_out H_out W_out C_in k k`` FLOPs =
    a GEMM of ``B H_out W_out`` rows, inner ``C_in k k``, ``C_out`` columns.
    ConvTranspose2d from ``H_in x W_in``: ``2 B C_in H_in W_in C_out k k`` = a GEMM of
    ``B H_in W_in`` rows, inner ``C_in``, ``C_out k k`` columns (then col2im).
    """
    B, kk = batch, 16
    conv = [(channels, 32, 32), (32, 32, 16), (32, 64, 8), (64, 64, 4)]  # (C_in, C_out, H_out)
    deconv = [(64, 64, 4), (64, 32, 8), (32, 32, 16), (32, channels, 32)]  # (C_in, C_out, H_in)
    out = [Gemm(f"enc.conv{i + 1}", B * h * h, cin * kk, cout, input_grad=i > 0) for i, (cin, cout, h) in enumerate(conv)]
    out += [
        Gemm("enc.fc", B, 64 * 4 * 4 + enc_cond, hidden),
        Gemm("enc.head", B, hidden, head_out),
        Gemm("dec.fc1", B, latent_dim + dec_cond, hidden),
        Gemm("dec.fc2", B, hidden, 64 * 4 * 4),
    ]
    out += [Gemm(f"dec.deconv{i + 1}", B * h * h, cin, cout * kk) for i, (cin, cout, h) in enumerate(deconv)]
    return out


def network_gemms(config: Config, image_shape: tuple[int, int, int], cond_dim: int = 0) -> list[Gemm]:
    """The GEMM list of a config's encoder, head and decoder."""
    m = config.model
    head_out = 2 * m.latent_dim if MODELS[m.name].cls.covariance == "diagonal" else m.latent_dim + m.latent_dim * (m.latent_dim + 1) // 2
    enc_cond = cond_dim if m.condition_encoder else 0
    c, h, w = image_shape
    if m.net == "mlp":
        return mlp_gemms(config.train.batch_size, c * h * w, m.hidden, m.latent_dim, head_out, enc_cond, cond_dim)
    return conv64_gemms(config.train.batch_size, c, m.hidden, m.latent_dim, head_out, enc_cond, cond_dim)


def step_flops(gemms: list[Gemm]) -> int:
    """FLOPs of one training step: forward + weight gradients + input gradients."""
    return sum(g.flops * (3 if g.input_grad else 2) for g in gemms)


def gemm_products(gemms: list[Gemm]) -> list[tuple[str, int, int, int, str]]:
    """The products of one training step as ``(name, m, k, n, layout)``; see :class:`_Operands`."""
    out = []
    for g in gemms:
        out.append((f"{g.layer} fwd", g.rows, g.inner, g.cols, "fwd"))  # X (rows, K) @ W^T (K, N)
        if g.input_grad:
            out.append((f"{g.layer} dX", g.rows, g.cols, g.inner, "dx"))  # G (rows, N) @ W (N, K)
        out.append((f"{g.layer} dW", g.cols, g.rows, g.inner, "dw"))  # G^T (N, rows) @ X (rows, K)
    return out


class _Operands:
    """Random operands of one product with autograd's layouts for ``nn.Linear``.

    ``fwd``: ``X @ W.t()``; ``dx``: ``G @ W``; ``dw``: ``G.t() @ X`` (transposed views, as
    autograd passes them, so BLAS sees the same transpose flags).
    """

    def __init__(self, m: int, k: int, n: int, layout: str, gen: torch.Generator) -> None:
        if layout == "fwd":  # (m, k) @ (n, k)^T
            self.a, self.b = torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen).t()
        elif layout == "dx":  # (m, k) @ (k, n): G (rows, N) @ W (N, K)
            self.a, self.b = torch.randn(m, k, generator=gen), torch.randn(k, n, generator=gen)
        else:  # (m, k) @ (k, n) with a = G^T: G (rows=k, N=m)^T @ X (rows=k, K=n)
            self.a, self.b = torch.randn(k, m, generator=gen).t(), torch.randn(k, n, generator=gen)
        self.out = torch.empty(m, n)

    def __call__(self) -> None:
        torch.mm(self.a, self.b, out=self.out)


def matmul_step(gemms: list[Gemm], seed: int = 0) -> Callable[[], None]:
    """A callable running every product of one training step of ``gemms`` once."""
    gen = torch.Generator().manual_seed(seed)
    ops = [_Operands(m, k, n, layout, gen) for _, m, k, n, layout in gemm_products(gemms)]

    def run_all() -> None:
        for op in ops:
            op()

    return run_all


# --------------------------------------------------------------------------- the real step


@dataclass(frozen=True)
class Spec:
    """One measured training configuration."""

    label: str
    model: str = "beta_vae"
    net: str = "mlp"
    hidden: int = 1200
    gated: bool = False
    adam: tuple[tuple[str, Any], ...] = ()  # extra Adam keyword arguments
    threads: int = 0  # 0 = the process's setting

    @property
    def key(self) -> str:
        extra = "".join(f" {k}={v}" for k, v in self.adam) + (f" threads={self.threads}" if self.threads else "")
        return f"{self.label} {self.model} {'gated' if self.gated else 'ungated'}{extra}"


def make_config(spec: Spec, batch: int) -> Config:
    """The run config of a spec: dSprites, latent 8, Adam lr 1e-4, CPU."""
    cond = ("shape",) if getattr(MODELS[spec.model].cls, "conditional", False) else ()
    return Config(
        data=DataConfig(name="dsprites"),
        model=ModelConfig(name=spec.model, net=spec.net, hidden=spec.hidden, latent_dim=LATENT_DIM, condition=cond),  # type: ignore[arg-type]
        gating=GatingConfig(enabled=spec.gated, partitions=DSPRITES_PARTITIONS if spec.gated else ()),
        train=TrainConfig(batch_size=batch, device="cpu", seed=0),
    )


def make_optimizers(model, lr: float, adam: dict[str, Any]) -> dict[str, torch.optim.Optimizer]:
    """The trainer's optimisers (``train.loop._optimizers``), with extra Adam arguments if any."""
    if not adam:
        return _optimizers(model, lr, next(model.parameters()).device)
    opts: dict[str, torch.optim.Optimizer] = {"main": torch.optim.Adam(model.main_parameters(), lr=lr, **adam)}
    settings = model.auxiliary_optimizer_settings()
    for name, module in model.auxiliary_modules().items():
        opts[name] = torch.optim.Adam(module.parameters(), **{**settings.get(name, {"lr": lr}), **adam})
    return opts


def draw_timed(batcher: _Batcher, step: int, rng: np.random.Generator, times: dict[str, float]):
    """``_Batcher.draw`` (gate mode, training phase) with the sampling and the gather timed.

    Calls the same functions in the same order, so it returns what ``draw`` would for the same
    generator state (tested); adds seconds to ``times["sample"]`` and ``times["gather"]``.
    """
    prep = batcher.prep
    ds, cfg = prep.dataset, prep.config
    if cfg.gating.enabled and cfg.gating.mode != "gate":
        raise ValueError("draw_timed reproduces the gate mode only")
    t0 = time.perf_counter()
    gate_mask = None
    active = -1
    if batcher.partitions is None:
        pairs = batcher.identity.sample(batcher.batch_size, rng)
    else:
        active = batcher.schedule(step, rng)
        pairs = batcher.partitions.samplers[active].sample(batcher.batch_size, rng)
        gate_mask = batcher.masks[active]
    t1 = time.perf_counter()
    x = ds.images(pairs.input)  # (B, C, H, W)
    target = x if np.array_equal(pairs.input, pairs.target) else ds.images(pairs.target)  # (B, C, H, W)
    t2 = time.perf_counter()
    cond = condition_vectors(ds, cfg.model.condition, pairs.target, prep.device)  # (B, c) or None
    t3 = time.perf_counter()
    times["sample"] += (t1 - t0) + (t3 - t2)
    times["gather"] += t2 - t1
    return x, target, cond, gate_mask, None, active


class StepRunner:
    """The trainer's step (``train.loop.train``, main phase) on its own model copy.

    Per step: ``_Batcher.draw`` -> ``model.loss`` -> finiteness check -> ``zero_grad`` ->
    ``backward`` -> Adam ``step`` -> ``auxiliary_step`` -> the loop's running sums of the terms.
    With ``split=True`` the draw is :func:`draw_timed` and each phase is timed per call
    (``self.records``: one dict of seconds per phase per call).
    """

    def __init__(self, prep: Prepared, adam: dict[str, Any] | None = None, threads: int = 0, split: bool = False) -> None:
        self.prep = prep
        self.model = prep.model
        self.config = prep.config
        self.batcher = _Batcher(prep)
        self.optimizers = make_optimizers(self.model, self.config.train.lr, adam or {})
        self.rng = np.random.default_rng([self.config.train.seed, 2])
        self.gen = torch.Generator(device=prep.device).manual_seed(self.config.train.seed)
        self.threads = threads
        self.split = split
        self.records: list[dict[str, float]] = []
        self.step_no = 0
        self.sums: dict[str, torch.Tensor] = {}
        self.model.train()

    def __call__(self) -> None:
        if self.threads:
            before = torch.get_num_threads()
            torch.set_num_threads(self.threads)
            try:
                self._step()
            finally:
                torch.set_num_threads(before)
        else:
            self._step()

    def _step(self) -> None:
        model, opt, gen, step = self.model, self.optimizers["main"], self.gen, self.step_no
        times = dict.fromkeys(PHASES, 0.0)
        if self.split:
            x, target, cond, gate_mask, clamp_mask, _ = draw_timed(self.batcher, step, self.rng, times)
        else:
            x, target, cond, gate_mask, clamp_mask, _ = self.batcher.draw(step, self.rng, False)
        t0 = time.perf_counter()
        out = model.loss(
            x, target, step, gen, cond=cond, gate_mask=gate_mask,
            gate_regulariser=self.config.gating.gate_kl, clamp_mask=clamp_mask,
        )
        if not bool(torch.isfinite(out.total)):  # the loop checks every step on CPU
            raise RuntimeError(f"{self.config.model.name}: loss is not finite at benchmark step {step}")
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        out.total.backward()
        t2 = time.perf_counter()
        opt.step()
        extra = model.auxiliary_step(out, self.optimizers, gen)
        for name, v in {**out.terms, "total": out.total, **extra}.items():  # the loop's logging sums
            v = v.detach()
            self.sums[name] = self.sums[name] + v if name in self.sums else v.clone()
        t3 = time.perf_counter()
        self.step_no += 1
        if self.step_no % 100 == 0:
            self.sums = {}
        if self.split:
            times.update(forward=t1 - t0, backward=t2 - t1, optimizer=t3 - t2)
            self.records.append(times)


def counted_flops(runner: StepRunner) -> int:
    """Matmul / conv FLOPs of one real step counted by ``torch.utils.flop_counter``."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        runner()
    return int(counter.get_total_flops())


# --------------------------------------------------------------------------- measurement


def interleaved(items: dict[str, Callable[[], None]], seconds: float, rounds: int, warmup: int = 1) -> tuple[dict[str, list[float]], list[float]]:
    """Seconds per call of each item, one value per round.

    Each round runs every item in turn for ``seconds / rounds`` (at least one call), so all
    items see the same machine load; ratios should be taken within a round. Also returns the
    1-minute load average after each round.
    """
    for fn in items.values():
        for _ in range(warmup):
            fn()
    per_round = seconds / rounds
    times: dict[str, list[float]] = {k: [] for k in items}
    loads = []
    for _ in range(rounds):
        for name, fn in items.items():
            n, t0 = 0, time.perf_counter()
            while True:
                fn()
                n += 1
                elapsed = time.perf_counter() - t0
                if elapsed >= per_round:
                    break
            times[name].append(elapsed / n)
        loads.append(os.getloadavg()[0])
    return times, loads


def _median(values) -> float:
    return float(statistics.median(values))


def _ratio(num: list[float], den: list[float]) -> float:
    """Median over rounds of ``num[r] / den[r]``."""
    return _median([a / b for a, b in zip(num, den)])


@dataclass
class Settings:
    seconds: float
    rounds: int
    batch: int
    square: int
    warmup: int
    profile_steps: int
    threads: int
    models: list[str] = field(default_factory=list)
    hidden_paper: int = 1200  # the mlp preset (beta-VAE's dSprites width)
    hidden_small: int = 256  # mlp-256 and conv64's fully connected width


def specs_for(settings: Settings) -> tuple[list[Spec], list[Spec], Spec]:
    """(throughput rows, variants of the paper-preset gated step, the split-profile spec)."""
    big, small = settings.hidden_paper, settings.hidden_small
    rows = []
    for label, net, hidden in ((f"mlp-{big}", "mlp", big), (f"mlp-{small}", "mlp", small), ("conv64", "conv64", small)):
        for gated in (False, True):
            rows.append(Spec(label, "beta_vae", net, hidden, gated))
    for name in settings.models:
        if name == "beta_vae":
            continue
        for gated in (False, True):
            rows.append(Spec(f"mlp-{small}", name, "mlp", small, gated))
    base = Spec(f"mlp-{big}", "beta_vae", "mlp", big, True)
    variants = [
        Spec(base.label, base.model, base.net, base.hidden, True, adam=(("fused", False), ("foreach", False))),
        Spec(base.label, base.model, base.net, base.hidden, True, adam=(("fused", False), ("foreach", True))),
    ]
    if torch.get_num_threads() > 1:
        variants.append(Spec(base.label, base.model, base.net, base.hidden, True, threads=1))
    return rows, variants, base


def build_runner(spec: Spec, batch: int, dataset: FactorDataset, split: bool = False) -> tuple[StepRunner, list[Gemm]]:
    config = make_config(spec, batch)
    prep = prepare(config, device=torch.device("cpu"), dataset=dataset)
    gemms = network_gemms(config, dataset.image_shape, prep.cond_dim)
    return StepRunner(prep, dict(spec.adam), spec.threads, split), gemms


def top_ops(runner: StepRunner, steps: int, limit: int = 12) -> dict[str, Any]:
    """The operators with the most self CPU time over ``steps`` steps (``torch.profiler``).

    Self CPU time sums over threads' wall time of each operator as seen by the calling
    thread; the profiled steps are not interleaved with anything, so compare ``share`` (and
    ``step_ms``, the profiled steps' wall time) rather than absolute milliseconds with the table.
    """
    from torch.profiler import ProfilerActivity, profile

    runner()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            runner()
    step_ms = (time.perf_counter() - t0) / steps * 1e3
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    ops = [
        {
            "op": e.key,
            "calls_per_step": e.count / steps,
            "self_ms_per_step": e.self_cpu_time_total / 1e3 / steps,
            "share": e.self_cpu_time_total / total,
        }
        for e in events[:limit]
    ]
    return {"steps": steps, "step_ms": step_ms, "loadavg": list(os.getloadavg()), "ops": ops}


def measure(settings: Settings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Build everything, run the interleaved rounds, and return the results as plain data."""
    load_start = os.getloadavg()
    t_build = time.perf_counter()
    dataset = build_dataset(DataConfig(name="dsprites"))
    build_seconds = time.perf_counter() - t_build
    log(f"dSprites: {len(dataset):,} images in {build_seconds:.1f} s; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs; load average {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}")

    rows, variants, base = specs_for(settings)
    runners: dict[str, StepRunner] = {}
    gemm_lists: dict[str, list[Gemm]] = {}
    flops_counted: dict[str, int] = {}
    for spec in rows + variants:
        runners[spec.key], gemm_lists[spec.key] = build_runner(spec, settings.batch, dataset)
    split_runner, _ = build_runner(base, settings.batch, dataset, split=True)
    for spec in rows:
        flops_counted[spec.key] = counted_flops(runners[spec.key])

    # Matmul-only steps per network shape (shared by the gated / ungated / objective rows).
    shape_keys: dict[str, str] = {}
    matmul_items: dict[str, Callable[[], None]] = {}
    for spec in rows:
        gk = repr(gemm_lists[spec.key])
        name = f"roofline {spec.label}" + ("" if spec.model == "beta_vae" else f" {spec.model}")
        if gk not in shape_keys:
            shape_keys[gk] = name
            matmul_items[name] = matmul_step(gemm_lists[spec.key])
    # Each distinct product of the paper-preset step (layers under 1% of the FLOPs left out).
    gen = torch.Generator().manual_seed(1)
    mlp_gemm = gemm_lists[base.key]
    total_fwd = sum(g.flops for g in mlp_gemm)
    products: dict[str, tuple[int, int, int, str, list[str]]] = {}
    for g in mlp_gemm:
        if g.flops < 0.01 * total_fwd:
            continue
        for name, m, k, n, layout in gemm_products([g]):
            sig = f"{layout} {m}x{k} @ {k}x{n}"
            products.setdefault(sig, (m, k, n, layout, []))[4].append(name)
    shape_items = {f"shape {sig}": _Operands(m, k, n, layout, gen) for sig, (m, k, n, layout, _) in products.items()}
    sq = settings.square
    peak_op = _Operands(sq, sq, sq, "dx", gen)

    items: dict[str, Callable[[], None]] = {"peak": peak_op}
    for spec in rows:  # each network's roofline right before its own rows
        name = shape_keys[repr(gemm_lists[spec.key])]
        if name not in items:
            items[name] = matmul_items[name]
        items[spec.key] = runners[spec.key]
    for spec in variants:
        items[spec.key] = runners[spec.key]
    items["split " + base.key] = split_runner
    items.update(shape_items)

    log(f"measuring {len(items)} items x {settings.rounds} rounds x {settings.seconds / settings.rounds:.2f} s "
        f"(about {len(items) * settings.seconds:.0f} s) ...")
    t_run = time.perf_counter()
    times, loads = interleaved(items, settings.seconds, settings.rounds, settings.warmup)
    run_seconds = time.perf_counter() - t_run

    peak_flops = 2 * sq**3
    peak_rates = [peak_flops / t for t in times["peak"]]
    result_rows = []
    for spec in rows:
        gemms = gemm_lists[spec.key]
        flops = step_flops(gemms)
        roof = shape_keys[repr(gemms)]
        t = times[spec.key]
        result_rows.append({
            "key": spec.key,
            **{k: v for k, v in asdict(spec).items() if k not in ("adam", "threads")},
            "batch": settings.batch,
            "flops_per_step": flops,
            "flops_counted": flops_counted[spec.key],
            "steps_per_s": _median([1 / x for x in t]),
            "images_per_s": _median([settings.batch / x for x in t]),
            "gflops": _median([flops / x / 1e9 for x in t]),
            "roofline": roof,
            "roofline_gflops": _median([flops / x / 1e9 for x in times[roof]]),
            "fraction_of_shape_roofline": _ratio(times[roof], t),
            "fraction_of_peak": _median([(flops / a) / (peak_flops / b) for a, b in zip(t, times["peak"])]),
        })

    base_t = times[base.key]
    variant_rows = [{"variant": "adam as the trainer builds it (fused=True)", "key": base.key,
                     "steps_per_s": _median([1 / x for x in base_t]), "relative_step_time": 1.0}]
    for spec in variants:
        t = times[spec.key]
        what = ", ".join(f"adam {k}={v}" for k, v in spec.adam) or f"torch threads={spec.threads}"
        variant_rows.append({"variant": what, "key": spec.key, "steps_per_s": _median([1 / x for x in t]),
                             "relative_step_time": _ratio(t, base_t)})

    recs = split_runner.records[settings.warmup:] or split_runner.records
    phase = {p: _median([r[p] for r in recs]) for p in PHASES}
    phase_total = sum(phase.values())
    split = {
        "key": base.key,
        "calls": len(recs),
        "median_seconds": phase,
        "share": {p: v / phase_total for p, v in phase.items()},
        "median_step_seconds": _median([sum(r.values()) for r in recs]),
        "matmul_only_seconds": _median(times[shape_keys[repr(mlp_gemm)]]),
    }
    shapes = []
    for sig, (m, k, n, layout, layers) in products.items():
        t = times[f"shape {sig}"]
        shapes.append({"product": sig, "layers": layers, "gflops": _median([2 * m * k * n / x / 1e9 for x in t]),
                       "fraction_of_peak": _median([(2 * m * k * n / a) / (peak_flops / b) for a, b in zip(t, times["peak"])])})

    log("profiling operators ...")
    ops = top_ops(split_runner, settings.profile_steps)
    load_end = os.getloadavg()
    return {
        "machine": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
            "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "loadavg_start": list(load_start),
            "loadavg_end": list(load_end),
            "loadavg_1min_per_round": loads,
        },
        "settings": asdict(settings),
        "dataset": {"name": "dsprites", "images": len(dataset), "build_seconds": build_seconds},
        "measure_seconds": run_seconds,
        "peak": {"square": sq, "gflops": _median(peak_rates) / 1e9, "gflops_per_round": [r / 1e9 for r in peak_rates]},
        "shapes": shapes,
        "rows": result_rows,
        "variants": variant_rows,
        "split": split,
        "top_ops": ops,
        "raw_seconds_per_call": times,
    }


# --------------------------------------------------------------------------- report


def format_report(res: dict[str, Any]) -> str:
    m = res["machine"]
    out = []
    la, lb = m["loadavg_start"], m["loadavg_end"]
    out.append(f"machine: {m['cpu_count']} CPUs, torch {m['torch']} with {m['threads']} threads; load average "
               f"{la[0]:.2f}/{la[1]:.2f}/{la[2]:.2f} at start, {lb[0]:.2f}/{lb[1]:.2f}/{lb[2]:.2f} at end "
               f"(1-min per round: {', '.join(f'{x:.1f}' for x in m['loadavg_1min_per_round'])})")
    busy = max(m["loadavg_start"][0], m["loadavg_end"][0], *m["loadavg_1min_per_round"])
    if m["cpu_count"] and busy > 0.5 * m["cpu_count"]:
        why = (f"with {m['threads']} threads each parallel region can wait for a descheduled worker, which slows steps "
               "made of many small ops far more than the big matmuls, so fractions of the roofline are pessimistic; "
               "compare with --threads 1" if m["threads"] > 1 else "timings move with it, read the ratios")
        out.append(f"WARNING: 1-min load average reached {busy:.1f} on {m['cpu_count']} CPUs: other processes compete; {why}.")
    s = res["settings"]
    out.append(f"medians over {s['rounds']} interleaved rounds, {s['seconds']:.1f} s per item; batch {s['batch']}; "
               f"dSprites {res['dataset']['images']:,} images")
    out.append(f"\nroofline: fp32 matmul {s['square']}^3 peak {res['peak']['gflops']:.1f} GFLOP/s")
    out.append(f"  {'products of the ' + res['split']['key'].split()[0] + ' step':<36}{'GFLOP/s':>9}{'of peak':>9}   layers")
    for r in res["shapes"]:
        out.append(f"  {r['product']:<36}{r['gflops']:>9.1f}{r['fraction_of_peak']:>9.0%}   {', '.join(r['layers'])}")
    out.append("")
    hdr = (f"{'net':<9}{'model':<18}{'gated':<7}{'images/s':>9}{'steps/s':>9}{'GFLOP/step':>11}{'GFLOP/s':>9}"
           f"{'shape roof':>11}{'of roof':>8}{'of peak':>8}")
    out.append(hdr)
    out.append("-" * len(hdr))
    for r in res["rows"]:
        out.append(f"{r['label']:<9}{r['model']:<18}{'yes' if r['gated'] else 'no':<7}{r['images_per_s']:>9,.0f}{r['steps_per_s']:>9.2f}"
                   f"{r['flops_per_step'] / 1e9:>11.3f}{r['gflops']:>9.1f}{r['roofline_gflops']:>11.1f}"
                   f"{r['fraction_of_shape_roofline']:>8.0%}{r['fraction_of_peak']:>8.0%}")
    extra = [r for r in res["rows"] if abs(r["flops_counted"] - r["flops_per_step"]) > 0.01 * r["flops_per_step"]]
    out.append("GFLOP/step: analytic Linear/Conv FLOPs of encoder+head+decoder, forward + backward; 'shape roof' = the same"
               " products run alone; 'of peak' = vs the square matmul.")
    for r in extra:
        rate = r["gflops"] * r["flops_counted"] / r["flops_per_step"]
        out.append(f"  {r['key']}: torch.utils.flop_counter counts {r['flops_counted'] / 1e9:.3f} GFLOP/step with the objective's"
                   f" own matmuls, i.e. {rate:.1f} GFLOP/s")
    sp = res["split"]
    out.append(f"\nwhere the time goes ({sp['key']}, median of {sp['calls']} timed steps, "
               f"step {sp['median_step_seconds'] * 1e3:.1f} ms; its matmuls alone {sp['matmul_only_seconds'] * 1e3:.1f} ms):")
    for p in PHASES:
        out.append(f"  {p:<10}{sp['median_seconds'][p] * 1e3:>9.2f} ms {sp['share'][p]:>6.0%}")
    out.append(f"\nvariants of the {sp['key']} step (step time relative to the default Adam, same rounds):")
    for v in res["variants"]:
        out.append(f"  {v['variant']:<46}{v['steps_per_s']:>7.2f} steps/s {v['relative_step_time']:>7.2f}x time")
    top = res["top_ops"]
    out.append(f"\ntop operators by self CPU time ({sp['key']}, torch.profiler, {top['steps']} steps of "
               f"{top['step_ms']:.1f} ms wall each, load {top['loadavg'][0]:.2f}; not interleaved, read the shares):")
    for o in top["ops"]:
        out.append(f"  {o['op']:<40}{o['self_ms_per_step']:>9.2f} ms/step {o['share']:>6.0%} {o['calls_per_step']:>6.1f} calls/step")
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--seconds", type=float, default=3.0, help="time per measured item, split over the rounds (default 3)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--models", default="beta_vae",
                    help="objectives for extra mlp-256 rows: beta_vae (default: none extra), all, or a comma list")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = leave torch's default)")
    ap.add_argument("--quick", action="store_true", help="a tiny smoke run: batch 16, mlp widths 64 and 32, 0.1 s per item, 256^3 peak, 1 thread")
    return ap.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> Settings:
    if args.models == "all":
        models = sorted(MODELS)
    else:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = [m for m in models if m not in MODELS]
        if unknown:
            raise SystemExit(f"unknown model(s) {unknown}; registered: {', '.join(sorted(MODELS))}")
    if args.quick:
        # One thread unless asked: on a shared 2-core machine two threads can make tiny steps
        # 100x slower (each parallel region waits for a descheduled worker).
        return Settings(seconds=min(args.seconds, 0.1), rounds=2, batch=16, square=256, warmup=1, profile_steps=1,
                        threads=args.threads or 1, models=models, hidden_paper=64, hidden_small=32)
    return Settings(seconds=args.seconds, rounds=args.rounds, batch=128, square=2048, warmup=2, profile_steps=5,
                    threads=args.threads, models=models)


def run(argv: list[str] | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Parse ``argv``, measure, print the table, write the JSON; returns the results."""
    args = parse_args(argv)
    settings = settings_from_args(args)
    threads_before = torch.get_num_threads()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        res = measure(settings, log)
    finally:
        torch.set_num_threads(threads_before)
    log("")
    log(format_report(res))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=2)
            f.write("\n")
        log(f"\nwrote {args.json}")
    return res


def main() -> None:
    run()


if __name__ == "__main__":
    main()
