"""The Gated-VAE paper's fully connected network (``000_fc03c6fb001bc541.txt``, IV-A2).

"The architecture of the basic network encoder comprises 2 fully connected layers with
batch normalization and ReLU activations, and the decoder comprises 3 fully connected layers
with batch normalization, ReLU activations and a sigmoid output." The hidden width is not
stated; beta-VAE's dSprites MLP used 1200, the paper preset here. The decoder returns
logits; the sigmoid lives in the Bernoulli likelihood.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MLPEncoder", "MLPDecoder"]


def _block(n_in: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out), nn.ReLU(inplace=True))


class MLPEncoder(nn.Module):
    """``x (B, C, H, W)`` [+ condition ``(B, c)``] -> features ``(B, hidden)``: 2 FC+BN+ReLU layers."""

    def __init__(self, n_pixels: int, hidden: int, cond_dim: int = 0) -> None:
        super().__init__()
        self.cond_dim = cond_dim
        self.layers = nn.Sequential(_block(n_pixels + cond_dim, hidden), _block(hidden, hidden))

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
