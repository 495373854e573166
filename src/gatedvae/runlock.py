"""The run lock: at most one process trains a run directory at a time.

``RUN/.lock`` is held with ``flock`` (exclusive) for as long as a process trains the run
(``gatedvae train``, ``--resume``, :func:`gatedvae.train.train`) or a sweep works on it
(:mod:`gatedvae.sweep.runner`): the two use this one lock, so a sweep and a plain ``train`` of
the same run exclude each other. The holder writes who it is into the file (pid, host, start
time, what it does), so a refused process can say::

    run runs/x is being trained by pid 4242 on node7 (since 2026-05-01 14:03:11, at step 500 of
    1500); wait for it or stop it

The kernel drops an ``flock`` when its process dies, however it dies (SIGKILL included): a lock
file left by a killed process is stale and the next trainer takes it over at once. The holder
removes the file when it lets go; a waiter that opened the old file notices (its inode is no
longer the path's) and opens the new one, so removing never lets two processes in.

The lock is re-entrant within one thread of one process: a sweep holds it while it calls
``train()`` on the run, and ``train()`` then runs inside the sweep's hold. Another thread or
process is refused.

Readers (``gatedvae evaluate``, ``gatedvae encode``) never block on it: :func:`unfinished_note`
only looks, with a shared ``flock`` probe that creates nothing, and says when the run they read
is still being trained or was stopped before its end. On a system without ``fcntl`` (Windows)
nothing is locked. Standard library only.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import GatedVAEError
from .io import read_json

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows: runs are not locked
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "LOCK",
    "RunBusy",
    "RunLock",
    "acquire",
    "locked",
    "is_locked",
    "holder",
    "held_here",
    "busy_message",
    "unfinished_note",
]

LOCK = ".lock"

#: (run directory, pid, thread) -> the hold of this thread (re-entrant holds share it).
_HELD: dict[tuple[str, int, int], RunLock] = {}
_HELD_GUARD = threading.Lock()


class RunBusy(GatedVAEError):
    """Another process trains the run (the message names it: pid, host, since when, the step)."""


def _key(run_dir: Path) -> tuple[str, int, int]:
    return (os.path.realpath(run_dir), os.getpid(), threading.get_ident())


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


@dataclass
class RunLock:
    """A hold of a run's lock; :meth:`release` it (or use :func:`locked`). Re-entrant holds of one
    thread share the object and count."""

    run_dir: Path
    fd: int
    depth: int = 1

    def release(self) -> None:
        """Let go of one hold; the last one removes the holder's file and drops the ``flock``."""
        with _HELD_GUARD:
            self.depth -= 1
            if self.depth > 0:
                return
            _HELD.pop(_key(self.run_dir), None)
        if self.fd < 0:  # pragma: no cover - no fcntl
            return
        try:
            _unlink_if_ours(self.run_dir / LOCK, self.fd)
        finally:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = -1


def _unlink_if_ours(path: Path, fd: int) -> None:
    try:
        if os.stat(path).st_ino == os.fstat(fd).st_ino:
            path.unlink()
    except OSError:
        pass


def _try_once(path: Path, info: dict[str, Any]) -> int | None:
    """The fd of ``path`` locked exclusively with ``info`` written into it, or None if it is held."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:  # the holder before us may have removed the file after we opened it: lock the new one
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            return -1
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
        return fd
    except BaseException:
        try:
            os.close(fd)
        except OSError:
            pass
        raise


def acquire(run_dir: str | os.PathLike, doing: str = "training", wait: float = 0.0) -> RunLock | None:
    """Take the run's lock (``run_dir`` must exist); None if another process or thread holds it.

    ``doing``: what the holder does, written into the file for others' messages. ``wait``: keep
    trying that many seconds (a :func:`is_locked` probe holds the file for microseconds; a
    trainer for the whole run, so a short wait tells the two apart). Re-entrant within a thread.
    """
    run_dir = Path(run_dir)
    key = _key(run_dir)
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is not None:
            held.depth += 1
            return held
    if fcntl is None:  # pragma: no cover
        lock = RunLock(run_dir, -1)
    else:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": _now(), "doing": doing}
        info["command"] = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300]
        deadline = time.monotonic() + wait
        while True:
            fd = _try_once(run_dir / LOCK, info)
            if fd is not None and fd >= 0:
                break
            if fd is None and time.monotonic() >= deadline:
                return None
            time.sleep(0.0 if fd == -1 else 0.05)
        lock = RunLock(run_dir, fd)
    with _HELD_GUARD:
        _HELD[key] = lock
    return lock


@contextmanager
def locked(run_dir: str | os.PathLike, doing: str = "training", wait: float = 0.0) -> Iterator[bool]:
    """Hold the run's lock for the block; yields False (holding nothing) if another process has it."""
    lock = acquire(run_dir, doing, wait)
    try:
        yield lock is not None
    finally:
        if lock is not None:
            lock.release()


