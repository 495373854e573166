"""Scores that need no ground-truth factors: Gaussian total correlation, Gaussian mutual information
between latents, active units, and the KL of each latent to the prior.

Gaussian total correlation (disentanglement_lib's ``gaussian_total_correlation``): the KL between
a Gaussian with the codes' covariance ``S`` and the product of its marginals::

    TC = 1/2 ( sum_i log S_ii - log det S )

0 for independent latents; for two latents with correlation rho it is ``-1/2 log(1 - rho^2)``,
which is also the Gaussian mutual information of every pair (:func:`gaussian_mutual_info`).
A zero-variance latent is independent of everything and is left out of both (it would make
``log S_ii`` = -inf). Exactly collinear latents (a duplicated code) have infinite TC and MI:
we return ``inf`` rather than a number that depends on rounding.

Active units (Burda et al.): latent i is active when the variance over the data of its posterior
mean exceeds 0.01. KL per dimension is the analytic ``KL(N(mu, exp(logvar)) || N(0, 1))``,
averaged over the data; UDR (:mod:`.udr`) uses it to decide which latents are active.
"""

from __future__ import annotations

import numpy as np

from ..errors import DataError
from .registry import register_metric
from .utils import check_codes, check_rng

__all__ = [
    "gaussian_total_correlation",
    "gaussian_mutual_info",
    "active_units",
    "kl_per_dim",
    "unsupervised_scores",
    "UNSUPERVISED_DEFAULTS",
    "UNSUPERVISED_FAST",
]

UNSUPERVISED_DEFAULTS = dict(active_threshold=0.01)
UNSUPERVISED_FAST = dict(UNSUPERVISED_DEFAULTS)


def _covariance(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Covariance (ddof=1) of the non-constant columns, each divided by its largest magnitude, and
    their mask. The Gaussian TC and MI are invariant to rescaling a column; the division keeps
    codes up to 1e308 from overflowing when squared. A column is constant when its variance is at
    most ``(1e-12 max(1, max |z|))^2``."""
    peak = np.abs(codes).max(axis=0)  # (D,)
    z = codes / np.where(peak > 0, peak, 1.0)  # (N, D) within [-1, 1]
    var = z.var(axis=0, ddof=1)  # (D,)
    keep = np.where(peak >= 1.0, var > 1e-24, var * np.minimum(peak, 1.0) ** 2 > 1e-24)  # (D,)
    return np.atleast_2d(np.cov(z[:, keep], rowvar=False)), keep  # (D', D')


def gaussian_total_correlation(codes) -> float:
    """Total correlation (nats) of a Gaussian fitted to the codes (N, D); ``inf`` if singular."""
    codes = check_codes(codes)
    cov, keep = _covariance(codes)
    if keep.sum() < 2:
        return 0.0
    sign, logdet = np.linalg.slogdet(cov)
    if sign <= 0 or not np.isfinite(logdet):
        return float("inf")
    tc = 0.5 * (np.sum(np.log(np.diag(cov))) - logdet)
    # Nearly collinear columns: round-off can leave a tiny negative; TC is >= 0 by definition.
    return float(max(tc, 0.0))


def gaussian_mutual_info(codes) -> np.ndarray:
    """(D, D) Gaussian mutual information ``-1/2 log(1 - rho_ij^2)`` between latents (nats).

    The diagonal and every entry of a zero-variance latent are 0; ``|rho| = 1`` gives ``inf``.
    """
    codes = check_codes(codes)
    d = codes.shape[1]
    out = np.zeros((d, d))
    cov, keep = _covariance(codes)
    if keep.sum() < 2:
        return out
    std = np.sqrt(np.diag(cov))  # (D',)
    rho2 = np.clip((cov / np.outer(std, std)) ** 2, 0.0, 1.0)  # (D', D')
    with np.errstate(divide="ignore"):
        mi = -0.5 * np.log1p(-rho2)
    np.fill_diagonal(mi, 0.0)
    idx = np.flatnonzero(keep)
    out[np.ix_(idx, idx)] = mi
    return out


def active_units(mu, threshold: float = 0.01) -> dict:
    """Active units of posterior means ``mu`` (N, D): ``Var_x[mu_i(x)] > threshold``.

    Returns ``n_active``, ``active`` (D,) bool and ``variance`` (D,).
    """
    mu = check_codes(mu, name="mu")
    peak = np.abs(mu).max(axis=0)  # (D,) variance of the scaled codes, scaled back: no overflow warning
    with np.errstate(over="ignore", invalid="ignore"):  # beyond float range the variance is inf (active)
        scaled = (mu / np.where(peak > 0, peak, 1.0)).var(axis=0, ddof=1)  # (D,)
        var = np.where(scaled > 0, scaled * peak**2, 0.0)  # (D,)
    active = var > float(threshold)
    return {"n_active": int(active.sum()), "active": active, "variance": var}


def kl_per_dim(mu, logvar) -> np.ndarray:
    """Mean over the data of ``KL(N(mu, exp(logvar)) || N(0, 1))`` per latent, shape (D,).

    ``KL_i = 1/2 (mu_i^2 + exp(logvar_i) - 1 - logvar_i)``, averaged over the N rows.
    """
    mu = check_codes(mu, name="mu", min_samples=1)
    logvar = check_codes(logvar, name="logvar", min_samples=1)
    if mu.shape != logvar.shape:
        raise DataError(f"logvar: shape {logvar.shape} does not match mu's {mu.shape}")
    kl = 0.5 * (mu**2 + np.exp(logvar) - 1.0 - logvar)  # (N, D)
    return kl.mean(axis=0)


def unsupervised_scores(codes, rng: np.random.Generator, *, active_threshold: float = 0.01) -> dict:
    """All factor-free scores of codes (N, D) at once.

    Returns ``gaussian_total_correlation``, ``mutual_info`` (D, D) Gaussian MI,
    ``mean_mutual_info`` (mean of the off-diagonal entries), ``n_active``, ``active`` and
    ``variance``. ``rng`` is accepted for the common signature; nothing is random.
    """
    codes = check_codes(codes)
    check_rng(rng)
    d = codes.shape[1]
    mi = gaussian_mutual_info(codes)
    mean_mi = float(mi.sum() / (d * d - d)) if d > 1 else 0.0
    out = {
        "gaussian_total_correlation": gaussian_total_correlation(codes),
        "mutual_info": mi,
        "mean_mutual_info": mean_mi,
    }
    out.update(active_units(codes, active_threshold))
    return out


register_metric(
    "unsupervised",
    unsupervised_scores,
    kind="codes",
    default=UNSUPERVISED_DEFAULTS,
    fast=UNSUPERVISED_FAST,
    headline=("gaussian_total_correlation", "n_active"),
)
