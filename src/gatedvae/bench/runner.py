"""The measured step: the trainer's own batcher and :func:`gatedvae.train.training_step` on a
model of a :class:`Spec`, and a conventional per-item DataLoader as the baseline input pipeline.

On CUDA the step is the trainer's CUDA step: the dataset on the GPU, the non-finite check a
device-side record read after the timing (no host wait per step), the spec's precision applied
as the trainer applies ``train.precision`` (:class:`gatedvae.train.step.Precision`).

:class:`StepRunner` is a callable that takes one training step (main phase), as the training
loop does: draw a batch (:class:`gatedvae.train.Batcher`, or a DataLoader) -> the training step
(loss, finiteness check, ``zero_grad``, ``backward``, Adam, auxiliary step) -> the loop's running
sums of the logged terms. With ``split=True`` it times each phase of each call (:data:`PHASES`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from ..config import Config, DataConfig, GatingConfig, ModelConfig, TrainConfig
from ..run import prepare
from ..train import Batch, Batcher, RunningSums, make_generators, make_optimizers, training_step
from ..train.step import Precision
from .flops import Gemm, traced_gemms

__all__ = ["LATENT_DIM", "PHASES", "Spec", "make_config", "PerItemPairs", "LoaderDraw", "StepRunner", "build_runner"]

LATENT_DIM = 8
#: Phases of a timed step: ``Batcher.draw`` (pair sampling, image gather of input and target),
#: ``model.loss`` + finiteness check, ``zero_grad`` + ``backward``, Adam step + auxiliary step +
#: the loop's running sums of the logged terms.
PHASES = ("batch", "forward", "backward", "optimizer")


@dataclass(frozen=True)
class Spec:
    """One measured training configuration.

    ``adam``: extra Adam keyword arguments (``(("fused", False), ("foreach", True))``);
    ``threads``: torch threads during the step (0 = the process's setting); ``dense_first``:
    turn the MLP's sparse first layer off; ``channels_first``: conv weights and inputs in
    NCHW (the trainer keeps them NHWC on the CPU); ``loader``: feed batches from a per-item
    DataLoader with this many workers (None = the trainer's batcher); ``precision``: the
    ``train.precision`` of the step (part of the key unless ``fp32``).
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
    precision: str = "fp32"

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
        if self.precision != "fp32":
            base += f" {self.precision}"
        return f"{base} [{self.variant}]" if self.variant else base


def make_config(spec: Spec, batch: int, data: DataConfig | None = None, device: str = "cpu") -> Config:
    """The run config of a spec: dSprites, latent 8 (the paper's 4 partitions of 2 when gated),
    Adam lr 1e-4, on ``device``, at the spec's precision."""
    from ..models import MODELS
    from ..quickstart import DSPRITES_PARTITIONS

    cond = ("shape",) if getattr(MODELS[spec.model].cls, "conditional", False) else ()
    return Config(
        data=data or DataConfig(name="dsprites"),
        model=ModelConfig(name=spec.model, net=spec.net, hidden=spec.hidden, latent_dim=LATENT_DIM, condition=cond),  # type: ignore[arg-type]
        gating=GatingConfig(enabled=spec.gated, partitions=DSPRITES_PARTITIONS if spec.gated else ()),
        train=TrainConfig(batch_size=batch, device=str(device), seed=0, precision=spec.precision),  # type: ignore[arg-type]
    )


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
        f = [(i // s) % n for s, n in zip(self.strides, self.sizes, strict=True)]  # the item's factor classes
        for k in self.free:
            f[k] = int(self.rng.integers(self.sizes[k]))
        j = sum(c * s for c, s in zip(f, self.strides, strict=True))
        return x, self._image(j)


class LoaderDraw:
    """Batches from one per-item DataLoader per partition (or one, un-gated), in the order of
    the trainer's partition schedule; returns what ``Batcher.draw`` returns.

    The items come from ``host`` (the dataset in host memory; default ``prep.dataset``); on a GPU
    the batches are collated in pinned memory and copied to the device without waiting, as a
    conventional CUDA input pipeline does."""

    def __init__(self, prep, batcher: Batcher, workers: int, seed: int, host=None) -> None:
        self.batcher = batcher
        self.device = prep.device
        cuda = prep.device.type == "cuda"
        parts = prep.config.gating.partitions if prep.partitions is not None else (None,)
        self.loaders = []
        for k, p in enumerate(parts):
            ds = PerItemPairs(
                host if host is not None else prep.dataset,
                None if p is None else p.factors,
                np.random.default_rng([seed, 3, k]),
            )
            self.loaders.append(
                torch.utils.data.DataLoader(
                    ds,
                    batch_size=prep.config.train.batch_size,
                    shuffle=True,
                    drop_last=True,
                    num_workers=workers,
                    generator=torch.Generator().manual_seed(seed + k),
                    persistent_workers=workers > 0,
                    pin_memory=cuda,
                )
            )
        self.iters = [iter(ld) for ld in self.loaders]

    def _next(self, k: int):
        try:
            return next(self.iters[k])
        except StopIteration:  # an epoch ended
            self.iters[k] = iter(self.loaders[k])
            return next(self.iters[k])

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.device == self.device else x.to(self.device, non_blocking=True)

    def __call__(self, step: int, rng: np.random.Generator) -> Batch:
        b = self.batcher
        if b.partitions is None:
            x = self._to_device(self._next(0))
            return Batch(x, x)
        active = b.schedule(step, rng)
        x, target = self._next(active)
        return Batch(self._to_device(x), self._to_device(target), gate_mask=b.masks[active], active=active)


class _FiniteOrRaise:
    """The loop's non-finite check, as a plain error (a benchmark has no checkpoint to name): on
    the CPU every step, as the loop does; on CUDA a device-side record (no host wait per step, as
    the loop's deferred check), read by :meth:`verify` after the timing."""

    def __init__(self, model_name: str, every_step: bool = True) -> None:
        self.model_name = model_name
        self.every_step = every_step
        self.ok: torch.Tensor | None = None  # () bool on the device: every total so far finite

    def observe(self, step: int, terms: dict[str, torch.Tensor], total: torch.Tensor) -> None:
        if self.every_step:
            if not bool(torch.isfinite(total)):
                raise RuntimeError(f"{self.model_name}: loss is not finite at benchmark step {step}")
            return
        finite = torch.isfinite(total.detach())  # ()
        self.ok = finite if self.ok is None else self.ok & finite

    def verify(self) -> None:
        """Raise if some step's loss was not finite (reads the device record)."""
        if self.ok is not None and not bool(self.ok):
            raise RuntimeError(f"{self.model_name}: loss was not finite at some benchmark step")


class StepRunner:
    """The trainer's step (:func:`gatedvae.train.training_step`, main phase) on its own model copy.

    Per call: draw a batch (``Batcher.draw``, or a DataLoader) -> ``training_step`` -> the loop's
    running sums of the terms. With ``split=True`` each phase is timed per call (``self.records``:
    one dict of seconds per phase per call).
    """

    def __init__(self, prep, spec: Spec, split: bool = False, host=None) -> None:
        self.prep = prep
        self.spec = spec
        self.model = prep.model
        self.config = prep.config
        self.batcher = Batcher(prep)
        self.optimizers = make_optimizers(self.model, self.config.train.lr, prep.device, **dict(spec.adam))
        self.rng, self.gen = make_generators(self.config.train.seed, prep.device)
        self.precision = Precision(spec.precision, prep.device)
        cuda = prep.device.type == "cuda"
        self.check = _FiniteOrRaise(self.config.model.name, every_step=not cuda)
        # Phases on a GPU: wait for the device at each mark, or a phase would time only its launches.
        self.sync = (lambda: torch.cuda.synchronize(prep.device)) if cuda and split else (lambda: None)
        self.threads = spec.threads
        self.split = split
        self.records: list[dict[str, float]] = []
        self.step_no = 0
        self.sums = RunningSums()
        first = self.first_layer()
        if first is not None and spec.dense_first:
            first.sparse_binary = False
        if spec.channels_first:
            self.model.to(memory_format=torch.contiguous_format)
        self.draw = (
            LoaderDraw(prep, self.batcher, spec.loader, self.config.train.seed, host)
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

    def _draw(self, step: int, rng: np.random.Generator) -> Batch:
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
        step = self.step_no
        self.sync()
        t0 = time.perf_counter()
        batch = self.draw(step, self.rng)
        if self.spec.channels_first:
            batch = replace(batch, x=batch.x.contiguous())
        self.sync()
        t1 = time.perf_counter()
        marks: dict[str, float] = {}

        def mark(phase: str) -> None:
            self.sync()
            marks[phase] = time.perf_counter()

        terms = training_step(
            self.model,
            batch,
            step,
            self.gen,
            self.optimizers,
            gate_regulariser=self.config.gating.gate_kl,
            check=self.check,
            mark=mark if self.split else None,
            precision=self.precision,
        )
        self.sums.add(terms)  # the loop's logging sums
        self.sync()
        t4 = time.perf_counter()
        self.step_no += 1
        if self.step_no % 100 == 0:
            self.sums.reset()
        if self.split:
            t2, t3 = marks["forward"], marks["backward"]
            self.records.append({"batch": t1 - t0, "forward": t2 - t1, "backward": t3 - t2, "optimizer": t4 - t3})


def build_runner(spec: Spec, batch: int, dataset, split: bool = False, host=None) -> tuple[StepRunner, list[Gemm]]:
    """``(runner, gemms)`` of a spec on an already built dataset, on the dataset's device (``host``:
    the same dataset in host memory, for a DataLoader baseline on a GPU; default ``dataset``)."""
    device = dataset.store.device
    config = make_config(spec, batch, device=str(device))
    prep = prepare(config, device=device, dataset=dataset)
    runner = StepRunner(prep, spec, split, host)
    gemms = traced_gemms(runner)
    runner.step_no, runner.records = 0, []  # the traced step does not count
    runner.sums.reset()
    return runner, gemms
