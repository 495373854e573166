"""Procedural faces: head pose apart from expression, with tracker-like weak labels.

The Gated-VAE paper's second experiment (``000_fc03c6fb001bc541.txt``, section IV-B) separates
head pose from facial expression on CelebA, supervised only by OpenFace 2.0 outputs (pitch and
yaw; facial action-unit intensities) clustered by k-means into 2,500 pose and 4,000 expression
clusters, with latent partitions of 6 (pose) and 18 (expression) dimensions. CelebA has no
ground truth, so the paper judges the result by eye. This dataset has the same structure *with*
ground truth: nine known factors, and a labels table that looks like a face tracker's output.

Factors (canonical order; image ``i`` has the classes ``np.unravel_index(i, sizes)``):

=========== ===== ============================================================================
factor      size  values
=========== ===== ============================================================================
yaw         9     -40 .. 40 degrees, step 10 (positive: the nose turns to the viewer's right)
pitch       5     -20 .. 20 degrees, step 10 (positive: the head tilts down)
smile       5     -1 (frown: mouth corners down) .. 1 (smile: corners up, mouth wider)
mouth       4     0 (closed) .. 1 (open: jaw dropped, teeth showing)
brow        3     -1 (lowered, inner ends down), 0, 1 (raised and arched)
eyes        3     0 (closed), 0.5 (relaxed), 1 (wide open)
width       3     0.88, 1, 1.12 (face width relative to the middle one)
skin        3     0 light, 1 medium, 2 dark
hair        3     0 short, 1 medium (covers the sides), 2 long (falls below the chin)
=========== ===== ============================================================================

218,700 images of 64x64, uint8 (896 MB grayscale); ``stride`` keeps every k-th class of named
factors (``{yaw: 2, smile: 2}``, ...) and renders only that subset.

Rendering (ours; no per-pixel Python). A head is an ellipsoid (semi-axes ``0.74 width``, 1,
0.82 head units) with an ellipsoidal nose and two ears, plus, for medium and long hair, a
larger ellipsoid of hair behind it. The scene is rotated by yaw then pitch (``R = Rx(pitch)
Ry(yaw)``) and projected orthographically: every sub-pixel casts a ray, the nearest surface
hit wins, and it is shaded with a Lambertian light from the upper left. The crops are
*aligned* as a face tracker aligns them (the paper's CelebA was aligned by OpenFace): the point
between the eyes stays at one pixel whatever the pose, so turning moves the head outline,
nose and ears around the eyes rather than the eyes across the image. The eyes, brows and
mouth are drawn in the face's *surface* coordinates (``x / a_x``, ``y / a_y`` of the hit
point), so they are foreshortened, shift and disappear behind the nose as a real face's
features would. Edges are anti-aliased by a soft one-sub-pixel ramp and 2x2 supersampling.
The full grid is rendered in layers (a base image per pose, width, skin and hair; the mouth,
eyes and brows as alpha layers per pose and width) and composed by broadcasting, so building
it takes seconds; :func:`render_faces` draws any factor values (also continuous pose) image
by image with the same layers, and gives the same pixels as the grid.

Weak labels (:func:`tracker_labels`): columns named like OpenFace 2.0's CSV output --
``pose_Rx`` (pitch), ``pose_Ry`` (yaw), ``pose_Rz`` (roll, always 0 here) in radians, and the
action-unit intensities ``AU01_r`` ... ``AU45_r`` on OpenFace's 0..5 scale, each computed from
the true factors (the mapping is in :data:`AU_MAP`) plus Gaussian noise (``pose_noise``
degrees, ``au_noise`` intensity units), AUs clipped to [0, 5]. The noise of image ``i`` is a
hash of ``(seed, i, column)``, so a strided subset has exactly the labels of the same images
in the full grid.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..config import DataConfig
from ..errors import DataError
from .base import FactorDataset, Uint8Store
from .factors import FactorSpace
from .registry import register_dataset

__all__ = [
    "FACE_SPACE",
    "FACE_GROUPS",
    "RANGES",
    "POSE_COLUMNS",
    "AU_COLUMNS",
    "LABEL_COLUMNS",
    "AU_MAP",
    "PAPER_IMAGES",
    "PAPER_CLUSTERS",
    "make_faces",
    "render_faces",
    "tracker_labels",
    "paper_cluster_counts",
    "export_faces",
]

FACE_SPACE = FactorSpace(
    names=("yaw", "pitch", "smile", "mouth", "brow", "eyes", "width", "skin", "hair"),
    sizes=(9, 5, 5, 4, 3, 3, 3, 3, 3),
    values=(
        np.linspace(-40.0, 40.0, 9),
        np.linspace(-20.0, 20.0, 5),
        np.linspace(-1.0, 1.0, 5),
        np.linspace(0.0, 1.0, 4),
        np.array([-1.0, 0.0, 1.0]),
        np.array([0.0, 0.5, 1.0]),
        np.array([0.88, 1.0, 1.12]),
        np.array([0.0, 1.0, 2.0]),
        np.array([0.0, 1.0, 2.0]),
    ),
)

#: The values :func:`render_faces` accepts per factor: the grid's ranges, any value in between
#: (the feature boxes and the hair/face layering are checked over these ranges; beyond them, at
#: steeper poses, the hair volume could come in front of a mouth corner).
RANGES: dict[str, tuple[float, float]] = {
    "yaw": (-40.0, 40.0),
    "pitch": (-20.0, 20.0),
    "smile": (-1.0, 1.0),
    "mouth": (0.0, 1.0),
    "brow": (-1.0, 1.0),
    "eyes": (0.0, 1.0),
    "width": (0.85, 1.15),
    "skin": (0.0, 2.0),
    "hair": (0.0, 2.0),
}

#: Which factors a partition should hold: the paper's two partitions, plus the appearance
#: factors that no weak label describes.
FACE_GROUPS: dict[str, tuple[str, ...]] = {
    "pose": ("yaw", "pitch"),
    "expression": ("smile", "mouth", "brow", "eyes"),
    "identity": ("width", "skin", "hair"),
}

POSE_COLUMNS: tuple[str, ...] = ("pose_Rx", "pose_Ry", "pose_Rz")
#: Action units (FACS) an expression factor moves, with the intensity (0..5) as a function of
#: the factor value: brow raise -> AU01/AU02 (inner/outer brow raiser), brow lowering -> AU04;
#: wide eyes -> AU05 (upper lid raiser), closing eyes -> AU45 (blink); smile -> AU12 (lip
#: corner puller) and AU06 (cheek raiser), frown -> AU15 (lip corner depressor); mouth opening
#: -> AU25 (lips part) and AU26 (jaw drop).
AU_MAP: dict[str, tuple[str, str]] = {
    "AU01_r": ("brow", "5 * max(brow, 0)"),
    "AU02_r": ("brow", "4 * max(brow, 0)"),
    "AU04_r": ("brow", "5 * max(-brow, 0)"),
    "AU05_r": ("eyes", "10 * max(eyes - 0.5, 0)"),
    "AU06_r": ("smile", "3 * max(smile, 0)"),
    "AU12_r": ("smile", "5 * max(smile, 0)"),
    "AU15_r": ("smile", "5 * max(-smile, 0)"),
    "AU25_r": ("mouth", "5 * mouth"),
    "AU26_r": ("mouth", "5 * max(mouth - 0.3, 0) / 0.7"),
    "AU45_r": ("eyes", "10 * max(0.5 - eyes, 0)"),
}
AU_COLUMNS: tuple[str, ...] = tuple(AU_MAP)
LABEL_COLUMNS: tuple[str, ...] = POSE_COLUMNS + AU_COLUMNS

#: The paper's CelebA size and cluster counts (section IV-B): 202,599 images, 2,500 pose and
#: 4,000 expression clusters.
PAPER_IMAGES = 202_599
PAPER_CLUSTERS: dict[str, int] = {"pose": 2500, "expression": 4000}

IMAGE_SIZE = 64
_SS = 2  # supersampling per axis
_HEAD_SCALE = 0.44  # head units -> fraction of the image side (the head is 1 unit tall above its centre)
_CENTRE_Y = 0.47  # head centre, fraction of the image height from the top
_AX, _AY, _AZ = 0.74, 1.0, 0.82  # head semi-axes at width 1
_LIGHT = np.array([-0.35, 0.45, 1.0]) / np.linalg.norm([-0.35, 0.45, 1.0])  # view frame, towards the light
_EYE_LINE = 0.12  # height of the eyes' centres on the face (y / a_y)
_RAMP = 0.03  # soft edge of the features, in face surface units (about half a pixel)

# Colours (RGB in [0, 1]); grayscale images use their luma (ITU-R 601-2, as Pillow's "L").
_SKIN = np.array([[0.96, 0.80, 0.69], [0.80, 0.60, 0.45], [0.50, 0.34, 0.25]])
_HAIR = np.array([0.20, 0.14, 0.10])
_BACKGROUND = np.array([0.52, 0.60, 0.70])
_SCLERA = np.array([0.95, 0.95, 0.93])
_IRIS = np.array([0.16, 0.12, 0.10])
_LINE = np.array([0.10, 0.08, 0.07])  # eyelids, brows
_LIPS = np.array([0.55, 0.25, 0.25])
_MOUTH = np.array([0.12, 0.03, 0.03])
_TEETH = np.array([0.92, 0.92, 0.88])
_LUMA = np.array([0.299, 0.587, 0.114])


def _colour(rgb: np.ndarray, channels: int) -> np.ndarray:
    """An RGB colour (or palette ``(n, 3)``) in the image's channels: ``(..., C)`` float32."""
    rgb = np.asarray(rgb, dtype=np.float64)
    out = rgb if channels == 3 else (rgb @ _LUMA)[..., None]
    return out.astype(np.float32)


