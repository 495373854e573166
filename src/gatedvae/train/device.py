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

The CPU is left as it is: nothing is set there (CPU kernels are deterministic already).
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterator
from typing import Any

import torch

from .step import check_precision

__all__ = [
    "configure_device",
    "device_settings",
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
    after the block (``CUBLAS_WORKSPACE_CONFIG`` stays: cuBLAS has read it)."""
    device = torch.device(device)
    saved = _save_flags() if device.type == "cuda" else None
    try:
        yield configure_device(device, precision, deterministic)
    finally:
        if saved is not None:
            _restore_flags(saved)


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
