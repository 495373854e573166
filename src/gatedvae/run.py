"""A run, built from its config, or loaded from its directory: the one place that does either.

:func:`prepare` turns a :class:`~gatedvae.config.Config` into what training, evaluation and figures
work on (:class:`Prepared`: the dataset on the device, the partition layout, the pair samplers and
the model). :func:`load_trained` does the same for a trained run directory and loads its latest
(or a given) checkpoint; :func:`load_model` loads only the model, without building the dataset
where the image shape is known from the config (encoding new images). Every command that reads a
run (``evaluate``, ``encode``, ``face-study``, ``scan``, sweeps' evaluation) goes through these, so
they share the one-line errors for a missing directory, a directory that is not a run, a run with
no checkpoint yet, and a damaged or foreign checkpoint.

A run directory::

    RUN/config.yaml          the resolved config (rebuilds the run exactly)
    RUN/status.json          running / finished / failed, with the last step
    RUN/checkpoints/         step-000001000.safetensors ... (atomic, no pickle)
    RUN/metrics.jsonl        one JSON line of mean loss terms per log interval
    RUN/tensorboard/         scalars and image grids
    RUN/summary.json         final numbers (written when the run finishes)
    RUN/metrics.json         scores (written by ``gatedvae evaluate``)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoint import latest_checkpoint, load_checkpoint
from .config import Config, DataConfig, load_config
from .data import FactorDataset, PairSampler, build_dataset, make_pair_sampler, make_sampler, validate_data_config
from .data.base import host_to_device
from .data.registry import image_shape_of
from .errors import ConfigError, GatedVAEError, PartitionError
from .gating import Partitions
from .models import GenerativeModel, build_model
from .models.base import check_trainable
from .models.weak import check_pairs

__all__ = [
    "Prepared",
    "FactorGroups",
    "prepare",
    "resolve_device",
    "device_option",
    "usable_device",
    "condition_vectors",
    "heldout_indices",
    "load_run_config",
    "find_checkpoint",
    "load_trained",
    "load_model",
    "LoadedModel",
    "eval_mode",
]


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else is checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but CUDA is not available here; use train.device=auto or cpu")
    return dev


def usable_device(name: str) -> torch.device:
    """``name`` resolved (:func:`resolve_device`), or the CPU where this machine lacks it: for reading a
    trained run (evaluation, figures), where the device it trained on does not matter."""
    try:
        return resolve_device(name)
    except ConfigError:
        return torch.device("cpu")


def device_option(name: str | torch.device | None, option: str = "--device", auto: bool = True) -> torch.device:
    """A device asked for on the command line: ``cpu``, ``cuda`` or ``cuda:N`` present on this
    machine, and with ``auto`` (or None) allowed, the first CUDA device when there is one, else the
    CPU. One-line ConfigError for a name that is not a device or a device this machine lacks."""
    text = "auto" if name is None else str(name).strip().lower()
    choices = "auto, cpu, cuda or cuda:N" if auto else "cpu, cuda or cuda:N"
    if auto and text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise ConfigError(f"{option} {name!r} is not a device; use {choices}") from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise ConfigError(f"{option} {name}: only cpu and cuda are supported; use {choices}")
    if not torch.cuda.is_available():
        other = "auto or cpu" if auto else "cpu"
        raise ConfigError(f"{option} {name} but CUDA is not available here; use {option} {other}")
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        raise ConfigError(
            f"{option} {name} but this machine has {count} CUDA device{'s' if count != 1 else ''} "
            f"(cuda:0..cuda:{count - 1}); choose one of them"
        )
    return dev


def condition_vectors(
    dataset: FactorDataset, names: tuple[str, ...], index: np.ndarray, device: torch.device
) -> torch.Tensor | None:
    """One-hot labels of the named factors, concatenated: ``(B, sum of sizes)``."""
    if not names:
        return None
    f = dataset.factors_of(index)  # (B, K)
    parts = []
    for name in names:
        k = dataset.factor_space.position(name)
        parts.append(np.eye(dataset.factor_space.sizes[k], dtype=np.float32)[f[:, k]])  # (B, size)
    return host_to_device(torch.from_numpy(np.concatenate(parts, axis=1)), device)  # (B, c)


def heldout_indices(data: DataConfig, n: int) -> np.ndarray:
    """Sorted indices of the images held out of training: ``round(data.holdout * n)`` of ``n``, drawn
    with ``data.seed`` (the same images for every training seed, so runs of a sweep share them).
    Empty when ``data.holdout`` is 0. Evaluation measures reconstruction on them."""
    k = int(round(float(getattr(data, "holdout", 0.0)) * n))
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng([int(data.seed), 0x401D])
    return np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode for a block (evaluation, figures), its mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


class FactorGroups:
    """Which latent dims a pair shares, from the factors it shares, through ``gating.partitions``:
    a partition's dims are shared when every factor it names is (identity partitions never are).
    What the group models (``gvae``, ``ml_vae``) are told of ``pairs.kind=k_changed`` pairs."""

    def __init__(self, partitions: Partitions, factor_names: tuple[str, ...]) -> None:
        parts = partitions.config.partitions
        self.dims = np.zeros((len(parts), partitions.latent_dim), dtype=bool)  # (P, M)
        self.members = np.zeros((len(parts), len(factor_names)), dtype=bool)  # (P, K)
        self.groups = np.zeros(len(parts), dtype=bool)  # (P,) partitions that can be shared
        for i, p in enumerate(parts):
            self.dims[i, partitions.slice(i)] = True
            if p.sampler == "identity":
                continue
            missing = [f for f in p.factors if f not in factor_names]
            if missing:
                raise PartitionError(
                    f"partition '{p.name}' names '{missing[0]}', which is not a factor of the dataset, so a pair's "
                    f"shared factors cannot say whether its dims are shared; its factors are: {', '.join(factor_names)}"
                )
            self.members[i, [factor_names.index(f) for f in p.factors]] = True
            self.groups[i] = True

    def __call__(self, shared_factors: np.ndarray) -> np.ndarray:
        """``(B, K)`` bool shared factors -> ``(B, M)`` bool shared dims."""
        missing = self.members[None, :, :] & ~shared_factors[:, None, :]  # (B, P, K) a member not shared
        part = self.groups[None, :] & ~missing.any(axis=2)  # (B, P)
        return (part.astype(np.int64) @ self.dims.astype(np.int64)) > 0  # (B, M)


@dataclass
class Prepared:
    """Everything a run needs, built from its config (training, evaluation and figures use it).

    ``partitions`` is the latent layout of a gated run (None otherwise); ``samplers`` the pair
    sampler of each partition (a gated run's, or an un-gated one's with ``pairs.kind=partitions``),
    built on first use (k-means for cluster partitions, seeded by the run's seed, so building them
    later gives the same samplers); ``pair_sampler`` the sampler of ``pairs.kind=k_changed`` (None
    otherwise).
    """

    config: Config
    device: torch.device
    dataset: FactorDataset
    model: GenerativeModel
    partitions: Partitions | None
    cond_dim: int

    @cached_property
    def samplers(self) -> list[PairSampler]:
        if self.partitions is None and self.config.pairs.kind != "partitions":
            return []
        setup_rng = np.random.default_rng([self.config.train.seed, 1])
        return [make_sampler(self.dataset, p, setup_rng) for p in self.config.gating.partitions]

    @cached_property
    def factor_groups(self) -> FactorGroups | None:
        """A group model's (``gvae``, ``ml_vae``) map from the factors a ``k_changed`` pair shares to the
        latent dims it shares (``gating.partitions``); None for other runs."""
        cls = type(self.model)
        group_model = getattr(cls, "encodes_pairs", False) and not getattr(cls, "adaptive", True)
        if not (group_model and self.config.pairs.kind == "k_changed" and self.config.gating.partitions):
            return None
        layout = Partitions(self.config.gating, self.config.model.latent_dim)
        return FactorGroups(layout, tuple(self.dataset.factor_space.names))

    @cached_property
    def pair_sampler(self) -> PairSampler | None:
        if self.config.pairs.kind != "k_changed":
            return None
        return make_pair_sampler(self.dataset, self.config.pairs)


def validate(config: Config) -> None:
    """What can be refused before any data is built or anything written: an unknown model or
    hyperparameter, a model that cannot train this way (a GAN gated), an impossible partition."""
    validate_data_config(config.data)
    check_trainable(config)
    check_pairs(config)
    if config.gating.enabled:
        Partitions(config.gating, config.model.latent_dim)


def prepare(
    config: Config,
    device: torch.device | None = None,
    dataset: FactorDataset | None = None,
    progress: bool = False,
    samplers: bool = True,
) -> Prepared:
    """Build the dataset (on the device), the partition layout and the model of a config.

    ``samplers``: build the partitions' pair samplers now, so that a partition the data cannot
    pair fails before training starts (False: on first use of ``Prepared.samplers``; loading a
    trained run to evaluate it never needs them).
    """
    device = device or resolve_device(config.train.device)
    validate(config)
    if dataset is None:
        dataset = build_dataset(config.data, progress=progress)
    dataset = dataset.to(device)
    for name in config.model.condition:
        if name not in dataset.factor_space.names:
            raise ConfigError(
                f"model.condition names factor '{name}' that dataset '{dataset.name}' lacks; its factors are: "
                f"{', '.join(dataset.factor_space.names)}"
            )
    cond_dim = sum(dataset.factor_space.size(n) for n in config.model.condition)
    partitions = Partitions(config.gating, config.model.latent_dim) if config.gating.enabled else None
    if config.train.batch_size > len(dataset):
        raise ConfigError(
            f"train.batch_size={config.train.batch_size} exceeds the dataset's {len(dataset)} images; lower it"
        )
    model = build_model(config.model, dataset.image_shape, len(dataset), cond_dim=cond_dim, seed=config.train.seed)
    model = model.to(device)
    if device.type == "cpu" and any(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in model.modules()):
        # Convolution weights in NHWC: MKL-DNN's fast path on the CPU (conv64 step 0.86x the time of
        # NCHW in `gatedvae bench`, docs/performance.md). Checkpoints stay contiguous (NCHW).
        model = model.to(memory_format=torch.channels_last)
    prep = Prepared(config, device, dataset, model, partitions, cond_dim)
    if samplers and (partitions is not None or config.pairs.kind != "none"):
        prep.samplers  # noqa: B018  (build them now: a bad partition fails before training starts)
        prep.pair_sampler  # noqa: B018  (and the pairs section's, and a group model's layout)
        prep.factor_groups  # noqa: B018
    return prep


# --------------------------------------------------------------------------- reading a run directory
def load_run_config(run_dir: str | os.PathLike) -> Config:
    """The resolved config of an existing run directory (one-line errors for a missing or foreign one)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise GatedVAEError(f"run directory '{run_dir}' does not exist; check the path")
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise GatedVAEError(f"'{run_dir}' is not a gatedvae run directory (no config.yaml); check the path")
    try:
        return load_config(cfg_path)
    except ConfigError as exc:
        raise ConfigError(
            f"'{cfg_path}' is not a config this gatedvae can read ({exc}); check the run directory's path"
        ) from None


