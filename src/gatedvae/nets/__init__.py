"""Encoders and decoders: the Gated-VAE paper's MLP and the common 64x64 conv network.

``build_networks(net, image_shape, latent_dim, hidden, ...)`` returns an
encoder that maps images (and optional condition vectors) to posterior parameters and a
decoder that maps latent codes (and conditions) to pixel logits / means.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .conv64 import Conv64Decoder, Conv64Encoder
from .heads import DiagonalGaussianHead, FullCovarianceGaussianHead, Posterior
from .mlp import MLPDecoder, MLPEncoder

__all__ = [
    "MLPEncoder",
    "MLPDecoder",
    "Conv64Encoder",
    "Conv64Decoder",
    "DiagonalGaussianHead",
    "FullCovarianceGaussianHead",
    "Posterior",
    "Encoder",
    "build_networks",
]


class Encoder(nn.Module):
    """A feature trunk followed by a Gaussian head: ``x (B, C, H, W) -> Posterior``."""

    def __init__(self, trunk: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = head

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> Posterior:
        return self.head(self.trunk(x, cond))


def build_networks(
    net: str,
    image_shape: tuple[int, int, int],
    latent_dim: int,
    hidden: int,
    enc_cond_dim: int = 0,
    dec_cond_dim: int = 0,
    covariance: str = "diagonal",
) -> tuple[Encoder, nn.Module]:
    """Encoder and decoder for ``net`` in ``{"mlp", "conv64"}``.

    ``enc_cond_dim`` / ``dec_cond_dim``: width of a condition vector concatenated to the
    encoder's features / the decoder's input (conditional VAE; 0 for none).
    ``covariance`` is ``"diagonal"`` (mean and log-variance) or ``"full"`` (mean and a
    Cholesky factor with a positive diagonal, for CHyVAE, ``004_1dabe4d22771e1b6.txt``).
    """
    c, h, w = image_shape
    if net == "mlp":
        trunk = MLPEncoder(c * h * w, hidden, enc_cond_dim)
        decoder: nn.Module = MLPDecoder(latent_dim, hidden, image_shape, dec_cond_dim)
        features = hidden
    elif net == "conv64":
        if (h, w) != (64, 64):
            raise ConfigError(
                f"model.net=conv64 needs 64x64 images, the data has {h}x{w}; use model.net=mlp or data.image_size=64"
            )
        trunk = Conv64Encoder(c, hidden, enc_cond_dim)
        decoder = Conv64Decoder(latent_dim, hidden, c, dec_cond_dim)
        features = hidden
    else:
        raise ConfigError(f"unknown network '{net}'; use mlp or conv64")
    if covariance == "diagonal":
        head: nn.Module = DiagonalGaussianHead(features, latent_dim)
    elif covariance == "full":
        head = FullCovarianceGaussianHead(features, latent_dim)
    else:
        raise ConfigError(f"unknown covariance '{covariance}'; use diagonal or full")
    return Encoder(trunk, head), decoder
