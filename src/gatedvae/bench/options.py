"""What ``gatedvae bench`` measures: the sections and the sizes (:class:`BenchOptions`), and on
which device at which precisions (:func:`bench_device`, :func:`check_precisions`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..config import DataConfig
from ..errors import ConfigError
from ..run import device_option

__all__ = ["SECTIONS", "DEFAULT_SECTIONS", "BenchOptions", "bench_device", "check_precisions", "CUDA_SQUARE"]

#: The peak's square product on a GPU (quick mode: the smaller): 2 x 8192^3 = 1.1 TFLOP, several
#: milliseconds even at a large GPU's bf16 rate, so launch and timing overheads do not count.
CUDA_SQUARE = (8192, 4096)

SECTIONS = ("train", "data", "pairs", "metrics", "memory", "quickstart", "ensemble")
DEFAULT_SECTIONS = ("train", "data", "pairs", "metrics", "memory")


@dataclass
class BenchOptions:
    """What ``gatedvae bench`` measures and how long."""

    sections: tuple[str, ...] = DEFAULT_SECTIONS
    quick: bool = False
    seconds: float = 2.5
    rounds: int = 5
    threads: int = 0
    batch: int = 128
    families: bool = True
    metrics_run: str | None = None
    metrics_steps: int = 2000
    metrics: str | None = None
    memory_steps: int = 300
    seed: int = 0
    # sizes (the quick mode shrinks them)
    hidden_paper: int = 1200
    hidden_small: int = 256
    square: int = 2048
    warmup: int = 2
    profile_steps: int = 10
    stride: int = 1  # keep every k-th posX/posY class of dSprites (quick mode: 4)
    loader_workers: tuple[int, ...] = (0, 1)
    presets: tuple[str, ...] = ("default", "fast")
    #: where the train and metrics sections (and the memory section's run) compute: cpu, cuda, cuda:N
    device: str = "cpu"
    #: the training rows' precisions (``train.precision`` values); the first one is also that of the
    #: DataLoader baselines, the variants, the phases and the operator profiles
    precisions: tuple[str, ...] = ("fp32",)

    @classmethod
    def quick_mode(cls, **kw: Any) -> BenchOptions:
        """A smoke run in well under a minute: tiny networks, short timings, 1 thread, a
        sixteenth of dSprites, a 40-step model, two metrics."""
        base = dict(
            quick=True,
            seconds=0.1,
            rounds=2,
            threads=1,
            batch=16,
            families=False,
            metrics_steps=40,
            metrics="mig,dci_lasso",
            memory_steps=4,
            hidden_paper=64,
            hidden_small=32,
            square=256,
            warmup=1,
            profile_steps=1,
            stride=4,
            loader_workers=(0,),
        )
        base.update(kw)
        return cls(**base)

    def for_device(self) -> BenchOptions:
        """These options with the sizes of their device: a GPU's peak is measured on a larger square."""
        if torch.device(self.device).type == "cuda":
            big, small = CUDA_SQUARE
            self.square = max(self.square, small if self.quick else big)
        return self

    def data_config(self) -> DataConfig:
        return DataConfig(name="dsprites", stride={"posX": self.stride, "posY": self.stride} if self.stride > 1 else {})


def bench_device(name: str) -> torch.device:
    """``--device``: ``cpu``, ``cuda`` or ``cuda:N``, present on this machine (one-line ConfigError);
    ``cuda`` is the current CUDA device, by its index."""
    dev = device_option(name, "--device", auto=False)
    if dev.type == "cuda" and dev.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return dev


def check_precisions(precisions: tuple[str, ...], device: torch.device) -> tuple[str, ...]:
    """``--precision``: each a ``train.precision`` value this device computes in (one-line ConfigError)."""
    from ..train.step import PRECISIONS, check_precision

    if not precisions:
        raise ConfigError(f"--precision names no precision; choose from {', '.join(PRECISIONS)}")
    for p in precisions:
        if p not in PRECISIONS:
            raise ConfigError(f"--precision: unknown precision '{p}'; choose from {', '.join(PRECISIONS)}")
        if device.type == "cpu" and p in ("tf32", "fp16"):
            why = "TF32 is an NVIDIA tensor-core mode" if p == "tf32" else "float16 training needs CUDA"
            raise ConfigError(f"--precision {p} needs --device cuda ({why}); on the CPU use fp32 or bf16")
        try:
            check_precision(p, device)
        except ConfigError as exc:
            raise ConfigError(f"--precision {p} on {device}: {exc}") from None
    if len(set(precisions)) != len(precisions):
        raise ConfigError(f"--precision {','.join(precisions)} names a precision twice")
    return tuple(precisions)
