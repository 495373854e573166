"""FactorVAE disentanglement score of Kim & Mnih (``002_b6b404b9b5e7b646.txt``; also used by
CHyVAE, ``004_1dabe4d22771e1b6.txt``).

One *vote* (a training point of the classifier):

1. choose a factor k uniformly; draw a batch of ``batch_size`` factor vectors with factor k
   held at one random value and all others random;
2. encode them; divide each latent's variance within the batch by its global variance
   (estimated once from ``n_variance`` random samples) -- i.e. normalise each dimension by its
   empirical std, so the argmin is invariant to rescaling;
3. the vote is (argmin over non-pruned latents of that ratio, k).

The classifier is the majority vote: each latent j predicts the factor that most often chose it
on the training votes. Accuracy = fraction of votes the classifier gets right, on the training
votes and on fresh evaluation votes. Latents whose global std is below ``prune_threshold``
(collapsed to the prior; disentanglement_lib's setting 0.05) take no part, which also keeps a
constant latent from producing 0/0.

Differences from disentanglement_lib, on purpose: votes are recorded against the latent's real
index (the library indexes the vote by the position among *active* latents, which relabels
columns consistently and so leaves the accuracies unchanged), and ``num_active_dims`` is the
number of active latents (the library reports the length of the mask).
"""

from __future__ import annotations

import numpy as np

from ..errors import DataError
from .registry import register_metric
from .sampling import FactorSampler, GridSampler, RepresentationFn
from .utils import check_positive_int, check_rng

__all__ = [
    "factor_vae_score",
    "factor_vae_from_sampler",
    "factor_vae_votes",
    "factor_vae_score_from_votes",
    "FACTOR_VAE_DEFAULTS",
    "FACTOR_VAE_FAST",
]

FACTOR_VAE_DEFAULTS = dict(batch_size=64, n_train=10000, n_eval=5000, n_variance=10000, prune_threshold=0.05)
FACTOR_VAE_FAST = dict(FACTOR_VAE_DEFAULTS, n_train=1000, n_eval=500, n_variance=5000)


def factor_vae_votes(codes, fixed_factor, global_variance, active, num_factors: int) -> np.ndarray:
    """Votes from encoded batches: the pure core of the FactorVAE score.

    Args:
        codes: (V, B, D) codes of V batches of B samples, batch v with factor ``fixed_factor[v]``
            held fixed.
        fixed_factor: (V,) int index of the fixed factor of each batch.
        global_variance: (D,) variance of each latent over random samples.
        active: (D,) bool, the latents that may receive votes (at least one True).
        num_factors: K.

    Returns:
        (K, D) int64 vote counts ``votes[k, j]`` = batches with factor k fixed whose
        lowest normalised variance was latent j.
    """
    codes = np.asarray(codes, dtype=np.float64)
    local = codes.var(axis=1, ddof=1)  # (V, D)
    act = np.flatnonzero(active)  # (A,)
    ratio = local[:, act] / global_variance[act][None, :]  # (V, A)
    winner = act[np.argmin(ratio, axis=1)]  # (V,) real latent index
    votes = np.zeros((num_factors, codes.shape[2]), dtype=np.int64)  # (K, D)
    np.add.at(votes, (np.asarray(fixed_factor), winner), 1)
    return votes


def factor_vae_score_from_votes(train_votes, eval_votes) -> dict:
    """Majority-vote classifier fitted on ``train_votes`` (K, D), scored on both vote tables.

    Returns ``train_accuracy``, ``eval_accuracy``, their binomial standard errors
    ``train_accuracy_se`` / ``eval_accuracy_se`` and ``classifier`` (D,), the factor each
    latent predicts (argmax of its column; a latent that never won a vote predicts factor 0 and
    is never asked).
    """
    train_votes = np.asarray(train_votes)
    eval_votes = np.asarray(eval_votes)
    classifier = np.argmax(train_votes, axis=0)  # (D,)
    cols = np.arange(train_votes.shape[1])
    n_tr, n_ev = train_votes.sum(), eval_votes.sum()
    train_acc = float(train_votes[classifier, cols].sum() / n_tr) if n_tr else 0.0
    eval_acc = float(eval_votes[classifier, cols].sum() / n_ev) if n_ev else 0.0
    # binomial standard error of each accuracy (the votes are independent draws): the sampling
    # noise of the estimate, larger under the ``fast`` preset's fewer votes
    se_tr = float(np.sqrt(train_acc * (1 - train_acc) / n_tr)) if n_tr else 0.0
    se_ev = float(np.sqrt(eval_acc * (1 - eval_acc) / n_ev)) if n_ev else 0.0
    return {
        "train_accuracy": train_acc,
        "eval_accuracy": eval_acc,
        "train_accuracy_se": se_tr,
        "eval_accuracy_se": se_ev,
        "classifier": classifier,
    }


