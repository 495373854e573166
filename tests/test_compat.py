"""What users of 0.1 already have keeps working (CHANGELOG.md, docs/architecture.md#compatibility).

``tests/data/v0_1`` was written by gatedvae 0.1.0 (commit 9b6924f) from ``config.yaml`` there: a
gated beta-VAE on a 144-image array, trained uninterrupted (``run_finished``, 20 steps + 4 of
decoder fine-tuning) and stopped at step 16 (``run_stopped``), and a sweep planned from
``sweep.yaml`` with one of its two runs done and evaluated (``sweep``). The tests copy it and use
it with this version: resume, evaluate, encode, re-plan, run and report.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from gatedvae import load_run
from gatedvae.cli import main
from gatedvae.config import load_config, to_dict
from gatedvae.sweep import plan_sweep

FIXTURE = Path(__file__).parent / "data" / "v0_1"


@pytest.fixture
def old(tmp_path, monkeypatch) -> Path:
    """A copy of the 0.1 fixture; the working directory is its root (its configs use relative paths)."""
    root = tmp_path / "v0_1"
    shutil.copytree(FIXTURE, root)
    monkeypatch.chdir(root)
    return root


def _checkpoint(run: Path) -> tuple[dict[str, np.ndarray], dict]:
    (path,) = sorted((run / "checkpoints").glob("*.safetensors"))
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        meta = f.metadata()
    return load_file(str(path)), meta


def test_a_01_run_resumes_exactly_and_ends_where_01_ended(old, capsys):
    assert main(["train", "--resume", "run_stopped", "--quiet", "--no-tensorboard"]) == 0
    assert main(["train", "run_finished/config.yaml", "--run-dir", "again", "--quiet", "--no-tensorboard"]) == 0
    resumed, _ = _checkpoint(old / "run_stopped")
    again, _ = _checkpoint(old / "again")
    finished, _ = _checkpoint(old / "run_finished")  # written by 0.1, uninterrupted
    assert resumed.keys() == again.keys() == finished.keys()
    for key in finished:
        # a 0.1 checkpoint resumes bitwise to where this version's uninterrupted run ends ...
        np.testing.assert_array_equal(resumed[key], again[key], err_msg=key)
        # ... which is where 0.1 ended (bitwise on the machine that wrote the fixture; other CPUs
        # may pick other matmul kernels, hence the tolerance)
        np.testing.assert_allclose(again[key], finished[key], rtol=1e-4, atol=1e-6, err_msg=key)
    lines = (old / "run_stopped" / "metrics.jsonl").read_text().splitlines()
    assert lines == (old / "again" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [4, 8, 12, 16, 20, 24]
    assert json.loads((old / "run_stopped" / "status.json").read_text())["status"] == "finished"


def test_a_01_config_file_loads_and_saves_byte_identical(old):
    saved = (old / "run_finished" / "config.yaml").read_text()
    cfg = load_config(old / "run_finished" / "config.yaml")
    assert cfg.model.beta is None and cfg.gating.partitions[1].factors == ("b",)
    from gatedvae.config import save_config

    save_config(cfg, old / "again.yaml")
    assert (old / "again.yaml").read_text() == saved


def test_a_01_run_evaluates_and_encodes(old, capsys):
    assert main(["evaluate", "run_finished", "--preset", "fast", "--metrics", "mig", "--device", "cpu", "--quiet"]) == 0
    doc = json.loads((old / "run_finished" / "metrics.json").read_text())
    assert doc["checkpoint_step"] == 24 and np.isfinite(doc["headline"]["mig.mig"])
    run = load_run("run_finished")
    images = np.load("images.npy")
    z = run.encode(images, partition="pb")
    assert z.shape == (144, 2) and np.isfinite(z).all()
    assert main(["encode", "run_finished", "images.npy", "--partition", "pa", "--out", "codes.npy"]) == 0
    np.testing.assert_array_equal(np.load("codes.npy"), run.encode(images, partition="pa"))


def test_a_01_sweep_keeps_its_run_ids_runs_the_rest_and_reports(old, capsys):
    manifest = json.loads((old / "sweep" / "manifest.json").read_text())
    ids = [r["id"] for r in manifest["runs"]]
    assert [r.id for r in plan_sweep("sweep.yaml").runs] == ids  # re-planning finds the same runs
    for r in manifest["runs"]:
        assert to_dict(plan_sweep("sweep.yaml").runs[ids.index(r["id"])].config) == r["config"]
    done = old / "sweep" / "runs" / ids[0]
    before = {p.name: p.read_bytes() for p in (done / "checkpoints").iterdir()}
    old_scores = json.loads((done / "metrics.json").read_text())["headline"]

    assert main(["sweep", "run", "sweep", "--workers", "1", "--quiet"]) == 0
    assert {p.name: p.read_bytes() for p in (done / "checkpoints").iterdir()} == before  # not retrained
    assert json.loads((old / "sweep" / "runs" / ids[1] / "status.json").read_text())["status"] == "finished"
    assert main(["report", "sweep"]) == 0
    assert (old / "sweep" / "report" / "report.md").is_file()

    # this version scores the 0.1 run as 0.1 did (same settings, same seed; equal on the machine
    # that wrote the fixture, within float noise on CPUs with other matmul kernels)
    args = ["--preset", "fast", "--metrics", "dci_lasso,mig", "--device", "cpu", "--quiet"]
    assert main(["evaluate", str(done), *args]) == 0
    new_scores = json.loads((done / "metrics.json").read_text())["headline"]
    assert new_scores.keys() == old_scores.keys()
    for key, value in old_scores.items():
        assert new_scores[key] == pytest.approx(value, rel=1e-3, abs=1e-4), key
