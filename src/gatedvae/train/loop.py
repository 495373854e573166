"""The training loop: a plain PyTorch loop in steps, with exact resume.

One call, :func:`train`, runs a config in a run directory::

    RUN/config.yaml          the resolved config (rebuilds the run exactly)
    RUN/status.json          running / finished / failed, with the last step
    RUN/checkpoints/         step-000001000.safetensors ... (atomic, no pickle)
    RUN/metrics.jsonl        one JSON line of mean loss terms per log interval
    RUN/tensorboard/         scalars (images: a callback, gatedvae.callbacks)
    RUN/summary.json         final numbers (written when the run finishes)

Per step: pick the active partition (gated runs), draw a batch of pairs from its sampler
with the run's numpy generator (:mod:`.batch`), gather the images on the device, take one Adam
step and the auxiliary step, e.g. FactorVAE's discriminator (:func:`.step.training_step`). The
whole dataset sits in memory (on the GPU when there is one); there is no DataLoader and no
per-item Python. On CUDA a step never waits for the device (loss sums and the NaN record are
read at log and checkpoint steps). Launched by ``torchrun`` the same loop trains data-parallel
on the global batch (:mod:`gatedvae.train.distributed`). Evaluation and figures are not part of
the loop: callers attach them as callbacks (:mod:`.callbacks`).

Exact resume: everything random comes from two generators (numpy for data, torch for the
reparameterisation noise) whose states are checkpointed with the parameters and optimiser
moments, and the partition schedule is a function of the step (or of the numpy generator).
A run stopped at any point and resumed ends bitwise equal to an uninterrupted one on the
same machine (the running sums of the log interval in progress are checkpointed too, so the
next log line is the same as well).

One trainer per run: :func:`train` holds the run's lock (``RUN/.lock``,
:mod:`gatedvae.runlock`) from before it writes anything to its end; a second trainer, or a
sweep working on the run, is refused with one line naming the holder (pid, host, since when).

Stopping: on SIGINT (Ctrl-C) or SIGTERM (a scheduler's pre-emption) the loop finishes the step
it is in, writes a checkpoint, sets ``status.json`` to ``stopped`` and raises
:class:`TrainingStopped` (``gatedvae train`` prints ``interrupted at step N; checkpoint written;
resume with: gatedvae train --resume RUN`` and exits 130 or 143). The same signal a second
time, half a second later or more, stops at once (the steps since the last checkpoint are then
lost). In a data-parallel run the processes agree on the stop at the next log step
(``train.log_every``) and all stop there.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import (
    checkpoint_device,
    checkpoint_name,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    read_header,
    save_checkpoint,
)
from ..config import Config, save_config, to_dict
from ..data import FactorDataset
from ..errors import ConfigError, GatedVAEError
from ..progress import progress_bar
from ..run import Prepared, load_run_config, prepare, resolve_device
from ..runlock import RunBusy, RunLock, acquire, busy_message, holder
from . import distributed
from .batch import Batcher
from .callbacks import Callback, RunInfo
from .device import determinism_relaxed, device_settings, is_nondeterminism_error
from .ensemble import (
    check_members,
    check_run_dirs,
    check_same_start,
    choose_strategy,
    ensemble_info,
    make_stepper,
)
from .files import (
    append_metrics,
    check_run_dir_for_new,
    last_metrics,
    open_tensorboard,
    read_status,
    truncate_metrics,
    write_status,
    write_summary,
)
from .step import (
    Optimizers,
    Precision,
    RunningSums,
    TrainingDiverged,
    check_finite,
    check_precision,
    make_generators,
    make_optimizers,
)

__all__ = [
    "train",
    "train_ensemble",
    "TrainingDiverged",
    "TrainingStopped",
    "ResumeDeviceError",
    "PER_STEP_CHECK_DEVICES",
]

#: Devices whose loss is checked for NaN every step (a host read). Elsewhere (CUDA) the check is
#: a device-side record read at log and checkpoint steps, so a step never waits for the device
#: (distributed.FiniteGuard); tests/test_sync.py empties this to run that path on the CPU.
PER_STEP_CHECK_DEVICES: tuple[str, ...] = ("cpu",)


def train(
    config: Config | None = None,
    run_dir: str | os.PathLike = "runs/run",
    resume: bool = False,
    quiet: bool = False,
    dataset: FactorDataset | None = None,
    tensorboard: bool = True,
    stop_after: int | None = None,
    callbacks: Sequence[Callback] = (),
    other_device: bool = False,
) -> dict[str, Any]:
    """Train a config in ``run_dir`` (or resume the run there); returns the summary.

    Args:
        config: the run's config; None with ``resume`` (read from the run directory).
        run_dir: where everything is written. A new run needs an empty or absent directory.
        resume: continue from the latest complete checkpoint in ``run_dir``.
        quiet: no progress bar.
        dataset: an already built dataset (saves rebuilding it; must match ``config.data``).
        tensorboard: write TensorBoard scalars (and hand callbacks the writer for images).
        stop_after: stop (as if killed, after checkpointing) once this step is reached; for tests.
        callbacks: :class:`~gatedvae.train.callbacks.Callback` objects called on the main process
            (``gatedvae.callbacks.standard_callbacks()``: TensorBoard images and ``train.evaluate``).
        other_device: with ``resume``, continue a run checkpointed on another kind of device (CPU
            <-> CUDA) on this one: parameters, optimiser moments and the data stream carry over,
            the model's random draws are re-seeded from the step (not bitwise equal to an
            uninterrupted run; one line on stderr says so). Without it such a resume is refused.

    Raises:
        ConfigError: ``train.precision`` is one this device cannot compute in; nothing was written.
        ResumeDeviceError: resuming a run checkpointed on another kind of device, without
            ``other_device``; nothing was written.
        RunBusy: another process trains the run (it holds ``RUN/.lock``); nothing was written.
        TrainingStopped: SIGINT or SIGTERM arrived; the step in progress was finished and
            checkpointed and ``status.json`` says ``stopped`` (resume with ``resume=True``).
        TrainingDiverged: a loss term was not finite (``status.json`` says ``failed``).
    """
    runs = _Runs([config], [Path(run_dir)], resume, quiet, tensorboard, stop_after, other_device, "loop")
    return _train_runs(runs, dataset, callbacks)[0]


def train_ensemble(
    configs: Sequence[Config | None],
    run_dirs: Sequence[str | os.PathLike],
    resume: bool = False,
    quiet: bool = False,
    dataset: FactorDataset | None = None,
    tensorboard: bool = True,
    stop_after: int | None = None,
    callbacks: Sequence[Callback] = (),
    strategy: str = "auto",
) -> list[dict[str, Any]]:
    """Train K runs of one network shape together, in one process and in lockstep; returns each
    member's summary, in order (:mod:`gatedvae.train.ensemble`).

    Each member is an ordinary run in its own directory (config, checkpoints in the same format,
    metrics, status, lock): it can be resumed alone, evaluated and encoded like any run. The members
    share the dataset and the process; each keeps its own seed, generators, pair draws,
    hyperparameters and gating, so a member's trajectory does not depend on the others.

    Args:
        configs: the members' configs (None each with ``resume``); they must share
            :func:`~gatedvae.train.ensemble.ensemble_key` (model, network shape, data, batch size,
            steps, device, precision).
        run_dirs: one new (or, with ``resume``, stopped) run directory per member.
        strategy: how a step is computed (:data:`~gatedvae.train.ensemble.STRATEGIES`): ``loop``
            (each member's own step: bitwise the member trained alone), ``stacked`` (the members'
            networks batched, one vectorised Adam) or ``auto`` (stacked where the models allow it, on
            CUDA and on a glibc CPU: :func:`~gatedvae.train.ensemble.choose_strategy`).

    A member whose loss stops being finite is set ``failed`` (its last good checkpoint kept; its
    summary has ``status: failed`` and the ``error``) and leaves the ensemble; the others go on.
    The other errors are those of :func:`train`, for the ensemble as a whole.
    """
    if not configs or len(configs) != len(run_dirs):
        raise ConfigError(
            f"an ensemble needs one run directory per config ({len(configs)} configs, {len(run_dirs)} directories)"
        )
    runs = _Runs(list(configs), [Path(d) for d in run_dirs], resume, quiet, tensorboard, stop_after, False, strategy)
    return _train_runs(runs, dataset, callbacks)


@dataclass(frozen=True)
class _Runs:
    """What a call of :func:`train` or :func:`train_ensemble` asks for."""

    configs: list[Config | None]
    run_dirs: list[Path]
    resume: bool
    quiet: bool
    tensorboard: bool
    stop_after: int | None
    other_device: bool
    strategy: str

    @property
    def solo(self) -> bool:
        """One run trained by :func:`train` (its errors are raised, not recorded per member)."""
        return len(self.run_dirs) == 1 and self.strategy == "loop"


def _train_runs(runs: _Runs, dataset: FactorDataset | None, callbacks: Sequence[Callback]) -> list[dict[str, Any]]:
    """Check, lock and prepare the runs, then train them (:func:`_train`)."""
    resume = runs.resume
    check_run_dirs(runs.run_dirs)
    configs = [_run_config(c, d, resume) for c, d in zip(runs.configs, runs.run_dirs, strict=True)]
    if not runs.solo:
        check_members(configs, runs.run_dirs)
    cfg = configs[0].train
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _set_up_and_train(runs, configs, dataset, callbacks)
    finally:
        torch.set_num_threads(threads)  # train.threads is the run's, not the caller's process's


def _set_up_and_train(
    runs: _Runs, configs: list[Config], dataset: FactorDataset | None, callbacks: Sequence[Callback]
) -> list[dict[str, Any]]:
    resume, cfg = runs.resume, configs[0].train
    device = _training_device(cfg.device, runs.run_dirs[0], resume, runs.other_device)
    check_precision(cfg.precision, device)  # before anything is set up or written
    strategy = choose_strategy(runs.strategy, configs, device)
    for run_dir in runs.run_dirs if resume else ():
        found = latest_checkpoint(run_dir / "checkpoints")
        if found is not None:  # refuse a resume on another kind of device before building anything
            _check_resume_device(run_dir, found[1], device, runs.other_device)
    # Launched by torchrun: join the process group; only rank 0 writes (train/distributed.py).
    ctx = distributed.setup(device, cfg.batch_size)
    if ctx.enabled and not runs.solo:
        raise ConfigError(
            "an ensemble trains in one process; launch it without torchrun (or train its runs one by one)"
        )
    locks: list[RunLock | None] = []
    try:
        if resume:  # a new run is locked once it is prepared
            for run_dir in runs.run_dirs:
                locks.append(_lock_run(run_dir, ctx))
        with device_settings(ctx.device, cfg.precision, cfg.deterministic) as env:
            preps = []
            for config in configs:  # the members share one dataset
                prep = prepare(config, device=ctx.device, dataset=dataset, progress=not runs.quiet and ctx.is_main)
                dataset = prep.dataset
                preps.append(prep)
            if not resume:  # (lock is None on every process but rank 0: test resume, not lock)
                for run_dir in runs.run_dirs:
                    locks.append(_lock_run(run_dir, ctx, new=True))
            session = _Session(resume, runs.quiet, runs.tensorboard, runs.stop_after, runs.other_device, env)
            result = _train(configs, preps, runs.run_dirs, ctx, session, callbacks, strategy, runs.solo)
        distributed.finish()  # torchrun: every process ends the group together
        return result
    finally:
        for lock in locks:
            if lock is not None and ctx.is_main:
                lock.release()


def _check_resume_device(run_dir: Path, path: Path, here: torch.device, other_device: bool) -> str:
    """The device checkpoint ``path`` was written on; :class:`ResumeDeviceError` when it is another
    kind than ``here`` (CPU vs CUDA) and ``other_device`` is not given. ``cuda:0`` -> ``cuda:1``
    is the same kind: the CUDA generator's state (Philox seed and offset) moves between GPUs."""
    recorded = checkpoint_device(path, read_header(path))
    if torch.device(recorded).type == here.type or other_device:
        return recorded
    fix = (
        f"resume it on the CPU with: CUDA_VISIBLE_DEVICES= gatedvae train --resume {run_dir}"
        if recorded == "cpu"
        else "resume it on a machine with a GPU"
    )
    raise ResumeDeviceError(
        f"run '{run_dir}' was checkpointed on {recorded} but would resume on {here}; exact resume needs the same "
        f"kind of device: {fix}, or continue on {here} with --resume-on-other-device "
        "(not bitwise equal to an uninterrupted run)"
    )


