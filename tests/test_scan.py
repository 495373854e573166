"""SCAN: the grounding KL against closed forms, the recombination operators on hand-made Gaussians
(closed form, and the learned psi trained on them), concepts and symbols, the scores on hand-made
predictions, and a small end-to-end run on a tiny grid dataset."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence

from conftest import grid_dataset, labelled_dataset
from gatedvae.cli import main
from gatedvae.config import Config, DataConfig, ModelConfig, TrainConfig
from gatedvae.errors import ConfigError, DataError, GatedVAEError
from gatedvae.scan import (
    SCAN,
    Recombinator,
    Vocabulary,
    accuracy_diversity,
    combine_concepts,
    kl_diag_gaussians,
    reference_operator,
    run_scan,
)
from gatedvae.train import train


# --------------------------------------------------------------------------- the grounding KL
def test_kl_diag_gaussians_closed_form_and_torch_distributions():
    # KL(N(0, 1) || N(1, 4)) = log 2 + (1 + 1) / 8 - 1/2.
    one = kl_diag_gaussians(
        torch.tensor([[0.0]]), torch.tensor([[0.0]]), torch.tensor([[1.0]]), torch.tensor([[math.log(4.0)]])
    )
    assert one.item() == pytest.approx(math.log(2.0) + 0.25 - 0.5, abs=1e-6)
    g = torch.Generator().manual_seed(0)
    mp, lp, mq, lq = (torch.randn(7, 5, generator=g) for _ in range(4))
    ref = kl_divergence(
        Independent(Normal(mp, torch.exp(0.5 * lp)), 1), Independent(Normal(mq, torch.exp(0.5 * lq)), 1)
    )
    torch.testing.assert_close(kl_diag_gaussians(mp, lp, mq, lq), ref)


def test_scan_grounding_term_is_the_forward_kl_from_vision_to_symbols():
    torch.manual_seed(0)
    scan = SCAN(vocab_size=6, latent_dim=3, hidden=8)
    y = torch.tensor([[1, 0, 0, 1, 0, 0], [0, 1, 0, 0, 0, 1]], dtype=torch.float32)
    mu_x, logvar_x = (
        torch.tensor([[1.0, -0.5, 0.0], [0.2, 0.3, -1.0]]),
        torch.tensor([[-3.0, -3.0, -3.0], [-2.0, -1.0, 0.0]]),
    )
    terms = scan.loss(y, mu_x, logvar_x, beta=2.0, lam=10.0, generator=torch.Generator().manual_seed(1))
    mu_y, logvar_y = scan.encode(y)
    q_x = Independent(Normal(mu_x, torch.exp(0.5 * logvar_x)), 1)
    q_y = Independent(Normal(mu_y, torch.exp(0.5 * logvar_y)), 1)
    torch.testing.assert_close(terms["ground"], kl_divergence(q_x, q_y).mean())  # forward: KL(q(z_x|x) || q(z_y|y))
    assert not torch.allclose(terms["ground"], kl_divergence(q_y, q_x).mean())
    prior = Independent(Normal(torch.zeros(2, 3), torch.ones(2, 3)), 1)
    torch.testing.assert_close(terms["kl"], kl_divergence(q_y, prior).mean())
    torch.testing.assert_close(terms["total"], terms["recon"] + 2.0 * terms["kl"] + 10.0 * terms["ground"])


def test_forward_kl_prefers_a_broad_concept_latent_over_varied_images():
    """The lecture's point: images varying in a primitive make the forward-KL-optimal q(z_y) broad there."""
    g = torch.Generator().manual_seed(0)
    mu_x = torch.randn(4000, 1, generator=g)  # the concept leaves this primitive open: values spread N(0, 1)
    logvar_x = torch.full((4000, 1), math.log(0.01))  # each image is sharp
    best = min(
        ((m, lv) for m in np.linspace(-1, 1, 21) for lv in np.linspace(-5, 1, 61)),
        key=lambda p: (
            kl_diag_gaussians(mu_x, logvar_x, torch.full_like(mu_x, p[0]), torch.full_like(mu_x, p[1])).mean().item()
        ),
    )
    assert abs(best[0]) < 0.11 and abs(math.exp(best[1]) - 1.01) < 0.1  # the moment match: N(0, ~1), the prior


# --------------------------------------------------------------------------- operators
def _hand_made():
    # 4 latents. c1 = {a=+1.5, b=-1.5, _, _}, c2 = {_, b=-1.5, c=+1.0, _}, c3 = {_, _, _, d=+2.0}.
    narrow, open_ = math.log(0.01), 0.0
    mu = torch.tensor([[1.5, -1.5, 0.0, 0.0], [0.0, -1.5, 1.0, 0.0], [0.0, 0.0, 0.0, 2.0]])
    lv = torch.tensor([[narrow, narrow, open_, open_], [open_, narrow, narrow, open_], [open_, open_, open_, narrow]])
    return mu, lv, narrow


