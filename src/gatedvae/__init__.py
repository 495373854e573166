"""gatedvae: Gated-VAE and the disentanglement toolbox around it.

See README.md and docs/ (docs/architecture.md for the layers). The public API is listed in
``__all__``; its names are imported on first use, so that ``import gatedvae.metrics`` (pure numpy)
or ``import gatedvae.config`` does not load PyTorch.
"""

import importlib as _importlib
import os as _os

# OpenMP threads that spin-wait for a partner the OS has descheduled make a 2-thread torch step 3.5x
# slower as soon as one other process shares a 2-core machine. A short spin before sleeping
# (libgomp's GOMP_SPINCOUNT, default 300,000) makes that step 1.7x faster under such load and costs
# nothing measurable on a quiet machine (docs/performance.md). It only takes effect if gatedvae is
# imported before torch (as the `gatedvae` command does); a value the user set is kept.
_os.environ.setdefault("GOMP_SPINCOUNT", "1000")

__version__ = "0.2.0"

#: public name -> the module that defines it (imported when the name is first used).
_EXPORTS = {
    "Config": "config",
    "DataConfig": "config",
    "GatingConfig": "config",
    "ModelConfig": "config",
    "PartitionConfig": "config",
    "TrainConfig": "config",
    "load_config": "config",
    "FactorDataset": "data",
    "FactorSpace": "data",
    "build_dataset": "data",
    "load_run": "encode",
    "TrainedRun": "encode",
    "GatedVAEError": "errors",
    "ConfigError": "errors",
    "DataError": "errors",
    "PartitionError": "errors",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gatedvae' has no attribute {name!r}")
    value = getattr(_importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
