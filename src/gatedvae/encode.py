"""Getting an embedding out of a trained run: a partition's codes for downstream use.

The point of a Gated-VAE (``000_fc03c6fb001bc541.txt``, section I and V) is "a means to mask or
extract informative partitions for the purposes of downstream tasks": for faces, an expression
code meant not to carry head pose (what holds on the procedural faces, measured, is in
docs/datasets.md, "What the codes carry": a collapsed partition's means still follow pose).
Three lines from Python::

    from gatedvae import load_run
    run = load_run("runs/faces_gated")
    z = run.encode(images, partition="expression")   # (N, 18) float32, the encoder means

(``run.activity(images)`` says how active each partition is on those images; ``encode`` warns when
the partition asked for has collapsed, and ``active_only=True`` keeps its active dims) and one
command (``gatedvae encode RUN_DIR IMAGES --partition expression --out codes.csv``).

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
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import Config
from .errors import ConfigError, DataError, PartitionError
from .io import closest
from .runlock import unfinished_note

__all__ = [
    "TrainedRun",
    "load_run",
    "as_images",
    "encode_to_file",
    "ALL",
    "PartitionActivity",
    "CollapsedPartitionWarning",
    "ACTIVE_VARIANCE",
    "COLLAPSED_KL",
]

#: The partition name that means "the whole latent vector".
ALL = "all"

#: A latent dim is *active* when the variance over the images of its posterior mean exceeds this
#: (Burda et al. 2016; ``metrics.unsupervised.active_units``, what ``gatedvae evaluate`` reports).
ACTIVE_VARIANCE = 0.01
#: A partition is *collapsed* when none of its dims carries this much KL to the prior, in nats per
#: image, on average: what the decoder can read from it is then close to nothing, whatever its
#: means vary with (they may still follow, e.g., head pose by tenths of a unit).
COLLAPSED_KL = 0.1


@dataclass(frozen=True)
class PartitionActivity:
    """How much a partition's codes vary and carry, measured on a set of images (:meth:`TrainedRun.activity`).

    ``variance`` ``(d,)``: variance over the images of each dim's posterior mean; ``kl`` ``(d,)``:
    each dim's KL(q(z|x) || N(0, 1)) averaged over the images, nats per image.
    """

    name: str
    variance: np.ndarray
    kl: np.ndarray
    images: int

    @property
    def dims(self) -> int:
        return int(self.variance.size)

    @property
    def active(self) -> np.ndarray:
        """``(d,)`` bool: variance of the mean above :data:`ACTIVE_VARIANCE`."""
        return self.variance > ACTIVE_VARIANCE

    @property
    def collapsed(self) -> bool:
        """No dim carries :data:`COLLAPSED_KL` nats per image."""
        return bool(self.dims) and float(self.kl.max()) < COLLAPSED_KL

    def describe(self) -> str:
        """One line: dims, active dims, KL."""
        return (
            f"partition {self.name}: {self.dims} dims, {int(self.active.sum())} active (variance of the mean "
            f"> {ACTIVE_VARIANCE} over {self.images:,} images), KL {float(self.kl.sum()):.2f} nats per image "
            f"(largest dim {float(self.kl.max()):.2f})"
        )

    def warning(self) -> str:
        """The collapse warning (one line), or "" when the partition is not collapsed."""
        if not self.collapsed:
            return ""
        return (
            f"partition '{self.name}' is collapsed: its {self.dims} dims carry {float(self.kl.sum()):.2f} nats per "
            f"image in all (none reaches {COLLAPSED_KL}), so the decoder reads next to nothing from them; their "
            f"means still vary with the image ({int(self.active.sum())} of {self.dims} above {ACTIVE_VARIANCE}) and "
            "may follow other factors (docs/datasets.md#what-the-codes-carry); train longer or check its pairs"
        )


class CollapsedPartitionWarning(UserWarning):
    """:meth:`TrainedRun.encode` was asked for a partition that carries next to nothing."""


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

    def encode(
        self,
        images: Any,
        partition: str | None = None,
        batch_size: int = 256,
        logvar: bool = False,
        active_only: bool = False,
        warn: bool = True,
    ):
        """Posterior means of ``images`` on ``partition``'s dims: float32 ``(N, dims)``.

        ``images``: see :func:`as_images`. With ``logvar=True`` returns ``(mu, logvar)``.
        ``active_only``: keep only the partition's dims that are active over these images
        (variance of the mean above :data:`ACTIVE_VARIANCE`; at least two images needed).
        ``warn``: emit a :class:`CollapsedPartitionWarning` when the partition is collapsed on
        these images (:meth:`PartitionActivity.collapsed`): its means then vary with the image
        without carrying anything the decoder reads, and may follow factors the partition was
        meant to exclude.
        """
        sl = self.dims(partition)
        mu, lv = self._posterior(images, batch_size)  # (N, M) each
        mu, lv = mu[:, sl], lv[:, sl]
        if (warn or active_only) and len(mu):
            act = _activity(partition or ALL, mu, lv)
            if warn and act.collapsed:
                warnings.warn(act.warning(), CollapsedPartitionWarning, stacklevel=2)
            if active_only:
                if len(mu) < 2:
                    raise DataError("active_only needs at least two images: activity is a variance over images")
                mu, lv = mu[:, act.active], lv[:, act.active]
        return (mu, lv) if logvar else mu

    def activity(self, images: Any, batch_size: int = 256) -> dict[str, PartitionActivity]:
        """Each partition's activity over ``images`` (``"all"`` for an un-gated run), in latent order."""
        mu, lv = self._posterior(images, batch_size)  # (N, M) each
        if len(mu) < 2:
            raise DataError(f"activity needs at least two images (got {len(mu)}): it is a variance over images")
        parts = self.partitions or {ALL: slice(0, self.latent_dim)}
        return {name: _activity(name, mu[:, sl], lv[:, sl]) for name, sl in parts.items()}

    @torch.inference_mode()
    def _posterior(self, images: Any, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Means and log-variances of every latent dim: float32 ``(N, M)`` each."""
        sl = slice(0, self.latent_dim)
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
        mu = np.concatenate(mus) if mus else np.zeros((0, d), np.float32)  # (N, M)
        return mu, (np.concatenate(logvars) if logvars else np.zeros((0, d), np.float32))

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


def _activity(name: str, mu: np.ndarray, logvar: np.ndarray) -> PartitionActivity:
    """Activity of one partition from its posterior means and log-variances ``(N, d)``."""
    mu64, lv64 = mu.astype(np.float64), logvar.astype(np.float64)
    kl = 0.5 * (mu64**2 + np.exp(lv64) - 1.0 - lv64)  # (N, d) KL(N(mu, s^2) || N(0, 1)) per dim
    variance = mu64.var(axis=0) if len(mu64) > 1 else np.zeros(mu64.shape[1])  # (d,)
    return PartitionActivity(name, variance, kl.mean(axis=0), len(mu64))


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
    drop_inactive: bool = False,
) -> dict:
    """``gatedvae encode``: write the codes of ``images`` on ``partition`` to ``out`` (``.npy`` or ``.csv``).

    The ``.npy`` holds float32 ``(N, dims)``; the ``.csv`` has a header ``file`` (or ``index``
    for an array) then ``<partition>_0 ...`` (``z0 ...`` for the whole latent), one row per
    image in input order (folders: sorted by file name). The file is written atomically; the
    partition name and the output suffix are checked before anything is computed. A run that is
    still being trained (or was stopped before its last step) is encoded all the same, with one
    line on stderr saying so and which checkpoint step was read.

    Each partition's activity over these images is measured (:class:`PartitionActivity`, with at
    least two images) and returned; ``warning`` is the collapse warning of the partition asked for,
    or None. ``drop_inactive`` keeps only the asked partition's active dims (the CSV's column names
    keep their dim numbers, ``kept`` lists them). Returns a summary (path, shape, dims, kept, step,
    note: the unfinished-run line or None, activity, warning).
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
    mu, lv = run._posterior(images, batch_size)  # (N, M) each
    parts = run.partitions or {ALL: slice(0, run.latent_dim)}
    activity = {n: _activity(n, mu[:, p], lv[:, p]) for n, p in parts.items()} if len(mu) > 1 else {}
    asked = _activity(partition or ALL, mu[:, sl], lv[:, sl]) if len(mu) else None
    codes = mu[:, sl]  # (N, d)
    kept = np.arange(sl.start, sl.stop)
    if drop_inactive:
        if len(mu) < 2:
            raise DataError("--drop-inactive needs at least two images: activity is a variance over images")
        if not asked.active.any():
            raise DataError(
                f"partition '{partition or ALL}' has no active dims over these {len(mu)} images (variance of the "
                f"mean <= {ACTIVE_VARIANCE} in every dim); nothing to write: drop --drop-inactive or pick another "
                "partition"
            )
        codes, kept = codes[:, asked.active], kept[asked.active]
    name = partition if partition not in (None, ALL) else None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        if suffix == ".npy":
            with open(tmp, "wb") as fh:
                np.save(fh, codes.astype(np.float32), allow_pickle=False)
        else:
            key, rows = _row_names(images, len(codes))
            header = [key, *(f"{name}_{j - sl.start}" if name else f"z{j}" for j in kept)]
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
        "kept": kept.tolist(),
        "partition": partition or ALL,
        "step": run.step,
        "note": note,
        "activity": activity,
        "warning": (asked.warning() or None) if asked is not None else None,
    }
