"""Maximum mean discrepancy between the aggregate posterior and the prior (InfoVAE).

InfoVAE (Zhao et al., cited as [1] in ``000_fc03c6fb001bc541.txt``, used there with
``lambda = 500``) replaces or supplements the per-sample KL with ``MMD(q(z), p(z))``, where
``q(z)`` is represented by a batch of posterior samples and ``p(z) = N(0, I)`` by an equally
sized batch of prior samples.

Reduction: **a scalar**. MMD compares two *distributions* through two sample sets; it has
no per-sample decomposition, so it is a batch-level term like the DIP penalty and the
capacity penalty. The objective adds it (weighted) to the batch means of the other terms.

Kernels and bandwidth convention (documented because published code disagrees):

* ``rbf``: ``k(x, y) = exp(-||x - y||^2 / C)`` with ``C = 2 * D * sigma^2``.
* ``imq``: ``k(x, y) = C / (C + ||x - y||^2)`` with ``C = 2 * D * sigma^2`` (the WAE
  convention: for a prior ``N(0, sigma^2 I)`` the expected squared distance between two
  prior samples is ``2 D sigma^2``).

``sigma`` (the ``scale`` argument) defaults to 1, the prior's standard deviation. A sequence
of scales sums the kernels over ``C_s = 2 D sigma_s^2`` (WAE/pythae use the multipliers
0.1, 0.2, 0.5, 1, 2, 5, 10 for the IMQ kernel). The same ``2 D sigma^2`` convention is used
by pythae's InfoVAE; the InfoVAE authors' reference code uses ``exp(-||x-y||^2 / D^2)``,
which is ``sigma^2 = D / 2`` here. disentanglement_lib has no MMD model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["mmd", "kernel_matrix"]


def kernel_matrix(
    x: torch.Tensor,
    y: torch.Tensor,
    kernel: str = "rbf",
    scale: float | Sequence[float] | None = None,
) -> torch.Tensor:
    """Kernel values between two sample sets.

    Formula, with ``d2 = ||x_i - y_j||^2`` and ``C_s = 2 * D * sigma_s^2``::

        rbf:  K_ij = sum_s exp(-d2 / C_s)
        imq:  K_ij = sum_s C_s / (C_s + d2)

    Args:
        x: ``(N, D)`` samples.
        y: ``(M, D)`` samples.
        kernel: ``"rbf"`` or ``"imq"``.
        scale: ``sigma`` (float) or several sigmas (sequence); ``None`` means 1.0.

    Returns:
        ``(N, M)`` kernel matrix.
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"kernel_matrix needs (N, D) and (M, D) samples, got {tuple(x.shape)} and {tuple(y.shape)}")
    if scale is None:
        scales = [1.0]
    elif isinstance(scale, (int, float)):
        scales = [float(scale)]
    else:
        scales = [float(s) for s in scale]
    if not scales or any(s <= 0 for s in scales):
        raise ValueError(f"kernel_matrix: scales must be positive, got {scale}")
    dim = x.shape[1]
    # Squared distances by direct difference: exactly zero on identical rows, unlike the
    # |x|^2 + |y|^2 - 2 x.y expansion, and cheap at latent sizes.
    d2 = ((x.unsqueeze(1) - y.unsqueeze(0)) ** 2).sum(-1)  # (N, M)
    out = torch.zeros_like(d2)  # (N, M)
    for s in scales:  # a handful of bandwidths, not a loop over data
        c = 2.0 * dim * s * s
        if kernel == "rbf":
            out = out + torch.exp(-d2 / c)  # (N, M)
        elif kernel == "imq":
            out = out + c / (c + d2)  # (N, M)
        else:
            raise ValueError(f"kernel must be 'rbf' or 'imq', got {kernel!r}")
    return out


def _mean_offdiag(k: torch.Tensor) -> torch.Tensor:
    n = k.shape[0]
    return (k.sum() - torch.diagonal(k).sum()) / (n * (n - 1))  # ()


def mmd(
    z: torch.Tensor,
    z_prior: torch.Tensor,
    kernel: str = "rbf",
    scale: float | Sequence[float] | None = None,
) -> torch.Tensor:
    """Unbiased estimate of ``MMD^2(q(z), p(z))`` from two sample sets.

    Formula (Gretton et al. 2012, unbiased U-statistic; ``k`` from :func:`kernel_matrix`)::

        within_q = 1/(n(n-1)) sum_{i != j} k(z_i, z_j)
        within_p = 1/(m(m-1)) sum_{i != j} k(y_i, y_j)
        cross    = 1/(n(n-1)) sum_{i != j} k(z_i, y_j)      if n == m (Lemma 6 form)
                   1/(n m)    sum_{i, j}   k(z_i, y_j)      if n != m
        mmd2     = within_q + within_p - 2 * cross

    The i == j terms are excluded from every sum when the two sets have the same size
    (the paired U-statistic ``h(i, j) = k(z_i,z_j) + k(y_i,y_j) - k(z_i,y_j) - k(z_j,y_i)``).
    Consequence, used as a test: for identical sample sets (``z_prior is z``) the statistic
    is exactly 0 (up to float rounding), because every ``h(i, j)`` is 0. Being unbiased,
    the estimate can be slightly negative when the distributions match.

    The InfoVAE divergence term (``000_fc03c6fb001bc541.txt`` Sec. IV-A, InfoVAE [1],
    "minimises maximum mean discrepancy").

    Reduction: a scalar, batch-level (see the module docstring).

    Args:
        z: ``(n, D)`` samples from the aggregate posterior (one per data item of the batch).
        z_prior: ``(m, D)`` samples from the prior (``torch.randn`` with an explicit generator).
        kernel: ``"rbf"`` or ``"imq"``.
        scale: ``sigma`` or a sequence of sigmas (``C = 2 D sigma^2``); ``None`` means 1.0.

    Returns:
        0-dim tensor.
    """
    n, m = z.shape[0], z_prior.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"mmd needs at least 2 samples in each set, got {n} and {m}")
    k_qq = kernel_matrix(z, z, kernel, scale)  # (n, n)
    k_pp = kernel_matrix(z_prior, z_prior, kernel, scale)  # (m, m)
    k_qp = kernel_matrix(z, z_prior, kernel, scale)  # (n, m)
    cross = _mean_offdiag(k_qp) if n == m else k_qp.mean()  # ()
    return _mean_offdiag(k_qq) + _mean_offdiag(k_pp) - 2.0 * cross  # ()
