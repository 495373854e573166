"""Getting an embedding out of a trained run: a partition's codes for downstream use.

The point of a Gated-VAE (``000_fc03c6fb001bc541.txt``, section I and V) is "a means to mask or
extract informative partitions for the purposes of downstream tasks": for faces, an expression
code that does not carry head pose. Three lines from Python::

    from gatedvae import load_run
    run = load_run("runs/faces_gated")
    z = run.encode(images, partition="expression")   # (N, 18) float32, the encoder means

and one command (``gatedvae encode RUN_DIR IMAGES --partition expression --out codes.csv``).

:func:`load_run` rebuilds only the model from the run's saved config and its latest checkpoint
(the dataset is not rebuilt, no k-means runs). ``images`` may be an array (``(N, H, W)``,
``(N, H, W, C)`` or ``(N, C, H, W)``; uint8, bool or floats in [0, 1]), a tensor, a folder of
image files, an ``.npy``/``.npz`` array or a single image file; they are converted to the
run's colour mode and resized to its image size exactly as ``data.name=images`` does at
training time. The code is the posterior mean (deterministic), computed in eval mode.
"""

from __future__ import annotations

import csv
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import Config
from .errors import ConfigError, DataError, PartitionError
from .io import closest
from .runlock import unfinished_note

__all__ = ["TrainedRun", "load_run", "as_images", "encode_to_file", "ALL"]

#: The partition name that means "the whole latent vector".
ALL = "all"


@dataclass
class TrainedRun:
    """A trained model, ready to encode and decode: see :func:`load_run`.

    Attributes:
        run_dir: the run directory.
        config: its resolved config.
        model: the model (eval mode, on ``device``).
        step: the checkpoint's training step.
        image_shape: ``(C, H, W)`` the model takes.
        partitions: partition name -> latent dims (a ``slice``), in latent order; empty for an
            un-gated run.
    """

    run_dir: Path
    config: Config
    model: Any
    step: int
    image_shape: tuple[int, int, int]
    partitions: dict[str, slice]
    device: torch.device

    @property
    def latent_dim(self) -> int:
        return int(self.config.model.latent_dim)

    def dims(self, partition: str | None = None) -> slice:
        """Latent dims of ``partition`` (None or ``"all"``: every dim); PartitionError names the valid ones."""
        if partition is None or partition == ALL:
            return slice(0, self.latent_dim)
        if partition in self.partitions:
            return self.partitions[partition]
        valid = [*self.partitions, ALL]
        if not self.partitions:
            raise PartitionError(
                f"unknown partition '{partition}'; this run is not gated, so its only partition is '{ALL}'"
            )
        near = closest(str(partition), valid)
        hint = f"; did you mean '{near}'?" if near else ";"
        raise PartitionError(f"unknown partition '{partition}'{hint} partitions of this run: {', '.join(valid)}")

    @torch.inference_mode()
    def encode(self, images: Any, partition: str | None = None, batch_size: int = 256, logvar: bool = False):
        """Posterior means of ``images`` on ``partition``'s dims: float32 ``(N, dims)``.

        ``images``: see :func:`as_images`. With ``logvar=True`` returns ``(mu, logvar)``.
        """
        sl = self.dims(partition)
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        x = as_images(images, self.image_shape)  # (N, C, H, W) uint8
        mus, logvars = [], []
        for s in range(0, len(x), int(batch_size)):
            batch = (
                torch.from_numpy(x[s : s + int(batch_size)]).to(self.device, torch.float32).mul_(1.0 / 255.0)
            )  # (b, C, H, W)
            post = self.model.encode(batch)
            mus.append(post.mu[:, sl].float().cpu().numpy())  # (b, d)
            logvars.append(post.logvar[:, sl].float().cpu().numpy())
        d = sl.stop - sl.start
        mu = np.concatenate(mus) if mus else np.zeros((0, d), np.float32)  # (N, d)
        if logvar:
            return mu, (np.concatenate(logvars) if logvars else np.zeros((0, d), np.float32))
        return mu

    @torch.inference_mode()
    def decode(self, z: Any, batch_size: int = 256) -> np.ndarray:
        """Mean images of whole latent codes ``z (N, M)``: float32 ``(N, C, H, W)`` in [0, 1]."""
        z = np.asarray(z, dtype=np.float32)
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise DataError(f"decode: expected codes of shape (N, {self.latent_dim}), got {z.shape}")
        if self.config.model.condition:
            raise ConfigError(
                "this run's decoder is conditioned on factors (model.condition); "
                "decode through the trainer's data instead"
            )
        out = []
        for s in range(0, len(z), int(batch_size)):
            zb = torch.from_numpy(z[s : s + int(batch_size)]).to(self.device)  # (b, M)
            out.append(self.model.mean_image(self.model.decode(zb)).clamp(0, 1).float().cpu().numpy())  # (b, C, H, W)
        return np.concatenate(out) if out else np.zeros((0, *self.image_shape), np.float32)