class ResumeDeviceError(GatedVAEError):
    """A run checkpointed on one kind of device (CPU, CUDA) resumed on the other without opting in."""


def _training_device(name: str, run_dir: Path, resume: bool, other_device: bool) -> torch.device:
    """``train.device`` resolved here; on resume a CUDA device this machine lacks is refused in one
    line (the config cannot be changed on resume), or with ``other_device`` replaced by ``auto``'s."""
    try:
        return resolve_device(name)
    except ConfigError:
        if not resume:
            raise
        if other_device:
            return resolve_device("auto")
        raise ResumeDeviceError(
            f"run '{run_dir}' trains on train.device={name} but CUDA is not available here; resume it on a "
            f"machine with a GPU, or continue it here with gatedvae train --resume {run_dir} --resume-on-other-device "
            "(not bitwise equal to an uninterrupted run)"
        ) from None


@dataclass(frozen=True)
class _Session:
    """How this call of :func:`train` runs the loop (the arguments besides the run itself)."""

    resume: bool
    quiet: bool
    tensorboard: bool
    stop_after: int | None
    other_device: bool
    environment: dict[str, Any]


class _Member:
    """One run of the loop: its directory and prepared model, its generators, optimisers,
    precision, checkpoints, log, callbacks and batcher (a solo run is an ensemble of one)."""

    def __init__(
        self,
        index: int,
        config: Config,
        prep: Prepared,
        run_dir: Path,
        ctx: distributed.Context,
        session: _Session,
        callbacks: Sequence[Callback],
        ensemble: dict[str, Any] | None,
    ) -> None:
        cfg = config.train
        self.index, self.config, self.prep, self.run_dir = index, config, prep, run_dir
        if ctx.enabled:
            distributed.convert_sync_batchnorm(prep.model)
        self.rng, self.gen = make_generators(cfg.seed, prep.device)
        self.optimizers = make_optimizers(prep.model, cfg.lr, prep.device, finetune=cfg.finetune_steps > 0)
        self.precision = Precision(cfg.precision, prep.device)
        distributed.average_gradients(ctx, self.optimizers.all().values())
        self.ensemble = ensemble
        self.ckpt = _Checkpoints(
            run_dir / "checkpoints", prep, self.optimizers, self.rng, self.gen, ctx, self.precision, session, ensemble
        )
        self.start = self.ckpt.restore() if session.resume else 0
        self.hooks = list(callbacks) if ctx.is_main else []
        self.batcher = Batcher(prep)
        self.batcher.shard = ctx.batch_shard(cfg.batch_size)
        self.log: _Progress | None = None
        self.run: RunInfo | None = None
        self.failed: str | None = None  # the error of a member that left the ensemble

    def open(self, ctx: distributed.Context, session: _Session, total: int, bar: str | None) -> None:
        """Write the run directory's start (config or truncated metrics, status) and open the log."""
        _open_run_dir(self.run_dir, self.config, session.resume, self.ckpt, ctx, total, self.start)
        quiet = session.quiet or bar is None
        self.log = _Progress(
            self.run_dir, self.prep, ctx, self.ckpt, self.start, total, session.tensorboard and ctx.is_main, quiet, bar
        )
        self.ckpt.follow(self.log.sums)  # the log interval in progress is checkpointed and restored with the rest
        self.run = RunInfo(self.run_dir, self.prep, self.log.writer, session.quiet)


