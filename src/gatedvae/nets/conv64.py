"""The common 64x64 convolutional encoder/decoder (Burgess et al. 2017; Kim and Mnih 2018,
used by CHyVAE, ``004_1dabe4d22771e1b6.txt`` section 5.1): four 4x4 stride-2 convolutions
with 32, 32, 64, 64 channels, a 256-unit fully connected layer, and the mirror image for the
decoder. ``hidden`` sets the fully connected width (256 in the papers).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Conv64Encoder", "Conv64Decoder"]


class Conv64Encoder(nn.Module):
    """``x (B, C, 64, 64)`` [+ condition] -> features ``(B, hidden)``."""

    def __init__(self, channels: int, hidden: int = 256, cond_dim: int = 0) -> None:
        super().__init__()
        self.cond_dim = cond_dim
        self.conv = nn.Sequential(
            nn.Conv2d(channels, 32, 4, 2, 1),
            nn.ReLU(inplace=True),  # (B, 32, 32, 32)
            nn.Conv2d(32, 32, 4, 2, 1),
            nn.ReLU(inplace=True),  # (B, 32, 16, 16)
            nn.Conv2d(32, 64, 4, 2, 1),
            nn.ReLU(inplace=True),  # (B, 64, 8, 8)
            nn.Conv2d(64, 64, 4, 2, 1),
            nn.ReLU(inplace=True),  # (B, 64, 4, 4)
        )
        self.fc = nn.Sequential(nn.Linear(64 * 4 * 4 + cond_dim, hidden), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv(x).flatten(1)  # (B, 1024)
        if self.cond_dim:
            h = torch.cat([h, cond], dim=1)  # (B, 1024 + c)
        return self.fc(h)  # (B, hidden)


class Conv64Decoder(nn.Module):
    """``z (B, M)`` [+ condition] -> logits ``(B, C, 64, 64)``."""

    def __init__(self, latent_dim: int, hidden: int = 256, channels: int = 1, cond_dim: int = 0) -> None:
        super().__init__()
        self.cond_dim = cond_dim
        self.fc = nn.Sequential(
            nn.Linear(latent_dim + cond_dim, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, 64 * 4 * 4),
            nn.ReLU(inplace=True),
        )
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(64, 64, 4, 2, 1),
            nn.ReLU(inplace=True),  # (B, 64, 8, 8)
            nn.ConvTranspose2d(64, 32, 4, 2, 1),
            nn.ReLU(inplace=True),  # (B, 32, 16, 16)
            nn.ConvTranspose2d(32, 32, 4, 2, 1),
            nn.ReLU(inplace=True),  # (B, 32, 32, 32)
            nn.ConvTranspose2d(32, channels, 4, 2, 1),  # (B, C, 64, 64)
        )

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if self.cond_dim:
            z = torch.cat([z, cond], dim=1)  # (B, M + c)
        return self.deconv(self.fc(z).view(-1, 64, 4, 4))  # (B, C, 64, 64)