def held_here(run_dir: str | os.PathLike) -> bool:
    """Whether this thread of this process holds the run's lock."""
    with _HELD_GUARD:
        return _key(Path(run_dir)) in _HELD


def is_locked(run_dir: str | os.PathLike) -> bool:
    """Whether another process (or thread) holds the run's lock. A probe: creates nothing, waits
    for nothing; False for this thread's own hold."""
    run_dir = Path(run_dir)
    if fcntl is None or held_here(run_dir):  # pragma: no cover - no fcntl
        return False
    try:
        fd = os.open(run_dir / LOCK, os.O_RDONLY)
    except OSError:  # no lock file: nobody holds it
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's shared lock
    return False


def holder(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """Who holds the run's lock (``{"pid", "host", "since", "doing", "command"}``; ``{}`` when the
    holder has not written it yet), or None when nobody does."""
    if not is_locked(run_dir):
        return None
    return read_json(Path(run_dir) / LOCK)


def _at_step(run_dir: Path) -> str:
    status = read_json(run_dir / "status.json")
    step, total = status.get("step"), status.get("total_steps")
    if isinstance(step, int) and isinstance(total, int):
        return f", at step {step:,} of {total:,}"
    return ""


def _who(info: dict[str, Any] | None) -> str:
    if not info or "pid" not in info:
        return "another process"
    return f"pid {info['pid']} on {info.get('host', '?')}"


def busy_message(run_dir: str | os.PathLike, info: dict[str, Any] | None = None) -> str:
    """``run RUN is being trained by pid N on HOST (since ..., at step S of T); wait for it or stop it``."""
    run_dir = Path(run_dir)
    info = info if info is not None else (read_json(run_dir / LOCK) or None)
    since = f"since {info['since']}" if info and info.get("since") else ""
    detail = ", ".join(p for p in (since, _at_step(run_dir).lstrip(", ")) if p)
    doing = "worked on by a sweep" if info and info.get("doing") == "sweep" else "trained"
    return (
        f"run {run_dir} is being {doing} by {_who(info)}"
        + (f" ({detail})" if detail else "")
        + ("; wait for it or stop it")
    )


def unfinished_note(run_dir: str | os.PathLike, step: int, verb: str) -> str | None:
    """One line for a reader (``verb``: ``encoding``, ``evaluating``) of a run that is not finished:
    still being trained by another process, or stopped before its last step (``status.json``);
    None for a finished run, a run this thread trains itself, or one without ``status.json`` (0.1)."""
    run_dir = Path(run_dir)
    if held_here(run_dir):
        return None
    status = read_json(run_dir / "status.json")
    state, at, total = status.get("status"), status.get("step"), status.get("total_steps")
    reading = f"{verb} its checkpoint of step {step:,}"
    if not state or state == "finished":  # (a finished run's trainer may still hold it, evaluating)
        return None
    if is_locked(run_dir):
        info = read_json(run_dir / LOCK)
        return f"note: run {run_dir} is still being trained ({_who(info)}{_at_step(run_dir)}); {reading}"
    where = f" at step {at:,} of {total:,}" if isinstance(at, int) and isinstance(total, int) else ""
    if state == "failed":
        return f"note: run {run_dir} is unfinished (it failed{where}); {reading}"
    how = "was stopped" if state == "stopped" else "was interrupted"
    resume = f"continue it with gatedvae train --resume {run_dir}"
    return f"note: run {run_dir} is unfinished (it {how}{where}; {resume}); {reading}"
