"""Evaluate a trained run: every metric into ``RUN/metrics.json``, the figures into ``RUN/figures/``.

One call, :func:`evaluate_run`, does what ``gatedvae evaluate RUN_DIR`` does:

1. read the run's resolved config and its latest checkpoint (a one-line error if the directory
   is missing, is not a run, or has no checkpoint yet) and rebuild its dataset and model exactly
   as training did (:func:`gatedvae.run.load_trained`, the one loader of a trained run), on the
   evaluation's device (``--device``, :func:`evaluation_device`: CUDA when there is one, whatever
   device the run was trained on; a run trained on a GPU evaluates on a CPU-only machine). At the
   end of training (:class:`gatedvae.callbacks.EvaluateAtEnd`) nothing is rebuilt: the trainer's
   dataset and model are evaluated in place (one copy of the data on the device);
2. run the metrics through the suite (:func:`gatedvae.evaluation.evaluate_model`) with a preset's
   sample sizes and one seed;
3. write ``RUN/metrics.json`` atomically: every score with its parameters, sample sizes and the
   time it took, the seed, the preset and the checkpoint step; plain JSON (numpy arrays become
   lists, NaN becomes ``null``, infinities the strings ``"inf"`` / ``"-inf"``);
4. write the figures into ``RUN/figures/`` (:func:`gatedvae.viz.evaluation.write_figures`):
   Hinton diagrams of the DCI importance, latent traversals, reconstructions, KL per latent,
   training curves, swap grids for gated runs and the model's own figures (InfoGAN's samples).

:func:`udr_runs` scores several runs of one configuration (different seeds) against each other
with UDR (Duan et al., lecture ``002_b6b404b9b5e7b646.txt``), the one metric that needs more than
one model.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..config import Config
from ..errors import ConfigError, DataError
from ..io import atomic_json
from ..metrics import preset_kwargs, udr
from ..metrics.unsupervised import kl_per_dim
from ..run import device_option, find_checkpoint, heldout_indices, load_run_config, load_trained
from ..runlock import unfinished_note
from ..viz.evaluation import write_figures
from .encoding import encode_posterior
from .suite import SAMPLE_SIZES, evaluate_model, headline, resolve_metrics

if TYPE_CHECKING:  # pragma: no cover
    from ..data.base import FactorDataset
    from ..run import Prepared

__all__ = ["evaluate_run", "udr_runs", "evaluation_device", "to_jsonable", "write_json", "format_headline", "FORMAT"]

FORMAT = "gatedvae-metrics-1"


# --------------------------------------------------------------------------- JSON
def _float(x: float) -> float | str | None:
    if math.isnan(x):
        return None
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def to_jsonable(obj: Any) -> Any:
    """Plain JSON data from metric results: numpy -> lists and scalars, tuple keys -> ``"i,j"``,
    NaN -> None, +-inf -> ``"inf"`` / ``"-inf"``, paths -> strings."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            key = ",".join(str(p) for p in k) if isinstance(k, tuple) else str(k)
            out[key] = to_jsonable(v)
        return out
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return _float(float(obj))
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


def write_json(path: str | os.PathLike, data: dict) -> Path:
    """Write an evaluation document (``metrics.json``; already :func:`to_jsonable`) atomically."""
    return atomic_json(path, data, indent=1)


# --------------------------------------------------------------------------- the device
def evaluation_device(device: str | torch.device | None = "auto") -> torch.device:
    """The device an evaluation encodes and decodes on: ``auto`` (or None) = the first CUDA device
    when there is one, else the CPU; ``cpu``, ``cuda`` or ``cuda:N`` as given, checked.

    Independent of the device the run was trained on (its ``train.device``): a run trained on a
    GPU is evaluated on a CPU-only machine with ``auto`` or ``cpu``. ConfigError (one line) for a
    device this machine lacks or a name that is not a device.
    """
    return device_option(device, "--device", auto=True)


