"""Sweeps schedule ensembles (``gatedvae sweep run --ensemble K|auto``): runs of one network shape
train together as one unit of work, each still recorded as a run of its own.

An ensemble (loop strategy) gives every run bitwise what the run gives alone; grouping respects the
ensemble key and the resume step; an interrupted sweep re-run finishes each run once, resuming
exactly; a member that diverges fails alone; ``--index``/``--shard`` select runs that are then
grouped; the pool and Ray take ensembles as units; bad values are one line.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gatedvae.cli import main
from gatedvae.errors import ConfigError
from gatedvae.sweep import plan_sweep, read_manifest, run_sweep, sweep_status, write_manifest
from gatedvae.sweep.ensemble import AUTO_CPU_MAX, AUTO_CUDA_MAX, group_runs, parse_ensemble
from gatedvae.train import Callback, device, latest_checkpoint
from test_sweep import tiny_base, write_spec

EVALUATE = {"metrics": ["mig"], "preset": "fast", "figures": False}


def four_runs(**extra) -> dict:
    """2 seeds x un-gated/gated, one network shape; manifest order mixes the arms:
    seed 0 un-gated, seed 0 gated, seed 1 un-gated, seed 1 gated."""
    spec = {
        "name": "ens",
        "base": tiny_base(steps=20, checkpoint_every=10),
        "grid": {"train.seed": [0, 1], "gating.enabled": [False, True]},
        "evaluate": EVALUATE,
    }
    spec.update(extra)
    return spec


def planned(tmp_path: Path, spec: dict, name: str = "sw") -> Path:
    sweep_dir = tmp_path / name
    write_manifest(plan_sweep(write_spec(tmp_path / f"{name}.yaml", spec)), sweep_dir)
    return sweep_dir


def runs_of(sweep_dir: Path) -> list[dict]:
    return read_manifest(sweep_dir)["runs"]


def record(sweep_dir: Path, entry: dict) -> dict:
    return json.loads((sweep_dir / "runs" / entry["id"] / "sweep.json").read_text())


def same_run(a: Path, b: Path) -> None:
    """metrics.jsonl and the final checkpoint's tensors bitwise equal (headers record the ensemble)."""
    assert (a / "metrics.jsonl").read_text() == (b / "metrics.jsonl").read_text()
    ca, cb = latest_checkpoint(a / "checkpoints"), latest_checkpoint(b / "checkpoints")
    assert ca[0] == cb[0]
    ta, tb = load_file(str(ca[1])), load_file(str(cb[1]))
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


@pytest.fixture(scope="module")
def alone_and_together(tmp_path_factory):
    """The four runs planned twice: run one by one (``--ensemble 1``) and as ensembles of two."""
    root = tmp_path_factory.mktemp("ens")
    one, two = planned(root, four_runs(), "one"), planned(root, four_runs(), "two")
    res_one = run_sweep(one, progress=False, tensorboard=False)
    res_two = run_sweep(two, ensemble=2, ensemble_strategy="loop", progress=False, tensorboard=False)
    return one, two, res_one, res_two


