"""``gatedvae bench``: training speed against the machine's matrix-multiply roofline, input
pipelines, data, metrics and memory, all measured in one run so that ratios hold on a noisy
machine. The one implementation behind ``benchmarks/*.py`` and docs/performance.md.

Sections (``--only``, default all but ``quickstart``):

* ``train``: the fp32 matmul roofline (a large square product = the machine's peak, and
  exactly the products one training step of each network performs); training images/s and
  achieved GFLOP/s (FLOPs of the layers a real step calls, :func:`traced_gemms`) of ``mlp`` hidden 1200
  (the Gated-VAE paper's dSprites preset, ``000_fc03c6fb001bc541.txt`` IV-A2, with
  beta-VAE's width), ``mlp`` hidden 256 and ``conv64``, gated and un-gated, one row per model
  family; the same models fed by a conventional per-item ``torch.utils.data.DataLoader``
  (:class:`PerItemPairs`) as a baseline; variants of the step (Adam kernels, the dense
  first layer, one thread, channels-first); where the time of a step goes (phases, and
  operators by ``torch.profiler``).
* ``data``: procedural dSprites generation time, store size and resident memory (fresh
  subprocess).
* ``pairs``: pair-batch sampling and assembly rates per sampler.
* ``metrics``: seconds per metric of the ``default`` and ``fast`` presets on a trained model
  (:func:`gatedvae.metrics.adapter.evaluate_model`).
* ``memory``: peak resident memory of a full dSprites training run (the paper preset, with
  checkpoints, TensorBoard images and the end-of-run evaluation) in a subprocess.
* ``quickstart``: ``gatedvae quickstart`` end to end in a subprocess (minutes; opt-in).

Other jobs may share the machine: every timing of the ``train`` section is taken in rounds
that alternate all items, ratios are computed within a round and the median over rounds is
reported, with the load average. ``--markdown`` prints the tables as Markdown (for
docs/performance.md); ``--from bench.json`` re-renders a saved result without measuring.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import Config, DataConfig, GatingConfig, ModelConfig, TrainConfig
from .errors import ConfigError

__all__ = [
    "SECTIONS",
    "DEFAULT_SECTIONS",
    "Gemm",
    "mlp_gemms",
    "conv64_gemms",
    "network_gemms",
    "step_flops",
    "traced_gemms",
    "gemm_products",
    "matmul_step",
    "Spec",
    "StepRunner",
    "PerItemPairs",
    "counted_flops",
    "interleaved",
    "BenchOptions",
    "run_bench",
    "targets",
    "format_report",
    "format_markdown",
    "peak_rss_mb",
]

SECTIONS = ("train", "data", "pairs", "metrics", "memory", "quickstart")
DEFAULT_SECTIONS = ("train", "data", "pairs", "metrics", "memory")
LATENT_DIM = 8
#: Phases of a timed step: ``_Batcher.draw`` (pair sampling, image gather of input and target),
#: ``model.loss`` + finiteness check, ``zero_grad`` + ``backward``, Adam step + auxiliary step +
#: the loop's running sums of the logged terms.
PHASES = ("batch", "forward", "backward", "optimizer")
#: Operator name fragments counted as matrix multiplication in the profile.
MATMUL_OPS = ("mm", "matmul", "linear", "embedding_bag", "conv", "mkldnn")
OPTIMIZER_OPS = ("adam", "foreach", "optimizer")


def peak_rss_mb() -> float:
    """The process's peak resident set size in MB.

    Linux: ``VmHWM`` of ``/proc/self/status``, the high-water mark of this process's own
    memory. (``ru_maxrss`` survives ``exec``: a child started from a big parent would report
    the parent's size.) Elsewhere ``ru_maxrss`` (bytes on macOS, KiB otherwise).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10
    except (OSError, ValueError):
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def _median(values) -> float:
    values = list(values)
    return float(statistics.median(values)) if values else float("nan")


def _ratio(num: Sequence[float], den: Sequence[float]) -> float:
    """Median over rounds of ``num[r] / den[r]``."""
    return _median(a / b for a, b in zip(num, den))


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --------------------------------------------------------------------------- FLOP counting


@dataclass(frozen=True)
class Gemm:
    """One layer as a matrix product ``(rows, inner) @ (inner, cols)``.

    ``input_grad``: whether backward computes the gradient w.r.t. the layer's input (False
    for a network's first layer, whose input, the images, needs no gradient). ``weight_grad``:
    whether it computes the weight gradient (False for a network used frozen, as FactorVAE's
    discriminator inside the VAE loss, or under ``no_grad``).
    """

    layer: str
    rows: int
    inner: int
    cols: int
    input_grad: bool = True
    weight_grad: bool = True

    @property
    def flops(self) -> int:
        """Forward FLOPs: one multiply and one add per term."""
        return 2 * self.rows * self.inner * self.cols


def mlp_gemms(
    batch: int, n_pixels: int, hidden: int, latent_dim: int, head_out: int, enc_cond: int = 0, dec_cond: int = 0
) -> list[Gemm]:
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


def conv64_gemms(
    batch: int, channels: int, hidden: int, latent_dim: int, head_out: int, enc_cond: int = 0, dec_cond: int = 0
) -> list[Gemm]:
    """The 64x64 conv net (``nets/conv64.py``), 4x4 kernels, stride 2, padding 1.

    Conv2d ``C_in -> C_out``, ``H_out x W_out``: ``2 B C_out H_out W_out C_in k k`` FLOPs =
    a GEMM of ``B H_out W_out`` rows, inner ``C_in k k``, ``C_out`` columns.
    ConvTranspose2d from ``H_in x W_in``: ``2 B C_in H_in W_in C_out k k`` = a GEMM of
    ``B H_in W_in`` rows, inner ``C_in``, ``C_out k k`` columns (then col2im).
    """
    B, kk = batch, 16
    conv = [(channels, 32, 32), (32, 32, 16), (32, 64, 8), (64, 64, 4)]  # (C_in, C_out, H_out)
    deconv = [(64, 64, 4), (64, 32, 8), (32, 32, 16), (32, channels, 32)]  # (C_in, C_out, H_in)
    out = [
        Gemm(f"enc.conv{i + 1}", B * h * h, cin * kk, cout, input_grad=i > 0) for i, (cin, cout, h) in enumerate(conv)
    ]
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
    from .models import MODELS

    m = config.model
    full = MODELS[m.name].cls.covariance != "diagonal"
    head_out = m.latent_dim + m.latent_dim * (m.latent_dim + 1) // 2 if full else 2 * m.latent_dim
    enc_cond = cond_dim if m.condition_encoder else 0
    c, h, w = image_shape
    if m.net == "mlp":
        return mlp_gemms(config.train.batch_size, c * h * w, m.hidden, m.latent_dim, head_out, enc_cond, cond_dim)
    return conv64_gemms(config.train.batch_size, c, m.hidden, m.latent_dim, head_out, enc_cond, cond_dim)


def step_flops(gemms: list[Gemm]) -> int:
    """FLOPs of one training step: forward + weight gradients + input gradients."""
    return sum(g.flops * (1 + g.input_grad + g.weight_grad) for g in gemms)


def traced_gemms(runner: StepRunner) -> list[Gemm]:
    """The products of one real step of ``runner``, read off the layers it calls.

    Every ``nn.Linear``, ``nn.Conv2d`` and ``nn.ConvTranspose2d`` of the model (auxiliary
    networks included: FactorVAE's discriminator, InfoGAN's generator and discriminator) is
    hooked for one step; each call is a :class:`Gemm` named after the module, with the input
    and weight gradients it will need (input or weight requiring grad, grad mode on). This
    counts what the analytic lists (:func:`mlp_gemms`, :func:`conv64_gemms`) count for the VAE
    networks, plus the auxiliary networks they leave out. Not counted: double backward (the
    gradient penalty of InfoWGAN-GP), small batched products (a full-covariance sample).
    The step is a real one: it advances the runner like any other call.
    """
    calls: list[Gemm] = []
    names = {m: n for n, m in runner.model.named_modules()}

    def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        x = args[0]
        grad = torch.is_grad_enabled()
        ig, wg = bool(grad and x.requires_grad), bool(grad and module.weight.requires_grad)
        name = names.get(module, type(module).__name__)
        if isinstance(module, torch.nn.Linear):
            calls.append(Gemm(name, x.numel() // x.shape[-1], module.in_features, module.out_features, ig, wg))
        elif isinstance(module, torch.nn.ConvTranspose2d):  # (B H_in W_in, C_in) @ (C_in, C_out k k), then col2im
            kk = module.kernel_size[0] * module.kernel_size[1]
            calls.append(
                Gemm(name, x.shape[0] * x.shape[2] * x.shape[3], module.in_channels, module.out_channels * kk, ig, wg)
            )
        else:  # Conv2d as its im2col GEMM: (B H_out W_out, C_in k k) @ (C_in k k, C_out)
            kk = module.kernel_size[0] * module.kernel_size[1]
            calls.append(
                Gemm(
                    name,
                    output.shape[0] * output.shape[2] * output.shape[3],
                    module.in_channels * kk,
                    module.out_channels,
                    ig,
                    wg,
                )
            )

    kinds = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d)
    handles = [m.register_forward_hook(hook) for m in runner.model.modules() if isinstance(m, kinds)]
    try:
        runner()
    finally:
        for h in handles:
            h.remove()
    return calls


def gemm_products(gemms: list[Gemm]) -> list[tuple[str, int, int, int, str]]:
    """The products of one training step as ``(name, m, k, n, layout)``; see :class:`_Operands`."""
    out = []
    for g in gemms:
        out.append((f"{g.layer} fwd", g.rows, g.inner, g.cols, "fwd"))  # X (rows, K) @ W^T (K, N)
        if g.input_grad:
            out.append((f"{g.layer} dX", g.rows, g.cols, g.inner, "dx"))  # G (rows, N) @ W (N, K)
        if g.weight_grad:
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


def matmul_step(gemms: list[Gemm], seed: int = 0, skip: Sequence[str] = ()) -> Callable[[], None]:
    """A callable running every product of one training step of ``gemms`` once (but the
    layers named in ``skip``)."""
    gen = torch.Generator().manual_seed(seed)
    ops = [
        _Operands(m, k, n, layout, gen)
        for _, m, k, n, layout in gemm_products([g for g in gemms if g.layer not in skip])
    ]

    def run_all() -> None:
        for op in ops:
            op()

    return run_all


class _SparseFirstLayer:
    """The sparse first layer of the MLP encoder alone (``nets.mlp.BinaryInputLinear``):
    forward and weight gradient on real batches, cycling through them."""

    def __init__(self, layer: torch.nn.Module, batches: list[torch.Tensor], gen: torch.Generator) -> None:
        self.layer = layer
        self.batches = [b.flatten(1) for b in batches]  # (B, C*H*W) each
        self.grad = torch.randn(self.batches[0].shape[0], layer.out_features, generator=gen)  # (B, hidden)
        self.i = 0

    def __call__(self) -> None:
        x = self.batches[self.i % len(self.batches)]
        self.i += 1
        self.layer.zero_grad(set_to_none=True)
        self.layer(x).backward(self.grad)


def linalg_step(
    gemms: list[Gemm],
    first: torch.nn.Module | None,
    batches: list[torch.Tensor],
    seed: int = 0,
    first_name: str | None = None,
) -> Callable[[], None]:
    """The linear algebra of one real step alone: the dense products, with the first layer's
    forward and weight gradient done the way the model does them (sparse for binary inputs).

    ``first_name``: the first layer's name in ``gemms`` (default: the first product's)."""
    first_name = first_name or gemms[0].layer
    if first is None or not getattr(first, "sparse_binary", False):
        return matmul_step(gemms, seed)
    calls = sum(1 for g in gemms if g.layer == first_name)
    dense = matmul_step(gemms, seed, skip=(first_name,))
    layer = type(first)(first.in_features, first.out_features)  # a private copy: the model's grads stay untouched
    layer.load_state_dict(first.state_dict())
    sparse = _SparseFirstLayer(layer, batches, torch.Generator().manual_seed(seed + 1))

    def run_all() -> None:
        for _ in range(calls):
            sparse()
        dense()

    return run_all


# --------------------------------------------------------------------------- the real step


@dataclass(frozen=True)
class Spec:
    """One measured training configuration.

    ``adam``: extra Adam keyword arguments (``(("fused", False), ("foreach", True))``);
    ``threads``: torch threads during the step (0 = the process's setting); ``dense_first``:
    turn the MLP's sparse first layer off; ``channels_first``: conv weights and inputs in
    NCHW (the trainer keeps them NHWC on the CPU); ``loader``: feed batches from a per-item
    DataLoader with this many workers (None = the trainer's batcher).
    """

    label: str
    model: str = "beta_vae"
    net: str = "mlp"
    hidden: int = 1200
    gated: bool = False
    adam: tuple[tuple[str, Any], ...] = ()
    threads: int = 0
    dense_first: bool = False
    channels_first: bool = False
    loader: int | None = None

    @property
    def variant(self) -> str:
        parts = [f"adam {k}={v}" for k, v in self.adam]
        if self.threads:
            parts.append(f"threads={self.threads}")
        if self.dense_first:
            parts.append("dense first layer")
        if self.channels_first:
            parts.append("channels-first (NCHW)")
        if self.loader is not None:
            parts.append(f"DataLoader per item, {self.loader} workers")
        return ", ".join(parts)

    @property
    def key(self) -> str:
        base = f"{self.label} {self.model} {'gated' if self.gated else 'ungated'}"
        return f"{base} [{self.variant}]" if self.variant else base


def make_config(spec: Spec, batch: int, data: DataConfig | None = None) -> Config:
    """The run config of a spec: dSprites, latent 8 (the paper's 4 partitions of 2 when gated),
    Adam lr 1e-4, CPU."""
    from .models import MODELS
    from .quickstart import DSPRITES_PARTITIONS

    cond = ("shape",) if getattr(MODELS[spec.model].cls, "conditional", False) else ()
    return Config(
        data=data or DataConfig(name="dsprites"),
        model=ModelConfig(name=spec.model, net=spec.net, hidden=spec.hidden, latent_dim=LATENT_DIM, condition=cond),  # type: ignore[arg-type]
        gating=GatingConfig(enabled=spec.gated, partitions=DSPRITES_PARTITIONS if spec.gated else ()),
        train=TrainConfig(batch_size=batch, device="cpu", seed=0),
    )


def make_optimizers(model, lr: float, adam: dict[str, Any]) -> dict[str, torch.optim.Optimizer]:
    """The trainer's optimisers (``train.loop._optimizers``), with extra Adam arguments if any."""
    from .train.loop import _optimizers

    if not adam:
        return _optimizers(model, lr, next(model.parameters()).device)
    main = getattr(model, "main_optimizer_settings", dict)()
    opts: dict[str, torch.optim.Optimizer] = {
        "main": torch.optim.Adam(model.main_parameters(), **{**main, "lr": lr, **adam})
    }
    settings = model.auxiliary_optimizer_settings()
    for name, module in model.auxiliary_modules().items():
        opts[name] = torch.optim.Adam(module.parameters(), **{**settings.get(name, {"lr": lr}), **adam})
    return opts


class PerItemPairs(torch.utils.data.Dataset):
    """The conventional input pipeline, as published implementations write it: one item per
    ``__getitem__`` (the image unpacked from the same in-memory packed array), and for a
    gated partition the target's factors drawn per item in Python (the shared factors kept,
    the others redrawn) and turned back into an index. ``shared=None``: plain VAE items
    (the image alone). ``rng`` draws the targets (each worker process gets its own copy).
    """

    def __init__(self, dataset, shared: Sequence[str] | None, rng: np.random.Generator) -> None:
        store = dataset.store
        self.packed = store.packed.numpy()  # (N, H*W/8) uint8
        self.shape = (store.channels, store.height, store.width)
        space = dataset.factor_space
        self.sizes = [int(s) for s in space.sizes]
        self.strides = [int(np.prod(self.sizes[k + 1 :])) for k in range(len(self.sizes))]
        self.free = None if shared is None else [k for k, n in enumerate(space.names) if n not in shared]
        self.rng = rng

    def __len__(self) -> int:
        return len(self.packed)

    def _image(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.unpackbits(self.packed[i]).reshape(self.shape).astype(np.float32))  # (C, H, W)

    def __getitem__(self, i: int):
        x = self._image(i)
        if self.free is None:
            return x
        f = [(i // s) % n for s, n in zip(self.strides, self.sizes)]  # the item's factor classes
        for k in self.free:
            f[k] = int(self.rng.integers(self.sizes[k]))
        j = sum(c * s for c, s in zip(f, self.strides))
        return x, self._image(j)


class _LoaderDraw:
    """Batches from one per-item DataLoader per partition (or one, un-gated), in the order of
    the trainer's partition schedule; returns what ``_Batcher.draw`` returns."""

    def __init__(self, prep, batcher, workers: int, seed: int) -> None:
        self.batcher = batcher
        parts = prep.config.gating.partitions if prep.partitions is not None else (None,)
        self.loaders = []
        for k, p in enumerate(parts):
            ds = PerItemPairs(prep.dataset, None if p is None else p.factors, np.random.default_rng([seed, 3, k]))
            self.loaders.append(
                torch.utils.data.DataLoader(
                    ds,
                    batch_size=prep.config.train.batch_size,
                    shuffle=True,
                    drop_last=True,
                    num_workers=workers,
                    generator=torch.Generator().manual_seed(seed + k),
                    persistent_workers=workers > 0,
                )
            )
        self.iters = [iter(ld) for ld in self.loaders]

    def _next(self, k: int):
        try:
            return next(self.iters[k])
        except StopIteration:  # an epoch ended
            self.iters[k] = iter(self.loaders[k])
            return next(self.iters[k])

    def __call__(self, step: int, rng: np.random.Generator):
        b = self.batcher
        if b.partitions is None:
            x = self._next(0)
            return x, x, None, None, None, -1
        active = b.schedule(step, rng)
        x, target = self._next(active)
        return x, target, None, b.masks[active], None, active


class StepRunner:
    """The trainer's step (``train.loop.train``, main phase) on its own model copy.

    Per call: draw a batch (``_Batcher.draw``, or a DataLoader) -> ``model.loss`` -> finiteness
    check -> ``zero_grad`` -> ``backward`` -> Adam ``step`` -> ``auxiliary_step`` -> the loop's
    running sums of the terms. With ``split=True`` each phase is timed per call
    (``self.records``: one dict of seconds per phase per call).
    """

    def __init__(self, prep, spec: Spec, split: bool = False) -> None:
        from .train.loop import _Batcher

        self.prep = prep
        self.spec = spec
        self.model = prep.model
        self.config = prep.config
        self.batcher = _Batcher(prep)
        self.optimizers = make_optimizers(self.model, self.config.train.lr, dict(spec.adam))
        self.rng = np.random.default_rng([self.config.train.seed, 2])
        self.gen = torch.Generator(device=prep.device).manual_seed(self.config.train.seed)
        self.threads = spec.threads
        self.split = split
        self.records: list[dict[str, float]] = []
        self.step_no = 0
        self.sums: dict[str, torch.Tensor] = {}
        first = self.first_layer()
        if first is not None and spec.dense_first:
            first.sparse_binary = False
        if spec.channels_first:
            self.model.to(memory_format=torch.contiguous_format)
        self.draw = (
            _LoaderDraw(prep, self.batcher, spec.loader, self.config.train.seed)
            if spec.loader is not None
            else self._draw
        )
        self.model.train()

    def first_layer(self) -> torch.nn.Module | None:
        """The MLP encoder's first Linear, if it has the sparse binary path."""
        trunk = getattr(self.model.encoder, "trunk", None)
        layers = getattr(trunk, "layers", None)
        try:
            first = layers[0][0]  # type: ignore[index]
        except (TypeError, IndexError):
            return None
        return first if hasattr(first, "sparse_binary") else None

    def _draw(self, step: int, rng: np.random.Generator):
        return self.batcher.draw(step, rng, False)

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
        t0 = time.perf_counter()
        x, target, cond, gate_mask, clamp_mask, _ = self.draw(step, self.rng)
        if self.spec.channels_first:
            x = x.contiguous()
        t1 = time.perf_counter()
        out = model.loss(
            x,
            target,
            step,
            gen,
            cond=cond,
            gate_mask=gate_mask,
            gate_regulariser=self.config.gating.gate_kl,
            clamp_mask=clamp_mask,
        )
        if not bool(torch.isfinite(out.total)):  # the loop checks every step on the CPU
            raise RuntimeError(f"{self.config.model.name}: loss is not finite at benchmark step {step}")
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        out.total.backward()
        t3 = time.perf_counter()
        opt.step()
        extra = model.auxiliary_step(out, self.optimizers, gen)
        for name, v in {**out.terms, "total": out.total, **extra}.items():  # the loop's logging sums
            v = v.detach()
            self.sums[name] = self.sums[name] + v if name in self.sums else v.clone()
        t4 = time.perf_counter()
        self.step_no += 1
        if self.step_no % 100 == 0:
            self.sums = {}
        if self.split:
            self.records.append({"batch": t1 - t0, "forward": t2 - t1, "backward": t3 - t2, "optimizer": t4 - t3})


def build_runner(spec: Spec, batch: int, dataset, split: bool = False):
    """``(runner, gemms)`` of a spec on an already built dataset."""
    from .train.loop import prepare

    config = make_config(spec, batch)
    prep = prepare(config, device=torch.device("cpu"), dataset=dataset)
    runner = StepRunner(prep, spec, split)
    gemms = traced_gemms(runner)
    runner.step_no, runner.records, runner.sums = 0, [], {}  # the traced step does not count
    return runner, gemms


def counted_flops(runner: StepRunner) -> int | None:
    """Matmul / conv FLOPs of one real step counted by ``torch.utils.flop_counter`` (dense
    equivalent: the sparse first layer is counted as the dense product it replaces); None for
    a step the counter cannot follow (``autograd.grad`` inside it, e.g. a gradient penalty)."""
    from torch.utils.flop_counter import FlopCounterMode

    first = runner.first_layer()
    was = getattr(first, "sparse_binary", False)
    if first is not None:
        first.sparse_binary = False
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            runner()
    except RuntimeError:
        return None
    finally:
        if first is not None:
            first.sparse_binary = was
    return int(counter.get_total_flops())


# --------------------------------------------------------------------------- measurement


def interleaved(
    items: dict[str, Callable[[], None]],
    seconds: float,
    rounds: int,
    warmup: int = 1,
    log: Callable[[str], None] | None = None,
) -> tuple[dict[str, list[float]], list[float]]:
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
    for r in range(rounds):
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
        if log is not None:
            log(f"  round {r + 1}/{rounds} done, load {loads[-1]:.2f}")
    return times, loads


def _category(op: str) -> str:
    name = op.lower()
    if any(s in name for s in OPTIMIZER_OPS):
        return "optimizer"
    if any(s in name for s in MATMUL_OPS):
        return "matmul"
    return "other ops"


def profile_step(runner: StepRunner, steps: int, limit: int = 12) -> dict[str, Any]:
    """Operators by self CPU time over ``steps`` steps (``torch.profiler``), and the step's wall
    time split into matmul operators, optimiser operators, other operators (elementwise, batch
    norm, loss, copies) and time outside any operator (Python, numpy pair sampling and
    unpacking). The profiler adds a little time per operator, so read the shares."""
    from torch.profiler import ProfilerActivity, profile

    runner()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            runner()
    wall_ms = (time.perf_counter() - t0) / steps * 1e3
    events = [e for e in prof.key_averages() if not e.key.startswith("ProfilerStep")]
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    cats = {"matmul": 0.0, "optimizer": 0.0, "other ops": 0.0}
    for e in events:
        cats[_category(e.key)] += e.self_cpu_time_total / 1e3 / steps
    cats["outside ops (Python, numpy)"] = max(wall_ms - sum(cats.values()), 0.0)
    ops = [
        {
            "op": e.key,
            "calls_per_step": e.count / steps,
            "self_ms_per_step": e.self_cpu_time_total / 1e3 / steps,
            "category": _category(e.key),
        }
        for e in events[:limit]
    ]
    return {
        "key": runner.spec.key,
        "steps": steps,
        "step_ms": wall_ms,
        "loadavg": _load(),
        "categories_ms": cats,
        "categories_share": {k: v / wall_ms for k, v in cats.items()},
        "ops": ops,
    }


@dataclass
class BenchOptions:
    """What ``gatedvae bench`` measures and how long."""

    sections: tuple[str, ...] = DEFAULT_SECTIONS
    quick: bool = False
    seconds: float = 2.5
    rounds: int = 5
    threads: int = 0
    batch: int = 128
    families: bool = True
    metrics_run: str | None = None
    metrics_steps: int = 2000
    metrics: str | None = None
    memory_steps: int = 300
    seed: int = 0
    # sizes (the quick mode shrinks them)
    hidden_paper: int = 1200
    hidden_small: int = 256
    square: int = 2048
    warmup: int = 2
    profile_steps: int = 10
    stride: int = 1  # keep every k-th posX/posY class of dSprites (quick mode: 4)
    loader_workers: tuple[int, ...] = (0, 1)
    presets: tuple[str, ...] = ("default", "fast")

    @classmethod
    def quick_mode(cls, **kw: Any) -> BenchOptions:
        """A smoke run in well under a minute: tiny networks, short timings, 1 thread, a
        sixteenth of dSprites, a 40-step model, two metrics."""
        base = dict(
            quick=True,
            seconds=0.1,
            rounds=2,
            threads=1,
            batch=16,
            families=False,
            metrics_steps=40,
            metrics="mig,dci_lasso",
            memory_steps=4,
            hidden_paper=64,
            hidden_small=32,
            square=256,
            warmup=1,
            profile_steps=1,
            stride=4,
            loader_workers=(0,),
        )
        base.update(kw)
        return cls(**base)

    def data_config(self) -> DataConfig:
        return DataConfig(name="dsprites", stride={"posX": self.stride, "posY": self.stride} if self.stride > 1 else {})


def _families() -> list[str]:
    """One registered model per objective class (``beta_vae`` for the VAE family)."""
    from .models import MODELS

    seen: dict[type, str] = {}
    for name, entry in MODELS.items():
        if entry.cls not in seen or name == "beta_vae":
            seen[entry.cls] = name
    return sorted(seen.values())


def _train_specs(o: BenchOptions) -> dict[str, list[Spec]]:
    big, small = o.hidden_paper, o.hidden_small
    rows = []
    for label, net, hidden in ((f"mlp-{big}", "mlp", big), (f"mlp-{small}", "mlp", small), ("conv64", "conv64", small)):
        for gated in (False, True):
            rows.append(Spec(label, "beta_vae", net, hidden, gated))
    if o.families:
        for name in _families():
            if name != "beta_vae":
                rows += [Spec(f"mlp-{small}", name, "mlp", small, g) for g in (False, True)]
    paper = Spec(f"mlp-{big}", "beta_vae", "mlp", big, True)
    small_g = Spec(f"mlp-{small}", "beta_vae", "mlp", small, True)
    loaders = [replace(paper, loader=0), replace(small_g, loader=0), replace(small_g, gated=False, loader=0)]
    loaders += [replace(small_g, loader=w) for w in o.loader_workers if w > 0]
    variants = []
    for base in (paper, small_g):
        variants += [
            replace(base, adam=(("fused", False), ("foreach", True))),
            replace(base, adam=(("fused", False), ("foreach", False))),
            replace(base, dense_first=True),
        ]
        if torch.get_num_threads() > 1:
            variants.append(replace(base, threads=1))
    variants.append(Spec("conv64", "beta_vae", "conv64", small, True, channels_first=True))
    return {"rows": rows, "loaders": loaders, "variants": variants, "split": [paper, small_g]}


def measure_train(o: BenchOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The ``train`` section: roofline, training rows, DataLoader baselines, variants, profiles."""
    from .data import build_dataset

    t0 = time.perf_counter()
    dataset = build_dataset(o.data_config())
    log(f"train: dSprites {len(dataset):,} images built in {time.perf_counter() - t0:.1f} s")
    specs = _train_specs(o)
    runners: dict[str, StepRunner] = {}
    gemm_lists: dict[str, list[Gemm]] = {}
    errors: dict[str, str] = {}
    for group in ("rows", "loaders", "variants"):
        for spec in specs[group]:
            try:
                # build_runner traces one real step: a model that cannot run fails here, not in the rounds
                runners[spec.key], gemm_lists[spec.key] = build_runner(spec, o.batch, dataset)
            except Exception as exc:  # noqa: BLE001 - a model that cannot run the step is reported, not fatal
                errors[spec.key] = f"{type(exc).__name__}: {exc}"
                runners.pop(spec.key, None)
    split_runners = {s.key: build_runner(s, o.batch, dataset, split=True)[0] for s in specs["split"]}
    flops_counted = {s.key: counted_flops(runners[s.key]) for s in specs["rows"] if s.key in runners}

    # Matmul-only steps per network shape, and each network's real linear algebra (sparse first layer).
    gen = torch.Generator().manual_seed(o.seed)
    roof_names: dict[str, str] = {}
    linalg_names: dict[str, str] = {}
    items: dict[str, Callable[[], None]] = {"peak": _Operands(o.square, o.square, o.square, "dx", gen)}
    for spec in specs["rows"]:
        if spec.key not in runners:
            continue
        gk = repr(gemm_lists[spec.key])
        if gk not in roof_names:
            name = f"roofline {spec.label}" + ("" if spec.model == "beta_vae" else f" {spec.model}")
            roof_names[gk] = name
            items[name] = matmul_step(gemm_lists[spec.key], o.seed)
            first = runners[spec.key].first_layer()
            if first is not None and first.sparse_binary:
                rng = np.random.default_rng(o.seed)
                batches = [dataset.images(rng.integers(0, len(dataset), o.batch)) for _ in range(8)]
                linalg_names[gk] = f"linalg {spec.label}" + ("" if spec.model == "beta_vae" else f" {spec.model}")
                first_name = next(n for n, m in runners[spec.key].model.named_modules() if m is first)
                items[linalg_names[gk]] = linalg_step(gemm_lists[spec.key], first, batches, o.seed, first_name)
        items[spec.key] = runners[spec.key]
    for group in ("loaders", "variants"):
        for spec in specs[group]:
            if spec.key in runners:
                items[spec.key] = runners[spec.key]
    for key, r in split_runners.items():
        items["split " + key] = r
    # Each distinct product of the paper-preset step (layers under 1% of the FLOPs left out).
    paper = specs["split"][0]
    paper_gemms = gemm_lists[paper.key]
    total_fwd = sum(g.flops for g in paper_gemms)
    products: dict[str, tuple[int, int, int, str, list[str]]] = {}
    for g in paper_gemms:
        if g.flops >= 0.01 * total_fwd:
            for name, m, k, n, layout in gemm_products([g]):
                products.setdefault(f"{layout} {m}x{k} @ {k}x{n}", (m, k, n, layout, []))[4].append(name)
    for sig, (m, k, n, layout, _) in products.items():
        items[f"shape {sig}"] = _Operands(m, k, n, layout, gen)

    log(
        f"train: {len(items)} items x {o.rounds} rounds x {o.seconds / o.rounds:.2f} s (about {len(items) * o.seconds:.0f} s)"
    )
    t_run = time.perf_counter()
    times, loads = interleaved(items, o.seconds, o.rounds, o.warmup, log=log)
    run_seconds = time.perf_counter() - t_run
    for r in runners.values():  # stop DataLoader workers
        if isinstance(r.draw, _LoaderDraw):
            r.draw.iters = []

    peak_flops = 2 * o.square**3
    peak_t = times["peak"]

    def row_of(spec: Spec) -> dict[str, Any]:
        gemms = gemm_lists[spec.key]
        flops = step_flops(gemms)
        gk = repr(gemms)
        roof = roof_names[gk]
        t = times[spec.key]
        out = {
            "key": spec.key,
            "label": spec.label,
            "model": spec.model,
            "net": spec.net,
            "hidden": spec.hidden,
            "gated": spec.gated,
            "variant": spec.variant,
            "batch": o.batch,
            "flops_per_step": flops,
            "steps_per_s": _median(1 / x for x in t),
            "images_per_s": _median(o.batch / x for x in t),
            "step_ms": _median(t) * 1e3,
            "gflops": _median(flops / x / 1e9 for x in t),
            "roofline": roof,
            "roofline_gflops": _median(flops / x / 1e9 for x in times[roof]),
            "fraction_of_roofline": _ratio(times[roof], t),
            "fraction_of_peak": _median((flops / a) / (peak_flops / b) for a, b in zip(t, peak_t)),
        }
        # The step's own linear algebra: the dense products, or with the sparse first layer.
        lin = times[linalg_names[gk]] if gk in linalg_names and not spec.dense_first else times[roof]
        out["linalg_ms"] = _median(lin) * 1e3
        out["non_matmul_fraction"] = 1 - _ratio(lin, t)
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
        row["speedup_of_ours"] = _ratio(times[spec.key], times[base]) if base in times else float("nan")
        loaders.append(row)
    variants = []
    for spec in specs["variants"]:
        if spec.key not in runners:
            continue
        base = replace(spec, adam=(), threads=0, dense_first=False, channels_first=False).key
        row = row_of(spec)
        row["base_key"] = base
        row["relative_step_time"] = _ratio(times[spec.key], times[base]) if base in times else float("nan")
        variants.append(row)
    splits = []
    for key, r in split_runners.items():
        recs = r.records[o.warmup :] or r.records
        phase = {p: _median(rec[p] for rec in recs) for p in PHASES}
        total = sum(phase.values())
        splits.append(
            {
                "key": key,
                "calls": len(recs),
                "median_ms": {p: v * 1e3 for p, v in phase.items()},
                "share": {p: v / total for p, v in phase.items()},
                "step_ms": _median(sum(x.values()) for x in recs) * 1e3,
            }
        )
    shapes = []
    for sig, (m, k, n, layout, layers) in products.items():
        t = times[f"shape {sig}"]
        shapes.append(
            {
                "product": sig,
                "layers": layers,
                "gflops": _median(2 * m * k * n / x / 1e9 for x in t),
                "fraction_of_peak": _median((2 * m * k * n / a) / (peak_flops / b) for a, b in zip(t, peak_t)),
            }
        )
    log("train: profiling operators ...")
    profiles = [profile_step(r, o.profile_steps) for r in split_runners.values()]
    return {
        "dataset_images": len(dataset),
        "batch": o.batch,
        "measure_seconds": run_seconds,
        "loadavg_per_round": loads,
        "peak": {"square": o.square, "gflops": _median(peak_flops / x / 1e9 for x in peak_t)},
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


# --------------------------------------------------------------------------- subprocess children


def _child_json(kind: str, args: dict[str, Any], threads: int) -> dict[str, Any]:
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

    from .data import build_dataset

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
    from .train import train

    cfg = Config(
        data=DataConfig(**args["data"]),
        model=ModelConfig(name="beta_vae", net="mlp", latent_dim=LATENT_DIM, hidden=args["hidden"], beta=4.0),
        gating=GatingConfig(enabled=True, partitions=_partitions()),
        train=TrainConfig(
            steps=args["steps"],
            batch_size=args["batch"],
            seed=0,
            device="cpu",
            threads=args.get("threads", 0),
            log_every=max(args["steps"] // 4, 1),
            checkpoint_every=max(args["steps"] // 2, 1),
            image_every=max(args["steps"] // 2, 1),
            evaluate=args["evaluate"],
        ),
    )
    with tempfile.TemporaryDirectory(prefix="gatedvae_bench_") as tmp:
        t0 = time.perf_counter()
        summary = train(cfg, Path(tmp) / "run", quiet=True, tensorboard=True)
        seconds = time.perf_counter() - t0
    return {
        "steps": args["steps"],
        "hidden": args["hidden"],
        "evaluate": args["evaluate"],
        "seconds": seconds,
        "images_per_second": summary.get("images_per_second"),
        "peak_rss_mb": peak_rss_mb(),
    }


def _child_quickstart(args: dict[str, Any]) -> dict[str, Any]:
    import contextlib
    import io

    from .cli import main

    with tempfile.TemporaryDirectory(prefix="gatedvae_bench_qs_") as tmp:
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            code = main(["quickstart", "--out", str(Path(tmp) / "qs"), "--quiet", "--steps", str(args["steps"])])
        seconds = time.perf_counter() - t0
    if code:
        raise RuntimeError(f"gatedvae quickstart exited with {code}")
    return {"steps": args["steps"], "seconds": seconds, "peak_rss_mb": peak_rss_mb()}


def _partitions():
    from .quickstart import DSPRITES_PARTITIONS

    return DSPRITES_PARTITIONS


def _child_main(argv: list[str]) -> int:
    kind, args = argv[0], json.loads(argv[1])
    fn = {"data": _child_data, "memory": _child_memory, "quickstart": _child_quickstart}[kind]
    print(json.dumps(fn(args)), flush=True)
    return 0


# --------------------------------------------------------------------------- other sections


def measure_data(o: BenchOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """dSprites generation time, store size and resident memory, in a fresh process."""
    log("data: generating dSprites in a subprocess ...")
    data = asdict(o.data_config())
    return _child_json("data", {"data": data, "seconds": 0.2 if o.quick else 1.0}, o.threads)


def _rate(fn: Callable[[], Any], items: int, seconds: float) -> float:
    fn()
    ts = []
    for _ in range(3):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 3:
            fn()
            n += 1
        ts.append(n * items / (time.perf_counter() - t0))
    return _median(ts)


def measure_pairs(o: BenchOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Index pairs/s and assembled image pairs/s (sample + gather input and target) per sampler."""
    from .data import ClusterPairSampler, ExactPairSampler, IdentityPairSampler, build_dataset

    ds = build_dataset(o.data_config())
    rng = np.random.default_rng(o.seed)
    B = o.batch
    samplers: dict[str, Any] = {
        f"exact ({', '.join(p.factors)})": ExactPairSampler(ds, list(p.factors)) for p in _partitions()
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
                "index_pairs_per_s": _rate(lambda s=s: s.sample(B, rng), B, seconds),
                "index_pairs_per_s_65536": _rate(lambda s=s: s.sample(65_536, rng), 65_536, seconds),
                "image_pairs_per_s": _rate(assemble, B, seconds),
                "image_pairs_per_s_preallocated": _rate(assemble_into, B, seconds),
                "setup_seconds": setup.get(name, 0.0),
            }
        )
    return {"images": len(ds), "batch": B, "rows": rows}


def _metrics_config(steps: int, o: BenchOptions) -> Config:
    from .quickstart import quickstart_config

    cfg = quickstart_config(True, steps=steps, seed=o.seed)
    return replace(
        cfg,
        data=o.data_config(),
        model=replace(cfg.model, hidden=o.hidden_small),
        train=replace(cfg.train, device="cpu", threads=o.threads),
    )


def measure_metrics(o: BenchOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Seconds per metric for each preset on a trained model (``--metrics-run`` or trained here)."""
    from .evaluate import load_trained
    from .metrics.adapter import evaluate_model
    from .train import latest_checkpoint, train

    tmp = None
    train_seconds = None
    if o.metrics_run:
        run = Path(o.metrics_run)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="gatedvae_bench_metrics_")
        run = Path(tmp.name) / "run"
    if not (run / "config.yaml").is_file() or latest_checkpoint(run / "checkpoints") is None:
        # A new (or empty) --metrics-run is trained here and kept for the next time.
        cfg = _metrics_config(o.metrics_steps, o)
        log(
            f"metrics: training the quickstart's gated beta-VAE (hidden {o.hidden_small}) for "
            f"{cfg.train.steps} + {cfg.train.finetune_steps} steps in {run} ..."
        )
        t0 = time.perf_counter()
        train(cfg, run, quiet=True, tensorboard=False)
        train_seconds = time.perf_counter() - t0
    try:
        prep, step, _ = load_trained(run)
        out: dict[str, Any] = {
            "run": None if tmp else str(run),
            "step": step,
            "images": len(prep.dataset),
            "model": prep.model.describe(),
            "train_seconds": train_seconds,
            "presets": {},
        }
        for preset in o.presets:
            log(f"metrics: preset {preset} ...")
            t0 = time.perf_counter()
            res = evaluate_model(prep, o.metrics, preset, rng=np.random.default_rng(o.seed))
            total = time.perf_counter() - t0
            out["presets"][preset] = {
                "total_seconds": total,
                "codes_seconds": res["codes_seconds"],
                "codes": res["samples"]["codes"],
                "encoded_images": res["encoded_images"],
                "encode_seconds": res["encode_seconds"],
                "loadavg": _load(),
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
        return out
    finally:
        if tmp is not None:
            tmp.cleanup()


def measure_memory(o: BenchOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Peak RSS of a dSprites training run of the paper preset (fresh process)."""
    evaluate = "none" if o.quick else "fast"
    log(
        f"memory: training mlp-{o.hidden_paper} gated for {o.memory_steps} steps (evaluate={evaluate}) in a subprocess ..."
    )
    args = {
        "data": asdict(o.data_config()),
        "hidden": o.hidden_paper,
        "steps": o.memory_steps,
        "batch": o.batch,
        "evaluate": evaluate,
        "threads": o.threads,
    }
    return _child_json("memory", args, o.threads)


def measure_quickstart(o: BenchOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """``gatedvae quickstart`` end to end in a fresh process (30 steps per model in quick mode).
    ``seconds``: inside the process; ``process_seconds``: including interpreter start-up."""
    log("quickstart: running gatedvae quickstart in a subprocess ...")
    return _child_json("quickstart", {"steps": 30 if o.quick else 3000}, o.threads)


# --------------------------------------------------------------------------- driver


def machine_info() -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "platform": platform.platform(),
    }


def run_bench(o: BenchOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure the chosen sections; returns the results as plain data (JSON-safe)."""
    unknown = [s for s in o.sections if s not in SECTIONS]
    if unknown:
        raise ConfigError(f"unknown bench section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    before = torch.get_num_threads()
    if o.threads:
        torch.set_num_threads(o.threads)
    t0 = time.perf_counter()
    res: dict[str, Any] = {
        "machine": machine_info(),
        "options": asdict(o),
        "loadavg_start": _load(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    fns = {
        "train": measure_train,
        "data": measure_data,
        "pairs": measure_pairs,
        "metrics": measure_metrics,
        "memory": measure_memory,
        "quickstart": measure_quickstart,
    }
    try:
        for s in SECTIONS:
            if s in o.sections:
                res[s] = fns[s](o, log)
    finally:
        torch.set_num_threads(before)
    res["loadavg_end"] = _load()
    res["seconds"] = time.perf_counter() - t0
    res["targets"] = targets(res)
    return res


# --------------------------------------------------------------------------- targets and reports


def _find(rows: list[dict], key: str) -> dict | None:
    return next((r for r in rows if r["key"] == key), None)


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The performance issue's targets with the measured value, where measured."""
    out: list[dict[str, Any]] = []

    def add(name: str, value: float | None, limit: float, unit: str, higher_better: bool, note: str = "") -> None:
        if value is None or value != value:
            return
        ok = value >= limit if higher_better else value < limit
        out.append(
            {
                "target": name,
                "value": value,
                "limit": limit,
                "unit": unit,
                "met": bool(ok),
                "bound": ">=" if higher_better else "<",
                "note": note,
            }
        )

    tr = res.get("train")
    if tr:
        paper = _find(tr["rows"], tr["paper_key"])
        if paper:
            add(
                f"{paper['label']} batch {tr['batch']} gated beta-VAE: fraction of the shape roofline",
                paper["fraction_of_roofline"],
                0.75,
                "",
                True,
                "dense-equivalent FLOPs; batch assembly and pair sampling included",
            )
            dense = next(
                (v for v in tr["variants"] if v["base_key"] == tr["paper_key"] and "dense first" in v["variant"]), None
            )
            if dense:
                add(
                    "  same, dense first layer", dense["fraction_of_roofline"], 0.75, "", True, "no sparsity exploited"
                )
        small = _find(tr["rows"], tr["small_key"])
        if small and "non_matmul_fraction" in small:
            add(
                f"{small['label']} batch {tr['batch']} gated: non-matmul share of the step",
                small["non_matmul_fraction"],
                0.20,
                "",
                False,
                "1 - (the step's linear algebra alone) / (step)",
            )
        loaders = [r for r in tr["loaders"] if r["ours_key"] == tr["small_key"]]
        if loaders:
            best = min(loaders, key=lambda r: r["speedup_of_ours"])
            add(
                f"{small['label'] if small else 'mlp'} gated: speed-up over the per-item DataLoader",
                best["speedup_of_ours"],
                1.5,
                "x",
                True,
                f"against the faster baseline ({best['variant']})",
            )
    me = res.get("metrics")
    if me:
        for preset, limit in (("default", 60.0), ("fast", 10.0)):
            if preset in me["presets"]:
                n = len(me["presets"][preset]["metrics"])
                add(
                    f"metric suite, {preset} preset ({n} metrics)",
                    me["presets"][preset]["total_seconds"],
                    limit,
                    "s",
                    False,
                )
    da = res.get("data")
    if da:
        add(f"dSprites in memory ({da['images']:,} images): store", da["store_bytes"] / 1e6, 400.0, "MB", False)
        add(
            "  resident memory added by building it",
            da["rss_gain_mb"],
            400.0,
            "MB",
            False,
            "peak RSS after minus before",
        )
    mem = res.get("memory")
    if mem:
        add(
            f"peak RSS of a dSprites training run (mlp-{mem['hidden']}, evaluate={mem['evaluate']})",
            mem["peak_rss_mb"],
            2048.0,
            "MB",
            False,
        )
    qs = res.get("quickstart")
    if qs:
        add(f"gatedvae quickstart end to end ({qs['steps']} steps per model)", qs["process_seconds"], 300.0, "s", False)
    return out


def _fmt_value(t: dict) -> str:
    v, u = t["value"], t["unit"]
    if u == "":
        return f"{v:.0%}"
    if u == "x":
        return f"{v:.2f}x"
    return f"{v:,.1f} {u}"


def _fmt_limit(t: dict) -> str:
    u = t["unit"]
    lim = f"{t['limit']:.0%}" if u == "" else (f"{t['limit']:.1f}x" if u == "x" else f"{t['limit']:,.0f} {u}")
    return f"{t['bound']} {lim}"


def _header(res: dict) -> list[str]:
    m = res["machine"]
    o = res["options"]
    lines = [
        f"gatedvae bench, {res.get('started', '')}: {m['cpu_count']} CPUs ({m['processor']}), torch {m['torch']} "
        f"with {m['threads']} threads{' (quick mode)' if o.get('quick') else ''}; load average "
        f"{'/'.join(f'{x:.2f}' for x in res['loadavg_start'])} at start, {'/'.join(f'{x:.2f}' for x in res['loadavg_end'])} at end; "
        f"{res['seconds']:.0f} s"
    ]
    tr = res.get("train")
    if tr:
        lines.append(
            f"train: medians over {o['rounds']} interleaved rounds of {o['seconds'] / o['rounds']:.2f} s per item "
            f"(1-min load per round: {', '.join(f'{x:.1f}' for x in tr['loadavg_per_round'])}); batch {tr['batch']}; "
            f"dSprites {tr['dataset_images']:,} images"
        )
    return lines


def format_report(res: dict[str, Any]) -> str:
    """The plain-text report: targets, then each measured section."""
    out = _header(res)
    if res.get("targets"):
        out.append("")
        w = max(len(t["target"]) for t in res["targets"]) + 2
        out.append(f"{'target':<{w}}{'measured':>12}{'target':>12}  met")
        for t in res["targets"]:
            out.append(f"{t['target']:<{w}}{_fmt_value(t):>12}{_fmt_limit(t):>12}  {'yes' if t['met'] else 'NO'}")
    tr = res.get("train")
    if tr:
        out.append(f"\nroofline: fp32 matmul {tr['peak']['square']}^3 peak {tr['peak']['gflops']:.1f} GFLOP/s")
        out.append(f"  {'products of the paper-preset step':<36}{'GFLOP/s':>9}{'of peak':>9}   layers")
        for r in tr["shapes"]:
            out.append(
                f"  {r['product']:<36}{r['gflops']:>9.1f}{r['fraction_of_peak']:>9.0%}   {', '.join(r['layers'])}"
            )
        hdr = (
            f"\n{'net':<10}{'model':<18}{'gated':<7}{'images/s':>9}{'ms/step':>9}{'GFLOP/step':>11}{'GFLOP/s':>9}"
            f"{'roofline':>9}{'of roof':>8}{'of peak':>8}{'non-mm':>8}"
        )
        out.append(hdr)
        out.append("-" * (len(hdr) - 1))
        for r in tr["rows"]:
            out.append(
                f"{r['label']:<10}{r['model']:<18}{'yes' if r['gated'] else 'no':<7}{r['images_per_s']:>9,.0f}{r['step_ms']:>9.1f}"
                f"{r['flops_per_step'] / 1e9:>11.3f}{r['gflops']:>9.1f}{r['roofline_gflops']:>9.1f}"
                f"{r['fraction_of_roofline']:>8.0%}{r['fraction_of_peak']:>8.0%}"
                + (f"{r['non_matmul_fraction']:>8.0%}" if "non_matmul_fraction" in r else f"{'':>8}")
            )
        out.append(
            "GFLOP/step: analytic dense Linear/Conv FLOPs (forward + backward); roofline = the same products alone; "
            "non-mm = 1 - the step's linear algebra alone / the step."
        )
        for key, err in tr["errors"].items():
            out.append(f"  not measured: {key}: {err}")
        out.append("\nper-item DataLoader baseline (same model and step, batches from torch.utils.data.DataLoader):")
        for r in tr["loaders"]:
            out.append(f"  {r['key']:<70}{r['images_per_s']:>9,.0f} images/s   ours {r['speedup_of_ours']:.2f}x faster")
        out.append("\nvariants (step time relative to the default step, same rounds):")
        for r in tr["variants"]:
            out.append(f"  {r['key']:<70}{r['images_per_s']:>9,.0f} images/s {r['relative_step_time']:>7.2f}x time")
        for sp in tr["split"]:
            out.append(
                f"\nwhere the time goes ({sp['key']}, median of {sp['calls']} timed steps, {sp['step_ms']:.1f} ms):"
            )
            for p in PHASES:
                out.append(f"  {p:<10}{sp['median_ms'][p]:>9.2f} ms {sp['share'][p]:>6.0%}")
        for pr in tr["profiles"]:
            out.append(f"\noperators ({pr['key']}, torch.profiler, {pr['steps']} steps of {pr['step_ms']:.1f} ms):")
            out.append("  " + ", ".join(f"{k} {v:.0%}" for k, v in pr["categories_share"].items()))
            for op in pr["ops"]:
                out.append(
                    f"  {op['op']:<44}{op['self_ms_per_step']:>8.2f} ms/step {op['calls_per_step']:>6.1f} calls  {op['category']}"
                )
    da = res.get("data")
    if da:
        out.append(
            f"\ndata: dSprites {da['images']:,} images in {da['seconds']:.1f} s, store {da['store_bytes'] / 1e6:.0f} MB; "
            f"peak RSS {da['baseline_rss_mb']:.0f} MB after imports -> {da['peak_rss_mb']:.0f} MB (+{da['rss_gain_mb']:.0f} MB); "
            f"gather of 128 images {da['gather_128_ms']:.2f} ms"
        )
    pa = res.get("pairs")
    if pa:
        out.append(f"\npairs ({pa['images']:,} images, batch {pa['batch']}):")
        out.append(f"  {'sampler':<34}{'index pairs/s':>15}{'(65,536)':>14}{'image pairs/s':>15}{'(prealloc)':>12}")
        for r in pa["rows"]:
            out.append(
                f"  {r['sampler']:<34}{r['index_pairs_per_s']:>15,.0f}{r['index_pairs_per_s_65536']:>14,.0f}"
                f"{r['image_pairs_per_s']:>15,.0f}{r['image_pairs_per_s_preallocated']:>12,.0f}"
                + (f"   set-up {r['setup_seconds']:.1f} s" if r["setup_seconds"] else "")
            )
    me = res.get("metrics")
    if me:
        presets = list(me["presets"])
        out.append(
            f"\nmetrics on {me['model']} at step {me['step']} ({me['images']:,} images"
            + (f"; trained in {me['train_seconds']:.0f} s" if me.get("train_seconds") else "")
            + "):"
        )
        out.append(f"  {'metric':<24}" + "".join(f"{p + ' s':>12}" for p in presets))
        out.append(f"  {'codes sample':<24}" + "".join(f"{me['presets'][p]['codes_seconds']:>12.2f}" for p in presets))
        names = list(dict.fromkeys(n for p in presets for n in me["presets"][p]["metrics"]))
        for n in names:
            out.append(
                f"  {n:<24}"
                + "".join(
                    f"{me['presets'][p]['metrics'][n]['seconds']:>12.2f}"
                    if n in me["presets"][p]["metrics"]
                    else f"{'-':>12}"
                    for p in presets
                )
            )
        out.append(f"  {'total':<24}" + "".join(f"{me['presets'][p]['total_seconds']:>12.2f}" for p in presets))
    mem = res.get("memory")
    if mem:
        out.append(
            f"\nmemory: dSprites training run, mlp-{mem['hidden']} gated, {mem['steps']} steps, evaluate={mem['evaluate']}: "
            f"peak RSS {mem['peak_rss_mb']:.0f} MB, {mem['process_seconds']:.0f} s"
        )
    qs = res.get("quickstart")
    if qs:
        out.append(
            f"\nquickstart ({qs['steps']} steps per model): {qs['process_seconds']:.0f} s end to end, peak RSS {qs['peak_rss_mb']:.0f} MB"
        )
    return "\n".join(out)


def format_markdown(res: dict[str, Any]) -> str:
    """The same results as Markdown tables (docs/performance.md is regenerated from this)."""
    out = ["> " + line for line in _header(res)]
    if res.get("targets"):
        out += ["", "| target | measured | target | met |", "| --- | ---: | ---: | --- |"]
        for t in res["targets"]:
            out.append(
                f"| {t['target'].strip()} | {_fmt_value(t)} | {_fmt_limit(t)} | {'yes' if t['met'] else '**no**'} |"
            )
    tr = res.get("train")
    if tr:
        out += [
            "",
            f"Roofline: fp32 matmul {tr['peak']['square']}^3, {tr['peak']['gflops']:.1f} GFLOP/s.",
            "",
            "| net | model | gated | images/s | ms/step | GFLOP/step | GFLOP/s | roofline GFLOP/s | of roofline | of peak | non-matmul |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in tr["rows"]:
            nm = f"{r['non_matmul_fraction']:.0%}" if "non_matmul_fraction" in r else ""
            out.append(
                f"| {r['label']} | {r['model']} | {'yes' if r['gated'] else 'no'} | {r['images_per_s']:,.0f} | {r['step_ms']:.1f} | "
                f"{r['flops_per_step'] / 1e9:.3f} | {r['gflops']:.1f} | {r['roofline_gflops']:.1f} | "
                f"{r['fraction_of_roofline']:.0%} | {r['fraction_of_peak']:.0%} | {nm} |"
            )
        out += ["", "| per-item DataLoader baseline | images/s | ours is faster by |", "| --- | ---: | ---: |"]
        for r in tr["loaders"]:
            out.append(f"| {r['key']} | {r['images_per_s']:,.0f} | {r['speedup_of_ours']:.2f}x |")
        out += ["", "| variant | images/s | step time vs default |", "| --- | ---: | ---: |"]
        for r in tr["variants"]:
            out.append(f"| {r['key']} | {r['images_per_s']:,.0f} | {r['relative_step_time']:.2f}x |")
        for sp in tr["split"]:
            out += [
                "",
                f"Phases of `{sp['key']}` (median of {sp['calls']} steps, {sp['step_ms']:.1f} ms): "
                + ", ".join(f"{p} {sp['median_ms'][p]:.2f} ms ({sp['share'][p]:.0%})" for p in PHASES)
                + ".",
            ]
        for pr in tr["profiles"]:
            out += [
                "",
                f"Operators of `{pr['key']}` (torch.profiler, {pr['steps']} steps of {pr['step_ms']:.1f} ms): "
                + ", ".join(f"{k} {v:.0%}" for k, v in pr["categories_share"].items())
                + ".",
                "",
                "| operator | ms/step | calls/step | category |",
                "| --- | ---: | ---: | --- |",
            ]
            for op in pr["ops"]:
                out.append(
                    f"| `{op['op']}` | {op['self_ms_per_step']:.2f} | {op['calls_per_step']:.1f} | {op['category']} |"
                )
    da = res.get("data")
    if da:
        out += [
            "",
            f"dSprites: {da['images']:,} images generated in {da['seconds']:.1f} s; store {da['store_bytes'] / 1e6:.0f} MB; "
            f"peak RSS {da['baseline_rss_mb']:.0f} MB after imports, {da['peak_rss_mb']:.0f} MB after building "
            f"(+{da['rss_gain_mb']:.0f} MB); a batch of 128 gathered in {da['gather_128_ms']:.2f} ms.",
        ]
    pa = res.get("pairs")
    if pa:
        out += [
            "",
            f"| sampler (batch {pa['batch']}) | index pairs/s | index pairs/s (65,536) | image pairs/s | image pairs/s (preallocated) |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for r in pa["rows"]:
            out.append(
                f"| {r['sampler']} | {r['index_pairs_per_s']:,.0f} | {r['index_pairs_per_s_65536']:,.0f} | "
                f"{r['image_pairs_per_s']:,.0f} | {r['image_pairs_per_s_preallocated']:,.0f} |"
            )
    me = res.get("metrics")
    if me:
        presets = list(me["presets"])
        out += [
            "",
            f"Metrics on {me['model']} at step {me['step']}:",
            "",
            "| metric | " + " | ".join(f"{p} (s)" for p in presets) + " |",
            "| --- |" + " ---: |" * len(presets),
        ]
        out.append("| codes sample | " + " | ".join(f"{me['presets'][p]['codes_seconds']:.2f}" for p in presets) + " |")
        names = list(dict.fromkeys(n for p in presets for n in me["presets"][p]["metrics"]))
        for n in names:
            out.append(
                f"| {n} | "
                + " | ".join(
                    f"{me['presets'][p]['metrics'][n]['seconds']:.2f}" if n in me["presets"][p]["metrics"] else "-"
                    for p in presets
                )
                + " |"
            )
        out.append(
            "| **total** | " + " | ".join(f"**{me['presets'][p]['total_seconds']:.1f}**" for p in presets) + " |"
        )
    mem = res.get("memory")
    if mem:
        out += [
            "",
            f"Training run (mlp-{mem['hidden']} gated, {mem['steps']} steps, checkpoints, TensorBoard images, "
            f"evaluate={mem['evaluate']}): peak RSS {mem['peak_rss_mb']:.0f} MB.",
        ]
    qs = res.get("quickstart")
    if qs:
        out += [
            "",
            f"`gatedvae quickstart` ({qs['steps']} steps per model): {qs['process_seconds']:.0f} s end to end, peak RSS {qs['peak_rss_mb']:.0f} MB.",
        ]
    return "\n".join(out)


# --------------------------------------------------------------------------- command line


def add_arguments(p) -> None:
    """The options of ``gatedvae bench`` (also used by ``benchmarks/run.py``)."""
    p.add_argument("--only", help=f"comma-separated sections: {', '.join(SECTIONS)} (default: all but quickstart)")
    p.add_argument(
        "--quick", action="store_true", help="a smoke run in under a minute: tiny sizes, meaningless timings"
    )
    p.add_argument("--out", default="bench.json", help="write the results here (default: bench.json)")
    p.add_argument("--markdown", action="store_true", help="print the tables as Markdown (for docs/performance.md)")
    p.add_argument("--from", dest="from_json", metavar="JSON", help="render a saved result instead of measuring")
    p.add_argument("--seconds", type=float, help="train section: seconds per item, split over the rounds (default 2.5)")
    p.add_argument("--rounds", type=int, help="train section: interleaved rounds (default 5)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own; quick mode: 1)")
    p.add_argument("--no-families", action="store_true", help="train section: skip the one-row-per-model-family rows")
    p.add_argument(
        "--metrics-run", help="metrics section: time the metrics on this trained run instead of training one"
    )
    p.add_argument("--metrics", help="metrics section: comma-separated subset (default: all)")


def options_from_args(args) -> BenchOptions:
    sections = tuple(s.strip() for s in args.only.split(",") if s.strip()) if args.only else DEFAULT_SECTIONS
    kw: dict[str, Any] = {"sections": sections}
    if args.seconds is not None:
        if args.seconds <= 0:
            raise ConfigError(f"--seconds must be positive, got {args.seconds}")
        kw["seconds"] = args.seconds
    if args.rounds is not None:
        if args.rounds < 1:
            raise ConfigError(f"--rounds must be at least 1, got {args.rounds}")
        kw["rounds"] = args.rounds
    if args.threads:
        if args.threads < 0:
            raise ConfigError(f"--threads must be non-negative, got {args.threads}")
        kw["threads"] = args.threads
    if args.no_families:
        kw["families"] = False
    if args.metrics_run:
        kw["metrics_run"] = args.metrics_run
    if args.metrics:
        kw["metrics"] = args.metrics
    o = BenchOptions.quick_mode(**kw) if args.quick else BenchOptions(**kw)
    unknown = [s for s in o.sections if s not in SECTIONS]
    if unknown:
        raise ConfigError(f"unknown bench section(s) {', '.join(unknown)} in --only; choose from {', '.join(SECTIONS)}")
    return o


def bench_command(args, log: Callable[[str], None] = print) -> dict[str, Any]:
    """``gatedvae bench``: measure (or load ``--from``), print, write ``--out``."""
    if args.from_json:
        path = Path(args.from_json)
        try:
            res = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"--from {path}: no such file; run gatedvae bench --out {path} first") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"--from {path}: not a bench JSON file ({exc.msg} at line {exc.lineno}); re-run gatedvae bench"
            ) from None
        if not isinstance(res, dict) or "machine" not in res:
            raise ConfigError(f"--from {path}: not a gatedvae bench result (no 'machine'); re-run gatedvae bench")
        log(format_markdown(res) if args.markdown else format_report(res))
        return res
    o = options_from_args(args)
    out = Path(args.out)
    if out.parent and not out.parent.exists():
        raise ConfigError(f"--out {out}: the directory {out.parent} does not exist; create it or choose another path")
    res = run_bench(o, log=lambda s: print(s, file=sys.stderr, flush=True))
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(res, indent=2, default=float) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    log(format_markdown(res) if args.markdown else format_report(res))
    log(f"\nwrote {out}")
    return res


if __name__ == "__main__":  # subprocess children of the data and memory sections
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        sys.exit(_child_main(sys.argv[2:]))
    import argparse

    parser = argparse.ArgumentParser(prog="python -m gatedvae.bench", description=(__doc__ or "").splitlines()[0])
    add_arguments(parser)
    bench_command(parser.parse_args())
