"""CHyVAE: the inverse-Wishart hyperprior terms (``004_1dabe4d22771e1b6.txt``).

Model (Sec. 3.1): ``p(Sigma) = W^-1(Psi, nu)`` (Eq. 8), ``p(z | Sigma) = N(0, Sigma)``
(Eq. 9), ``Psi = (nu - p - 1) I`` so that ``E[Sigma] = I``; a full-covariance posterior
``q(z|x) = N(mu, S = L L^T)`` (Eq. 10); and ``q(Sigma | z) = p(Sigma | z) =
W^-1(Phi, lambda)`` with ``Phi = Psi + z z^T``, ``lambda = nu + 1`` (conjugacy, Eq. 12).
The ELBO of Eq. 13 is::

    L = E_q(z|x)[log p(x|z)]
        - E_{W^-1(Phi, lambda)}[ KL(N(mu, S) || N(0, Sigma)) ]           second term of Eq. 13
        - E_q(z|x)[ KL(W^-1(Phi, lambda) || W^-1(Psi, nu)) ]              third term of Eq. 13

Both KL terms are closed form. The seed copy of the paper does not include its supplement
(where the authors write the expressions out); the derivations are therefore given in the
docstrings below and checked in the tests against scipy densities and Monte Carlo, and the
sum of the two terms is checked to equal the regulariser of the authors' released code up to
an additive constant that depends only on ``(p, nu)``.

Notation: ``Gamma_p`` the multivariate gamma function, ``psi_p(a) = sum_{i=1}^p
digamma(a + (1 - i)/2)`` the multivariate digamma. Two facts about
``Sigma ~ W^-1(Psi, nu)`` are used: ``Sigma^-1 ~ W(Psi^-1, nu)``, hence
``E[Sigma^-1] = nu Psi^-1`` and
``E[log det Sigma] = log det Psi - p log 2 - psi_p(nu / 2)``.

Numerics: the functions compute in float64 and return the input dtype. With the paper's
``nu`` up to 13000, individual pieces (``nu/2 log det Phi``, ``log Gamma_p(nu/2)``) are of
order ``nu p log nu`` (~1e5 to 1e6) while the KL is O(1); float32 would lose it to
cancellation. The matrices are p x p with p the latent size, so float64 costs nothing. The
Cholesky factorisations keep their status on the device (no host wait on CUDA): a sample whose
matrix is not positive definite gets NaN, not an exception (the trainer's finite check reports it).

Reduction: per sample, ``(B,)``, summed over latent dimensions (a KL of p-dimensional
distributions).
"""

from __future__ import annotations

import math

import torch

from .kl import _check_tril

__all__ = [
    "mvdigamma",
    "chyvae_psi",
    "invwishart_log_density",
    "kl_invwishart",
    "expected_kl_normal_under_invwishart",
    "chyvae_terms",
    "chyvae_regulariser",
]

_F64 = torch.float64


def _as_f64(x, like: torch.Tensor) -> torch.Tensor:
    """``x`` (a number or a tensor) as a float64 tensor on ``like``'s device. A number is filled in
    there (``torch.as_tensor`` would copy it from host memory: on CUDA, a host wait)."""
    if isinstance(x, torch.Tensor):
        return x.to(dtype=_F64, device=like.device)  # () or (...)
    return torch.full((), float(x), dtype=_F64, device=like.device)  # ()