def _train(
    configs: list[Config],
    preps: list[Prepared],
    run_dirs: list[Path],
    ctx: distributed.Context,
    session: _Session,
    callbacks: Sequence[Callback],
    strategy: str,
    solo: bool,
) -> list[dict[str, Any]]:
    """The loop of :func:`train` and :func:`train_ensemble`, with the runs' locks held: every
    member takes step ``s`` before any takes step ``s + 1``."""
    cfg = configs[0].train  # what the members share (ensemble_key): steps, batch, device, precision
    total = cfg.steps + cfg.finetune_steps
    info = ensemble_info(run_dirs, strategy) if not solo else None
    members = [
        _Member(k, c, p, d, ctx, session, callbacks, None if info is None else {**info, "index": k})
        for k, (c, p, d) in enumerate(zip(configs, preps, run_dirs, strict=True))
    ]
    start = check_same_start([m.start for m in members], run_dirs)
    ctx.barrier()  # every process has checked the run directory before rank 0 writes to it
    bar = run_dirs[0].name if solo else f"{len(members)} runs"
    for m in members:
        m.open(ctx, session, total, bar if m.index == 0 else None)
    stepper = make_stepper(strategy, members, solo)
    for m in members:
        m.prep.model.train()
    alive = list(members)
    step, phase = start, None

    def fail(m: _Member, exc: TrainingDiverged, at: int) -> None:
        """A member's loss was not finite: in a solo run the error ends the run (raised); in an
        ensemble the member is set failed and leaves, the others go on."""
        if solo:
            raise exc
        m.failed = str(exc)
        if ctx.is_main:
            write_status(m.run_dir, "failed", at, total, error=str(exc))
        print(f"{m.run_dir}: {exc}; the other members go on", file=sys.stderr)

    try:
        with (
            _StopOnSignal() as stop,
            ctx.shard_draws(members[0].gen),
        ):  # each process takes its rows of the global noise
            while step < total and alive:
                finetune = step >= cfg.steps
                if finetune != phase:
                    stepper.set_finetune(finetune)
                    phase = finetune
                batches = stepper.draw(alive, step, finetune)
                results = stepper.step(alive, batches, step, finetune)
                for m, res in zip(alive, results, strict=True):
                    if isinstance(res, TrainingDiverged):
                        fail(m, res, step)
                step += 1
                logged = step % cfg.log_every == 0 or step == total
                saved = step % cfg.checkpoint_every == 0 or step == total
                live = [(m, r) for m, r in zip(alive, results, strict=True) if m.failed is None]
                if saved or any(h.uses_model(m.run, step) for m, _ in live for h in m.hooks):
                    stepper.sync()  # the members' own modules and optimisers hold the current values
                for m, terms in live:
                    try:
                        m.log.add(terms)
                        if logged:
                            m.log.write(step, finetune)
                        for hook in m.hooks:
                            with ctx.defer_errors():  # rank 0 only: a failure stops every process at the next log step
                                hook.on_step(m.run, step)
                        if saved:
                            m.ckpt.save(step, total)
                    except TrainingDiverged as exc:  # CUDA: the deferred record, read at log and checkpoint steps
                        fail(m, exc, step)
                members[0].log.advance()
                if any(m.failed for m in alive):
                    stepper.drop([m for m in alive if m.failed])
                    alive = [m for m in alive if m.failed is None]
                if alive and step < total and stop.requested(ctx, logged):
                    if not saved:
                        stepper.sync()
                    for m in alive:
                        if not saved:
                            m.ckpt.save(step)
                        if ctx.is_main:
                            write_status(m.run_dir, "stopped", step, total, signal=signal.Signals(stop.signum).name)
                    raise TrainingStopped([m.run_dir for m in alive], step, stop.signum)
                if alive and session.stop_after is not None and session.stop_after <= step < total:
                    stepper.sync()
                    for m in alive:
                        m.ckpt.save(step)
                    return [{"status": "stopped", "step": step} if m.failed is None else _failed(m) for m in members]
    except TrainingDiverged as exc:
        if ctx.is_main:
            write_status(run_dirs[0], "failed", step, total, error=str(exc))
        raise
    except RuntimeError as exc:
        if not is_nondeterminism_error(exc):
            raise
        error = GatedVAEError(
            f"step {step}: {str(exc).splitlines()[0].split(', but you set')[0]} on {preps[0].device} "
            f"(train.deterministic=true); train a new run with train.deterministic=false (no exact resume on CUDA)"
        )
        if ctx.is_main:
            for m in alive:
                write_status(m.run_dir, "failed", step, total, error=str(error))
        raise error from None
    except KeyboardInterrupt as exc:
        if not isinstance(exc, TrainingStopped) and ctx.is_main:  # stopped at once: back to the last checkpoint
            for m in alive:
                write_status(m.run_dir, "stopped", m.ckpt.last, total)
        raise
    finally:
        for m in members:
            if m.log is not None:
                m.log.close()
    return [
        _failed(m) if m.failed else _finish(m.run, ctx, start, total, m.log, m.hooks, session.environment, m.ensemble)
        for m in members
    ]


