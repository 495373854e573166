"""One training batch: the pairs of the step's partition, gathered into images on the device.

:class:`Batcher` draws a step's :class:`Batch` with the run's numpy generator: the active
partition from the gating schedule (gated runs), then pairs from that partition's sampler (or,
in clamp mode, a base image and the images that share every other factor with it, then an
i.i.d. reference batch for batch norm), with every pair touching a held-out image
(``data.holdout``) redrawn; then the input and target images by index gather. An un-gated run
draws its pairs from its ``pairs`` section: identity pairs (``none``), Locatello et al.'s pairs
(``k_changed``) or, un-gated, the partitions' samplers on the gating schedule (``partitions``);
what the sampler knows and the model may be told goes with them (``k_changed``, ``shared_dims``).
The order of the draws is part of exact resume (a checkpoint stores the generator's state):
change it and resumed runs no longer equal uninterrupted ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data import ExactPairSampler, IdentityPairSampler
from ..data.base import host_to_device
from ..errors import ConfigError
from ..gating import Partitions, Schedule
from ..nets.norm import batch_norm_layers
from ..run import Prepared, condition_vectors, heldout_indices

__all__ = ["Batch", "Batcher"]


@dataclass(frozen=True)
class Batch:
    """What one training step consumes.

    ``x``: input images ``(b, C, H, W)``; ``target``: the images to reconstruct (``x`` itself for
    an identity pair); ``cond``: one-hot labels of ``model.condition`` ``(b, c)`` of the *targets*
    (the decoder's condition) or None; ``enc_cond``: the same labels of the *inputs* (the
    encoder's condition; ``cond`` itself when input and target are the same images);
    ``gate_mask``: the active partition's latent mask (gate mode) or None; ``clamp_mask``: the
    latent dimensions clamped to the batch mean (clamp mode) or None; ``reference`` and
    ``reference_cond``: clamp mode, an i.i.d. batch whose batch-norm statistics normalise the
    clamp batch (None for networks without batch norm); ``active``: the active partition's
    index, -1 for an un-gated (or fine-tuning) step. What a weak pair's sampler knows, for the
    models that read it (:mod:`gatedvae.models.weak`): ``k_changed`` ``(b,)`` int64, each pair's
    number of changed factors (``pairs.tell_k``); ``shared_dims`` ``(b, M)`` bool, the latent dims of
    the partitions whose factors each pair shares (group models: ``gvae``, ``ml_vae``).
    """

    x: torch.Tensor
    target: torch.Tensor
    cond: torch.Tensor | None = None
    gate_mask: torch.Tensor | None = None
    clamp_mask: torch.Tensor | None = None
    active: int = -1
    enc_cond: torch.Tensor | None = None
    reference: torch.Tensor | None = None
    reference_cond: torch.Tensor | None = None
    k_changed: torch.Tensor | None = None
    shared_dims: torch.Tensor | None = None

    def weak_labels(self) -> dict[str, torch.Tensor]:
        """The keyword arguments of ``model.loss`` for the pair's weak labels: only those set (so that
        a model that reads none is called as before)."""
        return {k: v for k, v in (("k_changed", self.k_changed), ("shared_dims", self.shared_dims)) if v is not None}


class Batcher:
    """Draws the step's (input, target) images and the gate/clamp masks."""

    def __init__(self, prep: Prepared) -> None:
        self.prep = prep
        cfg = prep.config
        ds = prep.dataset
        self.batch_size = cfg.train.batch_size
        self.shard = slice(None)  # this process's rows of the global batch (train/distributed.py)
        self.identity = IdentityPairSampler(ds)
        held = heldout_indices(cfg.data, len(ds))  # never drawn for training (data.holdout)
        self.heldout = None
        if held.size:
            self.heldout = np.zeros(len(ds), dtype=bool)
            self.heldout[held] = True
        self.partitions = prep.partitions
        self.masks = prep.partitions.masks(prep.device) if prep.partitions is not None else None
        # the weak pairs of an un-gated run (pairs.kind) and what its model reads of them
        self.pairs = cfg.pairs.kind if self.partitions is None else "none"
        self.tell_k = cfg.pairs.tell_k and self.pairs == "k_changed"
        if self.pairs == "partitions":  # gating.partitions un-gated: their pairs on the gating schedule
            layout = Partitions(cfg.gating, cfg.model.latent_dim)
            self.masks = layout.masks(prep.device)
            self.schedule = Schedule(cfg.gating.schedule, layout.weights())
        # group models (gvae, ml_vae) are told the shared dims: a partition's pairs share its dims (gated,
        # or pairs.kind=partitions); k_changed pairs share the partitions whose factors they all keep
        model = prep.model
        groups = getattr(model, "encodes_pairs", False) and not getattr(model, "adaptive", True)
        self.active_group = groups and self.masks is not None
        self.factor_groups = prep.factor_groups
        if self.partitions is not None:
            self.schedule = Schedule(cfg.gating.schedule, self.partitions.weights())
            if cfg.gating.mode == "clamp":
                # DC-IGN: a batch in which only the active partition's factors vary = all images
                # sharing every *other* factor with one random base image.
                names = ds.factor_space.names
                self.clamp_samplers = []
                for p in cfg.gating.partitions:
                    others = [n for n in names if n not in p.factors]
                    self.clamp_samplers.append(ExactPairSampler(ds, others) if others else IdentityPairSampler(ds))
                # batch norm normalises a clamp batch by an i.i.d. reference batch's statistics
                self.needs_reference = bool(batch_norm_layers(prep.model.encoder, prep.model.decoder))

    def _training_only(self, pairs, sampler, rng: np.random.Generator):
        """``pairs`` with every pair that touches a held-out image redrawn: a held-out input gets a
        fresh pair, a held-out target a fresh target for its input (rejection: inputs stay uniform
        over the training images, targets uniform over the training images that qualify)."""
        if self.heldout is None:
            return pairs
        inp, tgt, noisy = pairs.input.copy(), pairs.target.copy(), pairs.noisy.copy()  # (B,) each
        changed = None if pairs.changed is None else pairs.changed.copy()  # (B, K): k_changed pairs
        for _ in range(1000):
            bad = self.heldout[inp]
            if bad.any():
                fresh = sampler.sample(int(bad.sum()), rng)
                inp[bad], tgt[bad], noisy[bad] = fresh.input, fresh.target, fresh.noisy
                if changed is not None:
                    changed[bad] = fresh.changed
            bad = self.heldout[tgt] & ~self.heldout[inp]
            if bad.any():
                fresh = sampler.pairs_for(inp[bad], rng)
                tgt[bad], noisy[bad] = fresh.target, fresh.noisy
                if changed is not None:
                    changed[bad] = fresh.changed
            if not (self.heldout[inp] | self.heldout[tgt]).any():
                return type(pairs)(inp, tgt, pairs.shared, noisy, changed)
        raise ConfigError("data.holdout leaves too few training images to pair; lower data.holdout")

    def draw(
        self,
        step: int,
        rng: np.random.Generator,
        finetune: bool = False,
        out: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> Batch:
        """The batch of ``step`` (``finetune``: plain identity pairs, no partition). ``out``: buffers
        ``(b, C, H, W)`` the input and target images are gathered into (an ensemble's stacked batch,
        :meth:`gatedvae.train.stacked_step.StackedStep.draw`); an identity pair's target is still
        the input tensor itself, and the target buffer is left as it is."""
        ds, cfg = self.prep.dataset, self.prep.config
        gate_mask = clamp_mask = ref_index = None
        active = -1
        if finetune or (self.partitions is None and self.pairs == "none"):
            pairs = self._training_only(self.identity.sample(self.batch_size, rng), self.identity, rng)
        elif self.partitions is None and self.pairs == "k_changed":
            sampler = self.prep.pair_sampler
            pairs = self._training_only(sampler.sample(self.batch_size, rng), sampler, rng)
        elif self.partitions is None:  # pairs.kind=partitions: the partitions' pairs, no gate
            active = self.schedule(step, rng)
            sampler = self.prep.samplers[active]
            pairs = self._training_only(sampler.sample(self.batch_size, rng), sampler, rng)
        else:
            active = self.schedule(step, rng)
            mask = self.masks[active]
            if cfg.gating.mode == "clamp":
                b0 = int(rng.integers(0, len(ds)))
                while self.heldout is not None and self.heldout[b0]:
                    b0 = int(rng.integers(0, len(ds)))
                base = np.full(self.batch_size, b0, dtype=np.int64)
                batch = self._training_only(
                    self.clamp_samplers[active].pairs_for(base, rng), self.clamp_samplers[active], rng
                )
                pairs = self.identity.pairs_for(batch.target, rng)
                clamp_mask = ~mask
                if self.needs_reference:
                    ref = self._training_only(self.identity.sample(self.batch_size, rng), self.identity, rng)
                    ref_index = ref.input[self.shard]  # (b,)
            else:
                sampler = self.prep.samplers[active]
                pairs = self._training_only(sampler.sample(self.batch_size, rng), sampler, rng)
                gate_mask = mask
        inp, tgt = pairs.input[self.shard], pairs.target[self.shard]  # (b,): all of the global batch in one process
        x = ds.images(inp) if out is None else ds.images(inp, out=out[0])  # (b, C, H, W)
        if np.array_equal(inp, tgt):
            target = x
        else:
            target = ds.images(tgt) if out is None else ds.images(tgt, out=out[1])  # (b, C, H, W)
        device, names = self.prep.device, cfg.model.condition
        cond = condition_vectors(ds, names, tgt, device)  # the decoder draws the target: its labels
        enc_cond = cond if np.array_equal(inp, tgt) else condition_vectors(ds, names, inp, device)  # the input's
        reference = reference_cond = None
        if ref_index is not None:
            reference, reference_cond = ds.images(ref_index), condition_vectors(ds, names, ref_index, device)
        k_changed = shared_dims = None
        if not finetune:
            k_changed, shared_dims = self._weak_labels(pairs, active, device)
        return Batch(
            x, target, cond, gate_mask, clamp_mask, active, enc_cond, reference, reference_cond, k_changed, shared_dims
        )

    def _weak_labels(self, pairs, active: int, device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """What the model is told of this step's pairs (this process's rows): k, the shared dims."""
        k_changed = shared_dims = None
        if self.tell_k:
            k_changed = host_to_device(torch.from_numpy(pairs.k()[self.shard]), device)  # (b,)
        if self.active_group and active >= 0:  # a partition's pairs: its dims are the group
            b = len(pairs.input[self.shard])
            shared_dims = self.masks[active].expand(b, -1)  # (b, M)
        elif self.factor_groups is not None:
            dims = self.factor_groups(pairs.shared_per_pair()[self.shard])  # (b, M)
            shared_dims = host_to_device(torch.from_numpy(dims), device)
        return k_changed, shared_dims
