"""Reconstruction terms: negative log-likelihoods of the target under the decoder.

Both are ``-log p(x | z)``, the first term of the ELBO in ``000_fc03c6fb001bc541.txt`` Eq. 1
and ``003_527384601d5c0438.txt`` Eq. 3, written as a loss (to be minimised).

Reduction (house rule): every function returns ``(B,)``, summed over all non-batch dimensions
(pixels and channels). The mean over the batch happens once, in the objective.

Targets are float tensors in ``[0, 1]`` (binary dSprites, or grayscale / RGB intensities).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["bernoulli_nll", "gaussian_nll", "squared_error"]


def _check_pair(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str]) -> None:
    # An exact shape match is required: a silently broadcast (B, 1, H, W) against (B, H, W)
    # would sum the wrong number of pixels.
    if a.shape != b.shape:
        raise ValueError(f"{names[0]} has shape {tuple(a.shape)} but {names[1]} has shape {tuple(b.shape)}")
    if a.dim() < 2:
        raise ValueError(f"{names[0]} needs a batch dimension and at least one data dimension, got {tuple(a.shape)}")


def bernoulli_nll(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Bernoulli negative log-likelihood from decoder logits (sigmoid cross-entropy).

    Formula, per pixel k with ``p_k = sigmoid(logits_k)``::

        nll_k = -[ x_k * log p_k + (1 - x_k) * log(1 - p_k) ]
        nll   = sum_k nll_k

    This is the "pixel-wise cross-entropy" of ``000_fc03c6fb001bc541.txt`` (Sec. III, after
    Eq. 2) and the "sigmoid cross-entropy" of ``004_1dabe4d22771e1b6.txt`` (Sec. 5.1), i.e.
    ``-log p(x|z)`` of Eq. 1 there. It is computed from logits
    (``binary_cross_entropy_with_logits``), never from sigmoid outputs: a decoder whose last
    layer is a sigmoid should hand its pre-activation here. For non-binary targets in
    ``[0, 1]`` this is the usual "continuous Bernoulli without its normaliser" loss.

    Args:
        logits: ``(B, ...)`` decoder logits.
        target: ``(B, ...)`` floats in ``[0, 1]``, same shape.

    Returns:
        ``(B,)``: summed over every non-batch dimension.
    """
    _check_pair(logits, target, ("logits", "target"))
    per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")  # (B, ...)
    return per_pixel.flatten(1).sum(1)  # (B,)


def gaussian_nll(
    mean: torch.Tensor,
    target: torch.Tensor,
    sigma: float | torch.Tensor = 1.0,
    log_scale: torch.Tensor | None = None,
    include_constant: bool = True,
) -> torch.Tensor:
    """Gaussian negative log-likelihood, fixed or learned scale.

    Formula, per pixel k, with ``s = exp(log_scale)`` if given, else ``s = sigma``::

        quad_k  = 0.5 * ((x_k - mean_k) / s)^2
        scale_k = log s
        const_k = 0.5 * log(2 pi)          (only if include_constant)
        nll     = sum_k (quad_k + scale_k + const_k)

    ``-log N(x | mean, s^2)`` summed over pixels (the first ELBO term of
    ``000_fc03c6fb001bc541.txt`` Eq. 1 under a Gaussian decoder). With the default
    ``include_constant=True`` it is the exact NLL in nats, comparable across ``sigma``.
    The ``log s`` term is always included because it is not constant when the scale is
    learned. For reference, disentanglement_lib's ``l2_loss`` (squared error summed over
    pixels) equals ``2 * gaussian_nll(mean, x, sigma=1, include_constant=False)``; see
    :func:`squared_error`.

    Args:
        mean: ``(B, ...)`` decoder means, in data space (already through any output activation).
        target: ``(B, ...)`` floats in ``[0, 1]``, same shape.
        sigma: fixed standard deviation (float or a tensor broadcastable to ``mean``); ignored if
            ``log_scale`` is given.
        log_scale: optional learned ``log s``, broadcastable to ``mean`` (a scalar, per-channel
            or per-pixel parameter).
        include_constant: add ``0.5 log(2 pi)`` per pixel.

    Returns:
        ``(B,)``: summed over every non-batch dimension.
    """
    _check_pair(mean, target, ("mean", "target"))
    if log_scale is not None:
        log_s = log_scale.to(mean.dtype)  # broadcastable to (B, ...)
        inv_s = torch.exp(-log_s)  # broadcastable to (B, ...)
    elif isinstance(sigma, torch.Tensor):
        # Checked where it lives: a device tensor synchronises here, so pass a float on CUDA.
        if bool((sigma <= 0).any()):
            raise ValueError(f"gaussian_nll: sigma must be positive, got {sigma}")
        log_s = torch.log(sigma.to(device=mean.device, dtype=mean.dtype))  # () or broadcastable
        inv_s = torch.exp(-log_s)  # () or broadcastable
    else:
        # A Python float stays one: no tensor is made from it (on CUDA that would be a
        # host-to-device copy, and a host wait, every step).
        if not sigma > 0:
            raise ValueError(f"gaussian_nll: sigma must be positive, got {sigma}")
        log_s, inv_s = math.log(sigma), 1.0 / sigma
    quad = 0.5 * ((target - mean) * inv_s) ** 2  # (B, ...)
    per_pixel = quad + log_s  # (B, ...)
    if include_constant:
        per_pixel = per_pixel + 0.5 * math.log(2.0 * math.pi)  # (B, ...)
    return per_pixel.flatten(1).sum(1)  # (B,)


def squared_error(mean: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum of squared errors, disentanglement_lib's ``l2_loss``.

    Formula::

        se = sum_k (x_k - mean_k)^2       ( = 2 * gaussian_nll(sigma=1, include_constant=False) )

    Args:
        mean: ``(B, ...)`` reconstructions in data space.
        target: ``(B, ...)`` floats in ``[0, 1]``, same shape.

    Returns:
        ``(B,)``: summed over every non-batch dimension.
    """
    _check_pair(mean, target, ("mean", "target"))
    return ((target - mean) ** 2).flatten(1).sum(1)  # (B,)
