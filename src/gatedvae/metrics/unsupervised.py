"""Scores that need no ground-truth factors: disentanglement_lib's four unsupervised scores, our
Gaussian mutual information between latents, active units, and the KL of each latent to the prior.

disentanglement_lib (``evaluation/metrics/unsupervised_metrics.py``) reports four scores of the
codes' sample covariance ``S = np.cov(codes, rowvar=False)`` (ddof 1) and of their histogram
discretisation; :func:`unsupervised_scores` reports them under the same names:

* ``gaussian_total_correlation``: the KL between a Gaussian with covariance ``S`` and the product
  of its marginals::

      TC = 1/2 ( sum_i log S_ii - log det S )

  0 for independent latents; for two latents with correlation rho it is ``-1/2 log(1 - rho^2)``,
  which is also the Gaussian mutual information of every pair (:func:`gaussian_mutual_info`).
  A zero-variance latent is independent of everything and is left out of both (it would make
  ``log S_ii`` = -inf; disentanglement_lib returns NaN there). Exactly collinear latents (a
  duplicated code) have infinite TC and MI: we return ``inf`` rather than a number that depends
  on rounding.
* ``gaussian_wasserstein_correlation``: the squared 2-Wasserstein distance between ``N(0, S)`` and
  the product of its marginals ``N(0, diag S)``::

      GWC = 2 tr S - 2 tr sqrtm(diag(S) S)

  (:func:`gaussian_wasserstein_correlation`); in the codes' units squared, so it grows with their
  scale. ``gaussian_wasserstein_correlation_norm`` divides it by ``tr S``: it does not change when
  every latent is multiplied by the same number, is 0 for uncorrelated latents and at most
  ``2 - 2 / sqrt(D)`` (``tr sqrtm >= sqrt(sum_i S_ii^2) >= tr S / sqrt(D)``), which D identical
  latents reach.
* ``mutual_info_score``: the mean over ordered pairs ``i != j`` of the plug-in mutual information
  (nats) between the latents discretised into ``bins`` equal-width bins (:func:`.utils.discretize`,
  disentanglement_lib's histogram discretiser; 20 bins as in its configs)::

      mutual_info_score = sum_{i != j} I(b_i; b_j) / (D^2 - D)

  (:func:`discrete_mutual_info_score`).

Ours, under names that say they are Gaussian: ``gaussian_mutual_info`` (D, D), the pairwise Gaussian
MI ``-1/2 log(1 - rho_ij^2)``, and ``gaussian_mean_mutual_info``, the mean of its off-diagonal
entries (called ``mean_mutual_info``, with the matrix under ``mutual_info``, before 0.3).

Degenerate codes, where disentanglement_lib divides by zero (NaN): with a single latent (D = 1)
there is no pair, and ``mutual_info_score`` and ``gaussian_mean_mutual_info`` are 0 (no two latents
share information); when every latent is constant (``tr S = 0``),
``gaussian_wasserstein_correlation_norm`` is 0 (as its numerator).

Active units (Burda et al.): latent i is active when the variance over the data of its posterior
mean exceeds 0.01. KL per dimension is the analytic ``KL(N(mu, exp(logvar)) || N(0, 1))``,
averaged over the data; UDR (:mod:`.udr`) uses it to decide which latents are active.
"""

from __future__ import annotations

import numpy as np

from ..errors import DataError
from .registry import register_metric
from .utils import check_codes, check_positive_int, check_rng, discrete_mutual_info, discretize

__all__ = [
    "gaussian_total_correlation",
    "gaussian_wasserstein_correlation",
    "discrete_mutual_info_score",
    "gaussian_mutual_info",
    "active_units",
    "kl_per_dim",
    "unsupervised_scores",
    "UNSUPERVISED_DEFAULTS",
    "UNSUPERVISED_FAST",
]

UNSUPERVISED_DEFAULTS = dict(active_threshold=0.01, bins=20)
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


