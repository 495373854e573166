"""One run of a sweep: train (or resume) it, evaluate it, record the outcome.

A sweep's run lives in ``SWEEP_DIR/runs/<id>/``, an ordinary run directory (``gatedvae train
--resume`` and ``gatedvae evaluate`` work on it) plus files of the sweep's own:

* ``sweep.json``: the run's id and name, its state (``running``, ``done``, ``failed``), the last
  error in one line, and the history of attempts (when, where, what was done, resumed from which
  step);
* ``error.txt``: the full traceback of the last failure (removed when a later attempt succeeds);
* ``log.txt``: what the run printed (warnings, the traceback of failures), one section per attempt;
* ``.lock``: the run's lock (:mod:`gatedvae.runlock`), held while a process works on the run, so
  two ``gatedvae sweep run`` invocations, or a sweep and a plain ``gatedvae train --resume``,
  never train the same run at once (``train()`` runs inside the sweep's hold: the lock is
  re-entrant within a thread).

A run's dataset is built once for its training and its evaluation (on the run's device), and a
sweep worker keeps it for its next run when that one uses the same data (:class:`DatasetSlot`).

The state of a run is read from its files, which are the truth (:func:`inspect_run`):
``pending`` (nothing trained), ``partial`` (stopped with or without a checkpoint: resumed next
time), ``trained`` (training finished, evaluation missing or made with other settings),
``done``, ``failed`` (the last attempt raised; retried next time unless told otherwise) and
``running`` (another process holds the lock).
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

from .. import runlock
from ..errors import GatedVAEError
from ..io import atomic_json, read_json
from .spec import EvalSettings

__all__ = [
    "run_one",
    "inspect_run",
    "record_failure",
    "run_dir_of",
    "DatasetSlot",
    "RECORD",
    "ERROR_FILE",
    "STATES",
]

RECORD = "sweep.json"
LOG = "log.txt"
ERROR_FILE = "error.txt"
STATES = ("done", "failed", "running", "partial", "trained", "pending")


def run_dir_of(sweep_dir: str | os.PathLike, entry: dict[str, Any]) -> Path:
    run_id = str(entry.get("id", ""))
    if len(run_id) != 12 or any(c not in "0123456789abcdef" for c in run_id):  # a hand-edited manifest
        raise GatedVAEError(
            f"run id {run_id!r} in the manifest of '{sweep_dir}' is not a config hash; plan the sweep again"
        )
    return Path(sweep_dir) / "runs" / run_id


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _locked(run_dir: Path, wait: float = 0.0):
    """Hold the run's lock for the block (yields False, holding nothing, if another process has it)."""
    return runlock.locked(run_dir, "sweep", wait=wait)


def _is_locked(run_dir: Path) -> bool:
    return runlock.is_locked(run_dir)


def _total_steps(entry: dict[str, Any]) -> int:
    train = entry["config"].get("train", {})
    return int(train.get("steps", 0)) + int(train.get("finetune_steps", 0))


def _metrics_ok(run_dir: Path, ev: EvalSettings, total_steps: int) -> bool:
    """Whether ``metrics.json`` holds an evaluation of the final checkpoint with the sweep's settings."""
    from ..evaluation import resolve_metrics

    doc = read_json(run_dir / "metrics.json")
    if not doc:
        return False
    wanted = set(resolve_metrics(list(ev.metrics) if ev.metrics is not None else None))
    return (
        doc.get("preset") == ev.preset
        and doc.get("seed") == ev.seed
        and doc.get("checkpoint_step") == total_steps
        and wanted <= set(doc.get("metrics") or [])
        and (not ev.figures or bool(doc.get("figures")))
    )


def inspect_run(run_dir: str | os.PathLike, entry: dict[str, Any], check_lock: bool = True) -> dict[str, Any]:
    """The state of one run from its files: ``{"state", "step", "total", "error", ...}``."""
    run_dir = Path(run_dir)
    total = _total_steps(entry)
    out: dict[str, Any] = {
        "id": entry["id"],
        "name": entry["name"],
        "state": "pending",
        "step": 0,
        "total": total,
        "error": None,
    }
    if not run_dir.is_dir():
        return out
    record = read_json(run_dir / RECORD)
    status = read_json(run_dir / "status.json")
    out["step"] = int(status.get("step", 0))
    out["attempts"] = len(record.get("history", []))
    if check_lock and _is_locked(run_dir):
        out["state"] = "running"
        return out
    failed = record.get("state") == "failed"
    if failed:
        out["error"] = record.get("error")
    ev = EvalSettings.from_json(entry.get("evaluate"))
    if status.get("status") == "finished":
        if ev is None or _metrics_ok(run_dir, ev, total):
            out["state"] = "done"
            out["error"] = None
        else:
            out["state"] = "failed" if failed else "trained"
        return out
    if failed or status.get("status") == "failed":
        out["state"] = "failed"
        out["error"] = out["error"] or status.get("error")
    elif (run_dir / "config.yaml").is_file():
        out["state"] = "partial"
    return out


