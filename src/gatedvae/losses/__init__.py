"""Loss terms: pure functions over tensors, composed by the objectives in ``models/``.

One file per concern:

* :mod:`.recon`    reconstruction NLLs (Bernoulli from logits, Gaussian).
* :mod:`.kl`       analytic KL of diagonal / full-covariance Gaussians to N(0, I), sampling.
* :mod:`.capacity` annealed capacity target and penalty (on the batch-mean KL).
* :mod:`.mmd`      InfoVAE maximum mean discrepancy (RBF / IMQ kernels).
* :mod:`.dip`      DIP-VAE-I/II covariance penalties.
* :mod:`.tc`       beta-TCVAE minibatch estimators (MWS / MSS), FactorVAE discriminator.
* :mod:`.wishart`  CHyVAE inverse-Wishart terms.
* :mod:`.weak`     pairs: per-dim divergences, the shared-dim rules, GVAE / ML-VAE aggregates.

Reduction convention: per-sample terms return ``(B,)``, summed over pixels or latent
dimensions; the objective takes the batch mean once. Batch-level statistics (MMD, DIP,
capacity penalty, FactorVAE TC and discriminator loss) return 0-dim tensors and say so.
"""

from __future__ import annotations

from .capacity import capacity_penalty, capacity_target
from .dip import batch_covariance, dip_covariance, dip_penalty, dip_penalty_from_cov
from .kl import (
    gaussian_log_density,
    kl_diag_normal,
    kl_diag_per_dim,
    kl_full_normal,
    reparameterize,
    reparameterize_full,
)
from .mmd import kernel_matrix, mmd
from .recon import bernoulli_nll, gaussian_nll, squared_error
from .tc import (
    Discriminator,
    discriminator_loss,
    discriminator_loss_from_codes,
    factor_vae_log_ratio,
    factor_vae_tc,
    log_qz_estimates,
    mss_log_weights,
    mws_log_weights,
    permute_dims,
    tc_decomposition,
)
from .weak import (
    adaptive_shared_mask,
    aggregate_gvae,
    aggregate_ml_vae,
    kl_between_diag,
    pair_divergence,
    share_posteriors,
    top_k_shared_mask,
)
from .wishart import (
    chyvae_psi,
    chyvae_regulariser,
    chyvae_terms,
    expected_kl_normal_under_invwishart,
    invwishart_log_density,
    kl_invwishart,
    mvdigamma,
)

__all__ = [
    # recon
    "bernoulli_nll",
    "gaussian_nll",
    "squared_error",
    # kl
    "kl_diag_per_dim",
    "kl_diag_normal",
    "kl_full_normal",
    "reparameterize",
    "reparameterize_full",
    "gaussian_log_density",
    # capacity
    "capacity_target",
    "capacity_penalty",
    # mmd
    "kernel_matrix",
    "mmd",
    # dip
    "batch_covariance",
    "dip_covariance",
    "dip_penalty_from_cov",
    "dip_penalty",
    # tc
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
    # wishart
    "mvdigamma",
    "chyvae_psi",
    "invwishart_log_density",
    "kl_invwishart",
    "expected_kl_normal_under_invwishart",
    "chyvae_terms",
    "chyvae_regulariser",
    # weak
    "kl_between_diag",
    "pair_divergence",
    "adaptive_shared_mask",
    "top_k_shared_mask",
    "aggregate_gvae",
    "aggregate_ml_vae",
    "share_posteriors",
]
