"""InfoGAN (Chen et al. 2016) and InfoWGAN-GP (Kim and Mnih 2018), from the lecture
``002_b6b404b9b5e7b646.txt`` (the InfoGAN slides; the FactorVAE slides for InfoWGAN-GP).

The generator G(z, c) takes incompressible noise ``z ~ N(0, I)`` (``model.noise_dim``) and the
latent code ``c``; the discriminator D has a shared trunk with two heads, the adversarial output
and the auxiliary head Q(c|x). The game (lecture: "min_{G,Q} max_D V(D, G) - lambda L_I(G, Q)")::

    L_I(G, Q) = E_{c ~ P(c), x ~ G(z, c)}[log Q(c|x)] + H(c)         (<= I(c; G(z, c)))
              = H(c) - CE,   CE = E[-log Q(c|x)]                      the code cross-entropy

    generator (main optimiser):    L_G = adv_G(D(G(z, c))) + lambda * (CE - H(c))
    discriminator + Q (auxiliary): L_D = adv_D(D(x), D(G(z, c))) + lambda * CE

H(c) is a constant (the code distribution is fixed), so ``lambda * (CE - H(c)) = -lambda L_I``
has the gradient of ``lambda * CE``; it is logged as the term ``info`` and the D step logs
``l_i`` = L_I in nats (at most H(c) for categorical codes: the lecture's MNIST run reaches
H(c) = log 10 = 2.30 quickly).

Codes (``model.latent_dim`` = continuous + sum of categorical sizes), in this order:

* continuous ``c_j ~ Unif(-1, 1)`` (the lecture's MNIST and face settings), H = log 2 each;
  Q is a factorised Gaussian N(mu_j, sigma_j^2) (Chen et al.), its log-variance bounded
  smoothly to (-6, 6) (``6 tanh(. / 6)``, ours) so that log Q cannot run to infinity;
* categorical ``c_k ~ Cat(K_k, 1/K_k)`` as one-hot blocks (``model.categorical``, e.g. [3]),
  H = log K_k each; Q is a softmax over each block.

The representation used by the metrics (``encode``) is Q's mean: the Gaussian means and the
categorical probabilities, ``(B, latent_dim)``. ``decode(c)`` is G at the noise prior's mode,
``G(0, c)``, so the generic traversal and reconstruction figures are code traversals.

Adversarial terms:

* ``infogan``: the non-saturating GAN, ``adv_G = softplus(-D(G))``,
  ``adv_D = softplus(-D(x)) + softplus(D(G))`` (binary cross-entropy on logits);
  Adam betas (0.5, 0.999), D learning rate 2e-4 (G uses ``train.lr``, 1e-3 in the config) and
  noise 62: the settings usually quoted for InfoGAN on MNIST (the lecture gives none).
  Defaults: lambda = 1 (the lecture's formula; Chen et al. use 1 for categorical codes), one
  categorical code of 3 (the number of dSprites shapes; our choice).
* ``infowgan_gp``: Wasserstein critic with gradient penalty (Gulrajani et al.), the variant
  Kim and Mnih compared on dSprites: ``adv_G = -D(G)``,
  ``adv_D = D(G) - D(x) + gp_weight * (||grad_xhat D(xhat)||_2 - 1)^2`` at random interpolates
  ``xhat``; gp_weight = 10; Adam betas (0.5, 0.9), critic lr 1e-4. lambda = 0.2 (the lecture:
  Kim and Mnih's best-scoring InfoWGAN-GP run on 2D Shapes).

One critic update per generator update (the trainer's step: G, then D on the same fakes,
detached). The critic trunk has no batch norm (it would break the per-sample gradient
penalty and make Q's codes depend on the batch); the generator keeps the network's own.

Not a reconstruction model: gating, DC-IGN clamping and decoder fine-tuning are refused
(``reconstructs = False``; the trainer checks before anything is written).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..nets import Conv64Decoder, MLPDecoder, Posterior
from .base import NON_NEGATIVE, GenerativeModel, Hyper, ImagePanel, LossOutput, register

__all__ = [
    "InfoGAN",
    "InfoWGANGP",
    "CodeSpace",
    "GANOutput",
    "code_cross_entropy",
    "info_lower_bound",
    "gradient_penalty",
    "LOGVAR_BOUND",
]

#: Q's continuous log-variances are ``LOGVAR_BOUND * tanh(raw / LOGVAR_BOUND)``.
LOGVAR_BOUND = 6.0


# --------------------------------------------------------------------------- codes and L_I
@dataclass(frozen=True)
class CodeSpace:
    """The latent code c: ``continuous`` Unif(-1, 1) dims, then one-hot ``categorical`` blocks."""

    continuous: int
    categorical: tuple[int, ...]

    @property
    def width(self) -> int:
        return self.continuous + sum(self.categorical)

    def entropy(self) -> float:
        """H(c) in nats: ``continuous * log 2 + sum_k log K_k`` (a constant)."""
        return self.continuous * math.log(2.0) + sum(math.log(k) for k in self.categorical)

    def sample(
        self, batch: int, generator: torch.Generator | None, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draw codes: ``(c (B, width), continuous values (B, n_cont), category indices (B, n_cat))``."""
        cont = torch.rand((batch, self.continuous), generator=generator, device=device) * 2.0 - 1.0  # (B, n_cont)
        idx = (
            torch.stack(
                [torch.randint(0, k, (batch,), generator=generator, device=device) for k in self.categorical], dim=1
            )
            if self.categorical
            else torch.zeros((batch, 0), dtype=torch.long, device=device)
        )  # (B, n_cat)
        return self.assemble(cont, idx), cont, idx

    def assemble(self, cont: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Code vectors ``(B, width)`` from continuous values and category indices."""
        blocks = [cont] + [F.one_hot(idx[:, i], k).to(cont.dtype) for i, k in enumerate(self.categorical)]
        return torch.cat(blocks, dim=1)  # (B, width)

    def split_logits(self, logits: torch.Tensor) -> list[torch.Tensor]:
        """``(B, sum K)`` -> one ``(B, K_k)`` block per categorical code."""
        return list(torch.split(logits, list(self.categorical), dim=1)) if self.categorical else []


def code_cross_entropy(
    cat_logits: list[torch.Tensor],
    cat_index: torch.Tensor,
    cont_mu: torch.Tensor,
    cont_logvar: torch.Tensor,
    cont_value: torch.Tensor,
) -> torch.Tensor:
    """``-log Q(c|x)`` per sample ``(B,)``, summed over the codes (lecture, InfoGAN L_I).

    Args:
        cat_logits: one ``(B, K_k)`` logit block per categorical code.
        cat_index: ``(B, n_cat)`` the drawn categories.
        cont_mu, cont_logvar: ``(B, n_cont)`` Q's Gaussian parameters.
        cont_value: ``(B, n_cont)`` the drawn continuous codes.

    Per code::

        categorical:  -log softmax(logits)[c_k]
        continuous:   0.5 * (log(2 pi) + logvar_j + (c_j - mu_j)^2 / exp(logvar_j))
    """
    ce = 0.5 * (
        math.log(2.0 * math.pi) + cont_logvar + (cont_value - cont_mu) ** 2 * torch.exp(-cont_logvar)
    )  # (B, n_cont)
    total = ce.sum(dim=1)  # (B,)
    for i, logits in enumerate(cat_logits):
        total = total + F.cross_entropy(logits, cat_index[:, i], reduction="none")  # (B,)
    return total


def info_lower_bound(cross_entropy: torch.Tensor, code_entropy: float) -> torch.Tensor:
    """``L_I = H(c) - CE`` per sample ``(B,)`` (lecture: the variational lower bound of I(c; G(z, c)))."""
    return code_entropy - cross_entropy


def gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """WGAN-GP penalty per sample ``(B,)``: ``(||d critic(xhat) / d xhat||_2 - 1)^2`` at
    ``xhat = eps real + (1 - eps) fake``, ``eps ~ U(0, 1)`` per sample (Gulrajani et al.).
    The graph is kept (``create_graph``) so the penalty trains the critic."""
    eps = torch.rand(
        (real.shape[0],) + (1,) * (real.ndim - 1), generator=generator, device=real.device, dtype=real.dtype
    )  # (B, 1, 1, 1)
    xhat = (eps * real + (1.0 - eps) * fake).requires_grad_(True)  # (B, C, H, W)
    out = critic(xhat)  # (B,)
    (grad,) = torch.autograd.grad(out.sum(), xhat, create_graph=True)  # (B, C, H, W)
    return (grad.flatten(1).norm(dim=1) - 1.0) ** 2  # (B,)


# --------------------------------------------------------------------------- networks
class _MLPTrunk(nn.Module):
    """``x (B, C, H, W)`` -> features ``(B, hidden)``: 2 FC layers with LeakyReLU(0.2), no batch norm."""

    def __init__(self, n_pixels: int, hidden: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(n_pixels, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(0.2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x.flatten(1))  # (B, hidden)


class _ConvTrunk(nn.Module):
    """``x (B, C, 64, 64)`` -> features ``(B, hidden)``: the conv64 encoder's layers with LeakyReLU(0.2)."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(channels, 32, 4, 2, 1),
            nn.LeakyReLU(0.2),  # (B, 32, 32, 32)
            nn.Conv2d(32, 32, 4, 2, 1),
            nn.LeakyReLU(0.2),  # (B, 32, 16, 16)
            nn.Conv2d(32, 64, 4, 2, 1),
            nn.LeakyReLU(0.2),  # (B, 64, 8, 8)
            nn.Conv2d(64, 64, 4, 2, 1),
            nn.LeakyReLU(0.2),  # (B, 64, 4, 4)
        )
        self.fc = nn.Sequential(nn.Linear(64 * 4 * 4, hidden), nn.LeakyReLU(0.2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).flatten(1))  # (B, hidden)