def gaussian_wasserstein_correlation(codes) -> tuple[float, float]:
    """Gaussian Wasserstein correlation of codes (N, D) and its normalised form.

    ``GWC = 2 tr S - 2 tr sqrtm(diag(S) S)`` with ``S`` the sample covariance (ddof 1): the squared
    2-Wasserstein distance between ``N(0, S)`` and ``N(0, diag S)``. ``diag(S) S = XY`` and the
    symmetric positive semi-definite ``A = diag(S)^(1/2) S diag(S)^(1/2) = YX`` (``X = diag(S)^(1/2)``,
    ``Y = X S``) have the same eigenvalues, so ``tr sqrtm(diag(S) S)`` is the sum of the square roots
    of ``A``'s eigenvalues (``np.linalg.eigvalsh``): no complex square root, no inverse, and constant
    latents (zero rows and columns of ``S``) need no special case. The covariance is taken of the
    codes divided by their largest magnitude and the GWC scaled back, so codes up to 1e154 do not
    overflow (beyond, the true value exceeds float64: ``inf``).

    Returns:
        ``(gwc, gwc / tr S)``; the normalised form is 0 when every latent is constant.
    """
    codes = check_codes(codes)
    peak = float(np.abs(codes).max())
    scale = peak if peak > 0 else 1.0
    cov = np.atleast_2d(np.cov(codes / scale, rowvar=False))  # (D, D) of codes within [-1, 1]
    var = np.diag(cov)  # (D,)
    root = np.sqrt(var)  # (D,)
    eig = np.linalg.eigvalsh(root[:, None] * cov * root[None, :])  # (D,) of diag(S)^(1/2) S diag(S)^(1/2)
    # Eigenvalues within round-off of 0 (collinear or constant latents) are 0: their square roots,
    # ~1e-8 of the largest, would otherwise be counted. Round-off can also leave a GWC below 0.
    eig = np.where(eig > eig.shape[0] * np.finfo(np.float64).eps * max(eig.max(), 0.0), eig, 0.0)  # (D,)
    trace = float(var.sum())
    gwc = max(2.0 * trace - 2.0 * float(np.sqrt(eig).sum()), 0.0)
    norm = gwc / trace if trace > 0 else 0.0
    with np.errstate(over="ignore"):  # codes beyond ~1e154: the true value exceeds float64 (inf)
        return float(gwc * scale * scale), float(norm)


def discrete_mutual_info_score(codes, bins: int = 20) -> tuple[float, np.ndarray]:
    """disentanglement_lib's ``mutual_info_score``: the mean off-diagonal discrete mutual information.

    The codes (N, D) are discretised into ``bins`` equal-width bins per latent
    (:func:`.utils.discretize`), the (D, D) plug-in MI matrix of the binned latents is computed
    (nats), its diagonal (each latent's entropy) set to 0, and its sum divided by ``D^2 - D``. A
    constant latent shares no information (its row and column are 0); with D = 1 the score is 0.

    Returns:
        ``(score, mi)`` with ``mi`` the (D, D) matrix, diagonal 0.
    """
    binned = discretize(codes, bins)  # (N, D)
    d = binned.shape[1]
    mi = discrete_mutual_info(binned, binned)  # (D, D), symmetric
    np.fill_diagonal(mi, 0.0)
    return (float(mi.sum() / (d * d - d)) if d > 1 else 0.0), mi


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
    # A copied latent's rho^2 lands within rounding of 1 (1 - 2e-16 with some numpy/BLAS builds,
    # which would read as 18 nats): within 8 ulps it is 1, so the MI is inf as documented
    rho2[rho2 > 1.0 - 8 * np.finfo(float).eps] = 1.0
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


def unsupervised_scores(codes, rng: np.random.Generator, *, active_threshold: float = 0.01, bins: int = 20) -> dict:
    """All factor-free scores of codes (N, D) at once.

    Returns disentanglement_lib's four, under its names: ``gaussian_total_correlation``,
    ``gaussian_wasserstein_correlation``, ``gaussian_wasserstein_correlation_norm`` and
    ``mutual_info_score`` (mean off-diagonal MI of the codes discretised into ``bins`` bins), with
    its (D, D) matrix ``discrete_mutual_info``; ours: ``gaussian_mutual_info`` (D, D) and
    ``gaussian_mean_mutual_info`` (mean of its off-diagonal entries, 0 for D = 1); and
    ``n_active``, ``active``, ``variance`` (:func:`active_units`). ``rng`` is accepted for the
    common signature; nothing is random.
    """
    codes = check_codes(codes)
    check_rng(rng)
    bins = check_positive_int(bins, "bins", minimum=2)
    d = codes.shape[1]
    gaussian_mi = gaussian_mutual_info(codes)  # (D, D)
    gwc, gwc_norm = gaussian_wasserstein_correlation(codes)
    mi_score, discrete_mi = discrete_mutual_info_score(codes, bins)
    out = {
        "gaussian_total_correlation": gaussian_total_correlation(codes),
        "gaussian_wasserstein_correlation": gwc,
        "gaussian_wasserstein_correlation_norm": gwc_norm,
        "mutual_info_score": mi_score,
        "discrete_mutual_info": discrete_mi,
        "gaussian_mutual_info": gaussian_mi,
        "gaussian_mean_mutual_info": float(gaussian_mi.sum() / (d * d - d)) if d > 1 else 0.0,
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
