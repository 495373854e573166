"""One training step, shared by the training loop and ``gatedvae bench``.

:func:`training_step` is the whole update of one batch: the model's loss, the finiteness
check, ``zero_grad`` and ``backward``, the Adam step, and the model's auxiliary step
(FactorVAE's discriminator, InfoGAN's generator); or, in the decoder fine-tuning phase, the
reconstruction term alone through the decoder's optimiser. The order of these operations (and
of the random draws inside them) is part of exact resume.

Also here: the run's two random generators (:func:`make_generators`), its optimisers
(:func:`make_optimizers`), the fine-tuning switch (:func:`set_finetune`), the running sums of
the logged terms (:class:`RunningSums`), the non-finite loss error (:class:`TrainingDiverged`)
and the run's numeric precision (:class:`Precision`, ``train.precision``).

Mixed precision (``bf16``, ``fp16``): autocast is on inside the forward pass of each of the
model's networks (its direct child modules: encoder, decoder, FactorVAE's discriminator), and
their outputs come back as float32; the loss terms (log-likelihood sums over 4,096 pixels,
KL, covariances, kernel matrices, Cholesky factors) and the optimiser run in float32. Autocast
around the whole loss would put the losses' own matrix products (DIP-VAE's covariance, the MMD
kernel, the Wishart term's ``L L^T``) in 16 bits too. ``fp16`` scales the main loss with a
``GradScaler`` (sync-free with the fused Adam); the auxiliary step then runs in float32.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from ..checkpoint import latest_checkpoint
from ..errors import ConfigError, GatedVAEError
from ..models import GenerativeModel
from .batch import Batch

__all__ = [
    "PRECISIONS",
    "Precision",
    "precision_context",
    "check_precision",
    "TrainingDiverged",
    "Optimizers",
    "make_optimizers",
    "make_generators",
    "set_finetune",
    "training_step",
    "check_finite",
    "RunningSums",
]


class TrainingDiverged(GatedVAEError):
    """A loss term became NaN or infinite."""

    exit_code = 3


#: ``train.precision`` values; the autocast dtype of the mixed ones.
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse, in one line, a precision ``device`` cannot compute in: ``tf32`` and ``fp16`` need
    CUDA (TF32 is an NVIDIA tensor-core mode; float16 training needs CUDA's kernels and its
    gradient scaler), ``tf32`` and ``bf16`` an Ampere or newer GPU there. ``bf16`` also runs on the
    CPU (autocast's bfloat16 kernels); nothing but ``fp32`` on other devices."""
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ConfigError(f"train.precision: '{precision}' is not one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return
    if device.type == "cuda":
        if precision in ("tf32", "bf16"):
            major, minor = torch.cuda.get_device_capability(device)
            if major < 8:
                name = torch.cuda.get_device_name(device)
                raise ConfigError(
                    f"train.precision={precision} needs an Ampere or newer GPU (compute capability 8.0); "
                    f"{name} on {device} has {major}.{minor}; use train.precision=fp16 or fp32"
                )
        return
    if device.type == "cpu" and precision == "bf16":
        return
    if device.type == "cpu":
        why = "TF32 is an NVIDIA tensor-core mode" if precision == "tf32" else "float16 training needs CUDA"
        raise ConfigError(
            f"train.precision={precision} needs a CUDA device ({why}) but this run trains on the CPU; "
            "use train.precision=bf16 or fp32 there"
        )
    raise ConfigError(f"train.precision={precision} is not supported on {device}; use train.precision=fp32")


def precision_context(precision: str, device: torch.device) -> AbstractContextManager:
    """The autocast context of ``precision`` on ``device``: ``torch.autocast`` to bfloat16 or
    float16, a no-op for ``fp32`` and ``tf32`` (TF32 is a process-wide flag,
    :func:`gatedvae.train.device.configure_device`)."""
    dtype = _AUTOCAST.get(precision)
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def _grad_scaler(device: torch.device) -> Any:
    amp = getattr(torch, "amp", None)
    if amp is not None and hasattr(amp, "GradScaler"):  # torch >= 2.3
        return amp.GradScaler(device.type)
    return torch.cuda.amp.GradScaler()  # pragma: no cover (torch < 2.3)


def _to_float32(value: Any) -> Any:
    """``value`` with every bfloat16 / float16 tensor in it (tuples, lists, dicts, dataclasses such
    as ``Posterior``) as float32; the same object when there is none."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype in (torch.bfloat16, torch.float16) else value
    if isinstance(value, (tuple, list)):
        items = [_to_float32(v) for v in value]
        if all(a is b for a, b in zip(items, value, strict=True)):
            return value
        return type(value)(items) if not hasattr(value, "_fields") else type(value)(*items)
    if isinstance(value, dict):
        new = {k: _to_float32(v) for k, v in value.items()}
        return value if all(new[k] is value[k] for k in value) else new
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changed = {}
        for f in dataclasses.fields(value):
            old = getattr(value, f.name)
            new_v = _to_float32(old)
            if new_v is not old:
                changed[f.name] = new_v
        return dataclasses.replace(value, **changed) if changed else value
    return value


class Precision:
    """A run's numeric precision (``train.precision``) as the training step applies it.

    ``fp32`` and ``tf32`` change nothing in the step (TF32 is a process-wide flag set with the
    device). ``bf16`` / ``fp16``: while :meth:`networks` is active, every network of the model (its
    direct child modules) runs its forward pass under :func:`precision_context` and hands back
    float32 outputs, so the loss terms are computed in float32. ``fp16`` adds a gradient scaler
    (``scaler``), whose state is part of a checkpoint (:meth:`state_dict`).
    """

    def __init__(self, precision: str = "fp32", device: torch.device | str = "cpu") -> None:
        if precision not in PRECISIONS:
            raise ConfigError(f"train.precision: '{precision}' is not one of {', '.join(PRECISIONS)}")
        self.name = precision
        self.device = torch.device(device)
        self.dtype = _AUTOCAST.get(precision)
        self.scaler = _grad_scaler(self.device) if precision == "fp16" else None
        self._active = False
        self._open: list[AbstractContextManager | None] = []
        self._attached: set[int] = set()

    @property
    def mixed(self) -> bool:
        """Whether the networks run under autocast (bf16, fp16)."""
        return self.dtype is not None

    def attach(self, model: nn.Module) -> None:
        """Hook the networks of ``model`` (once per model): autocast inside their forward pass while
        :meth:`networks` is active, float32 outputs."""
        if not self.mixed or id(model) in self._attached:
            return
        self._attached.add(id(model))
        for net in model.children():
            net.register_forward_pre_hook(self._enter)
            try:
                net.register_forward_hook(self._exit, always_call=True)  # closes autocast on an exception too
            except TypeError:  # pragma: no cover (torch < 2.1)
                net.register_forward_hook(self._exit)

    def _enter(self, module: nn.Module, args: Any) -> None:
        ctx = precision_context(self.name, self.device) if self._active else None
        if ctx is not None:
            ctx.__enter__()
        self._open.append(ctx)

    def _exit(self, module: nn.Module, args: Any, output: Any) -> Any:
        ctx = self._open.pop() if self._open else None
        if ctx is None:
            return None
        ctx.__exit__(None, None, None)
        return _to_float32(output)

    @contextlib.contextmanager
    def networks(self, model: nn.Module, enabled: bool = True) -> Iterator[None]:
        """Within the block, the networks of ``model`` run under autocast (mixed precisions only)."""
        if not self.mixed or not enabled:
            yield
            return
        self.attach(model)
        self._active = True
        try:
            yield
        finally:
            self._active = False

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.step(optimizer)  # the fused Adam unscales and skips on inf itself: no host read
        else:
            optimizer.step()

    def update(self) -> None:
        if self.scaler is not None:
            self.scaler.update()

    def state_dict(self) -> dict[str, Any] | None:
        """The gradient scaler's state (JSON numbers; None without a scaler). Reads the device."""
        return dict(self.scaler.state_dict()) if self.scaler is not None else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def make_generators(seed: int, device: torch.device) -> tuple[np.random.Generator, torch.Generator]:
    """The run's generators: numpy for the data (pairs, partition schedule), torch for the
    model's draws (reparameterisation noise, priors). Both are checkpointed."""
    return np.random.default_rng([seed, 2]), torch.Generator(device=device).manual_seed(seed)


def _adam(params, device: torch.device, **kw: Any) -> torch.optim.Optimizer:
    # The fused kernel's step is the fastest measured here (foreach: 1.04x / 1.13x the
    # mlp-1200 / mlp-256 step time; gatedvae bench, docs/performance.md); CPU and CUDA.
    return torch.optim.Adam(params, **{"fused": device.type in ("cpu", "cuda"), **kw})


@dataclass
class Optimizers:
    """A run's optimisers: ``steps`` holds ``main`` and one per auxiliary module of the model (the
    dict ``auxiliary_step`` receives); ``finetune`` is the decoder's (runs with fine-tuning steps)."""

    steps: dict[str, torch.optim.Optimizer]
    finetune: torch.optim.Optimizer | None = None

    def all(self) -> dict[str, torch.optim.Optimizer]:
        """Every optimiser by name, as checkpoints store them."""
        return dict(self.steps, **({"finetune": self.finetune} if self.finetune else {}))


def make_optimizers(
    model: GenerativeModel, lr: float, device: torch.device, finetune: bool = False, **adam: Any
) -> Optimizers:
    """Adam for the main parameters (with the model's settings, at ``lr``), one for each auxiliary
    module (its settings, or ``lr``), and with ``finetune`` one for the decoder.

    ``adam``: extra keyword arguments for every Adam (the benchmark's kernel variants:
    ``fused=False, foreach=True``); the default is the fused kernel on CPU and CUDA.
    """
    steps: dict[str, torch.optim.Optimizer] = {
        "main": _adam(model.main_parameters(), device, **{**model.main_optimizer_settings(), "lr": lr, **adam})
    }
    settings = model.auxiliary_optimizer_settings()
    for name, module in model.auxiliary_modules().items():
        steps[name] = _adam(module.parameters(), device, **{**settings.get(name, {"lr": lr}), **adam})
    tune = _adam(model.decoder.parameters(), device, lr=lr, **adam) if finetune else None
    return Optimizers(steps, tune)


def set_finetune(model: GenerativeModel, on: bool) -> None:
    """Decoder fine-tuning: the encoder is frozen (no gradient, batch-norm statistics fixed)."""
    for p in model.encoder.parameters():
        p.requires_grad_(not on)
    model.encoder.train(not on)


class FiniteCheck(Protocol):
    """What watches each step's loss (``distributed.FiniteGuard`` in the loop)."""

    def observe(self, step: int, terms: dict[str, torch.Tensor], total: torch.Tensor) -> None: ...


def training_step(
    model: GenerativeModel,
    batch: Batch,
    step: int,
    generator: torch.Generator,
    optimizers: Optimizers,
    *,
    gate_regulariser: bool = False,
    finetune: bool = False,
    check: FiniteCheck | None = None,
    mark: Callable[[str], None] | None = None,
    precision: Precision | None = None,
) -> dict[str, torch.Tensor]:
    """One update on ``batch``; returns the terms to log (the loss terms, ``total`` and the
    auxiliary step's terms; not detached).

    ``check.observe(step, terms, total)`` sees the loss before the backward pass (and may raise);
    ``mark(phase)`` is called when ``"forward"`` (loss and check) and ``"backward"`` are done
    (the benchmark times the phases with it). ``precision``: the run's :class:`Precision` (None:
    float32, the same operations as ``Precision("fp32")``).
    """
    prec = precision if precision is not None else _FP32
    with prec.networks(model):
        out = model.loss(
            batch.x,
            batch.target,
            step,
            generator,
            cond=batch.cond,
            gate_mask=batch.gate_mask,
            gate_regulariser=gate_regulariser,
            clamp_mask=batch.clamp_mask,
            enc_cond=batch.enc_cond,
            reference=batch.reference,
            reference_cond=batch.reference_cond,
            **batch.weak_labels(),  # a weak pair's k / shared dims, only when set (issue 19)
        )
    if check is not None:
        check.observe(step, out.terms, out.total)
    if mark is not None:
        mark("forward")
    opt = optimizers.finetune if finetune else optimizers.steps["main"]
    assert opt is not None, "a fine-tuning step needs make_optimizers(..., finetune=True)"
    opt.zero_grad(set_to_none=True)
    prec.backward(out.terms["recon"] if finetune else out.total)
    if mark is not None:
        mark("backward")
    prec.step(opt)
    extra = {}
    if not finetune:
        # the auxiliary step's own backward is unscaled: under fp16 it runs in float32
        with prec.networks(model, enabled=prec.scaler is None):
            extra = model.auxiliary_step(out, optimizers.steps, generator)
    prec.update()
    return {**out.terms, "total": out.total, **extra}


_FP32 = Precision("fp32")


def check_finite(terms: dict[str, torch.Tensor], total: torch.Tensor, step: int, ckpt_dir: Path) -> None:
    """Raise :class:`TrainingDiverged` naming the first non-finite term when ``total`` is not finite."""
    if bool(torch.isfinite(total)):
        return
    bad = [name for name, v in terms.items() if not bool(torch.isfinite(v.detach()))] or ["total"]
    value = terms.get(bad[0], total).detach().item()
    last = latest_checkpoint(ckpt_dir)
    kept = (
        f"the last good checkpoint (step {last[0]}) is kept in {ckpt_dir}" if last else "no checkpoint was written yet"
    )
    raise TrainingDiverged(
        f"loss term '{bad[0]}' is {value} at step {step}; {kept}; "
        "lower train.lr or the term's weight, or check the data"
    )


class RunningSums:
    """Sums of the logged terms over the steps since the last log line, kept on the device (adding
    never waits for it)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        for name, v in terms.items():
            v = v.detach()
            self.sums[name] = self.sums[name] + v if name in self.sums else v.clone()
        self.count += 1

    def reset(self) -> None:
        self.sums, self.count = {}, 0