def load_run(
    run_dir: str | os.PathLike, device: str = "cpu", checkpoint: str | os.PathLike | None = None
) -> TrainedRun:
    """Load a trained run's model from its saved config and latest (or the given) checkpoint.

    One-line :class:`~gatedvae.errors.GatedVAEError` for a missing directory, a directory that is
    not a run, a run without a checkpoint, or a damaged or foreign checkpoint. Runs whose
    *encoder* is conditioned on factor labels (``model.condition_encoder``) are refused: their
    codes need labels that new images do not have.
    """
    from .run import load_model

    loaded = load_model(run_dir, device=device, checkpoint=checkpoint)
    parts = loaded.partitions.slices() if loaded.partitions is not None else {}
    return TrainedRun(
        loaded.run_dir, loaded.config, loaded.model, loaded.step, loaded.image_shape, parts, loaded.device
    )


# --------------------------------------------------------------------------- inputs
def _color(image_shape: tuple[int, int, int]) -> str:
    return "gray" if image_shape[0] == 1 else "rgb"


def as_images(images: Any, image_shape: tuple[int, int, int]) -> np.ndarray:
    """Images in a model's format: uint8 ``(N, C, H, W)`` with ``(C, H, W) = image_shape``.

    Accepts a numpy array or torch tensor (``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)``
    with C in 1, 3, 4; uint8, bool or floats in [0, 1]), or a path: a folder of image files
    (sorted by name), an ``.npy``/``.npz`` array, or one image file. Colour is converted
    (luma for gray, replication for RGB, alpha dropped) and the size changed by antialiased
    bilinear resizing, as the ``images`` dataset does.
    """
    from .data.images import IMAGE_EXTENSIONS, _read_array, _read_folder

    c, h, w = image_shape
    if h != w:
        raise DataError(f"the model takes {h}x{w} images; only square image sizes are supported")
    color = _color(image_shape)
    if isinstance(images, (str, os.PathLike)):
        path = Path(images).expanduser()
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
            return _read_folder([path], color, h)
        if not path.exists():
            raise DataError(f"images {path} do not exist; give a folder of images, an .npy/.npz array or an image file")
        return _load_path(path, color, h)
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    arr = np.asarray(images)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise DataError(f"images: expected a numeric array, got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[None]  # (1, H, W): one image
    if arr.shape[0] == 0:
        return np.zeros((0, c, h, w), dtype=np.uint8)
    return _read_array(arr, Path("<images array>"), color, h)


def _load_path(path: Path, color: str, size: int) -> np.ndarray:
    from .data.images import load_images

    ds = load_images(path, color=color, image_size=size)
    return ds.store.images.numpy()  # (N, C, S, S) uint8


def _row_names(images: Any, n: int) -> tuple[str, list[str]]:
    """The CSV's first column: image file names for a folder or file, else array positions."""
    from .data.images import IMAGE_EXTENSIONS, _image_files

    if isinstance(images, (str, os.PathLike)):
        path = Path(images).expanduser()
        if path.is_dir():
            return "file", [p.name for p in _image_files(path)]
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            return "file", [path.name]
    return "index", [str(i) for i in range(n)]


# --------------------------------------------------------------------------- the command
def encode_to_file(
    run_dir: str | os.PathLike,
    images: Any,
    out: str | os.PathLike,
    partition: str | None = None,
    batch_size: int = 256,
    device: str = "cpu",
) -> dict:
    """``gatedvae encode``: write the codes of ``images`` on ``partition`` to ``out`` (``.npy`` or ``.csv``).

    The ``.npy`` holds float32 ``(N, dims)``; the ``.csv`` has a header ``file`` (or ``index``
    for an array) then ``<partition>_0 ...`` (``z0 ...`` for the whole latent), one row per
    image in input order (folders: sorted by file name). The file is written atomically; the
    partition name and the output suffix are checked before anything is computed. A run that is
    still being trained (or was stopped before its last step) is encoded all the same, with one
    line on stderr saying so and which checkpoint step was read. Returns a summary (path, shape,
    dims, step, note: that line or None).
    """
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".npy", ".csv"):
        raise ConfigError(f"--out {out}: use a .npy or .csv file name")
    run = load_run(run_dir, device=device)
    sl = run.dims(partition)  # a bad name fails here, before any image is read
    note = unfinished_note(run.run_dir, run.step, "encoding")  # a run still training, or stopped early
    if note:
        print(note, file=sys.stderr)
    codes = run.encode(images, partition=partition, batch_size=batch_size)  # (N, d)
    name = partition if partition not in (None, ALL) else None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        if suffix == ".npy":
            with open(tmp, "wb") as fh:
                np.save(fh, codes.astype(np.float32), allow_pickle=False)
        else:
            key, rows = _row_names(images, len(codes))
            header = [key, *(f"{name}_{j}" if name else f"z{sl.start + j}" for j in range(codes.shape[1]))]
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh)
                writer.writerow(header)
                for row, z in zip(rows, codes, strict=True):
                    writer.writerow([row, *(f"{v:.6g}" for v in z)])
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {
        "out": out,
        "shape": tuple(codes.shape),
        "dims": (sl.start, sl.stop),
        "partition": partition or ALL,
        "step": run.step,
        "note": note,
    }
