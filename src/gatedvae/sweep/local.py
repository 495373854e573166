"""The local backend: a pool of worker processes, one unit of work at a time per worker.

A unit is one run or one ensemble of runs (``gatedvae sweep run --ensemble K``,
:mod:`gatedvae.sweep.ensemble`). Each worker is a fresh interpreter (``spawn``) that takes units
from the parent over a pipe and calls :func:`gatedvae.sweep.ensemble.run_unit` (for one run:
:func:`gatedvae.sweep.runner.run_one`), with torch's thread count set to its share of the cores.
The pool is written out (rather than ``concurrent.futures``) so that a worker that dies (out of
memory, a segfault, ``kill -9``) costs only its own unit: its runs that are not done are recorded
as failed with the cause, a new worker takes the next unit, and the others carry on.

On Linux each worker asks the kernel to kill it when the parent dies (``PR_SET_PDEATHSIG``), so
killing ``gatedvae sweep run`` (even with SIGKILL) never leaves orphans training in the
background; their runs resume from their checkpoints next time.

GPUs: with N CUDA devices visible to the parent, worker ``i`` gets ``CUDA_VISIBLE_DEVICES`` set
to the parent's device ``i mod N`` (:func:`gpu_slots`), so each worker sees one GPU, as
``cuda:0``, and runs with ``train.device=auto`` (or ``cuda``) train there; ``W`` workers put
``ceil(W / N)`` or ``floor(W / N)`` units on each GPU. A worker that dies is replaced on the same
GPU. Each worker keeps the dataset of its last unit for its next one (:class:`.runner.DatasetSlot`).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from ..io import read_json
from .ensemble import run_unit
from .runner import RECORD, DatasetSlot, inspect_run, outcome_of, record_failure, run_dir_of, settle_record

__all__ = ["run_local", "available_cores", "visible_gpus", "gpu_slots"]

Callback = Callable[[dict[str, Any]], None]


def available_cores() -> int:
    """CPU cores this process may use (its affinity mask, e.g. a SLURM allocation)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def visible_gpus() -> list[str]:
    """The CUDA devices this process sees, as ``CUDA_VISIBLE_DEVICES`` entries for a child process.

    ``torch.cuda.device_count()`` devices (0 without CUDA; counted without initialising CUDA
    here); their names are this process's own ``CUDA_VISIBLE_DEVICES`` entries where it has
    that variable (``"2,3"`` -> ``["2", "3"]``; UUIDs pass through), else ``"0"`` .. ``"N-1"``.
    """
    import torch

    n = int(torch.cuda.device_count())
    if n <= 0:
        return []
    raw = os.environ.get("CUDA_VISIBLE_DEVICES")
    if raw is not None:
        ids = [x.strip() for x in raw.split(",") if x.strip()]
        if len(ids) >= n:
            return ids[:n]  # CUDA stops at the first invalid entry: the first n are the devices
    return [str(i) for i in range(n)]


def gpu_slots(workers: int, gpus: Sequence[str]) -> list[str | None]:
    """``CUDA_VISIBLE_DEVICES`` of each of ``workers`` worker slots: slot ``i`` -> ``gpus[i mod N]``
    (None for every slot when there is no GPU: the workers see what the parent sees)."""
    return [gpus[i % len(gpus)] if gpus else None for i in range(workers)]


def _die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):  # pragma: no cover
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _worker_main(
    conn,
    sweep_dir: str,
    threads: int,
    retry_failed: bool,
    tensorboard: bool,
    strategy: str,
    evaluate: bool,
    parent_pid: int,
    gpu: str | None,
) -> None:
    if gpu is not None:  # before anything touches CUDA: this worker sees that one GPU, as cuda:0
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what Ctrl-C does
    import torch

    torch.set_num_threads(threads)
    datasets = DatasetSlot()  # the last unit's dataset, for the next unit on the same data
    while True:
        try:
            unit = conn.recv()
        except (EOFError, OSError):
            return
        if unit is None:
            return
        try:
            outcomes = run_unit(
                sweep_dir,
                unit,
                threads=threads,
                retry_failed=retry_failed,
                tensorboard=tensorboard,
                datasets=datasets,
                strategy=strategy,
                evaluate=evaluate,
            )
        except KeyboardInterrupt:  # the parent's SIGTERM: the runs checkpointed and stopped; leave quietly
            return
        conn.send(outcomes)


