"""DIP-VAE covariance penalties (Kumar, Sattigeri and Balakrishnan 2017).

DIP-VAE pushes a covariance matrix of the latent code towards the identity
(``000_fc03c6fb001bc541.txt`` Sec. IV-A: DIP-VAE-II "minimises the 2nd central moment of the
latent space", used with ``lambda_od = lambda_d = 250``; ``004_1dabe4d22771e1b6.txt`` Sec. 3:
"constrains the covariance matrix (averaged over the mini-batch) to be near I").

* DIP-VAE-I:  ``C = Cov_p(x)[mu(x)]``, the covariance of the encoder means.
* DIP-VAE-II: ``C = Cov_q(z)[z] = E_p(x)[Sigma(x)] + Cov_p(x)[mu(x)]``, with
  ``E_p(x)[Sigma(x)]`` the batch mean of the diagonal posterior covariances, *as a diagonal
  matrix*. (STYLE.md trap: ``torch.diag`` applied to the ``(B, D)`` batch of variances, then
  averaged, is not this matrix; published code that did so added a scalar to every entry.)

Reduction: a scalar, batch-level (a covariance of the batch has no per-sample split). The
covariance is the biased (divide by B) batch estimate, as in disentanglement_lib's
``compute_covariance_z_mean``.
"""

from __future__ import annotations

import torch

__all__ = ["batch_covariance", "dip_covariance", "dip_penalty_from_cov", "dip_penalty"]


def batch_covariance(x: torch.Tensor) -> torch.Tensor:
    """Biased batch covariance ``E[x x^T] - E[x] E[x]^T``.

    Args:
        x: ``(B, D)``.

    Returns:
        ``(D, D)``.
    """
    if x.dim() != 2:
        raise ValueError(f"batch_covariance needs (B, D), got {tuple(x.shape)}")
    xc = x - x.mean(0, keepdim=True)  # (B, D)
    return xc.T @ xc / x.shape[0]  # (D, D)


def dip_covariance(mu: torch.Tensor, logvar: torch.Tensor, kind: str = "ii") -> torch.Tensor:
    """The covariance matrix DIP-VAE regularises.

    Formula::

        cov_mu = Cov_batch[mu]                                     (D, D)
        i:     C = cov_mu
        ii:    C = cov_mu + diag_matrix(mean_b exp(logvar_b))      (D, D)

    Args:
        mu: ``(B, D)`` posterior means.
        logvar: ``(B, D)`` posterior log-variances (unused for ``kind="i"``).
        kind: ``"i"`` or ``"ii"``.

    Returns:
        ``(D, D)``.
    """
    if mu.shape != logvar.shape:
        raise ValueError(f"mu has shape {tuple(mu.shape)} but logvar has shape {tuple(logvar.shape)}")
    cov_mu = batch_covariance(mu)  # (D, D)
    if kind == "i":
        return cov_mu
    if kind == "ii":
        mean_var = torch.exp(logvar).mean(0)  # (D,) E_p(x)[Sigma(x)] diagonal
        return cov_mu + torch.diag_embed(mean_var)  # (D, D) diagonal matrix added, not a scalar
    raise ValueError(f"dip kind must be 'i' or 'ii', got {kind!r}")


def dip_penalty_from_cov(cov: torch.Tensor, lambda_od: float, lambda_d: float) -> torch.Tensor:
    """DIP penalty of a covariance matrix.

    Formula (Kumar et al. 2017, Eqs. for DIP-VAE-I/II)::

        off_diag = lambda_od * sum_{i != j} C_ij^2
        diag     = lambda_d  * sum_i (C_ii - 1)^2
        penalty  = off_diag + diag

    Closed forms (unit weights, D = 10): ``ones`` -> 90, ``zeros`` -> 10, ``eye`` -> 0,
    ``2 * eye`` -> 10.

    Args:
        cov: ``(D, D)``.
        lambda_od: weight of the off-diagonal term.
        lambda_d: weight of the diagonal term.

    Returns:
        0-dim tensor.
    """
    if cov.dim() != 2 or cov.shape[0] != cov.shape[1]:
        raise ValueError(f"dip_penalty_from_cov needs a square (D, D) matrix, got {tuple(cov.shape)}")
    diag = torch.diagonal(cov)  # (D,)
    off = cov - torch.diag_embed(diag)  # (D, D) zero diagonal
    return lambda_od * (off**2).sum() + lambda_d * ((diag - 1.0) ** 2).sum()  # ()


def dip_penalty(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    lambda_od: float,
    lambda_d: float,
    kind: str = "ii",
) -> torch.Tensor:
    """DIP-VAE-I or -II regulariser of a batch.

    Formula::

        C       = dip_covariance(mu, logvar, kind)
        penalty = lambda_od * sum_{i != j} C_ij^2 + lambda_d * sum_i (C_ii - 1)^2

    Reduction: a scalar, batch-level (see the module docstring).

    Args:
        mu: ``(B, D)`` posterior means.
        logvar: ``(B, D)`` posterior log-variances.
        lambda_od: off-diagonal weight (250 in ``000_fc03c6fb001bc541.txt``).
        lambda_d: diagonal weight (250 there).
        kind: ``"i"`` or ``"ii"``.

    Returns:
        0-dim tensor.
    """
    return dip_penalty_from_cov(dip_covariance(mu, logvar, kind), lambda_od, lambda_d)  # ()
