"""Error family for gatedvae.

Every error a user can cause (a wrong config key, a missing file, an impossible partition)
is a :class:`GatedVAEError`. The command line prints ``error: <message>`` on one line and
exits with status 2; the message names the problem and the way out. Anything else that
escapes is a bug in gatedvae and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["GatedVAEError", "ConfigError", "DataError", "PartitionError"]


class GatedVAEError(Exception):
    """Base class of every error caused by input the user can fix."""

    exit_code = 2


class ConfigError(GatedVAEError):
    """A configuration key, value or override is wrong."""


class DataError(GatedVAEError):
    """A dataset file or label table is missing, truncated or malformed."""


class PartitionError(GatedVAEError):
    """Latent partitions are inconsistent with the latent size or the dataset's factors."""
