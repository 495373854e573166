"""Running a planned sweep: choose the runs (all, one ``--index``, a ``--shard``), skip the finished
ones, group the rest into units of work (one run each, or ensembles with ``--ensemble``:
:mod:`gatedvae.sweep.ensemble`), hand those to a backend (the local pool or Ray), show progress,
and keep ``SWEEP_DIR/status.json`` up to date.

Every call is idempotent: finished runs are skipped, half-finished runs resume from their last
checkpoint, failed runs are tried again (unless ``retry_failed=False``), so ``gatedvae sweep run``
can be repeated until :func:`sweep_status` reports every run done.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ..errors import ConfigError, GatedVAEError
from ..io import atomic_json
from .ensemble import check_strategy, group_runs, parse_ensemble
from .local import available_cores, run_local, visible_gpus
from .runner import STATES, inspect_run, run_dir_of, settle_record
from .spec import read_manifest

__all__ = ["run_sweep", "sweep_status", "select_runs", "parse_shard", "format_status"]


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m:
        raise ConfigError(f"--shard '{text}' is not of the form i/n (for example 0/4)")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"--shard {text}: need 0 <= i < n (shards of 4 are 0/4, 1/4, 2/4, 3/4)")
    return i, n


def select_runs(
    manifest: dict[str, Any], index: int | None = None, shard: tuple[int, int] | None = None
) -> list[dict[str, Any]]:
    """The manifest's runs, or run number ``index`` (0-based), or every n-th run from ``i`` (shard i/n).

    Shards interleave (run k goes to shard k mod n) so that each shard gets a mix of the grid's
    configurations and seeds.
    """
    runs = manifest["runs"]
    if index is not None and shard is not None:
        raise ConfigError("give --index or --shard, not both")
    if index is not None:
        if not 0 <= index < len(runs):
            raise ConfigError(f"--index {index} is out of range: the sweep has {len(runs)} runs (0..{len(runs) - 1})")
        return [runs[index]]
    if shard is not None:
        i, n = shard
        return runs[i::n]
    return list(runs)


def _status_snapshot(sweep_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    states = [inspect_run(run_dir_of(sweep_dir, e), e) for e in manifest["runs"]]
    counts = Counter(s["state"] for s in states)
    doc = {
        "sweep": manifest.get("name"),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "runs": len(states),
        "counts": {k: counts.get(k, 0) for k in STATES},
        "complete": counts.get("done", 0) == len(states),
        "failed": [{"id": s["id"], "name": s["name"], "error": s["error"]} for s in states if s["state"] == "failed"],
        "states": {s["id"]: s["state"] for s in states},
    }
    return doc


def _write_status(sweep_dir: Path, doc: dict[str, Any]) -> None:
    atomic_json(sweep_dir / "status.json", doc, indent=1)


def sweep_status(sweep_dir: str | os.PathLike) -> dict[str, Any]:
    """Every run's state read from its files (see :func:`gatedvae.sweep.runner.inspect_run`)."""
    d = Path(sweep_dir)
    manifest = read_manifest(d)
    runs = [dict(inspect_run(run_dir_of(d, e), e), position=i) for i, e in enumerate(manifest["runs"])]
    counts = Counter(r["state"] for r in runs)
    return {
        "sweep": manifest.get("name"),
        "dir": str(d),
        "runs": runs,
        "counts": {k: counts.get(k, 0) for k in STATES},
        "complete": counts.get("done", 0) == len(runs),
    }


def format_status(status: dict[str, Any], show_all: bool = False) -> str:
    """A few lines: the counts, then the runs that are not done (all runs with ``show_all``)."""
    c = status["counts"]
    n = len(status["runs"])
    head = f"sweep {status['sweep']} ({status['dir']}): {n} runs: " + ", ".join(f"{c[k]} {k}" for k in STATES if c[k])
    lines = [head]
    for r in status["runs"]:
        if r["state"] == "done" and not show_all:
            continue
        extra = ""
        if r["state"] in ("partial", "running", "failed") and r["total"]:
            extra = f" step {r['step']}/{r['total']}"
        if r["error"]:
            extra += f": {r['error']}"
        lines.append(f"  [{r['position']:>3}] {r['id']}  {r['state']:<8} {r['name']}{extra}")
    if not show_all and c.get("done") and c["done"] < n:
        lines.append(f"  ({c['done']} done runs not listed; --all lists them)")
    return "\n".join(lines)


