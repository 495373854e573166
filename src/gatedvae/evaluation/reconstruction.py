"""Reconstruction scores of a trained model (the ``reconstruction`` entry of an evaluation).

``-log p(x | z = mu)`` of the model's likelihood (Bernoulli or Gaussian, summed over pixels), the
summed squared error, and the sharpness score of the report ``003_527384601d5c0438.txt`` (section
3.3.1: variance of the image Laplacian, after Pech-Pacheco et al.) of the reconstructions and of
the data (:func:`laplacian_sharpness`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import DataError
from ..run import eval_mode
from .encoding import conditions

if TYPE_CHECKING:  # pragma: no cover
    from ..run import Prepared

__all__ = ["laplacian_sharpness", "reconstruction_scores"]


def laplacian_sharpness(images) -> np.ndarray:
    """Sharpness score of each image: the variance of its Laplacian (report ``003_...`` 3.3.1).

    The report follows Pech-Pacheco et al. (its ref. [9]): convolve with the Laplacian, take the
    variance of the response; low means few edges, i.e. blur. We use the 4-neighbour kernel
    ``[[0, 1, 0], [1, -4, 1], [0, 1, 0]]`` (OpenCV's ``Laplacian`` with ``ksize=1``), borders
    reflected without repeating the edge pixel (OpenCV's default ``BORDER_REFLECT_101``), and
    intensities on the 0..255 scale, so the numbers are on the scale of the report's Table 1.
    The variance is over every pixel and channel of an image.

    Args:
        images: (N, C, H, W) or (N, H, W) floats in [0, 1] (numpy or torch), H, W >= 2.

    Returns:
        (N,) float64 sharpness scores.
    """
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    x = np.asarray(images, dtype=np.float64) * 255.0
    if x.ndim == 3:
        x = x[:, None]  # (N, 1, H, W)
    if x.ndim != 4 or x.shape[-1] < 2 or x.shape[-2] < 2:
        raise DataError(f"images: expected shape (N, C, H, W) with H, W >= 2, got {x.shape}")
    p = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")  # (N, C, H+2, W+2)
    lap = p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:] - 4.0 * x  # (N, C, H, W)
    return lap.reshape(lap.shape[0], -1).var(axis=1)


def reconstruction_scores(prep: Prepared, index, chunk_size: int = 1024) -> dict:
    """Reconstruction error and sharpness on the images at ``index`` of ``prep.dataset``.

    The code is the posterior mean (deterministic). Returns ``nll`` (mean over images of
    ``-log p(x | mu)`` under the model's likelihood, summed over pixels; nats),
    ``squared_error`` (mean per-image sum of squared pixel errors of the mean image),
    ``sharpness_data`` / ``sharpness_reconstruction`` (mean :func:`laplacian_sharpness`),
    ``sharpness_ratio`` (reconstruction over data; 1 = as sharp as the data), per-image
    standard deviations ``*_std``, ``likelihood`` and ``n_images``.
    """
    index = np.asarray(index, dtype=np.int64).reshape(-1)  # (N,)
    nll, se, sharp_x, sharp_r = [], [], [], []
    with eval_mode(prep.model) as model, torch.no_grad():
        for start in range(0, index.size, chunk_size):
            idx = index[start : start + chunk_size]
            x = prep.dataset.images(idx)  # (c, C, H, W)
            cond = conditions(prep, idx)
            out = model.decode(model.encode(x, cond).mu, cond)  # (c, C, H, W) logits / pre-activations
            recon = model.mean_image(out).clamp(0, 1)  # (c, C, H, W)
            nll.append(model.reconstruction(out, x).double().cpu().numpy())  # (c,)
            se.append(((recon - x) ** 2).flatten(1).sum(1).double().cpu().numpy())  # (c,)
            sharp_x.append(laplacian_sharpness(x))  # (c,)
            sharp_r.append(laplacian_sharpness(recon))  # (c,)
    nll_a, se_a, sx, sr = (np.concatenate(a) for a in (nll, se, sharp_x, sharp_r))
    return {
        "nll": float(nll_a.mean()),
        "nll_std": float(nll_a.std()),
        "squared_error": float(se_a.mean()),
        "squared_error_std": float(se_a.std()),
        "sharpness_data": float(sx.mean()),
        "sharpness_reconstruction": float(sr.mean()),
        "sharpness_ratio": float(sr.mean() / sx.mean()) if sx.mean() > 0 else float("nan"),
        "sharpness_data_std": float(sx.std()),
        "sharpness_reconstruction_std": float(sr.std()),
        "likelihood": prep.config.model.likelihood,
        "n_images": int(index.size),
    }
