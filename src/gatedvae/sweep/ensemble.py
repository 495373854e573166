"""Ensembles in sweeps: the runs still to train grouped into ensembles, and an ensemble run as one
unit of work (``gatedvae sweep run --ensemble K|auto``).

Grouping (:func:`group_runs`): the selected runs not done yet, in manifest order, are grouped by
what an ensemble's members must share (:func:`gatedvae.train.ensemble.ensemble_key`: the network
shape, the data, the batch size, the step counts, the device and the precision) and by the step
they resume from (their latest checkpoint; 0 for a new run): runs stopped at different steps cannot
train in lockstep. Each group is cut, in manifest order, into as few ensembles of at most ``K``
runs as it needs, as even as possible (5 runs with ``K=4``: 3 + 2). A run whose training finished
(only its evaluation is missing) and a run whose manifest config cannot be read are units of their
own; so is a run left alone in its group.

``auto`` (:func:`auto_size`): on CUDA every run of a group in one ensemble, at most
:data:`AUTO_CUDA_MAX` (the members' networks are batched into larger kernels: a GPU needs that to
fill, docs/sweeps.md), and when that leaves fewer ensembles than GPUs in use the largest are split
so that each GPU gets one. On the CPU, where the stacked step trains the group (the models allow
it, the strategy is not ``loop``, glibc's heap can be set), at most :data:`AUTO_CPU_MAX`, split
so that each worker gets one (measured on the Table I sweep with two workers: 1.07x one run per
unit, docs/sweeps.md); otherwise ``1`` (a ``loop`` ensemble does its runs' steps one
after another: nothing to gain).

A unit (:func:`run_unit`) of one run is :func:`gatedvae.sweep.runner.run_one`, unchanged. A unit
of several (:func:`run_ensemble`) takes every member's lock, opens an attempt in each member's
``sweep.json`` as ``run_one`` does, trains the members with
:func:`gatedvae.train.train_ensemble` (resuming those with a checkpoint), evaluates each finished
member with the sweep's settings in this process, and closes each member's attempt on its own:
``done``, or ``failed`` with its one-line error (a member that diverged fails, the others finish).
What the trainer prints goes into every member's ``log.txt``; what a member's evaluation prints
into its own.
"""

from __future__ import annotations

import math
import os
import re
import time
import traceback
from collections.abc import Sequence
from contextlib import ExitStack, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .runner import (
    LOG,
    DatasetSlot,
    _device_of,
    _locked,
    check_config,
    claim,
    close_done,
    close_failed,
    close_interrupted,
    evaluate_member,
    log_header,
    needs_evaluation,
    one_line,
    outcome_of,
    run_dir_of,
    run_one,
    training_finished,
)

__all__ = [
    "parse_ensemble",
    "check_strategy",
    "group_runs",
    "auto_size",
    "run_unit",
    "run_ensemble",
    "AUTO_CUDA_MAX",
    "AUTO_CPU_MAX",
]

#: ``--ensemble auto`` on CUDA: at most this many runs in one ensemble.
AUTO_CUDA_MAX = 32
#: ``--ensemble auto`` on the CPU, where the stacked step trains the runs: at most this many (the
#: largest K measured there, docs/performance.md).
AUTO_CPU_MAX = 8


def parse_ensemble(value: int | str) -> int | str:
    """``--ensemble``'s value: an integer ``K >= 1`` or ``"auto"``; anything else is one line."""
    if isinstance(value, bool):
        raise ConfigError(f"--ensemble {value}: give a number of runs per ensemble (1 or more) or auto")
    if isinstance(value, int):
        k = value
    else:
        text = str(value).strip()
        if text.lower() == "auto":
            return "auto"
        if not re.fullmatch(r"[+-]?\d+", text):
            raise ConfigError(f"--ensemble '{value}': give a number of runs per ensemble (1 or more) or auto")
        k = int(text)
    if k < 1:
        raise ConfigError(f"--ensemble {k}: an ensemble has at least 1 run (1 trains each run on its own)")
    return k


def check_strategy(strategy: str) -> str:
    """``--ensemble-strategy``'s value, checked (:data:`gatedvae.train.STRATEGIES`)."""
    from ..train import STRATEGIES

    if strategy not in STRATEGIES:
        raise ConfigError(f"--ensemble-strategy '{strategy}': use {', '.join(STRATEGIES)}")
    return strategy


