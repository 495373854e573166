"""Sweeps: plan (resolution, ids, plan-time errors), run on the local pool (skip, resume, failures,
a sweep killed with SIGKILL and run again), shards and indices, status."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import tiny_dict
from gatedvae.cli import main
from gatedvae.config import Config, from_dict, load_config
from gatedvae.errors import ConfigError, GatedVAEError
from gatedvae.sweep import (
    config_hash,
    parse_shard,
    plan_sweep,
    read_manifest,
    run_sweep,
    select_runs,
    sweep_status,
    write_manifest,
)
from gatedvae.sweep.runner import run_one

PARTS = tiny_dict()["gating"]["partitions"]  # position (x, y), scale, orientation as plain data


def tiny_base(steps: int = 20, checkpoint_every: int = 10) -> dict:
    """A run of a second or two: 300 ellipses, a 16-wide MLP, one thread; partitions declared, gating off."""
    return tiny_dict(
        data={"size": 300},
        model={"hidden": 16},
        gating={"enabled": False},
        train={"steps": steps, "checkpoint_every": checkpoint_every, "device": "cpu", "threads": 1},
    )


def grid_spec(**extra) -> dict:
    """The acceptance grid: 2 models x gated/un-gated x 2 seeds = 8 runs."""
    spec = {
        "name": "tiny",
        "base": tiny_base(),
        "grid": {"model.name": ["beta_vae", "info_vae"], "gating.enabled": [False, True]},
        "seeds": 2,
        "evaluate": {"metrics": ["mig"], "preset": "fast", "figures": False},
    }
    spec.update(extra)
    return spec


def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def files_of(run_dir: Path) -> dict[str, tuple[int, str]]:
    """Every file of a run directory: relative path -> (mtime_ns, sha256)."""
    out = {}
    for p in sorted(run_dir.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(run_dir))] = (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def states(sweep_dir: Path) -> dict[str, str]:
    return {r["name"]: r["state"] for r in sweep_status(sweep_dir)["runs"]}


# --------------------------------------------------------------------------- plan
def test_plan_resolves_the_grid_with_stable_ids_and_names(tmp_path):
    path = write_spec(tmp_path / "tiny.yaml", grid_spec())
    plan = plan_sweep(path)
    assert len(plan.runs) == 8
    names = [r.name for r in plan.runs]
    assert names[0] == "name=beta_vae,ungated,seed=0" and names[-1] == "name=info_vae,gated,seed=1"
    assert len({r.id for r in plan.runs}) == 8
    for r in plan.runs:
        assert r.id == config_hash(r.config)
        assert r.config.train.seed == r.seed
        assert r.config.train.evaluate == "none"  # evaluation is the sweep's (no double evaluation)
        assert r.evaluate is not None and r.evaluate.metrics == ("mig",)
    assert {(r.config.model.name, r.config.gating.enabled) for r in plan.runs} == {
        (m, g) for m in ("beta_vae", "info_vae") for g in (False, True)
    }
    # The same file plans to the same ids; the manifest rebuilds every config exactly.
    assert [r.id for r in plan_sweep(path).runs] == [r.id for r in plan.runs]
    write_manifest(plan, tmp_path / "sw")
    doc = read_manifest(tmp_path / "sw")
    for entry, r in zip(doc["runs"], plan.runs, strict=True):
        assert from_dict(Config, entry["config"]) == r.config
        assert entry["id"] == r.id and entry["name"] == r.name and entry["label"] == r.label


def test_plan_order_base_overrides_variants_grid(tmp_path):
    spec = {
        "base": tiny_base(),
        "overrides": ["train.lr=0.01", "model.hidden=20"],
        "variants": [{"name": "a"}, {"name": "b", "overrides": ["model.hidden=24"]}],
        "grid": {"train.lr": [0.002]},
        "seeds": [3],
    }
    plan = plan_sweep(write_spec(tmp_path / "s.yaml", spec))
    by = {r.variant: r.config for r in plan.runs}
    assert by["a"].model.hidden == 20 and by["b"].model.hidden == 24
    assert by["a"].train.lr == by["b"].train.lr == 0.002  # the grid comes last
    assert {r.name for r in plan.runs} == {"a,lr=0.002,seed=3", "b,lr=0.002,seed=3"}


def test_plan_base_file_relative_to_the_sweep_file(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "base.yaml").write_text(yaml.safe_dump(tiny_base()), encoding="utf-8")
    (tmp_path / "configs" / "sweeps").mkdir()
    path = write_spec(tmp_path / "configs" / "sweeps" / "s.yaml", {"base": "../base.yaml", "seeds": 2})
    plan = plan_sweep(path)
    assert [r.config for r in plan.runs][0] == from_dict(
        Config, {**tiny_base(), "train": {**tiny_base()["train"], "seed": 0}}
    )
    assert plan.name == "s" and len(plan.runs) == 2


@pytest.mark.parametrize(
    "change, words",
    [
        ({"grid": {"model.betta": [1, 4]}}, ["run 'betta=1", "model.betta", "did you mean 'beta'"]),
        ({"overrides": ["train.stpes=3"]}, ["run '", "train.stpes", "did you mean 'steps'"]),
        ({"grid": {"model.beta": [1, "four"]}}, ["run 'beta=four", "model.beta"]),
        ({"grid": {"model.mmd_lambda": [1.0]}}, ["run 'mmd_lambda=1", "not a hyperparameter of beta_vae"]),
        ({"evaluate": {"metrics": ["mig", "dci_laso"]}}, ["evaluate.metrics", "dci_laso", "did you mean"]),
        ({"seeds": 0}, ["seeds"]),
        ({"grid": {"model.beta": []}}, ["grid.model.beta"]),
        ({"gird": {"model.beta": [1]}}, ["unknown key 'gird'", "did you mean 'grid'"]),
        (
            {"report": {"compare_ignore": ["trian.finetune_steps"]}},
            ["compare_ignore", "did you mean 'train.finetune_steps'"],
        ),
    ],
)
def test_plan_time_errors_name_the_run_and_key(tmp_path, change, words):
    spec = {"name": "t", "base": tiny_base(), "seeds": 1, **change}
    with pytest.raises(ConfigError) as info:
        plan_sweep(write_spec(tmp_path / "s.yaml", spec))
    msg = str(info.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg


def test_plan_checks_partition_factors_against_the_dataset(tmp_path):
    base = tiny_base()
    base["gating"] = {
        "enabled": True,
        "partitions": [*PARTS[:2], {"name": "orientation", "size": 1, "factors": ["orientaton"]}],
    }
    with pytest.raises(ConfigError, match=r"run 'tiny,seed=0'.*'orientaton'.*did you mean 'orientation'"):
        plan_sweep(write_spec(tmp_path / "tiny.yaml", {"base": base, "seeds": 1}))


def test_plan_duplicates_are_refused(tmp_path):
    spec = {"base": tiny_base(), "grid": {"model.hidden": [16, 16]}, "seeds": 1}
    with pytest.raises(ConfigError, match="resolve to the same config"):
        plan_sweep(write_spec(tmp_path / "s.yaml", spec))


def test_cli_plan_typo_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys):
    path = write_spec(tmp_path / "s.yaml", grid_spec(grid={"model.name": ["beta_vae"], "model.latent_dm": [4]}))
    assert main(["sweep", "plan", str(path), "--out", str(tmp_path / "sw")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: sweep ") and "latent_dm" in err and "did you mean 'latent_dim'" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "sw" / "manifest.json").exists()


def test_python_sweep_file_list_and_mapping_forms(tmp_path):
    (tmp_path / "grid.py").write_text(
        "from gatedvae.config import Config, from_dict\n"
        f"BASE = {tiny_base()!r}\n"
        "EVALUATE = {'metrics': ['mig'], 'figures': False}\n"
        "def sweep():\n"
        "    out = []\n"
        "    for beta in (1.0, 4.0):\n"
        "        for seed in (0, 1):\n"
        "            d = {**BASE, 'model': {**BASE['model'], 'beta': beta}, 'train': {**BASE['train'], 'seed': seed}}\n"
        "            out.append(from_dict(Config, d))\n"
        "    return out\n",
        encoding="utf-8",
    )
    plan = plan_sweep(tmp_path / "grid.py")
    assert [r.name for r in plan.runs] == ["beta=1,seed=0", "beta=1,seed=1", "beta=4,seed=0", "beta=4,seed=1"]
    assert plan.runs[0].evaluate.metrics == ("mig",) and plan.name == "grid"
    (tmp_path / "m.py").write_text(
        f"def sweep():\n    return {{'base': {tiny_base()!r}, 'seeds': 3}}\n", encoding="utf-8"
    )
    assert len(plan_sweep(tmp_path / "m.py").runs) == 3
    (tmp_path / "bad.py").write_text("def sweep():\n    raise ValueError('no data today')\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="ValueError: no data today"):
        plan_sweep(tmp_path / "bad.py")


def test_replan_keeps_ids_and_adds_seeds(tmp_path):
    path = write_spec(tmp_path / "s.yaml", {"base": tiny_base(), "seeds": 2})
    write_manifest(plan_sweep(path), tmp_path / "sw")
    first = [r["id"] for r in read_manifest(tmp_path / "sw")["runs"]]
    write_spec(path, {"base": tiny_base(), "seeds": 3})
    _, info = write_manifest(plan_sweep(path), tmp_path / "sw")
    again = [r["id"] for r in read_manifest(tmp_path / "sw")["runs"]]
    assert again[:2] == first and len(again) == 3 and info == {"runs": 3, "kept": 2, "dropped": 0}


SWEEP_FILES = sorted((Path(__file__).resolve().parents[1] / "configs" / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_shipped_sweep_files_plan(path):
    plan = plan_sweep(path, check_data=False)  # the bases' data and partitions are built in test_configs.py
    assert plan.runs and len({r.id for r in plan.runs}) == len(plan.runs)
    assert all(r.evaluate is not None for r in plan.runs)  # every shipped sweep evaluates its runs


def test_table1_is_the_papers_grid():
    plan = plan_sweep(Path(__file__).resolve().parents[1] / "configs" / "sweeps" / "table1.yaml", check_data=False)
    models = {(r.config.model.name, r.config.gating.enabled) for r in plan.runs}
    assert models == {(m, g) for m in ("beta_vae", "info_vae", "dip_vae_ii") for g in (False, True)}
    assert sorted({r.seed for r in plan.runs}) == [0, 1, 2, 3, 4] and len(plan.runs) == 30
    for r in plan.runs:  # the paper's hyperparameters come from the presets
        assert r.config.model.latent_dim == 8 and r.config.train.batch_size == 128
        assert {
            "beta_vae": r.config.model.beta,
            "info_vae": r.config.model.mmd_lambda,
            "dip_vae_ii": r.config.model.lambda_od,
        }[r.config.model.name] == {"beta_vae": 4.0, "info_vae": 500.0, "dip_vae_ii": 250.0}[r.config.model.name]
        assert {"dci_lasso", "dci_random_forest"} <= set(r.evaluate.metrics)


# --------------------------------------------------------------------------- shards
def test_shards_and_index_partition_the_runs():
    manifest = {"runs": [{"id": str(i)} for i in range(8)]}
    got = sorted(r["id"] for i in range(3) for r in select_runs(manifest, shard=(i, 3)))
    assert got == sorted(str(i) for i in range(8))
    assert [r["id"] for r in select_runs(manifest, shard=(1, 3))] == ["1", "4", "7"]
    assert select_runs(manifest, index=5) == [{"id": "5"}]
    assert parse_shard("2/4") == (2, 4)
    for bad in ("4/4", "1", "a/b", "-1/3", "0/0"):
        with pytest.raises(ConfigError, match="shard"):
            parse_shard(bad)
    with pytest.raises(ConfigError, match="out of range"):
        select_runs(manifest, index=8)


# --------------------------------------------------------------------------- running
def _run_pids(sweep_dir: Path) -> set[int]:
    pids = set()
    for rec in (sweep_dir / "runs").glob("*/sweep.json"):
        try:
            hist = json.loads(rec.read_text())["history"]
        except (OSError, ValueError, KeyError):
            continue
        pids.update(h["pid"] for h in hist if "pid" in h)
    return pids


def _alive(pid: int, sid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process of session ``sid`` (so a reused pid never counts)."""
    try:
        if os.getsid(pid) != sid:
            return False
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except (OSError, ProcessLookupError):
        return False


