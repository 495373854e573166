"""The baselines of the BetaVAE-metric table (lecture ``002_b6b404b9b5e7b646.txt``, beta-VAE slides):
representations that need no training loop of ours.

=================  =========================================================================
``raw_pixels``     the flattened image, ``C*H*W`` dims (4,096 on dSprites)
``pca``            scikit-learn ``PCA`` with ``latent_dim`` components, fitted on a seeded sample
``ica``            scikit-learn ``FastICA`` with ``latent_dim`` components on the sample
                   whitened by ``PCA(whiten=True)`` (randomized SVD), the same kind of sample
``untrained_vae``  a registered model (``vae`` by default) at initialisation with a given seed
                   (batch-norm statistics of the fitting sample); its posterior mean is the code
``ground_truth``   the factor classes themselves (the table's "Ground truth 100%" row)
=================  =========================================================================

Each image-based baseline is a module with the interface the metrics adapter uses for a trained
model -- ``encode(x) -> Posterior``, ``decode``, ``reconstruction``, ``mean_image``,
``latent_dim`` -- so :func:`gatedvae.evaluation.evaluate_model` scores it exactly as it scores
a run (same sampling, same presets, same seeds), and the result has the ``metrics.json`` format of
``gatedvae evaluate``. The linear baselines decode too (PCA/ICA: the inverse transform; raw
pixels: the identity), so the reconstruction scores mean something; their decoded images are
clipped to [1e-4, 1 - 1e-4] before the Bernoulli likelihood.

``ground_truth`` cannot be computed from pixels (dSprites' square repeats after a quarter turn,
so an image does not name its factors); :func:`evaluate_baseline` scores it through the pure
metric functions with ``factor classes -> codes`` as the identity, for the supervised metrics.

One call, :func:`evaluate_baseline` (``gatedvae baseline NAME DATASET ...``), builds the dataset,
fits the baseline with ``seed``, evaluates it with ``seed`` and optionally writes
``DIR/metrics.json`` and ``DIR/baseline.json`` (what was fitted, on how many images, how long).
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import Config, DataConfig, ModelConfig, to_dict
from .errors import ConfigError, GatedVAEError
from .io import closest
from .losses import bernoulli_nll, gaussian_nll
from .nets import Posterior

__all__ = [
    "BASELINES",
    "LinearBaseline",
    "RawPixels",
    "build_baseline",
    "prepare_baseline",
    "evaluate_baseline",
    "ground_truth_scores",
    "fit_sample",
    "format_baseline",
]

#: name -> description (``gatedvae baseline --help`` and docs/baselines.md list them).
BASELINES: dict[str, str] = {
    "raw_pixels": "the flattened image (C*H*W dims)",
    "pca": "PCA (scikit-learn) with latent_dim components, fitted on a seeded sample",
    "ica": "FastICA (scikit-learn) with latent_dim components, fitted on a seeded sample",
    "untrained_vae": "a registered model (default vae) at initialisation with the given seed",
    "ground_truth": "the factor classes themselves (supervised metrics only)",
}

_CLIP = 1e-4


def _check_name(name: str) -> str:
    if name not in BASELINES:
        close = closest(str(name), BASELINES)
        hint = f"; did you mean '{close}'?" if close else ""
        raise ConfigError(f"unknown baseline '{name}'{hint} baselines: {', '.join(BASELINES)}")
    return name


# --------------------------------------------------------------------------- modules
class _PixelModel(nn.Module):
    """Shared pieces: decoded outputs are logits of clipped pixel means (Bernoulli by default)."""

    registered_name = ""
    likelihood = "bernoulli"

    def __init__(self, image_shape: tuple[int, int, int], latent_dim: int) -> None:
        super().__init__()
        self.image_shape = tuple(int(s) for s in image_shape)
        self.latent_dim = int(latent_dim)
        self.cond_dim = 0
        self.info: dict[str, Any] = {}

    def _to_logits(self, pixels: torch.Tensor) -> torch.Tensor:
        p = pixels.clamp(_CLIP, 1.0 - _CLIP)
        return torch.log(p) - torch.log1p(-p)  # (B, C, H, W)

    def reconstruction(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``-log p(target | code)`` per sample ``(B,)`` under the clipped decoded means."""
        if self.likelihood == "bernoulli":
            return bernoulli_nll(out, target)
        return gaussian_nll(torch.sigmoid(out), target)

    def mean_image(self, out: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(out)

    @torch.no_grad()
    def representation(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.encode(x, cond).mu

    def figure_panels(self, rng) -> list:
        return []

    def describe(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in self.info.items() if not isinstance(v, (list, dict)))
        return f"{self.registered_name} baseline ({params})"


class RawPixels(_PixelModel):
    """The image itself as the code: ``(B, C*H*W)``; decoding reshapes it back."""

    registered_name = "raw_pixels"

    def __init__(self, image_shape: tuple[int, int, int]) -> None:
        c, h, w = image_shape
        super().__init__(image_shape, c * h * w)

    def encode(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> Posterior:
        z = x.flatten(1)  # (B, C*H*W)
        return Posterior(z, torch.zeros_like(z))

    def decode(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self._to_logits(z.view(-1, *self.image_shape))  # (B, C, H, W)


class LinearBaseline(_PixelModel):
    """``code = (x - mean) @ W^T`` and ``x_hat = code @ A^T + mean`` (PCA: A = W^T; ICA: the mixing).

    Args:
        name: ``pca`` or ``ica`` (for descriptions).
        mean: ``(P,)`` pixel mean of the fitting sample.
        weight: ``(M, P)`` projection (PCA components / ICA unmixing incl. whitening).
        inverse: ``(P, M)`` reconstruction matrix.
    """

    def __init__(self, name: str, image_shape, mean: np.ndarray, weight: np.ndarray, inverse: np.ndarray) -> None:
        super().__init__(image_shape, weight.shape[0])
        self.registered_name = name
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))  # (P,)
        self.register_buffer("weight", torch.as_tensor(weight, dtype=torch.float32))  # (M, P)
        self.register_buffer("inverse", torch.as_tensor(inverse, dtype=torch.float32))  # (P, M)

    def encode(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> Posterior:
        z = (x.flatten(1) - self.mean) @ self.weight.T  # (B, M)
        return Posterior(z, torch.zeros_like(z))

    def decode(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        x = z @ self.inverse.T + self.mean  # (B, P)
        return self._to_logits(x.view(-1, *self.image_shape))  # (B, C, H, W)


# --------------------------------------------------------------------------- fitting
def fit_sample(dataset, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(index (n,), pixels (n, P) float32)``: ``size`` images drawn without replacement with
    ``np.random.default_rng([seed, 11])`` (the whole dataset if it is smaller)."""
    if size < 2:
        raise ConfigError(f"fit_size must be at least 2, got {size}")
    rng = np.random.default_rng([int(seed), 11])
    n = len(dataset)
    index = np.sort(rng.choice(n, size=min(int(size), n), replace=False))  # (n,)
    x = np.concatenate(
        [dataset.images(index[s : s + 4096]).flatten(1).cpu().numpy() for s in range(0, index.size, 4096)]
    )
    return index, x.astype(np.float32, copy=False)  # (n, P)


def build_baseline(
    name: str,
    dataset,
    *,
    latent_dim: int = 10,
    seed: int = 0,
    fit_size: int = 10_000,
    model: str = "vae",
    net: str = "mlp",
    hidden: int = 256,
    bn_stats: bool = True,
) -> nn.Module:
    """The baseline ``name`` for ``dataset`` (fitted, or initialised, with ``seed``), in eval mode.

    ``latent_dim``: components of PCA/ICA and the untrained model's latent size (ignored by
    ``raw_pixels``). ``fit_size``: images in the PCA/ICA fitting sample (and the untrained
    model's batch-norm sample). ``model``, ``net``, ``hidden``: the untrained model's registered
    name and network. ``bn_stats``: give the untrained model's batch-norm layers the running
    statistics of the fitting sample (weights untouched). Without them eval-mode batch norm at
    initialisation is the identity and, with PyTorch's default initialisation, the MLP's codes
    spread by only ~0.02 on dSprites, which the FactorVAE metric prunes as inactive and the
    BetaVAE metric's regularised classifier cannot read. ``.info`` on the result records what
    was fitted (explained variance, ICA iterations, seconds).
    """
    _check_name(name)
    if name == "ground_truth":
        raise ConfigError("ground_truth is not computed from images; use evaluate_baseline('ground_truth', ...)")
    if int(latent_dim) < 1:
        raise ConfigError(f"latent_dim must be at least 1, got {latent_dim}")
    shape = dataset.image_shape
    pixels = int(np.prod(shape))
    t0 = time.perf_counter()
    if name == "raw_pixels":
        out: nn.Module = RawPixels(shape)
        out.info = {"latent_dim": pixels}
    elif name == "untrained_vae":
        from .models import build_model

        cfg = ModelConfig(name=model, net=net, latent_dim=int(latent_dim), hidden=int(hidden))  # type: ignore[arg-type]
        out = build_model(cfg, shape, len(dataset), seed=int(seed))
        if not getattr(out, "reconstructs", True):
            raise ConfigError(
                f"untrained_vae needs a VAE-family model; {model} is a GAN (its code comes from Q, not an encoder)"
            )
        norms = [m for m in out.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if bn_stats and norms:
            _, x = fit_sample(dataset, fit_size, seed)
            _batch_norm_statistics(out, norms, torch.from_numpy(x).view(-1, *shape))
        out.info = {
            "model": model,
            "net": net,
            "hidden": int(hidden),
            "latent_dim": int(latent_dim),
            "seed": int(seed),  # type: ignore[attr-defined]
            "bn_stats": bool(bn_stats and norms),
        }
    else:
        if int(latent_dim) > pixels:
            raise ConfigError(f"latent_dim {latent_dim} exceeds the {pixels} pixels of an image; lower it")
        index, x = fit_sample(dataset, fit_size, seed)
        if int(latent_dim) > x.shape[0]:
            raise ConfigError(
                f"latent_dim {latent_dim} exceeds the {x.shape[0]} fitting images; raise fit_size or lower latent_dim"
            )
        if name == "pca":
            from sklearn.decomposition import PCA

            pca = PCA(n_components=int(latent_dim), random_state=int(seed)).fit(x)
            out = LinearBaseline("pca", shape, pca.mean_, pca.components_, pca.components_.T)
            info = {"explained_variance_ratio": float(pca.explained_variance_ratio_.sum())}
        else:
            from sklearn.decomposition import PCA, FastICA
            from sklearn.exceptions import ConvergenceWarning

            # Whitening by PCA first (randomized SVD: seconds instead of FastICA's full SVD of the
            # n x 4,096 sample), then FastICA on the whitened components.
            pca = PCA(n_components=int(latent_dim), whiten=True, random_state=int(seed)).fit(x)
            scale = np.sqrt(pca.explained_variance_)  # (M,)
            y = pca.transform(x)  # (n, M), unit variance
            ica = FastICA(whiten=False, max_iter=1000, tol=1e-4, random_state=int(seed))
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                ica.fit(y)
            converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
            weight = ica.components_ @ (pca.components_ / scale[:, None])  # (M, P)
            inverse = (pca.components_.T * scale) @ ica.mixing_  # (P, M)
            out = LinearBaseline("ica", shape, pca.mean_, weight, inverse)
            info = {"iterations": int(ica.n_iter_), "converged": converged}
        out.info = {"latent_dim": int(latent_dim), "fit_size": int(index.size), "seed": int(seed), **info}
    out.info["fit_seconds"] = round(time.perf_counter() - t0, 3)  # type: ignore[index]
    return out.eval()


@torch.no_grad()
def _batch_norm_statistics(model: nn.Module, norms: list, x: torch.Tensor, batch: int = 1024) -> None:
    """Set the batch-norm running statistics to the cumulative mean over ``x`` (weights untouched).

    The whole model runs forward in train mode (encoder and decoder, on the encoder's means),
    so every batch-norm layer sees the inputs it would see at the start of training.
    """
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
    model.train()
    try:
        for s in range(0, x.shape[0], batch):
            xb = x[s : s + batch]  # (b, C, H, W)
            if xb.shape[0] < 2:
                continue
            model.decode(model.encode(xb).mu)
    finally:
        for m, mom in zip(norms, saved, strict=True):
            m.momentum = mom
        model.eval()


def _record_config(name: str, data: DataConfig, module: nn.Module) -> Config:
    """The Config kept in the Prepared of a baseline (a record; it is never trained)."""
    if isinstance(module, _PixelModel):
        return Config(data=data, model=ModelConfig(name=name, latent_dim=module.latent_dim, hidden=1))
    return Config(data=data, model=module.cfg)  # the untrained registered model's own


def prepare_baseline(name: str, data: DataConfig, dataset=None, device: str = "cpu", progress: bool = False, **kw):
    """A :class:`gatedvae.train.Prepared` holding the baseline as its model, for the metrics adapter."""
    from .data import build_dataset
    from .run import Prepared, resolve_device

    dev = resolve_device(device)
    ds = dataset if dataset is not None else build_dataset(data, progress=progress)
    ds = ds.to(dev)
    module = build_baseline(name, ds, **kw).to(dev)
    return Prepared(_record_config(name, data, module), dev, ds, module, None, 0)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- ground truth
def ground_truth_scores(dataset, metrics, preset: str, rng: np.random.Generator) -> dict:
    """Supervised metrics with the factor classes as the code (``evaluate_model``'s result layout).

    Sampler metrics (BetaVAE, FactorVAE) on a grid dataset get ``factors -> factors``; the
    array metrics get the classes of the shared codes sample as both codes and factors.
    Unsupervised and reconstruction scores do not apply and are listed under ``skipped``.
    """
    from .evaluation.suite import SAMPLE_SIZES, _stream, resolve_metrics
    from .metrics import KINDS, METRICS, preset_kwargs

    names = resolve_metrics(metrics)
    base = int(rng.integers(0, 2**63 - 1))
    sizes = list(dataset.factor_space.sizes)
    idx = np.sort(
        _stream(base, "codes").choice(
            len(dataset), size=min(SAMPLE_SIZES[preset]["codes"], len(dataset)), replace=False
        )
    )
    fac = dataset.factors_of(idx)  # (n, K)
    keep = np.flatnonzero(np.ptp(fac, axis=0) > 0)
    out: dict[str, Any] = {
        "preset": preset,
        "rng_base": base,
        "metrics": [],
        "results": {},
        "skipped": {},
        "factor_names": [dataset.factor_space.names[k] for k in keep],
    }
    for name in names:
        kind = KINDS.get(name)
        t0 = time.perf_counter()
        mrng = _stream(base, name)
        params = preset_kwargs(name, preset) if name in METRICS else {}
        if kind == "sampler":
            if not dataset.is_grid:
                out["skipped"][name] = "ground truth sampler scores need a full-grid dataset"
                continue
            scores = METRICS[name](lambda f: np.asarray(f, dtype=np.float64), sizes, mrng, **params)
        elif kind == "arrays":
            codes = fac[:, keep].astype(np.float64)  # (n, K')
            scores = METRICS[name](codes, fac[:, keep], mrng, **params)
        else:
            out["skipped"][name] = "not defined for the ground truth (no posterior, no decoder)"
            continue
        out["metrics"].append(name)
        out["results"][name] = {"scores": scores, "params": params, "seconds": time.perf_counter() - t0}
    return out


# --------------------------------------------------------------------------- the command
def evaluate_baseline(
    name: str,
    data: DataConfig,
    *,
    metrics=None,
    preset: str = "default",
    seed: int = 0,
    latent_dim: int = 10,
    fit_size: int = 10_000,
    model: str = "vae",
    net: str = "mlp",
    hidden: int = 256,
    bn_stats: bool = True,
    out_dir: str | os.PathLike | None = None,
    dataset=None,
    progress: bool = False,
) -> dict:
    """Fit (or initialise) baseline ``name`` on ``data`` and score it; the ``metrics.json`` document.

    Args:
        name: one of :data:`BASELINES`.
        data: the dataset's config (``dataset`` may pass it already built).
        metrics, preset: as for ``gatedvae evaluate`` (None = every metric; raw pixels: choose,
            the array metrics on 4,096 dims are slow).
        seed: fits the baseline (sample, scikit-learn's random_state, the untrained model's
            initialisation) and seeds the evaluation.
        latent_dim, fit_size, model, net, hidden, bn_stats: see :func:`build_baseline`.
        out_dir: write ``metrics.json`` and ``baseline.json`` there (refused in a training run's
            directory, whose own ``metrics.json`` it would replace).

    Returns:
        the JSON-safe document (``headline``, ``results``, ``baseline`` with the fit facts).
    """
    from .evaluation import (
        FORMAT,
        SAMPLE_SIZES,
        evaluate_model,
        headline,
        resolve_metrics,
        to_jsonable,
        write_json,
    )

    _check_name(name)
    names = resolve_metrics(metrics)
    if preset not in SAMPLE_SIZES:
        raise ConfigError(f"unknown preset '{preset}'; use default or fast")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed: expected a non-negative integer, got {seed!r}")
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and (out / "config.yaml").exists():
        raise GatedVAEError(f"'{out}' is a training run directory; write the baseline's scores to another directory")
    t_start = time.perf_counter()
    rng = np.random.default_rng(int(seed))
    spec = {"name": name, "seed": int(seed), "data": to_dict(data)}
    if name == "ground_truth":
        from .data import build_dataset

        ds = dataset if dataset is not None else build_dataset(data, progress=progress)
        result = ground_truth_scores(ds, names, preset, rng)
        describe, latent = "ground_truth (factor classes)", len(result["factor_names"])
        spec["latent_dim"] = latent
    else:
        prep = prepare_baseline(
            name,
            data,
            dataset=dataset,
            progress=progress,
            latent_dim=latent_dim,
            seed=int(seed),
            fit_size=fit_size,
            model=model,
            net=net,
            hidden=hidden,
            bn_stats=bn_stats,
        )
        result = evaluate_model(prep, names, preset, rng=rng, progress=progress)
        describe, latent = prep.model.describe(), prep.model.latent_dim
        spec.update(prep.model.info)
    doc: dict[str, Any] = {
        "format": FORMAT,
        "run": str(out) if out is not None else "",
        "baseline": spec,
        "checkpoint": None,
        "checkpoint_step": 0,
        "seed": int(seed),
        "preset": preset,
        "metrics": result["metrics"],
        **({"skipped": result["skipped"]} if result.get("skipped") else {}),
        "model": describe,
        "latent_dim": latent,
        "gated": False,
        "partitions": [],
        "dataset": result.get("dataset", {"name": data.name}),
        "samples": result.get("samples", {}),
        "headline": headline(result),
        "posterior": result.get("posterior", {}),
        "results": result["results"],
        "timing": {
            "encode_seconds": result.get("encode_seconds", 0.0),
            "encoded_images": result.get("encoded_images", 0),
            "per_metric_seconds": {k: v["seconds"] for k, v in result["results"].items()},
        },
        "rng_base": result["rng_base"],
        "figures": [],
    }
    doc["timing"]["elapsed_seconds"] = time.perf_counter() - t_start
    doc = to_jsonable(doc)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "baseline.json", to_jsonable(spec))
        write_json(out / "metrics.json", doc)
    return doc


def format_baseline(doc: dict) -> str:
    """A short table of a baseline's headline scores (the ``metrics.json`` document)."""
    lines = [f"{doc['model']} on {doc['dataset'].get('name', '?')}  preset {doc['preset']}  seed {doc['seed']}"]
    for key, value in doc["headline"].items():
        metric, _, score = key.partition(".")
        shown = "-" if value is None else f"{value:.4g}"
        lines.append(f"  {metric:<24} {score:<34} {shown:>8}")
    for name, why in doc.get("skipped", {}).items():
        lines.append(f"  {name:<24} skipped: {why}")
    lines.append(f"  total {doc['timing']['elapsed_seconds']:.1f} s")
    return "\n".join(lines)