def auto_size(on_cuda: bool, stacked: bool = False) -> int:
    """``--ensemble auto``'s largest ensemble: :data:`AUTO_CUDA_MAX` on CUDA; on the CPU
    :data:`AUTO_CPU_MAX` where the stacked step would train the group (``stacked``: the models allow
    it, the strategy is not ``loop`` and the trainer can keep its tensors on the heap), else 1 (a
    ``loop`` ensemble on the CPU does its runs' steps one after the other: nothing to gain)."""
    if on_cuda:
        return AUTO_CUDA_MAX
    return AUTO_CPU_MAX if stacked else 1


def _stacks_on_cpu(config: Any, strategy: str) -> bool:
    """Whether an ensemble of runs like ``config`` trains with the stacked step on the CPU."""
    from ..train.device import cpu_heap_available
    from ..train.ensemble import stacked_refusal

    if strategy == "loop":
        return False
    return stacked_refusal([config]) is None and (strategy == "stacked" or cpu_heap_available())


def _resume_step(run_dir: Path) -> int:
    from ..train import latest_checkpoint

    found = latest_checkpoint(run_dir / "checkpoints")
    return int(found[0]) if found else 0


def _split(members: list[int], parts: int) -> list[list[int]]:
    """``members`` cut into ``parts`` contiguous pieces as even as possible (the first ones larger)."""
    size, extra = divmod(len(members), parts)
    out, at = [], 0
    for p in range(parts):
        n = size + (1 if p < extra else 0)
        out.append(members[at : at + n])
        at += n
    return out


def group_runs(
    sweep_dir: str | os.PathLike,
    entries: Sequence[dict[str, Any]],
    ensemble: int | str,
    cuda: bool = False,
    slots: int = 1,
    strategy: str = "auto",
) -> list[list[dict[str, Any]]]:
    """The units of work of ``entries`` (runs not done, in manifest order): lists of runs, each one
    ensemble (or one run), in the order of their first run.

    Args:
        ensemble: the largest ensemble (``1``: one run per unit) or ``"auto"`` (:func:`auto_size`).
        cuda: whether the runs' workers train on a GPU (decides ``auto``; a run whose config says
            ``train.device: cpu`` trains on the CPU wherever it is).
        slots: ``auto``: the GPUs the workers use (CUDA) or the workers (CPU); a group of ``n``
            runs is cut into more ensembles (at most ``n``) while there are fewer ensembles than this.
        strategy: ``--ensemble-strategy`` (``auto`` on the CPU groups only runs the stacked step
            trains: :func:`auto_size`).
    """
    from ..config import Config, from_dict
    from ..train import ensemble_key

    ensemble = parse_ensemble(ensemble)
    if ensemble == 1:
        return [[e] for e in entries]
    groups: dict[Any, list[int]] = {}  # (key, step) -> positions in entries, in order
    limit: dict[Any, int] = {}
    alone: list[int] = []
    for i, e in enumerate(entries):
        run_dir = run_dir_of(sweep_dir, e)
        try:
            config = from_dict(Config, e["config"])
        except Exception:  # a hand-edited manifest: run_one records the error
            alone.append(i)
            continue
        if training_finished(run_dir):  # only its evaluation is missing
            alone.append(i)
            continue
        key = (ensemble_key(config), _resume_step(run_dir))
        groups.setdefault(key, []).append(i)
        if ensemble == "auto":
            on_cuda = cuda and config.train.device != "cpu"
            limit[key] = auto_size(on_cuda, not on_cuda and _stacks_on_cpu(config, strategy))
        else:
            limit[key] = int(ensemble)
    parts = {key: math.ceil(len(members) / limit[key]) for key, members in groups.items()}
    if ensemble == "auto":  # fewer ensembles than slots: split the largest (of the groups that ensemble)
        while sum(parts.values()) < slots:
            can = [k for k, m in groups.items() if limit[k] > 1 and parts[k] < len(m)]
            if not can:
                break
            widest = max(can, key=lambda k: (math.ceil(len(groups[k]) / parts[k]), -groups[k][0]))
            parts[widest] += 1
    units = [[i] for i in alone]
    for key, members in groups.items():
        units.extend(_split(members, parts[key]))
    units.sort(key=lambda u: u[0])
    return [[entries[i] for i in u] for u in units]