@pytest.fixture(scope="module")
def pooled(tmp_path_factory):
    """The 2 x 2 x 2 grid on the local pool: ``gatedvae sweep run --workers 2`` in a real process,
    killed with SIGKILL once some runs are finished and others half-way, then run again."""
    root = tmp_path_factory.mktemp("pool")
    spec = grid_spec(base=tiny_base(steps=60, checkpoint_every=5))
    sweep_dir = root / "sw"
    assert main(["sweep", "plan", str(write_spec(root / "tiny.yaml", spec)), "--out", str(sweep_dir)]) == 0
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gatedvae",
            "sweep",
            "run",
            str(sweep_dir),
            "--workers",
            "2",
            "--quiet",
            "--no-tensorboard",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            st = sweep_status(sweep_dir)["runs"]
            done = [r for r in st if r["state"] == "done"]
            half = [
                r for r in st if r["state"] == "running" and 0 < r["step"] < r["total"]
            ]  # a checkpoint, not finished
            if done and half:
                break
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.05)
        else:
            pytest.fail("the sweep did not reach a state with finished and half-finished runs")
        proc.send_signal(signal.SIGKILL)
        killed_rc = proc.wait(timeout=10)
        workers = _run_pids(sweep_dir)
        deadline = time.time() + 10
        while any(_alive(p, proc.pid) for p in workers) and time.time() < deadline:
            time.sleep(0.05)
        orphans = [p for p in workers if _alive(p, proc.pid)]
    finally:
        if proc.poll() is None:  # pragma: no cover - only if an assertion above failed early
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for p in _run_pids(sweep_dir):  # never leave a process of ours behind, whatever the assertions say
            if _alive(p, proc.pid):
                os.kill(p, signal.SIGKILL)
    at_kill = sweep_status(sweep_dir)
    finished = {r["id"] for r in at_kill["runs"] if r["state"] == "done"}
    before = {i: files_of(sweep_dir / "runs" / i) for i in finished}
    records = {i: json.loads((sweep_dir / "runs" / i / "sweep.json").read_text()) for i in finished}
    with pytest.MonkeyPatch.context() as mp:  # two GPUs, as the parent's CUDA_VISIBLE_DEVICES names them
        mp.setattr(torch.cuda, "device_count", lambda: 2)
        mp.setenv("CUDA_VISIBLE_DEVICES", "3,5")
        res = run_sweep(sweep_dir, workers=2, progress=False, tensorboard=False)
    return {
        "dir": sweep_dir,
        "rc": killed_rc,
        "orphans": orphans,
        "finished": finished,
        "before": before,
        "records": records,
        "res": res,
    }