def _smooth_inside(d: np.ndarray, ramp: float = _RAMP) -> np.ndarray:
    """Coverage from a signed distance ``d`` (negative inside): 1 inside, 0 outside, linear ramp."""
    return np.clip(0.5 - d / ramp, 0.0, 1.0)


# ---------------------------------------------------------------------------------- geometry
def _rotations(yaw_deg: np.ndarray, pitch_deg: np.ndarray) -> np.ndarray:
    """``R = Rx(pitch) @ Ry(yaw)`` (head frame -> view frame): ``(B, 3, 3)`` float64.

    Written out entry by entry (no batched matmul), so every image gets bitwise the same
    matrix however many are rendered together.
    """
    y = np.deg2rad(np.asarray(yaw_deg, dtype=np.float64))  # (B,)
    p = np.deg2rad(np.asarray(pitch_deg, dtype=np.float64))  # (B,)
    cy, sy, cp, sp = np.cos(y), np.sin(y), np.cos(p), np.sin(p)
    zero = np.zeros_like(y)
    rows = [
        np.stack([cy, zero, sy], -1),
        np.stack([sp * sy, cp, -sp * cy], -1),
        np.stack([-cp * sy, sp, cp * cy], -1),
    ]
    return np.stack(rows, -2)  # (B, 3, 3)


