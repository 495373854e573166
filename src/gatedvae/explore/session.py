"""The model side of the explorer: one trained run, loaded once, answering pure questions.

:class:`Explorer` holds a run's model (eval mode), its dataset when it can be built, the latent
layout (:class:`Group`: a partition of a gated run, one latent of an un-gated run, one code of an
InfoGAN) and the statistics the page needs (the aggregate posterior over a seeded sample of the
data, the run's ``metrics.json``). Every method takes what it needs as arguments and returns
arrays or PNG bytes: the explorer keeps no per-user state and writes nothing, anywhere (uploads
are decoded from memory). The HTTP layer (:mod:`.api`, :mod:`.server`) and the static export
(:mod:`.export`) are thin wrappers over it.

A conditional VAE (``model.condition``) decodes a code together with labels: the classes of the
condition factors, one per factor (``cond``, an int array ``(F,)`` or ``(N, F)``), turned into
the concatenated one-hots training feeds (:meth:`Explorer.cond_onehot`). An input's own labels
(:attr:`Item.cond`: a dataset image's from the dataset, an upload's or a prior draw's as picked)
are what an encoder conditioned on labels (``model.condition_encoder``) reads; the decoder's
labels are asked for with every decode, so the page can change them. A conditional run needs its
dataset (the factors' classes); without it it is refused.

Images go through the same code as ``gatedvae encode``: dataset images as training reads them,
an uploaded file through :func:`gatedvae.data.images._read_folder` (colour conversion, EXIF
orientation, antialiased resize to the run's size). Swaps are :func:`gatedvae.viz.diagnostics.swap_codes`;
traversal sprites are laid out by :func:`gatedvae.viz.figures.image_grid`; the Hinton squares are
:func:`gatedvae.viz.hinton.hinton_squares` of the DCI importance in ``metrics.json``.
"""

from __future__ import annotations

import io
import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..encode import ACTIVE_VARIANCE, COLLAPSED_KL
from ..errors import DataError
from ..io import read_json
from ..run import load_model, load_run_config, load_trained
from ..runlock import unfinished_note
from ..viz.diagnostics import swap_codes
from ..viz.figures import image_grid
from ..viz.hinton import hinton_squares
from .defaults import MAX_UPLOAD_PIXELS, UPLOAD_FORMATS

__all__ = ["Explorer", "Group", "Item", "png_bytes"]

#: Images of the dataset encoded at start for the aggregate posterior (mean and spread per latent).
STATS_IMAGES = 1000
#: Latent values are bounded: far outside the prior they mean nothing and may overflow a decoder.
MAX_ABS_CODE = 100.0


@dataclass(frozen=True)
class Group:
    """Latent dims that move together on the page: a partition (gated run), one latent (un-gated
    run) or one code (InfoGAN; ``categorical`` codes are one-hot blocks)."""

    name: str
    start: int
    stop: int
    factors: tuple[str, ...] = ()
    kind: str = "partition"  # partition | latent | continuous | categorical

    @property
    def dims(self) -> np.ndarray:
        return np.arange(self.start, self.stop)


@dataclass
class Item:
    """An input image and its posterior: ``image`` uint8 ``(C, H, W)`` (None for a prior draw), ``mu``
    and ``std`` ``(M,)``; ``cond``: its labels, the class of each condition factor ``(F,)`` (a
    conditional run; None otherwise), which the encoder reads where it is conditioned."""

    image: np.ndarray | None
    mu: np.ndarray
    std: np.ndarray
    index: int | None = None
    factors: dict[str, str] = field(default_factory=dict)
    source: str = ""
    note: str = ""
    cond: np.ndarray | None = None


