"""Latent partitions and the gradient gate of the Gated-VAE.

``000_fc03c6fb001bc541.txt``, section III-B: the latent vector is split into partitions
``z = [z_1, ..., z_P]`` (eq. 3); "during forward propagation, all partitions of the latent
space are used and concatenated together" and "during back-propagation, the gradient is
gated according to the input/target image pairing", so only the partition whose factors the
pair shares receives the reconstruction gradient. :func:`gate` does exactly that: the value
is unchanged, the gradient outside the active partition is zero.

Also here: DC-IGN clamping (Kulkarni et al. 2015, lecture ``002_b6b404b9b5e7b646.txt``), the
other weak-supervision mode: in a batch where only one factor varies, the latents that do not
belong to that factor are replaced by their batch mean on the forward pass and receive their
deviation from the mean as gradient (:func:`clamp_to_mean`). Batch-norm layers normalise such a
batch by the statistics of an i.i.d. reference batch (:mod:`gatedvae.nets.norm`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .config import GatingConfig, PartitionConfig
from .errors import PartitionError

__all__ = ["Partitions", "gate", "clamp_to_mean", "Schedule"]


def gate(z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Pass ``z (B, M)`` forward unchanged; let gradient through only where ``mask (M,)`` is True.

    ``torch.where`` picks, element by element, ``z`` itself (differentiable) or a detached copy
    of it, so the forward value is bitwise ``z`` and ``dL/dz`` is exactly zero outside the mask.
    """
    return torch.where(mask, z, z.detach())  # (B, M)


def clamp_to_mean(z: torch.Tensor, clamp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DC-IGN clamping of ``z (B, M)`` on the dims where ``clamp (M,)`` is True.

    Returns the code the decoder sees and the pull-to-mean penalty, a scalar:

    * forward: the clamped dims take their batch mean, the others are ``z``;
    * the decoder's (reconstruction) gradient reaches the encoder through the unclamped dims only:
      the batch mean it sees is detached;
    * instead, the clamped dims are pulled to their batch mean by the penalty
      ``0.5 * mean_b sum_clamped (z_b - mean(z))^2``, whose gradient is ``(z_b - mean(z)) / B``.

    Kulkarni et al. 2015 (lecture ``002_b6b404b9b5e7b646.txt``, steps 5-8): "replace the
    gradients for the latents z_i != z_train (the clamped neurons) with their difference from the
    mean". The penalty's gradient is that difference, scaled by 1/B as the reconstruction's is (our
    losses are batch means): its weight relative to the reconstruction does not change with the
    batch size, and it is a term of the loss, logged as ``clamp``.
    """
    mean = z.mean(dim=0, keepdim=True)  # (1, M)
    z_dec = torch.where(clamp, mean.detach().expand_as(z), z)  # (B, M)
    deviation = torch.where(clamp, z - mean, torch.zeros_like(z))  # (B, M)
    penalty = 0.5 * deviation.pow(2).sum(dim=1).mean()  # scalar
    return z_dec, penalty


@dataclass(frozen=True)
class _Partition:
    config: PartitionConfig
    start: int
    stop: int


class Partitions:
    """Named slices of the latent vector, checked against the latent size: the layout only.

    Pure (no data): the pair samplers that train each partition are built from the dataset by
    :func:`gatedvae.run.prepare` (``Prepared.samplers``), so loading a run to encode or evaluate it
    never clusters weak labels.

    Args:
        config: the gating section of the run's config.
        latent_dim: M.
    """

    def __init__(self, config: GatingConfig, latent_dim: int) -> None:
        if not config.partitions:
            raise PartitionError("gating needs at least one partition; declare gating.partitions")
        total = sum(p.size for p in config.partitions)
        if total != latent_dim:
            raise PartitionError(
                f"partition sizes sum to {total} but the latent has {latent_dim} dims; make them equal"
            )
        if config.mode == "clamp":
            for p in config.partitions:
                if p.sampler != "exact":
                    raise PartitionError(
                        "gating.mode=clamp (DC-IGN) needs exact factor partitions; "
                        f"partition '{p.name}' uses {p.sampler}"
                    )
        self.config = config
        self.latent_dim = latent_dim
        self.parts: list[_Partition] = []
        start = 0
        for p in config.partitions:
            self.parts.append(_Partition(p, start, start + p.size))
            start += p.size

    def __len__(self) -> int:
        return len(self.parts)

    @property
    def names(self) -> list[str]:
        return [p.config.name for p in self.parts]

    def index(self, name: str) -> int:
        if name not in self.names:
            raise PartitionError(f"unknown partition '{name}'; partitions are: {', '.join(self.names)}")
        return self.names.index(name)

    def slice(self, i: int) -> slice:
        return slice(self.parts[i].start, self.parts[i].stop)

    def mask(self, i: int, device: torch.device | str | None = None) -> torch.Tensor:
        """``(M,)`` bool, True on partition ``i``'s dims."""
        m = torch.zeros(self.latent_dim, dtype=torch.bool, device=device)
        m[self.slice(i)] = True
        return m

    def masks(self, device: torch.device | str | None = None) -> torch.Tensor:
        """``(P, M)`` bool, one row per partition."""
        return torch.stack([self.mask(i, device) for i in range(len(self))])

    def slices(self) -> dict[str, slice]:
        """Partition name -> its latent dims, in latent order."""
        return {p.config.name: slice(p.start, p.stop) for p in self.parts}

    def units(self) -> list[np.ndarray]:
        """Latent dims of each partition, for partition-level metrics."""
        return [np.arange(p.start, p.stop) for p in self.parts]

    def weights(self) -> np.ndarray:
        w = np.array([p.config.weight for p in self.parts], dtype=np.float64)
        return w / w.sum()


class Schedule:
    """Which partition is active at each step.

    ``cyclic``: partition ``step mod P`` (a pure function of the step, so a resumed run picks
    the same partitions). ``random``: a draw with the partitions' weights from the run's
    generator (whose state is checkpointed).
    """

    def __init__(self, kind: str, weights: Sequence[float]) -> None:
        if kind not in ("cyclic", "random"):
            raise PartitionError(f"unknown gating schedule '{kind}'; use cyclic or random")
        self.kind = kind
        self.weights = np.asarray(weights, dtype=np.float64)
        self.weights = self.weights / self.weights.sum()

    def __call__(self, step: int, rng: np.random.Generator) -> int:
        if self.kind == "cyclic":
            return step % len(self.weights)
        return int(rng.choice(len(self.weights), p=self.weights))