def run_unit(
    sweep_dir: str | os.PathLike,
    unit: Sequence[dict[str, Any]],
    threads: int = 0,
    retry_failed: bool = True,
    tensorboard: bool = True,
    datasets: DatasetSlot | None = None,
    strategy: str = "auto",
    evaluate: bool = True,
) -> list[dict[str, Any]]:
    """One unit of work: a run (:func:`~gatedvae.sweep.runner.run_one`) or an ensemble
    (:func:`run_ensemble`); one outcome per run, in order. ``evaluate=False``: train only (a run
    left to evaluate is ``trained``)."""
    if len(unit) == 1:
        return [
            run_one(
                sweep_dir,
                unit[0],
                threads=threads,
                retry_failed=retry_failed,
                tensorboard=tensorboard,
                datasets=datasets,
                evaluate=evaluate,
            )
        ]
    return run_ensemble(sweep_dir, unit, threads, retry_failed, tensorboard, datasets, strategy, evaluate)


class _Fanout:
    """A text stream that writes to every member's ``log.txt`` (the trainer's output is theirs)."""

    def __init__(self, streams: Sequence[Any]) -> None:
        self.streams = list(streams)

    def write(self, text: str) -> int:
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self) -> None:
        for s in self.streams:
            s.flush()

    def isatty(self) -> bool:
        return False


@dataclass
class _Member:
    """One run of an ensemble unit while it is worked on: its attempt in ``sweep.json``, its log."""

    entry: dict[str, Any]
    run_dir: Path
    record: dict[str, Any]
    attempt: dict[str, Any]
    log: Any
    out: dict[str, Any]
    config: Any = None
    actions: list[str] = field(default_factory=list)
    closed: bool = False

    def fail(self, exc: BaseException | str, details: str, t0: float) -> None:
        msg = exc if isinstance(exc, str) else one_line(exc)
        self.log.write(details if details.endswith("\n") else details + "\n")
        self.log.flush()
        seconds = time.perf_counter() - t0
        close_failed(self.run_dir, self.record, self.attempt, msg, details, seconds)
        self.out.update(state="failed", action="+".join(self.actions) or "failed", error=msg, seconds=seconds)
        self.closed = True

    def done(self, t0: float, state: str = "done") -> None:
        seconds = time.perf_counter() - t0
        action = "+".join(self.actions) or "checked"
        close_done(self.run_dir, self.record, self.attempt, action, seconds, state)
        self.out.update(state=state, action=action, seconds=seconds)
        self.closed = True


def run_ensemble(
    sweep_dir: str | os.PathLike,
    entries: Sequence[dict[str, Any]],
    threads: int = 0,
    retry_failed: bool = True,
    tensorboard: bool = True,
    datasets: DatasetSlot | None = None,
    strategy: str = "auto",
    evaluate: bool = True,
) -> list[dict[str, Any]]:
    """Bring the runs of one ensemble to ``done``: train them together, evaluate each
    (``evaluate=False``: train only; a member left to evaluate is closed as ``trained``).

    The arguments are :func:`~gatedvae.sweep.runner.run_one`'s, for every run of ``entries`` (runs
    that can share an ensemble, :func:`group_runs`); ``strategy`` is
    :func:`gatedvae.train.train_ensemble`'s. Each run's outcome is ``run_one``'s: a run another
    process holds is ``busy``, a done run is skipped, each run is recorded on its own (its attempt
    in ``sweep.json``, ``error.txt``, ``log.txt``). A failure of the ensemble as a whole (its
    dataset cannot be built, ...) fails each of its runs with that error. Members found at
    different checkpoint steps (another process trained one meanwhile) train as one ensemble per
    step, one after the other. Exceptions are recorded, never raised (KeyboardInterrupt aside:
    every member stays resumable).
    """
    import torch

    datasets = datasets or DatasetSlot()
    outs = [outcome_of(e) for e in entries]
    prev_threads = torch.get_num_threads()
    t0 = time.perf_counter()
    with ExitStack() as stack:
        members: list[_Member] = []
        for entry, out in zip(entries, outs, strict=True):
            run_dir = run_dir_of(sweep_dir, entry)
            run_dir.mkdir(parents=True, exist_ok=True)
            if not stack.enter_context(_locked(run_dir, wait=3.0)):
                out.update(state="running", action="busy")
                continue
            claimed = claim(run_dir, entry, retry_failed)
            if isinstance(claimed, dict):
                out.update(claimed)
                continue
            record, attempt = claimed
            log = stack.enter_context(open(run_dir / LOG, "a", encoding="utf-8"))
            log_header(log, record, attempt)
            members.append(_Member(entry, run_dir, record, attempt, log, out))
        try:
            _train_and_evaluate(members, threads, tensorboard, datasets, strategy, evaluate, t0)
        except BaseException as exc:  # SIGINT/SIGTERM: the trainer checkpointed every member and stopped
            for m in members:
                if not m.closed:
                    close_interrupted(m.run_dir, m.record, m.attempt)
            if hasattr(exc, "resume_command"):
                exc.resume_command = f"gatedvae sweep run {sweep_dir}"
            raise
        finally:
            torch.set_num_threads(prev_threads)
    return outs


