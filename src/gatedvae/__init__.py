"""gatedvae: Gated-VAE and the disentanglement toolbox around it.

See README.md and docs/ for the tour. The public API is listed in ``__all__``.
"""

import os as _os

# OpenMP threads that spin-wait for a partner the OS has descheduled make a 2-thread torch step 3.5x
# slower as soon as one other process shares a 2-core machine. A short spin before sleeping
# (libgomp's GOMP_SPINCOUNT, default 300,000) makes that step 1.7x faster under such load and costs
# nothing measurable on a quiet machine (docs/performance.md). It only takes effect if gatedvae is
# imported before torch (as the `gatedvae` command does); a value the user set is kept.
_os.environ.setdefault("GOMP_SPINCOUNT", "1000")

from .config import Config, DataConfig, GatingConfig, ModelConfig, PartitionConfig, TrainConfig, load_config
from .data import FactorDataset, FactorSpace, build_dataset
from .encode import TrainedRun, load_run
from .errors import ConfigError, DataError, GatedVAEError, PartitionError

__version__ = "0.1.0"

__all__ = [
    "Config",
    "DataConfig",
    "GatingConfig",
    "ModelConfig",
    "PartitionConfig",
    "TrainConfig",
    "load_config",
    "FactorDataset",
    "FactorSpace",
    "build_dataset",
    "load_run",
    "TrainedRun",
    "GatedVAEError",
    "ConfigError",
    "DataError",
    "PartitionError",
    "__version__",
]
