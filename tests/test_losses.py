"""Loss terms against closed forms, torch.distributions, scipy.stats and Monte Carlo.

Monte Carlo checks use a fixed seed and a tolerance of 5 standard errors of the MC mean
(plus a small absolute slack), so they are deterministic and not flaky.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats as st
import torch
import torch.distributions as td

from gatedvae import losses as L
from gatedvae.losses import tc as tc_mod


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand_tril(b: int, p: int, g: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    """Random lower-triangular factors with a positive, well-conditioned diagonal."""
    a = 0.3 * torch.randn(b, p, p, generator=g, dtype=dtype)  # (b, p, p)
    diag = 0.5 + torch.rand(b, p, generator=g, dtype=dtype)  # (b, p)
    return torch.tril(a, -1) + torch.diag_embed(diag)  # (b, p, p)


def rand_spd(p: int, rng: np.random.Generator, jitter: float = 1.0) -> np.ndarray:
    a = rng.normal(size=(p, p))
    return a @ a.T + jitter * np.eye(p)


# ------------------------------------------------------------------------------------ kl
@pytest.mark.parametrize(
    ("m", "lv", "expected"),
    [(0.0, 0.0, 0.0), (1.0, 0.0, 5.0), (1.0, 1.0, 5.0 * (math.e - 1.0))],
)
def test_kl_diag_closed_forms(m, lv, expected):
    mu = torch.full((3, 10), m, dtype=torch.float64)
    logvar = torch.full((3, 10), lv, dtype=torch.float64)
    kl = L.kl_diag_normal(mu, logvar)
    assert kl.shape == (3,)
    torch.testing.assert_close(kl, torch.full((3,), expected, dtype=torch.float64))


def test_kl_diag_matches_torch_distributions():
    g = gen(1)
    mu = torch.randn(16, 7, generator=g, dtype=torch.float64)
    logvar = torch.randn(16, 7, generator=g, dtype=torch.float64)
    q = td.Normal(mu, torch.exp(0.5 * logvar))
    p = td.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    ref = td.kl_divergence(q, p)  # (16, 7)
    torch.testing.assert_close(L.kl_diag_per_dim(mu, logvar), ref)
    torch.testing.assert_close(L.kl_diag_normal(mu, logvar), ref.sum(1))


def test_kl_full_matches_multivariate_normal():
    g = gen(2)
    b, p = 8, 5
    mu = torch.randn(b, p, generator=g, dtype=torch.float64)
    tril = rand_tril(b, p, g)
    q = td.MultivariateNormal(mu, scale_tril=tril)
    prior = td.MultivariateNormal(torch.zeros(p, dtype=torch.float64), torch.eye(p, dtype=torch.float64))
    kl = L.kl_full_normal(mu, tril)
    assert kl.shape == (b,)
    torch.testing.assert_close(kl, td.kl_divergence(q, prior))


def test_kl_full_reduces_to_diag():
    g = gen(3)
    mu = torch.randn(4, 6, generator=g, dtype=torch.float64)
    logvar = torch.randn(4, 6, generator=g, dtype=torch.float64)
    tril = torch.diag_embed(torch.exp(0.5 * logvar))
    torch.testing.assert_close(L.kl_full_normal(mu, tril), L.kl_diag_normal(mu, logvar))


def test_reparameterize_reproducible_and_moments():
    mu = torch.tensor([[1.0, -2.0]]).expand(200_000, 2)
    logvar = torch.tensor([[0.0, math.log(4.0)]]).expand(200_000, 2)
    z1 = L.reparameterize(mu, logvar, gen(5))
    z2 = L.reparameterize(mu, logvar, gen(5))
    assert torch.equal(z1, z2)
    assert not torch.equal(z1, L.reparameterize(mu, logvar, gen(6)))
    torch.testing.assert_close(z1.mean(0), torch.tensor([1.0, -2.0]), atol=0.02, rtol=0)
    torch.testing.assert_close(z1.var(0), torch.tensor([1.0, 4.0]), atol=0.05, rtol=0)


def test_reparameterize_full_covariance():
    g = gen(7)
    tril = rand_tril(1, 3, g, dtype=torch.float32)  # (1, 3, 3)
    n = 200_000
    mu = torch.tensor([[0.5, 0.0, -1.0]])
    z = L.reparameterize_full(mu.expand(n, 3), tril.expand(n, 3, 3), gen(8))  # (n, 3)
    cov = torch.cov(z.T)
    torch.testing.assert_close(cov, tril[0] @ tril[0].T, atol=0.02, rtol=0)
    torch.testing.assert_close(z.mean(0), mu[0], atol=0.02, rtol=0)


def test_gaussian_log_density_matches_normal():
    g = gen(9)
    z, mu, logvar = (torch.randn(5, 4, generator=g, dtype=torch.float64) for _ in range(3))
    ref = td.Normal(mu, torch.exp(0.5 * logvar)).log_prob(z)
    torch.testing.assert_close(L.gaussian_log_density(z, mu, logvar), ref)


# --------------------------------------------------------------------------------- recon
def test_bernoulli_nll_matches_manual_formula():
    g = gen(10)
    logits = 3.0 * torch.randn(6, 1, 4, 4, generator=g, dtype=torch.float64)
    target = torch.rand(6, 1, 4, 4, generator=g, dtype=torch.float64)
    target[:3] = (target[:3] > 0.5).double()  # binary and grayscale targets
    p = torch.sigmoid(logits)
    manual = -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).sum((1, 2, 3))
    out = L.bernoulli_nll(logits, target)
    assert out.shape == (6,)
    torch.testing.assert_close(out, manual)


def test_bernoulli_nll_rejects_broadcasting():
    with pytest.raises(ValueError, match="shape"):
        L.bernoulli_nll(torch.zeros(4, 1, 8, 8), torch.zeros(4, 8, 8))


def test_gaussian_nll_forms():
    g = gen(11)
    mean = torch.rand(5, 3, 4, generator=g, dtype=torch.float64)
    target = torch.rand(5, 3, 4, generator=g, dtype=torch.float64)
    sigma = 0.3
    ref = -td.Normal(mean, sigma).log_prob(target).sum((1, 2))
    torch.testing.assert_close(L.gaussian_nll(mean, target, sigma=sigma), ref)
    no_const = L.gaussian_nll(mean, target, sigma=sigma, include_constant=False)
    torch.testing.assert_close(ref - no_const, torch.full((5,), 12 * 0.5 * math.log(2 * math.pi), dtype=torch.float64))
    log_scale = torch.tensor(math.log(sigma), dtype=torch.float64, requires_grad=True)
    learned = L.gaussian_nll(mean, target, log_scale=log_scale)
    torch.testing.assert_close(learned, ref)
    learned.sum().backward()
    assert torch.isfinite(log_scale.grad)
    # disentanglement_lib's l2_loss = 2 * (NLL at sigma = 1 without the constant)
    torch.testing.assert_close(
        L.squared_error(mean, target), 2 * L.gaussian_nll(mean, target, sigma=1.0, include_constant=False)
    )


# ----------------------------------------------------------------------------------- mmd
@pytest.mark.parametrize("kernel", ["rbf", "imq"])
@pytest.mark.parametrize("scale", [None, 0.5, (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)])
def test_mmd_identical_sets_is_exactly_zero(kernel, scale):
    z = torch.randn(32, 6, generator=gen(12))
    out = L.mmd(z, z.clone(), kernel=kernel, scale=scale)
    assert out.dim() == 0
    assert abs(out.item()) < 1e-6


@pytest.mark.parametrize("kernel", ["rbf", "imq"])
def test_mmd_matching_vs_shifted(kernel):
    g = gen(13)
    n, d = 400, 8
    prior = torch.randn(n, d, generator=g, dtype=torch.float64)
    same = torch.randn(n, d, generator=g, dtype=torch.float64)
    shifted = torch.randn(n, d, generator=g, dtype=torch.float64) + 1.0
    m_same = L.mmd(same, prior, kernel=kernel).item()
    m_shift = L.mmd(shifted, prior, kernel=kernel).item()
    assert abs(m_same) < 0.01
    assert m_shift > 0.1
    assert m_shift > 20 * abs(m_same)
    # unequal sample sizes use the full cross mean; still unbiased, still near zero
    assert abs(L.mmd(same[:300], prior, kernel=kernel).item()) < 0.01


def test_mmd_kernel_convention():
    x = torch.zeros(1, 4, dtype=torch.float64)
    y = torch.ones(1, 4, dtype=torch.float64)  # ||x - y||^2 = 4, C = 2 * 4 * sigma^2
    rbf = torch.tensor([[math.exp(-4 / 8)]], dtype=torch.float64)
    torch.testing.assert_close(L.kernel_matrix(x, y, "rbf", 1.0), rbf)
    torch.testing.assert_close(L.kernel_matrix(x, y, "imq", 2.0), torch.tensor([[32 / 36]], dtype=torch.float64))


# ----------------------------------------------------------------------------------- dip
@pytest.mark.parametrize(
    ("cov", "expected"),
    [(torch.ones(10, 10), 90.0), (torch.zeros(10, 10), 10.0), (torch.eye(10), 0.0), (2 * torch.eye(10), 10.0)],
)
def test_dip_penalty_closed_forms(cov, expected):
    assert L.dip_penalty_from_cov(cov, 1.0, 1.0).item() == pytest.approx(expected)


def test_dip_weights_split_terms():
    cov = torch.ones(10, 10) + torch.eye(10)  # off-diagonal 90 * 1, diagonal 10 * (2 - 1)^2
    assert L.dip_penalty_from_cov(cov, 3.0, 0.0).item() == pytest.approx(270.0)
    assert L.dip_penalty_from_cov(cov, 0.0, 5.0).item() == pytest.approx(50.0)


def test_dip_ii_uses_diagonal_matrix_of_mean_variances():
    mu = torch.tensor([[1.0, 0.0, 2.0], [3.0, 2.0, 0.0], [2.0, 4.0, 1.0], [0.0, 2.0, 1.0]], dtype=torch.float64)
    var = torch.tensor([[0.5, 1.0, 2.0], [1.5, 3.0, 4.0], [0.5, 1.0, 2.0], [1.5, 3.0, 4.0]], dtype=torch.float64)
    logvar = torch.log(var)
    # hand computation: biased covariance of mu, plus diag(mean variances) = diag(1, 2, 3)
    mc = mu - mu.mean(0)
    cov_mu = mc.T @ mc / 4
    expected_cov = cov_mu + torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    torch.testing.assert_close(L.dip_covariance(mu, logvar, "ii"), expected_cov)
    torch.testing.assert_close(L.dip_covariance(mu, logvar, "i"), cov_mu)
    off = expected_cov - torch.diag(torch.diagonal(expected_cov))
    hand = 250 * (off**2).sum() + 250 * ((torch.diagonal(expected_cov) - 1) ** 2).sum()
    torch.testing.assert_close(L.dip_penalty(mu, logvar, 250.0, 250.0, kind="ii"), hand)
    # the published bug: torch.diag on the batch of variances, then a mean, is a different matrix
    buggy_cov = cov_mu + torch.stack([torch.diag(v) for v in var]).mean(0).mean()
    assert not torch.allclose(L.dip_penalty_from_cov(buggy_cov, 250.0, 250.0), hand)


# ------------------------------------------------------------------------------ capacity
def test_capacity_target_schedule():
    assert L.capacity_target(0, 20.0, 1000) == 0.0
    assert L.capacity_target(250, 20.0, 1000) == pytest.approx(5.0)
    assert L.capacity_target(1000, 20.0, 1000) == pytest.approx(20.0)
    assert L.capacity_target(5000, 20.0, 1000) == pytest.approx(20.0)
    assert L.capacity_target(7, 20.0, 0) == 20.0


@pytest.mark.parametrize(
    ("mode", "kl", "value", "grad"),
    [("abs", 12.0, 20.0, 10.0), ("abs", 8.0, 20.0, -10.0), ("relu", 12.0, 20.0, 10.0), ("relu", 8.0, 0.0, 0.0)],
)
def test_capacity_penalty_modes_and_gradients(mode, kl, value, grad):
    kl_t = torch.tensor(kl, requires_grad=True)
    out = L.capacity_penalty(kl_t, c=10.0, gamma=10.0, mode=mode)
    assert out.dim() == 0
    assert out.item() == pytest.approx(value)
    out.backward()
    assert kl_t.grad.item() == pytest.approx(grad)


def test_capacity_penalty_rejects_per_sample_kl():
    with pytest.raises(ValueError, match="batch-mean"):
        L.capacity_penalty(torch.ones(8), c=1.0, gamma=1.0)


# ------------------------------------------------------------------------ beta-TCVAE
@pytest.mark.parametrize(("b", "n"), [(2, 2), (2, 1000), (7, 7), (64, 737_280), (128, 1000)])
def test_mss_weight_rows_sum_to_one(b, n):
    w = L.mss_log_weights(b, n, dtype=torch.float64).exp()
    torch.testing.assert_close(w.sum(1), torch.ones(b, dtype=torch.float64))
    torch.testing.assert_close(torch.diagonal(w), torch.full((b,), 1.0 / n, dtype=torch.float64))
    m = b - 1
    strat = (n - m) / (n * m)
    for i in range(b):  # one stratum column per row, the rest 1/M
        others = torch.cat([w[i, :i], w[i, i + 1 :]])
        assert torch.isclose(others, torch.tensor(strat, dtype=torch.float64)).sum() >= 1
        assert torch.isclose(others, torch.tensor(1.0 / m, dtype=torch.float64)).sum() >= m - 1


def test_widely_copied_mss_matrix_is_wrong():
    """The matrix from the original beta-TCVAE code fails both checks the definition passes.

    Its stride M + 1 = B walks down columns 0 and 1 instead of the diagonal, and the
    wrap-around line overwrites W[B-2, 0]: row B-2 sums to 1 + 1/M - 2/N, and the own
    component of rows 2.. gets 1/M instead of 1/N.
    """
    b, n = 6, 100
    m = b - 1
    w = torch.full((b, b), 1.0 / m, dtype=torch.float64)
    w.view(-1)[:: m + 1] = 1.0 / n
    w.view(-1)[1 :: m + 1] = (n - m) / (n * m)
    w[m - 1, 0] = (n - m) / (n * m)
    sums = w.sum(1)
    assert sums[b - 2].item() == pytest.approx(1 + 1 / m - 2 / n)
    assert not torch.allclose(sums, torch.ones(b, dtype=torch.float64))
    assert not torch.allclose(torch.diagonal(w), torch.full((b,), 1.0 / n, dtype=torch.float64))
    ours = L.mss_log_weights(b, n, dtype=torch.float64).exp()
    torch.testing.assert_close(ours.sum(1), torch.ones(b, dtype=torch.float64))


def test_mws_weights_as_printed():
    w = L.mws_log_weights(16, 1000, dtype=torch.float64).exp()
    torch.testing.assert_close(w.sum(1), torch.full((16,), 1.0 / 1000, dtype=torch.float64))


def test_mss_estimator_is_unbiased():
    """Average the MSS estimate of q(z) over random batches (without replacement) vs the exact q(z)."""
    g = gen(14)
    n, b, trials = 9, 4, 40_000
    mus = torch.randn(n, dtype=torch.float64, generator=g)  # 1-D posteriors q(z|n) = N(mu_n, 0.5^2)
    logvar = torch.full((n,), math.log(0.25), dtype=torch.float64)
    z = mus[0] + 0.3  # a point "from" component n* = 0
    dens = L.gaussian_log_density(z, mus, logvar).exp()  # (n,)
    exact = dens.mean()
    keys = torch.rand(trials, n - 1, generator=g)  # random other items, without replacement
    others = keys.argsort(1)[:, : b - 1] + 1  # (trials, b-1) indices in 1..n-1
    batch = torch.cat([torch.zeros(trials, 1, dtype=torch.long), others], 1)  # (trials, b) n* first
    w0 = L.mss_log_weights(b, n, dtype=torch.float64).exp()[0]  # (b,) row of the sample from n*
    est = (w0 * dens[batch]).sum(1)  # (trials,)
    se = est.std() / math.sqrt(trials)
    assert abs(est.mean() - exact) < 5 * se + 1e-12
    # the copied matrix's row 2 (own component at column 2, weight 1/M) is visibly biased
    m = b - 1
    w = torch.full((b, b), 1.0 / m, dtype=torch.float64)
    w.view(-1)[:: m + 1] = 1.0 / n
    w.view(-1)[1 :: m + 1] = (n - m) / (n * m)
    w[m - 1, 0] = (n - m) / (n * m)
    est_copied = (w[2] * dens[batch[:, [1, 2, 0, 3]]]).sum(1)  # (trials,) n* moved to column 2
    assert abs(est_copied.mean() - exact) > 20 * se


@pytest.mark.parametrize("estimator", ["mws", "mss"])
def test_tc_decomposition_identity(estimator):
    g = gen(15)
    b, d = 32, 6
    mu = torch.randn(b, d, generator=g, dtype=torch.float64)
    logvar = 0.5 * torch.randn(b, d, generator=g, dtype=torch.float64) - 1.0
    z = L.reparameterize(mu, logvar, g)
    t = L.tc_decomposition(z, mu, logvar, dataset_size=10_000, estimator=estimator)
    for key in ("mi", "tc", "dwkl", "log_qz_x", "log_qz", "log_prod_qzi", "log_pz"):
        assert t[key].shape == (b,)
    torch.testing.assert_close(t["mi"] + t["tc"] + t["dwkl"], t["log_qz_x"] - t["log_pz"])
    ref_pz = td.Normal(0.0, 1.0).log_prob(z).sum(1)
    torch.testing.assert_close(t["log_pz"], ref_pz)


def test_log_qz_matches_explicit_mixture():
    """With weights from the definition, log q(z_i) is log sum_k w_ik prod_d q(z_id | n_k)."""
    g = gen(16)
    b, d, n = 5, 3, 50
    mu = torch.randn(b, d, generator=g, dtype=torch.float64)
    logvar = torch.randn(b, d, generator=g, dtype=torch.float64) * 0.3
    z = torch.randn(b, d, generator=g, dtype=torch.float64)
    log_qz, log_prod = L.log_qz_estimates(z, mu, logvar, n, "mss")
    w = L.mss_log_weights(b, n, dtype=torch.float64).exp()
    comp = td.Normal(mu.unsqueeze(0), torch.exp(0.5 * logvar).unsqueeze(0)).log_prob(z.unsqueeze(1)).exp()  # (b, b, d)
    torch.testing.assert_close(log_qz, torch.log((w * comp.prod(2)).sum(1)))
    torch.testing.assert_close(log_prod, torch.log((w.unsqueeze(2) * comp).sum(1)).sum(1))


def test_tc_rejects_bad_sizes():
    z = torch.zeros(8, 3)
    with pytest.raises(ValueError, match="dataset_size"):
        L.log_qz_estimates(z, z, z, dataset_size=4, estimator="mss")
    with pytest.raises(ValueError, match="estimator"):
        L.log_qz_estimates(z, z, z, dataset_size=100, estimator="mse")


# ------------------------------------------------------------------------------ FactorVAE
def test_permute_dims_columns_and_reproducibility():
    z = torch.randn(64, 5, generator=gen(17))
    out = L.permute_dims(z, gen(18))
    assert out.shape == z.shape
    torch.testing.assert_close(out.sort(0).values, z.sort(0).values)  # each column's multiset
    assert torch.equal(out, L.permute_dims(z, gen(18)))
    assert not torch.equal(out, L.permute_dims(z, gen(19)))
    # columns are permuted independently: the row origin of each column differs
    idx = torch.arange(64.0).unsqueeze(1).expand(64, 5).contiguous()
    perm = L.permute_dims(idx, gen(18))
    assert len({tuple(perm[:, j].tolist()) for j in range(5)}) == 5


def test_factor_vae_tc_sign():
    real_confident = torch.tensor([[3.0, 0.0], [2.0, -1.0]])  # log D/(1-D) = 3, 3
    fake_confident = torch.tensor([[0.0, 2.0], [-1.0, 1.0]])  # -2, -2
    assert L.factor_vae_tc(real_confident).item() == pytest.approx(3.0)
    assert L.factor_vae_tc(fake_confident).item() == pytest.approx(-2.0)
    torch.testing.assert_close(L.factor_vae_log_ratio(real_confident), torch.tensor([3.0, 3.0]))
    # D = softmax(logits)[0]: the logit difference is log D/(1-D)
    d = torch.softmax(real_confident, 1)[:, 0]
    torch.testing.assert_close(torch.log(d / (1 - d)), torch.tensor([3.0, 3.0]))


def test_discriminator_loss_value():
    dz = torch.tensor([[1.0, -1.0], [0.5, 0.0]])
    dp = torch.tensor([[0.0, 2.0], [1.0, 1.0]])
    manual = -0.5 * (torch.log_softmax(dz, 1)[:, 0].mean() + torch.log_softmax(dp, 1)[:, 1].mean())
    torch.testing.assert_close(L.discriminator_loss(dz, dp), manual)


def test_discriminator_gradient_never_reaches_encoder():
    disc = L.Discriminator(4, generator=gen(20), hidden=16, n_layers=2)
    enc = torch.nn.Linear(3, 4)
    x = torch.randn(10, 3, generator=gen(21))
    z = enc(x)
    loss = L.discriminator_loss_from_codes(disc, z, z, gen(22))
    loss.backward()
    assert enc.weight.grad is None
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in disc.parameters())


def test_discriminator_architecture_and_seeded_init():
    state = torch.random.get_rng_state()
    d1 = L.Discriminator(10, generator=gen(23))
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched
    d2 = L.Discriminator(10, generator=gen(23))
    linears = [m for m in d1.modules() if isinstance(m, torch.nn.Linear)]
    acts = [m for m in d1.modules() if isinstance(m, torch.nn.LeakyReLU)]
    assert [(m.in_features, m.out_features) for m in linears] == [(10, 1000)] + [(1000, 1000)] * 5 + [(1000, 2)]
    assert len(acts) == 6 and all(a.negative_slope == 0.2 for a in acts)
    for a, b in zip(d1.parameters(), d2.parameters(), strict=True):
        assert torch.equal(a, b)
    assert d1(torch.zeros(3, 10)).shape == (3, 2)


# ------------------------------------------------------------------------- inverse-Wishart
@pytest.mark.parametrize(("p", "nu"), [(1, 0.5), (2, 3.0), (3, 6.5), (5, 12.0), (10, 13.0), (4, 1000.0)])
def test_invwishart_log_density_matches_scipy(p, nu):
    rng = np.random.default_rng(p * 100 + int(nu))
    psi = rand_spd(p, rng)
    sigmas = st.invwishart.rvs(df=nu, scale=psi, size=4, random_state=rng).reshape(4, p, p)
    ours = L.invwishart_log_density(torch.tensor(sigmas), torch.tensor(psi), nu)
    if p == 1:  # scipy takes scalars in one dimension
        ref = np.array([st.invwishart.logpdf(s[0, 0], df=nu, scale=psi[0, 0]) for s in sigmas])
    else:
        ref = np.array([st.invwishart.logpdf(s, df=nu, scale=psi) for s in sigmas])
    assert ours.shape == (4,)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-10, atol=1e-8)


def _mc_kl_invwishart(psi_q, nu_q, psi_p, nu_p, n, rng):
    xs = st.invwishart.rvs(df=nu_q, scale=psi_q, size=n, random_state=rng)  # (n, p, p)
    xs_t = np.moveaxis(xs, 0, -1)  # scipy takes (p, p, n)
    d = st.invwishart.logpdf(xs_t, df=nu_q, scale=psi_q) - st.invwishart.logpdf(xs_t, df=nu_p, scale=psi_p)
    return d.mean(), d.std() / math.sqrt(n)


@pytest.mark.parametrize(("p", "nu_q", "nu_p"), [(2, 5.0, 4.0), (3, 8.0, 6.5), (3, 9.0, 8.0)])
def test_kl_invwishart_matches_monte_carlo(p, nu_q, nu_p):
    rng = np.random.default_rng(30 + p)
    psi_q, psi_p = rand_spd(p, rng), rand_spd(p, rng)
    ours = L.kl_invwishart(torch.tensor(psi_q), nu_q, torch.tensor(psi_p), nu_p).item()
    mc, se = _mc_kl_invwishart(psi_q, nu_q, psi_p, nu_p, 40_000, rng)
    assert abs(ours - mc) < 5 * se + 1e-3, (ours, mc, se)
    assert ours > 0


def test_kl_invwishart_zero_on_equal_and_batched():
    rng = np.random.default_rng(40)
    psi = torch.tensor(np.stack([rand_spd(4, rng) for _ in range(3)]))
    out = L.kl_invwishart(psi, 9.0, psi, 9.0)
    assert out.shape == (3,)
    torch.testing.assert_close(out, torch.zeros(3, dtype=torch.float64), atol=1e-10, rtol=0)


def test_invwishart_terms_are_nan_for_a_matrix_that_is_not_positive_definite():
    """The Cholesky factorisations keep their status on the device (``cholesky_ex``: no host wait on
    CUDA); a sample whose matrix is not positive definite gets a NaN term, which the trainer's
    finite check reports, and the other samples keep theirs."""
    rng = np.random.default_rng(43)
    good = torch.tensor(rand_spd(3, rng))  # (3, 3)
    psi = torch.stack([good, -torch.eye(3, dtype=torch.float64)])  # (2, 3, 3) the second is not SPD
    kl = L.kl_invwishart(psi, 9.0, good, 8.0)  # (2,)
    assert torch.isfinite(kl[0]) and torch.isnan(kl[1])
    torch.testing.assert_close(kl[0], L.kl_invwishart(good, 9.0, good, 8.0))
    assert torch.isnan(L.invwishart_log_density(psi, good, 9.0)[1])
    ekl = L.expected_kl_normal_under_invwishart(
        torch.zeros(2, 3, dtype=torch.float64), rand_tril(2, 3, gen(44)), psi, 9.0
    )
    assert torch.isfinite(ekl[0]) and torch.isnan(ekl[1])


def test_expected_kl_normal_under_invwishart_matches_monte_carlo():
    rng = np.random.default_rng(41)
    g = gen(42)
    b, p, nu, n = 3, 3, 7.0, 20_000
    psi = rand_spd(p, rng)
    mu = torch.randn(b, p, generator=g, dtype=torch.float64)
    tril = rand_tril(b, p, g)
    ours = L.expected_kl_normal_under_invwishart(mu, tril, torch.tensor(psi), nu)
    assert ours.shape == (b,)
    sig = torch.tensor(st.invwishart.rvs(df=nu, scale=psi, size=n, random_state=rng))  # (n, p, p)
    q = td.MultivariateNormal(mu.unsqueeze(1), scale_tril=tril.unsqueeze(1))  # batch (b, 1)
    prior = td.MultivariateNormal(torch.zeros(p, dtype=torch.float64), covariance_matrix=sig)  # batch (n,)
    kls = td.kl_divergence(q, prior)  # (b, n)
    mc, se = kls.mean(1), kls.std(1) / math.sqrt(n)
    assert torch.all((ours - mc).abs() < 5 * se + 1e-3), (ours, mc, se)


def _official_form(mu, tril, z2, psi, nu):
    """The regulariser of the authors' code, negated, written from its formula (B = 1)."""
    s = tril @ tril.transpose(-1, -2)
    phi = psi + z2.unsqueeze(-1) * z2.unsqueeze(-2)
    a = s + mu.unsqueeze(-1) * mu.unsqueeze(-2) + psi
    return (
        0.5 * (nu + 1) * torch.logdet(phi)
        - 0.5 * torch.logdet(s)
        + 0.5 * (nu + 1) * torch.diagonal(a @ torch.linalg.inv(phi), dim1=-2, dim2=-1).sum(-1)
    )


