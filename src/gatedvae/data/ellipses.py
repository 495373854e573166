"""CorrelatedEllipses: grayscale ellipses whose factors are correlated in pairs.

CHyVAE (``004_1dabe4d22771e1b6.txt``, "Datasets", item 1b and Fig. 3-5) introduces
CorrelatedEllipses: 200,000 grayscale 64x64 images of ellipses with four ground-truth factors,
x-position correlated with y-position and scale correlated with orientation, as the
"adversarial" case for methods that push the code towards independent factors. The paper
leaves the construction to its supplementary material, which is not among our seeds, so the
choices below are ours and are stated here:

* ``(x, y, scale, orientation)`` ~ N(0, sigma^2 C) with sigma = 0.5 and C the 4x4 correlation
  matrix with ``C[x, y] = C[scale, orientation] = correlation`` (every other off-diagonal 0),
  then clipped to [-1, 1] (about 5% of values land on the bounds). With ``correlation=0`` the
  four factors are independent.
* Each factor is quantised into ``levels`` equal bins over [-1, 1]; the bin index is the factor
  class (so the metrics can group images by value) and the bin centre is the
  :class:`FactorSpace` value. Images are drawn from the bin centres, so two images with the
  same classes are identical; the continuous clipped values are kept as weak labels.
* Drawing: centre at pixel ``(32 + 16 x, 32 + 16 y)`` (x the column, y the row, pointing
  down), semi-major axis ``11 + 4 scale`` px (7..15), semi-minor half of it, angle
  ``orientation * 2*pi/5`` (+-72 degrees: an ellipse repeats after a half turn, so the range
  stays below pi to keep every orientation class distinct). The edge is anti-aliased with a
  one-pixel ramp of the ellipse's signed distance; intensities are uint8 0..255.
"""

from __future__ import annotations

import numpy as np

from ..config import DataConfig
from ..errors import DataError
from .base import FactorDataset, Uint8Store
from .factors import FactorSpace
from .registry import register_dataset

__all__ = ["make_ellipses", "render_ellipses", "ELLIPSE_FACTORS", "SIGMA"]

ELLIPSE_FACTORS: tuple[str, ...] = ("x", "y", "scale", "orientation")
SIGMA = 0.5
IMAGE_SIZE = 64
_CHUNK = 2048
_WINDOW = 32  # px: holds the largest ellipse (30 px) and its anti-aliased rim


def bin_centres(levels: int) -> np.ndarray:
    """The ``levels`` bin centres over [-1, 1]: ``(levels,)``."""
    return -1.0 + (np.arange(levels) + 0.5) * (2.0 / levels)


def quantise(values: np.ndarray, levels: int) -> np.ndarray:
    """Continuous values in [-1, 1] -> bin classes 0..levels-1 (int64, same shape)."""
    classes = np.floor((np.asarray(values) + 1.0) * (levels / 2.0)).astype(np.int64)
    return np.clip(classes, 0, levels - 1)


