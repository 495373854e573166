"""Progress: a tqdm bar on a terminal, a few plain lines anywhere else.

A bar redraws itself many times a second; written to a file or a scheduler's log (stderr not a
terminal) every redraw lands in the log, and a quickstart's log ran to hundreds of kilobytes.
:func:`progress_bar` gives a tqdm bar when the stream is a terminal (or a Jupyter kernel, which
draws bars in place) and otherwise a :class:`LogLines`: one plain line each time another tenth
of the work is done (at most one a second) and at least one a minute, plus a closing line::

    gatedvae_run: 300/3,000 step (10%) 12 s, 25.0 step/s; recon=312, kl=9.1

Both take the same calls: iterate, ``update(n)``, ``set_postfix``, ``set_postfix_str``,
``write``, ``close``. Standard library only (tqdm is imported for the terminal case).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

__all__ = ["progress_bar", "LogLines", "is_terminal"]


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` draws a bar in place: a TTY, or a Jupyter kernel's stream."""
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError, OSError):
        return False
    return "ipykernel" in sys.modules and type(stream).__module__.startswith("ipykernel")


def progress_bar(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    initial: int = 0,
    leave: bool = True,
    file: TextIO | None = None,
):
    """A tqdm bar on a terminal, else :class:`LogLines` (same arguments, same calls)."""
    stream = file if file is not None else sys.stderr
    if is_terminal(stream):
        from tqdm import tqdm

        return tqdm(
            iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave, dynamic_ncols=True, file=stream
        )
    return LogLines(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave, file=stream)


class LogLines:
    """Progress as sparse plain lines, for logs: a line when another ``step`` of the total is done
    (at most one per ``min_interval`` seconds), at least one per ``max_interval`` seconds, and a
    last one on :meth:`close` when ``leave`` and it adds something. Without a known total: one per
    ``max_interval``."""

    def __init__(
        self,
        iterable: Iterable | None = None,
        *,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        initial: int = 0,
        leave: bool = True,
        file: TextIO | None = None,
        step: float = 0.1,
        min_interval: float = 1.0,
        max_interval: float = 60.0,
    ) -> None:
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = self.initial = int(initial)
        self.leave, self.file = leave, file
        self.step, self.min_interval, self.max_interval = step, min_interval, max_interval
        self.postfix = ""
        self.started = self.last_time = time.monotonic()
        self.last_n = self.n
        self.closed = False

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("LogLines without an iterable is not iterable; call update()")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LogLines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _stream(self) -> TextIO:
        return self.file if self.file is not None else sys.stderr

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        since = now - self.last_time
        if since >= self.max_interval:
            self._emit(now)
        elif self.total and since >= self.min_interval:
            done, before = self.n / self.total, self.last_n / self.total
            if int(done / self.step + 1e-9) > int(before / self.step + 1e-9):
                self._emit(now)

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = str(s)

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self) -> None:
        """A tqdm call; lines are written by :meth:`update` only."""

    def write(self, s: str) -> None:
        print(s, file=self._stream(), flush=True)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.leave and self.n != self.last_n:
            self._emit(time.monotonic())

    def line(self, now: float | None = None) -> str:
        """The line :meth:`update` writes."""
        now = time.monotonic() if now is None else now
        elapsed = now - self.started
        done = f"{self.n:,}/{self.total:,}" if self.total else f"{self.n:,}"
        pct = f" ({int(100 * self.n / self.total)}%)" if self.total else ""
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else 0.0
        head = f"{self.desc}: " if self.desc else ""
        tail = f"; {self.postfix}" if self.postfix else ""
        return f"{head}{done} {self.unit}{pct} {_seconds(elapsed)}, {rate:.3g} {self.unit}/s{tail}"

    def _emit(self, now: float) -> None:
        print(self.line(now), file=self._stream(), flush=True)
        self.last_time, self.last_n = now, self.n


def _seconds(s: float) -> str:
    if s < 60:
        return f"{s:.0f} s"
    m, s = divmod(int(s), 60)
    if m < 60:
        return f"{m}:{s:02d}"
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"
