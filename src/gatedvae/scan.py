"""SCAN: the Symbol-Concept Association Network (Higgins et al. 2018; lecture
``002_b6b404b9b5e7b646.txt``, the SCAN slides), on top of a trained (gated or beta-) VAE run.

The trained VAE's latent ``z_x`` holds the visual primitives. A *concept* assigns a value (a
*word*) to some attributes and leaves the rest open ("{small, heart}" leaves position free); its
symbol ``y`` is the k-hot vector of its words. SCAN is a small VAE over symbols whose latent
``z_y`` (as wide as ``z_x``) is grounded in vision by the forward KL (the lecture's L_y)::

    L_y = E_q(z_y|y)[-log p(y|z_y)]                 symbol reconstruction (Bernoulli, summed over words)
        + beta   KL(q(z_y|y) || N(0, I))            prior
        + lambda KL(q(z_x|x) || q(z_y|y))           grounding, x an image of the concept

The forward KL lets ``q(z_y|y)`` stay broad (near the prior) on the primitives a concept leaves
open -- its images vary there -- and narrow on those it names. Defaults beta = 1, lambda = 10
(the lecture gives no values; ours).

* **sym2img**: ``z_y ~ q(z_y|y)``, then the VAE's decoder ``p(x|z_y)``.
* **img2sym**: ``z_x = E q(z_x|x)``, then SCAN's decoder ``p(y|z_x)``; per attribute the word
  with the highest probability.
* **Recombination operators** AND, IN COMMON, IGNORE (lecture): a module psi that "strides over
  the parameters of each matching component" -- for every latent k it maps
  ``(mu_1k, logvar_1k, mu_2k, logvar_2k)`` to ``(mu_rk, logvar_rk)`` with the weights the
  one-hot operator ``r`` selects (one small MLP per operator, shared over k) -- trained with SCAN
  frozen by ``L_r = KL(q(z_x|x) || q_psi(z_r | z_y1, z_y2, r))``, x an image of the recombined
  concept. :func:`reference_operator` is the closed form psi should approach (used in tests and
  reported as a diagnostic).

Concepts on dSprites (offline, measurable): the attributes are factors, binned into words:
shape (square, ellipse, heart), scale (small, medium, large), posX (left, centre, right), posY
(top, middle, bottom) -- 12 words, 4^4 - 1 = 255 concepts. Images of a concept are drawn with
its named attributes' classes uniform within their bins and every other factor uniform (fresh
images each step; the paper showed ten fixed examples per concept). A random 20% of the concepts
naming two or more attributes is held out of training ("test symbols"); the same held-out
concepts are also built by AND from two trained concepts ("test operators").

Scores, as in the lecture's table (``scan_scores``): an attribute classifier (an MLP trained on
the dataset's images, its accuracy reported) reads sym2img samples. **Accuracy**: the share of a
concept's named attributes the samples show, averaged over samples and concepts. **Diversity**:
``KL(u || uniform)`` in nats, u the distribution of an open attribute over the samples, averaged
over concepts and open attributes (0 = as varied as the prior allows; log 3 = 1.10 = never
varies). img2sym accuracy: the share of attributes of random images that SCAN names correctly.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError, DataError, GatedVAEError

__all__ = [
    "Attribute",
    "Vocabulary",
    "SCAN",
    "Recombinator",
    "AttributeClassifier",
    "OPERATORS",
    "kl_diag_gaussians",
    "reference_operator",
    "combine_concepts",
    "train_scan",
    "scan_scores",
    "run_scan",
    "DSPRITES_ATTRIBUTES",
]

OPERATORS = ("and", "in_common", "ignore")

#: dSprites words: factor -> (number of bins, words); bins are equal runs of consecutive classes.
DSPRITES_WORDS: dict[str, tuple[str, ...]] = {
    "shape": ("square", "ellipse", "heart"),
    "scale": ("small", "medium", "large"),
    "posX": ("left", "centre", "right"),
    "posY": ("top", "middle", "bottom"),  # posY class 0 is the top row of the image
    "orientation": ("turn0", "turn1", "turn2"),
}
DSPRITES_ATTRIBUTES = ("shape", "scale:3", "posX:3", "posY:3")


# --------------------------------------------------------------------------- vocabulary and concepts
@dataclass(frozen=True)
class Attribute:
    """A factor binned into words: class c has word ``bins[c]``."""

    factor: str
    position: int
    words: tuple[str, ...]
    bins: tuple[int, ...]


@dataclass
class Vocabulary:
    """Attributes of a full-grid dataset and their words (the symbol vector's entries)."""

    attributes: list[Attribute]
    factor_sizes: tuple[int, ...]
    offsets: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.offsets = list(np.cumsum([0] + [len(a.words) for a in self.attributes[:-1]]))

    @property
    def size(self) -> int:
        return sum(len(a.words) for a in self.attributes)

    @property
    def words(self) -> list[str]:
        return [w for a in self.attributes for w in a.words]

    @classmethod
    def from_spec(cls, dataset, spec=DSPRITES_ATTRIBUTES) -> Vocabulary:
        """``spec`` items are ``"factor"`` (one word per class) or ``"factor:bins"`` (equal runs).

        dSprites factors get their words (square, small, left, top, ...); others ``factor=i``.
        """
        if not dataset.is_grid:
            raise DataError(
                "SCAN draws images of a concept by factor arithmetic and needs a full-grid dataset (dsprites); "
                f"{dataset.name} is not one"
            )
        space = dataset.factor_space
        attrs = []
        for item in spec:
            name, _, nb = str(item).partition(":")
            if name not in space.names:
                raise ConfigError(
                    f"SCAN attribute '{name}' is not a factor of {dataset.name}; "
                    f"its factors are: {', '.join(space.names)}"
                )
            size = space.size(name)
            bins = size if not nb else int(nb)
            if not 2 <= bins <= size:
                raise ConfigError(f"SCAN attribute '{item}': bins must lie in 2..{size} (the factor's classes)")
            of_class = tuple(int(c * bins // size) for c in range(size))  # equal runs of consecutive classes
            known = DSPRITES_WORDS.get(name)
            words = (
                known
                if known is not None and len(known) == bins and dataset.name.startswith("dsprites")
                else tuple(f"{name}={b}" for b in range(bins))
            )
            attrs.append(Attribute(name, space.position(name), tuple(words), of_class))
        if len({a.factor for a in attrs}) != len(attrs):
            raise ConfigError("SCAN attributes name a factor twice; name each once")
        return cls(attrs, tuple(space.sizes))

    # ------------------------------------------------------------------ concepts
    def all_concepts(self) -> np.ndarray:
        """Every concept: ``(C, A)`` int, -1 = open, else the word's bin; the empty concept excluded."""
        choices = [range(-1, len(a.words)) for a in self.attributes]
        out = np.array([c for c in product(*choices) if any(v >= 0 for v in c)], dtype=np.int64)
        return out  # (C, A)

    def symbols(self, concepts: np.ndarray) -> torch.Tensor:
        """k-hot symbols ``(n, V)`` float32 of concepts ``(n, A)``."""
        concepts = np.asarray(concepts, dtype=np.int64).reshape(-1, len(self.attributes))
        y = np.zeros((concepts.shape[0], self.size), dtype=np.float32)
        for a, off in enumerate(self.offsets):
            on = concepts[:, a] >= 0
            y[np.flatnonzero(on), off + concepts[on, a]] = 1.0
        return torch.from_numpy(y)

    def describe(self, concept) -> str:
        """``{small, heart}`` style name of a concept."""
        words = [a.words[int(v)] for a, v in zip(self.attributes, concept, strict=True) if v >= 0]
        return "{" + ", ".join(words) + "}"

    def attribute_classes(self, factors: np.ndarray) -> np.ndarray:
        """Word bins ``(n, A)`` of factor classes ``(n, K)``."""
        factors = np.asarray(factors, dtype=np.int64)
        return np.stack([np.asarray(a.bins)[factors[:, a.position]] for a in self.attributes], axis=1)

    def sample_factors(self, concepts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One factor tuple ``(n, K)`` per concept: named attributes' classes uniform within the
        word's bin, everything else uniform over its classes."""
        concepts = np.asarray(concepts, dtype=np.int64)
        sizes = np.asarray(self.factor_sizes)
        f = rng.integers(0, sizes, size=(concepts.shape[0], sizes.size))  # (n, K)
        for a, attr in enumerate(self.attributes):
            on = np.flatnonzero(concepts[:, a] >= 0)
            if on.size == 0:
                continue
            bins = np.asarray(attr.bins)
            starts = np.searchsorted(bins, np.arange(len(attr.words)))  # first class of each bin
            counts = np.bincount(bins, minlength=len(attr.words))  # classes per bin
            w = concepts[on, a]
            f[on, attr.position] = starts[w] + rng.integers(0, counts[w])
        return f


def combine_concepts(c1: np.ndarray, c2: np.ndarray, op: str) -> np.ndarray:
    """The recombined concept (lecture): AND = union of orthogonal concepts, IN COMMON = the
    attributes both name with the same word, IGNORE = c1 without the attributes c2 names."""
    c1, c2 = np.asarray(c1), np.asarray(c2)
    if op == "and":
        if np.any((c1 >= 0) & (c2 >= 0)):
            raise ConfigError("AND joins orthogonal concepts (no attribute named by both)")
        return np.where(c1 >= 0, c1, c2)
    if op == "in_common":
        return np.where((c1 >= 0) & (c1 == c2), c1, -1)
    if op == "ignore":
        return np.where(c2 >= 0, -1, c1)
    raise ConfigError(f"unknown operator '{op}'; use one of {', '.join(OPERATORS)}")


# --------------------------------------------------------------------------- pure tensor functions
def kl_diag_gaussians(
    mu_p: torch.Tensor, logvar_p: torch.Tensor, mu_q: torch.Tensor, logvar_q: torch.Tensor
) -> torch.Tensor:
    """``KL(N(mu_p, diag e^logvar_p) || N(mu_q, diag e^logvar_q))`` per sample ``(B,)``, summed over dims::

        0.5 * sum_k [ logvar_q - logvar_p + (e^logvar_p + (mu_p - mu_q)^2) / e^logvar_q - 1 ]

    SCAN's grounding term is ``kl_diag_gaussians(q(z_x|x), q(z_y|y))`` (the forward KL).
    """
    return 0.5 * (logvar_q - logvar_p + (torch.exp(logvar_p) + (mu_p - mu_q) ** 2) * torch.exp(-logvar_q) - 1.0).sum(-1)


def reference_operator(
    mu1, logvar1, mu2, logvar2, op: str, threshold: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """The closed-form recombination of two diagonal Gaussians, component by component.

    A component is *specific* when its variance is below ``threshold`` (a concept names it);
    otherwise it is *open* and the result there is the prior N(0, 1)::

        AND:        the specific one of the two (c1's if both are)
        IN COMMON:  c1's where both are specific, else N(0, 1)
        IGNORE:     N(0, 1) where c2 is specific, else c1's

    Returns ``(mu, logvar)`` of the shapes of the inputs.
    """
    s1, s2 = logvar1 < math.log(threshold), logvar2 < math.log(threshold)
    zero, prior = torch.zeros_like(mu1), torch.zeros_like(logvar1)
    if op == "and":
        take2 = s2 & ~s1
        return torch.where(take2, mu2, mu1), torch.where(take2, logvar2, logvar1)
    if op == "in_common":
        both = s1 & s2
        return torch.where(both, mu1, zero), torch.where(both, logvar1, prior)
    if op == "ignore":
        return torch.where(s2, zero, mu1), torch.where(s2, prior, logvar1)
    raise ConfigError(f"unknown operator '{op}'; use one of {', '.join(OPERATORS)}")


# --------------------------------------------------------------------------- modules
def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, n_out)
    )


class SCAN(nn.Module):
    """The symbol VAE: ``q(z_y|y)`` and ``p(y|z_y)``, MLPs of ``hidden`` units, latent ``latent_dim``."""

    def __init__(self, vocab_size: int, latent_dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = _mlp(vocab_size, hidden, 2 * latent_dim)
        self.decoder = _mlp(latent_dim, hidden, vocab_size)

    def encode(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``y (B, V)`` -> ``mu, logvar (B, K)``."""
        mu, logvar = self.encoder(y).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``z (B, K)`` -> word logits ``(B, V)``."""
        return self.decoder(z)

    def loss(self, y, mu_x, logvar_x, beta: float, lam: float, generator=None) -> dict[str, torch.Tensor]:
        """The lecture's L_y (negated, to minimise), batch means of each term and ``total``."""
        mu, logvar = self.encode(y)  # (B, K)
        z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=generator, device=mu.device)  # (B, K)
        recon = F.binary_cross_entropy_with_logits(self.decode(z), y, reduction="none").sum(1).mean()
        prior = kl_diag_gaussians(mu, logvar, torch.zeros_like(mu), torch.zeros_like(logvar)).mean()
        ground = kl_diag_gaussians(mu_x, logvar_x, mu, logvar).mean()
        return {"recon": recon, "kl": prior, "ground": ground, "total": recon + beta * prior + lam * ground}


class Recombinator(nn.Module):
    """psi: ``(mu1, logvar1, mu2, logvar2)`` of every latent k -> ``(mu_r, logvar_r)``, one small MLP per
    operator (the one-hot ``r`` selects it), shared across k (a width-1 convolution over the latents)."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.nets = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 2)
                )
                for _ in OPERATORS
            ]
        )

    def forward(self, mu1, logvar1, mu2, logvar2, op: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs ``(B, K)`` each, ``op (B,)`` operator indices -> ``mu, logvar (B, K)``."""
        x = torch.stack([mu1, logvar1, mu2, logvar2], dim=-1)  # (B, K, 4)
        out = torch.zeros(*x.shape[:-1], 2, device=x.device, dtype=x.dtype)  # (B, K, 2)
        for r, net in enumerate(self.nets):
            rows = torch.nonzero(op == r).squeeze(1)
            if rows.numel():
                out[rows] = net(x[rows])  # (b, K, 2)
        return out[..., 0], out[..., 1]


class AttributeClassifier(nn.Module):
    """An MLP over pixels with one softmax head per attribute (reads sym2img samples)."""

    def __init__(self, n_pixels: int, sizes: list[int], hidden: int = 256) -> None:
        super().__init__()
        self.sizes = list(sizes)
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(n_pixels, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, sum(sizes)),
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.split(self.net(x), self.sizes, dim=1))  # [(B, n_words_a)]

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> np.ndarray:
        """Word bins ``(B, A)``."""
        return torch.stack([lg.argmax(1) for lg in self(x)], dim=1).cpu().numpy()


# --------------------------------------------------------------------------- training
@dataclass
class ScanSetup:
    vocab: Vocabulary
    train_concepts: np.ndarray
    test_concepts: np.ndarray
    vision: Any  # the Prepared of the trained run
    device: torch.device


def _vision_posterior(setup: ScanSetup, factors: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """q(z_x|x) of the images with these factors, vision model in eval mode, no gradient."""
    prep = setup.vision
    x = prep.dataset.images(prep.dataset.index_of(factors))  # (B, C, H, W)
    with torch.no_grad():
        post = prep.model.encode(x)
    return post.mu, post.logvar


def split_concepts(vocab: Vocabulary, holdout: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Train and held-out concepts: ``holdout`` of those naming >= 2 attributes are held out."""
    allc = vocab.all_concepts()  # (C, A)
    k = (allc >= 0).sum(1)
    multi = np.flatnonzero(k >= 2)
    n_test = int(round(holdout * multi.size))
    test = np.sort(rng.choice(multi, size=n_test, replace=False))
    mask = np.ones(len(allc), dtype=bool)
    mask[test] = False
    return allc[mask], allc[test]


def train_scan(
    setup: ScanSetup,
    steps: int,
    batch_size: int,
    lr: float,
    beta: float,
    lam: float,
    seed: int,
    hidden: int = 128,
    progress: bool = False,
) -> tuple[SCAN, list[dict]]:
    """Train SCAN on the training concepts (one fresh image of each concept per batch row)."""
    rng = np.random.default_rng([seed, 21])
    gen = torch.Generator(device=setup.device).manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        scan = SCAN(setup.vocab.size, setup.vision.model.latent_dim, hidden).to(setup.device)
    opt = torch.optim.Adam(scan.parameters(), lr=lr)
    log = []
    sums: dict[str, float] = {}
    for step in _steps(steps, progress, "SCAN"):
        concepts = setup.train_concepts[rng.integers(0, len(setup.train_concepts), size=batch_size)]  # (B, A)
        mu_x, logvar_x = _vision_posterior(setup, setup.vocab.sample_factors(concepts, rng))
        terms = scan.loss(setup.vocab.symbols(concepts).to(setup.device), mu_x, logvar_x, beta, lam, gen)
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        opt.step()
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        if (step + 1) % 250 == 0 or step + 1 == steps:
            n = 250 if (step + 1) % 250 == 0 else (step + 1) % 250
            log.append({"step": step + 1, **{k: round(v / n, 5) for k, v in sums.items()}})
            sums = {}
    return scan.eval(), log


def _operator_batch(vocab: Vocabulary, train: np.ndarray, rng: np.random.Generator, batch: int):
    """Random (c1, c2, op, result) with c1, c2 training concepts fitting the operator's rule."""
    c1s, c2s, ops, res = [], [], [], []
    named = train >= 0  # (C, A)
    while len(ops) < batch:
        op = int(rng.integers(0, 3))
        c1 = train[rng.integers(0, len(train))]
        if op == 0:  # AND: orthogonal
            ok = np.flatnonzero(~(named & (c1 >= 0)).any(1))
        elif op == 1:  # IN COMMON: share at least one word
            ok = np.flatnonzero(((train == c1) & named).any(1))
        else:  # IGNORE: c2 names some of c1's attributes with c1's words, and not all of them
            sub = ((train == c1) | ~named).all(1) & named.any(1)
            ok = np.flatnonzero(sub & (named.sum(1) < (c1 >= 0).sum()))
        if ok.size == 0:
            continue
        c2 = train[ok[rng.integers(0, ok.size)]]
        r = combine_concepts(c1, c2, OPERATORS[op])
        if not (r >= 0).any():
            continue
        c1s.append(c1), c2s.append(c2), ops.append(op), res.append(r)
    return np.array(c1s), np.array(c2s), np.array(ops), np.array(res)


def train_operators(
    setup: ScanSetup, scan: SCAN, steps: int, batch_size: int, lr: float, seed: int, progress: bool = False
) -> tuple[Recombinator, list[dict]]:
    """Train psi with SCAN frozen: L_r = KL(q(z_x|x) || psi(q(z_y1|y1), q(z_y2|y2), r))."""
    rng = np.random.default_rng([seed, 22])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        psi = Recombinator().to(setup.device)
    opt = torch.optim.Adam(psi.parameters(), lr=lr)
    log, acc = [], 0.0
    for step in _steps(steps, progress, "operators"):
        c1, c2, op, res = _operator_batch(setup.vocab, setup.train_concepts, rng, batch_size)
        with torch.no_grad():
            m1, l1 = scan.encode(setup.vocab.symbols(c1).to(setup.device))
            m2, l2 = scan.encode(setup.vocab.symbols(c2).to(setup.device))
        mu_r, logvar_r = psi(m1, l1, m2, l2, torch.as_tensor(op, device=setup.device))
        mu_x, logvar_x = _vision_posterior(setup, setup.vocab.sample_factors(res, rng))
        loss = kl_diag_gaussians(mu_x, logvar_x, mu_r, logvar_r).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        acc += float(loss.detach())
        if (step + 1) % 250 == 0 or step + 1 == steps:
            n = 250 if (step + 1) % 250 == 0 else (step + 1) % 250
            log.append({"step": step + 1, "kl": round(acc / n, 5)})
            acc = 0.0
    return psi.eval(), log


def train_classifier(
    setup: ScanSetup, steps: int, seed: int, progress: bool = False
) -> tuple[AttributeClassifier, float]:
    """The attribute reader for the scores; returns it and its accuracy on 5,000 fresh images."""
    rng = np.random.default_rng([seed, 23])
    ds = setup.vision.dataset
    sizes = [len(a.words) for a in setup.vocab.attributes]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 2)
        clf = AttributeClassifier(int(np.prod(ds.image_shape)), sizes).to(setup.device)
    opt = torch.optim.Adam(clf.parameters(), lr=1e-3)
    for _ in _steps(steps, progress, "classifier"):
        idx = rng.integers(0, len(ds), size=128)
        target = torch.as_tensor(setup.vocab.attribute_classes(ds.factors_of(idx)), device=setup.device)  # (B, A)
        loss = sum(F.cross_entropy(lg, target[:, a]) for a, lg in enumerate(clf(ds.images(idx))))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    clf.eval()
    idx = rng.integers(0, len(ds), size=5000)
    pred = clf.predict(ds.images(idx))
    return clf, float((pred == setup.vocab.attribute_classes(ds.factors_of(idx))).mean())


def _steps(n: int, progress: bool, desc: str):
    if not progress:
        return range(n)
    from .progress import progress_bar  # plain lines when stderr is not a terminal

    return progress_bar(range(n), desc=desc, unit="step")


# --------------------------------------------------------------------------- scores
@torch.no_grad()
def sym2img(
    setup: ScanSetup, mu: torch.Tensor, logvar: torch.Tensor, samples: int, generator: torch.Generator
) -> torch.Tensor:
    """Images ``(n, samples, C, H, W)`` decoded by the VAE from ``z ~ N(mu, e^logvar)`` per concept."""
    n, k = mu.shape
    z = mu[:, None] + torch.exp(0.5 * logvar)[:, None] * torch.randn(
        (n, samples, k), generator=generator, device=mu.device
    )  # (n, S, K)
    model = setup.vision.model
    imgs = model.mean_image(model.decode(z.reshape(n * samples, k))).clamp(0, 1)  # (n S, C, H, W)
    return imgs.view(n, samples, *imgs.shape[1:])


def accuracy_diversity(vocab: Vocabulary, concepts: np.ndarray, predicted: np.ndarray) -> dict:
    """Accuracy and diversity of sym2img samples read by the classifier.

    Args:
        concepts: ``(n, A)`` the concepts (-1 = open attribute).
        predicted: ``(n, S, A)`` the classifier's word bins of each concept's S samples.

    Returns:
        ``accuracy``: mean over concepts of the share of named attributes shown (over samples);
        ``diversity``: mean over (concept, open attribute) of ``KL(u || uniform)`` in nats, u
        the histogram of the open attribute's words over the samples (NaN if no attribute is open).
    """
    concepts = np.asarray(concepts)
    named = concepts >= 0  # (n, A)
    hit = predicted == concepts[:, None, :]  # (n, S, A)
    per_concept = (hit & named[:, None, :]).sum((1, 2)) / (named.sum(1) * predicted.shape[1])  # (n,)
    kls = []
    for a, attr in enumerate(vocab.attributes):
        w = len(attr.words)
        for i in np.flatnonzero(~named[:, a]):
            u = np.bincount(predicted[i, :, a], minlength=w) / predicted.shape[1]  # (w,)
            nz = u > 0
            kls.append(float((u[nz] * np.log(u[nz] * w)).sum()))
    return {
        "accuracy": float(per_concept.mean()),
        "diversity": float(np.mean(kls)) if kls else float("nan"),
        "concepts": int(len(concepts)),
        "open_attributes": len(kls),
    }


def _and_splits(concept: np.ndarray, train_set: set, rng: np.random.Generator):
    """Two training concepts whose AND is ``concept`` (None if no split is trained)."""
    named = np.flatnonzero(concept >= 0)
    masks = list(range(1, 2**named.size - 1))
    rng.shuffle(masks)
    for m in masks:
        a = np.full_like(concept, -1)
        b = np.full_like(concept, -1)
        for j, attr in enumerate(named):
            (a if (m >> j) & 1 else b)[attr] = concept[attr]
        if tuple(a) in train_set and tuple(b) in train_set:
            return a, b
    return None


def scan_scores(
    setup: ScanSetup,
    scan: SCAN,
    psi: Recombinator,
    clf: AttributeClassifier,
    seed: int,
    samples: int = 64,
    img2sym_images: int = 5000,
) -> dict:
    """Accuracy and diversity (train symbols, test symbols, test operators), img2sym accuracy."""
    rng = np.random.default_rng([seed, 24])
    gen = torch.Generator(device=setup.device).manual_seed(seed + 24)
    vocab = setup.vocab

    def read(mu, logvar) -> np.ndarray:
        imgs = sym2img(setup, mu, logvar, samples, gen)  # (n, S, C, H, W)
        return clf.predict(imgs.flatten(0, 1)).reshape(mu.shape[0], samples, -1)  # (n, S, A)

    out: dict[str, Any] = {}
    with torch.no_grad():
        for name, concepts in (("train_symbols", setup.train_concepts), ("test_symbols", setup.test_concepts)):
            mu, logvar = scan.encode(vocab.symbols(concepts).to(setup.device))
            out[name] = accuracy_diversity(vocab, concepts, read(mu, logvar))
        train_set = {tuple(c) for c in setup.train_concepts}
        pairs = [(c, _and_splits(c, train_set, rng)) for c in setup.test_concepts]
        pairs = [(c, ab) for c, ab in pairs if ab is not None]
        if pairs:
            concepts = np.stack([c for c, _ in pairs])
            a = np.stack([ab[0] for _, ab in pairs])
            b = np.stack([ab[1] for _, ab in pairs])
            m1, l1 = scan.encode(vocab.symbols(a).to(setup.device))
            m2, l2 = scan.encode(vocab.symbols(b).to(setup.device))
            op = torch.zeros(len(pairs), dtype=torch.long, device=setup.device)
            out["test_operators"] = accuracy_diversity(vocab, concepts, read(*psi(m1, l1, m2, l2, op)))
            out["test_operators_reference"] = accuracy_diversity(
                vocab, concepts, read(*reference_operator(m1, l1, m2, l2, "and"))
            )
        # img2sym: the words SCAN's decoder gives the VAE's code of random images.
        ds = setup.vision.dataset
        idx = rng.integers(0, len(ds), size=img2sym_images)
        mu_x = setup.vision.model.encode(ds.images(idx)).mu
        logits = scan.decode(mu_x)  # (n, V)
        pred = np.stack(
            [
                logits[:, off : off + len(at.words)].argmax(1).cpu().numpy()
                for at, off in zip(vocab.attributes, vocab.offsets, strict=True)
            ],
            axis=1,
        )  # (n, A)
        truth = vocab.attribute_classes(ds.factors_of(idx))
        out["img2sym"] = {
            "accuracy": float((pred == truth).mean()),
            "per_attribute": {
                at.factor: float((pred[:, a] == truth[:, a]).mean()) for a, at in enumerate(vocab.attributes)
            },
            "images": int(img2sym_images),
        }
        # Specificity (lecture: "inferred specificity of concept latents"): mean posterior std of z_y
        # on latents, for 1-word concepts, to see which latents a word narrows.
        single = vocab.all_concepts()
        single = single[(single >= 0).sum(1) == 1]
        _, lv = scan.encode(vocab.symbols(single).to(setup.device))
        out["word_latent_std"] = {
            vocab.describe(c): torch.exp(0.5 * lv[i]).cpu().numpy().round(3).tolist() for i, c in enumerate(single)
        }
    return out


# --------------------------------------------------------------------------- figures
def write_scan_figures(setup: ScanSetup, scan: SCAN, psi: Recombinator, out_dir: Path, seed: int) -> list[Path]:
    """``sym2img.png`` (samples of training and held-out concepts), ``operators.png``, ``img2sym.png``."""
    from .viz import diagnostics as dg
    from .viz.pairs import save_figure

    vocab = setup.vocab
    rng = np.random.default_rng([seed, 25])
    gen = torch.Generator(device=setup.device).manual_seed(seed + 25)
    written = []
    with torch.no_grad():
        pick = np.concatenate(
            [
                setup.train_concepts[rng.choice(len(setup.train_concepts), 5, replace=False)],
                setup.test_concepts[
                    rng.choice(len(setup.test_concepts), min(4, len(setup.test_concepts)), replace=False)
                ],
            ]
        )
        mu, lv = scan.encode(vocab.symbols(pick).to(setup.device))
        imgs = sym2img(setup, mu, lv, 8, gen).cpu()
        test = {tuple(c) for c in setup.test_concepts}
        labels = [vocab.describe(c) + (" (held out)" if tuple(c) in test else "") for c in pick]
        written.append(
            save_figure(
                dg.plot_image_rows(imgs, labels, title="sym2img: 8 samples per concept"), out_dir / "sym2img.png"
            )
        )
        c1, c2, op, res = _operator_batch(vocab, setup.train_concepts, rng, 6)
        m1, l1 = scan.encode(vocab.symbols(c1).to(setup.device))
        m2, l2 = scan.encode(vocab.symbols(c2).to(setup.device))
        mu_r, lv_r = psi(m1, l1, m2, l2, torch.as_tensor(op, device=setup.device))
        imgs = sym2img(setup, mu_r, lv_r, 8, gen).cpu()
        labels = [
            f"{vocab.describe(a)} {OPERATORS[o].upper().replace('_', ' ')} {vocab.describe(b)} = {vocab.describe(r)}"
            for a, b, o, r in zip(c1, c2, op, res, strict=True)
        ]
        written.append(
            save_figure(
                dg.plot_image_rows(imgs, labels, title="recombination operators (learned psi): 8 samples each"),
                out_dir / "operators.png",
            )
        )
        ds = setup.vision.dataset
        idx = rng.integers(0, len(ds), size=8)
        x = ds.images(idx)
        logits = scan.decode(setup.vision.model.encode(x).mu)
        words = [
            ", ".join(
                at.words[int(logits[i, off : off + len(at.words)].argmax())]
                for at, off in zip(vocab.attributes, vocab.offsets, strict=True)
            )
            for i in range(8)
        ]
        fig = dg.plot_image_rows(
            x.cpu()[None], ["images"], title="img2sym: " + " | ".join(f"{i}: {w}" for i, w in enumerate(words))
        )
        written.append(save_figure(fig, out_dir / "img2sym.png"))
    return written


# --------------------------------------------------------------------------- the command
def run_scan(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    attributes=None,
    steps: int = 5000,
    operator_steps: int = 3000,
    classifier_steps: int = 1500,
    batch_size: int = 128,
    lr: float = 1e-3,
    beta: float = 1.0,
    lam: float = 10.0,
    holdout: float = 0.2,
    seed: int = 0,
    samples: int = 64,
    progress: bool = False,
    figures: bool = True,
    dataset=None,
) -> dict:
    """Train SCAN (and its operators) on a trained VAE run, score it, write ``OUT/scan.json``.

    Args:
        run_dir: a finished (or checkpointed) training run of a VAE-family model.
        out_dir: where to write ``scan.json``, ``scan.safetensors`` and figures (default
            ``RUN/scan``); an existing ``scan.json`` there is refused (choose another directory).
        attributes: ``["shape", "scale:3", ...]`` (factor or factor:bins); default the dSprites set.
        steps, operator_steps, classifier_steps: training steps of SCAN, psi and the reader.
        beta, lam: SCAN's prior and grounding weights. holdout: share of multi-word concepts held out.
        seed: every random choice (concept split, batches, initialisations, scores).
        dataset: the run's dataset already built (saves rebuilding it; must match its data config).

    Returns:
        the JSON document written to ``scan.json``.
    """
    from safetensors.torch import save_file

    from .evaluation import to_jsonable, write_json
    from .run import load_trained

    for name, v in (
        ("steps", steps),
        ("operator_steps", operator_steps),
        ("classifier_steps", classifier_steps),
        ("batch_size", batch_size),
        ("samples", samples),
    ):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{name} must be a positive integer, got {v!r}")
    if not 0.0 < holdout < 1.0:
        raise ConfigError(f"holdout must lie in (0, 1), got {holdout}")
    if not (math.isfinite(beta) and math.isfinite(lam) and math.isfinite(lr)) or beta < 0 or lam < 0 or lr <= 0:
        raise ConfigError(
            f"beta and lambda must be finite and non-negative and lr positive; got beta={beta}, lambda={lam}, lr={lr}"
        )
    run = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run / "scan"
    if (out / "scan.json").exists():
        raise GatedVAEError(f"'{out}' already holds a SCAN result (scan.json); choose another --out")
    t0 = time.perf_counter()
    prep, step, _ = load_trained(run, progress=progress, dataset=dataset)
    if not getattr(prep.model, "reconstructs", True) or prep.model.covariance != "diagonal":
        kind = "a GAN" if not getattr(prep.model, "reconstructs", True) else "a full-covariance model"
        raise ConfigError(f"SCAN grounds symbols in a VAE's diagonal posterior; {prep.config.model.name} is {kind}")
    if prep.cond_dim:
        raise ConfigError("SCAN needs an unconditional VAE; this run's decoder takes labels (model.condition)")
    vocab = Vocabulary.from_spec(prep.dataset, attributes or DSPRITES_ATTRIBUTES)
    train_c, test_c = split_concepts(vocab, holdout, np.random.default_rng([seed, 20]))
    prep.model.eval().requires_grad_(False)
    setup = ScanSetup(vocab, train_c, test_c, prep, prep.device)
    scan, log = train_scan(setup, steps, batch_size, lr, beta, lam, seed, progress=progress)
    psi, op_log = train_operators(setup, scan, operator_steps, batch_size, lr, seed, progress=progress)
    clf, clf_acc = train_classifier(setup, classifier_steps, seed, progress=progress)
    scores = scan_scores(setup, scan, psi, clf, seed, samples=samples)
    doc = {
        "format": "gatedvae-scan-1",
        "run": str(run),
        "checkpoint_step": int(step),
        "vision_model": prep.model.describe(),
        "gated": prep.partitions is not None,
        "vocabulary": {a.factor: list(a.words) for a in vocab.attributes},
        "concepts": {"train": int(len(train_c)), "test": int(len(test_c))},
        "test_concepts": [vocab.describe(c) for c in test_c],
        "params": {
            "steps": steps,
            "operator_steps": operator_steps,
            "classifier_steps": classifier_steps,
            "batch_size": batch_size,
            "lr": lr,
            "beta": beta,
            "lambda": lam,
            "holdout": holdout,
            "seed": seed,
            "samples": samples,
        },
        "classifier_accuracy": clf_acc,
        "notes": (
            [
                "gated run without decoder fine-tuning (train.finetune_steps=0): "
                "a gated decoder learns to predict targets that share only the active partition's factors, "
                "so sym2img samples are blurred averages; fine-tune the decoder (train.finetune_steps) for sym2img"
            ]
            if prep.partitions is not None and prep.config.train.finetune_steps == 0
            else []
        ),
        "scores": scores,
        "training": {"scan": log, "operators": op_log},
    }
    out.mkdir(parents=True, exist_ok=True)
    tensors = {f"scan/{k}": v.detach().cpu().contiguous() for k, v in scan.state_dict().items()}
    tensors.update({f"psi/{k}": v.detach().cpu().contiguous() for k, v in psi.state_dict().items()})
    tensors.update({f"classifier/{k}": v.detach().cpu().contiguous() for k, v in clf.state_dict().items()})
    tmp = out / ".scan.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "gatedvae-scan-1", "vocabulary": json.dumps(doc["vocabulary"])})
    os.replace(tmp, out / "scan.safetensors")
    if figures:
        doc["figures"] = [str(p.relative_to(out)) for p in write_scan_figures(setup, scan, psi, out, seed)]
    doc["seconds"] = round(time.perf_counter() - t0, 1)
    doc = to_jsonable(doc)
    write_json(out / "scan.json", doc)
    return doc


def format_scan(doc: dict) -> str:
    """A few lines: the lecture's accuracy / diversity table for this run."""
    s = doc["scores"]
    lines = [
        f"SCAN on {doc['run']} ({doc['vision_model']}); attribute reader accuracy {doc['classifier_accuracy']:.3f}",
        f"  {'':<26} {'accuracy':>9} {'diversity':>10}",
    ]
    for key in ("train_symbols", "test_symbols", "test_operators", "test_operators_reference"):
        if key in s:
            lines.append(
                f"  {key:<26} {s[key]['accuracy']:>9.3f} "
                f"{s[key]['diversity'] if s[key]['diversity'] is not None else float('nan'):>10.3f}"
            )
    lines.append(
        f"  img2sym accuracy {s['img2sym']['accuracy']:.3f} "
        f"({', '.join(f'{k} {v:.2f}' for k, v in s['img2sym']['per_attribute'].items())})"
    )
    lines.extend(f"  note: {n}" for n in doc.get("notes", []))
    return "\n".join(lines)
