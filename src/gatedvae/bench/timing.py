"""Timing on a shared machine: interleaved rounds, medians of ratios, operator profiles, memory.

Other jobs may share the machine: :func:`interleaved` runs every item in turn in each round, so
all items see the same load; ratios are taken within a round and the median over rounds is
reported (:func:`ratio`), with the load average.
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["peak_rss_mb", "median", "ratio", "loadavg", "interleaved", "device_sync", "profile_step", "rate"]

#: Operator name fragments counted as matrix multiplication in the profile.
MATMUL_OPS = ("mm", "matmul", "linear", "embedding_bag", "conv", "mkldnn")
OPTIMIZER_OPS = ("adam", "foreach", "optimizer")


def peak_rss_mb() -> float:
    """The process's peak resident set size in MB.

    Linux: ``VmHWM`` of ``/proc/self/status``, the high-water mark of this process's own
    memory. (``ru_maxrss`` survives ``exec``: a child started from a big parent would report
    the parent's size.) Elsewhere ``ru_maxrss`` (bytes on macOS, KiB otherwise).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10
    except (OSError, ValueError):
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def median(values) -> float:
    values = list(values)
    return float(statistics.median(values)) if values else float("nan")


def ratio(num: Sequence[float], den: Sequence[float]) -> float:
    """Median over rounds of ``num[r] / den[r]``."""
    return median(a / b for a, b in zip(num, den, strict=True))  # one value per round each


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _timed(fn: Callable[[], None], per_round: float, sync: Callable[[], None] | None) -> float:
    """Seconds per call of ``fn``, calling it for about ``per_round`` seconds (at least once).

    Without ``sync`` (the CPU) the clock is read after every call. With it (CUDA, whose calls
    return before the device has finished) the device is synchronised before the clock starts and
    before each reading, and the calls between readings double (1, 2, 4, ...), so the host waits
    for the device rarely, as in training, where only log steps wait."""
    if sync is None:
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= per_round:
                return elapsed / n
    sync()
    n, batch, t0 = 0, 1, time.perf_counter()
    while True:
        for _ in range(batch):
            fn()
        n += batch
        sync()
        elapsed = time.perf_counter() - t0
        if elapsed >= per_round:
            return elapsed / n
        batch *= 2


def device_sync(device: Any) -> Callable[[], None] | None:
    """What waits for ``device`` to finish its queued work: ``torch.cuda.synchronize`` on CUDA,
    None on the CPU (whose calls return when done)."""
    import torch

    dev = torch.device(device)
    if dev.type != "cuda":
        return None
    return lambda: torch.cuda.synchronize(dev)


def interleaved(
    items: dict[str, Callable[[], None]],
    seconds: float,
    rounds: int,
    warmup: int = 1,
    log: Callable[[str], None] | None = None,
    sync: Callable[[], None] | None = None,
) -> tuple[dict[str, list[float]], list[float]]:
    """Seconds per call of each item, one value per round.

    Each round runs every item in turn for ``seconds / rounds`` (at least one call), so all
    items see the same machine load; ratios should be taken within a round. Also returns the
    1-minute load average after each round. ``sync``: the device's synchronisation
    (:func:`device_sync`) for items that queue work on a GPU (see :func:`_timed`).
    """
    for fn in items.values():
        for _ in range(warmup):
            fn()
    if sync is not None:
        sync()
    per_round = seconds / rounds
    times: dict[str, list[float]] = {k: [] for k in items}
    loads = []
    for r in range(rounds):
        for name, fn in items.items():
            times[name].append(_timed(fn, per_round, sync))
        loads.append(os.getloadavg()[0])
        if log is not None:
            log(f"  round {r + 1}/{rounds} done, load {loads[-1]:.2f}")
    return times, loads


def _category(op: str) -> str:
    name = op.lower()
    if any(s in name for s in OPTIMIZER_OPS):
        return "optimizer"
    if any(s in name for s in MATMUL_OPS):
        return "matmul"
    return "other ops"


def _self_device_us(event: Any) -> float:
    """An operator's self time on the GPU, in microseconds (``self_device_time_total``; the older
    ``self_cuda_time_total`` on a torch that lacks it)."""
    value = getattr(event, "self_device_time_total", None)
    if value is None:  # pragma: no cover - torch < 2.4
        value = getattr(event, "self_cuda_time_total", 0.0)
    return float(value or 0.0)


def profile_step(runner, steps: int, limit: int = 12) -> dict[str, Any]:
    """Operators by self time over ``steps`` steps (``torch.profiler``), and the step's wall
    time split into matmul operators, optimiser operators, other operators (elementwise, batch
    norm, loss, copies) and time outside any operator (Python, numpy pair sampling and
    unpacking). The profiler adds a little time per operator, so read the shares.

    On CUDA the times are the kernels' on the GPU (``ProfilerActivity.CUDA``; the wall time is
    taken with the device synchronised), and "outside" is the time the GPU had no kernel of the
    step: launch overhead, Python, the host's share of the batch."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    device = torch.device(getattr(getattr(runner, "prep", None), "device", "cpu"))
    cuda = device.type == "cuda"
    sync = device_sync(device) or (lambda: None)
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]

    def self_us(e: Any) -> float:
        return _self_device_us(e) if cuda else float(e.self_cpu_time_total)

    runner()
    sync()
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            runner()
        sync()
    wall_ms = (time.perf_counter() - t0) / steps * 1e3
    events = [e for e in prof.key_averages() if not e.key.startswith("ProfilerStep")]
    if cuda:  # the kernels themselves (an operator's device time is its kernels': not counted twice)
        events = [e for e in events if str(getattr(e, "device_type", "")).endswith("CUDA") and self_us(e) > 0]
    events.sort(key=self_us, reverse=True)
    cats = {"matmul": 0.0, "optimizer": 0.0, "other ops": 0.0}
    for e in events:
        cats[_category(e.key)] += self_us(e) / 1e3 / steps
    outside = "idle GPU (launches, Python, host work)" if cuda else "outside ops (Python, numpy)"
    cats[outside] = max(wall_ms - sum(cats.values()), 0.0)
    ops = [
        {
            "op": e.key if len(e.key) <= 90 else e.key[:87] + "...",  # kernel names run long
            "calls_per_step": e.count / steps,
            "self_ms_per_step": self_us(e) / 1e3 / steps,
            "category": _category(e.key),
        }
        for e in events[:limit]
    ]
    return {
        "key": runner.spec.key,
        "device": str(device),
        "steps": steps,
        "step_ms": wall_ms,
        "loadavg": loadavg(),
        "categories_ms": cats,
        "categories_share": {k: v / wall_ms for k, v in cats.items()},
        "ops": ops,
    }


def rate(fn: Callable[[], Any], items: int, seconds: float) -> float:
    fn()
    ts = []
    for _ in range(3):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 3:
            fn()
            n += 1
        ts.append(n * items / (time.perf_counter() - t0))
    return median(ts)