def _view_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel centres in the view frame (head units): ``qx (W*ss,)``, ``qy (H*ss,)`` (y up)."""
    n = size * _SS
    pix = (np.arange(n) + 0.5) / _SS  # (n,) in output pixels
    scale = _HEAD_SCALE * size  # px per head unit
    qx = (pix - size / 2.0) / scale  # (n,)
    qy = -(pix - _CENTRE_Y * size) / scale  # (n,)
    return qx.astype(np.float32), qy.astype(np.float32)


def _cast(rot: np.ndarray, qx: np.ndarray, qy: np.ndarray, centre: np.ndarray, axes: np.ndarray):
    """Ray-cast ellipsoids (head frame: ``centre``, semi-``axes``, each ``(B, 3)``) seen through ``rot``.

    ``qx (B, W)`` and ``qy (B, H)`` are each image's sub-pixel centres in the view frame. The
    view ray of sub-pixel ``(qx, qy)`` is ``(qx, qy, t)``; in the head frame it is
    ``R^T (qx, qy, 0) + t R^T e_z``. Returns ``t`` of the nearest hit (largest t; -inf where
    the ray misses), and the hit point in the head frame, ``(B, H, W)`` and ``(B, 3, H, W)``.
    """
    r = rot.astype(np.float32)  # (B, 3, 3)
    inv_a = (1.0 / axes).astype(np.float32)  # (B, 3)
    d = r[:, 2, :] * inv_a  # (B, 3): ray direction, in units of the axes
    # p0_i = (qx R[0, i] + qy R[1, i] - c_i) / a_i, separable over rows and columns
    px = r[:, 0, :, None] * qx[:, None, :] * inv_a[:, :, None]  # (B, 3, W)
    py = (r[:, 1, :, None] * qy[:, None, :] - centre[:, :, None].astype(np.float32)) * inv_a[:, :, None]  # (B, 3, H)
    p0 = py[:, :, :, None] + px[:, :, None, :]  # (B, 3, H, W)
    a = (d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1] + d[:, 2] * d[:, 2])[:, None, None]  # (B, 1, 1)
    # explicit sums over the 3 axes (not einsum): the same arithmetic for any batch size
    dd = d[:, :, None, None]  # (B, 3, 1, 1)
    b = p0[:, 0] * dd[:, 0] + p0[:, 1] * dd[:, 1] + p0[:, 2] * dd[:, 2]  # (B, H, W)
    c = p0[:, 0] * p0[:, 0] + p0[:, 1] * p0[:, 1] + p0[:, 2] * p0[:, 2] - 1.0  # (B, H, W)
    disc = b * b - a * c  # (B, H, W)
    hit = disc >= 0.0
    t = (-b + np.sqrt(np.maximum(disc, 0.0))) / a  # (B, H, W)
    t = np.where(hit, t, -np.inf).astype(np.float32)
    # hit point in the head frame: (p0 + t d) * a + c ... kept in axis units (unit sphere)
    unit = p0 + np.where(hit, t, 0.0)[:, None] * d[:, :, None, None]  # (B, 3, H, W) on the unit sphere
    return t, unit


def _shade(rot: np.ndarray, unit: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """Lambertian shading ``0.3 + 0.7 max(n . L, 0)`` of unit-sphere points of an ellipsoid: ``(B, H, W)``."""
    n_head = unit / axes[:, :, None, None].astype(np.float32)  # (B, 3, H, W): gradient of the ellipsoid
    light_head = (rot[:, 0, :] * _LIGHT[0] + rot[:, 1, :] * _LIGHT[1] + rot[:, 2, :] * _LIGHT[2]).astype(
        np.float32
    )  # (B, 3): R^T L
    lh = light_head[:, :, None, None]  # (B, 3, 1, 1)
    dot = n_head[:, 0] * lh[:, 0] + n_head[:, 1] * lh[:, 1] + n_head[:, 2] * lh[:, 2]  # (B, H, W)
    norm = np.sqrt(n_head[:, 0] * n_head[:, 0] + n_head[:, 1] * n_head[:, 1] + n_head[:, 2] * n_head[:, 2])  # (B, H, W)
    return 0.3 + 0.7 * np.maximum(dot / np.maximum(norm, 1e-6), 0.0)


def _hair_cap(unit: np.ndarray, style: np.ndarray) -> np.ndarray:
    """Which points of the head (unit-sphere coordinates) are covered by hair: ``(B, H, W)`` bool.

    All styles: the crown above a hairline at 0.7 on the forehead that curves down at the
    temples, and the back of the head. Medium and long hair also cover the sides (|x| > 0.8,
    outside every facial feature) down to the ear tops.
    """
    x, y, z = unit[:, 0], unit[:, 1], unit[:, 2]  # (B, H, W) each
    line = 0.7 - 0.35 * x * x - 0.9 * np.clip(0.35 - z, 0.0, None)  # (B, H, W)
    cap = y > line
    sides = (np.abs(x) > 0.8) & (y > -0.05)
    return cap | (sides & (style[:, None, None] >= 1))


def _scene(yaw, pitch, width, hair, size: int):
    """Ray-cast the head, nose, ears and hair of B faces at 2x supersampling.

    Returns a dict of sub-pixel arrays ``(B, H*2, W*2)``: ``skin`` and ``hairc`` (shaded
    coverage of skin and of hair), ``bg`` (background, 0/1), and the face surface ``u``, ``v``
    (x / a_x, y / a_y) with ``face`` (1 where the nearest hit is bare face skin, where features
    may be drawn) and its ``shade``.
    """
    yaw, pitch, width = (np.asarray(v, dtype=np.float64).reshape(-1) for v in (yaw, pitch, width))
    hair = np.asarray(hair).reshape(-1).astype(np.int64)
    bsz = yaw.size
    rot = _rotations(yaw, pitch)  # (B, 3, 3)
    qx, qy = _view_grid(size)
    # Aligned crops, as a face tracker makes them: the point between the eyes stays at its
    # frontal pixel whatever the pose, so the head (not the eyes) moves as it turns.
    eye_z = _AZ * math.sqrt(1.0 - _EYE_LINE**2)
    shift_x = rot[:, 0, 1] * _EYE_LINE + rot[:, 0, 2] * eye_z  # (B,) view x of the eye midpoint
    shift_y = rot[:, 1, 1] * _EYE_LINE + rot[:, 1, 2] * eye_z - _EYE_LINE  # (B,) its view y, less the frontal one
    qx = (qx[None, :] + shift_x[:, None].astype(np.float32)).astype(np.float32)  # (B, W)
    qy = (qy[None, :] + shift_y[:, None].astype(np.float32)).astype(np.float32)  # (B, H)
    ax = _AX * width  # (B,)
    ones = np.ones(bsz)
    zeros = np.zeros(bsz)
    head_c = np.zeros((bsz, 3))
    head_a = np.stack([ax, _AY * ones, _AZ * ones], -1)  # (B, 3)
    t_head, u_head = _cast(rot, qx, qy, head_c, head_a)
    nose_c = np.stack([zeros, -0.14 * ones, 0.74 * ones], -1)
    nose_a = np.tile([0.10, 0.22, 0.20], (bsz, 1))
    t_nose, u_nose = _cast(rot, qx, qy, nose_c, nose_a)
    ears = []
    for side in (-1.0, 1.0):
        ear_c = np.stack([side * 0.97 * ax, 0.02 * ones, -0.05 * ones], -1)
        ear_a = np.tile([0.08, 0.21, 0.12], (bsz, 1))
        ears.append((_cast(rot, qx, qy, ear_c, ear_a), ear_a))
    # hair volume behind the head: medium (a thin rim) and long (down past the chin)
    vol_c = np.where(hair[:, None] == 2, [[0.0, -0.12, -0.28]], [[0.0, 0.06, -0.14]])  # (B, 3)
    vol_a = np.where(
        hair[:, None] == 2,
        np.stack([ax + 0.2, 1.12 * ones, 0.74 * ones], -1),
        np.stack([ax + 0.08, 1.03 * ones, 0.8 * ones], -1),
    )  # (B, 3)
    t_vol, u_vol = _cast(rot, qx, qy, vol_c, vol_a)
    t_vol = np.where((hair >= 1)[:, None, None], t_vol, -np.inf)

    ts = np.stack([t_head, t_nose, ears[0][0][0], ears[1][0][0], t_vol])  # (5, B, H, W)
    which = ts.argmax(axis=0)  # (B, H, W): 0 head, 1 nose, 2-3 ears, 4 hair volume
    anything = np.isfinite(ts.max(axis=0))  # (B, H, W)
    shade_head = _shade(rot, u_head, head_a)
    shade = np.where(which == 0, shade_head, 0.0)
    shade = np.where(which == 1, _shade(rot, u_nose, nose_a), shade)
    for k, ((_, u_ear), ear_a) in enumerate(ears):
        shade = np.where(which == 2 + k, _shade(rot, u_ear, ear_a), shade)
    shade = np.where(which == 4, _shade(rot, u_vol, vol_a), shade).astype(np.float32)
    on_head = anything & (which == 0)
    capped = _hair_cap(u_head, hair) & on_head
    is_hair = capped | (anything & (which == 4))
    is_skin = anything & ~is_hair
    # Features live on the face: head hits nearer than the nose and ears, under the front
    # hairline that every style shares. The hair volume is left out on purpose, so the face
    # layer does not depend on the hair style (the grid renders it once per pose and width);
    # the volume lies behind the face wherever a feature is drawn.
    face = (ts[:4].argmax(axis=0) == 0) & np.isfinite(t_head) & ~_hair_cap(u_head, np.zeros_like(hair))
    return {
        "skin": np.where(is_skin, shade, 0.0).astype(np.float32),
        "hairc": np.where(is_hair, shade, 0.0).astype(np.float32),
        "bg": (~anything).astype(np.float32),
        "u": u_head[:, 0],
        "v": u_head[:, 1],
        "face": face.astype(np.float32),
        "shade": shade_head.astype(np.float32),
    }


def _down(x: np.ndarray) -> np.ndarray:
    """Box-filter the 2x2 sub-pixels of ``(..., H*2, W*2)`` to ``(..., H, W)`` (fixed summation order)."""
    return (x[..., 0::2, 0::2] + x[..., 1::2, 0::2] + x[..., 0::2, 1::2] + x[..., 1::2, 1::2]) * np.float32(0.25)


# ---------------------------------------------------------------------------------- features
class _Layer:
    """Premultiplied 'over' compositing of coloured coverages: ``alpha`` and ``colour * alpha``."""

    def __init__(self, shape: tuple[int, ...], channels: int) -> None:
        self.alpha = np.zeros(shape, dtype=np.float32)  # (..., H, W)
        self.premul = np.zeros((*shape[:-2], channels, *shape[-2:]), dtype=np.float32)  # (..., C, H, W)

    def over(self, cover: np.ndarray, colour: np.ndarray) -> None:
        """Paint ``colour (C,)`` with coverage ``cover (..., H, W)`` on top."""
        keep = 1.0 - cover
        self.premul *= keep[..., None, :, :]
        self.premul += cover[..., None, :, :] * colour[:, None, None]
        self.alpha = cover + keep * self.alpha

    def finish(self, face: np.ndarray, shade: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mask by the face, shade, and box-filter: alpha ``(..., h, w)``, premultiplied ``(..., C, h, w)``."""
        alpha = self.alpha * face
        premul = self.premul * (face * shade)[..., None, :, :]
        return _down(alpha), _down(premul)


