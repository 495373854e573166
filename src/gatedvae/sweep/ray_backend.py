"""The Ray backend: one Ray task per unit of work (a run, or an ensemble of runs with
``--ensemble``), with its CPU/GPU request (optional extra ``gatedvae[ray]``).

Each task calls :func:`gatedvae.sweep.ensemble.run_unit` (for one run:
:func:`gatedvae.sweep.runner.run_one`) on the node Ray picks, so the sweep
directory must be on a filesystem every node sees (the usual NFS/Lustre home of a cluster) and
``gatedvae`` must be installed in every node's Python. A task asks for ``cpus`` CPUs (and
``gpus`` GPUs); torch in the task gets ``cpus`` threads unless the run's config sets
``train.threads``. With ``gpus=0`` Ray hides the GPUs from the task and ``train.device=auto``
trains on the CPU.

Tasks are not retried by Ray (``max_retries=0``): a failure is recorded in the run's directory
like any other, and the next ``gatedvae sweep run`` resumes the run from its checkpoint. A task
whose worker dies (a node lost, out of memory) is recorded as failed with Ray's message (for an
ensemble: each of its runs that is not done).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import GatedVAEError
from .ensemble import run_unit
from .runner import RECORD, inspect_run, outcome_of, record_failure, run_dir_of, settle_record

__all__ = ["run_ray"]


def _task(
    sweep_dir: str, unit: list[dict[str, Any]], threads: int, retry_failed: bool, tensorboard: bool, strategy: str
) -> list[dict[str, Any]]:
    return run_unit(
        sweep_dir, unit, threads=threads, retry_failed=retry_failed, tensorboard=tensorboard, strategy=strategy
    )


def _too_big(cpus: float, gpus: float, have_cpus: float, have_gpus: float, where: str) -> str:
    return (
        f"each run asks for {cpus:g} CPUs and {gpus:g} GPUs but {where} has {have_cpus:g} CPUs and {have_gpus:g} "
        "GPUs; lower --cpus-per-run/--gpus-per-run (or resources: in the sweep file)"
    )


def _check_local_request(cpus: float, gpus: float, num_cpus: int | None) -> None:
    """Refuse a request a local instance cannot meet before starting it (Ray would wait forever)."""
    from .local import available_cores

    have_cpus = num_cpus or available_cores()
    have_gpus = 0
    if gpus > 0:
        import torch

        have_gpus = torch.cuda.device_count()
    if cpus > have_cpus or gpus > have_gpus:
        raise GatedVAEError(_too_big(cpus, gpus, have_cpus, have_gpus, "this machine's local Ray instance"))


def _started(
    sweep_dir: str | os.PathLike, waiting: dict[str, dict[str, Any]], since: str, limit: int = 256
) -> list[dict[str, Any]]:
    """Entries of ``waiting`` whose run a Ray worker has started since ``since`` (for the progress bar)."""
    out = []
    for rid, entry in list(waiting.items())[:limit]:
        try:
            rec = json.loads((run_dir_of(sweep_dir, entry) / RECORD).read_text(encoding="utf-8"))
            last = rec["history"][-1]
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            continue
        if last.get("outcome") == "running" and str(last.get("started", "")) >= since:
            out.append(waiting.pop(rid))
    return out


def run_ray(
    sweep_dir: str | os.PathLike,
    work: list[dict[str, Any] | list[dict[str, Any]]],
    address: str | None = None,
    num_cpus: int | None = None,
    cpus: float = 1,
    gpus: float = 0,
    retry_failed: bool = True,
    tensorboard: bool = True,
    on_start: Callable[[dict[str, Any]], None] | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    on_tick: Callable[[], None] | None = None,
    poll: float = 2.0,
    strategy: str = "auto",
) -> None:
    """Run ``work`` as Ray tasks; ``address=None`` starts a local Ray instance (``num_cpus`` CPUs).

    ``work``: the units, each a manifest entry (one run) or a list of entries (an ensemble, trained
    together with ``strategy``); one task per unit, asking for ``cpus`` CPUs and ``gpus`` GPUs.
    ``on_start``/``on_result`` are called per run. If Ray is already initialised in this process,
    that instance is used and left running.
    """
    try:
        import ray
    except ImportError:
        raise GatedVAEError("the Ray backend needs ray; install it with pip install 'gatedvae[ray]'") from None
    if cpus <= 0 or gpus < 0:
        raise GatedVAEError(
            f"a run must ask Ray for a positive number of CPUs and no negative GPUs (got cpus={cpus}, gpus={gpus})"
        )
    units = [[w] if isinstance(w, dict) else list(w) for w in work]
    if not units:
        return
    on_start = on_start or (lambda e: None)
    on_result = on_result or (lambda o: None)
    started_here = False
    if not ray.is_initialized() and not address:
        _check_local_request(cpus, gpus, num_cpus)
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"log_to_driver": False}
        if address:
            kwargs["address"] = address
        else:
            kwargs["include_dashboard"] = False
            if num_cpus:
                kwargs["num_cpus"] = num_cpus
        try:
            ray.init(**kwargs)
        except ConnectionError as exc:
            raise GatedVAEError(
                f"cannot reach the Ray cluster at {address}: {str(exc).splitlines()[0]}; "
                "start it with ray start --head, or drop --address for a local instance"
            ) from None
        started_here = True
    pending: dict[Any, list[dict[str, Any]]] = {}
    try:
        total = ray.cluster_resources()
        if cpus > total.get("CPU", 0) or gpus > total.get("GPU", 0):
            raise GatedVAEError(_too_big(cpus, gpus, total.get("CPU", 0), total.get("GPU", 0), "the Ray cluster"))
        remote = ray.remote(_task).options(num_cpus=cpus, num_gpus=gpus, max_retries=0)
        sweep_abs = str(Path(sweep_dir).resolve())
        threads = max(1, int(math.floor(cpus)))
        submitted = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        for unit in units:
            pending[remote.remote(sweep_abs, unit, threads, retry_failed, tensorboard, strategy)] = unit
        waiting = {e["id"]: e for unit in units for e in unit}  # submitted, not seen starting yet
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=poll)
            for entry in _started(sweep_dir, waiting, submitted):
                on_start(entry)
            if on_tick is not None:
                on_tick()
            for ref in ready:
                unit = pending.pop(ref)
                for entry in unit:
                    waiting.pop(entry["id"], None)
                try:
                    outcomes = ray.get(ref)
                except Exception as exc:  # the task's worker died or Ray failed it
                    msg = f"Ray task failed: {type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
                    outcomes = []
                    for entry in unit:
                        run_dir = run_dir_of(sweep_dir, entry)
                        if len(unit) > 1 and inspect_run(run_dir, entry, check_lock=False)["state"] == "done":
                            settle_record(run_dir, entry)  # an ensemble's member evaluated before the loss
                            outcomes.append(outcome_of(entry, state="done", action="checked"))
                            continue
                        record_failure(run_dir, msg, str(exc))
                        outcomes.append(outcome_of(entry, action="failed", error=msg))
                for outcome in outcomes:
                    on_result(outcome)
    except BaseException:
        for ref in pending:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # pragma: no cover - best effort on the way out
                pass
        raise
    finally:
        if started_here:
            ray.shutdown()