def find_checkpoint(run_dir: str | os.PathLike, checkpoint: str | os.PathLike | None = None) -> tuple[int, Path]:
    """``(step, path)`` of the run's latest complete checkpoint, or of ``checkpoint`` (step -1 until
    its header is read). GatedVAEError when the run has none yet."""
    if checkpoint is not None:
        return -1, Path(checkpoint)
    run = Path(run_dir)
    found = latest_checkpoint(run / "checkpoints")
    if found is None:
        raise GatedVAEError(f"run {run} has no checkpoint yet; train it first")
    return found


def load_trained(
    run_dir: str | os.PathLike,
    progress: bool = False,
    device: torch.device | str | None = None,
    checkpoint: str | os.PathLike | None = None,
    dataset: FactorDataset | None = None,
) -> tuple[Prepared, int, Path]:
    """``(prep, step, checkpoint_path)`` of a trained run: its data and model (eval mode) with the
    latest (or the given) checkpoint's weights, rebuilt exactly as training built them.

    ``device``: where to load it; None: the run's ``train.device`` where this machine has it, else
    the CPU (a run trained on a GPU is evaluated on a CPU-only machine). Checkpoints load into host
    memory and are copied to the device, wherever they were written.
    ``dataset``: an already built dataset of the run's data config (saves rebuilding it).
    """
    run = Path(run_dir)
    config = load_run_config(run)
    step, path = find_checkpoint(run, checkpoint)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    dev = resolve_device(device) if isinstance(device, str) else device
    if dev is None:
        dev = usable_device(config.train.device)
    prep = prepare(config, device=dev, dataset=dataset, progress=progress, samplers=False)
    header = load_checkpoint(path, prep.model)
    prep.model.eval()
    return prep, int(header.get("step", step)), path


