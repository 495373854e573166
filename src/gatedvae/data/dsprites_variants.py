"""Color-, noisy- and scream-dSprites: the dSprites variants of Locatello et al. (2019,
disentanglement_lib), RGB 64x64, over dSprites' factors.

As disentanglement_lib defines them, from a binary dSprites image ``m`` (1 on the sprite):

* ``color_dsprites``: ``m * c``, a colour ``c ~ U(0.5, 1)^3`` per image (the sprite takes it, the
  background stays black);
* ``noisy_dsprites``: ``min(m + n, 1)``, noise ``n ~ U(0, 1)`` per pixel and channel (the sprite
  white, the background noise);
* ``scream_dsprites``: a random 64x64 patch ``p`` of a texture image (Munch's *The Scream* in the
  literature; any image here, ``data.options.texture``) thumbnailed to fit 350x274, tinted
  ``b = (p + u) / 2`` with ``u ~ U(0, 1)^3``, and the sprite drawn as the patch's negative
  ``1 - b``.

The difference from disentanglement_lib: it draws the colour, the noise and the patch afresh each
time an image is sampled; here each image index has its own, drawn once from ``data.seed`` (the
noise from a counter-based hash of the seed, the index and the pixel), so the data set is a fixed
set of images, metrics and pairs are reproducible and a strided subset holds the same images as
the full grid. The nuisance is the same: none of it is a factor. Nothing is stored per pixel: the
binary dSprites stay bit-packed (377 MB) and the colour is made at gather time, on the device.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import DataConfig
from ..errors import DataError
from .base import FactorDataset, ImageStore, PackedBinaryStore, as_index_tensor
from .cache import why
from .dsprites import DSPRITES_SPACE, load_dsprites_npz, make_dsprites, make_dsprites_strided
from .registry import Option, data_dir, register_dataset

__all__ = ["VariantStore", "load_texture", "make_variant", "hash_uniform", "SCREAM_BOX"]

#: The box disentanglement_lib thumbnails the Scream into (width, height).
SCREAM_BOX = (350, 274)
_MASK32 = 0xFFFFFFFF


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mix (lowbias32, Wellons) of int64 values in [0, 2^32): int64 in [0, 2^32)."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def hash_uniform(ids: torch.Tensor, seed: int, per_image: int) -> torch.Tensor:
    """Uniform [0, 1) values ``(B, per_image)`` float32, a pure function of ``(seed, id, position)``."""
    key = _hash32(torch.full((), seed, dtype=torch.int64, device=ids.device) + 0x9E3779B9)
    row = _hash32(ids.to(torch.int64) ^ key)  # (B,)
    pos = _hash32(torch.arange(per_image, dtype=torch.int64, device=ids.device) * 0x9E3779B1 + 0x632BE5AB)  # (P,)
    bits = _hash32(row[:, None] ^ pos[None, :])  # (B, P)
    return (bits >> 8).to(torch.float32) * (1.0 / (1 << 24))  # (B, P) 24-bit mantissas


def load_texture(path: Path) -> np.ndarray:
    """A texture image as float32 ``(H, W, 3)`` in [0, 1], thumbnailed to fit :data:`SCREAM_BOX`
    (as disentanglement_lib reads the Scream); one line naming the file when it is unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail(SCREAM_BOX)
            tex = np.asarray(im, dtype=np.float32) / 255.0  # (H, W, 3)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"texture image {path} is unreadable ({why(exc)}); give another image") from None
    if tex.shape[0] <= 64 or tex.shape[1] <= 64:
        raise DataError(
            f"texture image {path} is {tex.shape[1]}x{tex.shape[0]} after fitting into {SCREAM_BOX[0]}x"
            f"{SCREAM_BOX[1]}; it must be larger than 64x64 pixels"
        )
    return tex