def test_killed_sweep_leaves_no_orphans(pooled):
    assert pooled["rc"] == -signal.SIGKILL
    assert pooled["orphans"] == []  # the workers died with their parent (PR_SET_PDEATHSIG)


def test_rerun_after_sigkill_finishes_only_the_missing_runs(pooled):
    sweep_dir, finished, res = pooled["dir"], pooled["finished"], pooled["res"]
    assert 1 <= len(finished) < 8
    assert res["skipped"] == len(finished) and res["done"] == 8 and res["failed"] == 0
    assert {o["id"] for o in res["outcomes"]} == {e["id"] for e in read_manifest(sweep_dir)["runs"]} - finished
    for i in finished:  # finished runs untouched; the record only if the kill came before it was closed
        after = files_of(sweep_dir / "runs" / i)
        if pooled["records"][i]["state"] == "done":
            assert after == pooled["before"][i]
        else:
            after.pop("sweep.json"), pooled["before"][i].pop("sweep.json")
            assert after == pooled["before"][i]
    resumed = [o for o in res["outcomes"] if o["action"].startswith("resumed")]
    assert resumed and all(o["resumed_from"] > 0 for o in resumed)  # half-finished runs continue from a checkpoint
    for o in resumed:
        hist = json.loads((sweep_dir / "runs" / o["id"] / "sweep.json").read_text())["history"]
        assert hist[-2]["outcome"] == "stopped" and hist[-1]["outcome"] == "done"
    assert {o["action"] for o in res["outcomes"]} <= {"trained+evaluated", "resumed+evaluated", "evaluated"}