def _eyes(u, v, eyes, channels: int):
    """Both eyes: a lens between the lids (its height from ``eyes``), iris, lid lines.

    ``u, v (G, H, W)`` face coordinates of G geometries, ``eyes (G or 1, E)`` openness ->
    layer over ``(G, E, H, W)``.
    """
    e = np.asarray(eyes, dtype=np.float32)[:, :, None, None]  # (G|1, E, 1, 1)
    layer = _Layer((u.shape[0], e.shape[1], *u.shape[1:]), channels)
    half = 0.2
    upper = 0.016 + 0.12 * e  # lid heights at the eye's middle
    lower = 0.012 + 0.06 * e
    for cx in (-0.37, 0.37):
        dx = (u - cx)[:, None]  # (B, 1, H, W)
        dy = (v - _EYE_LINE)[:, None]
        w = np.clip(1.0 - (dx / half) ** 2, 0.0, None)  # (B, 1, H, W) lid profile
        lens = np.maximum(np.maximum(dy - upper * w, -lower * w - dy), np.abs(dx) - half)  # (B, E, H, W)
        inside = _smooth_inside(lens)
        iris = np.minimum(inside, _smooth_inside(np.sqrt(dx * dx + dy * dy) - 0.085))
        lid = _smooth_inside(np.maximum(np.abs(dy - upper * w - 0.006) - 0.025, np.abs(dx) - half - 0.01))
        lash = _smooth_inside(np.maximum(np.abs(dy + lower * w) - 0.008, np.abs(dx) - half))
        layer.over(inside, _colour(_SCLERA, channels))
        layer.over(iris, _colour(_IRIS, channels))
        layer.over(np.maximum(lid, lash), _colour(_LINE, channels))
    return layer


