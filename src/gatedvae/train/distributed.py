"""Data-parallel training with ``torch.distributed``, launched by ``torchrun``.

``torchrun --nproc_per_node N -m gatedvae train CONFIG`` starts N copies of ``gatedvae train``;
:func:`setup` reads ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` from the environment and joins
them into one process group (NCCL when the run's device is CUDA, each process on
``cuda:LOCAL_RANK``; gloo on the CPU). Without those variables (or with ``WORLD_SIZE=1``)
everything here is a no-op and training is the single-process loop, bit for bit.

The contract is *the same run as one process on the same global batch*, up to float rounding:

* ``train.batch_size`` is the **global** batch. Every process draws the whole global batch of
  pairs with the same seeded numpy generator (so the partition schedule, the pairs and the
  generator state are identical everywhere) and keeps its contiguous slice
  ``[rank * b, (rank + 1) * b)`` with ``b = batch_size / N`` (:meth:`Context.batch_shard`).
  The union of the slices is the single-process batch. A batch size that N does not divide is
  a :class:`~gatedvae.errors.ConfigError`.
* Random draws from the run's torch generator (reparameterisation noise, prior samples,
  FactorVAE's dimension-wise permutation keys) are drawn for the *global* batch on every
  process and each keeps its rows (:class:`ShardedDraws`), so the noise of sample ``i`` is
  the one a single process would use, and the generator advances identically everywhere.
* Gradients are averaged across processes with one all-reduce per optimiser step, in a step
  pre-hook on each optimiser (:func:`average_gradients`). Each process's loss is the mean over
  its ``b`` samples, so the average is the gradient of the global-batch mean. The hook fires
  for every optimiser, including the ones a model steps itself (FactorVAE's discriminator in
  ``auxiliary_step``). Plain ``DistributedDataParallel`` is not used: it needs every backward
  to follow a forward through its wrapper, which the second optimiser breaks, and its bucketed
  overlap buys little for these small networks.
* Batch norm is synchronised (:class:`SyncBatchNorm1d`, ``2d``, ``3d``): in training mode the
  per-channel sums are all-reduced (differentiably), so the statistics, the running averages
  and the gradients are those of the global batch. PyTorch's ``nn.SyncBatchNorm`` is CUDA-only;
  this one works on gloo/CPU too, which is what the equivalence test runs.
* Only rank 0 writes (run directory, checkpoints, logs, TensorBoard, summary, evaluation);
  the logged numbers are averaged over processes, so they describe the global batch.
* A non-finite loss stops every process at the same step (:class:`FiniteGuard`).
* A failure of rank 0's writes (a full disk or a lost permission while it writes a checkpoint,
  the log or the status) stops every process at once with the same one-line error: the writes
  at log and checkpoint steps, where the processes meet anyway, run inside
  :meth:`Context.main_io`, which shares their outcome (one small all-reduce) before anyone goes
  on. Without it the other processes would wait in their next collective for the backend's
  timeout (30 minutes for gloo, 10 for NCCL). A callback's failure between those steps is kept
  and raised on every process at the next one (:meth:`Context.defer_errors`).
* SIGINT or SIGTERM (to any of the processes) stops every process at the same step: they agree
  at the next log step (:meth:`Context.any_rank`), write the checkpoint there and exit 130 or
  143 (:mod:`gatedvae.train.loop`). The run's lock is held by rank 0.

What is *not* global: objectives whose terms couple the samples of a batch (InfoVAE's MMD,
DIP-VAE's covariance of the means, beta-TCVAE's minibatch estimators, FactorVAE's permutation,
DC-IGN clamping to the batch mean) compute those terms over each process's ``b`` samples, as
every data-parallel implementation does; with them the run equals a single process only in
distribution, not in value.

Resume works with any number of processes: a checkpoint holds the global state (parameters,
optimiser moments, both generators), identical on every process.
"""

from __future__ import annotations

import atexit
import functools
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from types import TracebackType

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError, GatedVAEError

