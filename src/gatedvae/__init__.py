"""gatedvae: Gated-VAE and the disentanglement toolbox around it.

See README.md and docs/ for the tour. The public API is listed in ``__all__``.
"""

from .config import Config, DataConfig, GatingConfig, ModelConfig, PartitionConfig, TrainConfig, load_config
from .data import FactorDataset, FactorSpace, build_dataset
from .errors import ConfigError, DataError, GatedVAEError, PartitionError
from .encode import TrainedRun, load_run

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