@dataclass
class LoadedModel:
    """A trained run's model without its dataset: see :func:`load_model`."""

    run_dir: Path
    config: Config
    model: GenerativeModel
    step: int
    image_shape: tuple[int, int, int]
    device: torch.device
    partitions: Partitions | None


def load_model(
    run_dir: str | os.PathLike, device: str = "cpu", checkpoint: str | os.PathLike | None = None
) -> LoadedModel:
    """A trained run's model (eval mode, on ``device``) with the latest (or the given) checkpoint.

    The dataset is built only when the config does not tell the image shape or the decoder takes
    factor labels (``model.condition``). Runs whose *encoder* is conditioned on factor labels
    (``model.condition_encoder``) are refused: their codes need labels that new images lack.
    """
    run = Path(run_dir)
    config = load_run_config(run)
    step, path = find_checkpoint(run, checkpoint)
    if config.model.condition_encoder:
        raise ConfigError(
            f"run {run} conditions its encoder on factor labels (model.condition_encoder); "
            "its codes cannot be computed from images alone"
        )
    validate(config)
    shape = image_shape_of(config.data)
    cond_dim = 0
    size = 1
    if shape is None or config.model.condition:
        ds = build_dataset(config.data)
        shape = ds.image_shape
        cond_dim = sum(ds.factor_space.size(n) for n in config.model.condition)
        size = len(ds)
    dev = resolve_device(device)
    model = build_model(config.model, shape, size, cond_dim=cond_dim, seed=config.train.seed)
    header = load_checkpoint(path, model)
    model.to(dev).eval()
    parts = Partitions(config.gating, config.model.latent_dim) if config.gating.enabled else None
    return LoadedModel(run, config, model, int(header.get("step", step)), tuple(shape), dev, parts)