__all__ = [
    "Context",
    "setup",
    "launched_world",
    "is_main_process",
    "average_gradients",
    "ShardedDraws",
    "SyncBatchNorm1d",
    "SyncBatchNorm2d",
    "SyncBatchNorm3d",
    "convert_sync_batchnorm",
    "FiniteGuard",
    "RankFailed",
    "finish",
]


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(
            f"environment variable {name}={raw!r} is not an integer; launch with torchrun or unset it"
        ) from None


def launched_world() -> tuple[int, int, int]:
    """``(world_size, rank, local_rank)`` from the environment torchrun sets (``(1, 0, 0)`` without it)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ConfigError(f"WORLD_SIZE={world}, RANK={rank}, LOCAL_RANK={local} are inconsistent; launch with torchrun")
    return world, rank, local


def is_main_process() -> bool:
    """True unless this process is a non-zero rank of a data-parallel run."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    try:
        return launched_world()[1] == 0
    except ConfigError:
        return True


class RankFailed(GatedVAEError):
    """Another process of a data-parallel run failed (not with an OSError, which is raised as
    itself on every process); the message is that process's, one line."""


@dataclass(frozen=True)
class Context:
    """Where this process sits in a data-parallel run (``world_size == 1``: not distributed)."""

    device: torch.device
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    backend: str = ""
    #: an exception kept by :meth:`defer_errors` until the next :meth:`main_io` block
    pending: list[BaseException] = field(default_factory=list, compare=False, repr=False)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def batch_shard(self, batch_size: int) -> slice:
        """This process's rows of a global batch of ``batch_size``."""
        b = batch_size // self.world_size
        return slice(self.rank * b, (self.rank + 1) * b)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def shard_draws(self, generator: torch.Generator) -> AbstractContextManager:
        """A context in which draws from ``generator`` are this process's rows of the global draw."""
        return ShardedDraws(generator, self.rank, self.world_size) if self.enabled else nullcontext()

    def mean_over_ranks(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Average scalar tensors over processes (one all-reduce); unchanged when not distributed."""
        if not self.enabled or not values:
            return values
        names = sorted(values)
        buf = torch.stack([values[n].detach().to(torch.float64) for n in names])  # (T,)
        dist.all_reduce(buf)
        buf = buf / self.world_size
        return {n: buf[i].to(values[n].dtype) for i, n in enumerate(names)}

    def all_ranks(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every process (one all-reduce); ``flag`` when not distributed."""
        return self._reduce_flag(flag, dist.ReduceOp.MIN) if self.enabled else bool(flag)

    def any_rank(self, flag: bool) -> bool:
        """Whether ``flag`` holds on some process (one all-reduce); ``flag`` when not distributed."""
        return self._reduce_flag(flag, dist.ReduceOp.MAX) if self.enabled else bool(flag)

    def _reduce_flag(self, flag: bool, op) -> bool:
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self.device)  # (1,)
        dist.all_reduce(t, op=op)
        return bool(t.item())

    def main_io(self) -> AbstractContextManager:
        """A block of rank 0's writes at a point where every process is (a log or checkpoint step).

        Every process enters it (the writes inside are guarded with ``is_main``). When it ends,
        the processes share whether it raised anywhere (one all-reduce); if it did on some
        process, every process raises: that process its own exception, the others the same
        error rebuilt from its one-line message (an ``OSError`` with the same errno, text and
        file, so the command line prints the same line everywhere; :class:`RankFailed` for any
        other exception). An exception kept by :meth:`defer_errors` is raised here too. Not
        distributed: the block as it is, its exceptions unchanged.
        """
        return _SharedOutcome(self) if self.enabled else nullcontext()

    @contextmanager
    def defer_errors(self) -> Iterator[None]:
        """Rank-0-only work between meeting points (callbacks): an exception it raises is kept
        and raised on every process at the next :meth:`main_io` block (at most ``train.log_every``
        steps later), so that the others do not wait for the backend's timeout. Not distributed:
        raised at once."""
        if not self.enabled:
            yield
            return
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - kept, and raised on every process at the next meeting
            if not self.pending:
                self.pending.append(exc)

    def summary_fields(self) -> dict[str, object]:
        return {"world_size": self.world_size, "backend": self.backend} if self.enabled else {}