def test_pool_runs_every_run_to_done_with_metrics(pooled):
    sweep_dir = pooled["dir"]
    st = sweep_status(sweep_dir)
    assert st["complete"] and st["counts"]["done"] == 8
    pids = set()
    for entry in read_manifest(sweep_dir)["runs"]:
        run = sweep_dir / "runs" / entry["id"]
        doc = json.loads((run / "metrics.json").read_text())
        assert doc["preset"] == "fast" and "mig.mig" in doc["headline"]
        assert doc["checkpoint_step"] == 60 and doc["gated"] == entry["config"]["gating"]["enabled"]
        rec = json.loads((run / "sweep.json").read_text())
        assert rec["state"] == "done" and rec["history"][-1]["outcome"] == "done"
        pids.add(rec["history"][-1]["pid"])
        assert load_config(run / "config.yaml") == from_dict(Config, entry["config"])
    assert os.getpid() not in pids and len(pids) <= 4  # worker processes did the work: 2 per invocation
    snap = json.loads((sweep_dir / "status.json").read_text())
    assert snap["complete"] and snap["counts"]["done"] == 8


def test_pool_workers_are_placed_on_the_gpus(pooled):
    """Two (faked) GPUs named 3 and 5 by the parent's CUDA_VISIBLE_DEVICES, two workers: each worker
    sees one of them (its runs record it), and the two workers are on different GPUs."""
    sweep_dir, res = pooled["dir"], pooled["res"]
    by_pid: dict[int, set[str]] = {}
    for o in res["outcomes"]:
        last = json.loads((sweep_dir / "runs" / o["id"] / "sweep.json").read_text())["history"][-1]
        if last["pid"] != os.getpid():  # a worker's (a single remaining run trains in this process)
            by_pid.setdefault(last["pid"], set()).add(last["cuda_visible_devices"])
    if len(res["outcomes"]) >= 2:
        assert by_pid and all(len(g) == 1 for g in by_pid.values()), by_pid  # one GPU per worker
        gpus = [next(iter(g)) for g in by_pid.values()]
        assert set(gpus) <= {"3", "5"} and len(set(gpus)) == len(gpus), by_pid