def factor_vae_from_sampler(
    sampler: FactorSampler,
    rng: np.random.Generator,
    *,
    batch_size: int = 64,
    n_train: int = 10000,
    n_eval: int = 5000,
    n_variance: int = 10000,
    prune_threshold: float = 0.05,
    chunk_size: int = 16384,
) -> dict:
    """The FactorVAE score over any :class:`~.sampling.FactorSampler` (grid or observed draws).

    Draw order: ``n_variance`` random codes for the global variance, then the training votes,
    then the evaluation votes; each vote picks its fixed factor uniformly among
    ``sampler.eligible``. Arguments and result as :func:`factor_vae_score`.
    """
    rng = check_rng(rng)
    batch_size = check_positive_int(batch_size, "batch_size", minimum=2)
    n_train = check_positive_int(n_train, "n_train")
    n_eval = check_positive_int(n_eval, "n_eval")
    n_variance = check_positive_int(n_variance, "n_variance", minimum=2)
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    if sampler.eligible.size == 0:
        raise DataError("every factor has a single class; nothing to score")
    k_fac = sampler.num_factors
    z = sampler.random_codes(n_variance, rng)  # (n_variance, D)
    global_var = z.var(axis=0, ddof=1)  # (D,)
    active = np.sqrt(global_var) >= float(prune_threshold)  # (D,)
    active &= global_var > 0  # a zero-variance latent is never active, whatever the threshold
    d = global_var.size
    out = {"num_active_dims": int(active.sum()), "active": active, "global_variance": global_var}
    if not active.any():
        zeros = np.zeros((k_fac, d), dtype=np.int64)
        out.update(
            train_accuracy=0.0,
            eval_accuracy=0.0,
            train_accuracy_se=0.0,
            eval_accuracy_se=0.0,
            train_votes=zeros,
            eval_votes=zeros.copy(),
            classifier=np.zeros(d, dtype=np.int64),
        )
        return out
    per_chunk = max(1, chunk_size // batch_size)

    def votes(n_votes: int) -> np.ndarray:
        table = np.zeros((k_fac, d), dtype=np.int64)  # (K, D)
        for start in range(0, n_votes, per_chunk):
            v = min(per_chunk, n_votes - start)
            fixed = sampler.eligible[rng.integers(0, sampler.eligible.size, size=v)]  # (v,)
            codes = sampler.group_codes(fixed, batch_size, rng)  # (v, B, D)
            if codes.shape[2] != d:
                raise DataError(f"representation_fn: code width changed from {d} to {codes.shape[2]}")
            table += factor_vae_votes(codes, fixed, global_var, active, k_fac)
        return table

    train_votes = votes(n_train)
    eval_votes = votes(n_eval)
    out.update(factor_vae_score_from_votes(train_votes, eval_votes))
    out.update(train_votes=train_votes, eval_votes=eval_votes)
    return out


def factor_vae_score(
    representation_fn: RepresentationFn,
    factor_sizes,
    rng: np.random.Generator,
    *,
    batch_size: int = 64,
    n_train: int = 10000,
    n_eval: int = 5000,
    n_variance: int = 10000,
    prune_threshold: float = 0.05,
    chunk_size: int = 16384,
) -> dict:
    """FactorVAE score (Kim & Mnih) through a representation function of factor classes.

    Args:
        representation_fn: ``(n, K) int factor classes -> (n, D) codes``; see
            :mod:`gatedvae.metrics.sampling`.
        factor_sizes: (K,) number of classes per factor.
        rng: the only source of randomness (factor choice and factor draws).
        batch_size: samples per vote (64 in Kim & Mnih and disentanglement_lib).
        n_train, n_eval: votes for fitting and for evaluating the majority-vote classifier.
        n_variance: random samples for the global variance of each latent.
        prune_threshold: latents with global std below this get no votes.
        chunk_size: at most this many rows go to ``representation_fn`` at once.

    Returns:
        dict with ``train_accuracy``, ``eval_accuracy``, ``num_active_dims``, ``active`` (D,),
        ``global_variance`` (D,), ``train_votes`` / ``eval_votes`` (K, D) and ``classifier`` (D,).
        If no latent is active both accuracies are 0.
    """
    sampler = GridSampler(representation_fn, factor_sizes, check_positive_int(chunk_size, "chunk_size"))
    return factor_vae_from_sampler(
        sampler,
        rng,
        batch_size=batch_size,
        n_train=n_train,
        n_eval=n_eval,
        n_variance=n_variance,
        prune_threshold=prune_threshold,
        chunk_size=chunk_size,
    )


register_metric(
    "factor_vae",
    factor_vae_score,
    kind="sampler",
    default=FACTOR_VAE_DEFAULTS,
    fast=FACTOR_VAE_FAST,
    headline=("eval_accuracy",),
    aliases=("factorvae",),
    from_sampler=factor_vae_from_sampler,
)
