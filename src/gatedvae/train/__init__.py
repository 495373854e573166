"""Training: the batch, the step, the loop with callbacks, data-parallel training.

:mod:`.batch` draws a step's :class:`Batch`; :mod:`.step` takes the update (shared with
``gatedvae bench``); :mod:`.loop` runs steps with checkpoints, logs and exact resume, calling
:class:`Callback` objects for anything else (evaluation and figures live above this package:
:mod:`gatedvae.callbacks`); :mod:`.files` writes status, metrics and summary;
:mod:`.distributed` makes the loop data-parallel under ``torchrun``; :mod:`.device` sets and records
the CUDA flags of ``train.precision`` and ``train.deterministic``. One process trains a run at a
time (the run's lock, :mod:`gatedvae.runlock`); SIGINT and SIGTERM stop it after a step with a
checkpoint (:class:`TrainingStopped`).
"""

from ..checkpoint import CheckpointError, latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from ..run import Prepared, load_run_config, prepare, resolve_device
from .batch import Batch, Batcher
from .callbacks import Callback, RunInfo
from .device import configure_device, device_settings, environment_record
from .ensemble import STRATEGIES, ensemble_key
from .loop import ResumeDeviceError, TrainingStopped, train, train_ensemble
from .step import (
    Optimizers,
    Precision,
    RunningSums,
    TrainingDiverged,
    make_generators,
    make_optimizers,
    precision_context,
    training_step,
)

__all__ = [
    "train",
    "train_ensemble",
    "ensemble_key",
    "STRATEGIES",
    "Callback",
    "RunInfo",
    "Batch",
    "Batcher",
    "training_step",
    "make_optimizers",
    "make_generators",
    "Optimizers",
    "RunningSums",
    "prepare",
    "Prepared",
    "resolve_device",
    "load_run_config",
    "Precision",
    "precision_context",
    "configure_device",
    "device_settings",
    "environment_record",
    "TrainingDiverged",
    "TrainingStopped",
    "ResumeDeviceError",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "list_checkpoints",
    "latest_checkpoint",
]