@pytest.mark.parametrize(("p", "nu"), [(4, 10.0), (8, 200.0), (10, 13000.0)])
def test_chyvae_regulariser_equals_reference_form_up_to_constant(p, nu):
    g = gen(43)
    b = 16
    psi = L.chyvae_psi(p, nu, dtype=torch.float64)
    diffs = []
    for scale in (0.5, 2.0):  # two different input sets: the offset must not move
        mu = scale * torch.randn(b, p, generator=g, dtype=torch.float64)
        tril = rand_tril(b, p, g)
        z2 = L.reparameterize_full(mu, tril, g)
        reg = L.chyvae_regulariser(mu, tril, z2, nu)
        assert reg.shape == (b,)
        assert torch.all(reg >= 0)
        diffs.append(reg - _official_form(mu, tril, z2, psi, nu))
    diffs = torch.cat(diffs)
    assert (diffs.max() - diffs.min()).item() < 1e-6 * max(1.0, diffs.abs().max().item())


def test_chyvae_terms_float32_agrees_with_float64_at_large_nu():
    g = gen(44)
    b, p, nu = 8, 10, 13000.0
    mu = torch.randn(b, p, generator=g, dtype=torch.float64)
    tril = rand_tril(b, p, g)
    z2 = L.reparameterize_full(mu, tril, g)
    ref = L.chyvae_terms(mu, tril, z2, nu)
    f32 = L.chyvae_terms(mu.float(), tril.float(), z2.float(), nu)
    for key in ("kl_z", "kl_sigma"):
        assert f32[key].dtype == torch.float32
        torch.testing.assert_close(f32[key].double(), ref[key], atol=1e-3, rtol=1e-4)


