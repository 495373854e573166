"""The training loop: a plain PyTorch loop in steps, with exact resume.

One call, :func:`train`, runs a config in a run directory::

    RUN/config.yaml          the resolved config (rebuilds the run exactly)
    RUN/status.json          running / finished / failed, with the last step
    RUN/checkpoints/         step-000001000.safetensors ... (atomic, no pickle)
    RUN/metrics.jsonl        one JSON line of mean loss terms per log interval
    RUN/tensorboard/         scalars and image grids
    RUN/summary.json         final numbers (written when the run finishes)

Per step: pick the active partition (gated runs), draw a batch of pairs from its sampler
with the run's numpy generator, gather the images on the device, take one Adam step (and the
auxiliary step, e.g. FactorVAE's discriminator). The whole dataset sits in memory (on the
GPU when there is one); there is no DataLoader and no per-item Python. On CUDA a step never
waits for the device (loss sums and the NaN record are read at log and checkpoint steps).
Launched by ``torchrun`` the same loop trains data-parallel on the global batch
(:mod:`gatedvae.train.distributed`).

Exact resume: everything random comes from two generators (numpy for data, torch for the
reparameterisation noise) whose states are checkpointed with the parameters and optimiser
moments, and the partition schedule is a function of the step (or of the numpy generator).
A run stopped at any point and resumed ends bitwise equal to an uninterrupted one on the
same machine.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import Config, load_config, save_config, to_dict
from ..data import ExactPairSampler, FactorDataset, IdentityPairSampler, build_dataset
from ..data.base import host_to_device
from ..errors import ConfigError, GatedVAEError, PartitionError
from ..gating import Partitions, Schedule
from ..models import GenerativeModel, build_model
from ..models.base import check_trainable
from . import distributed
from .checkpoint import checkpoint_name, latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint

__all__ = ["train", "TrainingDiverged", "RunState", "resolve_device", "prepare", "Prepared", "condition_vectors"]


class TrainingDiverged(GatedVAEError):
    """A loss term became NaN or infinite."""

    exit_code = 3


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else is checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but CUDA is not available here; use train.device=auto or cpu")
    return dev


def _atomic_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


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


@dataclass
class Prepared:
    """Everything a run needs, built from its config (also used by evaluation and figures)."""

    config: Config
    device: torch.device
    dataset: FactorDataset
    model: GenerativeModel
    partitions: Partitions | None
    cond_dim: int


def prepare(
    config: Config, device: torch.device | None = None, dataset: FactorDataset | None = None, progress: bool = False
) -> Prepared:
    """Build the dataset (on the device), the partitions and the model of a config."""
    device = device or resolve_device(config.train.device)
    check_trainable(config)
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
    partitions = None
    if config.gating.enabled:
        setup_rng = np.random.default_rng([config.train.seed, 1])
        partitions = Partitions(config.gating, config.model.latent_dim, dataset, setup_rng)
        if config.gating.mode == "clamp":
            for p in config.gating.partitions:
                if p.sampler != "exact":
                    raise PartitionError(
                        f"gating.mode=clamp (DC-IGN) needs exact factor partitions; partition '{p.name}' uses {p.sampler}"
                    )
    if config.train.batch_size > len(dataset):
        raise ConfigError(
            f"train.batch_size={config.train.batch_size} exceeds the dataset's {len(dataset)} images; lower it"
        )
    model = build_model(config.model, dataset.image_shape, len(dataset), cond_dim=cond_dim, seed=config.train.seed).to(
        device
    )
    if device.type == "cpu" and any(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in model.modules()):
        # Convolution weights in NHWC: MKL-DNN's fast path on the CPU (conv64 step 0.86x the time of
        # NCHW in `gatedvae bench`, docs/performance.md). Checkpoints stay contiguous (NCHW).
        model = model.to(memory_format=torch.channels_last)
    return Prepared(config, device, dataset, model, partitions, cond_dim)


@dataclass
class RunState:
    step: int = 0
    started: float = field(default_factory=time.time)


def heldout_indices(data, n: int) -> np.ndarray:
    """Sorted indices of the images held out of training: ``round(data.holdout * n)`` of ``n``, drawn
    with ``data.seed`` (the same images for every training seed, so runs of a sweep share them).
    Empty when ``data.holdout`` is 0. Evaluation measures reconstruction on them."""
    k = int(round(float(getattr(data, "holdout", 0.0)) * n))
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.random.default_rng([int(data.seed), 0x401D]).choice(n, size=k, replace=False)).astype(np.int64)


class _Batcher:
    """Draws the step's (input, target) images and the gate/clamp masks."""

    def __init__(self, prep: Prepared) -> None:
        self.prep = prep
        cfg = prep.config
        ds = prep.dataset
        self.batch_size = cfg.train.batch_size
        self.shard = slice(None)  # this process's rows of the global batch (train/distributed.py)
        self.identity = IdentityPairSampler(ds)
        held = heldout_indices(cfg.data, len(ds))  # never drawn for training (data.holdout)
        self.heldout = None
        if held.size:
            self.heldout = np.zeros(len(ds), dtype=bool)
            self.heldout[held] = True
        self.partitions = prep.partitions
        self.masks = prep.partitions.masks(prep.device) if prep.partitions is not None else None
        if self.partitions is not None:
            self.schedule = Schedule(cfg.gating.schedule, self.partitions.weights())
            if cfg.gating.mode == "clamp":
                # DC-IGN: a batch in which only the active partition's factors vary = all images
                # sharing every *other* factor with one random base image.
                names = ds.factor_space.names
                self.clamp_samplers = []
                for p in cfg.gating.partitions:
                    others = [n for n in names if n not in p.factors]
                    self.clamp_samplers.append(ExactPairSampler(ds, others) if others else IdentityPairSampler(ds))

    def _training_only(self, pairs, sampler, rng: np.random.Generator):
        """``pairs`` with every pair that touches a held-out image redrawn: a held-out input gets a
        fresh pair, a held-out target a fresh target for its input (rejection: inputs stay uniform
        over the training images, targets uniform over the training images that qualify)."""
        if self.heldout is None:
            return pairs
        inp, tgt, noisy = pairs.input.copy(), pairs.target.copy(), pairs.noisy.copy()  # (B,) each
        for _ in range(1000):
            bad = self.heldout[inp]
            if bad.any():
                fresh = sampler.sample(int(bad.sum()), rng)
                inp[bad], tgt[bad], noisy[bad] = fresh.input, fresh.target, fresh.noisy
            bad = self.heldout[tgt] & ~self.heldout[inp]
            if bad.any():
                fresh = sampler.pairs_for(inp[bad], rng)
                tgt[bad], noisy[bad] = fresh.target, fresh.noisy
            if not (self.heldout[inp] | self.heldout[tgt]).any():
                return type(pairs)(inp, tgt, pairs.shared, noisy)
        raise ConfigError("data.holdout leaves too few training images to pair; lower data.holdout")

    def draw(self, step: int, rng: np.random.Generator, finetune: bool):
        ds, cfg = self.prep.dataset, self.prep.config
        gate_mask = clamp_mask = None
        active = -1
        if self.partitions is None or finetune:
            pairs = self._training_only(self.identity.sample(self.batch_size, rng), self.identity, rng)
        else:
            active = self.schedule(step, rng)
            mask = self.masks[active]
            if cfg.gating.mode == "clamp":
                b0 = int(rng.integers(0, len(ds)))
                while self.heldout is not None and self.heldout[b0]:
                    b0 = int(rng.integers(0, len(ds)))
                base = np.full(self.batch_size, b0, dtype=np.int64)
                batch = self._training_only(
                    self.clamp_samplers[active].pairs_for(base, rng), self.clamp_samplers[active], rng
                )
                pairs = self.identity.pairs_for(batch.target, rng)
                clamp_mask = ~mask
            else:
                sampler = self.partitions.samplers[active]
                pairs = self._training_only(sampler.sample(self.batch_size, rng), sampler, rng)
                gate_mask = mask
        inp, tgt = pairs.input[self.shard], pairs.target[self.shard]  # (b,): all of the global batch in one process
        x = ds.images(inp)  # (b, C, H, W)
        target = x if np.array_equal(inp, tgt) else ds.images(tgt)  # (b, C, H, W)
        cond = condition_vectors(ds, cfg.model.condition, tgt, self.prep.device)
        return x, target, cond, gate_mask, clamp_mask, active