def _describe(exc: BaseException) -> tuple:
    """What the other processes need to raise the same error: picklable and small."""
    if isinstance(exc, OSError):
        return ("os", exc.errno, exc.strerror, exc.filename, str(exc))
    text = " ".join(str(exc).split())  # one line
    if isinstance(exc, GatedVAEError):
        return ("gatedvae", text, getattr(exc, "exit_code", 2))
    return ("other", f"{type(exc).__name__}: {text}" if text else type(exc).__name__, 2)


def _rebuild(desc: tuple, rank: int) -> Exception:
    if desc[0] == "os":
        _, errno_, strerror, filename, text = desc
        if errno_ is not None and strerror is not None:
            return OSError(errno_, strerror, filename) if filename is not None else OSError(errno_, strerror)
        return OSError(text)
    _, text, exit_code = desc
    err = RankFailed(text if desc[0] == "gatedvae" else f"rank {rank} failed: {text}")
    err.exit_code = exit_code
    return err


class _SharedOutcome:
    """:meth:`Context.main_io` of a data-parallel run."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def __enter__(self) -> _SharedOutcome:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        ctx = self.ctx
        if exc is not None and not isinstance(exc, Exception):
            return False  # KeyboardInterrupt (a second Ctrl-C: stop at once) and the like pass through
        own = exc if exc is not None else (ctx.pending[0] if ctx.pending else None)
        # The lowest rank that failed, or world_size if none did: one all-reduce.
        t = torch.tensor([ctx.rank if own is not None else ctx.world_size], dtype=torch.int64, device=ctx.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        src = int(t.item())
        if src == ctx.world_size:
            return False
        payload = [_describe(own) if ctx.rank == src else None]
        dist.broadcast_object_list(payload, src=src, device=ctx.device if ctx.device.type == "cuda" else None)
        if own is not None:
            ctx.pending.clear()
            if exc is not None:
                return False  # this process's own exception, with its traceback
            raise own
        raise _rebuild(payload[0], src)


def setup(device: torch.device, batch_size: int) -> Context:
    """Join the process group torchrun describes (if any) and pick this process's device.

    Args:
        device: the run's resolved device (``train.device``); a CUDA device without an index
            becomes ``cuda:LOCAL_RANK`` in a data-parallel run.
        batch_size: the global batch (``train.batch_size``); must be divisible by the number
            of processes.

    The process group is created with ``init_method="env://"`` (``MASTER_ADDR``,
    ``MASTER_PORT``) unless the caller already created one, which is then used as is. A group
    created here is destroyed when the interpreter exits.
    """
    if dist.is_available() and dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
        local = _env_int("LOCAL_RANK", rank)
    else:
        world, rank, local = launched_world()
    if world == 1:
        return Context(device)
    if not dist.is_available():
        raise ConfigError(f"WORLD_SIZE={world} but this PyTorch build has no torch.distributed; run one process")
    if batch_size % world:
        raise ConfigError(
            f"train.batch_size={batch_size} (the global batch) does not split evenly over {world} processes; "
            f"use a multiple of {world}, e.g. train.batch_size={max(world, batch_size // world * world)}"
        )
    if device.type == "cuda":
        if device.index is not None:
            raise ConfigError(
                f"train.device={device} pins one GPU but {world} processes were launched; "
                "use train.device=auto or cuda (each process takes cuda:LOCAL_RANK)"
            )
        if local >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK={local} but only {torch.cuda.device_count()} CUDA devices are visible; "
                "lower --nproc_per_node or set CUDA_VISIBLE_DEVICES"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ConfigError(
            f"data-parallel training runs on CUDA (nccl) or the CPU (gloo), not {device.type}; set train.device"
        )
    if not dist.is_initialized():
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
        if missing:
            raise ConfigError(f"WORLD_SIZE={world} is set but {' and '.join(missing)} are not; launch with torchrun")
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://", world_size=world, rank=rank)
        _OWNED.append(True)
        atexit.register(_destroy)
    return Context(device, world, rank, local, str(dist.get_backend()))


#: set when :func:`setup` created the process group (torchrun), so that it is this module's to end
_OWNED: list[bool] = []


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def finish() -> None:
    """After a run ended normally: every process meets, then the group :func:`setup` created is
    destroyed, together. Tearing down gloo while another process still had the last collective in
    flight aborted a process at exit now and then ("terminate called without an active
    exception": torchrun then reported a finished run as failed). A group the caller created is
    left to the caller."""
    if _OWNED and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        _OWNED.clear()


# ---------------------------------------------------------------------------- gradients
def _average_grads_hook(world: int) -> Callable:
    def hook(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return
        # One flat buffer, one collective. Every process runs the same code on the same
        # partition schedule, so the set of parameters with a gradient is the same everywhere.
        flat = torch.cat([g.reshape(-1) for g in grads])  # (P,)
        dist.all_reduce(flat)
        flat.div_(world)
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset : offset + n].view_as(g))
            offset += n

    return hook


def average_gradients(ctx: Context, optimizers: Iterable[torch.optim.Optimizer]) -> list:
    """Average every optimiser's gradients over processes right before each of its steps.

    Registered as an optimiser step pre-hook, so it also covers steps a model takes itself
    (FactorVAE's discriminator). Returns the hook handles (empty when not distributed).
    """
    if not ctx.enabled:
        return []
    return [opt.register_step_pre_hook(_average_grads_hook(ctx.world_size)) for opt in optimizers]


# ---------------------------------------------------------------------------- random draws
_DRAWS = ("randn", "rand", "randint")


def _size_of(name: str, args: tuple, kwargs: dict) -> tuple[tuple[int, ...], Callable[[tuple[int, ...]], tuple]] | None:
    """The requested size and a function that rebuilds ``args`` with another size."""
    if "size" in kwargs:
        return tuple(kwargs["size"]), lambda s: args
    if name == "randint":
        # randint(high, size) or randint(low, high, size)
        if args and isinstance(args[-1], (tuple, list, torch.Size)):
            return tuple(args[-1]), lambda s: (*args[:-1], s)
        return None
    if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)):
        return tuple(args[0]), lambda s: (s,)
    if args and all(isinstance(a, int) for a in args):
        return tuple(args), lambda s: tuple(s)
    return None


class ShardedDraws:
    """Inside this context, ``torch.randn``/``rand``/``randint`` with ``generator=`` the run's
    generator draw for the global batch and return this process's rows.

    A draw of size ``(b, ...)`` becomes a draw of ``(world * b, ...)`` from which rows
    ``[rank * b, (rank + 1) * b)`` are kept: exactly the numbers a single process drawing for
    the global batch would give those samples, and the generator advances by the same amount
    on every process (so its checkpointed state is the single-process one). Calls with any
    other generator, or none, pass through untouched.

    The three functions are swapped in the ``torch`` namespace for the duration (and put back
    on exit), so the draws must look them up at call time, as every model here does
    (``torch.randn(shape, generator=g)``). A ``TorchFunctionMode`` would catch every other
    spelling too, but it runs Python for each of the ~300 torch calls of an MLP step (measured:
    about 14 us each on this loaded 2-core machine), which would cost a GPU step more than its
    kernels; the swap costs three wrapper calls per step.
    """

    def __init__(self, generator: torch.Generator, rank: int, world: int) -> None:
        self.generator, self.rank, self.world = generator, rank, world
        self._saved: dict[str, Callable] = {}

    def __enter__(self) -> ShardedDraws:
        self._saved = {name: getattr(torch, name) for name in _DRAWS}
        for name, func in self._saved.items():
            setattr(torch, name, self._sharded(name, func))
        return self

    def __exit__(self, *exc) -> None:
        for name, func in self._saved.items():
            setattr(torch, name, func)
        self._saved = {}

    def _sharded(self, name: str, func: Callable) -> Callable:
        @functools.wraps(func)
        def draw(*args, **kwargs):
            if kwargs.get("generator") is self.generator and "out" not in kwargs:
                found = _size_of(name, args, kwargs)
                if found is not None and len(found[0]) >= 1:
                    size, rebuild = found
                    b = size[0]
                    full = (b * self.world, *size[1:])
                    kw = dict(kwargs, size=full) if "size" in kwargs else kwargs
                    out = func(*rebuild(full), **kw)  # (world * b, ...)
                    return out[self.rank * b : (self.rank + 1) * b]
            return func(*args, **kwargs)

        return draw


# ---------------------------------------------------------------------------- batch norm
class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the backward sums the incoming gradients over processes too."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class _SyncBatchNormMixin:
    """Batch norm whose training-mode statistics are those of the global batch.

    The per-channel sum and sum of squares (accumulated in float64, as PyTorch's CPU batch
    norm accumulates) are all-reduced by a differentiable sum whose backward all-reduces the
    incoming gradient: each process then receives the gradient of the *sum over processes* of the
    losses with respect to its own inputs, which is what averaging the parameter gradients
    needs. Normalisation uses the biased variance, the running variance the unbiased one
    (global count), as ``nn.BatchNorm`` does. Eval mode, or a run of one process, is plain
    batch norm. The parameters, buffers and ``state_dict`` keys are the ordinary ones.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        use_batch = self.training or self.running_mean is None  # type: ignore[attr-defined]
        if world == 1 or not use_batch:
            return super().forward(x)  # type: ignore[misc]
        self._check_input_dim(x)  # type: ignore[attr-defined]
        factor = 0.0 if self.momentum is None else self.momentum  # type: ignore[attr-defined]
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:  # type: ignore[attr-defined]
            self.num_batches_tracked.add_(1)  # type: ignore[attr-defined]
            if self.momentum is None:  # type: ignore[attr-defined]
                factor = 1.0 / float(self.num_batches_tracked)  # type: ignore[attr-defined]
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        count = x.numel() // c * world  # the global number of values per channel
        xd = x.to(torch.float64)  # (B, C, ...)
        stats = torch.cat([xd.sum(dims), (xd * xd).sum(dims)])  # (2C,)
        stats = _AllReduceSum.apply(stats)  # (2C,) summed over processes, differentiable
        mean = stats[:c] / count  # (C,)
        var = (stats[c:] / count - mean * mean).clamp_min(0.0)  # (C,) biased
        if self.training and self.running_mean is not None:  # type: ignore[attr-defined]
            with torch.no_grad():
                unbiased = var * (count / max(count - 1, 1))  # (C,)
                self.running_mean.mul_(1.0 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)  # type: ignore[attr-defined]
                self.running_var.mul_(1.0 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)  # type: ignore[attr-defined]
        shape = (1, c) + (1,) * (x.dim() - 2)
        invstd = torch.rsqrt(var + self.eps).to(x.dtype)  # type: ignore[attr-defined]  # (C,)
        y = (x - mean.to(x.dtype).view(shape)) * invstd.view(shape)  # (B, C, ...)
        if self.weight is not None:  # type: ignore[attr-defined]
            y = y * self.weight.view(shape) + self.bias.view(shape)  # type: ignore[attr-defined]
        return y


class SyncBatchNorm1d(_SyncBatchNormMixin, nn.BatchNorm1d):
    """:class:`nn.BatchNorm1d` with global-batch statistics in a data-parallel run."""


class SyncBatchNorm2d(_SyncBatchNormMixin, nn.BatchNorm2d):
    """:class:`nn.BatchNorm2d` with global-batch statistics in a data-parallel run."""


class SyncBatchNorm3d(_SyncBatchNormMixin, nn.BatchNorm3d):
    """:class:`nn.BatchNorm3d` with global-batch statistics in a data-parallel run."""


_SYNC_CLASS = {nn.BatchNorm1d: SyncBatchNorm1d, nn.BatchNorm2d: SyncBatchNorm2d, nn.BatchNorm3d: SyncBatchNorm3d}


def convert_sync_batchnorm(module: nn.Module) -> int:
    """Turn every ``nn.BatchNorm{1,2,3}d`` in ``module`` into its synchronised subclass, in place.

    Only the class changes: parameters (so optimisers built before or after), buffers and
    ``state_dict`` keys stay as they are, and ``isinstance(m, nn.BatchNorm1d)`` still holds.
    Returns the number of layers converted.
    """
    n = 0
    for m in module.modules():
        cls = _SYNC_CLASS.get(type(m))
        if cls is not None:
            m.__class__ = cls
            n += 1
    return n


# ---------------------------------------------------------------------------- non-finite losses
class FiniteGuard:
    """Stops training at the first step whose loss is not finite, on every process at once.

    ``fail(terms, total, step)`` is the trainer's reporter: it raises when ``total`` is not
    finite, naming the first non-finite term and the step (and the last good checkpoint).

    Two modes:

    * ``every_step=True`` (the CPU): :meth:`observe` checks each step before the backward
      pass, so no update with a non-finite loss is ever taken. In a data-parallel run the loss
      terms are first averaged over processes (one small all-reduce), so every process sees
      the same values and all stop together.
    * ``every_step=False`` (CUDA): checking each step would make the host wait for the device
      every step. :meth:`observe` instead records, on the device and without synchronising,
      the first step whose total is not finite together with that step's terms; :meth:`check`
      (called by the trainer at log steps and before every checkpoint, where it synchronises
      anyway) reads the record and reports *that* step. Steps after the bad one are wasted but
      nothing they produce is written: the checkpoint that follows is refused, so the last
      good checkpoint is kept. In a data-parallel run the records of all processes are
      gathered and the earliest step wins.
    """

    def __init__(
        self, ctx: Context, every_step: bool, fail: Callable[[dict[str, torch.Tensor], torch.Tensor, int], None]
    ) -> None:
        self.ctx = ctx
        self.every_step = every_step
        self.fail = fail
        self.names: tuple[str, ...] | None = None
        self.first: torch.Tensor | None = None  # () int64: first bad step, -1 while all finite
        self.values: torch.Tensor | None = None  # (T + 1,) the terms and total at that step

    def observe(self, step: int, terms: dict[str, torch.Tensor], total: torch.Tensor) -> None:
        """Called once per step with the step's loss terms and total (before the backward pass)."""
        if self.every_step:
            if self.ctx.enabled:
                avg = self.ctx.mean_over_ranks({**{f"t{i}": v for i, v in enumerate(terms.values())}, "total": total})
                terms = {name: avg[f"t{i}"] for i, name in enumerate(terms)}
                total = avg["total"]
            self.fail(terms, total, step)
            return
        names = tuple(terms)
        if self.names is not None and names != self.names:
            self.check()  # the set of terms changed: settle the old record first
        if self.names != names or self.first is None:
            self.names = names
            self.first = torch.full((), -1, dtype=torch.int64, device=total.device)
            self.values = torch.zeros(len(names) + 1, dtype=torch.float32, device=total.device)
        vals = torch.stack(
            [v.detach().to(torch.float32) for v in terms.values()] + [total.detach().to(torch.float32)]
        )  # (T+1,)
        new = (~torch.isfinite(vals[-1])) & (self.first < 0)  # ()
        self.first = torch.where(new, step, self.first)  # ()
        self.values = torch.where(new, vals, self.values)  # (T+1,)

    def check(self) -> None:
        """Report a recorded non-finite step (deferred mode); synchronises with the device."""
        if self.every_step or self.first is None or self.names is None:
            return
        record = torch.cat([self.first.to(torch.float64).view(1), self.values.to(torch.float64)])  # (T+2,)
        if self.ctx.enabled:
            rows = [torch.empty_like(record) for _ in range(self.ctx.world_size)]
            dist.all_gather(rows, record)
            bad = [r for r in rows if r[0].item() >= 0]
            record = min(bad, key=lambda r: r[0].item()) if bad else rows[0]
        step = int(record[0].item())
        if step < 0:
            return
        vals = record[1:].to(torch.float32).cpu()  # (T+1,)
        self.fail({n: vals[i] for i, n in enumerate(self.names)}, vals[-1], step)