def _failed(m: _Member) -> dict[str, Any]:
    """The summary :func:`train_ensemble` returns for a member that left the ensemble."""
    return {"status": "failed", "error": m.failed, "run_dir": str(m.run_dir)}


class TrainingStopped(KeyboardInterrupt):
    """Training stopped by SIGINT or SIGTERM after a complete step, with a checkpoint of that step
    written and ``status.json`` set to ``stopped``. A KeyboardInterrupt, so code that lets Ctrl-C
    through lets this through too; ``exit_code`` is the shell's 128 + signal (130, 143)."""

    def __init__(self, run_dir: Path | Sequence[Path], step: int, signum: int) -> None:
        dirs = [Path(run_dir)] if isinstance(run_dir, (str, os.PathLike)) else [Path(d) for d in run_dir]
        self.run_dirs, self.step, self.signum = dirs, int(step), int(signum)
        self.run_dir = dirs[0]
        self.resume_command = "gatedvae train --resume " + " ".join(str(d) for d in dirs)
        super().__init__(str(self))

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        return f"interrupted at step {self.step}; checkpoint written; resume with: {self.resume_command}"


class _StopOnSignal:
    """While the loop runs: SIGINT and SIGTERM ask it to stop after the current step.

    Installed only in the main thread and only over handlers that are not ``SIG_IGN`` (a sweep's
    workers ignore SIGINT: their parent decides). The same signal a second time (half a second or
    more after the first) runs the previous handler (Ctrl-C twice: KeyboardInterrupt now; SIGTERM
    twice: terminate). Handlers are restored on exit.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    #: A repeat of the signal within this many seconds is the same stop, not a second one:
    #: under torchrun a terminal's Ctrl-C reaches every worker directly and again, forwarded by
    #: the agent, milliseconds later.
    REPEAT_WINDOW = 0.5

    def __init__(self) -> None:
        self.signum: int | None = None
        self.first = 0.0
        self.saved: dict[int, Any] = {}

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                previous = signal.getsignal(sig)
                if previous is signal.SIG_IGN or previous is None:
                    continue
                self.saved[sig] = previous
                signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self.saved.items():
            signal.signal(sig, previous)
        self.saved = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum, self.first = signum, time.monotonic()
            return
        if signum != self.signum or time.monotonic() - self.first < self.REPEAT_WINDOW:
            return  # another signal, or the same one forwarded: one stop
        previous = self.saved.get(signum, signal.SIG_DFL)
        self.__exit__()
        if callable(previous):
            previous(signum, frame)  # SIGINT: raises KeyboardInterrupt here
        elif previous == signal.SIG_DFL:
            os.kill(os.getpid(), signum)

    def requested(self, ctx: distributed.Context, logged: bool) -> bool:
        """Whether to stop after this step. In a data-parallel run the processes agree at log
        steps only (where they synchronise anyway), so all stop at the same step."""
        if not ctx.enabled:
            return self.signum is not None
        if not logged:
            return False
        if ctx.any_rank(self.signum is not None):
            if self.signum is None:
                self.signum = signal.SIGTERM
            return True
        return False


def _lock_run(run_dir: Path, ctx: distributed.Context, new: bool = False) -> RunLock | None:
    """Take the run's lock on the main process (all processes raise :class:`RunBusy` if it is
    held elsewhere); a new run's directory is created for it and checked again under the lock."""
    lock, error = None, None
    if ctx.is_main:
        try:
            if new:
                run_dir.mkdir(parents=True, exist_ok=True)
            lock = acquire(run_dir, "training", wait=1.0)
            if lock is None:
                error = RunBusy(busy_message(run_dir, holder(run_dir)))
            elif new:
                check_run_dir_for_new(run_dir)  # another trainer may have started and gone meanwhile
            else:
                _refuse_if_finished(run_dir)  # ... or finished the run meanwhile
        except GatedVAEError as exc:
            error = exc
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        if error is not None and lock is not None:
            lock.release()
            lock = None
    if not ctx.all_ranks(error is None):  # the other processes stop with rank 0
        raise error if error is not None else RunBusy(busy_message(run_dir))
    return lock


