"""The local backend: a pool of worker processes, one run at a time per worker.

Each worker is a fresh interpreter (``spawn``) that takes runs from the parent over a pipe and
calls :func:`gatedvae.sweep.runner.run_one`, with torch's thread count set to its share of the
cores. The pool is written out (rather than ``concurrent.futures``) so that a worker that dies
(out of memory, a segfault, ``kill -9``) costs only its own run: that run is recorded as failed
with the cause, a new worker takes the next run, and the others carry on.

On Linux each worker asks the kernel to kill it when the parent dies (``PR_SET_PDEATHSIG``), so
killing ``gatedvae sweep run`` (even with SIGKILL) never leaves orphans training in the
background; their runs resume from their checkpoints next time.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from .runner import record_failure, run_dir_of, run_one

__all__ = ["run_local", "available_cores"]

Callback = Callable[[dict[str, Any]], None]


def available_cores() -> int:
    """CPU cores this process may use (its affinity mask, e.g. a SLURM allocation)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


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


def _worker_main(conn, sweep_dir: str, threads: int, retry_failed: bool, tensorboard: bool, parent_pid: int) -> None:
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what Ctrl-C does
    import torch

    torch.set_num_threads(threads)
    while True:
        try:
            entry = conn.recv()
        except (EOFError, OSError):
            return
        if entry is None:
            return
        try:
            outcome = run_one(sweep_dir, entry, threads=threads, retry_failed=retry_failed, tensorboard=tensorboard)
        except KeyboardInterrupt:  # the parent's SIGTERM: the run checkpointed and stopped; leave quietly
            return
        conn.send(outcome)


class _Worker:
    def __init__(self, ctx, args: tuple) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, *args), name="gatedvae-sweep-worker")
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
        self.entry: dict[str, Any] | None = None

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


def run_local(
    sweep_dir: str | os.PathLike,
    entries: list[dict[str, Any]],
    workers: int = 1,
    threads: int = 0,
    retry_failed: bool = True,
    tensorboard: bool = True,
    on_start: Callback | None = None,
    on_result: Callback | None = None,
    on_tick: Callable[[], None] | None = None,
    poll: float = 2.0,
) -> None:
    """Run ``entries`` with ``workers`` processes (1: in this process).

    ``on_start(entry)`` is called when a run is handed to a worker, ``on_result(outcome)`` with
    :func:`run_one`'s outcome (or a failure made up here when the worker died), ``on_tick()`` at
    least every ``poll`` seconds while runs are in flight.
    """
    on_start = on_start or (lambda e: None)
    on_result = on_result or (lambda o: None)
    if workers <= 1 or len(entries) <= 1:
        for entry in entries:
            on_start(entry)
            with _ticking(on_tick, poll):
                outcome = run_one(sweep_dir, entry, threads=threads, retry_failed=retry_failed, tensorboard=tensorboard)
            on_result(outcome)
        return
    ctx = mp.get_context("spawn")  # a fresh interpreter: no forked torch thread pools or locks
    args = (str(Path(sweep_dir).resolve()), threads, retry_failed, tensorboard, os.getpid())
    queue = deque(entries)
    pool = [_Worker(ctx, args) for _ in range(min(workers, len(entries)))]
    try:
        while True:
            for w in pool:
                if w.entry is None and queue:
                    w.entry = queue.popleft()
                    w.conn.send(w.entry)
                    on_start(w.entry)
            busy = [w for w in pool if w.entry is not None]
            if not busy:
                break
            ready = wait([w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout=poll)
            if on_tick is not None:
                on_tick()
            for i, w in enumerate(pool):
                if w.entry is None or (w.conn not in ready and w.proc.sentinel not in ready):
                    continue
                outcome = None
                if w.conn in ready:
                    try:
                        outcome = w.conn.recv()
                    except (EOFError, OSError):
                        outcome = None
                if outcome is not None:
                    w.entry = None
                    on_result(outcome)
                    continue
                # The worker died with a run in hand: record it, replace the worker, go on.
                w.proc.join(5)
                entry = w.entry
                msg = (
                    f"the worker process died ({_exit_text(w.proc.exitcode)}) during this run; "
                    "its last checkpoint is kept and the next gatedvae sweep run resumes it"
                )
                record_failure(run_dir_of(sweep_dir, entry), msg)
                w.conn.close()
                pool[i] = _Worker(ctx, args)
                on_result(
                    {
                        "id": entry["id"],
                        "name": entry["name"],
                        "state": "failed",
                        "action": "failed",
                        "error": msg,
                        "seconds": 0.0,
                        "resumed_from": None,
                    }
                )
    finally:
        for w in pool:
            # A normal end: workers are idle and leave at once. Ctrl-C: stop them now; their runs
            # keep their checkpoints and resume next time.
            w.stop(timeout=10 if w.entry is None else 0)
