"""Training: the loop, checkpoints with exact resume, logs."""

from .checkpoint import CheckpointError, latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from .loop import Prepared, TrainingDiverged, load_run_config, prepare, resolve_device, train

__all__ = [
    "train",
    "prepare",
    "Prepared",
    "resolve_device",
    "load_run_config",
    "TrainingDiverged",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "list_checkpoints",
    "latest_checkpoint",
]