def _brows(u, v, brow, channels: int):
    """Both brows: arcs raised and arched with ``brow`` > 0, lowered with inner ends down < 0.

    ``brow (G or 1, R)`` -> layer over ``(G, R, H, W)``.
    """
    b = np.asarray(brow, dtype=np.float32)[:, :, None, None]  # (G|1, R, 1, 1)
    layer = _Layer((u.shape[0], b.shape[1], *u.shape[1:]), channels)
    half = 0.2
    for cx in (-0.37, 0.37):
        s = (u - cx)[:, None] / half  # (B, 1, H, W) along the brow, -1..1
        inner = -s if cx > 0 else s  # +1 at the inner end (towards the nose)
        centre = (
            0.42 + 0.08 * b + (0.035 + 0.04 * np.maximum(b, 0.0)) * (1.0 - s * s) - 0.06 * np.maximum(-b, 0.0) * inner
        )
        d = np.maximum(np.abs(v[:, None] - centre) - 0.04, np.abs(s) * half - half)  # (B, R, H, W)
        layer.over(_smooth_inside(d), _colour(_LINE, channels))
    return layer


def _mouth(u, v, smile, mouth, channels: int):
    """The mouth: corners up (smile > 0) or down, opening with ``mouth`` (dark inside, teeth on top).

    ``smile (G or 1, S)`` and ``mouth (G or 1, O)`` -> layer over ``(G, S, O, H, W)``.
    """
    sm = np.asarray(smile, dtype=np.float32)[:, :, None, None, None]  # (G|1, S, 1, 1, 1)
    op = np.asarray(mouth, dtype=np.float32)[:, None, :, None, None]  # (G|1, 1, O, 1, 1)
    layer = _Layer((u.shape[0], sm.shape[1], op.shape[2], *u.shape[1:]), channels)
    half = 0.4 + 0.06 * np.maximum(sm, 0.0)  # (1, S, 1, 1, 1)
    x = u[:, None, None] / half  # (B, S, 1, H, W)
    y = v[:, None, None]
    w = np.clip(1.0 - x * x, 0.0, None)
    mid = -0.52 + 0.15 * sm * (x * x - 0.35)  # (B, S, 1, H, W) corners up for a smile
    top = mid + 0.07 * op * w  # (B, S, O, H, W)
    bottom = mid - 0.28 * op * w
    ends = np.abs(x) * half - half
    inside = _smooth_inside(np.maximum(np.maximum(y - top, bottom - y), ends))
    teeth = np.minimum(inside, _smooth_inside(top - 0.06 * op * w - y))
    lips = _smooth_inside(np.maximum(np.minimum(np.abs(y - top), np.abs(y - bottom)) - 0.025, ends - 0.01))
    layer.over(lips, _colour(_LIPS, channels))
    layer.over(inside, _colour(_MOUTH, channels))
    layer.over(teeth, _colour(_TEETH, channels))
    return layer


#: Where each feature can have non-zero coverage, in face coordinates: (v_min, v_max, |u|_max).
#: Conservative bounds (the shapes above stay inside them for every allowed factor value); each
#: feature is drawn only in the sub-pixel box that holds these face points, a few times faster
#: than over the whole image, and exactly zero elsewhere.
_BOXES: dict[str, tuple[float, float, float]] = {
    "eyes": (-0.15, 0.4, 0.62),
    "brows": (0.15, 0.68, 0.62),
    "mouth": (-0.95, -0.2, 0.52),
}
_DRAW = {"eyes": _eyes, "brows": _brows, "mouth": _mouth}