def png_bytes(image: np.ndarray, compress: int = 1) -> bytes:
    """An image ``(C, H, W)`` (uint8, or floats in [0, 1] rounded to 8 bits) as PNG bytes; ``compress``:
    zlib's level (1, the default, is the fastest: the sliders' path)."""
    from PIL import Image

    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = np.rint(np.clip(arr.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
    hwc = arr.transpose(1, 2, 0)  # (H, W, C)
    im = Image.fromarray(hwc[..., 0] if hwc.shape[-1] == 1 else hwc)
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=int(compress))
    return buf.getvalue()


class _Upload(io.BytesIO):
    """An uploaded file held in memory, named in messages as the user named it."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.label = f"'{name}' (uploaded)"

    def __str__(self) -> str:
        return self.label

    __repr__ = __str__


def _format_value(v: float) -> str:
    return f"{v:.4g}"


class Explorer:
    """A trained run ready to be explored: see the module docstring.

    Args:
        run_dir: a run directory written by ``gatedvae train``.
        device: where the model runs (``cpu``, ``cuda``, ``cuda:N``).
        seed: seeds the sample of images behind the aggregate posterior.
    """

    def __init__(self, run_dir: str | os.PathLike, device: str = "cpu", seed: int = 0) -> None:
        self.run_dir = Path(run_dir)
        self.notes: list[str] = []
        self.lock = threading.Lock()  # one model call at a time (the server is threaded)
        try:
            prep, step, _ = load_trained(self.run_dir, device=device)
            self.config, self.model, self.dataset = prep.config, prep.model, prep.dataset
            self.device = prep.device
        except DataError as exc:  # the data moved or is gone: the model alone still explores uploads
            if load_run_config(self.run_dir).model.condition:
                raise DataError(
                    f"run {self.run_dir} conditions its decoder on factor labels (model.condition) and its "
                    f"dataset could not be built here ({exc}); the explorer needs it for the labels' classes"
                ) from None
            loaded = load_model(self.run_dir, device=device)
            self.config, self.model, self.dataset, step = loaded.config, loaded.model, None, loaded.step
            self.device = loaded.device
            self.notes.append(f"the run's dataset could not be built ({exc}); pick inputs by uploading images")
        self.step = int(step)
        #: the condition factors of a conditional VAE (``model.condition``), in the one-hots' order
        self.condition: tuple[str, ...] = tuple(self.config.model.condition)
        self.condition_encoder = bool(self.condition) and bool(self.config.model.condition_encoder)
        space = self.dataset.factor_space if self.dataset is not None else None
        self._cond_pos = [space.position(n) for n in self.condition] if space is not None else []
        self.condition_sizes: tuple[int, ...] = tuple(int(space.sizes[k]) for k in self._cond_pos)
        note = unfinished_note(self.run_dir, self.step, "exploring")
        if note:
            self.notes.append(note)
        self.model.eval()
        self.latent_dim = int(self.config.model.latent_dim)
        self.image_shape = tuple(int(s) for s in self.model.image_shape)
        self.is_gan = hasattr(self.model, "generate") and hasattr(self.model, "codes")
        self.noise_dim = int(getattr(self.model, "noise_dim", 0)) if self.is_gan else 0
        self.groups = self._groups()
        self.metrics = read_json(self.run_dir / "metrics.json")
        self._stats(seed)

    # ------------------------------------------------------------------ layout
    def _groups(self) -> list[Group]:
        if self.is_gan:
            codes = self.model.codes
            out = [Group(f"c{j}", j, j + 1, kind="continuous") for j in range(codes.continuous)]
            start = codes.continuous
            for k, size in enumerate(codes.categorical):
                out.append(Group(f"cat{k}", start, start + size, kind="categorical"))
                start += size
            return out
        if self.config.gating.enabled:
            out, start = [], 0
            for p in self.config.gating.partitions:
                out.append(Group(p.name, start, start + p.size, tuple(p.factors), "partition"))
                start += p.size
            return out
        return [Group(f"z{d}", d, d + 1, kind="latent") for d in range(self.latent_dim)]

    def group(self, name: str) -> Group:
        for g in self.groups:
            if g.name == name:
                return g
        raise DataError(f"unknown group {name!r}; this run's are: {', '.join(g.name for g in self.groups)}")

    @property
    def factor_names(self) -> tuple[str, ...]:
        return self.dataset.factor_space.names if self.dataset is not None else ()

    # ------------------------------------------------------------------ labels (conditional VAE)
    @property
    def conditional(self) -> bool:
        """Whether the decoder takes labels (``model.condition``)."""
        return bool(self.condition)

    def check_cond(self, cond: Any, n: int | None = None) -> np.ndarray | None:
        """Labels as int64 ``(N, F)`` (one class per condition factor; a single ``(F,)`` is repeated
        to ``n`` rows), checked; None for a run that is not conditional. DataError for labels given
        to a run that takes none, missing labels, or a class out of range."""
        if not self.conditional:
            if cond is not None:
                raise DataError("this run's decoder takes no labels (it is not a conditional VAE); give no condition")
            return None
        if cond is None:
            raise DataError(
                f"this run's decoder is conditioned on {', '.join(self.condition)} (model.condition); "
                "give their classes"
            )
        arr = np.asarray(cond)
        if arr.ndim == 1:
            arr = arr[None]
        if arr.ndim != 2 or arr.shape[1] != len(self.condition):
            raise DataError(
                f"expected one class for each condition factor {list(self.condition)}, got shape {arr.shape}"
            )
        if arr.dtype.kind not in "iu":
            raise DataError("condition classes must be integers")
        for k, name in enumerate(self.condition):
            bad = (arr[:, k] < 0) | (arr[:, k] >= self.condition_sizes[k])
            if bad.any():
                raise DataError(
                    f"condition factor {name!r} has classes 0..{self.condition_sizes[k] - 1}, got {int(arr[bad, k][0])}"
                )
        arr = arr.astype(np.int64)
        if n is not None and len(arr) == 1 and n != 1:
            arr = np.repeat(arr, n, axis=0)
        if n is not None and len(arr) != n:
            raise DataError(f"expected labels for {n} codes, got {len(arr)}")
        return arr

    def cond_onehot(self, cond: np.ndarray) -> np.ndarray:
        """The decoder's (and a conditioned encoder's) input for labels ``(N, F)``: the one-hots of the
        condition factors, concatenated in ``model.condition``'s order, float32 ``(N, sum of sizes)``
        (what :func:`gatedvae.run.condition_vectors` builds for training)."""
        parts = [np.eye(size, dtype=np.float32)[cond[:, k]] for k, size in enumerate(self.condition_sizes)]
        return np.concatenate(parts, axis=1)  # (N, c)

    def _cond_tensor(self, cond: np.ndarray | None) -> torch.Tensor | None:
        return None if cond is None else torch.from_numpy(self.cond_onehot(cond)).to(self.device)  # (N, c)

    def labels_of(self, index: np.ndarray) -> np.ndarray | None:
        """Dataset images' own labels: their classes of the condition factors, int64 ``(N, F)``; None
        for a run that is not conditional."""
        if not self.conditional:
            return None
        return self.dataset.factors_of(np.asarray(index, dtype=np.int64))[:, self._cond_pos].astype(np.int64)

    def draw_labels(self, seed: int) -> np.ndarray | None:
        """Labels drawn uniformly, seeded ``(F,)`` (a prior draw's, where none are picked)."""
        if not self.conditional:
            return None
        rng = np.random.default_rng([int(seed), 0xC0])
        return np.array([int(rng.integers(0, s)) for s in self.condition_sizes], dtype=np.int64)

    def condition_choices(self) -> dict[str, Any] | None:
        """The page's label dropdowns: per condition factor its name and displayed values, and whether
        the encoder reads the labels too; None for a run that is not conditional."""
        if not self.conditional:
            return None
        space = self.dataset.factor_space
        factors = [
            {"name": name, "values": [_format_value(float(v)) for v in space.values[k]]}
            for name, k in zip(self.condition, self._cond_pos, strict=True)
        ]
        return {"factors": factors, "encoder": self.condition_encoder}

    def describe_labels(self, cond: np.ndarray | None) -> dict[str, str]:
        """Labels ``(F,)`` as ``{factor: displayed value}``."""
        if cond is None or not self.conditional:
            return {}
        space = self.dataset.factor_space
        return {
            name: _format_value(float(space.values[k][int(c)]))
            for name, k, c in zip(self.condition, self._cond_pos, np.asarray(cond).reshape(-1), strict=True)
        }

    # ------------------------------------------------------------------ model calls
    @torch.inference_mode()
    def posterior(self, x: np.ndarray, cond: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Posterior means and standard deviations of uint8 images ``(N, C, H, W)``: float64 ``(N, M)`` each.

        ``cond``: the images' own labels ``(N, F)``, read by an encoder conditioned on them
        (``model.condition_encoder``; needed there) and ignored otherwise."""
        enc = self.check_cond(cond, len(x)) if self.condition_encoder else None
        mus, stds = [], []
        with self.lock:
            for s in range(0, len(x), 256):
                batch = torch.from_numpy(np.ascontiguousarray(x[s : s + 256])).to(self.device, torch.float32) / 255.0
                c = self._cond_tensor(enc[s : s + 256]) if enc is not None else None  # (b, c)
                post = self.model.encode(batch, c)  # (b, C, H, W) -> Posterior (b, M)
                mus.append(post.mu.double().cpu().numpy())  # (b, M)
                stds.append(torch.exp(0.5 * post.logvar.double()).cpu().numpy())  # (b, M)
        return np.concatenate(mus), np.concatenate(stds)

    @torch.inference_mode()
    def decode(self, z: np.ndarray, noise: int = 0, cond: Any = None) -> np.ndarray:
        """Mean images of codes ``z (N, M)``: float32 ``(N, C, H, W)`` in [0, 1].

        ``noise`` (InfoGAN only): 0 is the noise prior's mode (``G(0, c)``, what ``decode`` means for
        a GAN); any other value seeds one draw of the noise ``N(0, I)`` shared by every code.
        ``cond`` (conditional VAE only, needed there): the decoder's labels, ``(F,)`` for every code
        or ``(N, F)`` one row per code.
        """
        z = np.asarray(z, dtype=np.float32)
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise DataError(f"decode: expected codes of shape (N, {self.latent_dim}), got {z.shape}")
        labels = self.check_cond(cond, len(z))
        with self.lock:
            zt = torch.from_numpy(np.ascontiguousarray(z)).to(self.device)  # (N, M)
            if self.is_gan and noise:
                g = torch.Generator().manual_seed(int(noise))
                eps = torch.randn((1, self.noise_dim), generator=g).to(self.device)  # (1, noise)
                logits = self.model.generate(zt, eps.expand(len(zt), -1))  # (N, C, H, W)
            else:
                logits = self.model.decode(zt, self._cond_tensor(labels))  # (N, C, H, W)
            return self.model.mean_image(logits).clamp(0, 1).float().cpu().numpy()

    # ------------------------------------------------------------------ statistics
    def _stats(self, seed: int) -> None:
        """The aggregate posterior over a seeded sample of the data: per latent, the mean of the
        means, the spread ``sqrt(Var(mu) + E[sigma^2])``, the KL to N(0, 1) and whether it is active."""
        m = self.latent_dim
        if self.dataset is not None and len(self.dataset):
            rng = np.random.default_rng([int(seed), 0xE9])
            n = min(STATS_IMAGES, len(self.dataset))
            idx = np.sort(rng.choice(len(self.dataset), size=n, replace=False))
            mu, std = self.posterior(self.dataset_images(idx), self.labels_of(idx))  # (n, M) each
            self.agg_mean = mu.mean(axis=0)  # (M,)
            self.agg_std = np.sqrt(mu.var(axis=0) + (std**2).mean(axis=0))  # (M,)
            var = std**2
            self.kl = (0.5 * (mu**2 + var - 1.0 - np.log(np.maximum(var, 1e-300)))).mean(axis=0)  # (M,)
            self.variance = mu.var(axis=0)  # (M,)
            self.stats_images = n
        else:
            self.agg_mean, self.agg_std = np.zeros(m), np.ones(m)
            self.kl, self.variance = np.full(m, np.nan), np.full(m, np.nan)
            self.stats_images = 0
        if self.is_gan:
            self.agg_std = np.where(np.isfinite(self.agg_std) & (self.agg_std > 0), self.agg_std, 1.0)

    def slider_range(self) -> tuple[np.ndarray, np.ndarray]:
        """``(lo, hi)`` per latent: the aggregate mean +- 4 spreads, at least the prior's +-3
        (InfoGAN: +-2 for its Unif(-1, 1) codes, [0, 1] for one-hot dims)."""
        lo = np.minimum(self.agg_mean - 4 * self.agg_std, -3.0)
        hi = np.maximum(self.agg_mean + 4 * self.agg_std, 3.0)
        if self.is_gan:
            lo, hi = np.full(self.latent_dim, -2.0), np.full(self.latent_dim, 2.0)
            for g in self.groups:
                if g.kind == "categorical":
                    lo[g.start : g.stop], hi[g.start : g.stop] = 0.0, 1.0
        return np.clip(lo, -MAX_ABS_CODE, MAX_ABS_CODE), np.clip(hi, -MAX_ABS_CODE, MAX_ABS_CODE)

    # ------------------------------------------------------------------ inputs
    def dataset_images(self, index: np.ndarray) -> np.ndarray:
        """uint8 ``(N, C, H, W)`` of dataset images (exactly the bytes training reads, divided by 255 there)."""
        x = self.dataset.images(np.asarray(index, dtype=np.int64))  # (N, C, H, W) float in [0, 1]
        return np.rint(x.cpu().numpy() * 255.0).astype(np.uint8)

    def _need_dataset(self) -> None:
        if self.dataset is None:
            raise DataError("this run's dataset could not be built here; pick an input by uploading an image")

    def item(self, index: int, note: str = "") -> Item:
        """Dataset image ``index`` with its posterior and factor values."""
        self._need_dataset()
        n = len(self.dataset)
        if not 0 <= int(index) < n:
            raise DataError(f"image index {index} is out of range; the dataset has images 0..{n - 1}")
        x = self.dataset_images(np.array([int(index)]))  # (1, C, H, W)
        labels = self.labels_of(np.array([int(index)]))  # (1, F) or None
        mu, std = self.posterior(x, labels)
        space = self.dataset.factor_space
        classes = self.dataset.factors_of(np.array([int(index)]))[0]  # (K,)
        factors = {name: _format_value(float(space.values[k][classes[k]])) for k, name in enumerate(space.names)}
        cond = labels[0] if labels is not None else None
        return Item(x[0], mu[0], std[0], int(index), factors, f"dataset image {int(index)}", note, cond)

    def random_item(self, seed: int) -> Item:
        """A dataset image drawn with ``seed``."""
        self._need_dataset()
        return self.item(int(np.random.default_rng([int(seed), 0x5A]).integers(0, len(self.dataset))))

    def factor_choices(self) -> list[dict[str, Any]]:
        """Per factor: its name and the displayed value of each class (the page's dropdowns)."""
        if self.dataset is None:
            return []
        space = self.dataset.factor_space
        return [
            {"name": name, "values": [_format_value(float(v)) for v in space.values[k]]}
            for k, name in enumerate(space.names)
        ]

    def find(self, classes: Sequence[int | None], seed: int) -> Item:
        """An image whose factor classes match ``classes`` (None: any value), drawn with ``seed`` among
        the matches; where none matches exactly, one of those with the fewest mismatching factors."""
        self._need_dataset()
        space = self.dataset.factor_space
        if len(classes) != space.num_factors:
            raise DataError(f"expected a class for each of the {space.num_factors} factors {list(space.names)}")
        for k, c in enumerate(classes):
            if c is not None and not 0 <= int(c) < space.sizes[k]:
                raise DataError(f"factor {space.names[k]!r} has classes 0..{space.sizes[k] - 1}, got {c}")
        rng = np.random.default_rng([int(seed), 0xF1])
        fixed = [(k, int(c)) for k, c in enumerate(classes) if c is not None]
        if self.dataset.is_grid:
            full = np.array(
                [int(c) if c is not None else int(rng.integers(0, space.sizes[k])) for k, c in enumerate(classes)]
            )
            return self.item(int(self.dataset.index_of(full[None])[0]), "exact match")
        factors = self.dataset.factors  # (N, K)
        if fixed:
            ks, cs = np.array([k for k, _ in fixed]), np.array([c for _, c in fixed])
            misses = (factors[:, ks] != cs[None, :]).sum(axis=1)  # (N,)
        else:
            misses = np.zeros(len(factors), dtype=np.int64)
        best = int(misses.min())
        candidates = np.flatnonzero(misses == best)
        index = int(candidates[rng.integers(0, len(candidates))])
        if not fixed:
            note = f"any values (1 of {len(candidates):,})"
        elif best == 0:
            note = f"exact match (1 of {len(candidates):,})"
        else:
            wrong = [space.names[k] for k, c in fixed if factors[index, k] != c]
            note = f"no image has all these values; nearest differs in {', '.join(wrong)}"
        return self.item(index, note)

    def upload(self, data: bytes, name: str, cond: Any = None) -> Item:
        """An uploaded image file (bytes in memory), converted as ``gatedvae encode`` converts a file.

        ``cond``: a conditional run's labels for it ``(F,)``, picked by the user (needed there): the
        image's own labels, read by an encoder conditioned on them and the decoder's to start with."""
        from PIL import Image, UnidentifiedImageError

        from ..data.images import _read_folder

        labels = self.check_cond(cond, 1)  # (1, F) or None: refused before the file is read
        upload = _Upload(data, name)
        kinds = ", ".join(UPLOAD_FORMATS)
        try:
            with Image.open(upload, formats=list(UPLOAD_FORMATS)) as im:
                width, height, fmt = im.size[0], im.size[1], im.format
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError):
            raise DataError(f"{upload} is not an image file this explorer reads ({kinds})") from None
        if width * height > MAX_UPLOAD_PIXELS or width < 1 or height < 1:
            raise DataError(
                f"{upload} is {width}x{height} pixels; the explorer takes images of at most "
                f"{MAX_UPLOAD_PIXELS:,} pixels (4096 x 4096); make it smaller"
            )
        upload.seek(0)
        c, h, _ = self.image_shape
        x = _read_folder([upload], "gray" if c == 1 else "rgb", h)  # (1, C, S, S) uint8
        mu, std = self.posterior(x, labels)
        cond = labels[0] if labels is not None else None
        return Item(x[0], mu[0], std[0], None, {}, f"upload {name} ({fmt}, {width}x{height})", "", cond)

    def prior_item(self, seed: int, cond: Any = None) -> Item:
        """No input: a code drawn from the prior (every group, :meth:`prior`), posterior std 0. A
        conditional run's labels: ``cond`` ``(F,)``, or where None drawn uniformly with ``seed``."""
        z = np.concatenate([self.prior(g, seed) for g in self.groups])  # (M,)
        if self.conditional and cond is None:
            cond = self.draw_labels(seed)
        labels = self.check_cond(cond, 1)
        own = labels[0] if labels is not None else None
        return Item(None, z, np.zeros_like(z), None, {}, f"prior draw (seed {int(seed)})", cond=own)

    # ------------------------------------------------------------------ what the page shows
    def prior(self, group: Group, seed: int) -> np.ndarray:
        """A draw of ``group``'s dims from the prior, seeded: N(0, I) for a VAE; for InfoGAN's
        continuous codes Unif(-1, 1), for a categorical code a one-hot of a uniform category."""
        rng = np.random.default_rng([int(seed), 0x9E, group.start])
        d = group.stop - group.start
        if group.kind == "categorical":
            out = np.zeros(d)
            out[int(rng.integers(0, d))] = 1.0
            return out
        if group.kind == "continuous":
            return rng.uniform(-1.0, 1.0, size=d)
        return rng.standard_normal(d)

    def traversal_ranges(
        self, z: np.ndarray, std: np.ndarray | None, span: float, unit: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(lo, hi)`` per latent of the traversal strips: ``centre +- span * sigma`` with sigma and
        centre by ``unit``: ``aggregate`` (the aggregate posterior's spread around its mean: about
        the papers' +-2 of the prior for a well-regularised model), ``image`` (this image's
        posterior std around the current value) or ``prior`` (1 around 0)."""
        if unit == "aggregate":
            centre, sigma = self.agg_mean, self.agg_std
        elif unit == "image":
            if std is None:
                raise DataError("unit=image needs the input's posterior std")
            centre, sigma = np.asarray(z, dtype=np.float64), np.asarray(std, dtype=np.float64)
        elif unit == "prior":
            centre, sigma = np.zeros(self.latent_dim), np.ones(self.latent_dim)
        else:
            raise DataError(f"unknown unit {unit!r}; use aggregate, image or prior")
        lo, hi = centre - span * sigma, centre + span * sigma
        return np.clip(lo, -MAX_ABS_CODE, MAX_ABS_CODE), np.clip(hi, -MAX_ABS_CODE, MAX_ABS_CODE)

    def traversals(
        self, z: np.ndarray, lo: np.ndarray, hi: np.ndarray, steps: int, noise: int = 0, cond: Any = None
    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Traversal strips from code ``z (M,)``: a sprite (rows x steps tiles, no padding) and per
        row its latent(s) and values. A row sweeps one latent from ``lo`` to ``hi``, the others
        held; an InfoGAN categorical code has one row going through its categories. ``cond``: a
        conditional run's labels ``(F,)``, the same for every tile."""
        z = np.asarray(z, dtype=np.float64)
        codes, rows = [], []
        for g in self.groups:
            if g.kind == "categorical":
                k = g.stop - g.start
                block = np.repeat(z[None], steps, axis=0)  # (S, M)
                block[:, g.start : g.stop] = 0.0
                cats = np.arange(steps) % k
                block[np.arange(steps), g.start + cats] = 1.0
                codes.append(block)
                rows.append({"group": g.name, "dim": g.start, "values": cats.tolist(), "categorical": True})
                continue
            for d in range(g.start, g.stop):
                values = np.linspace(lo[d], hi[d], steps)  # (S,)
                block = np.repeat(z[None], steps, axis=0)  # (S, M)
                block[:, d] = values
                codes.append(block)
                rows.append({"group": g.name, "dim": d, "values": values.tolist(), "categorical": False})
        imgs = self.decode(np.concatenate(codes), noise, cond)  # (R*S, C, H, W)
        sprite = image_grid(torch.from_numpy(imgs), rows=len(rows), pad=0).numpy()  # (C, R*H, S*W)
        return sprite, rows

    def swap(self, za: np.ndarray, zb: np.ndarray, groups: Sequence[Group]) -> np.ndarray:
        """Codes of the swap: A with ``groups`` taken from B, and B with them taken from A: ``(2, M)``.
        (A conditional run decodes each with its own image's labels: A's, then B's.)"""
        dims = np.concatenate([g.dims for g in groups]) if groups else np.zeros(0, dtype=np.int64)
        za, zb = np.asarray(za, dtype=np.float64), np.asarray(zb, dtype=np.float64)
        a_from_b = swap_codes(zb[None], za[None], dims)[0, 0]  # (M,): B's groups, A's rest
        b_from_a = swap_codes(za[None], zb[None], dims)[0, 0]  # (M,)
        return np.stack([a_from_b, b_from_a])

    def swap_grid(self, za: np.ndarray, zb: np.ndarray) -> np.ndarray:
        """Codes of every group swapped between A and B: ``(G, 2, 2, M)``, entry ``[g, i, j]`` with
        group g from image i and the rest from image j (i, j: 0 = A, 1 = B; the diagonal is the
        reconstructions), as ``gatedvae evaluate``'s swap grids, one group at a time. (A conditional
        run decodes ``[g, i, j]`` with image j's labels: those of the image giving the rest.)"""
        both = np.stack([np.asarray(za, dtype=np.float64), np.asarray(zb, dtype=np.float64)])  # (2, M)
        return np.stack([swap_codes(both, both, g.dims) for g in self.groups])  # (G, 2, 2, M)

    # ------------------------------------------------------------------ metrics
    def metrics_view(self) -> dict[str, Any]:
        """What the page shows of ``metrics.json``: headline scores, and for each DCI-like result
        (one with an importance matrix) its Hinton squares over latents and over partitions, and
        each partition's scores. Empty ``sources`` when the run has not been evaluated."""
        doc = self.metrics
        out: dict[str, Any] = {"available": bool(doc), "sources": [], "headline": {}}
        if not doc:
            out["note"] = f"no metrics.json yet: run gatedvae evaluate {self.run_dir} to see scores here"
            return out
        out["headline"] = {k: v for k, v in (doc.get("headline") or {}).items() if _finite(v)}
        out["preset"] = doc.get("preset")
        out["checkpoint_step"] = doc.get("checkpoint_step")
        if doc.get("checkpoint_step") not in (None, self.step):
            out["note"] = (
                f"metrics.json scores checkpoint step {doc.get('checkpoint_step')}; the model here is step {self.step}"
            )
        factor_names = list(doc.get("factor_names") or (doc.get("dataset") or {}).get("factors") or [])
        for name, entry in (doc.get("results") or {}).items():
            scores = entry.get("scores") if isinstance(entry, dict) else None
            if not isinstance(scores, dict) or "importance" not in scores or "disentanglement" not in scores:
                continue
            try:
                imp = np.asarray(scores["importance"], dtype=np.float64)  # (M, K)
            except (TypeError, ValueError):
                continue
            if imp.ndim != 2 or imp.shape[0] != self.latent_dim:
                continue
            names = factor_names if len(factor_names) == imp.shape[1] else [f"f{k}" for k in range(imp.shape[1])]
            src: dict[str, Any] = {
                "metric": name,
                "factors": names,
                "importance": _clean(imp),
                "squares": _clean(hinton_squares(imp)),
                "disentanglement": _num(scores.get("disentanglement")),
                "completeness": _num(scores.get("completeness")),
                "informativeness": _num(scores.get("informativeness")),
                "per_latent": _clean(scores.get("disentanglement_per_latent")),
            }
            part = scores.get("partition")
            if isinstance(part, dict) and "importance" in part:
                pimp = np.asarray(part["importance"], dtype=np.float64)  # (P, K)
                if pimp.ndim == 2 and pimp.shape[1] == imp.shape[1]:
                    assigned = part.get("assigned_fraction") or {}
                    src["partition"] = {
                        "names": list(part.get("names") or [g.name for g in self.groups][: pimp.shape[0]]),
                        "importance": _clean(pimp),
                        "squares": _clean(hinton_squares(pimp)),
                        "disentanglement": _num(part.get("disentanglement")),
                        "completeness": _num(part.get("completeness")),
                        "per_unit": _clean(part.get("disentanglement_per_unit")),
                        "assigned": _clean(assigned.get("per_factor")),
                        "chance": _clean(assigned.get("chance")),
                    }
            out["sources"].append(src)
        return out

    def latent_stats(self) -> list[dict[str, Any]]:
        """Per latent: the aggregate posterior (mean, spread), KL in nats per image, and whether it is
        active (variance of the mean over images above ``encode``'s 0.01)."""
        lo, hi = self.slider_range()
        out = []
        for d in range(self.latent_dim):
            out.append(
                {
                    "dim": d,
                    "mean": _num(self.agg_mean[d]),
                    "spread": _num(self.agg_std[d]),
                    "kl": _num(self.kl[d]),
                    "active": bool(self.variance[d] > ACTIVE_VARIANCE) if np.isfinite(self.variance[d]) else None,
                    "lo": float(lo[d]),
                    "hi": float(hi[d]),
                }
            )
        return out

    def info(self) -> dict[str, Any]:
        """Everything the page needs to lay itself out (JSON-ready)."""
        cfg = self.config
        collapsed = []
        if not self.is_gan and self.stats_images:
            for g in self.groups:
                if g.kind == "partition" and float(np.max(self.kl[g.start : g.stop])) < COLLAPSED_KL:
                    collapsed.append(g.name)
        return {
            "run": self.run_dir.name or str(self.run_dir),
            "model": cfg.model.name,
            "net": cfg.model.net,
            "step": self.step,
            "latent_dim": self.latent_dim,
            "image_shape": list(self.image_shape),
            "gated": bool(cfg.gating.enabled),
            "gan": self.is_gan,
            "noise_dim": self.noise_dim,
            "condition": self.condition_choices(),
            "dataset": {
                "name": cfg.data.name,
                "images": len(self.dataset) if self.dataset is not None else 0,
                "grid": bool(self.dataset.is_grid) if self.dataset is not None else False,
                "factors": self.factor_choices(),
            },
            "groups": [
                {"name": g.name, "start": g.start, "stop": g.stop, "factors": list(g.factors), "kind": g.kind}
                for g in self.groups
            ],
            "latents": self.latent_stats(),
            "stats_images": self.stats_images,
            "collapsed": collapsed,
            "metrics": self.metrics_view(),
            "notes": list(self.notes),
        }


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _clean(a: Any) -> Any:
    """A list (of lists) of floats with NaN/inf as None (strict JSON); None stays None."""
    if a is None:
        return None
    arr = np.asarray(a, dtype=np.float64)
    return [_clean(row) for row in arr] if arr.ndim > 1 else [_num(v) for v in arr.reshape(-1)]