class Discriminator(nn.Module):
    """Shared trunk, adversarial head ``(B,)`` and Q head (continuous mu, logvar; categorical logits)."""

    def __init__(self, trunk: nn.Module, features: int, codes: CodeSpace) -> None:
        super().__init__()
        self.codes = codes
        self.trunk = trunk
        self.adv = nn.Linear(features, 1)
        self.q = nn.Linear(features, 2 * codes.continuous + sum(codes.categorical))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """``x`` -> ``(adv (B,), mu (B, n_cont), logvar (B, n_cont), [logits (B, K_k)])``."""
        h = self.trunk(x)  # (B, F)
        q = self.q(h)  # (B, 2 n_cont + sum K)
        n = self.codes.continuous
        mu, raw, logits = q[:, :n], q[:, n : 2 * n], q[:, 2 * n :]  # (B, n), (B, n), (B, sum K)
        logvar = LOGVAR_BOUND * torch.tanh(raw / LOGVAR_BOUND)  # (B, n_cont)
        return self.adv(h).squeeze(1), mu, logvar, self.codes.split_logits(logits)

    def critic(self, x: torch.Tensor) -> torch.Tensor:
        """The adversarial output alone ``(B,)``."""
        return self.adv(self.trunk(x)).squeeze(1)


@dataclass
class GANOutput(LossOutput):
    """The generator step's output plus what the discriminator step needs (all detached)."""

    real: torch.Tensor | None = None
    fake: torch.Tensor | None = None
    cont: torch.Tensor | None = None
    index: torch.Tensor | None = None


