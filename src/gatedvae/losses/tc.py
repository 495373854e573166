"""Total correlation: beta-TCVAE minibatch estimators and the FactorVAE discriminator.

Two ways to estimate ``TC = KL(q(z) || prod_j q(z_j))`` of the aggregate posterior
``q(z) = (1/N) sum_n q(z|n)`` (``002_b6b404b9b5e7b646.txt``, "Isolating Sources of
Disentanglement in VAEs [Chen et al '18]" and "Disentangling by Factorising [Kim & Mnih'18]";
``004_1dabe4d22771e1b6.txt`` Eq. 3):

beta-TCVAE (Chen et al. 2018)
    ``log q(z_i)`` of each batch sample is estimated from the batch itself,
    ``log q(z_i) ~= log sum_j w_ij q(z_i | n_j)``, with importance weights ``w_ij``:

    * MWS, minibatch-weighted sampling, as printed in the paper (and in the lecture):
      ``w_ij = 1 / (N M)`` for every j, M = batch size. Each row sums to ``1/N``, not 1: MWS
      is a biased estimator (its ``log q(z)`` sits about ``log M`` below the MSS value when
      posteriors barely overlap); Chen et al. use it as is.
    * MSS, minibatch-stratified sampling (Chen et al. 2018, appendix). For the sample z_i
      drawn from its own component ``n* = n_i``, the other ``M = B - 1`` batch indices are a
      draw without replacement from the ``N - 1`` other items, and::

          q(z) = (1/N) q(z|n*) + (1/N) sum_{n != n*} q(z|n)
               = E[ (1/N) q(z|n*) + (1/M) sum_{m=1}^{M-1} q(z|n_m) + (N-M)/(N M) q(z|n_M) ]

      It is unbiased because every ``n_m`` is marginally uniform over the ``N - 1`` others and
      the weights on the others total ``(M-1)/M + (N-M)/(NM) = (N-1)/N``. So row i of the
      weight matrix is: ``1/N`` on the diagonal, ``(N-M)/(NM)`` on exactly one other column
      (here ``(i + 1) mod B``; batch order is random, so any fixed choice is valid), ``1/M``
      on the remaining ``M - 1`` columns, and **every row sums to exactly 1**
      (``1/N + (N-1)/N``).

      STYLE.md trap: the weight matrix copied from the original beta-TCVAE code
      (``W.view(-1)[::M+1] = 1/N; W.view(-1)[1::M+1] = strat; W[M-1, 0] = strat`` with
      ``M = B - 1``) strides by ``M + 1 = B``, which walks down *column* 0 and column 1, not
      the diagonal: every row puts ``1/N`` on item 0 and the stratum weight on item 1, so a
      sample's own component gets ``1/M`` instead of ``1/N`` (all rows but the first two).
      The last line then overwrites ``W[B-2, 0]``, giving row ``B-2`` two stratum weights and
      a sum of ``1 + 1/M - 2/N``. (Copies that use the stride ``M + 2`` and ``W[M, 0]`` are
      the matrix defined here.) :func:`mss_log_weights` builds the matrix from the definition
      above and the tests check every row and the diagonal.

FactorVAE (Kim and Mnih 2018)
    A discriminator D separates samples of ``q(z)`` from samples of ``prod_j q(z_j)``
    (obtained by :func:`permute_dims`), and ``TC ~= E_q(z)[log D(z) / (1 - D(z))]``.

Reduction: the beta-TCVAE terms are per sample, ``(B,)`` (their batch mean is the estimate
of the decomposition's expectations). ``factor_vae_tc`` and ``discriminator_loss`` are batch
means (scalars), as Algorithm 2 of Kim and Mnih writes them; the per-sample log-ratio is
:func:`factor_vae_log_ratio`.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .kl import gaussian_log_density

__all__ = [
    "mws_log_weights",
    "mss_log_weights",
    "log_qz_estimates",
    "tc_decomposition",
    "permute_dims",
    "factor_vae_log_ratio",
    "factor_vae_tc",
    "discriminator_loss",
    "discriminator_loss_from_codes",
    "Discriminator",
]


# ---------------------------------------------------------------------------- beta-TCVAE
def mws_log_weights(
    batch_size: int, dataset_size: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.Tensor:
    """Log importance weights of minibatch-weighted sampling.

    Formula (Chen et al. 2018, Eq. for MWS; ``002_b6b404b9b5e7b646.txt``, "Training with
    Minibatch-Weighted Sampling")::

        log w_ij = -log(N M)          for all i, j   (M = batch size; rows sum to 1/N)

    Returns:
        ``(B, B)``.
    """
    _check_sizes(batch_size, dataset_size, need_two=False)
    log_w = -math.log(dataset_size * batch_size)
    return torch.full((batch_size, batch_size), log_w, dtype=dtype, device=device)  # (B, B)


def mss_log_weights(
    batch_size: int, dataset_size: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.Tensor:
    """Log importance weights of minibatch-stratified sampling, from the paper's definition.

    Formula, with ``M = B - 1`` the number of *other* samples in the batch::

        w_ii             = 1 / N                 (the sample's own component n*)
        w_i,(i+1) mod B  = (N - M) / (N M)       (the one stratum weight)
        w_ij             = 1 / M                 (the other M - 1 columns)
        sum_j w_ij       = 1                     (every row)

    See the module docstring for the derivation (Chen et al. 2018, appendix, MSS).

    Args:
        batch_size: B >= 2.
        dataset_size: N >= B (the minibatch is drawn without replacement).

    Returns:
        ``(B, B)`` log-weights (computed in float64 on the host, as three Python numbers, then
        filled in on ``device``: nothing is copied from host memory, which on CUDA would make
        the host wait every step).
    """
    _check_sizes(batch_size, dataset_size, need_two=True)
    n, m = float(dataset_size), float(batch_size - 1)
    own = torch.eye(batch_size, dtype=torch.bool, device=device)  # (B, B) the diagonal
    stratum = own.roll(1, dims=1)  # (B, B) True at (i, (i + 1) mod B)
    log_w = torch.full((batch_size, batch_size), _log(1.0 / m), dtype=dtype, device=device)  # (B, B)
    log_w = log_w.masked_fill(stratum, _log((n - m) / (n * m)))  # (B, B) one stratum column per row
    return log_w.masked_fill(own, _log(1.0 / n))  # (B, B) the sample's own component


def _log(w: float) -> float:
    return math.log(w) if w > 0 else -math.inf  # -inf if N == M (the stratum weight is zero)


def _check_sizes(batch_size: int, dataset_size: int, need_two: bool) -> None:
    if batch_size < (2 if need_two else 1):
        raise ValueError(f"batch_size must be >= {2 if need_two else 1}, got {batch_size}")
    if dataset_size < batch_size:
        raise ValueError(f"dataset_size ({dataset_size}) must be >= batch_size ({batch_size})")


def log_qz_estimates(
    z: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    dataset_size: int,
    estimator: str = "mws",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minibatch estimates of ``log q(z_i)`` and ``sum_j log q(z_ij)`` for each batch sample.

    Formula, with ``l_ikd = log q(z_id | n_k)`` (diagonal Gaussian posteriors) and
    ``log w`` from :func:`mws_log_weights` or :func:`mss_log_weights`::

        log_qz_i       = logsumexp_k ( log w_ik + sum_d l_ikd )
        log_prod_qzi_i = sum_d logsumexp_k ( log w_ik + l_ikd )

    Chen et al. 2018 (MWS, Sec. 4.1; MSS, appendix); ``002_b6b404b9b5e7b646.txt``
    ("Training with Minibatch-Weighted Sampling").

    Args:
        z: ``(B, D)`` one sample per item, ``z_i ~ q(z | x_i)``.
        mu: ``(B, D)`` posterior means of the same batch.
        logvar: ``(B, D)`` posterior log-variances.
        dataset_size: N, the number of training items.
        estimator: ``"mws"`` or ``"mss"``.

    Returns:
        ``(log_qz, log_prod_qzi)``, each ``(B,)``.
    """
    if not (z.shape == mu.shape == logvar.shape) or z.dim() != 2:
        shapes = f"{tuple(z.shape)}, {tuple(mu.shape)}, {tuple(logvar.shape)}"
        raise ValueError(f"z, mu, logvar must share a (B, D) shape, got {shapes}")
    mat = gaussian_log_density(z.unsqueeze(1), mu.unsqueeze(0), logvar.unsqueeze(0))  # (B, B, D) [i, k, d]
    log_w = _log_weights(estimator, z.shape[0], dataset_size, z.dtype, z.device)  # (B, B)
    log_qz = torch.logsumexp(log_w + mat.sum(2), dim=1)  # (B,)
    log_prod_qzi = torch.logsumexp(log_w.unsqueeze(2) + mat, dim=1).sum(1)  # (B,)
    return log_qz, log_prod_qzi


def _log_weights(estimator: str, batch_size: int, dataset_size: int, dtype, device) -> torch.Tensor:
    if estimator == "mws":
        return mws_log_weights(batch_size, dataset_size, dtype, device)  # (B, B)
    if estimator == "mss":
        return mss_log_weights(batch_size, dataset_size, dtype, device)  # (B, B)
    raise ValueError(f"estimator must be 'mws' or 'mss', got {estimator!r}")


def tc_decomposition(
    z: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    dataset_size: int,
    estimator: str = "mws",
) -> dict[str, torch.Tensor]:
    """Per-sample terms of the beta-TCVAE decomposition of the KL.

    Formula (Chen et al. 2018, Eq. 2; ``002_b6b404b9b5e7b646.txt``, "ELBO TC-Decomposition";
    ``004_1dabe4d22771e1b6.txt`` Eq. 7), for each sample ``z_i ~ q(z|x_i)``::

        mi   = log q(z_i|x_i)       - log q(z_i)                 (i)   index-code MI
        tc   = log q(z_i)           - sum_j log q(z_ij)          (ii)  total correlation
        dwkl = sum_j log q(z_ij)    - log p(z_i)                 (iii) dimension-wise KL
        mi + tc + dwkl = log q(z_i|x_i) - log p(z_i)             (single-sample KL estimate)

    with ``log q(z)`` and ``sum_j log q(z_j)`` from :func:`log_qz_estimates` and
    ``p = N(0, I)``. The identity holds per sample by construction, for either estimator.
    The beta-TCVAE objective (``002``: alpha = gamma = 1) is
    ``recon + mi + beta * tc + dwkl``, batch-averaged once in the objective.

    Args:
        z, mu, logvar: ``(B, D)``.
        dataset_size: N.
        estimator: ``"mws"`` or ``"mss"``.

    Returns:
        dict of ``(B,)`` tensors: ``mi``, ``tc``, ``dwkl``, ``log_qz_x``, ``log_qz``,
        ``log_prod_qzi``, ``log_pz``.
    """
    log_qz, log_prod_qzi = log_qz_estimates(z, mu, logvar, dataset_size, estimator)  # (B,), (B,)
    log_qz_x = gaussian_log_density(z, mu, logvar).sum(1)  # (B,)
    zeros = torch.zeros_like(z)  # (B, D)
    log_pz = gaussian_log_density(z, zeros, zeros).sum(1)  # (B,)
    return {
        "mi": log_qz_x - log_qz,  # (B,)
        "tc": log_qz - log_prod_qzi,  # (B,)
        "dwkl": log_prod_qzi - log_pz,  # (B,)
        "log_qz_x": log_qz_x,
        "log_qz": log_qz,
        "log_prod_qzi": log_prod_qzi,
        "log_pz": log_pz,
    }


# ---------------------------------------------------------------------------- FactorVAE
def permute_dims(z: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Permute each latent dimension independently across the batch (Kim and Mnih, Algorithm 1).

    Formula::

        for each column j: pi_j = random permutation of {1..B};  out[i, j] = z[pi_j(i), j]

    Vectorised: one ``(B, D)`` matrix of uniform keys, ``argsort`` down each column gives D
    independent uniform permutations, one ``gather`` applies them. Each column keeps its
    multiset of values; samples of ``prod_j q(z_j)`` as ``002_b6b404b9b5e7b646.txt``
    ("Algorithm 1 permute_dims") describes.

    Args:
        z: ``(B, D)``.
        generator: ``torch.Generator`` on ``z``'s device.

    Returns:
        ``(B, D)``.
    """
    if z.dim() != 2:
        raise ValueError(f"permute_dims needs (B, D), got {tuple(z.shape)}")
    keys = torch.rand(z.shape, generator=generator, device=z.device)  # (B, D)
    perm = keys.argsort(dim=0)  # (B, D) column j is a permutation of 0..B-1
    return z.gather(0, perm)  # (B, D)


def factor_vae_log_ratio(d_logits: torch.Tensor) -> torch.Tensor:
    """Per-sample density-ratio estimate ``log D(z) / (1 - D(z))``.

    Formula, for a 2-logit discriminator with class 0 = "sample of q(z)" and class 1 =
    "sample of prod_j q(z_j)", ``D(z) = softmax(logits)[0]``::

        log D / (1 - D) = logit_0 - logit_1

    Args:
        d_logits: ``(B, 2)`` discriminator logits of the VAE's own codes ``z`` (not detached
            here: this is the term whose gradient reaches the encoder).

    Returns:
        ``(B,)``.
    """
    if d_logits.dim() != 2 or d_logits.shape[1] != 2:
        raise ValueError(f"discriminator logits must be (B, 2), got {tuple(d_logits.shape)}")
    return d_logits[:, 0] - d_logits[:, 1]  # (B,)


def factor_vae_tc(d_logits: torch.Tensor) -> torch.Tensor:
    """FactorVAE total-correlation estimate of a batch.

    Formula (Kim and Mnih 2018; ``002_b6b404b9b5e7b646.txt``, "Discriminator-based
    approximation of Total Correlation"; ``004_1dabe4d22771e1b6.txt`` Eq. 3)::

        TC(z) ~= mean_i [ log D(z_i) / (1 - D(z_i)) ] = mean_i (logit_0 - logit_1)

    The VAE loss adds ``gamma * factor_vae_tc(D(z))`` (Algorithm 2, VAE update).

    Args:
        d_logits: ``(B, 2)`` logits of ``D(z)`` for the VAE's codes.

    Returns:
        0-dim tensor (batch mean).
    """
    return factor_vae_log_ratio(d_logits).mean()  # ()


def discriminator_loss(d_logits_z: torch.Tensor, d_logits_perm: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the FactorVAE discriminator.

    Formula (Kim and Mnih 2018, Algorithm 2, discriminator update, as a loss to minimise)::

        real = CE(D(z),      class 0)      averaged over the batch
        fake = CE(D(z_perm), class 1)      averaged over the batch
        loss = 0.5 * (real + fake)
             = -1/(2m) [ sum_i log D(z_i) + sum_i log(1 - D(z_perm_i)) ]

    !!! DETACH THE CODES. ``d_logits_z`` and ``d_logits_perm`` must be computed from
    ``z.detach()`` and ``permute_dims(z_prime).detach()``. This loss trains the discriminator
    only; if the codes are not detached its gradient flows into the encoder and the encoder
    is trained to *help* the discriminator, i.e. to increase TC (STYLE.md, "Known traps").
    :func:`discriminator_loss_from_codes` does the detaching for you.

    Args:
        d_logits_z: ``(B, 2)`` logits for detached samples of ``q(z)``.
        d_logits_perm: ``(B', 2)`` logits for detached permuted samples.

    Returns:
        0-dim tensor.
    """
    for name, t in (("d_logits_z", d_logits_z), ("d_logits_perm", d_logits_perm)):
        if t.dim() != 2 or t.shape[1] != 2:
            raise ValueError(f"{name} must be (B, 2), got {tuple(t.shape)}")
    real = torch.zeros(d_logits_z.shape[0], dtype=torch.long, device=d_logits_z.device)  # (B,)
    fake = torch.ones(d_logits_perm.shape[0], dtype=torch.long, device=d_logits_perm.device)  # (B',)
    return 0.5 * (F.cross_entropy(d_logits_z, real) + F.cross_entropy(d_logits_perm, fake))  # ()


def discriminator_loss_from_codes(
    discriminator: nn.Module,
    z: torch.Tensor,
    z_prime: torch.Tensor,
    generator: torch.Generator,
) -> torch.Tensor:
    """Discriminator loss from raw codes, detaching them itself.

    Formula::

        loss = discriminator_loss(D(z.detach()), D(permute_dims(z_prime.detach())))

    ``z`` are the codes of the VAE batch, ``z_prime`` the codes of a second batch (Kim and
    Mnih, Algorithm 2, use an independent batch ``B'``; passing ``z`` again is a common,
    cheaper variant). No gradient from this loss can reach the encoder.

    Args:
        discriminator: maps ``(B, D)`` to ``(B, 2)`` logits.
        z: ``(B, D)`` codes.
        z_prime: ``(B', D)`` codes to permute.
        generator: for :func:`permute_dims`.

    Returns:
        0-dim tensor.
    """
    z_perm = permute_dims(z_prime.detach(), generator)  # (B', D)
    return discriminator_loss(discriminator(z.detach()), discriminator(z_perm))  # ()


class Discriminator(nn.Module):
    """The FactorVAE discriminator of Kim and Mnih (2018): an MLP, 2 logits.

    Architecture: ``n_layers`` fully connected layers of ``hidden`` units each followed by
    LeakyReLU(0.2), then a linear layer to 2 logits (class 0 = q(z), class 1 = permuted).
    Defaults: 6 layers of 1000 units, as in the paper.

    Parameters are initialised like ``nn.Linear``'s default (Kaiming-uniform weights with
    ``a = sqrt(5)``, uniform biases) but drawn from the explicit ``generator``, so that
    nothing reads the global RNG.

    Args:
        latent_dim: D.
        generator: ``torch.Generator`` for the initialisation.
        hidden: units per hidden layer.
        n_layers: number of hidden layers.
    """

    def __init__(self, latent_dim: int, *, generator: torch.Generator, hidden: int = 1000, n_layers: int = 6) -> None:
        super().__init__()
        if latent_dim < 1 or hidden < 1 or n_layers < 1:
            raise ValueError(
                f"Discriminator needs positive sizes, got latent_dim={latent_dim}, hidden={hidden}, n_layers={n_layers}"
            )
        layers: list[nn.Module] = []
        width = latent_dim
        for _ in range(n_layers):
            layers += [_linear(width, hidden, generator), nn.LeakyReLU(0.2)]
            width = hidden
        layers.append(_linear(width, 2, generator))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` codes -> ``(B, 2)`` logits."""
        return self.net(z)  # (B, 2)


def _linear(fan_in: int, fan_out: int, generator: torch.Generator) -> nn.Linear:
    layer = torch.nn.utils.skip_init(nn.Linear, fan_in, fan_out)  # no draw from the global RNG
    nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)  # (out, in)
    bound = 1.0 / math.sqrt(fan_in)
    nn.init.uniform_(layer.bias, -bound, bound, generator=generator)  # (out,)
    return layer