def test_gpu_slots_put_worker_i_on_gpu_i_mod_n(monkeypatch):
    from gatedvae.sweep.local import gpu_slots, visible_gpus

    assert gpu_slots(5, ["0", "1"]) == ["0", "1", "0", "1", "0"]
    assert gpu_slots(2, ["GPU-a", "GPU-b", "GPU-c"]) == ["GPU-a", "GPU-b"]
    assert gpu_slots(3, []) == [None, None, None]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert visible_gpus() == []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert visible_gpus() == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 7,-1,4")  # CUDA stops at -1: two devices
    assert visible_gpus() == ["2", "7"]


def test_workers_per_gpu(tmp_path, monkeypatch, capsys):
    from gatedvae.sweep import execute

    path = write_spec(tmp_path / "s.yaml", {"name": "g", "base": tiny_base(steps=10), "seeds": 3})
    sweep_dir = tmp_path / "sw"
    write_manifest(plan_sweep(path), sweep_dir)
    argv = ["sweep", "run", str(sweep_dir), "--quiet"]
    assert main([*argv, "--workers", "2", "--workers-per-gpu", "1"]) == 2
    assert capsys.readouterr().err == "error: give --workers or --workers-per-gpu, not both\n"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert main([*argv, "--workers-per-gpu", "1"]) == 2
    assert capsys.readouterr().err == "error: --workers-per-gpu: no CUDA device is visible here; use --workers N\n"
    assert main([*argv, "--workers-per-gpu", "1", "--backend", "ray"]) == 2
    assert "--workers-per-gpu is for --backend local; with Ray use --gpus-per-run" in capsys.readouterr().err
    seen = {}
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(execute, "run_local", lambda d, todo, **kw: seen.update(kw, runs=len(todo)))
    assert main([*argv, "--workers-per-gpu", "2"]) == 0
    assert seen["workers"] == 4 and seen["gpus"] == ["0", "1"] and seen["runs"] == 3
    assert main([*argv, "--workers-per-gpu", "0"]) == 2
    assert "--workers-per-gpu must be at least 1, got 0" in capsys.readouterr().err