def settle_record(run_dir: str | os.PathLike, entry: dict[str, Any]) -> bool:
    """Bring ``sweep.json`` in line with a run whose files say ``done``; True if it was changed.

    A worker killed between writing ``metrics.json`` and updating ``sweep.json`` leaves a finished
    run whose record still says ``running``. The files are the truth (see :func:`inspect_run`);
    this closes the record: the interrupted attempt's outcome becomes ``done`` (``recorded`` says
    when that was noticed). Nothing else of the run is touched. A run another process holds is
    left alone.
    """
    run_dir = Path(run_dir)
    if not (run_dir / RECORD).is_file() or read_json(run_dir / RECORD).get("state") == "done":
        return False
    with _locked(run_dir) as got:
        if not got or inspect_run(run_dir, entry, check_lock=False)["state"] != "done":
            return False
        return _settle(run_dir)


def _settle(run_dir: Path) -> bool:
    """:func:`settle_record` for a run known to be done, with its lock held."""
    record = read_json(run_dir / RECORD)
    if not record or record.get("state") == "done":
        return False
    hist = record.setdefault("history", [])
    if hist and hist[-1].get("outcome") in ("running", "interrupted"):
        hist[-1].update(outcome="done", recorded=_now())
    record.update(state="done", error=None, updated=_now())
    atomic_json(run_dir / RECORD, record, indent=1)
    (run_dir / ERROR_FILE).unlink(missing_ok=True)
    return True