class VariantStore(ImageStore):
    """RGB images made at gather time from bit-packed binary sprites and per-image parameters.

    ``kind``: color, noisy or scream. ``ids``: each image's index in the full dSprites grid (the
    noise's counter). ``params``: color (N, 3) colours; scream (N, 5): patch row, patch column and
    the tint ``u``. ``texture``: scream's ``(H, W, 3)`` float32.
    """

    def __init__(
        self,
        kind: str,
        base: PackedBinaryStore,
        ids: torch.Tensor,
        params: torch.Tensor | None,
        seed: int,
        texture: torch.Tensor | None = None,
    ) -> None:
        self.kind, self.base, self.seed = kind, base, int(seed)
        self.ids = ids.to(base.device)  # (N,)
        self.params = None if params is None else params.to(base.device)  # (N, P)
        self.texture = None if texture is None else texture.to(base.device)  # (H, W, 3)
        self.channels, self.height, self.width = 3, base.height, base.width

    def __len__(self) -> int:
        return len(self.base)

    @property
    def device(self) -> torch.device:
        return self.base.device

    @property
    def nbytes(self) -> int:
        extra = self.ids.numel() * 8 + (0 if self.params is None else self.params.numel() * 4)
        return self.base.nbytes + extra + (0 if self.texture is None else self.texture.numel() * 4)

    def gather(self, index: np.ndarray | torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        idx = as_index_tensor(index, self.device)  # (B,)
        mask = self.base.gather(idx)  # (B, 1, H, W) in {0, 1}
        b, h, w = len(idx), self.height, self.width
        if self.kind == "color":
            rgb = mask * self.params.index_select(0, idx)[:, :, None, None]  # (B, 3, H, W)
        elif self.kind == "noisy":
            noise = hash_uniform(self.ids.index_select(0, idx), self.seed, 3 * h * w).view(b, 3, h, w)  # (B, 3, H, W)
            rgb = torch.clamp(mask + noise, max=1.0)  # (B, 3, H, W)
        else:
            p = self.params.index_select(0, idx)  # (B, 5)
            top, left = p[:, 0].long(), p[:, 1].long()  # (B,), (B,)
            rows = top[:, None] + torch.arange(h, device=self.device)  # (B, H)
            cols = left[:, None] + torch.arange(w, device=self.device)  # (B, W)
            patch = self.texture[rows[:, :, None], cols[:, None, :]]  # (B, H, W, 3)
            back = (patch + p[:, None, None, 2:]) * 0.5  # (B, H, W, 3)
            back = back.permute(0, 3, 1, 2)  # (B, 3, H, W)
            rgb = torch.where(mask > 0.5, 1.0 - back, back)  # (B, 3, H, W)
        return rgb if out is None else out.copy_(rgb)

    def gather_uint8(self, index: np.ndarray | torch.Tensor) -> torch.Tensor:
        return self.gather(index).mul_(255.0).round_().to(torch.uint8)

    def to(self, device: torch.device | str) -> VariantStore:
        tex = None if self.texture is None else self.texture.to(device)
        return VariantStore(self.kind, self.base.to(device), self.ids.to(device), self.params, self.seed, tex)

    def subset(self, index: np.ndarray) -> VariantStore:
        idx = as_index_tensor(index, self.device)
        params = None if self.params is None else self.params.index_select(0, idx)
        return VariantStore(
            self.kind, self.base.subset(index), self.ids.index_select(0, idx), params, self.seed, self.texture
        )


def _params(kind: str, n_grid: int, seed: int, texture: np.ndarray | None) -> np.ndarray | None:
    """Per-image parameters over the full grid, drawn from ``seed``: float32 ``(n_grid, P)``."""
    rng = np.random.default_rng([seed, {"color": 1, "noisy": 2, "scream": 3}[kind]])
    if kind == "color":
        return rng.uniform(0.5, 1.0, size=(n_grid, 3)).astype(np.float32)  # (N, 3)
    if kind == "scream":
        top = rng.integers(0, texture.shape[0] - 64, size=n_grid)  # (N,) as randint(0, H - 64)
        left = rng.integers(0, texture.shape[1] - 64, size=n_grid)  # (N,)
        tint = rng.uniform(0.0, 1.0, size=(n_grid, 3))  # (N, 3)
        return np.column_stack([top, left, tint]).astype(np.float32)  # (N, 5)
    return None


def make_variant(
    kind: str, base: FactorDataset, grid_ids: np.ndarray, seed: int, texture: np.ndarray | None = None
) -> FactorDataset:
    """The ``kind`` variant of a binary dSprites dataset whose images sit at ``grid_ids`` of the full grid."""
    if not isinstance(base.store, PackedBinaryStore):
        raise DataError(f"{kind}_dsprites needs binary dSprites; got a {type(base.store).__name__}")
    grid_ids = np.asarray(grid_ids, dtype=np.int64)
    full = _params(kind, len(DSPRITES_SPACE), seed, texture)
    params = None if full is None else torch.from_numpy(full[grid_ids])
    tex = None if texture is None else torch.from_numpy(texture)
    store = VariantStore(kind, base.store, torch.from_numpy(grid_ids), params, seed, tex)
    return FactorDataset(
        f"{kind}_dsprites",
        store,
        base.factor_space,
        factors=None if base.is_grid else base.factors,
        description=f"{kind}-dSprites (disentanglement_lib's definition, per-image nuisance from seed {seed}) "
        f"over {base.description or 'dSprites'}",
    )


def _base(cfg: DataConfig) -> tuple[FactorDataset, np.ndarray]:
    """Binary dSprites (the official file at data.path, else procedural) with data.stride, and the
    full-grid index of each of its images."""
    strides = dict(cfg.stride)
    _, ids = DSPRITES_SPACE.subspace(strides) if strides else (None, np.arange(len(DSPRITES_SPACE)))
    if cfg.path:
        ds = load_dsprites_npz(cfg.path)
        if not ds.is_grid:
            raise DataError(f"{cfg.path} is not the complete official dSprites grid; the variants need it")
        return ds.subset_grid(strides), ids
    if strides:
        return make_dsprites_strided(strides), ids
    return make_dsprites(), ids


_TEXTURE_DOC = (
    "texture image for scream_dsprites (default: <data_dir>/scream/The_Scream.jpg, gatedvae data download scream)"
)


def _register(kind: str, what: str, options: dict | None = None):
    @register_dataset(
        f"{kind}_dsprites",
        f"{kind}-dSprites (disentanglement_lib): {what}; RGB 64x64 over dSprites' factors",
        factors=", ".join(f"{n} ({s})" for n, s in zip(DSPRITES_SPACE.names, DSPRITES_SPACE.sizes, strict=True)),
        uses=("path", "stride", "seed", "data_dir"),
        options=options or {},
        image_shape=lambda cfg: (3, 64, 64),
    )
    def build(cfg: DataConfig, opts: dict, progress: bool) -> FactorDataset:
        texture = None
        if kind == "scream":
            tex_path = (
                Path(opts["texture"]).expanduser()
                if opts["texture"]
                else data_dir(cfg.data_dir) / "scream" / "The_Scream.jpg"
            )
            if not tex_path.is_file():
                raise DataError(
                    f"scream_dsprites needs a texture image and {tex_path} does not exist; set "
                    "data.options.texture=IMAGE or run `gatedvae data download scream`"
                )
            texture = load_texture(tex_path)
        base, ids = _base(cfg)
        return make_variant(kind, base, ids, cfg.seed, texture)

    return build


_register("color", "each sprite in a random colour from U(0.5, 1)^3")
_register("noisy", "white sprites on uniform noise")
_register("scream", "the sprite as the negative of a tinted texture patch", {"texture": Option("", _TEXTURE_DOC)})
