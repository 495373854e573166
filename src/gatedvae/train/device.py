"""The process-wide settings of a run's device, and the record of them a run keeps.

:func:`configure_device` sets, on CUDA, what ``train.precision`` and ``train.deterministic`` ask
for, and returns the run's environment record (``summary.json``'s ``environment``, every
checkpoint's header): the device and its name, the torch / CUDA / cuDNN versions, the precision,
the TF32 and determinism flags. :func:`device_settings` does the same for a block and puts the
previous flags back after it (the trainer wraps a whole run in it, so a process that goes on to
evaluate, or trains another run, does not inherit them).

On CUDA, with ``train.deterministic`` (the default):

* ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` in the environment (unless already set): cuBLAS then uses
  fixed workspaces, which deterministic matrix products need. cuBLAS reads it when the process
  first uses it, so a process that ran CUDA matrix products before training (a notebook, a test
  session) should set it in the shell before starting Python;
* ``torch.use_deterministic_algorithms(True)`` (an operator with no deterministic CUDA kernel
  then raises, and the trainer stops with one line naming ``train.deterministic=false``);
* ``torch.backends.cudnn.deterministic = True``, ``torch.backends.cudnn.benchmark = False``.

``train.deterministic=false`` turns all of this off and lets cuDNN benchmark its algorithms
(``cudnn.benchmark = True``): faster convolutions, no exact resume.

TF32: on CUDA ``train.precision=tf32`` allows TF32 tensor cores in float32 matrix products and
convolutions; every other precision forbids it (PyTorch's default lets cuDNN use TF32, so
``fp32`` here is IEEE float32 throughout). The legacy ``allow_tf32`` flags are the ones set:
in torch >= 2.9 setting them also sets the newer ``fp32_precision`` flags consistently.

On the CPU no numerical flag is set (CPU kernels are deterministic already); the heap is
(:func:`cpu_heap`): with glibc's default policy every tensor over 32 MB (an ensemble's stacked
weight gradients, its decoder outputs) is a fresh ``mmap`` each step whose pages are faulted in
again, which cost the stacked K = 8 width-256 step a quarter of its time (docs/performance.md).
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from collections.abc import Iterator
from typing import Any

import torch

from .step import check_precision

__all__ = [
    "configure_device",
    "device_settings",
    "cpu_heap",
    "cpu_heap_available",
    "determinism_relaxed",
    "environment_record",
    "CUBLAS_WORKSPACE",
    "is_nondeterminism_error",
]

#: The cuBLAS workspace setting deterministic matrix products need (NVIDIA's cuBLAS docs,
#: "Results reproducibility"; PyTorch's reproducibility notes). ``:16:8`` works too, slower.
CUBLAS_WORKSPACE = ":4096:8"


def configure_device(device: torch.device, precision: str, deterministic: bool) -> dict[str, Any]:
    """Set the process-wide flags a run on ``device`` needs; return the environment record.

    Refuses (``ConfigError``, one line) a precision the device cannot compute in. On the CPU
    nothing is set. On CUDA: TF32 on for ``tf32`` and off otherwise; with ``deterministic`` the
    cuBLAS workspace variable, deterministic algorithms, cuDNN deterministic and not benchmarking;
    without it none of those and cuDNN benchmarking.
    """
    device = torch.device(device)
    check_precision(precision, device)
    if device.type == "cuda":
        tf32 = precision == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        torch.use_deterministic_algorithms(deterministic)
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cudnn.benchmark = not deterministic
    return environment_record(device, precision)


def _tf32_flags() -> dict[str, Any]:
    """The TF32 flags as the legacy API reads them; the newer ``fp32_precision`` strings when the
    legacy getters refuse (torch >= 2.9 after a mix of the two APIs)."""
    out: dict[str, Any] = {}
    for key, backend in (("matmul", torch.backends.cuda.matmul), ("cudnn", torch.backends.cudnn)):
        try:
            out[key] = bool(backend.allow_tf32)
        except RuntimeError:
            out[key] = str(getattr(backend, "fp32_precision", "unknown"))
    return out


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def environment_record(device: torch.device, precision: str) -> dict[str, Any]:
    """What a run computed on: device, its name, versions, precision; on CUDA the TF32 and
    determinism flags as they are now (on the CPU those flags do not apply; the thread count does)."""
    device = torch.device(device)
    record: dict[str, Any] = {
        "device": str(device),
        "device_name": _cpu_name(),
        "precision": precision,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": None,
    }
    if device.type == "cuda":
        record["device_name"] = torch.cuda.get_device_name(device)
        record["capability"] = ".".join(str(v) for v in torch.cuda.get_device_capability(device))
        record["cudnn"] = torch.backends.cudnn.version()
        record["tf32"] = _tf32_flags()
        record["deterministic"] = {
            "algorithms": torch.are_deterministic_algorithms_enabled(),
            "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        }
    else:
        record["threads"] = torch.get_num_threads()
    return record


@contextlib.contextmanager
def device_settings(device: torch.device, precision: str, deterministic: bool) -> Iterator[dict[str, Any]]:
    """:func:`configure_device` for a block, yielding the record; the flags it set are put back
    after the block (``CUBLAS_WORKSPACE_CONFIG`` stays: cuBLAS has read it). On the CPU the block
    runs in :func:`cpu_heap`."""
    device = torch.device(device)
    saved = _save_flags() if device.type == "cuda" else None
    try:
        with cpu_heap() if device.type == "cpu" else contextlib.nullcontext():
            yield configure_device(device, precision, deterministic)
    finally:
        if saved is not None:
            _restore_flags(saved)


#: glibc ``mallopt`` parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
#: what :func:`cpu_heap` sets inside the block: no ``mmap``, and free memory at the heap's top kept
#: up to 1 GiB (a step's temporaries are freed and allocated again every step)
_HEAP_TRIM = 1 << 30
#: what it leaves after the block: glibc's defaults for the mmap count, and the thresholds its
#: dynamic policy reaches in a process that has freed a 32 MB block (the policy stops adapting
#: once ``mallopt`` is called)
_AFTER_MMAP_MAX, _AFTER_MMAP_THRESHOLD, _AFTER_TRIM = 65536, 32 << 20, 64 << 20
_heap_depth = 0
#: glibc's environment settings of what cpu_heap sets: a user who set one chose the allocator
_MALLOC_ENV = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def _glibc() -> Any:
    """glibc's ``libc`` through ctypes, or None (another C library, another system, or the user set
    the heap in the environment: :data:`_MALLOC_ENV` or a ``glibc.malloc`` tunable)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    if any(k in os.environ for k in _MALLOC_ENV):
        return None
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return None
    return _libc()


