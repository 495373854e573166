"""Callbacks: what runs alongside the training loop without being part of it.

The loop knows nothing of evaluation or figures; whoever starts it attaches them
(``gatedvae train`` attaches :mod:`gatedvae.callbacks`' TensorBoard images and, when
``train.evaluate`` is set, the end-of-run evaluation; a sweep attaches the images only, since it
evaluates runs itself). A callback subclasses :class:`Callback` and overrides what it needs::

    class Announce(Callback):
        def on_end(self, run, summary):
            print(f"{run.run_dir} finished: {summary['final']}")

    train(config, "runs/x", callbacks=[Announce()])

Callbacks run on the main process only (rank 0 of a data-parallel run), in the order given.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..run import Prepared

__all__ = ["Callback", "RunInfo"]


@dataclass(frozen=True)
class RunInfo:
    """The run a callback is called for: its directory, the prepared run (config, dataset, model,
    device), the TensorBoard writer (None when not writing TensorBoard) and whether to stay quiet."""

    run_dir: Path
    prep: Prepared
    writer: Any = None
    quiet: bool = False


class Callback:
    """Hooks the training loop calls; each does nothing unless overridden."""

    def on_step(self, run: RunInfo, step: int) -> None:
        """After step ``step`` (counted from 1) and its log line, before its checkpoint. The model
        is in training mode: a hook that evaluates it must restore the mode and use no generator of
        the run (resumed runs must stay bitwise equal to uninterrupted ones)."""

    def uses_model(self, run: RunInfo, step: int) -> bool:
        """Whether :meth:`on_step` reads the model at ``step``. In an ensemble trained with the
        ``stacked`` step the members' own modules are brought up to date only when some callback
        needs them (and at checkpoints); the default, True, always does."""
        return True

    def on_end(self, run: RunInfo, summary: dict[str, Any]) -> None:
        """When training has finished (``summary.json`` written, ``status.json`` says finished,
        the model in eval mode). Fields added to ``summary`` are written to ``summary.json``."""