def _run_config(config: Config | None, run_dir: Path, resume: bool) -> Config:
    """The config to train: the saved one when resuming (a given one must equal it)."""
    if not resume:
        if config is None:
            raise GatedVAEError("no config given; pass a config file or --resume RUN_DIR")
        _refuse_if_busy(run_dir)
        check_run_dir_for_new(run_dir)
        return config
    saved = load_run_config(run_dir)
    _refuse_if_busy(run_dir)
    _refuse_if_finished(run_dir)
    if config is not None and to_dict(config) != to_dict(saved):
        raise GatedVAEError(
            f"the config differs from the one saved in '{run_dir}'; resume without a config or start a new run"
        )
    return saved


def _refuse_if_finished(run_dir: Path) -> None:
    status = read_status(run_dir)
    if status.get("status") == "finished":
        raise GatedVAEError(
            f"run '{run_dir}' already finished at step {status.get('step')}; nothing to resume "
            f"(score it with gatedvae evaluate {run_dir}, or train longer in a new run)"
        )


def _refuse_if_busy(run_dir: Path) -> None:
    """Refuse at once (before building anything) a run another process trains. (Data-parallel:
    the processes decide together, after joining the group, in :func:`_lock_run`.)"""
    if distributed.launched_world()[0] > 1:
        return
    info = holder(run_dir) if run_dir.is_dir() else None
    if info is not None:
        raise RunBusy(busy_message(run_dir, info))