@functools.cache
def _libc() -> Any:
    """``libc.so.6`` with ``mallopt`` and ``malloc_trim``, loaded once (None where it cannot be)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def cpu_heap_available() -> bool:
    """Whether :func:`cpu_heap` can set the heap here (glibc, and the allocator not set by the user)."""
    return _glibc() is not None


@contextlib.contextmanager
def cpu_heap() -> Iterator[bool]:
    """A block in which glibc's ``malloc`` serves every size from its heap (``M_MMAP_MAX = 0``) and
    keeps up to 1 GiB of freed memory there (``M_TRIM_THRESHOLD``); yields whether it could.

    Why: PyTorch's CPU allocator is ``malloc`` itself, with no cache. glibc maps a block over its
    mmap threshold (at most 32 MB) with a fresh ``mmap`` and unmaps it on free, so a training step
    that allocates such tensors (an ensemble's stacked weight gradients and decoder outputs:
    (8, 4096, 256) float32 is 33.5 MB) faults in every page of them again each step, about a
    quarter of the stacked K = 8 width-256 step, and slows one run's step a few percent
    (docs/performance.md). From the heap the same blocks are reused, step after step. Peak memory
    is unchanged; freed memory is returned (``malloc_trim``) after the block, and the thresholds
    are left at the values glibc's own policy reaches.

    Nothing is set (yields False) with another C library or system, or where the user set the
    heap (``MALLOC_MMAP_MAX_``, ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or
    ``MALLOC_TOP_PAD_`` in the environment, a ``glibc.malloc`` tunable). Nested blocks
    set it once. Numbers are unaffected: the allocator does not change any result.
    """
    global _heap_depth
    libc = _glibc() if _heap_depth == 0 else None
    if _heap_depth == 0 and libc is None:
        yield False
        return
    if libc is not None:
        libc.mallopt(_M_MMAP_MAX, 0)
        libc.mallopt(_M_TRIM_THRESHOLD, _HEAP_TRIM)
    _heap_depth += 1
    try:
        yield True
    finally:
        _heap_depth -= 1
        if libc is not None:
            libc.mallopt(_M_MMAP_MAX, _AFTER_MMAP_MAX)
            libc.mallopt(_M_MMAP_THRESHOLD, _AFTER_MMAP_THRESHOLD)
            libc.mallopt(_M_TRIM_THRESHOLD, _AFTER_TRIM)
            libc.malloc_trim(0)


def _save_flags() -> dict[str, Any]:
    flags: dict[str, Any] = {
        "algorithms": (
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
        ),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }
    try:
        flags["tf32"] = (bool(torch.backends.cuda.matmul.allow_tf32), bool(torch.backends.cudnn.allow_tf32))
    except RuntimeError:  # the newer and the legacy TF32 APIs were mixed before: leave what we set
        flags["tf32"] = None
    return flags


def _restore_flags(flags: dict[str, Any]) -> None:
    mode, warn_only = flags["algorithms"]
    if (mode, warn_only) != (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    ):
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)
    torch.backends.cudnn.deterministic = flags["cudnn_deterministic"]
    torch.backends.cudnn.benchmark = flags["cudnn_benchmark"]
    if flags["tf32"] is not None:
        matmul, cudnn = flags["tf32"]
        if matmul != _legacy(torch.backends.cuda.matmul):
            torch.backends.cuda.matmul.allow_tf32 = matmul
        if cudnn != _legacy(torch.backends.cudnn):
            torch.backends.cudnn.allow_tf32 = cudnn


def _legacy(backend: Any) -> bool | None:
    try:
        return bool(backend.allow_tf32)
    except RuntimeError:
        return None


@contextlib.contextmanager
def determinism_relaxed() -> Iterator[None]:
    """Within the block ``torch.use_deterministic_algorithms`` is off (when a run turned it on):
    for the evaluation at a run's end, whose GPU operators need not have deterministic kernels."""
    mode, warn_only = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    if not mode:
        yield
        return
    torch.use_deterministic_algorithms(False)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)


def is_nondeterminism_error(exc: BaseException) -> bool:
    """Whether ``exc`` is PyTorch refusing an operator under ``use_deterministic_algorithms(True)``."""
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "does not have a deterministic implementation" in text or "use_deterministic_algorithms(True)" in text
    )