def _cholesky(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The Cholesky factor of ``a (..., p, p)`` and where it exists, ``(...)`` bool.

    ``torch.linalg.cholesky`` reads the solver's error code back to the host to raise (on CUDA a
    host wait every call); ``cholesky_ex`` leaves it on the device. A matrix that is not positive
    definite makes the caller's result NaN (:func:`_nan_unless`), which the trainer's finite check
    reports as a non-finite loss term.
    """
    chol, info = torch.linalg.cholesky_ex(a)  # (..., p, p), (...)
    return chol, info == 0


def _nan_unless(ok: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return torch.where(ok, out, torch.nan)  # broadcast of (...) and out's shape


def _trace_inv_times(chol_a: torch.Tensor, chol_b: torch.Tensor) -> torch.Tensor:
    """``tr(A^-1 B) = ||L_A^-1 L_B||_F^2`` from the Cholesky factors ``(..., p, p)`` (broadcast).

    A triangular solve (one batched cuBLAS call on CUDA), not ``torch.cholesky_solve``, which on a
    batch goes to MAGMA where PyTorch is built with it: host-side pointer arrays, a status read
    on the host, a path not checked for host waits here.
    """
    a, b = torch.broadcast_tensors(chol_a, chol_b)  # (..., p, p) each
    white = torch.linalg.solve_triangular(a, b, upper=False)  # (..., p, p) L_A^-1 L_B
    return (white**2).sum((-2, -1))  # (...)


def mvdigamma(a: torch.Tensor, p: int) -> torch.Tensor:
    """Multivariate digamma ``psi_p(a) = sum_{i=1}^p digamma(a + (1 - i) / 2)``.

    The derivative of ``log Gamma_p(a)`` (``torch.mvlgamma``).

    Args:
        a: any shape, ``a > (p - 1) / 2``.
        p: dimension.

    Returns:
        Same shape as ``a``.
    """
    offsets = (1.0 - torch.arange(1, p + 1, dtype=a.dtype, device=a.device)) / 2.0  # (p,)
    return torch.digamma(a.unsqueeze(-1) + offsets).sum(-1)  # a.shape


def _lmvgamma(a: torch.Tensor, p: int) -> torch.Tensor:
    return torch.mvlgamma(a, p)  # a.shape


def chyvae_psi(p: int, nu: float, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """The CHyVAE hyperprior scale ``Psi = (nu - p - 1) I``, so that ``E[Sigma] = I``.

    ``004_1dabe4d22771e1b6.txt`` Sec. 3.1 ("a reasonable choice of Psi would be
    (nu - p - 1) Sigma_0", with ``Sigma_0 = I``). Requires ``nu > p + 1`` (the mean of an
    inverse-Wishart exists only then). The authors' released code instead clips the scale to
    ``max(nu - p - 1, 1)``; pass an explicit ``psi`` to :func:`chyvae_regulariser` for that.

    Returns:
        ``(p, p)``.
    """
    if not nu > p + 1:
        raise ValueError(
            f"CHyVAE needs nu > p + 1 for Psi = (nu - p - 1) I to be positive definite; got nu={nu}, p={p}"
        )
    return (nu - p - 1.0) * torch.eye(p, dtype=dtype, device=device)  # (p, p)


def _chol_logdet(chol: torch.Tensor) -> torch.Tensor:
    return 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)  # (...)


def invwishart_log_density(Sigma: torch.Tensor, Psi: torch.Tensor, nu) -> torch.Tensor:
    """Log density of the inverse-Wishart ``W^-1(Psi, nu)`` at ``Sigma``.

    Formula (``004_1dabe4d22771e1b6.txt`` Sec. 3.1, the pdf above Eq. 8)::

        scale_term = (nu / 2) log det Psi
        norm_term  = -(nu p / 2) log 2 - log Gamma_p(nu / 2)
        det_term   = -((nu + p + 1) / 2) log det Sigma
        trace_term = -(1 / 2) tr(Psi Sigma^-1)
        log p      = scale_term + norm_term + det_term + trace_term

    Args:
        Sigma: ``(..., p, p)`` symmetric positive definite.
        Psi: ``(..., p, p)`` symmetric positive definite, broadcastable against ``Sigma``.
        nu: degrees of freedom ``> p - 1`` (float or tensor broadcastable to the batch shape).

    Returns:
        ``(...)`` the broadcast batch shape, in ``Sigma``'s dtype.
    """
    p = Sigma.shape[-1]
    S = Sigma.to(_F64)  # (..., p, p)
    P = Psi.to(_F64)  # (..., p, p)
    nu = _as_f64(nu, S)  # () or (...)
    chol_s, ok_s = _cholesky(S)  # (..., p, p), (...)
    chol_p, ok_p = _cholesky(P)  # (..., p, p), (...)
    trace = _trace_inv_times(chol_s, chol_p)  # (...) tr(Sigma^-1 Psi)
    out = (
        0.5 * nu * _chol_logdet(chol_p)
        - 0.5 * nu * p * math.log(2.0)
        - _lmvgamma(0.5 * nu, p)
        - 0.5 * (nu + p + 1) * _chol_logdet(chol_s)
        - 0.5 * trace
    )  # (...)
    return _nan_unless(ok_s & ok_p, out).to(Sigma.dtype)


def kl_invwishart(Psi_q: torch.Tensor, nu_q, Psi_p: torch.Tensor, nu_p) -> torch.Tensor:
    """``KL(W^-1(Psi_q, nu_q) || W^-1(Psi_p, nu_p))`` in closed form.

    Derivation. KL is invariant under the bijection ``Sigma -> Sigma^-1``, which maps
    ``W^-1(Psi, nu)`` to the Wishart ``W(Psi^-1, nu)``. For Wisharts with
    ``E_q[X] = nu_q V_q`` and ``E_q[log det X] = psi_p(nu_q/2) + p log 2 + log det V_q``,
    expanding ``E_q[log q(X) - log p(X)]`` (the ``log 2`` terms cancel) and substituting
    ``V = Psi^-1`` gives::

        digamma_term = ((nu_q - nu_p) / 2) psi_p(nu_q / 2)
        det_term     = (nu_p / 2) (log det Psi_q - log det Psi_p)
        trace_term   = (nu_q / 2) (tr(Psi_p Psi_q^-1) - p)
        gamma_term   = log Gamma_p(nu_p / 2) - log Gamma_p(nu_q / 2)
        kl           = digamma_term + det_term + trace_term + gamma_term

    With ``Psi_q = Phi = Psi + z z^T``, ``nu_q = nu + 1``, ``Psi_p = Psi``, ``nu_p = nu`` this is
    the third term of ``004_1dabe4d22771e1b6.txt`` Eq. 13.

    Args:
        Psi_q: ``(..., p, p)`` SPD.
        nu_q: float or tensor, ``> p - 1``.
        Psi_p: ``(..., p, p)`` SPD, broadcastable against ``Psi_q``.
        nu_p: float or tensor, ``> p - 1``.

    Returns:
        ``(...)`` the broadcast batch shape, in ``Psi_q``'s dtype.
    """
    p = Psi_q.shape[-1]
    Q = Psi_q.to(_F64)  # (..., p, p)
    P = Psi_p.to(_F64)  # (..., p, p)
    nu_q = _as_f64(nu_q, Q)  # () or (...)
    nu_p = _as_f64(nu_p, Q)  # () or (...)
    chol_q, ok_q = _cholesky(Q)  # (..., p, p), (...)
    chol_p, ok_p = _cholesky(P)  # (..., p, p), (...)
    trace = _trace_inv_times(chol_q, chol_p)  # (...) tr(Psi_q^-1 Psi_p)
    out = (
        0.5 * (nu_q - nu_p) * mvdigamma(0.5 * nu_q, p)
        + 0.5 * nu_p * (_chol_logdet(chol_q) - _chol_logdet(chol_p))
        + 0.5 * nu_q * (trace - p)
        + _lmvgamma(0.5 * nu_p, p)
        - _lmvgamma(0.5 * nu_q, p)
    )  # (...)
    return _nan_unless(ok_q & ok_p, out).to(Psi_q.dtype)


def expected_kl_normal_under_invwishart(
    mu: torch.Tensor, scale_tril: torch.Tensor, Psi: torch.Tensor, nu
) -> torch.Tensor:
    """``E_{Sigma ~ W^-1(Psi, nu)}[ KL(N(mu, S) || N(0, Sigma)) ]`` in closed form, ``S = L L^T``.

    Derivation. ``KL(N(mu, S) || N(0, Sigma)) = 1/2 [tr(Sigma^-1 S) + mu^T Sigma^-1 mu - p +
    log det Sigma - log det S]`` is linear in ``Sigma^-1`` and in ``log det Sigma``; with
    ``E[Sigma^-1] = nu Psi^-1`` and ``E[log det Sigma] = log det Psi - p log 2 -
    psi_p(nu/2)``::

        trace_term  = nu tr(Psi^-1 S)
        mean_term   = nu mu^T Psi^-1 mu
        prior_det   = log det Psi - p log 2 - psi_p(nu / 2)
        post_det    = -log det S
        const       = -p
        ekl         = 1/2 (trace_term + mean_term + prior_det + post_det + const)

    With ``Psi = Phi = Psi_0 + z z^T`` and ``nu = nu_0 + 1`` (the conjugate posterior
    ``p(Sigma | z)``) this is the second term of ``004_1dabe4d22771e1b6.txt`` Eq. 13. Note
    that the paper takes this expectation under the posterior ``W^-1(Phi, nu + 1)``, not the
    hyperprior: call it with the posterior parameters (:func:`chyvae_terms` does).

    Args:
        mu: ``(B, p)`` posterior means.
        scale_tril: ``(B, p, p)`` lower-triangular Cholesky factors of S (upper triangle ignored).
        Psi: ``(B, p, p)`` or ``(p, p)`` SPD scale.
        nu: float or ``(B,)`` tensor, ``> p - 1``.

    Returns:
        ``(B,)`` in ``mu``'s dtype.
    """
    _check_tril(mu, scale_tril)
    p = mu.shape[-1]
    m = mu.to(_F64)  # (B, p)
    L = torch.tril(scale_tril).to(_F64)  # (B, p, p)
    P = Psi.to(_F64).expand(L.shape)  # (B, p, p)
    nu = _as_f64(nu, m)  # () or (B,)
    chol_p, ok = _cholesky(P)  # (B, p, p), (B,)
    # tr(Psi^-1 S) = ||C^-1 L||_F^2 and mu^T Psi^-1 mu = ||C^-1 mu||^2 with Psi = C C^T.
    white_l = torch.linalg.solve_triangular(chol_p, L, upper=False)  # (B, p, p)
    white_m = torch.linalg.solve_triangular(chol_p, m.unsqueeze(-1), upper=False).squeeze(-1)  # (B, p)
    trace_term = nu * (white_l**2).sum((-2, -1))  # (B,)
    mean_term = nu * (white_m**2).sum(-1)  # (B,)
    prior_det = _chol_logdet(chol_p) - p * math.log(2.0) - mvdigamma(0.5 * nu, p)  # (B,)
    post_det = -2.0 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1).abs()).sum(-1)  # (B,)
    ekl = 0.5 * (trace_term + mean_term + prior_det + post_det - p)  # (B,)
    return _nan_unless(ok, ekl).to(mu.dtype)  # (B,)


def chyvae_terms(
    mu: torch.Tensor,
    scale_tril: torch.Tensor,
    z2: torch.Tensor,
    nu: float,
    psi: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The two CHyVAE regulariser terms of ``004_1dabe4d22771e1b6.txt`` Eq. 13, per sample.

    Formula, with ``Psi = (nu - p - 1) I`` (or ``psi``), ``Phi_i = Psi + z2_i z2_i^T`` and
    ``lambda = nu + 1`` (the conjugate posterior of Eq. 12)::

        kl_z     = E_{Sigma ~ W^-1(Phi_i, lambda)}[ KL(N(mu_i, S_i) || N(0, Sigma)) ]   Eq. 13, 2nd term
        kl_sigma = KL(W^-1(Phi_i, lambda) || W^-1(Psi, nu))                           Eq. 13, 3rd term

    The outer ``E_q(z|x)`` of the third term is the one-sample estimate at ``z2_i``. ``z2``
    is a reparameterised draw from ``q(z|x_i)`` independent of the one fed to the decoder,
    as in the authors' released code; it is *not* detached (its gradient is part of the
    objective there too).

    Simplification (a check, not used in the computation): summing the two terms, the
    ``psi_p(lambda/2)`` terms cancel and::

        kl_z + kl_sigma = (lambda/2) log det Phi - (1/2) log det S
                          + (lambda/2) tr((S + mu mu^T + Psi) Phi^-1) + const(p, nu)

    which is the regulariser of the authors' code (clear-nus/CHyVAE, ``_regularizer`` with
    ``B = 1``) up to the constant.

    Args:
        mu: ``(B, p)``.
        scale_tril: ``(B, p, p)`` Cholesky factors of the posterior covariances.
        z2: ``(B, p)`` a second sample from ``q(z|x)``.
        nu: hyperprior degrees of freedom (``> p + 1`` unless ``psi`` is given).
        psi: optional ``(p, p)`` hyperprior scale overriding ``(nu - p - 1) I``.

    Returns:
        dict with ``kl_z`` and ``kl_sigma``, each ``(B,)``.
    """
    if z2.shape != mu.shape:
        raise ValueError(f"z2 has shape {tuple(z2.shape)} but mu has shape {tuple(mu.shape)}")
    p = mu.shape[-1]
    if psi is None:
        psi = chyvae_psi(p, nu, dtype=_F64, device=mu.device)  # (p, p)
    elif not nu > p - 1:
        raise ValueError(f"inverse-Wishart needs nu > p - 1; got nu={nu}, p={p}")
    psi = psi.to(_F64)  # (p, p)
    z2_64 = z2.to(_F64)  # (B, p)
    phi = psi + z2_64.unsqueeze(-1) * z2_64.unsqueeze(-2)  # (B, p, p) Psi + z2 z2^T
    lam = nu + 1.0
    return {
        "kl_z": expected_kl_normal_under_invwishart(mu, scale_tril, phi, lam),  # (B,)
        "kl_sigma": kl_invwishart(phi, lam, psi, nu).to(mu.dtype),  # (B,)
    }