def test_reference_operators_on_hand_made_gaussians():
    mu, lv, narrow = _hand_made()
    m, v = reference_operator(mu[0:1], lv[0:1], mu[2:3], lv[2:3], "and")  # {a, b} AND {d}
    assert torch.equal(m, torch.tensor([[1.5, -1.5, 0.0, 2.0]])) and torch.equal(
        v, torch.tensor([[narrow, narrow, 0.0, narrow]])
    )
    m, v = reference_operator(mu[0:1], lv[0:1], mu[1:2], lv[1:2], "in_common")  # {a, b} IN COMMON {b, c} = {b}
    assert torch.equal(m, torch.tensor([[0.0, -1.5, 0.0, 0.0]])) and torch.equal(
        v, torch.tensor([[0.0, narrow, 0.0, 0.0]])
    )
    m, v = reference_operator(mu[0:1], lv[0:1], mu[1:2], lv[1:2], "ignore")  # {a, b} IGNORE {b, c} = {a}
    assert torch.equal(m, torch.tensor([[1.5, 0.0, 0.0, 0.0]])) and torch.equal(
        v, torch.tensor([[narrow, 0.0, 0.0, 0.0]])
    )
    with pytest.raises(ConfigError, match="unknown operator"):
        reference_operator(mu, lv, mu, lv, "or")


