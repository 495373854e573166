"""The Ray backend: the 2 x 2 x 2 grid on a local Ray instance (2 CPUs), one Ray task per run.

Skipped when ray is not installed (``pip install -e '.[ray]'``; ``.ci/run`` installs it)."""

from __future__ import annotations

import json
import os

import pytest

ray = pytest.importorskip(
    "ray", reason="ray is not installed: pip install -e '.[ray]' (the ray extra; .ci/run installs it)"
)

from gatedvae.cli import main  # noqa: E402
from gatedvae.sweep import read_manifest, sweep_status  # noqa: E402

SWEEP_PY = """
from gatedvae.config import Config, from_dict
from test_sweep import tiny_base

EVALUATE = {"metrics": ["mig"], "preset": "fast", "figures": False}


def sweep():
    runs = []
    for model in ("beta_vae", "info_vae"):
        for gated in (False, True):
            for seed in (0, 1):
                base = tiny_base()
                base["model"]["name"] = model
                base["gating"]["enabled"] = gated
                base["train"]["seed"] = seed
                runs.append(from_dict(Config, base))
    for seed in (0, 1):  # two runs that fail when they start: the data file does not exist
        base = tiny_base()
        base["data"] = {"name": "dsprites_file", "path": "/nonexistent/dsprites.npz"}
        base["gating"] = {}
        base["train"]["seed"] = seed
        runs.append(("broken,seed=%d" % seed, base))
    return runs
"""


def test_grid_on_a_local_ray_instance(tmp_path, capsys):
    sweep_dir = tmp_path / "sw"
    (tmp_path / "grid.py").write_text(SWEEP_PY, encoding="utf-8")
    assert main(["sweep", "plan", str(tmp_path / "grid.py"), "--out", str(sweep_dir)]) == 0
    capsys.readouterr()
    # A request the local instance cannot meet is a one-line user error, before any run starts.
    assert (
        main(["sweep", "run", str(sweep_dir), "--backend", "ray", "--workers", "2", "--cpus-per-run", "3", "--quiet"])
        == 2
    )
    assert "asks for 3 CPUs and 0 GPUs but this machine's local Ray instance has 2 CPUs" in capsys.readouterr().err
    assert sweep_status(sweep_dir)["counts"]["pending"] == 10

    assert (
        main(["sweep", "run", str(sweep_dir), "--backend", "ray", "--workers", "2", "--quiet", "--no-tensorboard"]) == 1
    )
    out = capsys.readouterr().out
    assert "10 runs selected: 8 done, 2 failed" in out
    st = sweep_status(sweep_dir)
    assert st["counts"]["done"] == 8 and st["counts"]["failed"] == 2
    pids = set()
    for e in read_manifest(sweep_dir)["runs"]:
        rec = json.loads((sweep_dir / "runs" / e["id"] / "sweep.json").read_text())
        pids.add(rec["history"][-1]["pid"])
        if e["name"].startswith("broken"):
            assert rec["state"] == "failed" and "/nonexistent/dsprites.npz" in rec["error"]
        else:
            doc = json.loads((sweep_dir / "runs" / e["id"] / "metrics.json").read_text())
            assert "mig.mig" in doc["headline"] and doc["checkpoint_step"] == 20
    assert os.getpid() not in pids  # the runs ran in Ray's worker processes
    assert not ray.is_initialized()  # the instance started for the sweep was shut down

    # Run again with --skip-failed: nothing to do, no Ray task.
    assert main(["sweep", "run", str(sweep_dir), "--backend", "ray", "--skip-failed", "--quiet"]) == 1
    assert "10 runs selected: 8 done, 2 failed; 10 were already finished" in capsys.readouterr().out


def test_ensembles_are_ray_tasks_on_a_local_instance(tmp_path, capsys):
    """--ensemble 2: the 8 trainable runs go as 4 ensembles (one Ray task each, in Ray's worker
    processes), each member recorded as its own run; the broken runs fail alone."""
    sweep_dir = tmp_path / "sw"
    (tmp_path / "grid.py").write_text(SWEEP_PY, encoding="utf-8")
    assert main(["sweep", "plan", str(tmp_path / "grid.py"), "--out", str(sweep_dir)]) == 0
    argv = ["sweep", "run", str(sweep_dir), "--backend", "ray", "--workers", "2", "--ensemble", "2", "--quiet"]
    assert main([*argv, "--no-tensorboard"]) == 1
    assert "10 runs selected: 8 done, 2 failed" in capsys.readouterr().out
    sizes, pids = [], set()
    for e in read_manifest(sweep_dir)["runs"]:
        rec = json.loads((sweep_dir / "runs" / e["id"] / "sweep.json").read_text())
        pids.add(rec["history"][-1]["pid"])
        if not e["name"].startswith("broken"):
            assert rec["state"] == "done"
            sizes.append(json.loads((sweep_dir / "runs" / e["id"] / "summary.json").read_text())["ensemble"]["size"])
    assert sizes == [2] * 8 and os.getpid() not in pids
    assert not ray.is_initialized()