def _adam(params, device: torch.device, **kw) -> torch.optim.Optimizer:
    # The fused kernel's step is the fastest measured here (foreach: 1.04x / 1.13x the
    # mlp-1200 / mlp-256 step time; gatedvae bench, docs/performance.md); CPU and CUDA.
    return torch.optim.Adam(params, fused=device.type in ("cpu", "cuda"), **kw)


def _optimizers(model: GenerativeModel, lr: float, device: torch.device) -> dict[str, torch.optim.Optimizer]:
    opts: dict[str, torch.optim.Optimizer] = {
        "main": _adam(model.main_parameters(), device, **{**model.main_optimizer_settings(), "lr": lr})
    }
    settings = model.auxiliary_optimizer_settings()
    for name, module in model.auxiliary_modules().items():
        opts[name] = _adam(module.parameters(), device, **settings.get(name, {"lr": lr}))
    return opts


def _finetune_optimizer(model: GenerativeModel, lr: float, device: torch.device) -> torch.optim.Optimizer:
    return _adam(model.decoder.parameters(), device, lr=lr)


def _set_finetune(model: GenerativeModel, on: bool) -> None:
    """Decoder fine-tuning: the encoder is frozen (no gradient, batch-norm statistics fixed)."""
    for p in model.encoder.parameters():
        p.requires_grad_(not on)
    model.encoder.train(not on)