def test_chyvae_rejects_weak_nu_without_psi():
    with pytest.raises(ValueError, match="nu > p \\+ 1"):
        L.chyvae_regulariser(torch.zeros(2, 5), torch.eye(5).expand(2, 5, 5), torch.zeros(2, 5), nu=6.0)
    mu, tril = torch.zeros(2, 5), torch.eye(5).expand(2, 5, 5)
    out = L.chyvae_regulariser(mu, tril, torch.zeros(2, 5), nu=6.0, psi=torch.eye(5))
    assert out.shape == (2,) and torch.isfinite(out).all()


# ----------------------------------------------------------------- finite, with gradients
def _leaf(*shape, g, scale=1.0, shift=0.0):
    return (scale * torch.randn(*shape, generator=g) + shift).requires_grad_()


def _cases():
    b, d = 16, 5

    def recon():
        g = gen(50)
        logits, mean = _leaf(b, 1, 4, 4, g=g), _leaf(b, 1, 4, 4, g=g)
        log_scale = _leaf(1, g=g, scale=0.1)
        target = torch.rand(b, 1, 4, 4, generator=g)
        outs = [
            L.bernoulli_nll(logits, target),
            L.gaussian_nll(mean, target, log_scale=log_scale),
            L.squared_error(mean, target),
        ]
        return outs, [logits, mean, log_scale]

    def kl():
        g = gen(51)
        mu, logvar = _leaf(b, d, g=g), _leaf(b, d, g=g, scale=0.3)
        tril = rand_tril(b, d, g, torch.float32).requires_grad_()
        outs = [
            L.kl_diag_normal(mu, logvar),
            L.kl_diag_per_dim(mu, logvar).sum(1),
            L.kl_full_normal(mu, tril),
            L.reparameterize(mu, logvar, g).sum(1),
            L.reparameterize_full(mu, tril, g).sum(1),
            L.gaussian_log_density(mu.detach(), mu, logvar).sum(1),
        ]
        return outs, [mu, logvar, tril]

    def batch_level():
        g = gen(52)
        mu, logvar = _leaf(b, d, g=g), _leaf(b, d, g=g, scale=0.3)
        z = L.reparameterize(mu, logvar, g)
        prior = torch.randn(b, d, generator=g)
        kl_mean = L.kl_diag_normal(mu, logvar).mean()
        outs = [
            L.mmd(z, prior, "rbf"),
            L.mmd(z, prior, "imq", scale=(0.5, 1.0, 2.0)),
            L.dip_penalty(mu, logvar, 10.0, 5.0, "i"),
            L.dip_penalty(mu, logvar, 10.0, 5.0, "ii"),
            L.capacity_penalty(kl_mean, 3.0, 100.0, "abs"),
            L.capacity_penalty(kl_mean, 0.0, 100.0, "relu"),
        ]
        return outs, [mu, logvar]

    def tc():
        g = gen(53)
        mu, logvar = _leaf(b, d, g=g), _leaf(b, d, g=g, scale=0.3)
        z = L.reparameterize(mu, logvar, g)
        outs = []
        for est in ("mws", "mss"):
            t = L.tc_decomposition(z, mu, logvar, 1000, est)
            outs += [t["mi"], t["tc"], t["dwkl"]]
        disc = L.Discriminator(d, generator=g, hidden=32, n_layers=2)
        outs.append(L.factor_vae_tc(disc(z)))
        outs.append(L.permute_dims(z, g).sum(1))
        return outs, [mu, logvar]

    def wishart():
        g = gen(54)
        p, nu = d, 20.0
        mu, tril = _leaf(b, p, g=g), rand_tril(b, p, g, torch.float32).requires_grad_()
        z2 = L.reparameterize_full(mu, tril, g)
        t = L.chyvae_terms(mu, tril, z2, nu)
        psi = L.chyvae_psi(p, nu)
        outs = [t["kl_z"], t["kl_sigma"], L.chyvae_regulariser(mu, tril, z2, nu)]
        sig = tril @ tril.transpose(-1, -2) + torch.eye(p)
        outs.append(L.invwishart_log_density(sig, psi, nu))
        outs.append(L.kl_invwishart(sig, nu + 1, psi, nu))
        outs.append(L.expected_kl_normal_under_invwishart(mu, tril, psi, nu))
        return outs, [mu, tril]

    return {"recon": recon, "kl": kl, "batch_level": batch_level, "tc": tc, "wishart": wishart}


@pytest.mark.parametrize("name", list(_cases()))
def test_every_term_finite_with_gradients(name):
    outs, leaves = _cases()[name]()
    for out in outs:
        assert out.dim() in (0, 1)
        assert out.dim() == 0 or out.shape == (16,)
        assert torch.isfinite(out).all()
    total = sum(o.sum() for o in outs)
    total.backward()
    for leaf in leaves:
        assert leaf.grad is not None and torch.isfinite(leaf.grad).all()
        assert leaf.grad.abs().sum() > 0


def test_public_api_is_complete():
    import gatedvae.losses as pkg

    for name in pkg.__all__:
        assert hasattr(pkg, name), name
    assert tc_mod.__all__  # every module declares its API