class _Worker:
    def __init__(self, ctx, args: tuple, gpu: str | None = None) -> None:
        self.ctx, self.args, self.gpu = ctx, args, gpu
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, *args, gpu), name="gatedvae-sweep-worker")
        # Start the child with SIGINT ignored (kept across exec): a Ctrl-C while it is still importing
        # torch must not print a traceback; the parent stops the workers itself.
        previous = (
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            if threading.current_thread() is threading.main_thread()
            else None
        )
        try:
            self.proc.start()
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        child.close()
        self.unit: list[dict[str, Any]] | None = None

    def stop(self, timeout: float) -> None:
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.proc.join(timeout)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)
        if self.proc.is_alive():  # pragma: no cover
            self.proc.kill()
            self.proc.join()
        self.conn.close()


def _exit_text(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


@contextmanager
def _ticking(on_tick: Callable[[], None] | None, poll: float) -> Iterator[None]:
    """Call ``on_tick`` every ``poll`` seconds from a helper thread while the block runs."""
    if on_tick is None:
        yield
        return
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(poll):
            on_tick()

    thread = threading.Thread(target=loop, name="gatedvae-sweep-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _units(work: Sequence[dict[str, Any] | Sequence[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
    """Each item of ``work`` as a unit: a manifest entry alone, or a list of entries (an ensemble)."""
    return [[w] if isinstance(w, dict) else list(w) for w in work]


def _died(sweep_dir: str | os.PathLike, unit: list[dict[str, Any]], pid: int | None, why: str) -> list[dict[str, Any]]:
    """The outcomes of a unit whose process (``pid``) died: its runs that are done (an ensemble's
    members evaluated before the death) are done, those it recorded failed keep their own error,
    the others are recorded failed with ``why``."""
    outcomes = []
    for entry in unit:
        run_dir = run_dir_of(sweep_dir, entry)
        if inspect_run(run_dir, entry, check_lock=False)["state"] == "done":
            settle_record(run_dir, entry)
            outcomes.append(outcome_of(entry, state="done", action="checked"))
            continue
        record = read_json(run_dir / RECORD)
        last = (record.get("history") or [{}])[-1]
        if record.get("state") == "failed" and last.get("outcome") == "failed" and last.get("pid") == pid:
            outcomes.append(outcome_of(entry, action="failed", error=record.get("error")))
            continue
        record_failure(run_dir, why)
        outcomes.append(outcome_of(entry, action="failed", error=why))
    return outcomes


def run_local(
    sweep_dir: str | os.PathLike,
    work: Sequence[dict[str, Any] | Sequence[dict[str, Any]]],
    workers: int = 1,
    threads: int = 0,
    retry_failed: bool = True,
    tensorboard: bool = True,
    on_start: Callback | None = None,
    on_result: Callback | None = None,
    on_tick: Callable[[], None] | None = None,
    poll: float = 2.0,
    gpus: Sequence[str] | None = None,
    strategy: str = "auto",
    eval_workers: int = 0,
    eval_threads: int = 0,
) -> None:
    """Run ``work`` with ``workers`` processes (1 and no ``eval_workers``: in this process).

    ``work``: the units, in order: each a manifest entry (one run) or a list of entries (an
    ensemble, trained together with ``strategy``: :func:`gatedvae.sweep.ensemble.run_unit`).
    ``gpus``: the CUDA devices to place the workers on (``CUDA_VISIBLE_DEVICES`` entries; worker
    ``i`` gets ``gpus[i mod len(gpus)]``); None: the ones this process sees (:func:`visible_gpus`);
    empty: no placement. With one worker the units run in this process, on its own device.
    ``eval_workers``: the workers only train, and up to this many further processes, on the CPU
    (no GPU visible; ``eval_threads`` torch threads each), evaluate the runs they trained, while
    they go on to the next unit (started when the first run is left to evaluate).
    ``on_start(entry)`` is called for each run of a unit when the unit is handed to a worker,
    ``on_result(outcome)`` with each run's outcome (:func:`gatedvae.sweep.runner.run_one`'s, or a
    failure made up here when the worker died), ``on_tick()`` at least every ``poll`` seconds while
    units are in flight.
    """
    on_start = on_start or (lambda e: None)
    on_result = on_result or (lambda o: None)
    units = _units(work)
    if (workers <= 1 or len(units) <= 1) and eval_workers <= 0:
        datasets = DatasetSlot()
        for unit in units:
            for entry in unit:
                on_start(entry)
            with _ticking(on_tick, poll):
                outcomes = run_unit(
                    sweep_dir,
                    unit,
                    threads=threads,
                    retry_failed=retry_failed,
                    tensorboard=tensorboard,
                    datasets=datasets,
                    strategy=strategy,
                )
            for outcome in outcomes:
                on_result(outcome)
        return
    ctx = mp.get_context("spawn")  # a fresh interpreter: no forked torch thread pools or locks
    where = str(Path(sweep_dir).resolve())
    train_args = (where, threads, retry_failed, tensorboard, strategy, eval_workers <= 0, os.getpid())
    eval_args = (where, eval_threads or threads, retry_failed, tensorboard, strategy, True, os.getpid())
    queue, to_evaluate = deque(units), deque()
    slots = gpu_slots(min(workers, len(units)), visible_gpus() if gpus is None else list(gpus))
    pool = [_Worker(ctx, train_args, gpu) for gpu in slots]
    evaluators: list[_Worker] = []
    try:
        while True:
            for w in pool:
                if w.unit is None and queue:
                    w.unit = queue.popleft()
                    w.conn.send(w.unit)
                    for entry in w.unit:
                        on_start(entry)
            if to_evaluate and len(evaluators) < eval_workers and all(w.unit is not None for w in evaluators):
                evaluators.append(_Worker(ctx, eval_args, ""))  # on the CPU: no GPU visible
            for w in evaluators:
                if w.unit is None and to_evaluate:
                    w.unit = to_evaluate.popleft()
                    w.conn.send(w.unit)
            busy = [w for w in pool + evaluators if w.unit is not None]
            if not busy:
                break
            ready = wait([w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout=poll)
            if on_tick is not None:
                on_tick()
            for group in (pool, evaluators):
                for i, w in enumerate(group):
                    if w.unit is None or (w.conn not in ready and w.proc.sentinel not in ready):
                        continue
                    outcomes = None
                    if w.conn in ready:
                        try:
                            outcomes = w.conn.recv()
                        except (EOFError, OSError):
                            outcomes = None
                    if outcomes is not None:
                        by_id = {e["id"]: e for e in w.unit}
                        w.unit = None
                        for outcome in outcomes:
                            if outcome["state"] == "trained":  # its evaluation is an evaluator's
                                to_evaluate.append([by_id[outcome["id"]]])
                            else:
                                on_result(outcome)
                        continue
                    # The worker died with a unit in hand: record its runs, replace the worker, go on.
                    w.proc.join(5)
                    unit = w.unit
                    msg = (
                        f"the worker process died ({_exit_text(w.proc.exitcode)}) during this run; "
                        "its last checkpoint is kept and the next gatedvae sweep run resumes it"
                    )
                    w.conn.close()
                    group[i] = _Worker(ctx, w.args, w.gpu)  # on the same GPU
                    for outcome in _died(sweep_dir, unit, w.proc.pid, msg):
                        on_result(outcome)
    finally:
        for w in pool + evaluators:
            # A normal end: workers are idle and leave at once. Ctrl-C: stop them now; their runs
            # keep their checkpoints and resume next time.
            w.stop(timeout=10 if w.unit is None else 0)