#: Devices whose loss is checked for NaN every step (a host read). Elsewhere (CUDA) the check is
#: a device-side record read at log and checkpoint steps, so a step never waits for the device
#: (distributed.FiniteGuard); tests/test_sync.py empties this to run that path on the CPU.
PER_STEP_CHECK_DEVICES: tuple[str, ...] = ("cpu",)


def _check_finite(terms: dict[str, torch.Tensor], total: torch.Tensor, step: int, ckpt_dir: Path) -> None:
    if bool(torch.isfinite(total)):
        return
    bad = [name for name, v in terms.items() if not bool(torch.isfinite(v.detach()))] or ["total"]
    value = terms.get(bad[0], total).detach().item()
    last = latest_checkpoint(ckpt_dir)
    kept = (
        f"the last good checkpoint (step {last[0]}) is kept in {ckpt_dir}" if last else "no checkpoint was written yet"
    )
    raise TrainingDiverged(
        f"loss term '{bad[0]}' is {value} at step {step}; {kept}; lower train.lr or the term's weight, or check the data"
    )


def _write_status(run_dir: Path, status: str, step: int, total: int, **extra: Any) -> None:
    _atomic_json(run_dir / "status.json", {"status": status, "step": step, "total_steps": total, **extra})


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines logged after ``step`` (they will be logged again on resume)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            break  # a torn last line from a kill: drop it and everything after
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(k + "\n" for k in keep), encoding="utf-8")
    os.replace(tmp, path)


def check_run_dir_for_new(run_dir: Path) -> None:
    # What a start killed before config.yaml was in place leaves behind counts as empty.
    def leftover(p: Path) -> bool:
        return p.name == "config.yaml.tmp" or (p.name == "checkpoints" and p.is_dir() and not any(p.iterdir()))

    if run_dir.exists() and any(not leftover(p) for p in run_dir.iterdir()):
        raise GatedVAEError(
            f"run directory '{run_dir}' already exists and is not empty; resume it with --resume {run_dir} or choose another --run-dir"
        )


def load_run_config(run_dir: Path) -> Config:
    """The resolved config of an existing run directory."""
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