def test_learned_operators_match_the_closed_form_on_hand_made_gaussians():
    """psi trained with L_r = KL(q(z_x) || psi(...)) on synthetic concepts recovers each operator."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    k, sharp = 4, math.log(0.01)
    psi = Recombinator(hidden=32)
    opt = torch.optim.Adam(psi.parameters(), lr=1e-2)

    def concept(named, values):
        return torch.where(named, values, torch.zeros_like(values)), torch.where(
            named, torch.full_like(values, sharp), torch.zeros_like(values)
        )

    for _ in range(400):
        b = 192
        values = torch.randint(0, 2, (b, k), generator=g) * 3.0 - 1.5  # each latent: -1.5 or +1.5
        n1 = torch.rand(b, k, generator=g) < 0.5
        n2 = torch.rand(b, k, generator=g) < 0.5
        op = torch.randint(0, 3, (b,), generator=g)
        n2 = torch.where((op == 0)[:, None], n2 & ~n1, n2)  # AND joins orthogonal concepts
        m1, l1 = concept(n1, values)
        m2, l2 = concept(n2, values)
        res = torch.where((op == 0)[:, None], n1 | n2, torch.where((op == 1)[:, None], n1 & n2, n1 & ~n2))
        # An image of the result: sharp at the named values, anything (N(0, 1)) on the open latents.
        mu_x = torch.where(res, values, torch.randn(b, k, generator=g))
        mu_r, lv_r = psi(m1, l1, m2, l2, op)
        loss = kl_diag_gaussians(mu_x, torch.full_like(mu_x, sharp), mu_r, lv_r).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    mu, lv, _ = _hand_made()
    with torch.no_grad():
        for op, (i, j) in (("and", (0, 2)), ("in_common", (0, 1)), ("ignore", (0, 1))):
            m_ref, v_ref = reference_operator(mu[i : i + 1], lv[i : i + 1], mu[j : j + 1], lv[j : j + 1], op)
            m, v = psi(
                mu[i : i + 1],
                lv[i : i + 1],
                mu[j : j + 1],
                lv[j : j + 1],
                torch.tensor([("and", "in_common", "ignore").index(op)]),
            )
            named = v_ref < -1
            assert torch.allclose(m[named], m_ref[named], atol=0.25), (op, m, m_ref)
            assert torch.all(v[named] < math.log(0.1)), (op, v)  # narrow where the result names the latent
            assert torch.all(v[~named].abs() < 0.5) and torch.all(m[~named].abs() < 0.3), (
                op,
                m,
                v,
            )  # ~N(0, 1) where open


def test_combine_concepts_lecture_examples():
    # attributes (size, shape, colour); -1 = open.
    small, round_, red = 0, 1, 2
    assert combine_concepts(np.array([small, -1, -1]), np.array([-1, round_, -1]), "and").tolist() == [
        small,
        round_,
        -1,
    ]
    assert combine_concepts(np.array([small, round_, -1]), np.array([-1, round_, red]), "in_common").tolist() == [
        -1,
        round_,
        -1,
    ]
    assert combine_concepts(np.array([small, round_, -1]), np.array([-1, round_, -1]), "ignore").tolist() == [
        small,
        -1,
        -1,
    ]
    with pytest.raises(ConfigError, match="orthogonal"):
        combine_concepts(np.array([small, round_, -1]), np.array([-1, round_, -1]), "and")


# --------------------------------------------------------------------------- concepts, symbols, scores
def test_vocabulary_concepts_symbols_and_images():
    ds = grid_dataset((1, 3, 4, 5, 6))
    vocab = Vocabulary.from_spec(ds, ["f1", "f2:2"])
    assert vocab.words == ["f1=0", "f1=1", "f1=2", "f2=0", "f2=1"] and vocab.size == 5
    allc = vocab.all_concepts()
    assert len(allc) == 4 * 3 - 1 and not np.any((allc < 0).all(1))
    y = vocab.symbols(np.array([[2, -1], [0, 1]]))
    assert y.tolist() == [[0, 0, 1, 0, 0], [1, 0, 0, 0, 1]]
    rng = np.random.default_rng(0)
    concepts = allc[rng.integers(0, len(allc), size=2000)]
    f = vocab.sample_factors(concepts, rng)
    cls = vocab.attribute_classes(f)
    named = concepts >= 0
    assert np.array_equal(cls[named], concepts[named])  # the images show the named words
    assert set(f[concepts[:, 1] == 0, 2]) == {0, 1} and set(f[concepts[:, 1] == 1, 2]) == {2, 3}  # f2 bins {0,1}, {2,3}
    assert vocab.describe([1, -1]) == "{f1=1}"
    with pytest.raises(ConfigError, match="not a factor"):
        Vocabulary.from_spec(ds, ["shape"])
    with pytest.raises(ConfigError, match="bins must lie"):
        Vocabulary.from_spec(ds, ["f2:9"])
    with pytest.raises(DataError, match="full-grid"):
        Vocabulary.from_spec(labelled_dataset(n=50), ["a"])


def test_accuracy_and_diversity_on_hand_made_predictions():
    ds = grid_dataset((1, 3, 4, 5, 6))
    vocab = Vocabulary.from_spec(ds, ["f1", "f2:2"])
    concepts = np.array([[2, -1], [-1, 1]])
    spread = np.stack([np.array([[2, s % 2] for s in range(6)]), np.array([[s % 3, 1] for s in range(6)])])  # (2, 6, 2)
    out = accuracy_diversity(vocab, concepts, spread)
    assert out["accuracy"] == 1.0 and out["diversity"] == pytest.approx(0.0, abs=1e-12) and out["open_attributes"] == 2
    stuck = np.stack([np.array([[0, 0]] * 6), np.array([[1, 0]] * 6)])  # wrong named words, open ones never vary
    out = accuracy_diversity(vocab, concepts, stuck)
    assert out["accuracy"] == 0.0
    assert out["diversity"] == pytest.approx((math.log(2) + math.log(3)) / 2)


# --------------------------------------------------------------------------- end to end
def test_run_scan_on_a_tiny_vae(tmp_path, capsys):
    ds = grid_dataset((1, 3, 4, 5, 6))
    cfg = Config(
        data=DataConfig(name="dsprites"),
        model=ModelConfig(name="beta_vae", latent_dim=4, hidden=32),
        train=TrainConfig(steps=60, batch_size=32, lr=3e-3, device="cpu", log_every=20, checkpoint_every=60),
    )
    run = tmp_path / "run"
    train(cfg, run, quiet=True, tensorboard=False, dataset=ds)
    doc = run_scan(
        run,
        tmp_path / "scan",
        attributes=["f1", "f2:2", "f4:2"],
        steps=150,
        operator_steps=60,
        classifier_steps=100,
        batch_size=32,
        samples=8,
        seed=0,
        dataset=ds,
    )
    s = doc["scores"]
    for key in ("train_symbols", "test_symbols", "test_operators"):
        assert 0.0 <= s[key]["accuracy"] <= 1.0 and s[key]["concepts"] > 0
        assert 0.0 <= s[key]["diversity"] <= math.log(3) + 1e-9
    assert 0.0 <= s["img2sym"]["accuracy"] <= 1.0 and 0.0 <= doc["classifier_accuracy"] <= 1.0
    assert doc["concepts"]["train"] + doc["concepts"]["test"] == 4 * 3 * 3 - 1
    assert {"sym2img.png", "operators.png", "img2sym.png"} <= set(doc["figures"])
    assert json.loads((tmp_path / "scan" / "scan.json").read_text())["format"] == "gatedvae-scan-1"
    assert (tmp_path / "scan" / "scan.safetensors").stat().st_size > 0
    before = (tmp_path / "scan" / "scan.json").read_bytes()
    with pytest.raises(GatedVAEError, match="already holds a SCAN result"):
        run_scan(run, tmp_path / "scan", attributes=["f1"], steps=1, dataset=ds)
    assert (tmp_path / "scan" / "scan.json").read_bytes() == before
    with pytest.raises(ConfigError, match="holdout"):
        run_scan(run, tmp_path / "other", holdout=1.5, dataset=ds)
    assert main(["scan", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