def _step_of(run_dir: Path) -> int | None:
    """The last logged step of a run in flight (tail of metrics.jsonl), or None."""
    path = run_dir / "metrics.jsonl"
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 2048))
            tail = f.read().decode("utf-8", "replace").strip().splitlines()
        return int(json.loads(tail[-1])["step"]) if tail else None
    except (OSError, ValueError, KeyError, IndexError):
        return None


def run_sweep(
    sweep_dir: str | os.PathLike,
    workers: int = 1,
    index: int | None = None,
    shard: tuple[int, int] | None = None,
    backend: str = "local",
    address: str | None = None,
    cpus: float | None = None,
    gpus: float | None = None,
    retry_failed: bool = True,
    tensorboard: bool = True,
    progress: bool = True,
    workers_per_gpu: int | None = None,
    ensemble: int | str = 1,
    ensemble_strategy: str = "auto",
    eval_workers: int = 0,
) -> dict[str, Any]:
    """Run the sweep in ``sweep_dir`` (or the selected part of it) until each run is done or failed.

    Args:
        sweep_dir: a directory written by ``gatedvae sweep plan`` (holds ``manifest.json``).
        workers: local backend: runs at once, each in its own process (1: in this process);
            torch gets ``cores // workers`` threads per run unless a config sets ``train.threads``.
            With CUDA devices visible, worker ``i`` runs on GPU ``i mod N`` (it sees that GPU only,
            as ``cuda:0``; :func:`gatedvae.sweep.local.gpu_slots`).
            Ray backend without ``address``: the CPUs of the local Ray instance.
        workers_per_gpu: local backend: ``K`` runs at once on each visible GPU (``workers`` becomes
            ``K`` x the GPUs); ConfigError when no GPU is visible.
        index: run only manifest run ``index`` (a job-array task id).
        shard: ``(i, n)``: run every n-th run starting at i.
        backend: ``local`` or ``ray``.
        address: the Ray cluster to join (``auto``, ``ray://host:10001``); None starts a local one.
        cpus, gpus: Ray's request per run (default: the sweep file's ``resources``, else 1 CPU, 0 GPU).
        retry_failed: try failed runs again.
        tensorboard: write TensorBoard logs in each run.
        progress: a bar over runs (with the steps of the runs in flight; plain lines when stderr
            is not a terminal, :mod:`gatedvae.progress`).
        ensemble: the most runs trained together as one ensemble, one unit of work (a local
            worker's, a Ray task's); 1: each run alone; ``"auto"``: all runs of a group on CUDA
            (at most 32), 1 on the CPU. The selected runs not done are grouped by ensemble key
            and resume step, in manifest order (:func:`gatedvae.sweep.ensemble.group_runs`).
        ensemble_strategy: how an ensemble's step is computed: ``auto``, ``loop``, ``stacked``
            (:func:`gatedvae.train.train_ensemble`).
        eval_workers: local backend: the workers only train, and up to this many CPU processes
            evaluate the runs they trained meanwhile (on the CPU); 0: each run is evaluated by
            the worker that trained it, right after its training (ensembles: after the ensemble's).

    Returns:
        ``{"selected", "skipped", "done", "failed", "busy", "units", "outcomes", "status"}``
        (``units``: the units of work handed to the backend: runs and ensembles).
    """
    d = Path(sweep_dir)
    manifest = read_manifest(d)
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    if backend not in ("local", "ray"):
        raise ConfigError(f"--backend {backend}: use local or ray")
    ensemble = parse_ensemble(ensemble)
    ensemble_strategy = check_strategy(ensemble_strategy)
    if eval_workers < 0:
        raise ConfigError(f"--eval-workers must be 0 or more, got {eval_workers}")
    if eval_workers and backend != "local":
        raise ConfigError("--eval-workers is for --backend local; a Ray task evaluates the runs it trained")
    devices = visible_gpus() if backend == "local" else []  # (``gpus`` is Ray's request per run)
    if workers_per_gpu is not None:
        if backend != "local":
            raise ConfigError("--workers-per-gpu is for --backend local; with Ray use --gpus-per-run")
        if workers_per_gpu < 1:
            raise ConfigError(f"--workers-per-gpu must be at least 1, got {workers_per_gpu}")
        if not devices:
            raise ConfigError("--workers-per-gpu: no CUDA device is visible here; use --workers N")
        workers = workers_per_gpu * len(devices)
    selected = select_runs(manifest, index, shard)
    todo, skipped = [], []
    for e in selected:
        state = inspect_run(run_dir_of(d, e), e)["state"]
        if state == "done" or (state == "failed" and not retry_failed):
            skipped.append((e, state))
            if state == "done":
                settle_record(run_dir_of(d, e), e)  # a worker killed after evaluating left it "running"
        else:
            todo.append(e)
    res = manifest.get("resources") or {}
    ray_gpus = gpus if gpus is not None else res.get("gpus", 0)
    on_cuda = bool(devices) if backend == "local" else ray_gpus > 0  # where the units will train
    if backend != "local":  # Ray: the cluster's size is not known here; on its CPUs one run per task
        slots = 1 if on_cuda else max(1, len(todo))
    else:
        slots = min(workers, len(devices)) if on_cuda else workers  # GPUs in use, or CPU workers
    units = group_runs(d, todo, ensemble, cuda=on_cuda, slots=slots, strategy=ensemble_strategy)
    counts: Counter[str] = Counter(state for _, state in skipped)
    outcomes: list[dict[str, Any]] = []
    in_flight: dict[str, dict[str, Any]] = {}
    bar = None
    if progress:
        from ..progress import progress_bar

        bar = progress_bar(  # a bar on a terminal, plain lines in a log file
            total=len(selected), initial=len(skipped), desc=f"sweep {manifest.get('name')}", unit="run", file=sys.stderr
        )
        if skipped:
            bar.write(
                f"{sum(1 for _, s in skipped if s == 'done')} of {len(selected)} runs already done"
                + (f", {counts['failed']} failed runs skipped" if counts.get("failed") else "")
            )
        if ensemble != 1 and todo:
            sizes = sorted((len(u) for u in units), reverse=True)
            bar.write(
                f"{len(todo)} runs in {len(units)} units of work (--ensemble {ensemble}): ensembles of "
                + ", ".join(str(n) for n in sizes)
            )

    def postfix() -> None:
        if bar is None:
            return
        shown = {"done": counts.get("done", 0), "failed": counts.get("failed", 0)}
        flying = []
        for e in list(in_flight.values())[:3]:
            step = _step_of(run_dir_of(d, e))
            total = int(e["config"]["train"]["steps"]) + int(e["config"]["train"].get("finetune_steps", 0))
            name = e["name"] if len(e["name"]) <= 40 else e["name"][:19] + "..." + e["name"][-18:]
            flying.append(f"{name} {step if step is not None else 0}/{total}")
        if flying:
            shown["running"] = "; ".join(flying)
        bar.set_postfix(shown, refresh=True)

    def on_start(entry: dict[str, Any]) -> None:
        in_flight[entry["id"]] = entry
        postfix()

    def on_result(outcome: dict[str, Any]) -> None:
        in_flight.pop(outcome["id"], None)
        outcomes.append(outcome)
        counts[outcome["state"] if outcome["action"] != "busy" else "busy"] += 1
        if bar is not None:
            if outcome["state"] == "failed":
                bar.write(f"failed: {outcome['name']} ({outcome['id']}): {outcome['error']}")
            elif outcome["action"] == "busy":
                bar.write(f"busy: {outcome['name']} ({outcome['id']}) is being run by another process; skipped")
            bar.update(1)
            postfix()

    cores = available_cores()
    try:
        if backend == "local":
            threads = max(1, cores // workers)
            run_local(
                d,
                units,
                workers=workers,
                threads=threads,
                retry_failed=retry_failed,
                tensorboard=tensorboard,
                on_start=on_start,
                on_result=on_result,
                on_tick=postfix,
                gpus=devices,
                strategy=ensemble_strategy,
                eval_workers=eval_workers,
                eval_threads=max(1, cores // (workers + eval_workers)),
            )
        else:
            from .ray_backend import run_ray

            run_ray(
                d,
                units,
                address=address,
                num_cpus=workers if (address is None and workers > 1) else None,
                cpus=cpus if cpus is not None else res.get("cpus", 1),
                gpus=ray_gpus,
                retry_failed=retry_failed,
                tensorboard=tensorboard,
                on_start=on_start,
                on_result=on_result,
                on_tick=postfix,
                strategy=ensemble_strategy,
            )
    finally:
        if bar is not None:
            bar.close()
        try:
            status = _status_snapshot(d, manifest)
            _write_status(d, status)
        except (OSError, GatedVAEError):  # pragma: no cover - never hide the real error
            status = {}
    return {
        "selected": len(selected),
        "skipped": len(skipped),
        "done": sum(1 for o in outcomes if o["state"] == "done") + sum(1 for _, s in skipped if s == "done"),
        "failed": sum(1 for o in outcomes if o["state"] == "failed") + sum(1 for _, s in skipped if s == "failed"),
        "busy": sum(1 for o in outcomes if o["action"] == "busy"),
        "units": len(units),
        "outcomes": outcomes,
        "status": status,
    }