def _open_run_dir(run_dir: Path, config: Config, resume: bool, ckpt: _Checkpoints, ctx, total: int, start: int) -> None:
    """Start writing the run directory: a new run's directory and config, or a resumed run's
    metrics truncated back to its checkpoint (``start``, restored already); its status."""
    with ctx.main_io():  # rank 0 writes; its failure stops every process here (distributed.py)
        if ctx.is_main:
            if resume:
                truncate_metrics(run_dir / "metrics.jsonl", start)
            else:
                run_dir.mkdir(parents=True, exist_ok=True)
                ckpt.dir.mkdir(exist_ok=True)
                save_config(config, run_dir / "config.yaml")
            ckpt.dir.mkdir(exist_ok=True)
            write_status(run_dir, "running", start, total)


class _Checkpoints:
    """The run's checkpoints: the full training state (parameters, optimiser moments, both
    generators, the step) saved atomically and restored exactly; the watch for non-finite losses."""

    def __init__(
        self,
        directory: Path,
        prep: Prepared,
        optimizers: Optimizers,
        rng: np.random.Generator,
        gen,
        ctx,
        precision: Precision,
        session: _Session,
        ensemble: dict[str, Any] | None = None,
    ) -> None:
        self.dir, self.prep, self.ctx = directory, prep, ctx
        self.ensemble = ensemble
        self.optimizers, self.rng, self.gen = optimizers.all(), rng, gen
        self.precision, self.session = precision, session
        self.last = 0  # the step of the newest checkpoint
        self.sums: RunningSums | None = None
        self.restored_sums: dict[str, Any] | None = None
        self.guard = distributed.FiniteGuard(
            ctx,
            prep.device.type in PER_STEP_CHECK_DEVICES,
            lambda terms, total, s: check_finite(terms, total, s, directory),
        )

    def restore(self) -> int:
        found = latest_checkpoint(self.dir)
        if found is None:
            return 0
        path = found[1]
        here = self.prep.device
        recorded = _check_resume_device(self.dir.parent, path, here, self.session.other_device)
        same_kind = torch.device(recorded).type == here.type
        header = load_checkpoint(path, self.prep.model, self.optimizers, self.gen if same_kind else None)
        self.rng.bit_generator.state = header["numpy_rng"]
        self.precision.load_state_dict(header.get("grad_scaler"))
        self.restored_sums = header.get("log_sums")
        self.last = int(header["step"])
        if not same_kind:
            # The torch generator's state does not carry between the CPU and CUDA: a fresh stream,
            # a function of the run's seed and the step.
            seed = int(np.random.SeedSequence([self.prep.config.train.seed, self.last, 0xDE71CE]).generate_state(1)[0])
            self.gen.manual_seed(seed)
            if self.ctx.is_main:
                print(
                    f"note: run '{self.dir.parent}' was checkpointed on {recorded} and continues on {here} from step "
                    f"{self.last}: parameters, optimiser moments and data carry over, the model's random draws are "
                    "re-seeded; the result is not bitwise equal to an uninterrupted run",
                    file=sys.stderr,
                )
        return self.last

    def follow(self, sums: RunningSums) -> None:
        """Checkpoint ``sums`` (the log interval in progress) with the rest; put back the restored ones."""
        self.sums = sums
        saved = self.restored_sums
        if saved and saved.get("count"):
            for name, (value, dtype) in saved["sums"].items():
                sums.sums[name] = torch.tensor(value, dtype=getattr(torch, dtype), device=self.prep.device)
            sums.count = int(saved["count"])

    def save(self, step: int, total: int | None = None) -> None:
        """Checkpoint ``step`` (and with ``total`` mark it in ``status.json``); old ones beyond
        ``train.keep_checkpoints`` are removed."""
        self.guard.check()  # never checkpoint past a non-finite step (deferred check on CUDA)
        log_sums = None
        if self.sums is not None and self.sums.count:  # mid-interval: the next log line needs them
            means = self.ctx.mean_over_ranks(self.sums.sums)  # collective; exact with one process
            log_sums = {
                "count": self.sums.count,
                "sums": {k: [float(v), str(v.dtype).removeprefix("torch.")] for k, v in means.items()},
            }
        self.last = step
        with self.ctx.main_io():  # rank 0 writes; its failure stops every process here (distributed.py)
            if self.ctx.is_main:
                self._write(step, total, log_sums)

    def _write(self, step: int, total: int | None, log_sums: dict[str, Any] | None) -> None:
        """Rank 0's part of :meth:`save`: the checkpoint file, old ones removed, ``status.json``."""
        config = self.prep.config
        header = {
            "step": step,
            "numpy_rng": self.rng.bit_generator.state,
            "config": to_dict(config),
            "device": str(self.prep.device),  # the generator state is this device's (resume checks it)
            "environment": self.session.environment,
        }
        if log_sums is not None:
            header["log_sums"] = log_sums
        if self.ensemble is not None:
            header["ensemble"] = self.ensemble  # id, index, size, strategy: a member resumes alone as well
        scaler = self.precision.state_dict()
        if scaler is not None:
            header["grad_scaler"] = scaler  # fp16: the loss scale and its growth counter
        save_checkpoint(self.dir / checkpoint_name(step), self.prep.model, self.optimizers, self.gen, header)
        for _, old in list_checkpoints(self.dir)[: -config.train.keep_checkpoints]:
            old.unlink(missing_ok=True)
        if total is not None:
            write_status(self.dir.parent, "running", step, total)