# --------------------------------------------------------------------------- the models
#: model.categorical's range check (InfoGAN's categorical codes)
CATEGORIES = (lambda ks: all(k >= 2 for k in ks), "every categorical code needs at least 2 categories")


@register(
    "infogan",
    "InfoGAN (Chen et al.): GAN + lambda * L_I(G, Q); Q's mean is the representation",
    info_lambda=Hyper(1.0, "weight of the mutual-information term L_I", check=NON_NEGATIVE),
    noise_dim=Hyper(62, "width of the incompressible noise z fed to the generator", check=NON_NEGATIVE),
    categorical=Hyper((3,), "sizes of the categorical codes (part of latent_dim)", tuple[int, ...], CATEGORIES),
)
class InfoGAN(GenerativeModel):
    """InfoGAN: a GAN whose discriminator's auxiliary head Q recovers the code c from G(z, c)."""

    reconstructs = False
    D_ADAM = {"lr": 2e-4, "betas": (0.5, 0.999)}
    G_BETAS = (0.5, 0.999)

    def make_networks(self) -> tuple[nn.Module, nn.Module]:
        cfg = self.cfg
        cats = tuple(int(k) for k in self.hyper["categorical"])
        n_cont = cfg.latent_dim - sum(cats)
        if n_cont < 0:
            raise ConfigError(
                f"model.categorical {list(cats)} needs {sum(cats)} code dims but model.latent_dim is {cfg.latent_dim}; "
                "latent_dim = continuous codes + the categorical sizes, so raise it"
            )
        self.codes = CodeSpace(n_cont, cats)
        self.noise_dim = int(self.hyper["noise_dim"])
        c, h, w = self.image_shape
        if cfg.net == "mlp":
            trunk: nn.Module = _MLPTrunk(c * h * w, cfg.hidden)
            generator: nn.Module = MLPDecoder(cfg.latent_dim + self.noise_dim, cfg.hidden, self.image_shape)
        elif cfg.net == "conv64":
            if (h, w) != (64, 64):
                raise ConfigError(f"model.net=conv64 needs 64x64 images, the data has {h}x{w}; use model.net=mlp")
            trunk = _ConvTrunk(c, cfg.hidden)
            generator = Conv64Decoder(cfg.latent_dim + self.noise_dim, cfg.hidden, c)
        else:
            raise ConfigError(f"unknown network '{cfg.net}'; use mlp or conv64")
        return Discriminator(trunk, cfg.hidden, self.codes), generator

    # ------------------------------------------------------------------ pieces
    @property
    def discriminator(self) -> Discriminator:
        return self.encoder  # type: ignore[return-value]

    @property
    def generator_net(self) -> nn.Module:
        return self.decoder

    def encode(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> Posterior:
        """Q(c|x) as a Posterior: mean ``(B, M)`` = [Gaussian means, categorical probabilities];
        log-variance = [Gaussian log-variances, log p(1 - p) (the one-hot entry's variance)]."""
        _, mu, logvar, logits = self.discriminator(x)
        probs = [torch.softmax(lg, dim=1) for lg in logits]  # [(B, K_k)]
        mean = torch.cat([mu, *probs], dim=1)  # (B, M)
        var_cat = [torch.log(p * (1 - p) + 1e-12) for p in probs]
        return Posterior(mean, torch.cat([logvar, *var_cat], dim=1))

    def generate(self, c: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """G(z, c): codes ``(B, M)`` and noise ``(B, noise_dim)`` -> logits ``(B, C, H, W)``."""
        return self.generator_net(torch.cat([c, noise], dim=1))

    def decode(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """G at the noise prior's mode: ``G(0, c)`` logits ``(B, C, H, W)``."""
        return self.generate(z, z.new_zeros((z.shape[0], self.noise_dim)))

    def sample_images(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` samples G(z, c) with z and c from their priors, images in [0, 1] ``(n, C, H, W)``."""
        dev = next(self.parameters()).device
        c, _, _ = self.codes.sample(n, generator, dev)
        noise = torch.randn((n, self.noise_dim), generator=generator, device=dev)  # (n, noise)
        return torch.sigmoid(self.generate(c, noise))

    # ------------------------------------------------------------------ adversarial terms
    def generator_adversarial(self, adv_fake: torch.Tensor) -> torch.Tensor:
        """Non-saturating generator loss, mean over the batch: ``softplus(-D(G))``."""
        return F.softplus(-adv_fake).mean()

    def discriminator_adversarial(self, adv_real, adv_fake, real, fake, generator) -> dict[str, torch.Tensor]:
        """Binary cross-entropy of D on real (label 1) and fake (label 0), each a batch mean."""
        return {"disc": F.softplus(-adv_real).mean() + F.softplus(adv_fake).mean()}

    # ------------------------------------------------------------------ objective
    def loss(
        self,
        x: torch.Tensor,
        target: torch.Tensor,
        step: int,
        generator: torch.Generator | None = None,
        cond: torch.Tensor | None = None,
        gate_mask: torch.Tensor | None = None,
        gate_regulariser: bool = False,
        clamp_mask: torch.Tensor | None = None,
        *,
        enc_cond: torch.Tensor | None = None,
        reference: torch.Tensor | None = None,
        reference_cond: torch.Tensor | None = None,
    ) -> GANOutput:
        """The generator's loss on one batch of fakes (as many as real images ``x``).

        Terms: ``gen`` (adversarial) and ``info`` (``-lambda L_I``); ``total`` = their sum.
        ``target`` is unused (a GAN reconstructs nothing); gating and clamping are refused, and
        ``enc_cond`` and the reference batch (clamp mode's) are unused.
        """
        if gate_mask is not None or clamp_mask is not None:
            raise ConfigError(
                f"{self.registered_name} is a GAN: it has no reconstruction to gate or clamp; set gating.enabled=false"
            )
        b = x.shape[0]
        c, cont, idx = self.codes.sample(b, generator, x.device)  # (B, M), (B, n_cont), (B, n_cat)
        noise = torch.randn((b, self.noise_dim), generator=generator, device=x.device, dtype=x.dtype)  # (B, noise)
        fake = torch.sigmoid(self.generate(c, noise))  # (B, C, H, W)
        # G's loss needs d/d(fake) only: D's weights take no gradient here (they train in auxiliary_step).
        self.discriminator.requires_grad_(False)
        try:
            adv, mu, logvar, logits = self.discriminator(fake)
        finally:
            self.discriminator.requires_grad_(True)
        lam = float(self.hyper["info_lambda"])
        ce = code_cross_entropy(logits, idx, mu, logvar, cont).mean()  # scalar
        terms = {"gen": self.generator_adversarial(adv), "info": lam * (ce - self.codes.entropy())}
        total = terms["gen"] + terms["info"]
        return GANOutput(total, terms, c, None, real=x.detach(), fake=fake.detach(), cont=cont, index=idx)

    def auxiliary_modules(self) -> dict[str, nn.Module]:
        return {"discriminator": self.discriminator}

    def auxiliary_optimizer_settings(self) -> dict[str, dict]:
        return {"discriminator": dict(self.D_ADAM)}

    def main_optimizer_settings(self) -> dict:
        return {"betas": self.G_BETAS}

    def auxiliary_step(self, out: LossOutput, optimizers, generator) -> dict[str, torch.Tensor]:
        """One update of D and Q on the step's real images and its (detached) fakes."""
        assert isinstance(out, GANOutput) and out.real is not None and out.fake is not None
        real, fake = out.real, out.fake
        b = real.shape[0]
        opt = optimizers["discriminator"]
        opt.zero_grad(set_to_none=True)
        adv, mu, logvar, logits = self.discriminator(torch.cat([real, fake]))  # one pass over (2B, ...)
        terms = self.discriminator_adversarial(adv[:b], adv[b:], real, fake, generator)
        ce = code_cross_entropy([lg[b:] for lg in logits], out.index, mu[b:], logvar[b:], out.cont).mean()  # scalar
        loss = torch.stack(list(terms.values())).sum() + float(self.hyper["info_lambda"]) * ce
        loss.backward()
        opt.step()
        logged = {k: v.detach() for k, v in terms.items()}
        logged["l_i"] = info_lower_bound(ce.detach(), self.codes.entropy())
        return logged

    # ------------------------------------------------------------------ figures
    @torch.no_grad()
    def code_traversal_images(
        self, n_bases: int = 3, steps: int = 9, span: float = 2.0, seed: int = 0
    ) -> tuple[torch.Tensor, list[str], list[str]]:
        """Code traversals ``(R, steps, C, H, W)`` with row labels and column labels.

        For each of ``n_bases`` random (z, c): one row per continuous code swept over
        [-span, span] (the lecture varies InfoGAN's codes from -2 to 2), one row per categorical
        code through its categories (blank cells after the last), everything else held.
        """
        was = self.training
        self.eval()
        dev = next(self.parameters()).device
        g = torch.Generator(device=dev).manual_seed(int(seed))
        values = torch.linspace(-span, span, steps, device=dev)  # (S,)
        rows, labels = [], []
        shape = self.image_shape
        for base in range(n_bases):
            c, cont, idx = self.codes.sample(1, g, dev)  # (1, M)
            noise = torch.randn((1, self.noise_dim), generator=g, device=dev)  # (1, noise)
            for j in range(self.codes.continuous):
                cc = cont.repeat(steps, 1)  # (S, n_cont)
                cc[:, j] = values
                imgs = torch.sigmoid(
                    self.generate(self.codes.assemble(cc, idx.repeat(steps, 1)), noise.repeat(steps, 1))
                )  # (S, C, H, W)
                rows.append(imgs)
                labels.append(f"#{base} c{j}")
            for i, k in enumerate(self.codes.categorical):
                ii = idx.repeat(k, 1)  # (K, n_cat)
                ii[:, i] = torch.arange(k, device=dev)
                imgs = torch.sigmoid(
                    self.generate(self.codes.assemble(cont.repeat(k, 1), ii), noise.repeat(k, 1))
                )  # (K, C, H, W)
                row = torch.full((steps, *shape), 0.5, device=dev)  # (S, C, H, W) grey padding
                row[: min(k, steps)] = imgs[:steps]
                rows.append(row)
                labels.append(f"#{base} cat{i}")
        self.train(was)
        cols = [f"{v:+.1f}" for v in values.tolist()]
        return torch.stack(rows).cpu(), labels, cols

    def figure_panels(self, rng) -> list[ImagePanel]:
        """``samples`` (64 samples G(z, c), an 8 x 8 grid) and ``code_traversals`` (see
        :meth:`code_traversal_images`), both from one seed drawn from ``rng``."""
        seed = int(rng.integers(0, 2**31 - 1))
        was = self.training
        self.eval()
        dev = next(self.parameters()).device
        with torch.no_grad():
            imgs = self.sample_images(64, torch.Generator(device=dev).manual_seed(seed)).cpu()  # (64, C, H, W)
        self.train(was)
        trav, labels, cols = self.code_traversal_images(seed=seed)  # (R, S, C, H, W)
        return [
            ImagePanel(
                "samples", imgs, f"{self.registered_name}: samples G(z, c), z and c from their priors", grid_rows=8
            ),
            ImagePanel(
                "code_traversals",
                trav,
                "code traversals: continuous codes from -2 to 2, categorical codes by category",
                row_labels=tuple(labels),
                col_labels=tuple(cols),
            ),
        ]


@register(
    "infowgan_gp",
    "InfoWGAN-GP (Kim and Mnih): Wasserstein critic with gradient penalty + lambda * L_I",
    info_lambda=Hyper(0.2, "weight of the mutual-information term L_I", check=NON_NEGATIVE),
    noise_dim=Hyper(62, "width of the incompressible noise z fed to the generator", check=NON_NEGATIVE),
    categorical=Hyper((3,), "sizes of the categorical codes (part of latent_dim)", tuple[int, ...], CATEGORIES),
    gp_weight=Hyper(10.0, "weight of the critic's gradient penalty", check=NON_NEGATIVE),
)
class InfoWGANGP(InfoGAN):
    """InfoWGAN-GP: InfoGAN with a Wasserstein critic and a gradient penalty."""

    D_ADAM = {"lr": 1e-4, "betas": (0.5, 0.9)}
    G_BETAS = (0.5, 0.9)

    def generator_adversarial(self, adv_fake: torch.Tensor) -> torch.Tensor:
        """``-D(G)``, mean over the batch."""
        return -adv_fake.mean()

    def discriminator_adversarial(self, adv_real, adv_fake, real, fake, generator) -> dict[str, torch.Tensor]:
        """``D(G) - D(x)`` (the negated Wasserstein estimate) and ``gp_weight * penalty``, batch means."""
        gp = gradient_penalty(self.discriminator.critic, real, fake, generator).mean()
        return {"disc": adv_fake.mean() - adv_real.mean(), "gp": float(self.hyper["gp_weight"]) * gp}