def record_failure(run_dir: str | os.PathLike, message: str, details: str = "") -> None:
    """Mark a run failed with a one-line ``message`` (``details``: a traceback for error.txt)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    record = read_json(run_dir / RECORD)
    record.update(state="failed", error=message, updated=_now())
    hist = record.setdefault("history", [])
    if hist and hist[-1].get("outcome") == "running":
        hist[-1].update(outcome="failed", ended=_now(), error=message)
    atomic_json(run_dir / RECORD, record, indent=1)
    (run_dir / ERROR_FILE).write_text((details or message).rstrip() + "\n", encoding="utf-8")


class DatasetSlot:
    """The dataset of the last run, kept for the next one with the same data config and device.

    A sweep worker trains runs one after another, usually on the same data: building dSprites
    again for each (and copying it to the GPU again) is wasted time, and holding more than one
    is wasted memory. The slot holds one dataset; a run with other data replaces it (the old one
    is let go before the new one is built).
    """

    def __init__(self) -> None:
        self.key: str | None = None
        self.dataset: Any = None
        self.builds = 0

    def get(self, data: Any, device: Any) -> Any:
        """The dataset of ``data`` (a :class:`~gatedvae.config.DataConfig`) on ``device``."""
        import json

        from ..config import to_dict
        from ..data import build_dataset

        key = json.dumps([to_dict(data), str(device)], sort_keys=True)
        if key != self.key:
            self.key, self.dataset = None, None
            self.dataset = build_dataset(data).to(device)
            self.key = key
            self.builds += 1
        return self.dataset


def _device_of(config: Any) -> Any:
    """Where a run trains and is evaluated: its ``train.device`` resolved; a run trained on a GPU
    and evaluated on a machine without one is evaluated on the CPU (``gatedvae evaluate``'s auto)."""
    from ..errors import ConfigError
    from ..evaluation import evaluation_device
    from ..run import resolve_device

    try:
        return resolve_device(config.train.device)
    except ConfigError:
        return evaluation_device("auto")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, GatedVAEError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def check_config(run_dir: Path, entry: dict[str, Any]) -> Any:
    """The run's :class:`~gatedvae.config.Config` from its manifest entry, saved as ``config.yaml``
    for a new run (``train(resume=True)`` then starts at step 0) or checked against the saved one."""
    from ..config import Config, from_dict, load_config, save_config, to_dict

    config = from_dict(Config, entry["config"])
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        save_config(config, cfg_path)
    elif to_dict(load_config(cfg_path)) != to_dict(config):
        raise GatedVAEError(
            f"{cfg_path} holds another config than the manifest's run {entry['id']}; "
            "move the directory away or plan the sweep again"
        )
    return config


def training_finished(run_dir: Path) -> bool:
    """Whether the run's trainer finished (``status.json``); what is left is its evaluation."""
    return read_json(run_dir / "status.json").get("status") == "finished"


def evaluate_member(
    run_dir: Path, entry: dict[str, Any], config: Any, datasets: DatasetSlot, actions: list[str]
) -> None:
    """Evaluate a trained run with the sweep's settings, unless ``metrics.json`` already holds that
    evaluation; appends ``evaluated`` to ``actions`` when it evaluated."""
    ev = EvalSettings.from_json(entry.get("evaluate"))
    if ev is None or _metrics_ok(run_dir, ev, _total_steps(entry)):
        return
    from ..evaluation import evaluate_run

    evaluate_run(
        run_dir,
        metrics=list(ev.metrics) if ev.metrics is not None else None,
        preset=ev.preset,
        seed=ev.seed,
        progress=False,
        figures=ev.figures,
        dataset=datasets.get(config.data, _device_of(config)),
        device=_device_of(config),
    )
    actions.append("evaluated")


def _work(
    run_dir: Path,
    entry: dict[str, Any],
    threads: int,
    tensorboard: bool,
    attempt: dict[str, Any],
    out: dict[str, Any],
    actions: list[str],
    datasets: DatasetSlot,
    evaluate: bool = True,
) -> None:
    """Train (or resume) and evaluate one run (``evaluate=False``: train only); appends what it did
    to ``actions``."""
    import torch

    config = check_config(run_dir, entry)
    if threads and not config.train.threads:
        torch.set_num_threads(threads)
    if not training_finished(run_dir):
        from ..callbacks import TensorBoardImages
        from ..run import validate
        from ..train import latest_checkpoint, train

        validate(config)  # what can be refused before the dataset is built
        found = latest_checkpoint(run_dir / "checkpoints")
        out["resumed_from"] = attempt["resumed_from"] = found[0] if found else 0
        # No evaluation callback: the sweep evaluates below, with its own settings.
        train(
            None,
            run_dir,
            resume=True,
            quiet=True,
            tensorboard=tensorboard,
            callbacks=[TensorBoardImages()],
            dataset=datasets.get(config.data, _device_of(config)),
        )
        actions.append("resumed" if found else "trained")
    if evaluate:
        evaluate_member(run_dir, entry, config, datasets, actions)


def outcome_of(entry: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """What :func:`run_one` returns for ``entry`` (a failure that did nothing, unless changed)."""
    out: dict[str, Any] = {
        "id": entry["id"],
        "name": entry["name"],
        "state": "failed",
        "action": "skipped",
        "error": None,
        "seconds": 0.0,
        "resumed_from": None,
    }
    out.update(changes)
    return out


def claim(run_dir: Path, entry: dict[str, Any], retry_failed: bool) -> tuple[dict[str, Any], dict[str, Any]] | dict:
    """With the run's lock held: open an attempt on the run, or say why there is nothing to do.

    Returns ``(record, attempt)`` (``sweep.json`` now says ``running`` with the new attempt last), or
    ``{"state", "error"}`` for a run that is ``done`` (its record closed) or ``failed`` and not to be
    retried.
    """
    info = inspect_run(run_dir, entry, check_lock=False)
    if info["state"] == "done" or (info["state"] == "failed" and not retry_failed):
        if info["state"] == "done":
            _settle(run_dir)
        return {"state": info["state"], "error": info["error"]}
    record = read_json(run_dir / RECORD)
    record.update(id=entry["id"], name=entry["name"], state="running", error=None, updated=_now())
    attempt: dict[str, Any] = {
        "started": _now(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "from_state": info["state"],
        "outcome": "running",
    }
    if os.environ.get("CUDA_VISIBLE_DEVICES"):  # the GPU a local worker (or Ray) placed the run on
        attempt["cuda_visible_devices"] = os.environ["CUDA_VISIBLE_DEVICES"]
    for earlier in record.setdefault("history", []):
        if earlier.get("outcome") == "running":  # we hold the lock, so that process is gone
            earlier["outcome"] = "stopped"
    record["history"].append(attempt)
    atomic_json(run_dir / RECORD, record, indent=1)
    return record, attempt


def log_header(log: Any, record: dict[str, Any], attempt: dict[str, Any]) -> None:
    """The line that opens an attempt's section of ``RUN/log.txt``."""
    log.write(
        f"--- attempt {len(record['history'])} at {attempt['started']} on {attempt['host']} (pid {attempt['pid']})\n"
    )
    log.flush()


def close_failed(
    run_dir: Path, record: dict[str, Any], attempt: dict[str, Any], msg: str, details: str, seconds: float
) -> None:
    """Close an attempt that raised: ``msg`` (one line) in ``sweep.json``, ``details`` in error.txt."""
    attempt.update(outcome="failed", ended=_now(), error=msg, seconds=round(seconds, 2))
    atomic_json(run_dir / RECORD, record, indent=1)
    record_failure(run_dir, msg, details)


def close_interrupted(run_dir: Path, record: dict[str, Any], attempt: dict[str, Any]) -> None:
    """Close an attempt stopped by a signal (the run resumes from its checkpoint next time)."""
    attempt.update(outcome="interrupted", ended=_now())
    record.update(state="interrupted", updated=_now())
    atomic_json(run_dir / RECORD, record, indent=1)


def needs_evaluation(run_dir: Path, entry: dict[str, Any]) -> bool:
    """Whether the sweep evaluates the run and ``metrics.json`` lacks that evaluation."""
    ev = EvalSettings.from_json(entry.get("evaluate"))
    return ev is not None and not _metrics_ok(run_dir, ev, _total_steps(entry))


def close_done(
    run_dir: Path, record: dict[str, Any], attempt: dict[str, Any], action: str, seconds: float, state: str = "done"
) -> None:
    """Close an attempt that brought the run to ``done`` (``state="trained"``: its training
    finished and its evaluation is left to another process, ``--eval-workers``)."""
    attempt.update(outcome=state, ended=_now(), action=action, seconds=round(seconds, 2))
    record.update(state=state, error=None, updated=_now())
    atomic_json(run_dir / RECORD, record, indent=1)
    (run_dir / ERROR_FILE).unlink(missing_ok=True)


def one_line(exc: BaseException) -> str:
    """An exception as the one line ``sweep.json`` and the status show."""
    return _one_line(exc)


def run_one(
    sweep_dir: str | os.PathLike,
    entry: dict[str, Any],
    threads: int = 0,
    retry_failed: bool = True,
    tensorboard: bool = True,
    datasets: DatasetSlot | None = None,
    evaluate: bool = True,
) -> dict[str, Any]:
    """Bring one manifest run to ``done``: train or resume it, then evaluate it.

    Args:
        sweep_dir: the sweep directory (the run goes to ``SWEEP_DIR/runs/<id>/``).
        entry: the run's manifest entry (id, name, config, evaluate).
        threads: torch threads for this run when its config leaves ``train.threads`` at 0
            (0: leave torch's setting alone).
        retry_failed: try a run whose last attempt failed again (resuming from its checkpoint).
        tensorboard: write TensorBoard logs.
        datasets: where the run's dataset is built and kept (a worker's, shared by its runs);
            None: built for this run alone (still once for its training and its evaluation).
        evaluate: False: train only; a run whose evaluation is then missing is closed as
            ``trained`` (the state returned too) for another process to evaluate.

    Returns:
        ``{"id", "name", "state", "action", "error", "seconds", "resumed_from"}``; ``state`` is
        ``done``, ``failed`` or ``running`` (another process holds the run), ``action`` what this
        call did: ``skipped``, ``trained``, ``resumed``, ``evaluated`` (joined by ``+``),
        ``busy``. Exceptions inside the run are recorded (one line in ``sweep.json``, the
        traceback in ``error.txt``) and returned as ``failed``, never raised (KeyboardInterrupt
        aside: the run stays resumable). What the run prints goes to ``RUN/log.txt``.
    """
    import torch

    run_dir = run_dir_of(sweep_dir, entry)
    run_dir.mkdir(parents=True, exist_ok=True)
    out = outcome_of(entry)
    with _locked(run_dir, wait=3.0) as got:
        if not got:
            out.update(state="running", action="busy")
            return out
        claimed = claim(run_dir, entry, retry_failed)
        if isinstance(claimed, dict):
            out.update(claimed)
            return out
        record, attempt = claimed
        t0 = time.perf_counter()
        prev_threads = torch.get_num_threads()
        actions: list[str] = []
        with open(run_dir / LOG, "a", encoding="utf-8") as log:
            log_header(log, record, attempt)
            try:
                with redirect_stdout(log), redirect_stderr(log):
                    _work(
                        run_dir, entry, threads, tensorboard, attempt, out, actions, datasets or DatasetSlot(), evaluate
                    )
            except Exception as exc:  # recorded, not raised: one failed run must not stop the sweep
                msg = _one_line(exc)
                details = traceback.format_exc()
                log.write(details)
                close_failed(run_dir, record, attempt, msg, details, time.perf_counter() - t0)
                out.update(
                    state="failed", action="+".join(actions) or "failed", error=msg, seconds=time.perf_counter() - t0
                )
                return out
            except BaseException as exc:
                close_interrupted(run_dir, record, attempt)
                if hasattr(exc, "resume_command"):  # SIGINT/SIGTERM: train() checkpointed and stopped
                    exc.resume_command = f"gatedvae sweep run {sweep_dir}"
                raise
            finally:
                torch.set_num_threads(prev_threads)
        seconds = time.perf_counter() - t0
        action = "+".join(actions) or "checked"
        state = "trained" if not evaluate and needs_evaluation(run_dir, entry) else "done"
        close_done(run_dir, record, attempt, action, seconds, state)
        out.update(state=state, action=action, seconds=seconds)
        return out
