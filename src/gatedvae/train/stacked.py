"""K runs of one network shape evaluated as one batched model, with a per-member Adam (issue 18).

An ensemble's ``stacked`` step strategy trains K member models that share their networks' shapes
(the same registered model, net, hidden width, latent size and condition sizes) together:

* :class:`StackedNetworks` stacks each network's parameters and buffers (encoder, decoder,
  FactorVAE's discriminator) into tensors with a leading member axis ``(K, ...)``
  (``torch.func.stack_module_state``) and evaluates the K networks as one call,
  ``vmap(functional_call)`` over a structural copy of member 0's network on the ``meta`` device.
  Batch-norm running statistics are batched buffers, updated in place under ``vmap`` in train
  mode and used in eval mode, as each member's own layers would.
* :class:`StackedAdam` is ``torch.optim.Adam`` over those stacked tensors with a learning rate
  and a step count per member (and per parameter, as torch keeps them): every update is torch's
  own fused Adam kernel (``torch._fused_adam_``) on slices of the stacked tensors, one call per
  run of neighbouring members that share a learning rate and step counts (one call for an
  ensemble of one learning rate), so that a member's update is bitwise the one its solo fused
  Adam makes from the same gradient. No host read: step counts are tensors on the parameters'
  device, with a host copy that plans the calls.

Both convert to and from the members' own modules and ``torch.optim.Adam`` objects
(``to_members`` / ``from_members``), so that checkpoints keep today's format
(:mod:`gatedvae.checkpoint`) and a member can be resumed alone.

Layouts. :class:`gatedvae.nets.mlp.BinaryInputLinear` stores ``weight_t (in, out)``: stacked
``(K, in, out)``, its moments in that layout like the member's own Adam state (the checkpoint
transposes both on save). An ``nn.Linear`` weight ``(out, in)`` is stacked ``(K, out, in)`` in
column-major order per member, the layout its gradient comes in under ``vmap``, so that autograd
does not copy every weight gradient; the member's own tensors keep their layout. The sparse path
of ``BinaryInputLinear`` is data-dependent, so not under ``vmap``: the structural copy has it off,
and sparse binary images on the CPU take a batched ``embedding_bag`` over the K members' weights
before the vmapped rest of the encoder instead (:meth:`StackedNetworks.encode`).

Batch norm with ``momentum=None`` (a cumulative average, which reads ``num_batches_tracked`` on
the host) cannot run under ``vmap``; the networks here use the default momentum.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from ..models import GenerativeModel
from ..nets import Posterior
from ..nets.mlp import BinaryInputLinear, MLPEncoder

__all__ = ["StackedNetworks", "StackedAdam", "check_stackable", "STACKED_PRECISIONS"]

#: ``train.precision`` values the stacked networks run in (fp16 needs a gradient scaler per member).
STACKED_PRECISIONS = ("fp32", "tf32", "bf16")


def check_stackable(models: Sequence[GenerativeModel]) -> None:
    """Raise ValueError (one line) unless ``models`` can be stacked: at least one, the same class,
    a diagonal-Gaussian encoder trained by reconstruction, every parameter and buffer inside a
    child network, and the same names, shapes, dtypes and devices in every member's networks."""
    if not models:
        raise ValueError("an ensemble needs at least one member model")
    first = models[0]
    name = first.registered_name or type(first).__name__
    if first.covariance != "diagonal" or not first.reconstructs:
        raise ValueError(f"model {name} cannot be stacked: only diagonal-Gaussian encoder-decoder models can")
    own = [n for n, _ in first.named_parameters(recurse=False)] + [n for n, _ in first.named_buffers(recurse=False)]
    if own:
        raise ValueError(f"model {name} cannot be stacked: it holds tensors outside its networks ({', '.join(own)})")
    ref = _layout(first)
    for k, m in enumerate(models[1:], start=1):
        if type(m) is not type(first):
            raise ValueError(f"member {k} is a {type(m).__name__}, member 0 a {type(first).__name__}")
        if m.cfg.condition_encoder != first.cfg.condition_encoder:
            raise ValueError(f"member {k} conditions its encoder differently from member 0")
        lay = _layout(m)
        if lay != ref:
            diff = next((key for key in ref if lay.get(key) != ref[key]), None) or next(iter(set(lay) - set(ref)))
            raise ValueError(
                f"member {k}'s networks differ from member 0's at {diff} "
                f"({lay.get(diff)} vs {ref.get(diff)}): an ensemble's members share one network shape"
            )