def _feature(kind: str, sc: dict, params: Sequence[np.ndarray], channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Box-filtered alpha ``(G, *P, h, w)`` and premultiplied colour ``(G, *P, C, h, w)`` of one feature.

    ``sc`` holds the sub-pixel face arrays ``u, v, face, shade (G, H, W)`` of G geometries;
    ``params`` the feature's parameter arrays (``(G or 1, n)`` each), whose sizes make ``P``.
    """
    u, v, face, shade = sc["u"], sc["v"], sc["face"], sc["shade"]
    g, hs, ws = u.shape
    v_lo, v_hi, u_max = _BOXES[kind]
    where = (face > 0) & (v >= v_lo) & (v <= v_hi) & (np.abs(u) <= u_max)  # (G, H, W)
    rows = np.flatnonzero(where.any(axis=(0, 2)))
    cols = np.flatnonzero(where.any(axis=(0, 1)))
    extra = tuple(np.asarray(p).shape[1] for p in params)
    alpha = np.zeros((g, *extra, hs // _SS, ws // _SS), dtype=np.float32)  # (G, *P, h, w)
    premul = np.zeros((g, *extra, channels, hs // _SS, ws // _SS), dtype=np.float32)  # (G, *P, C, h, w)
    if rows.size == 0:
        return alpha, premul
    r0, r1 = rows[0] // _SS * _SS, (rows[-1] // _SS + 1) * _SS
    c0, c1 = cols[0] // _SS * _SS, (cols[-1] // _SS + 1) * _SS
    crop = (slice(None), slice(r0, r1), slice(c0, c1))
    layer = _DRAW[kind](u[crop], v[crop], *params, channels)
    expand = (slice(None),) + (None,) * len(extra)
    a, p = layer.finish(face[crop][expand], shade[crop][expand])
    alpha[..., r0 // _SS : r1 // _SS, c0 // _SS : c1 // _SS] = a
    premul[..., r0 // _SS : r1 // _SS, c0 // _SS : c1 // _SS] = p
    return alpha, premul


# ---------------------------------------------------------------------------------- composing
def _base(scene_skin, scene_hair, scene_bg, skin, channels: int) -> np.ndarray:
    """Base image (no features) from the box-filtered scene layers ``(..., h, w)`` and skin tone(s).

    ``skin`` broadcasts against the leading dims; its palette colour is interpolated for
    non-integer tones. Returns ``(..., C, h, w)``.
    """
    tone = np.clip(np.asarray(skin, dtype=np.float64), 0.0, 2.0)
    lo = np.floor(tone).astype(np.int64).clip(0, 1)
    frac = (tone - lo)[..., None]
    palette = _colour(_SKIN, 3) if channels == 3 else _colour(_SKIN, 1)  # (3, C)
    skin_col = ((1.0 - frac) * palette[lo] + frac * palette[lo + 1]).astype(np.float32)  # (..., C)
    out = scene_skin[..., None, :, :] * skin_col[..., :, None, None]
    out = out + scene_hair[..., None, :, :] * _colour(_HAIR, channels)[:, None, None]
    out = out + scene_bg[..., None, :, :] * _colour(_BACKGROUND, channels)[:, None, None]
    return out


def _compose(base: np.ndarray, alpha: np.ndarray, premul: np.ndarray) -> np.ndarray:
    """``base * (1 - alpha) + premul`` as uint8 (rounded half up); ``alpha`` broadcasts over channels.

    Every term lies in [0, 1] (coverages sum to at most 1, colours and shading are at most 1,
    the feature layers never overlap), so no clipping is needed. Both renderers call this, so
    the grid and :func:`render_faces` round identically.
    """
    img = base * (1.0 - np.minimum(alpha, 1.0)) + premul  # (..., C, S, S)
    img *= 255.0
    img += 0.5
    return img.astype(np.uint8)


def _check_size(image_size: int) -> int:
    size = int(image_size)
    if size < 16 or size > 512:
        raise DataError(f"faces: image_size must lie in 16..512, got {image_size}")
    return size


def render_faces(values: np.ndarray, color: str = "gray", image_size: int = IMAGE_SIZE, chunk: int = 256) -> np.ndarray:
    """Faces from factor values, image by image: uint8 ``(N, C, S, S)``.

    ``values`` is ``(N, 9)`` in :data:`FACE_SPACE` order and units; every factor may take any
    value in its :data:`RANGES` interval (continuous pose, in-between expressions, fractional
    skin tone) except hair, which is 0, 1 or 2. Grid values give exactly the grid's pixels.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != FACE_SPACE.num_factors:
        raise DataError(f"render_faces: expected values of shape (N, {FACE_SPACE.num_factors}), got {values.shape}")
    if values.size and not np.isfinite(values).all():
        raise DataError("render_faces: factor values must be finite")
    for k, name in enumerate(FACE_SPACE.names):
        lo, hi = RANGES[name]
        if values.size and (values[:, k].min() < lo or values[:, k].max() > hi):
            raise DataError(
                f"render_faces: {name} must lie in [{lo:g}, {hi:g}], "
                f"got values in [{values[:, k].min():g}, {values[:, k].max():g}]"
            )
    if not set(np.unique(values[:, 8])).issubset({0.0, 1.0, 2.0}):
        raise DataError("render_faces: hair must be 0 (short), 1 (medium) or 2 (long)")
    channels = {"gray": 1, "rgb": 3}.get(color)
    if channels is None:
        raise DataError(f"faces: color must be 'gray' or 'rgb', got '{color}'")
    size = _check_size(image_size)
    out = np.empty((len(values), channels, size, size), dtype=np.uint8)  # (N, C, S, S)
    for s in range(0, len(values), chunk):
        v = values[s : s + chunk]  # (B, 9)
        sc = _scene(v[:, 0], v[:, 1], v[:, 6], v[:, 8], size)
        b = len(v)
        mouth_a, mouth_p = _feature("mouth", sc, (v[:, 2:3], v[:, 3:4]), channels)  # (B, 1, 1, ...)
        brow_a, brow_p = _feature("brows", sc, (v[:, 4:5],), channels)  # (B, 1, ...)
        eye_a, eye_p = _feature("eyes", sc, (v[:, 5:6],), channels)
        alpha = mouth_a[:, 0, 0] + brow_a[:, 0] + eye_a[:, 0]  # (B, h, w)
        premul = mouth_p[:, 0, 0] + brow_p[:, 0] + eye_p[:, 0]  # (B, C, h, w)
        base = _base(_down(sc["skin"]), _down(sc["hairc"]), _down(sc["bg"]), v[:, 7], channels)  # (B, C, h, w)
        out[s : s + b] = _compose(base, alpha[:, None], premul)
    return out


def _render_grid(space: FactorSpace, channels: int, size: int, progress: bool = False) -> np.ndarray:
    """Every image of the (possibly strided) grid ``space``: uint8 ``(N, C, S, S)`` in canonical order.

    One block per (yaw, pitch): the scene is ray-cast for every (width, hair), the mouth, brow
    and eye layers are drawn per width and expression value, and the block's images are
    composed by broadcasting (``base * (1 - alpha) + premultiplied colour``), the same
    arithmetic as :func:`render_faces`.
    """
    yaw, pitch, smile, mouth, brow, eyes, width, skin, hair = space.values
    sizes = space.sizes
    n = len(space)
    out = np.empty((n, channels, size, size), dtype=np.uint8)  # (N, C, S, S)
    view = out.reshape(sizes[0], sizes[1], -1)  # (yaw, pitch, rest*C*S*S)
    nw, nh = len(width), len(hair)
    gw = np.repeat(width, nh)  # (G,) width of each (width, hair) geometry
    gh = np.tile(hair, nw)  # (G,)
    blocks = [(i, j) for i in range(sizes[0]) for j in range(sizes[1])]
    if progress:
        from ..progress import progress_bar  # plain lines when stderr is not a terminal

        blocks = progress_bar(blocks, desc="faces", unit="pose", leave=False)
    for i, j in blocks:
        g = len(gw)
        sc = _scene(np.full(g, yaw[i]), np.full(g, pitch[j]), gw, gh, size)
        base = _base(
            _down(sc["skin"]).reshape(nw, 1, nh, size, size),
            _down(sc["hairc"]).reshape(nw, 1, nh, size, size),
            _down(sc["bg"]).reshape(nw, 1, nh, size, size),
            skin[None, :, None],
            channels,
        )  # (w, skin, hair, C, S, S)
        first = np.arange(nw) * nh  # the face layer does not depend on hair: one geometry per width
        fsc = {k: sc[k][first] for k in ("u", "v", "face", "shade")}  # (w, H, W) each
        mouth_a, mouth_p = _feature("mouth", fsc, (smile[None], mouth[None]), channels)  # (w, s, o, ...)
        brow_a, brow_p = _feature("brows", fsc, (brow[None],), channels)  # (w, b, ...)
        eye_a, eye_p = _feature("eyes", fsc, (eyes[None],), channels)  # (w, e, ...)
        # to the block's layout (smile, mouth, brow, eyes, width, ...); composed one (smile,
        # mouth) slice at a time, so the float temporaries stay small enough for the cache
        ba = brow_a.transpose(1, 0, 2, 3)[:, None]  # (b, 1, w, S, S)
        ea = eye_a.transpose(1, 0, 2, 3)[None]  # (1, e, w, S, S)
        bp = brow_p.transpose(1, 0, 2, 3, 4)[:, None]  # (b, 1, w, C, S, S)
        ep = eye_p.transpose(1, 0, 2, 3, 4)[None]  # (1, e, w, C, S, S)
        block = view[i, j].reshape(len(smile), len(mouth), -1)  # (s, o, rest)
        for si in range(len(smile)):
            for oi in range(len(mouth)):
                alpha = mouth_a[:, si, oi] + ba + ea  # (b, e, w, S, S)
                premul = mouth_p[:, si, oi] + bp + ep  # (b, e, w, C, S, S)
                img = _compose(
                    base, alpha[:, :, :, None, None, None], premul[:, :, :, None, None]
                )  # (b, e, w, skin, hair, C, S, S)
                block[si, oi] = img.reshape(-1)
    return out


def _splitmix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser over uint64 (wrapping arithmetic): a well-mixed hash of each value."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _hash_normal(seed: int, index: np.ndarray, stream: int) -> np.ndarray:
    """Standard normal draws ``(N,)`` that depend only on ``(seed, index, stream)`` (Box-Muller)."""
    idx = np.asarray(index, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        key = _splitmix(np.uint64(int(seed) & 0xFFFFFFFFFFFFFFFF) ^ _splitmix(np.uint64(stream)))
        h1 = _splitmix(idx * np.uint64(2) ^ key)
        h2 = _splitmix((idx * np.uint64(2) + np.uint64(1)) ^ key)
    u1 = ((h1 >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53  # (N,) in (0, 1)
    u2 = ((h2 >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def _au_intensities(values: np.ndarray) -> np.ndarray:
    """Noise-free AU intensities ``(N, 10)`` (:data:`AU_COLUMNS` order) from factor values ``(N, 9)``."""
    smile, mouth, brow, eyes = values[:, 2], values[:, 3], values[:, 4], values[:, 5]
    pos = lambda x: np.maximum(x, 0.0)  # noqa: E731
    cols = {
        "AU01_r": 5.0 * pos(brow),
        "AU02_r": 4.0 * pos(brow),
        "AU04_r": 5.0 * pos(-brow),
        "AU05_r": 10.0 * pos(eyes - 0.5),
        "AU06_r": 3.0 * pos(smile),
        "AU12_r": 5.0 * pos(smile),
        "AU15_r": 5.0 * pos(-smile),
        "AU25_r": 5.0 * mouth,
        "AU26_r": 5.0 * pos(mouth - 0.3) / 0.7,
        "AU45_r": 10.0 * pos(0.5 - eyes),
    }
    return np.stack([cols[c] for c in AU_COLUMNS], axis=1)  # (N, 10)


def tracker_labels(
    values: np.ndarray, index: np.ndarray, pose_noise: float = 3.0, au_noise: float = 0.75, seed: int = 0
) -> np.ndarray:
    """A face tracker's view of faces: ``(N, 13)`` float64 in :data:`LABEL_COLUMNS` order.

    Args:
        values: ``(N, 9)`` true factor values (:data:`FACE_SPACE` order and units).
        index: ``(N,)`` the images' grid indices; image ``i``'s noise depends only on
            ``(seed, i, column)``.
        pose_noise: standard deviation of the Gaussian error of each pose angle, degrees.
        au_noise: standard deviation of the Gaussian error of each AU intensity (0..5 scale);
            the noisy intensities are clipped to [0, 5] as OpenFace reports them.
        seed: selects the noise.

    ``pose_Rx`` is the pitch and ``pose_Ry`` the yaw in radians, ``pose_Rz`` the roll (0 in
    these images, so pure noise); the AUs follow :data:`AU_MAP`.
    """
    values = np.asarray(values, dtype=np.float64)
    index = np.asarray(index, dtype=np.int64).reshape(-1)
    if values.ndim != 2 or values.shape != (index.size, FACE_SPACE.num_factors):
        raise DataError(
            f"tracker_labels: expected values of shape ({index.size}, {FACE_SPACE.num_factors}), got {values.shape}"
        )
    if not (math.isfinite(pose_noise) and pose_noise >= 0 and math.isfinite(au_noise) and au_noise >= 0):
        raise DataError(
            f"tracker labels: noise must be finite and non-negative, got pose_noise={pose_noise}, au_noise={au_noise}"
        )
    pose = np.stack([values[:, 1], values[:, 0], np.zeros(len(values))], axis=1)  # (N, 3) pitch, yaw, roll in degrees
    noise_pose = np.stack([_hash_normal(seed, index, k) for k in range(3)], axis=1)  # (N, 3)
    pose = np.deg2rad(pose + pose_noise * noise_pose)  # (N, 3) radians
    aus = _au_intensities(values)  # (N, 10)
    noise_au = np.stack([_hash_normal(seed, index, 3 + k) for k in range(aus.shape[1])], axis=1)  # (N, 10)
    aus = np.clip(aus + au_noise * noise_au, 0.0, 5.0)
    return np.concatenate([pose, aus], axis=1)  # (N, 13)


def paper_cluster_counts(n_images: int) -> dict[str, int]:
    """The paper's 2,500 pose and 4,000 expression clusters for 202,599 images, scaled to ``n_images``
    (the same number of images per cluster: about 81 and 51); at least 2 each."""
    return {k: max(2, int(round(v * n_images / PAPER_IMAGES))) for k, v in PAPER_CLUSTERS.items()}


def make_faces(
    stride: Mapping[str, int] | None = None,
    color: str = "gray",
    image_size: int = IMAGE_SIZE,
    pose_noise: float = 3.0,
    au_noise: float = 0.75,
    seed: int = 0,
    progress: bool = False,
) -> FactorDataset:
    """The procedural face grid (218,700 images; fewer with ``stride``) with tracker-like weak labels.

    Args:
        stride: keep every k-th class of the named factors (``{"yaw": 2}``); only that subset
            is rendered, and it stays a full grid.
        color: ``"gray"`` (one channel, the default, as the paper's greyscale CelebA) or ``"rgb"``.
        image_size: side in pixels (64 for the conv64 network; any size in 16..512 renders).
        pose_noise, au_noise, seed: the weak labels' noise (:func:`tracker_labels`).
        progress: a tqdm bar over the pose blocks.

    Returns a full-grid :class:`FactorDataset` over :data:`FACE_SPACE` (or its strided
    subspace) whose weak labels are the :data:`LABEL_COLUMNS` table. Deterministic: image
    ``i`` depends only on its factors, its labels only on ``(seed, i)``.
    """
    channels = {"gray": 1, "rgb": 3}.get(color)
    if channels is None:
        raise DataError(f"faces: color must be 'gray' or 'rgb', got '{color}'")
    size = _check_size(image_size)
    sub, index = FACE_SPACE.subspace(dict(stride or {}))  # unknown factor names: one-line DataError
    images = _render_grid(sub, channels, size, progress=progress)  # (N, C, S, S)
    values = sub.to_values(sub.to_factors(np.arange(len(sub))))  # (N, 9)
    weak = tracker_labels(values, index, pose_noise=pose_noise, au_noise=au_noise, seed=seed)  # (N, 13)
    strided = ", ".join(f"{k} every {v}" for k, v in (stride or {}).items())
    return FactorDataset(
        "faces",
        Uint8Store(images),
        sub,
        weak=weak,
        weak_names=LABEL_COLUMNS,
        description=(
            f"procedural faces: pose x expression x appearance grid{' (' + strided + ')' if strided else ''}, {color}, "
            f"tracker labels with pose noise {pose_noise} deg and AU noise {au_noise}, seed {seed}"
        ),
    )


def export_faces(
    folder: str | Path,
    labels: str | Path,
    n: int,
    seed: int = 0,
    color: str = "gray",
    image_size: int = IMAGE_SIZE,
    pose_noise: float = 3.0,
    au_noise: float = 0.75,
) -> np.ndarray:
    """Write ``n`` random grid faces as PNG files plus a tracker-style CSV: the real-data route's input.

    ``folder`` receives ``face_000000.png`` ... in random order (drawn with ``seed``), so file
    names say nothing about the factors: the first 10% of the files is a random 10% subset, not
    the faces of one pose. ``labels`` is a CSV with a header: ``file``, ``face_id``,
    ``confidence``, ``success`` and the :data:`LABEL_COLUMNS` (as OpenFace 2.0 names them),
    followed by the true factors as ``true_yaw`` ... ``true_hair`` (which no tracker gives; there
    to check a trained model). Images and labels equal those of :func:`make_faces` with the same
    settings. Returns the grid indices written ``(n,)``, in file order.
    """
    import csv

    from PIL import Image

    if int(n) < 1:
        raise DataError(f"export_faces: n must be at least 1, got {n}")
    rng = np.random.default_rng(seed)
    index = rng.choice(len(FACE_SPACE), size=int(n), replace=int(n) > len(FACE_SPACE))  # (n,) in random order
    classes = FACE_SPACE.to_factors(index)  # (n, 9)
    values = FACE_SPACE.to_values(classes)  # (n, 9)
    images = render_faces(values, color=color, image_size=image_size)  # (n, C, S, S)
    weak = tracker_labels(values, index, pose_noise=pose_noise, au_noise=au_noise, seed=seed)  # (n, 13)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"face_{k:06d}.png" for k in range(len(index))]
    for name, img in zip(names, images, strict=True):
        Image.fromarray(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)).save(folder / name)
    labels = Path(labels)
    labels.parent.mkdir(parents=True, exist_ok=True)
    tmp = labels.with_name(labels.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            ["file", "face_id", "confidence", "success", *LABEL_COLUMNS, *(f"true_{f}" for f in FACE_SPACE.names)]
        )
        for name, w, v in zip(names, weak, values, strict=True):
            writer.writerow([name, 0, "0.98", 1, *(f"{x:.6f}" for x in w), *(f"{x:g}" for x in v)])
    tmp.replace(labels)
    return index


@register_dataset(
    "faces",
    "procedural faces with tracker-like weak labels (pose in degrees, action-unit intensities)",
    factors=FACE_SPACE.listing() + f"; weak labels: {', '.join(LABEL_COLUMNS)}",
    uses=("stride", "color", "image_size", "pose_noise", "au_noise", "seed"),
    image_shape=lambda cfg: (1 if cfg.color == "gray" else 3, cfg.image_size, cfg.image_size),
)
def _build_faces(cfg: DataConfig, options: dict, progress: bool) -> FactorDataset:
    # rendered strided (only the kept classes are drawn), so no subset_grid afterwards
    return make_faces(
        stride=dict(cfg.stride),
        color=cfg.color,
        image_size=cfg.image_size,
        pose_noise=cfg.pose_noise,
        au_noise=cfg.au_noise,
        seed=cfg.seed,
        progress=progress,
    )