# --------------------------------------------------------------------------- held-out images
def _heldout(config: Config, progress: bool, n_images: int):
    """Images for the reconstruction scores that the model did not train on, where there are any.

    ``data.holdout > 0``: the indices the trainer never drew (:func:`gatedvae.run.heldout_indices`,
    same data config, same images). Otherwise CorrelatedEllipses, which is drawn from a seed: a
    fresh set with another seed (up to 5,000 images; new images as far as its quantised factors
    allow). Otherwise None: every image was a training image, the scores use training images and
    ``metrics.json`` says so in ``source``.
    """
    held = heldout_indices(config.data, n_images)
    if held.size:
        return held
    if config.data.name != "ellipses":
        return None
    from ..data import build_dataset

    cfg = replace(config.data, seed=config.data.seed + 7919, size=min(config.data.size, 5000))
    return build_dataset(cfg, progress=progress)


# --------------------------------------------------------------------------- the command
def evaluate_run(
    run_dir: str | os.PathLike,
    metrics: str | Iterable[str] | None = None,
    preset: str = "default",
    seed: int = 0,
    progress: bool = True,
    figures: bool = True,
    device: str | torch.device | None = "auto",
    *,
    prep: Prepared | None = None,
    dataset: FactorDataset | None = None,
) -> dict:
    """Evaluate the latest checkpoint of a run; write ``RUN/metrics.json`` and ``RUN/figures/``.

    Args:
        run_dir: a run directory written by :func:`gatedvae.train.train`.
        metrics: metric names or aliases (``"dci,mig"``, a list; see
            :func:`gatedvae.metrics.resolve_metrics`); None = every per-run metric.
        preset: ``"default"`` (the reference papers' sample sizes) or ``"fast"``.
        seed: seeds every random choice of the evaluation (samples, splits, classifiers, figures).
        progress: tqdm bars (dataset building and the metrics).
        figures: also write the figures.
        device: where the model encodes and decodes (:func:`evaluation_device`: ``auto``, ``cpu``,
            ``cuda``, ``cuda:N``); the metrics themselves are numpy on the CPU.
        prep: the run already built, its model holding the weights of the run's latest checkpoint
            (the trainer's own when training ends, :class:`gatedvae.callbacks.EvaluateAtEnd`): it is
            evaluated where it is, nothing is rebuilt or reloaded, ``device`` is not used.
        dataset: the run's dataset already built (a sweep worker's, shared with its training),
            on the evaluation's device or moved there; saves building it again.

    Returns:
        the JSON-safe content written to ``metrics.json``.

    A run still being trained by another process (or stopped before its last step) is evaluated
    all the same, with one line on stderr saying so and which checkpoint step was read.
    """
    t_start = time.perf_counter()
    names = resolve_metrics(metrics)  # refuse a bad name before any expensive work
    if preset not in SAMPLE_SIZES:
        raise ConfigError(f"unknown preset '{preset}'; use default or fast")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed: expected a non-negative integer, got {seed!r}")
    run = Path(run_dir)
    if prep is None:
        dev = evaluation_device(device)  # refuse a device this machine lacks before building anything
        prep, step, ckpt = load_trained(run, progress=progress, device=dev, dataset=dataset)
    else:
        step, ckpt = find_checkpoint(run)  # the weights the trainer holds: its last checkpoint's
    note = unfinished_note(run, step, "evaluating")  # a run still training, or stopped early
    if note:
        print(note, file=sys.stderr)
    heldout = _heldout(prep.config, progress, len(prep.dataset)) if "reconstruction" in names else None
    t_eval = time.perf_counter()
    result = evaluate_model(  # None, not every name: on data without factors, skip what needs them
        prep,
        None if metrics is None else names,
        preset,
        rng=np.random.default_rng(int(seed)),
        progress=progress,
        heldout=heldout,
    )
    t_metrics = time.perf_counter() - t_eval

    parts = prep.partitions
    doc: dict[str, Any] = {
        "format": FORMAT,
        "run": str(run),
        "checkpoint": ckpt.name,
        "checkpoint_step": int(step),
        "device": str(prep.device),
        "seed": int(seed),
        "preset": preset,
        "metrics": result["metrics"],
        **({"skipped": result["skipped"]} if "skipped" in result else {}),
        "model": prep.model.describe(),
        "latent_dim": prep.model.latent_dim,
        "gated": parts is not None,
        "partitions": [
            {
                "name": p.name,
                "dims": [parts.slice(i).start, parts.slice(i).stop],
                "factors": list(p.factors),
                "sampler": p.sampler,
            }
            for i, p in enumerate(prep.config.gating.partitions)
        ]
        if parts is not None
        else [],
        "dataset": result["dataset"],
        "samples": result["samples"],
        "headline": headline(result),
        "posterior": result["posterior"],
        "results": result["results"],
        "timing": {
            "metrics_seconds": t_metrics,
            "encode_seconds": result["encode_seconds"],
            "encoded_images": result["encoded_images"],
            "per_metric_seconds": {k: v["seconds"] for k, v in result["results"].items()},
        },
        "rng_base": result["rng_base"],
        "figures": [],
    }
    if figures:
        t_fig = time.perf_counter()
        paths = write_figures(prep, result, run, seed)
        doc["figures"] = [str(p.relative_to(run)) for p in paths]
        doc["timing"]["figures_seconds"] = time.perf_counter() - t_fig
    doc["timing"]["elapsed_seconds"] = time.perf_counter() - t_start
    doc = to_jsonable(doc)
    write_json(run / "metrics.json", doc)
    return doc


