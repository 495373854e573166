"""The Gated-VAE paper's fully connected network (``000_fc03c6fb001bc541.txt``, IV-A2).

"The architecture of the basic network encoder comprises 2 fully connected layers with
batch normalization and ReLU activations, and the decoder comprises 3 fully connected layers
with batch normalization, ReLU activations and a sigmoid output." The hidden width is not
stated; beta-VAE's dSprites MLP used 1200, the paper preset here. The decoder returns
logits; the sigmoid lives in the Bernoulli likelihood.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MLPEncoder", "MLPDecoder", "BinaryInputLinear"]


def _block(n_in: int, n_out: int, first: nn.Linear | None = None) -> nn.Sequential:
    return nn.Sequential(first or nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out), nn.ReLU(inplace=True))


class BinaryInputLinear(nn.Linear):
    """``nn.Linear`` for a network's first layer, with a sparse path for sparse binary inputs.

    dSprites images are binary and about 95% black (4.7% of pixels on, at most 10%), so
    ``x @ W^T`` is a sum of the weight columns of the lit pixels: ``embedding_bag`` over the
    nonzero indices does the forward and the weight gradient (``X^T G``, scattered into the
    lit rows) in a fraction of the dense products' time (docs/performance.md).

    ``embedding_bag`` needs ``W^T`` contiguous, so the parameter is ``weight_t`` ``(in, out)``
    and ``weight`` is its transposed view ``(out, in)``, with ``nn.Linear``'s shape, values and
    initialisation. Storing the view itself as the parameter (a column-major ``(out, in)``
    tensor) made the fused Adam kernel copy it to a contiguous tensor and back every step
    (2.7x its update time; docs/performance.md). The state_dict holds ``weight`` ``(out, in)``
    as ``nn.Linear``'s does; :mod:`gatedvae.checkpoint` saves the optimiser moments of a
    parameter marked ``stored_transposed`` in that same ``(out, in)`` form, so checkpoints
    keep one format.

    The sparse path is taken when the batch is on the CPU (finding the nonzeros would be a
    host synchronisation on an accelerator), needs no input gradient, is binary (every
    nonzero equals 1) and at most ``max_density`` dense; otherwise the dense product. Both
    compute the same function; the results differ only in float summation order.
    ``sparse_binary = False`` turns the sparse path off.
    """

    max_density = 0.25

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features)
        weight, bias = self.weight.detach(), self.bias.detach()
        del self.weight, self.bias  # re-registered in nn.Linear's order: the optimiser's parameter order stays
        self.weight_t = nn.Parameter(weight.t().contiguous())  # (in, out)
        self.weight_t.stored_transposed = True  # type: ignore[attr-defined]
        self.bias = nn.Parameter(bias)  # (out,)
        self.sparse_binary = True

    @property  # type: ignore[override]
    def weight(self) -> torch.Tensor:
        """``(out, in)``: the transposed view of the parameter ``weight_t``."""
        return self.weight_t.t()

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        w = self.weight_t if keep_vars else self.weight_t.detach()
        destination[prefix + "weight"] = w.t()  # (out, in), as nn.Linear's
        destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        if prefix + "weight" in state_dict:  # a copy made by load_state_dict: renaming the key is ours to do
            w = state_dict.pop(prefix + "weight")
            state_dict[prefix + "weight_t"] = w.t() if w.dim() == 2 else w  # a wrong shape is reported below
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if prefix + "weight_t" in missing_keys:
            missing_keys[missing_keys.index(prefix + "weight_t")] = prefix + "weight"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wt = self.weight_t  # (in, out)
        if self.sparse_binary and x.device.type == "cpu" and not x.requires_grad and x.dim() == 2:
            if int(torch.count_nonzero(x)) <= self.max_density * x.numel():
                nz = x.nonzero()  # (nnz, 2), row-major order: rows sorted
                if bool(x[nz[:, 0], nz[:, 1]].eq(1).all()):
                    starts = torch.searchsorted(nz[:, 0].contiguous(), torch.arange(x.shape[0]))  # (B,) bag offsets
                    return F.embedding_bag(nz[:, 1], wt, starts, mode="sum") + self.bias  # (B, out)
        return torch.addmm(self.bias, x, wt)  # (B, out); the gradient comes out in weight_t's layout


class MLPEncoder(nn.Module):
    """``x (B, C, H, W)`` [+ condition ``(B, c)``] -> features ``(B, hidden)``: 2 FC+BN+ReLU layers."""

    def __init__(self, n_pixels: int, hidden: int, cond_dim: int = 0) -> None:
        super().__init__()
        self.cond_dim = cond_dim
        first = BinaryInputLinear(n_pixels, hidden) if not cond_dim else None  # binary images: sparse path
        self.layers = nn.Sequential(_block(n_pixels + cond_dim, hidden, first), _block(hidden, hidden))

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = x.flatten(1)  # (B, C*H*W)
        if self.cond_dim:
            h = torch.cat([h, cond], dim=1)  # (B, C*H*W + c)
        return self.layers(h)  # (B, hidden)


class MLPDecoder(nn.Module):
    """``z (B, M)`` [+ condition] -> logits ``(B, C, H, W)``: 3 FC layers, BN+ReLU between."""

    def __init__(self, latent_dim: int, hidden: int, image_shape: tuple[int, int, int], cond_dim: int = 0) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.cond_dim = cond_dim
        n_out = image_shape[0] * image_shape[1] * image_shape[2]
        self.layers = nn.Sequential(
            _block(latent_dim + cond_dim, hidden), _block(hidden, hidden), nn.Linear(hidden, n_out)
        )

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if self.cond_dim:
            z = torch.cat([z, cond], dim=1)  # (B, M + c)
        return self.layers(z).view(-1, *self.image_shape)  # (B, C, H, W)