class _Progress:
    """The running sums of the logged terms, ``metrics.jsonl``, TensorBoard scalars and the bar."""

    def __init__(
        self,
        run_dir: Path,
        prep: Prepared,
        ctx,
        ckpt: _Checkpoints,
        start: int,
        total: int,
        tb: bool,
        quiet: bool,
        desc: str | None = None,
    ) -> None:
        self.run_dir, self.ctx, self.ckpt = run_dir, ctx, ckpt
        self.writer = open_tensorboard(run_dir, start) if tb else None
        self.epoch_len = len(prep.dataset) / prep.config.train.batch_size
        self.sums = RunningSums()
        self.started = time.perf_counter()
        self.bar = None
        if not quiet and ctx.is_main:  # a bar on a terminal, a plain line every ~10% in a log file
            self.bar = progress_bar(total=total, initial=start, desc=desc or run_dir.name, unit="step")

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        self.sums.add(terms)

    def write(self, step: int, finetune: bool) -> None:
        """The log line of the steps since the last one: means over them (and over processes)."""
        self.ckpt.guard.check()
        sums = self.ctx.mean_over_ranks(self.sums.sums)  # the global batch's means, identical on every process
        means = {k: float(v) / self.sums.count for k, v in sums.items()}
        bad = [k for k, v in means.items() if not math.isfinite(v)]
        if bad:
            check_finite({k: sums[k] for k in bad}, sums[bad[0]], step, self.ckpt.dir)
        with self.ctx.main_io():  # rank 0 writes; its failure stops every process here (distributed.py)
            if self.ctx.is_main:
                append_metrics(self.run_dir / "metrics.jsonl", step, self.epoch_len, means, finetune)
                if self.writer is not None:
                    for k, v in means.items():
                        self.writer.add_scalar(f"loss/{k}", v, step)
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in means.items() if k != "total"}, refresh=False)
        self.sums.reset()

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.flush()