def render_ellipses(values: np.ndarray) -> np.ndarray:
    """Anti-aliased ellipses from factor values in [-1, 1]: uint8 ``(N, 64, 64)``.

    ``values`` is ``(N, 4)`` (x, y, scale, orientation); the mapping to pixels is in the
    module docstring. Each ellipse (at most 30 px across plus a 1 px ramp) is drawn only in the
    32x32 window around its centre and pasted into the black image, in chunks of 2048.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != 4:
        raise DataError(f"render_ellipses: expected values of shape (N, 4), got {values.shape}")
    if values.size and not (np.isfinite(values).all() and np.abs(values).max() <= 1.0):
        raise DataError("render_ellipses: factor values must lie in [-1, 1]")
    n = len(values)
    out = np.zeros((n, IMAGE_SIZE * IMAGE_SIZE), dtype=np.uint8)  # (N, 64*64)
    win = np.arange(_WINDOW)  # (W,)
    flat_offsets = (win[:, None] * IMAGE_SIZE + win[None, :]).reshape(-1)  # (W*W,) offsets of the window in a row
    for s in range(0, n, _CHUNK):
        v = values[s : s + _CHUNK]  # (B, 4)
        cx = 32.0 + 16.0 * v[:, 0]  # (B,) in [16, 48]
        cy = 32.0 + 16.0 * v[:, 1]  # (B,)
        x0 = np.clip(np.floor(cx).astype(np.int64) - _WINDOW // 2, 0, IMAGE_SIZE - _WINDOW)  # (B,) window origin
        y0 = np.clip(np.floor(cy).astype(np.int64) - _WINDOW // 2, 0, IMAGE_SIZE - _WINDOW)  # (B,)
        a = (11.0 + 4.0 * v[:, 2])[:, None, None].astype(np.float32)  # (B, 1, 1) semi-major; semi-minor a / 2
        theta = v[:, 3] * (2.0 * np.pi / 5.0)  # (B,)
        cos_a = (np.cos(theta)[:, None, None] / a).astype(np.float32)  # (B, 1, 1)
        sin_a = (np.sin(theta)[:, None, None] / a).astype(np.float32)  # (B, 1, 1)
        dx = (x0[:, None] + win[None, :] + 0.5 - cx[:, None]).astype(np.float32)[:, None, :]  # (B, 1, W) along columns
        dy = (y0[:, None] + win[None, :] + 0.5 - cy[:, None]).astype(np.float32)[
            :, :, None
        ]  # (B, W, 1) along rows (down)
        # counter-clockwise on screen (the maths frame has y up, i.e. -dy), in units of a
        u = cos_a * dx - sin_a * dy  # (B, W, W) along the major axis / a
        w = -sin_a * dx - cos_a * dy  # (B, W, W) along the minor axis / a
        u *= u
        w *= w
        r = np.sqrt(u + 4.0 * w)  # (B, W, W): 1 on the edge (b = a / 2)
        # signed distance to the edge in px, to first order: (r - 1) / |grad r|, with
        # |grad r| = sqrt(u^2 + 16 w^2) / (a r) in the squared terms above
        grad = np.sqrt(u + 16.0 * w)  # (B, W, W) = a r |grad r|
        np.maximum(grad, 1e-6, out=grad)
        dist = (r - 1.0) * r * a / grad  # (B, W, W)
        ink = np.clip(127.5 - 255.0 * dist, 0.0, 255.0)  # (B, W, W) = 255 * clip(0.5 - dist, 0, 1)
        index = (y0 * IMAGE_SIZE + x0)[:, None] + flat_offsets[None, :]  # (B, W*W)
        np.put_along_axis(out[s : s + _CHUNK], index, np.rint(ink).astype(np.uint8).reshape(len(v), -1), axis=1)
    return out.reshape(n, IMAGE_SIZE, IMAGE_SIZE)  # (N, 64, 64)


def make_ellipses(size: int = 200_000, correlation: float = 0.5, levels: int = 16, seed: int = 0) -> FactorDataset:
    """CorrelatedEllipses (CHyVAE, ``004_1dabe4d22771e1b6.txt``): ``size`` grayscale 64x64 ellipses.

    Deterministic for ``seed`` (``np.random.default_rng(seed)``). Returns a non-grid
    :class:`FactorDataset` with images in a :class:`Uint8Store` ``(N, 1, 64, 64)``, factors the
    quantised classes ``(N, 4)`` of (x, y, scale, orientation) over a :class:`FactorSpace` whose
    values are the bin centres, and weak labels the continuous clipped values ``(N, 4)``
    named ``("x", "y", "scale", "orientation")``. See the module docstring for the sampling
    and the drawing. Only the distinct class tuples are drawn (at most ``levels ** 4``), then
    gathered, so 200,000 images take a few seconds.
    """
    if int(size) < 1:
        raise DataError(f"ellipses: size must be at least 1, got {size}")
    if not -1.0 < float(correlation) < 1.0:
        raise DataError(f"ellipses: correlation must lie strictly between -1 and 1, got {correlation}")
    if int(levels) < 2:
        raise DataError(f"ellipses: levels must be at least 2, got {levels}")
    size, levels, correlation = int(size), int(levels), float(correlation)
    rng = np.random.default_rng(seed)
    corr = np.eye(4)  # (4, 4)
    corr[0, 1] = corr[1, 0] = correlation
    corr[2, 3] = corr[3, 2] = correlation
    chol = np.linalg.cholesky(corr)  # (4, 4)
    z = rng.standard_normal((size, 4)) @ chol.T  # (N, 4) ~ N(0, C)
    weak = np.clip(SIGMA * z, -1.0, 1.0)  # (N, 4)
    classes = quantise(weak, levels)  # (N, 4)
    centres = bin_centres(levels)  # (levels,)
    flat = np.ravel_multi_index(tuple(classes.T), (levels,) * 4)  # (N,)
    uniq, inverse = np.unique(flat, return_inverse=True)  # (U,), (N,)
    uniq_classes = np.stack(np.unravel_index(uniq, (levels,) * 4), axis=-1)  # (U, 4)
    drawn = render_ellipses(centres[uniq_classes])  # (U, 64, 64)
    images = drawn[inverse.reshape(-1)][:, None]  # (N, 1, 64, 64)
    space = FactorSpace(ELLIPSE_FACTORS, (levels,) * 4, [centres] * 4)
    return FactorDataset(
        "ellipses",
        Uint8Store(images),
        space,
        factors=classes,
        weak=weak,
        weak_names=ELLIPSE_FACTORS,
        description=f"CorrelatedEllipses (CHyVAE): correlation {correlation}, {levels} levels, seed {seed}",
    )


@register_dataset(
    "ellipses",
    "CorrelatedEllipses (CHyVAE): data.size ellipses with correlated factors, drawn with data.seed",
    factors=", ".join(f"{n} (data.levels)" for n in ELLIPSE_FACTORS) + "; the same four as weak labels",
    uses=("size", "correlation", "levels", "seed", "stride"),
    image_shape=lambda cfg: (1, 64, 64),
)
def _build_ellipses(cfg: DataConfig, options: dict, progress: bool) -> FactorDataset:
    ds = make_ellipses(size=cfg.size, correlation=cfg.correlation, levels=cfg.levels, seed=cfg.seed)
    return ds.subset_grid(dict(cfg.stride))
