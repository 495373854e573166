"""FLOP counting: a training step as the matrix products it performs.

A layer is a :class:`Gemm` ``(rows, inner) @ (inner, cols)``; a step's FLOPs are its forward
products plus the weight and input gradients it needs (:func:`step_flops`). The lists come from
the networks' shapes (:func:`mlp_gemms`, :func:`conv64_gemms`), from the layers one real step
calls (:func:`traced_gemms`), or from ``torch.utils.flop_counter`` (:func:`counted_flops`); the
roofline runs the same products alone on random operands (:func:`matmul_step`, :func:`linalg_step`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from ..config import Config

__all__ = [
    "Gemm",
    "mlp_gemms",
    "conv64_gemms",
    "network_gemms",
    "step_flops",
    "traced_gemms",
    "gemm_products",
    "Operands",
    "matmul_step",
    "linalg_step",
    "counted_flops",
]


class StepRunner(Protocol):
    """What the step counters need of :class:`gatedvae.bench.runner.StepRunner`: the model, one
    real step per call, and the MLP's sparse first layer if it has one."""

    model: torch.nn.Module

    def __call__(self) -> None: ...

    def first_layer(self) -> torch.nn.Module | None: ...


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
    from ..models import MODELS

    m = config.model
    full = MODELS[m.name].cls.covariance != "diagonal"
    head_out = m.latent_dim + m.latent_dim * (m.latent_dim + 1) // 2 if full else 2 * m.latent_dim
    enc_cond = cond_dim if m.condition_encoder else 0
    c, h, w = image_shape
    # a model that encodes and decodes both images of a pair (Ada-GVAE, ML-VAE, ...) runs its
    # networks on twice the batch
    batch = config.train.batch_size * (2 if getattr(MODELS[m.name].cls, "encodes_pairs", False) else 1)
    if m.net == "mlp":
        return mlp_gemms(batch, c * h * w, m.hidden, m.latent_dim, head_out, enc_cond, cond_dim)
    return conv64_gemms(batch, c, m.hidden, m.latent_dim, head_out, enc_cond, cond_dim)


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
    """The products of one training step as ``(name, m, k, n, layout)``; see :class:`Operands`."""
    out = []
    for g in gemms:
        out.append((f"{g.layer} fwd", g.rows, g.inner, g.cols, "fwd"))  # X (rows, K) @ W^T (K, N)
        if g.input_grad:
            out.append((f"{g.layer} dX", g.rows, g.cols, g.inner, "dx"))  # G (rows, N) @ W (N, K)
        if g.weight_grad:
            out.append((f"{g.layer} dW", g.cols, g.rows, g.inner, "dw"))  # G^T (N, rows) @ X (rows, K)
    return out


class Operands:
    """Random operands of one product with autograd's layouts for ``nn.Linear``.

    ``fwd``: ``X @ W.t()``; ``dx``: ``G @ W``; ``dw``: ``G.t() @ X`` (transposed views, as
    autograd passes them, so BLAS sees the same transpose flags). ``device`` and ``dtype``: where
    and in what the product runs (drawn in float32 on the CPU from ``gen``, then moved and cast;
    bfloat16 and float16 for the mixed precisions, float32 for fp32 and TF32).
    """

    def __init__(
        self,
        m: int,
        k: int,
        n: int,
        layout: str,
        gen: torch.Generator,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        def draw(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

        if layout == "fwd":  # (m, k) @ (n, k)^T
            self.a, self.b = draw(m, k), draw(n, k).t()
        elif layout == "dx":  # (m, k) @ (k, n): G (rows, N) @ W (N, K)
            self.a, self.b = draw(m, k), draw(k, n)
        else:  # (m, k) @ (k, n) with a = G^T: G (rows=k, N=m)^T @ X (rows=k, K=n)
            self.a, self.b = draw(k, m).t(), draw(k, n)
        self.out = torch.empty(m, n, device=device, dtype=dtype)

    def __call__(self) -> None:
        torch.mm(self.a, self.b, out=self.out)


def matmul_step(
    gemms: list[Gemm],
    seed: int = 0,
    skip: Sequence[str] = (),
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Callable[[], None]:
    """A callable running every product of one training step of ``gemms`` once (but the
    layers named in ``skip``), on ``device`` in ``dtype``."""
    gen = torch.Generator().manual_seed(seed)
    ops = [
        Operands(m, k, n, layout, gen, device, dtype)
        for _, m, k, n, layout in gemm_products([g for g in gemms if g.layer not in skip])
    ]

    def run_all() -> None:
        for op in ops:
            op()

    return run_all


class SparseFirstLayer:
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
    sparse = SparseFirstLayer(layer, batches, torch.Generator().manual_seed(seed + 1))

    def run_all() -> None:
        for _ in range(calls):
            sparse()
        dense()

    return run_all


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
