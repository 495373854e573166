"""Ensembles: K runs of one network shape trained together, in one process and in lockstep.

Disentanglement studies are made of many small runs (seeds x hyperparameters x gated and un-gated
arms), each too small to fill a machine. :func:`gatedvae.train.train_ensemble` trains a group of
them as one: the members share the dataset (built once) and the process, and every member takes
step ``s`` before any takes step ``s + 1``. Each member stays an ordinary run: its own directory,
config, checkpoints (the same format, with the ensemble recorded in the header), metrics, status
and lock; it has its own seed, numpy and torch generators (its pair draws and noise never depend
on the other members or on K), hyperparameters and gating. A member can be resumed alone,
evaluated and encoded like any run; a solo run is an ensemble of one, trained by the same loop.

What members must share is :func:`ensemble_key`: the model and its network shape, the data, the
batch size, the step counts, the device, the precision and the logging/checkpoint intervals.
Hyperparameters, learning rate, seed, gating (gated and un-gated arms together) and
``train.evaluate`` may differ.

How a step is computed (:data:`STRATEGIES`):

* ``loop``: each member's own training step, one after the other: bitwise what the member
  computes trained alone (same thread count). Every model, DC-IGN clamping included.
* ``stacked``: the members' networks evaluated together (parameters stacked, one vectorised call
  per network), one vectorised Adam over all members (:mod:`gatedvae.train.stacked`); each
  member's loss terms with its own hyperparameters and generator. Fewer, larger kernels: what a GPU
  needs. The diagonal-Gaussian models and FactorVAE; DC-IGN clamping, CHyVAE, InfoGAN and fp16 are
  refused in one line.
* ``auto``: ``stacked`` for two or more members where the models allow it, on CUDA and on a CPU
  where the trainer keeps large tensors on the heap (:func:`gatedvae.train.device.cpu_heap`,
  glibc); ``loop`` otherwise. On this project's 2-core CPU the stacked step is 86% of K times one
  run's matrix products at width 256 (K = 8) against 72% for the loop, and level with one run at
  width 1200; with glibc's default heap it was the slower one (docs/performance.md).

A member whose loss stops being finite is set ``failed`` (``status.json``; its last good
checkpoint kept) and leaves the ensemble; the others go on (their gradients never mix: the loss
minimised is the sum of the members' totals).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import torch

from ..config import Config
from ..errors import ConfigError
from .batch import Batch
from .device import cpu_heap_available
from .step import TrainingDiverged, set_finetune, training_step

__all__ = [
    "STRATEGIES",
    "ensemble_key",
    "check_members",
    "check_run_dirs",
    "check_same_start",
    "choose_strategy",
    "ensemble_info",
    "make_stepper",
    "LoopStep",
]

#: How an ensemble's step is computed (``strategy=`` of :func:`gatedvae.train.train_ensemble`).
STRATEGIES = ("auto", "loop", "stacked")

#: The ``train`` fields members must share (the others: seed, lr, evaluate, image_every, threads,
#: keep_checkpoints may differ).
_SHARED_TRAIN = (
    "steps",
    "finetune_steps",
    "batch_size",
    "device",
    "precision",
    "deterministic",
    "log_every",
    "checkpoint_every",
)
#: The ``model`` fields members must share: the network's shape (hyperparameters may differ).
_SHARED_MODEL = ("name", "net", "latent_dim", "hidden", "likelihood", "condition", "condition_encoder")


def ensemble_key(config: Config) -> tuple:
    """What the members of one ensemble must share: the data section, the model and its network
    shape (:data:`_SHARED_MODEL`), and the train fields of :data:`_SHARED_TRAIN`. Two configs
    with equal keys can train in one ensemble."""
    data = tuple(sorted((k, repr(v)) for k, v in asdict(config.data).items()))
    model = tuple((k, repr(getattr(config.model, k))) for k in _SHARED_MODEL)
    train = tuple((k, repr(getattr(config.train, k))) for k in _SHARED_TRAIN)
    return data, model, train


def _difference(a: Config, b: Config) -> str:
    """The first shared field in which ``a`` and ``b`` differ, as ``section.key`` (for the error)."""
    da, db = asdict(a.data), asdict(b.data)
    for k in da:
        if da[k] != db.get(k):
            return f"data.{k} ({da[k]!r} vs {db.get(k)!r})"
    for k in _SHARED_MODEL:
        if getattr(a.model, k) != getattr(b.model, k):
            return f"model.{k} ({getattr(a.model, k)!r} vs {getattr(b.model, k)!r})"
    for k in _SHARED_TRAIN:
        if getattr(a.train, k) != getattr(b.train, k):
            return f"train.{k} ({getattr(a.train, k)!r} vs {getattr(b.train, k)!r})"
    return "nothing"


def check_members(configs: Sequence[Config], run_dirs: Sequence[Path]) -> None:
    """Refuse, in one line, configs that cannot train as one ensemble (another network shape,
    data, batch size, step count, device or precision than the first member's)."""
    first = ensemble_key(configs[0])
    for config, run_dir in zip(configs[1:], run_dirs[1:], strict=True):
        if ensemble_key(config) != first:
            raise ConfigError(
                f"run '{run_dir}' cannot join an ensemble with '{run_dirs[0]}': {_difference(configs[0], config)} "
                "differ; members share the model's network shape, the data, the batch size, the steps, the device "
                "and the precision (train them in separate ensembles)"
            )


def check_run_dirs(run_dirs: Sequence[Path]) -> None:
    """Refuse the same run directory given twice."""
    seen: dict[Path, Path] = {}
    for d in run_dirs:
        key = Path(d).resolve()
        if key in seen:
            raise ConfigError(f"run directory '{d}' is given twice; each member needs its own")
        seen[key] = d


def check_same_start(starts: Sequence[int], run_dirs: Sequence[Path]) -> int:
    """The step the members resume from: all at the same one (an ensemble moves in lockstep)."""
    if len(set(starts)) > 1:
        where = ", ".join(f"{d} at step {s}" for d, s in zip(run_dirs, starts, strict=True))
        raise ConfigError(
            f"the runs were checkpointed at different steps ({where}); an ensemble resumes runs at one step: "
            "resume them in groups of equal steps (gatedvae sweep run groups them so)"
        )
    return int(starts[0])


def ensemble_info(run_dirs: Sequence[Path], strategy: str) -> dict[str, Any]:
    """What each member's checkpoint header and summary record of its ensemble: an ``id`` (a hash
    of the members' directories: the same group gets the same id on resume), ``size`` and
    ``strategy`` (the member adds its ``index``)."""
    names = "\n".join(str(Path(d).resolve()) for d in run_dirs)
    return {"id": hashlib.sha1(names.encode()).hexdigest()[:12], "size": len(run_dirs), "strategy": strategy}


def stacked_refusal(configs: Sequence[Config]) -> str | None:
    """Why the ``stacked`` step cannot train these members (None when it can)."""
    from ..models.base import MODELS, GenerativeModel

    cfg = configs[0]
    cls = MODELS[cfg.model.name].cls
    if cls.covariance != "diagonal":
        return f"model {cfg.model.name} has a full-covariance posterior"
    if not cls.reconstructs:
        return f"model {cfg.model.name} is a GAN"
    if getattr(cls, "encodes_pairs", False):
        return (
            f"model {cfg.model.name} encodes both images of a pair and defines its own loss (shared dims, aggregate "
            "posteriors), which the stacked step does not compute"
        )
    own = [
        n for n in ("loss", "encode", "decode", "reconstruction") if getattr(cls, n) is not getattr(GenerativeModel, n)
    ]
    if own:
        return f"model {cfg.model.name} defines its own {own[0]}, which the stacked step does not call"
    if any(c.gating.enabled and c.gating.mode == "clamp" for c in configs):
        return "DC-IGN clamping (gating.mode=clamp) needs a reference batch per member"
    if cfg.train.precision == "fp16":
        return "train.precision=fp16 needs a gradient scaler per member"
    return None


def choose_strategy(strategy: str, configs: Sequence[Config], device: torch.device) -> str:
    """``strategy`` resolved for these members on ``device`` (``auto``: stacked for two or more
    members where the models allow it, on CUDA, and on the CPU where the trainer can keep large
    tensors on the heap (:func:`~gatedvae.train.device.cpu_heap`: glibc); loop otherwise);
    ``stacked`` where it cannot train them is one line."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"ensemble strategy '{strategy}': use {', '.join(STRATEGIES)}")
    why = stacked_refusal(configs) if strategy != "loop" else None
    if strategy == "auto":
        fast = device.type == "cuda" or (device.type == "cpu" and cpu_heap_available())
        return "stacked" if fast and why is None and len(configs) > 1 else "loop"
    if strategy == "stacked" and why is not None:
        raise ConfigError(f"the stacked ensemble step cannot train these runs: {why}; use the loop strategy")
    return strategy


class Member(Protocol):
    """What a step strategy reads of a member (``gatedvae.train.loop._Member``)."""

    prep: Any
    optimizers: Any
    gen: torch.Generator
    rng: Any
    batcher: Any
    precision: Any
    ckpt: Any


class LoopStep:
    """Each member's own :func:`~gatedvae.train.step.training_step` in turn: bitwise the steps
    the member takes trained alone. A non-finite loss is returned as the member's result (raised
    in a solo run, so that a run trained alone fails exactly as before)."""

    def __init__(self, members: Sequence[Member], solo: bool) -> None:
        self.members = list(members)
        self.solo = solo

    def set_finetune(self, on: bool) -> None:
        for m in self.members:
            set_finetune(m.prep.model, on)

    def step(
        self, members: Sequence[Member], batches: Sequence[Batch], step: int, finetune: bool
    ) -> list[dict[str, torch.Tensor] | TrainingDiverged]:
        out: list[dict[str, torch.Tensor] | TrainingDiverged] = []
        for m, batch in zip(members, batches, strict=True):
            try:
                out.append(
                    training_step(
                        m.prep.model,
                        batch,
                        step,
                        m.gen,
                        m.optimizers,
                        gate_regulariser=m.prep.config.gating.gate_kl,
                        finetune=finetune,
                        check=m.ckpt.guard,
                        precision=m.precision,
                    )  # fmt: skip
                )
            except TrainingDiverged as exc:
                if self.solo:
                    raise
                out.append(exc)
        return out

    def draw(self, members: Sequence[Member], step: int, finetune: bool) -> list[Batch]:
        """Every member's batch of ``step``, drawn by its own batcher with its own generator."""
        return [m.batcher.draw(step, m.rng, finetune) for m in members]

    def sync(self) -> None:
        """Nothing to do: the members' own modules and optimisers are the state."""

    def drop(self, members: Sequence[Member]) -> None:
        gone = {id(m) for m in members}
        self.members = [m for m in self.members if id(m) not in gone]


def make_stepper(strategy: str, members: Sequence[Member], solo: bool):
    """The step strategy of a resolved ``strategy`` over ``members``."""
    if strategy == "stacked":
        from .stacked_step import StackedStep

        return StackedStep(members)
    return LoopStep(members, solo)