def train(
    config: Config | None = None,
    run_dir: str | os.PathLike = "runs/run",
    resume: bool = False,
    quiet: bool = False,
    dataset: FactorDataset | None = None,
    tensorboard: bool = True,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Train a config in ``run_dir`` (or resume the run there); returns the summary.

    Args:
        config: the run's config; None with ``resume`` (read from the run directory).
        run_dir: where everything is written. A new run needs an empty or absent directory.
        resume: continue from the latest complete checkpoint in ``run_dir``.
        quiet: no progress bar.
        dataset: an already built dataset (saves rebuilding it; must match ``config.data``).
        tensorboard: write TensorBoard scalars and images.
        stop_after: stop (as if killed, after checkpointing) once this step is reached; for tests.
    """
    run_dir = Path(run_dir)
    if resume:
        saved = load_run_config(run_dir)
        status = _read_status(run_dir)
        if status.get("status") == "finished":
            raise GatedVAEError(
                f"run '{run_dir}' already finished at step {status.get('step')}; nothing to resume (score it with gatedvae evaluate {run_dir}, or train longer in a new run)"
            )
        if config is not None and to_dict(config) != to_dict(saved):
            raise GatedVAEError(
                f"the config differs from the one saved in '{run_dir}'; resume without a config or start a new run"
            )
        config = saved
    else:
        if config is None:
            raise GatedVAEError("no config given; pass a config file or --resume RUN_DIR")
        check_run_dir_for_new(run_dir)
    assert config is not None

    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    # Launched by torchrun: join the process group; only rank 0 writes (train/distributed.py).
    ctx = distributed.setup(resolve_device(config.train.device), config.train.batch_size)
    prep = prepare(config, device=ctx.device, dataset=dataset, progress=not quiet and ctx.is_main)
    model, device = prep.model, prep.device
    if ctx.enabled:
        distributed.convert_sync_batchnorm(model)
    cfg = config.train
    total_steps = cfg.steps + cfg.finetune_steps
    ckpt_dir = run_dir / "checkpoints"
    rng = np.random.default_rng([cfg.seed, 2])
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    optimizers = _optimizers(model, cfg.lr, device)
    finetune_opt = _finetune_optimizer(model, cfg.lr, device) if cfg.finetune_steps else None
    all_opts = dict(optimizers, **({"finetune": finetune_opt} if finetune_opt else {}))
    distributed.average_gradients(ctx, all_opts.values())
    ctx.barrier()  # every process has checked the run directory before rank 0 writes to it

    start = 0
    if resume:
        found = latest_checkpoint(ckpt_dir)
        if found is not None:
            header = load_checkpoint(found[1], model, all_opts, gen)
            rng.bit_generator.state = header["numpy_rng"]
            start = int(header["step"])
        if ctx.is_main:
            _truncate_metrics(run_dir / "metrics.jsonl", start)
    elif ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt_dir.mkdir(exist_ok=True)
        save_config(config, run_dir / "config.yaml")
    if ctx.is_main:
        ckpt_dir.mkdir(exist_ok=True)
        _write_status(run_dir, "running", start, total_steps)

    writer = _tensorboard(run_dir, start) if tensorboard and ctx.is_main else None
    batcher = _Batcher(prep)
    batcher.shard = ctx.batch_shard(cfg.batch_size)
    epoch_len = len(prep.dataset) / cfg.batch_size
    check_every_step = device.type in PER_STEP_CHECK_DEVICES
    guard = distributed.FiniteGuard(
        ctx, check_every_step, lambda terms, total, s: _check_finite(terms, total, s, ckpt_dir)
    )
    sums: dict[str, torch.Tensor] = {}
    n_sum = 0
    t_start = time.perf_counter()
    bar = None
    if not quiet and ctx.is_main:
        from tqdm import tqdm

        bar = tqdm(total=total_steps, initial=start, desc=run_dir.name, unit="step", dynamic_ncols=True)

    def checkpoint(step: int) -> None:
        guard.check()  # never checkpoint past a non-finite step (deferred check on CUDA)
        if not ctx.is_main:
            return
        save_checkpoint(
            ckpt_dir / checkpoint_name(step),
            model,
            all_opts,
            gen,
            {"step": step, "numpy_rng": rng.bit_generator.state, "config": to_dict(config)},
        )
        for _, old in list_checkpoints(ckpt_dir)[: -cfg.keep_checkpoints]:
            old.unlink(missing_ok=True)

    model.train()
    step = start
    phase = None
    shard_draws = ctx.shard_draws(gen)  # each process takes its rows of the global batch's noise
    shard_draws.__enter__()
    try:
        while step < total_steps:
            finetune = step >= cfg.steps
            if finetune != phase:
                _set_finetune(model, finetune)
                phase = finetune
            x, target, cond, gate_mask, clamp_mask, active = batcher.draw(step, rng, finetune)
            out = model.loss(
                x,
                target,
                step,
                gen,
                cond=cond,
                gate_mask=gate_mask,
                gate_regulariser=config.gating.gate_kl,
                clamp_mask=clamp_mask,
            )
            guard.observe(step, out.terms, out.total)  # CPU: checks now; CUDA: a device-side record
            if finetune:
                finetune_opt.zero_grad(set_to_none=True)  # type: ignore[union-attr]
                out.terms["recon"].backward()
                finetune_opt.step()  # type: ignore[union-attr]
                extra = {}
            else:
                optimizers["main"].zero_grad(set_to_none=True)
                out.total.backward()
                optimizers["main"].step()
                extra = model.auxiliary_step(out, optimizers, gen)
            step += 1
            for name, v in {**out.terms, "total": out.total, **extra}.items():
                v = v.detach()
                sums[name] = sums[name] + v if name in sums else v.clone()
            n_sum += 1
            if step % cfg.log_every == 0 or step == total_steps:
                guard.check()
                sums = ctx.mean_over_ranks(sums)  # the global batch's means, identical on every process
                means = {k: float(v) / n_sum for k, v in sums.items()}
                bad = [k for k, v in means.items() if not math.isfinite(v)]
                if bad:
                    _check_finite({k: sums[k] for k in bad}, sums[bad[0]], step, ckpt_dir)
                if ctx.is_main:
                    _log(run_dir, writer, step, epoch_len, means, finetune)
                if bar is not None:
                    bar.set_postfix({k: f"{v:.3g}" for k, v in means.items() if k != "total"}, refresh=False)
                sums, n_sum = {}, 0
            if writer is not None and cfg.image_every and step % cfg.image_every == 0:
                _log_images(writer, prep, step)
            if step % cfg.checkpoint_every == 0 or step == total_steps:
                checkpoint(step)
                if ctx.is_main:
                    _write_status(run_dir, "running", step, total_steps)
            if bar is not None:
                bar.update(1)
            if stop_after is not None and step >= stop_after and step < total_steps:
                checkpoint(step)
                return {"status": "stopped", "step": step}
    except TrainingDiverged as exc:
        if ctx.is_main:
            _write_status(run_dir, "failed", step, total_steps, error=str(exc))
        raise
    finally:
        shard_draws.__exit__(None, None, None)
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.flush()

    elapsed = time.perf_counter() - t_start
    model.eval()
    summary = {
        "status": "finished",
        "steps": total_steps,
        "model": model.describe(),
        "gated": config.gating.enabled,
        "seconds": round(elapsed, 2),
        "images_per_second": round((total_steps - start) * cfg.batch_size / max(elapsed, 1e-9), 1),
        "final": _last_metrics(run_dir / "metrics.jsonl") if ctx.is_main else {},
        **ctx.summary_fields(),
    }
    if not ctx.is_main:
        return summary
    if writer is not None:
        _log_images(writer, prep, step)
        writer.close()
    _atomic_json(run_dir / "summary.json", summary)
    _write_status(run_dir, "finished", step, total_steps)
    if cfg.evaluate != "none":
        from ..evaluate import evaluate_run

        doc = evaluate_run(run_dir, preset=cfg.evaluate, seed=cfg.seed, progress=not quiet)
        summary["evaluation"] = doc["headline"]
        _atomic_json(run_dir / "summary.json", summary)
    return summary


def _read_status(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "status.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def _last_metrics(path: Path) -> dict[str, Any]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        return json.loads(lines[-1]) if lines else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _tensorboard(run_dir: Path, start: int):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency, but keep training if it is broken
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=start if start else None)


def _log(run_dir: Path, writer, step: int, epoch_len: float, means: dict[str, float], finetune: bool) -> None:
    line = {
        "step": step,
        "epoch": round(step / epoch_len, 4),
        "phase": "finetune" if finetune else "train",
        **{k: round(v, 6) for k, v in means.items()},
    }
    with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")
    if writer is not None:
        for k, v in means.items():
            writer.add_scalar(f"loss/{k}", v, step)


def _log_images(writer, prep: Prepared, step: int) -> None:
    from ..viz.figures import reconstruction_tensor, traversal_tensor

    writer.add_image("reconstructions", reconstruction_tensor(prep), step)
    writer.add_image("traversals", traversal_tensor(prep), step)
