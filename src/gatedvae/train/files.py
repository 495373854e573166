"""What the trainer writes into a run directory besides checkpoints.

``status.json`` (``running``, ``stopped`` by a signal, ``finished`` or ``failed``, with the step;
see :data:`STATUSES`), ``metrics.jsonl`` (one JSON line of
mean loss terms per log interval; truncated back to the checkpoint on resume), ``summary.json``,
and the TensorBoard writer. Only the main process (rank 0) calls the writing functions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import GatedVAEError
from ..io import atomic_json, atomic_write_text, read_json

__all__ = [
    "check_run_dir_for_new",
    "read_status",
    "write_status",
    "write_summary",
    "truncate_metrics",
    "append_metrics",
    "last_metrics",
    "open_tensorboard",
    "STATUSES",
]

#: The states ``status.json`` records: training in progress (or killed: no trainer holds the run's
#: lock), stopped by SIGINT/SIGTERM with a checkpoint of that step, finished, failed (a non-finite loss).
STATUSES = ("running", "stopped", "finished", "failed")


def check_run_dir_for_new(run_dir: Path) -> None:
    """Refuse a run directory that holds anything but what an interrupted start leaves behind."""

    def leftover(p: Path) -> bool:  # a start killed before config.yaml was in place (.lock: its stale lock)
        return p.name in ("config.yaml.tmp", ".lock") or (
            p.name == "checkpoints" and p.is_dir() and not any(p.iterdir())
        )

    if run_dir.exists() and any(not leftover(p) for p in run_dir.iterdir()):
        raise GatedVAEError(
            f"run directory '{run_dir}' already exists and is not empty; "
            f"resume it with --resume {run_dir} or choose another --run-dir"
        )


def read_status(run_dir: Path) -> dict[str, Any]:
    """``status.json`` of a run (``{}`` when absent or unreadable)."""
    return read_json(run_dir / "status.json")


def write_status(run_dir: Path, status: str, step: int, total: int, **extra: Any) -> None:
    atomic_json(run_dir / "status.json", {"status": status, "step": step, "total_steps": total, **extra})


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    atomic_json(run_dir / "summary.json", summary)


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines logged after ``step`` (they will be logged again on resume)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            break  # a torn last line from a kill: drop it and everything after
    atomic_write_text(path, "".join(k + "\n" for k in keep))


def append_metrics(path: Path, step: int, epoch_len: float, means: dict[str, float], finetune: bool) -> None:
    """One line of ``metrics.jsonl``: the step, its epoch equivalent, the phase and the mean terms."""
    line = {
        "step": step,
        "epoch": round(step / epoch_len, 4),
        "phase": "finetune" if finetune else "train",
        **{k: round(v, 6) for k, v in means.items()},
    }
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


def last_metrics(path: Path) -> dict[str, Any]:
    """The last line of ``metrics.jsonl`` (``{}`` when there is none)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        return json.loads(lines[-1]) if lines else {}
    except (OSError, json.JSONDecodeError):
        return {}


def open_tensorboard(run_dir: Path, start: int):
    """A TensorBoard ``SummaryWriter`` for ``run_dir/tensorboard`` (events after ``start`` purged
    on resume); None when TensorBoard cannot be imported."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency, but keep training if it is broken
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=start if start else None)
