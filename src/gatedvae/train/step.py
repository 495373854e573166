"""One training step, shared by the training loop and ``gatedvae bench``.

:func:`training_step` is the whole update of one batch: the model's loss, the finiteness
check, ``zero_grad`` and ``backward``, the Adam step, and the model's auxiliary step
(FactorVAE's discriminator, InfoGAN's generator); or, in the decoder fine-tuning phase, the
reconstruction term alone through the decoder's optimiser. The order of these operations (and
of the random draws inside them) is part of exact resume.

Also here: the run's two random generators (:func:`make_generators`), its optimisers
(:func:`make_optimizers`), the fine-tuning switch (:func:`set_finetune`), the running sums of
the logged terms (:class:`RunningSums`) and the non-finite loss error (:class:`TrainingDiverged`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..checkpoint import latest_checkpoint
from ..errors import GatedVAEError
from ..models import GenerativeModel
from .batch import Batch

__all__ = [
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
) -> dict[str, torch.Tensor]:
    """One update on ``batch``; returns the terms to log (the loss terms, ``total`` and the
    auxiliary step's terms; not detached).

    ``check.observe(step, terms, total)`` sees the loss before the backward pass (and may raise);
    ``mark(phase)`` is called when ``"forward"`` (loss and check) and ``"backward"`` are done
    (the benchmark times the phases with it).
    """
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
    )
    if check is not None:
        check.observe(step, out.terms, out.total)
    if mark is not None:
        mark("forward")
    opt = optimizers.finetune if finetune else optimizers.steps["main"]
    assert opt is not None, "a fine-tuning step needs make_optimizers(..., finetune=True)"
    opt.zero_grad(set_to_none=True)
    (out.terms["recon"] if finetune else out.total).backward()
    if mark is not None:
        mark("backward")
    opt.step()
    extra = {} if finetune else model.auxiliary_step(out, optimizers.steps, generator)
    return {**out.terms, "total": out.total, **extra}


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