# --------------------------------------------------------------------------- equivalence
def test_ensembles_of_two_give_each_run_what_it_gives_alone(alone_and_together):
    one, two, res_one, res_two = alone_and_together
    assert res_one["units"] == 4 and res_two["units"] == 2
    assert res_one["done"] == res_two["done"] == 4 and res_two["failed"] == 0
    entries = runs_of(two)
    assert [e["id"] for e in entries] == [e["id"] for e in runs_of(one)]  # a run's id is its config's hash
    for k, e in enumerate(entries):
        same_run(one / "runs" / e["id"], two / "runs" / e["id"])
        m1 = json.loads((one / "runs" / e["id"] / "metrics.json").read_text())
        m2 = json.loads((two / "runs" / e["id"] / "metrics.json").read_text())
        assert m1["headline"] == m2["headline"] and m2["checkpoint_step"] == 20
        rec = record(two, e)  # recorded as a run: one attempt, done, plus where it trained
        assert rec["state"] == "done" and len(rec["history"]) == 1
        attempt = rec["history"][0]
        assert attempt["outcome"] == "done" and attempt["action"] == "trained+evaluated"
        pair = entries[2 * (k // 2) : 2 * (k // 2) + 2]  # manifest order: an un-gated and a gated arm
        assert attempt["ensemble"] == {"index": k % 2, "size": 2, "runs": [p["id"] for p in pair]}
        assert "ensemble" not in record(one, e)["history"][0]
    # status and report read the same things
    s1, s2 = sweep_status(one), sweep_status(two)
    assert s1["counts"] == s2["counts"] and s2["complete"]
    assert [(r["id"], r["state"], r["step"]) for r in s1["runs"]] == [
        (r["id"], r["state"], r["step"]) for r in s2["runs"]
    ]
    assert {o["id"] for o in res_two["outcomes"]} == {e["id"] for e in entries}


# --------------------------------------------------------------------------- grouping
def shape_of(units: list[list[dict]], entries: list[dict]) -> list[list[int]]:
    """Units as lists of positions in ``entries``."""
    return [[entries.index(e) for e in u] for u in units]


def test_grouping_respects_the_ensemble_key(tmp_path, monkeypatch):
    spec = {"name": "shapes", "base": tiny_base(), "grid": {"model.hidden": [16, 24]}, "seeds": 3}
    sweep_dir = planned(tmp_path, spec)
    entries = runs_of(sweep_dir)  # hidden 16 x seeds 0-2, then hidden 24 x seeds 0-2

    def shape(units):
        return shape_of(units, entries)

    assert shape(group_runs(sweep_dir, entries, 1)) == [[0], [1], [2], [3], [4], [5]]
    assert shape(group_runs(sweep_dir, entries, 8)) == [[0, 1, 2], [3, 4, 5]]  # two shapes, two ensembles
    assert shape(group_runs(sweep_dir, entries, 2)) == [[0, 1], [2], [3, 4], [5]]
    interleaved = [entries[i] for i in (0, 3, 1, 4, 2, 5)]  # groups keep the given (manifest) order
    assert [[e["id"] for e in u] for u in group_runs(sweep_dir, interleaved, 3)] == [
        [entries[i]["id"] for i in (0, 1, 2)],
        [entries[i]["id"] for i in (3, 4, 5)],
    ]
    # auto: on CUDA a group per ensemble (at most AUTO_CUDA_MAX), split to give every GPU in use an
    # ensemble; a run that pins train.device=cpu is on the CPU anywhere; on the CPU a group per
    # ensemble (at most AUTO_CPU_MAX) where the stacked step trains it, split to give every worker
    # one, and one run per unit where it would be the loop (no glibc heap, --ensemble-strategy loop)
    monkeypatch.setattr(device, "cpu_heap_available", lambda: False)
    assert shape(group_runs(sweep_dir, entries, "auto")) == [[0], [1], [2], [3], [4], [5]]
    assert shape(group_runs(sweep_dir, entries, "auto", cuda=True)) == [[0], [1], [2], [3], [4], [5]]
    assert shape(group_runs(sweep_dir, entries, "auto", strategy="stacked")) == [[0, 1, 2], [3, 4, 5]]
    monkeypatch.setattr(device, "cpu_heap_available", lambda: True)
    assert shape(group_runs(sweep_dir, entries, "auto")) == [[0, 1, 2], [3, 4, 5]]
    assert shape(group_runs(sweep_dir, entries, "auto", slots=4)) == [[0, 1], [2], [3, 4], [5]]
    assert shape(group_runs(sweep_dir, entries, "auto", strategy="loop")) == [[i] for i in range(6)]
    fp16 = [{**e, "config": {**e["config"], "train": {**e["config"]["train"], "precision": "fp16"}}} for e in entries]
    assert shape_of(group_runs(sweep_dir, fp16, "auto"), fp16) == [[i] for i in range(6)]  # stacking refuses
    cpu_many = [{**entries[0], "id": f"{i:012x}"} for i in range(AUTO_CPU_MAX + 2)]
    assert [len(u) for u in group_runs(sweep_dir, cpu_many, "auto")] == [5, 5]
    on_gpu = [{**e, "config": {**e["config"], "train": {**e["config"]["train"], "device": "auto"}}} for e in entries]
    assert shape_of(group_runs(sweep_dir, on_gpu, "auto", cuda=True), on_gpu) == [[0, 1, 2], [3, 4, 5]]
    assert shape_of(group_runs(sweep_dir, on_gpu, "auto", cuda=True, slots=3), on_gpu) == [[0, 1], [2], [3, 4, 5]]
    assert shape_of(group_runs(sweep_dir, on_gpu, "auto", cuda=True, slots=9), on_gpu) == [[i] for i in range(6)]
    many = [{**on_gpu[0], "id": f"{i:012x}"} for i in range(AUTO_CUDA_MAX + 8)]  # one group of 40
    assert [len(u) for u in group_runs(sweep_dir, many, "auto", cuda=True)] == [20, 20]
    assert [len(u) for u in group_runs(sweep_dir, many[:5], 4)] == [3, 2]  # as even as possible


class Interrupt(Callback):
    """Ctrl-C (SIGINT to this process) after step ``at``: the trainer checkpoints and stops."""

    at: int | None = None

    def uses_model(self, run, step):
        return False

    def on_step(self, run, step):
        if step == Interrupt.at:
            os.kill(os.getpid(), signal.SIGINT)


def test_an_interrupted_sweep_resumes_each_run_once_grouped_by_step(tmp_path, monkeypatch, alone_and_together, request):
    import gatedvae.callbacks

    # Python's Ctrl-C handler: a test suite started as a background job inherits SIGINT ignored,
    # and the trainer leaves an ignored SIGINT alone (a sweep's workers ignore it on purpose)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))

    alone = alone_and_together[0]
    sweep_dir = planned(tmp_path, four_runs())
    entries = runs_of(sweep_dir)
    monkeypatch.setattr(gatedvae.callbacks, "TensorBoardImages", Interrupt)
    Interrupt.at = 10  # the first ensemble (runs 0 and 1) is stopped at step 10
    with pytest.raises(KeyboardInterrupt, match="interrupted at step 10.*gatedvae sweep run"):
        run_sweep(sweep_dir, ensemble=2, ensemble_strategy="loop", progress=False, tensorboard=False)
    Interrupt.at = 5  # run 2 alone, stopped at step 5
    with pytest.raises(KeyboardInterrupt, match="interrupted at step 5"):
        run_sweep(sweep_dir, index=2, ensemble=2, progress=False, tensorboard=False)
    Interrupt.at = None
    st = sweep_status(sweep_dir)["runs"]
    assert [(r["state"], r["step"]) for r in st] == [("partial", 10), ("partial", 10), ("partial", 5), ("pending", 0)]
    assert record(sweep_dir, entries[0])["history"][-1]["outcome"] == "interrupted"
    # runs at different steps cannot share an ensemble: three units, whatever K
    units = group_runs(sweep_dir, entries, 4)
    assert [[e["id"] for e in u] for u in units] == [
        [entries[0]["id"], entries[1]["id"]],
        [entries[2]["id"]],
        [entries[3]["id"]],
    ]

    res = run_sweep(sweep_dir, ensemble=4, ensemble_strategy="loop", progress=False, tensorboard=False)
    assert res["units"] == 3 and res["done"] == 4 and res["failed"] == 0
    assert sorted(o["id"] for o in res["outcomes"]) == sorted(e["id"] for e in entries)  # each run once
    got = {o["id"]: (o["action"], o["resumed_from"]) for o in res["outcomes"]}
    assert [got[e["id"]] for e in entries] == [
        ("resumed+evaluated", 10),
        ("resumed+evaluated", 10),
        ("resumed+evaluated", 5),
        ("trained+evaluated", 0),
    ]
    for e in entries:
        rec = record(sweep_dir, e)
        assert rec["state"] == "done" and [h["outcome"] for h in rec["history"]].count("done") == 1
        steps = [json.loads(line)["step"] for line in (sweep_dir / "runs" / e["id"] / "metrics.jsonl").open()]
        assert steps == sorted(set(steps))  # each logged step once
        same_run(alone / "runs" / e["id"], sweep_dir / "runs" / e["id"])  # exactly the uninterrupted run
    assert sweep_status(sweep_dir)["complete"]


# --------------------------------------------------------------------------- failures, the pool
def test_a_diverged_member_fails_alone_on_the_pool_and_an_evaluator_evaluates(tmp_path, capsys):
    """Two workers, two ensembles of two, each with a member whose lr diverges (1e9); the runs that
    finish are evaluated by a third process (--eval-workers 1) while the workers train."""
    spec = four_runs(grid={"train.seed": [0, 1], "train.lr": [1e-3, 1e9]})
    sweep_dir = planned(tmp_path, spec)
    entries = runs_of(sweep_dir)
    argv = ["sweep", "run", str(sweep_dir), "--ensemble", "2", "--ensemble-strategy", "loop", "--workers", "2"]
    assert main([*argv, "--eval-workers", "1", "--quiet", "--no-tensorboard"]) == 1
    out = capsys.readouterr().out
    assert "4 runs selected: 2 done, 2 failed" in out
    bad = [e for e in entries if e["config"]["train"]["lr"] > 1]
    trainers, evaluators = set(), set()
    for e in entries:
        rec = record(sweep_dir, e)
        first = rec["history"][0]
        assert first["ensemble"]["size"] == 2 and first["ensemble"]["runs"] in (
            [entries[0]["id"], entries[1]["id"]],
            [entries[2]["id"], entries[3]["id"]],
        )
        trainers.add(first["pid"])
        if e in bad:
            assert rec["state"] == "failed" and rec["error"].startswith("loss term") and "\n" not in rec["error"]
            assert len(rec["history"]) == 1 and first["outcome"] == "failed"
            assert f"failed: {e['name']} ({e['id']}): loss term" in out
            assert (sweep_dir / "runs" / e["id"] / "error.txt").is_file()
        else:
            assert rec["state"] == "done" and (sweep_dir / "runs" / e["id"] / "metrics.json").is_file()
            assert [(h["outcome"], h["action"]) for h in rec["history"]] == [
                ("trained", "trained"),
                ("done", "evaluated"),
            ]
            evaluators.add(rec["history"][1]["pid"])
    assert len(trainers) == 2 and len(evaluators) == 1 and not trainers & evaluators  # an ensemble per worker
    assert os.getpid() not in trainers | evaluators
    st = sweep_status(sweep_dir)
    assert st["counts"]["done"] == 2 and st["counts"]["failed"] == 2
    snap = json.loads((sweep_dir / "status.json").read_text())
    assert {f["name"] for f in snap["failed"]} == {e["name"] for e in bad}


def test_index_and_shard_select_runs_that_are_then_grouped(tmp_path, capsys):
    sweep_dir = planned(tmp_path, four_runs(base=tiny_base(steps=10), evaluate=None))
    ids = [e["id"] for e in runs_of(sweep_dir)]
    argv = ["sweep", "run", str(sweep_dir), "--ensemble", "2", "--quiet", "--no-tensorboard"]
    assert main([*argv, "--shard", "0/2"]) == 0
    assert "2 runs selected (of 4 in the sweep): 2 done, 0 failed" in capsys.readouterr().out
    assert [r["state"] for r in sweep_status(sweep_dir)["runs"]] == ["done", "pending", "done", "pending"]
    assert record(sweep_dir, runs_of(sweep_dir)[2])["history"][-1]["ensemble"]["runs"] == [ids[0], ids[2]]
    assert main([*argv, "--index", "3"]) == 0  # one run selected: a unit of its own
    assert "ensemble" not in record(sweep_dir, runs_of(sweep_dir)[3])["history"][-1]
    assert main([*argv, "--shard", "1/2"]) == 0
    assert "2 runs selected (of 4 in the sweep): 2 done, 0 failed; 1 was already finished" in capsys.readouterr().out
    assert sweep_status(sweep_dir)["complete"]


def test_ray_runs_an_ensemble_as_one_task(tmp_path, monkeypatch):
    """A stand-in for ray that runs each task when it is submitted: one task per ensemble."""
    tasks = []

    class Ref:
        def __init__(self, value):
            self.value = value

    class Remote:
        def __init__(self, fn):
            self.fn = fn

        def options(self, **kw):
            return self

        def remote(self, *args):
            tasks.append(args[1])
            return Ref(self.fn(*args))

    fake = types.SimpleNamespace(
        is_initialized=lambda: False,
        init=lambda **kw: None,
        shutdown=lambda: None,
        cluster_resources=lambda: {"CPU": 2},
        remote=Remote,
        wait=lambda refs, num_returns, timeout: (refs[:num_returns], refs[num_returns:]),
        get=lambda ref: ref.value,
        cancel=lambda ref, force: None,
    )
    monkeypatch.setitem(sys.modules, "ray", fake)
    sweep_dir = planned(tmp_path, four_runs(base=tiny_base(steps=10), evaluate=None))
    res = run_sweep(sweep_dir, backend="ray", ensemble=2, progress=False, tensorboard=False)
    assert res["done"] == 4 and res["units"] == 2 and len(res["outcomes"]) == 4
    assert [len(t) for t in tasks] == [2, 2]


# --------------------------------------------------------------------------- bad values
@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5", "", "auto-ish"])
def test_bad_ensemble_values_are_one_line_errors(tmp_path, capsys, value):
    assert main(["sweep", "run", str(tmp_path / "never-planned"), "--ensemble", value, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --ensemble") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "never-planned").exists()


def test_ensemble_arguments_of_run_sweep(tmp_path):
    assert parse_ensemble("auto") == parse_ensemble(" AUTO ") == "auto"
    assert parse_ensemble(" 3 ") == parse_ensemble(3) == 3
    for bad in (0, True, "x"):
        with pytest.raises(ConfigError, match="--ensemble"):
            parse_ensemble(bad)
    sweep_dir = planned(tmp_path, four_runs())
    with pytest.raises(ConfigError, match="--ensemble -1: an ensemble has at least 1 run"):
        run_sweep(sweep_dir, ensemble=-1, progress=False)
    with pytest.raises(ConfigError, match="--ensemble-strategy 'fast': use auto, loop, stacked"):
        run_sweep(sweep_dir, ensemble=2, ensemble_strategy="fast", progress=False)
    assert sweep_status(sweep_dir)["counts"]["pending"] == 4  # nothing ran


def test_auto_follows_the_gpus_the_workers_see(tmp_path, monkeypatch):
    """``--ensemble auto`` with two (faked) GPUs and two workers: one ensemble per GPU; without a
    GPU: one ensemble per worker where the stacked step trains them on the CPU, else one run per
    unit. (The backend is a stand-in that records the units it is given.)"""
    from gatedvae.sweep import execute

    base = tiny_base()
    base["train"]["device"] = "auto"
    sweep_dir = planned(tmp_path, four_runs(base=base))
    seen = []
    monkeypatch.setattr(execute, "run_local", lambda d, units, **kw: seen.append([len(u) for u in units]))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert run_sweep(sweep_dir, workers=2, ensemble="auto", progress=False)["units"] == 2
    assert run_sweep(sweep_dir, workers=1, ensemble="auto", progress=False)["units"] == 1
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(device, "cpu_heap_available", lambda: True)
    assert run_sweep(sweep_dir, workers=2, ensemble="auto", progress=False)["units"] == 2
    assert run_sweep(sweep_dir, workers=2, ensemble="auto", ensemble_strategy="loop", progress=False)["units"] == 4
    ray = types.ModuleType("gatedvae.sweep.ray_backend")  # Ray on CPUs: the cluster's size is unknown
    ray.run_ray = lambda d, units, **kw: seen.append([len(u) for u in units])
    monkeypatch.setitem(sys.modules, "gatedvae.sweep.ray_backend", ray)
    assert run_sweep(sweep_dir, backend="ray", ensemble="auto", progress=False)["units"] == 4
    monkeypatch.setattr(device, "cpu_heap_available", lambda: False)
    assert run_sweep(sweep_dir, workers=2, ensemble="auto", progress=False)["units"] == 4
    assert seen == [[2, 2], [4], [2, 2], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]]