def test_run_dirs_are_ordinary_runs(pooled, capsys, tmp_path):
    import shutil

    run = pooled["dir"] / "runs" / read_manifest(pooled["dir"])["runs"][0]["id"]
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    assert "already finished" in capsys.readouterr().err
    shutil.copytree(run, tmp_path / "copy")
    assert (
        main(["evaluate", str(tmp_path / "copy"), "--metrics", "mig", "--preset", "fast", "--quiet", "--device", "cpu"])
        == 0
    )


def test_rerun_skips_finished_runs_untouched(pooled, capsys):
    sweep_dir = pooled["dir"]
    before = {p.name: files_of(p) for p in (sweep_dir / "runs").iterdir()}
    assert main(["sweep", "run", str(sweep_dir), "--workers", "2", "--quiet"]) == 0
    assert "8 runs selected: 8 done, 0 failed; 8 were already finished" in capsys.readouterr().out
    assert {p.name: files_of(p) for p in (sweep_dir / "runs").iterdir()} == before


def test_failed_run_is_recorded_and_others_finish(tmp_path, capsys):
    spec = {
        "name": "f",
        "base": tiny_base(steps=10),
        "variants": [
            {"name": "ok"},
            {
                "name": "broken",
                "overrides": ["data.name=images", "data.path=/nonexistent/images", "gating.partitions=[]"],
            },
        ],
        "seeds": 2,
        "evaluate": {"metrics": ["mig"], "figures": False},
    }
    sweep_dir = tmp_path / "sw"
    assert main(["sweep", "plan", str(write_spec(tmp_path / "f.yaml", spec)), "--out", str(sweep_dir)]) == 0
    assert main(["sweep", "run", str(sweep_dir), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "4 runs selected: 2 done, 2 failed" in out and "failed: broken,seed=0" in out
    st = states(sweep_dir)
    assert st == {"ok,seed=0": "done", "ok,seed=1": "done", "broken,seed=0": "failed", "broken,seed=1": "failed"}
    broken = [e for e in read_manifest(sweep_dir)["runs"] if e["variant"] == "broken"][0]
    run = sweep_dir / "runs" / broken["id"]
    rec = json.loads((run / "sweep.json").read_text())
    assert rec["state"] == "failed" and "/nonexistent/images" in rec["error"]
    assert "Traceback" in (run / "error.txt").read_text()
    snap = json.loads((sweep_dir / "status.json").read_text())
    assert {f["name"] for f in snap["failed"]} == {"broken,seed=0", "broken,seed=1"}
    # status shows the error; --skip-failed leaves them; a plain re-run retries them (and fails again).
    assert main(["sweep", "status", str(sweep_dir)]) == 0
    assert "failed" in capsys.readouterr().out
    res = run_sweep(sweep_dir, retry_failed=False, progress=False)
    assert res["skipped"] == 4 and res["failed"] == 2 and res["outcomes"] == []
    res = run_sweep(sweep_dir, progress=False)
    assert [o["action"] for o in res["outcomes"]] == ["failed", "failed"]
    assert len(json.loads((run / "sweep.json").read_text())["history"]) == 2


def test_missing_sweep_dir_is_a_one_line_error(tmp_path, capsys):
    assert main(["sweep", "run", str(tmp_path / "nope"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: sweep directory") and len(err.strip().splitlines()) == 1
    with pytest.raises(GatedVAEError, match="not a sweep directory"):
        sweep_status(tmp_path)


def test_index_and_shard_run_their_part_only(tmp_path, capsys, monkeypatch):
    path = write_spec(
        tmp_path / "s.yaml",
        {"name": "parts", "base": tiny_base(steps=10), "seeds": 4, "evaluate": {"metrics": ["mig"], "figures": False}},
    )
    sweep_dir = tmp_path / "sw"
    assert main(["sweep", "plan", str(path), "--out", str(sweep_dir)]) == 0
    assert main(["sweep", "run", str(sweep_dir), "--index", "2", "--quiet", "--no-tensorboard"]) == 0
    assert [r["state"] for r in sweep_status(sweep_dir)["runs"]] == ["pending", "pending", "done", "pending"]
    import gatedvae.data

    built = []
    build = gatedvae.data.build_dataset
    monkeypatch.setattr(gatedvae.data, "build_dataset", lambda *a, **k: built.append(1) or build(*a, **k))
    assert main(["sweep", "run", str(sweep_dir), "--shard", "1/2", "--quiet", "--no-tensorboard"]) == 0
    assert len(built) == 1  # two runs on the same data, trained and evaluated: one dataset (before: four)
    assert [r["state"] for r in sweep_status(sweep_dir)["runs"]] == ["pending", "done", "done", "done"]
    capsys.readouterr()
    assert main(["sweep", "run", str(sweep_dir), "--shard", "0/2", "--quiet", "--no-tensorboard"]) == 0
    assert "2 runs selected (of 4 in the sweep): 2 done, 0 failed; 1 was already finished" in capsys.readouterr().out
    assert main(["sweep", "run", str(sweep_dir), "--index", "4", "--quiet"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["sweep", "status", str(sweep_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["complete"] is True


def test_run_killed_after_its_evaluation_is_done_and_its_record_closed(tmp_path):
    """SIGKILL between writing metrics.json and closing sweep.json: the files say done, the record
    says running. A re-run neither trains nor evaluates it again, and closes the record."""
    path = write_spec(
        tmp_path / "s.yaml",
        {"name": "late", "base": tiny_base(steps=10), "seeds": 1, "evaluate": {"metrics": ["mig"], "figures": False}},
    )
    sweep_dir = tmp_path / "sw"
    assert main(["sweep", "plan", str(path), "--out", str(sweep_dir)]) == 0
    assert run_sweep(sweep_dir, progress=False, tensorboard=False)["done"] == 1
    run = sweep_dir / "runs" / read_manifest(sweep_dir)["runs"][0]["id"]
    rec = json.loads((run / "sweep.json").read_text())
    rec["state"] = "running"
    rec["history"][-1] = {k: v for k, v in rec["history"][-1].items() if k in ("started", "host", "pid", "from_state")}
    rec["history"][-1]["outcome"] = "running"
    (run / "sweep.json").write_text(json.dumps(rec))
    assert sweep_status(sweep_dir)["runs"][0]["state"] == "done"  # the files decide
    before = files_of(run)
    res = run_sweep(sweep_dir, progress=False, tensorboard=False)
    assert res["skipped"] == 1 and res["done"] == 1 and res["outcomes"] == []
    after = files_of(run)
    assert after.pop("sweep.json") != before.pop("sweep.json") and after == before  # only the record changed
    rec = json.loads((run / "sweep.json").read_text())
    assert rec["state"] == "done" and len(rec["history"]) == 1
    assert rec["history"][0]["outcome"] == "done" and "recorded" in rec["history"][0]
    settled = files_of(run)
    assert run_one(sweep_dir, read_manifest(sweep_dir)["runs"][0])["action"] == "skipped"
    assert files_of(run) == settled  # a closed record is left alone


@pytest.mark.slow  # a third real sweep process; the SIGKILL of the whole sweep above is in the default suite
def test_a_worker_killed_mid_run_costs_only_its_run(tmp_path):
    spec = grid_spec(base=tiny_base(steps=100, checkpoint_every=10), grid={}, seeds=3)
    sweep_dir = tmp_path / "sw"
    assert main(["sweep", "plan", str(write_spec(tmp_path / "w.yaml", spec)), "--out", str(sweep_dir)]) == 0
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gatedvae",
            "sweep",
            "run",
            str(sweep_dir),
            "--workers",
            "2",
            "--quiet",
            "--no-tensorboard",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    victim = None
    try:
        deadline = time.time() + 180
        while victim is None and time.time() < deadline:
            for r in sweep_status(sweep_dir)["runs"]:
                if r["state"] == "running" and 0 < r["step"] < r["total"]:
                    rec = json.loads((sweep_dir / "runs" / r["id"] / "sweep.json").read_text())
                    pid = rec["history"][-1]["pid"]
                    if _alive(pid, proc.pid):
                        victim = (r["id"], pid)
                        os.kill(pid, signal.SIGKILL)
                        break
            time.sleep(0.05)
        assert victim is not None, "no run was seen half-way"
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:  # pragma: no cover
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 1, err.decode()
    assert "3 runs selected: 2 done, 1 failed" in out.decode()
    rec = json.loads((sweep_dir / "runs" / victim[0] / "sweep.json").read_text())
    assert rec["state"] == "failed" and "killed by SIGKILL" in rec["error"]
    res = run_sweep(sweep_dir, progress=False, tensorboard=False)  # the next run resumes it
    assert [o["id"] for o in res["outcomes"]] == [victim[0]] and res["outcomes"][0]["action"] == "resumed+evaluated"
    assert sweep_status(sweep_dir)["complete"]


def test_a_sweep_and_a_plain_train_exclude_each_other(tmp_path, capsys):
    """One lock (RUN/.lock) for both: a run a plain trainer holds is "running" to the sweep, and a
    run the sweep works on refuses ``gatedvae train --resume`` naming the sweep's process."""
    from gatedvae.config import save_config
    from gatedvae.sweep.runner import inspect_run, run_dir_of
    from test_train import hold_lock

    path = write_spec(tmp_path / "s.yaml", {"name": "lock", "base": tiny_base(steps=10), "seeds": 1})
    sweep_dir = tmp_path / "sw"
    write_manifest(plan_sweep(path), sweep_dir)
    entry = read_manifest(sweep_dir)["runs"][0]
    run = run_dir_of(sweep_dir, entry)
    run.mkdir(parents=True)
    save_config(from_dict(Config, entry["config"]), run / "config.yaml")
    trainer = hold_lock(run, "training")
    try:
        assert inspect_run(run, entry)["state"] == "running"
    finally:
        trainer.kill()
        trainer.wait()
    assert inspect_run(run, entry)["state"] == "partial"  # its lock is stale once it is gone
    sweep = hold_lock(run, "sweep")
    try:
        assert main(["train", "--resume", str(run), "--quiet"]) == 2
        assert f"error: run {run} is being worked on by a sweep by pid {sweep.pid} on " in capsys.readouterr().err
    finally:
        sweep.kill()
        sweep.wait()
