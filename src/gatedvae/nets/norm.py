"""Batch norm with the statistics of another batch (DC-IGN clamp steps).

A DC-IGN batch is not an i.i.d. sample: only one factor group varies in it (a dSprites "shape"
batch of 128 holds 3 distinct images), and its clamped latents are identical across the batch.
Training-mode batch norm would normalise such a batch by its own statistics, with two faults:

* right after a layer whose input is constant across the batch (the decoder's first
  Linear -> BatchNorm1d, fed the clamped latents), subtracting the batch mean cancels the
  constant's contribution exactly: the decoder cannot draw what the clamped latents carry, and
  their weight columns get no reconstruction gradient;
* the encoder's features are scaled by a variance 3-5 times smaller than an i.i.d. batch's,
  and the running statistics that evaluation uses are averaged over such batches.

So on a clamp step the model first runs an i.i.d. *reference batch* through the encoder and
decoder in training mode without gradient (:func:`capture_statistics`): every batch-norm layer
updates its running statistics from it, as ordinary training would, and the layer's input
mean and biased variance are recorded. The clamp batch is then normalised with those recorded
statistics (:func:`use_statistics`), as fixed constants, in the manner of reference batch
normalisation (Salimans et al. 2016). Running statistics thus only ever see i.i.d. batches, a
clamped latent passes through every layer as the affine map it is in evaluation mode, and the
encoding of an image does not depend on which batch it is in.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["batch_norm_layers", "capture_statistics", "use_statistics", "BatchStatistics"]

#: Recorded input statistics of each batch-norm layer: layer -> (mean, biased variance), ``(C,)`` each.
BatchStatistics = dict[nn.modules.batchnorm._BatchNorm, tuple[torch.Tensor, torch.Tensor]]


def batch_norm_layers(*modules: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every batch-norm layer in ``modules`` that normalises by batch statistics when training."""
    return [
        m
        for module in modules
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


def _moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of a batch-norm input ``(B, C, ...)``, over the global
    batch in a data-parallel run (as the synchronised layers normalise). At least float32: under
    mixed precision the input is bfloat16 / float16 and its statistics are taken in float32 (the
    running buffers' dtype, which :func:`use_statistics` hands the layer)."""
    dims = [0, *range(2, x.dim())]
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    out = torch.promote_types(x.dtype, torch.float32)
    if world == 1:
        var, mean = torch.var_mean(x.to(out), dims, correction=0)  # (C,) each
        return mean, var
    xd = x.to(torch.float64)
    sums = torch.cat([xd.sum(dims), (xd * xd).sum(dims)])  # (2C,)
    dist.all_reduce(sums)
    count = x.numel() // x.shape[1] * world
    c = x.shape[1]
    mean = sums[:c] / count
    var = (sums[c:] / count - mean * mean).clamp_min(0.0)
    return mean.to(out), var.to(out)


@contextmanager
def capture_statistics(layers: list[nn.modules.batchnorm._BatchNorm]) -> Iterator[BatchStatistics]:
    """Record the input mean and biased variance of each of ``layers`` during the block.

    Run the reference batch through the network in training mode inside the block; the layers
    behave as usual (their running statistics are updated), and the returned mapping is filled
    with the statistics they normalised by (the last call's, should a layer run twice).
    """
    stats: BatchStatistics = {}

    def hook(layer, args):
        with torch.no_grad():
            stats[layer] = _moments(args[0])

    handles = [layer.register_forward_pre_hook(hook) for layer in layers]
    try:
        yield stats
    finally:
        for h in handles:
            h.remove()


@contextmanager
def use_statistics(stats: BatchStatistics) -> Iterator[None]:
    """Within the block, each layer in ``stats`` normalises by its recorded statistics, as fixed
    constants (no gradient through them), and updates no running statistics.

    The layers run in evaluation mode with their running buffers rebound (not overwritten) to
    the recorded tensors; the block's end restores the buffers and the training flags. Autograd
    keeps the tensors it saved, so a backward pass after the block is unaffected.
    """
    saved = [(layer, layer.training, layer.running_mean, layer.running_var) for layer in stats]
    try:
        for layer, (mean, var) in stats.items():
            layer.running_mean = mean.detach().to(layer.running_mean.dtype)
            layer.running_var = var.detach().to(layer.running_var.dtype)
            layer.train(False)
        yield
    finally:
        for layer, training, mean, var in saved:
            layer.running_mean = mean
            layer.running_var = var
            layer.train(training)