def _layout(model: nn.Module) -> dict[str, tuple]:
    """Name -> (shape, dtype, device, parameter or buffer) of every tensor of ``model``'s networks."""
    out = {n: (tuple(t.shape), t.dtype, t.device, "p") for n, t in model.named_parameters()}
    out.update({n: (tuple(t.shape), t.dtype, t.device, "b") for n, t in model.named_buffers()})
    return out


def _structure(module: nn.Module) -> nn.Module:
    """A copy of ``module`` on the ``meta`` device (no storage): the code and settings that
    ``functional_call`` runs with stacked tensors. Hooks are not copied (a member's precision
    hooks belong to that member) and the sparse input path is off (data-dependent: not under vmap)."""
    memo: dict[int, Any] = {}
    for m in module.modules():
        for attr, value in vars(m).items():
            if "hooks" in attr and isinstance(value, dict):
                memo[id(value)] = type(value)()
    base = copy.deepcopy(module, memo).to("meta")
    for m in base.modules():
        if hasattr(m, "sparse_binary"):
            m.sparse_binary = False
    return base


def _sparse_first_layer(encoder: nn.Module) -> str | None:
    """The name of the encoder's sparse-capable first layer (an unconditioned MLP trunk's
    :class:`~gatedvae.nets.mlp.BinaryInputLinear`, applied to the flattened image first), or None."""
    trunk = getattr(encoder, "trunk", None)
    if not isinstance(trunk, MLPEncoder) or trunk.cond_dim:
        return None
    first = trunk.layers[0][0]
    return "trunk.layers.0.0" if isinstance(first, BinaryInputLinear) else None


def _float32(out: Any) -> Any:
    if isinstance(out, tuple):
        return tuple(_float32(o) for o in out)
    return out.float() if out.dtype in (torch.bfloat16, torch.float16) else out


