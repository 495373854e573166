"""What ``gatedvae bench`` measures: the sections and the sizes (:class:`BenchOptions`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import DataConfig

__all__ = ["SECTIONS", "DEFAULT_SECTIONS", "BenchOptions"]

SECTIONS = ("train", "data", "pairs", "metrics", "memory", "quickstart")
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

    def data_config(self) -> DataConfig:
        return DataConfig(name="dsprites", stride={"posX": self.stride, "posY": self.stride} if self.stride > 1 else {})