def format_headline(doc: dict) -> str:
    """A short table of the headline scores of an evaluation (``metrics.json`` content)."""
    lines = [
        f"{doc['run']}  step {doc['checkpoint_step']}  preset {doc['preset']}  seed {doc['seed']}  ({doc['model']})"
    ]
    rows = []
    for key, value in doc["headline"].items():
        metric, _, score = key.partition(".")
        secs = doc["timing"]["per_metric_seconds"].get(metric)
        shown = "-" if value is None else (f"{value:.4g}" if isinstance(value, float) else str(value))
        rows.append((metric, score, shown, f"{secs:.1f} s" if secs is not None else ""))
    if rows:
        w = [max(len(r[i]) for r in rows) for i in range(3)]
        last = None
        for metric, score, shown, secs in rows:
            first = metric != last
            lines.append(
                f"  {metric if first else '':<{w[0]}}  {score:<{w[1]}}  {shown:>{w[2]}}  {secs if first else ''}"
            )
            last = metric
    figures = f"{len(doc['figures'])} figures in {Path(doc['run']) / 'figures'}"
    lines.append(f"  total {doc['timing']['elapsed_seconds']:.1f} s; {figures}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- UDR over runs
def udr_runs(
    run_dirs: Sequence[str | os.PathLike],
    preset: str = "default",
    seed: int = 0,
    device: str | torch.device | None = "auto",
    **overrides,
) -> dict:
    """UDR scores of several runs of one configuration (Duan et al.), JSON-safe.

    Every run is encoded on the same images (drawn from the first run's dataset with ``seed``;
    the runs must share their data config), on ``device`` (:func:`evaluation_device`); the dataset
    is built once and shared by the runs. A latent is active when its mean KL exceeds the
    preset's ``kl_threshold``. Returns ``{"runs": [...], "model_scores": [...], "pairwise":
    [[...]], ...}`` (the :func:`gatedvae.metrics.udr` output plus the run names and sizes).
    """
    if len(run_dirs) < 2:
        raise ConfigError("udr_runs needs at least two runs of the same configuration (different seeds)")
    rng = np.random.default_rng([int(seed), 5])
    n = SAMPLE_SIZES.get(preset, SAMPLE_SIZES["default"])["codes"]
    dev = evaluation_device(device)
    codes, kls, data_cfg, idx, shared = [], [], None, None, None
    for run in run_dirs:
        if data_cfg is not None and load_run_config(run).data != data_cfg:
            raise DataError(
                f"run {run} was trained on other data than {run_dirs[0]}; UDR compares runs on the same images"
            )
        prep, _, _ = load_trained(run, device=dev, dataset=shared)
        if data_cfg is None:
            data_cfg, shared = prep.config.data, prep.dataset
            idx = np.sort(rng.choice(len(prep.dataset), size=min(n, len(prep.dataset)), replace=False))
        mu, logvar = encode_posterior(prep, idx)
        codes.append(mu.astype(np.float64))
        kls.append(np.asarray(kl_per_dim(mu, logvar)))
    kwargs = dict(preset_kwargs("udr", preset), **overrides)
    out = udr(codes, rng, kl=kls, **kwargs)
    out.pop("similarity", None)  # (D_i, D_j) matrices per pair: large and rarely read
    return to_jsonable(
        {"runs": [str(r) for r in run_dirs], "params": kwargs, "samples": int(idx.size), "device": str(dev), **out}
    )