class StackedNetworks:
    """The networks of K same-shape member models as stacked tensors ``(K, ...)``.

    Args:
        models: the K members (:func:`check_stackable`); their own modules keep their tensors and
            are written only by :meth:`to_members`.
        precision: ``fp32``, ``tf32`` (a process-wide flag: nothing here) or ``bf16`` (autocast
            around each vmapped network call, float32 outputs, as :class:`~gatedvae.train.step.Precision`
            does for one run).

    Attributes:
        params: network name -> parameter name -> stacked leaf ``(K, ...)`` requiring grad
            (except the encoder's while :attr:`encoder_frozen`).
        buffers: network name -> buffer name -> stacked buffer ``(K, ...)`` (batch-norm statistics).
        names: the networks, in the models' registration order (encoder, decoder, auxiliaries).
    """

    def __init__(self, models: Sequence[GenerativeModel], *, precision: str = "fp32") -> None:
        if precision not in STACKED_PRECISIONS:
            raise ValueError(
                f"train.precision={precision} cannot be stacked (use one of {', '.join(STACKED_PRECISIONS)})"
            )
        check_stackable(models)
        first = models[0]
        self.models: list[GenerativeModel] = list(models)
        self.names: list[str] = [n for n, _ in first.named_children()]
        self.auxiliary_names: tuple[str, ...] = tuple(first.auxiliary_modules())
        self.precision = precision
        self._condition_encoder = bool(first.cfg.condition_encoder)
        self._base = {n: _structure(getattr(first, n)) for n in self.names}
        self._sparse_path = _sparse_first_layer(self._base["encoder"])
        #: whether sparse binary images take the batched sparse first layer (CPU, the MLP encoder; as
        #: the members' own layer is set: ``BinaryInputLinear.sparse_binary``)
        self.sparse_input = self._sparse_path is not None and bool(
            first.encoder.get_submodule(self._sparse_path).sparse_binary
        )
        self._after_first: nn.Module | None = None
        if self._sparse_path is not None:
            self._after_first = copy.deepcopy(self._base["encoder"])  # its first layer an identity
            owner, _, leaf = self._sparse_path.rpartition(".")
            setattr(self._after_first.get_submodule(owner), leaf, nn.Identity())
        self.training = first.training
        self.encoder_frozen = False
        self.params: dict[str, dict[str, torch.Tensor]] = {}
        self.buffers: dict[str, dict[str, torch.Tensor]] = {}
        for n in self.names:
            params, buffers = stack_module_state([getattr(m, n) for m in self.models])
            self.params[n] = {
                k: _in_layout(v.detach(), _transposed_weight(self._base[n], k)).requires_grad_()
                for k, v in params.items()
            }  # (K, ...) leaves
            self.buffers[n] = dict(buffers)  # (K, ...)
        self.train(self.training)

    # ------------------------------------------------------------------ shape and modes
    @property
    def size(self) -> int:
        """K, the number of members."""
        return len(self.models)

    def __len__(self) -> int:
        return len(self.models)

    @property
    def device(self) -> torch.device:
        return next(iter(self.params["encoder"].values())).device

    def train(self, mode: bool = True) -> StackedNetworks:
        """Train (batch statistics, running statistics updated) or eval mode for every network; the
        encoder stays in eval mode while frozen."""
        self.training = bool(mode)
        for n, base in self._base.items():
            base.train(self.training and not (n == "encoder" and self.encoder_frozen))
        if self._after_first is not None:
            self._after_first.train(self._base["encoder"].training)
        return self

    def eval(self) -> StackedNetworks:
        return self.train(False)

    def set_encoder_frozen(self, on: bool) -> None:
        """Decoder fine-tuning (:func:`gatedvae.train.step.set_finetune` for one run): the encoder's
        stacked parameters take no gradient and its batch norm uses the running statistics."""
        self.encoder_frozen = bool(on)
        for p in self.params["encoder"].values():
            p.requires_grad_(not on)
        self.train(self.training)

    # ------------------------------------------------------------------ evaluation
    def _call(
        self,
        name: str,
        args: tuple[torch.Tensor, ...],
        grad_params: bool = True,
        base: nn.Module | None = None,
        first: torch.Tensor | None = None,
    ) -> Any:
        """``vmap(functional_call)`` of network ``name`` over the member axis of its tensors and of
        each argument (all ``(K, ...)``). ``base``: another structural copy of it (the encoder
        after its first layer, which ``first`` computed: :meth:`_sparse_input`)."""
        base = self._base[name] if base is None else base
        params = self.params[name]
        if not grad_params:
            params = {k: v.detach() for k, v in params.items()}
        if first is not None:
            params = {k: v for k, v in params.items() if not k.startswith(self._sparse_path + ".")}

        def one(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], *a: torch.Tensor) -> Any:
            out = functional_call(base, (p, b), a)
            return (out.mu, out.logvar) if isinstance(out, Posterior) else out

        with self._autocast():
            out = vmap(one)(params, self.buffers[name], *(args if first is None else (first,)))
        return _float32(out)

    def _autocast(self) -> Any:
        if self.precision != "bf16":
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def _sparse_input(self, x: torch.Tensor) -> torch.Tensor | None:
        """The encoder's first layer on sparse binary images, ``x (K, B, C, H, W)`` -> ``(K, B, H)``,
        by one ``embedding_bag`` over the K members' weights (the sparse path of
        :class:`~gatedvae.nets.mlp.BinaryInputLinear`, batched over members; a data-dependent host
        read, so CPU only); None where that path does not apply (then the dense vmapped product)."""
        if self._sparse_path is None or x.device.type != "cpu" or x.requires_grad:
            return None
        layer = self._base["encoder"].get_submodule(self._sparse_path)
        flat = x.reshape(x.shape[0] * x.shape[1], -1)  # (K*B, N)
        nz = flat.nonzero()  # (nnz, 2), rows sorted (its length is the density check: no second pass)
        if nz.shape[0] > layer.max_density * flat.numel():
            return None
        if not bool(flat[nz[:, 0], nz[:, 1]].eq(1).all()):
            return None
        k, b, n = x.shape[0], x.shape[1], flat.shape[1]
        wt = self.params["encoder"][self._sparse_path + ".weight_t"]  # (K, N, H)
        bias = self.params["encoder"][self._sparse_path + ".bias"]  # (K, H)
        index = nz[:, 1] + torch.div(nz[:, 0], b, rounding_mode="floor") * n  # (nnz,) row of (K*N, H)
        starts = torch.searchsorted(nz[:, 0].contiguous(), torch.arange(k * b))  # (K*B,) bag offsets
        with self._autocast():
            h = F.embedding_bag(index, wt.reshape(k * n, -1), starts, mode="sum")  # (K*B, H)
        return h.view(k, b, -1) + bias[:, None, :]  # (K, B, H)

    def encode(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z|x) of each member: ``x (K, B, C, H, W)``, ``cond (K, B, c)`` or None ->
        ``mu, logvar (K, B, M)``. The condition reaches the encoder only when the members condition
        it (``model.condition_encoder``), as :meth:`GenerativeModel.encode` does. Sparse binary
        images on the CPU take the MLP's sparse first layer (:meth:`_sparse_input`)."""
        cond = cond if self._condition_encoder else None
        first = self._sparse_input(x) if cond is None and self.sparse_input else None
        if first is not None:
            return self._call("encoder", (x,), base=self._after_first, first=first)
        return self._call("encoder", (x,) if cond is None else (x, cond))

    def decode(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """``z (K, B, M)``, ``cond (K, B, c)`` or None -> logits or means ``(K, B, C, H, W)``."""
        return self._call("decoder", (z,) if cond is None else (z, cond))

    def auxiliary(self, name: str, z: torch.Tensor, *, grad_params: bool) -> torch.Tensor:
        """Auxiliary network ``name`` (FactorVAE's ``discriminator``) of each member on
        ``z (K, B, M)`` -> ``(K, B, ...)``. ``grad_params=False``: the network's parameters take no
        gradient (the gradient still reaches ``z``), as the FactorVAE regulariser evaluates it."""
        if name not in self.auxiliary_names:
            raise KeyError(f"no auxiliary network '{name}' (the members have: {', '.join(self.auxiliary_names)})")
        return self._call(name, (z,), grad_params)

    # ------------------------------------------------------------------ optimiser groups
    def groups(self) -> tuple[str, ...]:
        """The names :meth:`parameters_of` accepts."""
        return ("main", *self.auxiliary_names, "decoder")

    def parameters_of(self, group: str) -> list[torch.Tensor]:
        """The stacked leaves an optimiser updates, in the order of the member's own optimiser
        (:func:`gatedvae.train.step.make_optimizers`): ``main`` (every network but the auxiliary
        ones), an auxiliary network by name, or ``decoder`` (fine-tuning)."""
        if group == "main":
            nets = [n for n in self.names if n not in self.auxiliary_names]
        elif group in self.auxiliary_names or group == "decoder":
            nets = [group]
        else:
            raise KeyError(f"no parameter group '{group}' (groups: {', '.join(self.groups())})")
        return [p for n in nets for p in self.params[n].values()]

    # ------------------------------------------------------------------ members
    def _pairs(self) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        """(stacked tensor, the K members' own tensors) for every parameter and buffer."""
        out = []
        for n in self.names:
            mods = [getattr(m, n) for m in self.models]
            own_p = [dict(m.named_parameters()) for m in mods]
            own_b = [dict(m.named_buffers()) for m in mods]
            out += [(t, [o[k] for o in own_p]) for k, t in self.params[n].items()]
            out += [(t, [o[k] for o in own_b]) for k, t in self.buffers[n].items()]
        return out

    @torch.no_grad()
    def to_members(self) -> None:
        """Write the stacked parameters and buffers into the members' own tensors (in place: the
        members' Parameter objects, and so their optimisers' references, stay)."""
        for stacked, own in self._pairs():
            for k, t in enumerate(own):
                t.copy_(stacked[k])

    @torch.no_grad()
    def from_members(self) -> None:
        """Read the members' own parameters and buffers into the stacked tensors (in place: the
        stacked leaves, and so a :class:`StackedAdam` over them, stay). After ``load_checkpoint``."""
        for stacked, own in self._pairs():
            for k, t in enumerate(own):
                stacked[k].copy_(t)

    def keep(self, indices: Sequence[int]) -> None:
        """Keep only the members at ``indices`` (in that order): new stacked leaves, holding the
        kept members' values bitwise. A :class:`StackedAdam` follows with its own ``keep``."""
        idx = _index(indices, self.size, self.device)
        self.models = [self.models[i] for i in indices]
        for n in self.names:
            self.params[n] = {
                k: _select(v.detach(), idx).requires_grad_(v.requires_grad) for k, v in self.params[n].items()
            }
            self.buffers[n] = {k: v.index_select(0, idx) for k, v in self.buffers[n].items()}

    def drop(self, k: int) -> None:
        """Remove member ``k`` (a diverged run); the others keep their values bitwise."""
        self.keep([i for i in range(self.size) if i != k])


def _transposed_weight(base: nn.Module, name: str) -> bool:
    """Whether the stacked parameter ``name`` of ``base`` is an ``nn.Linear`` weight: under ``vmap``
    its gradient comes out as the transpose of a contiguous ``(K, in, out)`` tensor, so the leaf is
    kept in that layout (AccumulateGrad then takes the gradient as it is instead of copying it)."""
    owner, _, leaf = name.rpartition(".")
    module = base.get_submodule(owner) if owner else base
    return (
        leaf == "weight"
        and isinstance(module, nn.Linear)
        and isinstance(module._parameters.get("weight"), nn.Parameter)
    )


def _in_layout(values: torch.Tensor, transposed: bool) -> torch.Tensor:
    """``values (K, a, b)`` stored row-major, or with ``transposed`` as the transpose of a row-major
    ``(K, b, a)`` tensor (the layout of an ``nn.Linear`` weight's gradient under ``vmap``)."""
    if transposed and values.dim() == 3:
        return values.transpose(1, 2).contiguous().transpose(1, 2)  # (K, a, b), column-major per member
    return values.contiguous()


def _is_transposed(t: torch.Tensor) -> bool:
    return t.dim() == 3 and not t.is_contiguous() and t.transpose(1, 2).is_contiguous()


def _select(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Members ``idx`` of ``t (K, ...)``, bitwise, in ``t``'s layout."""
    return _in_layout(t.index_select(0, idx), _is_transposed(t))


def _index(indices: Sequence[int], size: int, device: torch.device) -> torch.Tensor:
    indices = [int(i) for i in indices]
    if not indices or len(set(indices)) != len(indices) or not all(0 <= i < size for i in indices):
        raise ValueError(f"members to keep must be distinct indices in 0..{size - 1}, got {indices}")
    return torch.tensor(indices, device=device)


class StackedAdam:
    """``torch.optim.Adam`` (amsgrad off, no weight decay, minimising) over stacked parameters
    ``(K, ...)`` with a learning rate per member.

    The update of member k's slice of parameter i is torch's fused Adam step (``torch._fused_adam_``,
    the kernel of ``torch.optim.Adam(fused=True)``) with member k's learning rate and step count
    ``steps[i, k]``::

        t          = steps[i, k] + 1                   (parameters with a gradient)
        exp_avg    = beta1 * exp_avg + (1 - beta1) * g
        exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g^2
        p         -= lr_k / (1 - beta1^t) * exp_avg / (sqrt(exp_avg_sq / (1 - beta2^t)) + eps)

    so a member's update is bitwise the one its own fused Adam makes from the same gradient. The
    kernel takes one learning rate and one step count per tensor: neighbouring members that share
    both are updated through one slice ``(k0:k1, ...)`` of each stacked tensor, so an ensemble whose
    members share a learning rate (seeds, hyperparameter or gating arms) takes one kernel call per
    step over all of its tensors. The step counts live on the parameters' device (``steps``,
    ``(P, K)``, as the kernel reads them) with a host copy that chooses the calls: the update never
    reads the device (sync-free on CUDA).

    Args:
        params: the stacked leaves (:meth:`StackedNetworks.parameters_of`), all ``(K, ...)``.
        lr: one learning rate or one per member (host floats: they choose the kernel calls).
        betas, eps: as torch's Adam, shared by the members.
    """

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        lr: float | Sequence[float],
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError("StackedAdam needs at least one parameter")
        k = self.params[0].shape[0]
        if any(p.dim() == 0 or p.shape[0] != k for p in self.params):
            raise ValueError("every stacked parameter needs the same leading member axis")
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        device = self.params[0].device
        self.exp_avg = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.steps = torch.zeros(len(self.params), k, dtype=torch.float32, device=device)  # (P, K)
        self._host_steps = [[0] * k for _ in self.params]  # (P, K): the host's copy of ``steps``
        self._lr = [0.0] * k
        self.lr = lr  # type: ignore[assignment]  (the setter plans the kernel calls)

    @property
    def size(self) -> int:
        return len(self._lr)

    @property
    def lr(self) -> list[float]:
        """The members' learning rates (a copy; assign a float or K floats to change them)."""
        return list(self._lr)

    @lr.setter
    def lr(self, value: float | Sequence[float]) -> None:
        k = self.params[0].shape[0]
        lrs = [float(value)] * k if isinstance(value, (int, float)) else [float(v) for v in value]
        if len(lrs) != k:
            raise ValueError(f"{len(lrs)} learning rates for {k} members")
        self._lr = lrs
        self._plan()

    @property
    def lr_tensor(self) -> torch.Tensor:
        """The learning rates as a ``(K,)`` float32 tensor on the parameters' device."""
        return torch.tensor(self._lr, dtype=torch.float32, device=self.params[0].device)

    def _plan(self) -> None:
        """The kernel calls: runs ``k0:k1`` of neighbouring members with the same learning rate and
        the same step count of every parameter, and the slices of each run (contiguous: the kernel
        walks parameter, gradient and moments in storage order, so an ``nn.Linear`` weight's slice
        is taken through its transpose)."""
        runs: list[tuple[int, int]] = []
        for k in range(self.size):
            same = runs and all(
                self._host_steps[i][k] == self._host_steps[i][runs[-1][0]] for i in range(len(self.params))
            )
            if same and self._lr[k] == self._lr[runs[-1][0]]:
                runs[-1] = (runs[-1][0], k + 1)
            else:
                runs.append((k, k + 1))
        self._runs = runs
        self._flip = [_is_transposed(p) for p in self.params]
        flat = [_storage_order(p.detach(), f) for p, f in zip(self.params, self._flip, strict=True)]
        avg = [_storage_order(m, f) for m, f in zip(self.exp_avg, self._flip, strict=True)]
        sq = [_storage_order(v, f) for v, f in zip(self.exp_avg_sq, self._flip, strict=True)]
        self._slices = [
            ([t[k0:k1] for t in flat], [t[k0:k1] for t in avg], [t[k0:k1] for t in sq], list(self.steps[:, k0]))
            for k0, k1 in runs
        ]  # per run: parameter, exp_avg, exp_avg_sq slices (K', ...) and the run's step counts (P x 0-dim)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        """One Adam update of every parameter that has a gradient (for every member)."""
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not live:
            return
        if len(live) == len(self.params):
            self.steps.add_(1)
        else:
            torch._foreach_add_([self.steps[i] for i in live], 1)  # (K,) rows: no index tensor to copy
        for i in live:
            self._host_steps[i] = [s + 1 for s in self._host_steps[i]]
        grads = [
            _storage_order(_grad(p), f) if p.grad is not None else None
            for p, f in zip(self.params, self._flip, strict=True)
        ]
        beta1, beta2 = self.betas
        for (k0, k1), (params, avg, sq, steps) in zip(self._runs, self._slices, strict=True):
            torch._fused_adam_(
                [params[i] for i in live],
                [grads[i][k0:k1] for i in live],
                [avg[i] for i in live],
                [sq[i] for i in live],
                [],
                [steps[i] for i in live],
                lr=self._lr[k0],
                beta1=beta1,
                beta2=beta2,
                weight_decay=0.0,
                eps=self.eps,
                amsgrad=False,
                maximize=False,
            )

    # ------------------------------------------------------------------ members
    @classmethod
    def from_optimizers(cls, params: Sequence[torch.Tensor], optimizers: Sequence[torch.optim.Adam]) -> StackedAdam:
        """A StackedAdam over ``params`` with the members' learning rates, betas and eps, and their
        state (:meth:`from_members`)."""
        groups = [_single_group(opt) for opt in optimizers]
        first = groups[0]
        opt = cls(params, [g["lr"] for g in groups], betas=tuple(first["betas"]), eps=first["eps"])
        opt.from_members(optimizers)
        return opt

    def _member_params(self, optimizers: Sequence[torch.optim.Adam]) -> list[list[torch.Tensor]]:
        if len(optimizers) != self.size:
            raise ValueError(f"{len(optimizers)} optimisers for {self.size} members")
        out = []
        for k, opt in enumerate(optimizers):
            group = _single_group(opt)
            own = list(group["params"])
            shapes_ok = len(own) == len(self.params) and all(
                tuple(p.shape) == tuple(s.shape[1:]) for p, s in zip(own, self.params, strict=True)
            )
            if not shapes_ok:
                raise ValueError(f"member {k}'s optimiser does not hold the stacked parameters' shapes in order")
            for key, want in (("betas", self.betas), ("eps", self.eps)):
                have = tuple(group[key]) if key == "betas" else group[key]
                if have != want:
                    raise ValueError(f"member {k}'s Adam has {key}={have}, the stacked Adam {want}")
            if group.get("amsgrad") or group.get("weight_decay") or group.get("maximize"):
                raise ValueError(f"member {k}'s Adam uses amsgrad, weight decay or maximize: not stacked")
            out.append(own)
        return out

    @torch.no_grad()
    def to_members(self, optimizers: Sequence[torch.optim.Adam]) -> None:
        """Fill each member's ``torch.optim.Adam`` state (``step``, ``exp_avg``, ``exp_avg_sq`` in
        the member parameter's own layout; ``step`` on the device where that optimiser keeps it:
        fused or capturable) so that :func:`gatedvae.checkpoint.save_checkpoint` writes today's
        format. A parameter whose step count is 0 gets no state, as torch's Adam before its first
        step."""
        own = self._member_params(optimizers)
        for k, opt in enumerate(optimizers):
            group = opt.param_groups[0]
            on_device = bool(group.get("fused") or group.get("capturable"))
            for i, p in enumerate(own[k]):
                count = self._host_steps[i][k]
                if not count:
                    opt.state.pop(p, None)
                    continue
                step = self.steps[i, k].clone() if on_device else torch.tensor(float(count), dtype=_scalar_dtype())
                opt.state[p] = {
                    "step": step,
                    "exp_avg": torch.empty_like(p, memory_format=torch.preserve_format).copy_(self.exp_avg[i][k]),
                    "exp_avg_sq": torch.empty_like(p, memory_format=torch.preserve_format).copy_(self.exp_avg_sq[i][k]),
                }

    @torch.no_grad()
    def from_members(self, optimizers: Sequence[torch.optim.Adam]) -> None:
        """Read each member's Adam state and learning rate into the stacked moments, step counts and
        learning rates (in place); a parameter without state (an optimiser that has not stepped
        yet) starts at step 0. Reads each step count (a host read where the optimiser keeps it on
        the device: at a restore, not per step)."""
        own = self._member_params(optimizers)
        lrs = []
        for k, opt in enumerate(optimizers):
            lrs.append(float(opt.param_groups[0]["lr"]))
            for i, p in enumerate(own[k]):
                st = opt.state.get(p, {})
                started = "exp_avg" in st
                count = float(st["step"]) if started else 0.0
                if count != int(count):
                    raise ValueError(f"member {k}'s Adam has a fractional step count {count}")
                if started:
                    self.exp_avg[i][k].copy_(st["exp_avg"])
                    self.exp_avg_sq[i][k].copy_(st["exp_avg_sq"])
                else:
                    self.exp_avg[i][k].zero_()
                    self.exp_avg_sq[i][k].zero_()
                self.steps[i, k].fill_(count)
                self._host_steps[i][k] = int(count)
        self.lr = lrs  # plans the kernel calls

    def keep(self, indices: Sequence[int], params: Sequence[torch.Tensor]) -> None:
        """Keep the members at ``indices`` (in that order), now updating ``params`` (the leaves of
        :meth:`StackedNetworks.keep`, same order as before)."""
        idx = _index(indices, self.size, self.steps.device)
        params = list(params)
        if len(params) != len(self.params) or any(
            p.shape[0] != len(indices) or p.shape[1:] != q.shape[1:] for p, q in zip(params, self.params, strict=True)
        ):
            raise ValueError("keep() needs the kept members' stacked parameters, in the same order")
        self.params = params
        self.exp_avg = [
            _in_layout(m.index_select(0, idx), _is_transposed(p)) for m, p in zip(self.exp_avg, params, strict=True)
        ]
        self.exp_avg_sq = [
            _in_layout(v.index_select(0, idx), _is_transposed(p)) for v, p in zip(self.exp_avg_sq, params, strict=True)
        ]
        self.steps = self.steps.index_select(1, idx).contiguous()  # (P, K')
        self._host_steps = [[row[i] for i in indices] for row in self._host_steps]
        self.lr = [self._lr[i] for i in indices]  # plans the kernel calls

    def drop(self, k: int, params: Sequence[torch.Tensor]) -> None:
        """Remove member ``k``; ``params`` are the stacked leaves after :meth:`StackedNetworks.drop`."""
        self.keep([i for i in range(self.size) if i != k], params)


def _scalar_dtype() -> torch.dtype:
    """The dtype of a non-fused torch Adam's CPU step count (``torch.optim.optimizer._get_scalar_dtype``)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _storage_order(t: torch.Tensor, flip: bool) -> torch.Tensor:
    """``t (K, ...)`` as a contiguous tensor (through its transpose with ``flip``): the same elements
    in storage order, so that a slice ``[k0:k1]`` is one contiguous block."""
    return t.transpose(1, 2) if flip else t


def _grad(p: torch.Tensor) -> torch.Tensor:
    """``p.grad`` in ``p``'s layout (autograd's already is; a gradient set by hand may not be)."""
    g = p.grad
    return g if g.stride() == p.stride() else torch.empty_like(p, memory_format=torch.preserve_format).copy_(g)


def _single_group(opt: torch.optim.Optimizer) -> dict[str, Any]:
    if len(opt.param_groups) != 1:
        raise ValueError(f"a member's optimiser has {len(opt.param_groups)} parameter groups; stacking needs one")
    return opt.param_groups[0]