def _finish(
    run: RunInfo,
    ctx,
    start: int,
    total: int,
    log: _Progress,
    hooks: list[Callback],
    environment: dict[str, Any],
    ensemble: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The summary of a finished run: ``summary.json``, status ``finished``, the callbacks' ``on_end``."""
    elapsed = time.perf_counter() - log.started
    prep = run.prep
    prep.model.eval()
    summary = {
        "status": "finished",
        "steps": total,
        "resumed_from": start,  # the first step of this session (0: trained in one go)
        "model": prep.model.describe(),
        "gated": prep.config.gating.enabled,
        "seconds": round(elapsed, 2),
        "images_per_second": round((total - start) * prep.config.train.batch_size / max(elapsed, 1e-9), 1),
        "final": last_metrics(run.run_dir / "metrics.jsonl") if ctx.is_main else {},
        "precision": prep.config.train.precision,
        **ctx.summary_fields(),
        "environment": environment,  # this session's device, versions and flags
        **({"ensemble": ensemble} if ensemble is not None else {}),
    }
    with ctx.main_io():  # rank 0 writes; every process learns whether it could
        if ctx.is_main:
            write_summary(run.run_dir, summary)
            write_status(run.run_dir, "finished", total, total)
    if not ctx.is_main:
        return summary
    written = json.dumps(summary)
    with determinism_relaxed():  # evaluation at the end is not part of exact resume
        for hook in hooks:
            hook.on_end(run, summary)
    if json.dumps(summary) != written:
        write_summary(run.run_dir, summary)
    if log.writer is not None:
        log.writer.close()
    return summary
