"""The ``stacked`` step of an ensemble: the members' networks batched, one vectorised Adam.

Per step, for K members with their own batches (each drawn from the member's own generator):

1. the K encoders in one vmapped call (:class:`~gatedvae.train.stacked.StackedNetworks`):
   ``mu, logvar (K, B, M)``;
2. each member's reparameterisation noise from its own torch generator, ``z = mu + sigma * eps``;
3. the gate: each member's active partition (or every dim for an un-gated member);
4. the K decoders in one call;
5. each member's loss terms with its own hyperparameters and generator: the model's own
   ``reconstruction`` and ``regulariser`` (FactorVAE's discriminator on ``z`` evaluated for all
   members at once, :attr:`~gatedvae.models.GenerativeModel.regulariser_networks`);
6. each member's finiteness check (a member whose loss is not finite leaves its total out and is
   returned as failed); one backward of the sum of the members' totals (their parameters are
   disjoint, so each member receives its own gradient); one :class:`~gatedvae.train.stacked.StackedAdam`
   step with each member's learning rate;
7. the auxiliary step (FactorVAE's discriminator) the same way.

The order of each member's random draws is the order of its solo step, so the member's noise and
permutations are those it draws trained alone; the results differ from the solo run's by float
reassociation in the batched products only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..nets import Posterior
from .batch import Batch
from .stacked import StackedAdam, StackedNetworks
from .step import TrainingDiverged, set_finetune

__all__ = ["StackedStep"]


def _stack(values: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
    return None if values[0] is None else torch.stack(list(values))


class StackedStep:
    """An ensemble's step with the members' networks and optimisers stacked (see the module)."""

    def __init__(self, members: Sequence[Any]) -> None:
        self.members = list(members)
        models = [m.prep.model for m in self.members]
        self.nets = StackedNetworks(models, precision=self.members[0].precision.name)
        self.opt: dict[str, StackedAdam] = {}
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None  # the stacked batch (draw)
        self._drawn: list[Batch] | None = None
        self._groups: dict[str, str] = {"main": "main"}  # optimiser name -> parameter group
        for name in self.nets.auxiliary_names:
            self._groups[name] = name
        if self.members[0].optimizers.finetune is not None:
            self._groups["finetune"] = "decoder"
        for name, group in self._groups.items():
            self.opt[name] = StackedAdam.from_optimizers(
                self.nets.parameters_of(group), [self._own(m, name) for m in self.members]
            )

    @staticmethod
    def _own(member: Any, name: str) -> torch.optim.Optimizer:
        return member.optimizers.finetune if name == "finetune" else member.optimizers.steps[name]

    def set_finetune(self, on: bool) -> None:
        self.nets.set_encoder_frozen(on)
        for m in self.members:
            set_finetune(m.prep.model, on)

    def draw(self, members: Sequence[Any], step: int, finetune: bool) -> list[Batch]:
        """Every member's batch of ``step``, drawn with its own generator (as it draws alone), the
        images gathered straight into this step's stacked buffers ``(K, B, C, H, W)`` (no copy to
        stack them; :meth:`step` reads the buffers)."""
        k = len(members)
        if self._buffers is None or self._buffers[0].shape[0] != k:
            ds = members[0].prep.dataset
            batcher = members[0].batcher
            rows = len(range(batcher.batch_size)[batcher.shard])  # this process's rows (train/distributed.py)
            shape = (k, rows, *ds.image_shape)
            device = members[0].prep.device
            self._buffers = (torch.empty(shape, device=device), torch.empty(shape, device=device))
        xs, ts = self._buffers
        batches = [m.batcher.draw(step, m.rng, finetune, out=(xs[i], ts[i])) for i, m in enumerate(members)]
        self._drawn = batches
        return batches

    def _images(self, batches: Sequence[Batch]) -> tuple[torch.Tensor, torch.Tensor]:
        """The stacked inputs and targets ``(K, B, C, H, W)``: the buffers :meth:`draw` filled (an
        identity pair's target copied in, or the inputs themselves when every member's is one),
        else stacked from the batches."""
        if batches is not self._drawn or self._buffers is None:
            return torch.stack([b.x for b in batches]), torch.stack([b.target for b in batches])
        xs, ts = self._buffers
        same = [b.target is b.x for b in batches]
        if all(same):
            return xs, xs
        for i, s in enumerate(same):
            if s:
                ts[i].copy_(xs[i])
        return xs, ts

    def step(
        self, members: Sequence[Any], batches: Sequence[Batch], step: int, finetune: bool
    ) -> list[dict[str, torch.Tensor] | TrainingDiverged]:
        models = [m.prep.model for m in members]
        x, target = self._images(batches)  # (K, B, C, H, W) each
        cond = _stack([b.cond for b in batches])  # (K, B, c) or None
        enc_cond = _stack([b.cond if b.enc_cond is None else b.enc_cond for b in batches])
        mu, logvar = self.nets.encode(x, enc_cond)  # (K, B, M) each
        eps = torch.stack(
            [torch.randn(mu.shape[1:], generator=m.gen, device=mu.device, dtype=mu.dtype) for m in members]
        )  # (K, B, M): each member's own noise, as its solo rsample draws it
        z = mu + torch.exp(0.5 * logvar) * eps  # (K, B, M)
        full = torch.ones(mu.shape[-1], dtype=torch.bool, device=mu.device)
        masks = torch.stack([full if b.gate_mask is None else b.gate_mask for b in batches])  # (K, M)
        z_dec = torch.where(masks[:, None, :], z, z.detach())  # the gate (gating.gate)
        out = self.nets.decode(z_dec, cond)  # (K, B, C, H, W)
        # the regulariser sees the gated posterior where a member gates it (gating.gate_kl)
        gate_kl = [
            m.prep.config.gating.gate_kl and b.gate_mask is not None for m, b in zip(members, batches, strict=True)
        ]
        reg = masks | ~torch.tensor(gate_kl, device=mu.device)[:, None]  # (K, M): where the gradient passes
        reg = reg[:, None, :]  # (K, 1, M)
        reg_mu, reg_logvar = torch.where(reg, mu, mu.detach()), torch.where(reg, logvar, logvar.detach())
        reg_z = torch.where(reg, z, z.detach())
        given: dict[str, torch.Tensor] = {}
        for name in models[0].regulariser_networks:  # FactorVAE's discriminator, no parameter gradient
            given[name] = self.nets.auxiliary(name, reg_z, grad_params=False)  # (K, B, ...)
        # Each member's slices by unbind, not by indexing: the backward of K index operations would
        # each write a zero (K, ...) gradient (measured: 82 ms of a 130 ms step at K = 8, width 256);
        # unbind's backward stacks the K gradients once.
        mus, logvars, zs = (t.unbind(0) for t in (reg_mu, reg_logvar, reg_z))
        givens = {n: v.unbind(0) for n, v in given.items()}
        # The reconstruction of every member at once (the members share the likelihood: the ensemble
        # key), per image as each member's own call sums it, then each member's batch mean.
        recons = models[0].reconstruction(out.flatten(0, 1), target.flatten(0, 1)).view(out.shape[:2]).mean(1)
        recons = recons.unbind(0)  # K scalars
        results: list[dict[str, torch.Tensor] | TrainingDiverged] = []
        totals = []
        for k, (m, model) in enumerate(zip(members, models, strict=True)):
            recon = recons[k]
            post = Posterior(mus[k], logvars[k])
            terms = {
                "recon": recon,
                **model.regulariser_given(post, zs[k], step, m.gen, {n: v[k] for n, v in givens.items()}),
            }
            total = torch.stack(list(terms.values())).sum()
            try:
                m.ckpt.guard.observe(step, terms, total)
            except TrainingDiverged as exc:
                results.append(exc)
                continue
            totals.append(terms["recon"] if finetune else total)
            results.append({**terms, "total": total})
        opt = self.opt["finetune" if finetune else "main"]
        opt.zero_grad(set_to_none=True)
        if totals:
            torch.stack(totals).sum().backward()
            opt.step()
        if not finetune and self.nets.auxiliary_names and totals:
            extra = self._auxiliary(members, models, z.detach())
            for res, e in zip(results, extra, strict=True):
                if isinstance(res, dict):
                    res.update(e)
        return results

    def _auxiliary(
        self, members: Sequence[Any], models: Sequence[Any], z: torch.Tensor
    ) -> list[dict[str, torch.Tensor]]:
        """The auxiliary modules' step (FactorVAE's discriminator) for every member at once."""
        per = [model.auxiliary_inputs(z[k], m.gen) for k, (m, model) in enumerate(zip(members, models, strict=True))]
        extra: list[dict[str, torch.Tensor]] = [{} for _ in members]
        for name in self.nets.auxiliary_names:
            opt = self.opt[name]
            opt.zero_grad(set_to_none=True)
            n_inputs = len(per[0][name])
            outputs = [
                self.nets.auxiliary(name, torch.stack([p[name][i] for p in per]), grad_params=True)
                for i in range(n_inputs)
            ]
            split = [o.unbind(0) for o in outputs]
            losses = [model.auxiliary_loss({name: [o[k] for o in split]})[name] for k, model in enumerate(models)]
            torch.stack(losses).sum().backward()
            opt.step()
            for k, loss in enumerate(losses):
                extra[k]["disc" if name == "discriminator" else name] = loss.detach()
        return extra

    def sync(self) -> None:
        """The members' own modules and optimisers take the stacked values (checkpoints, callbacks)."""
        self.nets.to_members()
        for name, opt in self.opt.items():
            opt.to_members([self._own(m, name) for m in self.members])

    def drop(self, members: Sequence[Any]) -> None:
        """Members that left (diverged): the others keep their values bitwise."""
        gone = {id(m) for m in members}
        keep = [k for k, m in enumerate(self.members) if id(m) not in gone]
        self.members = [self.members[k] for k in keep]
        if not keep:
            return
        self.nets.keep(keep)
        for name, group in self._groups.items():
            self.opt[name].keep(keep, self.nets.parameters_of(group))