def _train_and_evaluate(
    members: list[_Member],
    threads: int,
    tensorboard: bool,
    datasets: DatasetSlot,
    strategy: str,
    evaluate: bool,
    t0: float,
) -> None:
    import torch

    from ..run import validate

    trainees: list[_Member] = []
    for m in members:
        try:
            with redirect_stdout(m.log), redirect_stderr(m.log):
                m.config = check_config(m.run_dir, m.entry)
                if not training_finished(m.run_dir):
                    validate(m.config)  # what can be refused before the dataset is built
                    trainees.append(m)
        except Exception as exc:
            m.fail(exc, traceback.format_exc(), t0)
    alive = [m for m in members if not m.closed]
    if alive and threads and not alive[0].config.train.threads:
        torch.set_num_threads(threads)
    by_step: dict[int, list[_Member]] = {}
    for m in trainees:
        by_step.setdefault(_resume_step(m.run_dir), []).append(m)
    for step, group in by_step.items():
        _train(group, step, tensorboard, datasets, strategy, t0)
    for m in members:
        if m.closed:
            continue
        if not evaluate:
            m.done(t0, "trained" if needs_evaluation(m.run_dir, m.entry) else "done")
            continue
        try:
            with redirect_stdout(m.log), redirect_stderr(m.log):
                evaluate_member(m.run_dir, m.entry, m.config, datasets, m.actions)
        except Exception as exc:
            m.fail(exc, traceback.format_exc(), t0)
            continue
        m.done(t0)


def _train(group: list[_Member], step: int, tensorboard: bool, datasets: DatasetSlot, strategy: str, t0: float) -> None:
    """Train ``group`` (members resuming from ``step``) as one ensemble; close those that fail."""
    from ..callbacks import TensorBoardImages
    from ..train import train_ensemble

    size = len(group)
    for k, m in enumerate(group):
        m.out["resumed_from"] = m.attempt["resumed_from"] = step
        m.attempt["ensemble"] = {"index": k, "size": size, "runs": [g.entry["id"] for g in group]}
    config = group[0].config
    fan = _Fanout([m.log for m in group])
    try:
        with redirect_stdout(fan), redirect_stderr(fan):
            summaries = train_ensemble(
                [None] * size,
                [m.run_dir for m in group],
                resume=True,  # a new run has its config.yaml: it starts at step 0
                quiet=True,
                tensorboard=tensorboard,
                # No evaluation callback: the sweep evaluates afterwards, with its own settings.
                callbacks=[TensorBoardImages()],
                strategy=strategy,
                dataset=datasets.get(config.data, _device_of(config)),
            )
    except Exception as exc:  # the ensemble as a whole: each of its runs failed with it
        details = traceback.format_exc()
        for m in group:
            m.fail(exc, details, t0)
        return
    for m, summary in zip(group, summaries, strict=True):
        if summary.get("status") == "failed":
            error = str(summary.get("error") or "training failed")
            m.fail(error.strip().splitlines()[0] if error.strip() else "training failed", error, t0)
        else:
            m.actions.append("resumed" if step else "trained")
