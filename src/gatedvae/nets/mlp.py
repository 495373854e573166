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
    lit rows) in a fraction of the dense products' time (docs/performance.md). The weight is
    stored column-major, i.e. ``W^T`` contiguous, which ``embedding_bag`` needs; its shape,
    values, initialisation and state_dict are those of ``nn.Linear``.

    The sparse path is taken when the batch is on the CPU (finding the nonzeros would be a
    host synchronisation on an accelerator), needs no input gradient, is binary (every
    nonzero equals 1) and at most ``max_density`` dense; otherwise the dense product. Both
    compute the same function; the results differ only in float summation order.
    ``sparse_binary = False`` turns the sparse path off.
    """

    max_density = 0.25

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features)
        self.weight = nn.Parameter(self.weight.detach().t().contiguous().t())  # (out, in), W^T contiguous
        self.sparse_binary = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wt = self.weight.t()  # (in, out)
        if self.sparse_binary and x.device.type == "cpu" and not x.requires_grad and x.dim() == 2:
            if int(torch.count_nonzero(x)) <= self.max_density * x.numel():
                nz = x.nonzero()  # (nnz, 2), row-major order: rows sorted
                if bool(x[nz[:, 0], nz[:, 1]].eq(1).all()):
                    starts = torch.searchsorted(nz[:, 0].contiguous(), torch.arange(x.shape[0]))  # (B,) bag offsets
                    return F.embedding_bag(nz[:, 1], wt, starts, mode="sum") + self.bias  # (B, out)
        return torch.addmm(self.bias, x, wt)  # (B, out); the weight gradient comes out in W's layout


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
        self.layers = nn.Sequential(_block(latent_dim + cond_dim, hidden), _block(hidden, hidden), nn.Linear(hidden, n_out))

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if self.cond_dim:
            z = torch.cat([z, cond], dim=1)  # (B, M + c)
        return self.layers(z).view(-1, *self.image_shape)  # (B, C, H, W)