def chyvae_regulariser(
    mu: torch.Tensor,
    scale_tril: torch.Tensor,
    z2: torch.Tensor,
    nu: float,
    psi: torch.Tensor | None = None,
) -> torch.Tensor:
    """The CHyVAE regulariser: the negative of the last two terms of Eq. 13 of ``004``.

    Formula (see :func:`chyvae_terms`)::

        reg_i = E_{W^-1(Phi_i, nu+1)}[KL(N(mu_i, S_i) || N(0, Sigma))]    Eq. 13, 2nd term
              + KL(W^-1(Phi_i, nu+1) || W^-1(Psi, nu))                   Eq. 13, 3rd term

    The CHyVAE loss is ``mean_i [bernoulli_nll_i + reg_i]`` (Eq. 13 negated; no extra
    weight: ``nu`` is the only knob). Both terms are KL divergences or expectations of one,
    so ``reg_i >= 0``.

    Args:
        mu: ``(B, p)``.
        scale_tril: ``(B, p, p)``.
        z2: ``(B, p)`` second posterior sample.
        nu: degrees of freedom.
        psi: optional ``(p, p)`` scale.

    Returns:
        ``(B,)``.
    """
    t = chyvae_terms(mu, scale_tril, z2, nu, psi)
    return t["kl_z"] + t["kl_sigma"]  # (B,)
