"""Annealed capacity (Burgess et al.): a KL target C that grows linearly with the step count.

``003_527384601d5c0438.txt`` Sec. 2.3: Eq. 5 (``gamma * |KL - C|``) and Eq. 6
(``gamma * ReLU(KL - C)``, the report's variant), with C "linearly increased from 0 to
C_max during training progress"; ``002_b6b404b9b5e7b646.txt`` (Burgess capacity annealing).

This is the one batch-level exception to the ``(B,)`` rule in this package, on purpose
(STYLE.md, "Known traps"): the penalty is applied to the *batch-mean* KL, a scalar, with C
following the optimiser step, not per sample and not per epoch. ``gamma * |KL_i - C|``
averaged over samples is a different (and wrong) objective: it pushes every sample's KL to C
instead of the average rate.
"""

from __future__ import annotations

import torch

__all__ = ["capacity_target", "capacity_penalty"]


def capacity_target(step: int, c_max: float, c_steps: int) -> float:
    """The capacity C (nats) at an optimiser step.

    Formula::

        C(step) = c_max * min(step / c_steps, 1)      (C(step) = c_max if c_steps == 0)

    Linear from 0 at step 0 to ``c_max`` at ``step = c_steps``, constant afterwards
    (``003_527384601d5c0438.txt`` Sec. 2.3; the report anneals to 20 nats).

    Args:
        step: the global optimiser step (not the epoch), >= 0.
        c_max: final capacity in nats, >= 0.
        c_steps: number of steps over which C grows, >= 0.

    Returns:
        A Python float.
    """
    if step < 0 or c_steps < 0 or c_max < 0:
        raise ValueError(f"capacity_target needs step, c_max, c_steps >= 0; got {step}, {c_max}, {c_steps}")
    if c_steps == 0:
        return float(c_max)
    return float(c_max) * min(float(step) / float(c_steps), 1.0)


def capacity_penalty(kl_batch_mean: torch.Tensor, c: float, gamma: float, mode: str = "abs") -> torch.Tensor:
    """Capacity penalty on the batch-mean KL.

    Formula, with ``KL = mean_i KL(q(z|x_i) || p(z))`` (a scalar)::

        abs:   penalty = gamma * |KL - C|          (003_527384601d5c0438.txt Eq. 5)
        relu:  penalty = gamma * ReLU(KL - C)      (003_527384601d5c0438.txt Eq. 6)

    Reduction: a scalar, batch-level by construction (see the module docstring). The
    objective adds it to the batch-mean reconstruction loss; it must not be added per sample.

    Args:
        kl_batch_mean: 0-dim tensor, the mean over the batch of the per-sample KL (summed over
            latent dims), e.g. ``kl_diag_normal(mu, logvar).mean()``.
        c: the current capacity, from :func:`capacity_target`.
        gamma: penalty weight (Burgess et al. use 1000 on dSprites).
        mode: ``"abs"`` or ``"relu"``.

    Returns:
        0-dim tensor.
    """
    if kl_batch_mean.dim() != 0:
        raise ValueError(
            "capacity_penalty takes the batch-mean KL (a 0-dim tensor), got shape "
            f"{tuple(kl_batch_mean.shape)}; pass kl.mean(), not the per-sample KL"
        )
    gap = kl_batch_mean - c  # ()
    if mode == "abs":
        return gamma * gap.abs()  # ()
    if mode == "relu":
        return gamma * torch.relu(gap)  # ()
    raise ValueError(f"capacity_penalty: mode must be 'abs' or 'relu', got {mode!r}")
