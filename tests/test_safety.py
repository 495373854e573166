"""Safety (issue 7): nothing gatedvae reads executes code, and no name in a config writes outside
the directory it belongs in.

* Checkpoints and run directories are read without unpickling: a checkpoint carrying a real pickle
  payload (one that creates a file when unpickled) is refused with a one-line error and the file
  is never created. Image arrays and the dSprites archive are read the same way.
* YAML is read with the safe loader: ``!!python/...`` tags are refused (config files, overrides,
  a run directory's config.yaml, sweep files), and nothing runs.
* Names in configs that become file names (partition names -> ``figures/swap_<name>.png``, the
  sweep name -> ``sweeps/<name>``, run ids in a sweep manifest -> ``runs/<id>``) cannot contain a
  path: ``../`` and absolute paths are refused. The other file fields name files to *read*
  (``data.path``, ``data.labels``) or the user's cache directory (``data.data_dir``, written
  only with ``data.cache=true`` and only as its fixed file name); they are inputs, not outputs.
"""

from __future__ import annotations

import ast
import builtins
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import tiny_dict
from gatedvae import cli
from gatedvae.checkpoint import read_header
from gatedvae.config import Config, PartitionConfig, apply_overrides, load_config
from gatedvae.errors import ConfigError, GatedVAEError
from gatedvae.train import CheckpointError, load_checkpoint

SRC = Path(__file__).resolve().parents[1] / "src" / "gatedvae"

# The tiny gated config on 200 ellipses, a 16-wide MLP and batches of 8 (tests/conftest.py).
BASE = tiny_dict(
    data={"size": 200},
    model={"hidden": 16},
    train={"steps": 10, "batch_size": 8, "checkpoint_every": 5, "threads": 1},
)


class Payload:
    """Unpickling this calls ``open(marker, "w")``: the marker file appears if anything unpickles it."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def _one_line(err: str) -> str:
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("safety")
    (root / "cfg.yaml").write_text(yaml.safe_dump(BASE))
    assert (
        cli.main(["train", str(root / "cfg.yaml"), "--run-dir", str(root / "run"), "--quiet", "--no-tensorboard"]) == 0
    )
    return root / "run"


def test_the_payload_is_real(tmp_path):
    """The payload used below does create its file when unpickled (so 'not created' means something)."""
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()
    marker.unlink()
    buf = tmp_path / "t.pt"
    torch.save({"model": Payload(marker)}, buf)
    torch.load(buf, weights_only=False)  # what a careless loader would do
    assert marker.exists()


@pytest.mark.parametrize("kind", ["torch.save", "raw pickle", "pickle with safetensors name and magic"])
def test_a_pickled_checkpoint_is_refused_and_never_unpickled(trained, tmp_path, capsys, kind):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "status.json").write_text('{"status": "running", "step": 10, "total_steps": 20}\n')
    marker = tmp_path / f"pwned-{kind.replace(' ', '_')}"
    evil = run / "checkpoints" / "step-000000015.safetensors"  # the newest: the one resume and evaluate pick
    if kind == "torch.save":
        torch.save({"model/encoder.weight": Payload(marker)}, evil)
    elif kind == "raw pickle":
        evil.write_bytes(pickle.dumps(Payload(marker), protocol=2))
    else:  # a pickle after a plausible 8-byte header length: still not JSON, still refused
        body = pickle.dumps(Payload(marker))
        evil.write_bytes(len(body).to_bytes(8, "little") + body)
    before = {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()}

    for argv in (
        ["train", "--resume", str(run), "--quiet", "--no-tensorboard"],
        ["evaluate", str(run), "--preset", "fast", "--device", "cpu", "--quiet"],
    ):
        assert cli.main(argv) == 2
        err = _one_line(capsys.readouterr().err)
        assert "step-000000015.safetensors" in err and "not a gatedvae checkpoint" in err, err
    with pytest.raises(CheckpointError, match="pickled or truncated files are refused|not a gatedvae checkpoint"):
        read_header(evil)
    assert not marker.exists()
    assert {p.name: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_checkpoint_loading_needs_no_pickle(trained, monkeypatch):
    """Loading a real checkpoint (and evaluating a run) works with pickle switched off entirely."""

    def forbidden(*a, **k):
        raise AssertionError("something unpickled")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    from gatedvae.run import load_trained

    prep, step, path = load_trained(trained)
    assert step == 10 and path.name == "step-000000010.safetensors"
    header = load_checkpoint(path, prep.model)
    assert header["step"] == 10 and "numpy_rng" in header


def test_pickled_image_arrays_are_refused(tmp_path, capsys):
    marker = tmp_path / "pwned"
    arr = np.empty(2, dtype=object)
    arr[:] = [Payload(marker), Payload(marker)]
    np.save(tmp_path / "evil.npy", arr, allow_pickle=True)
    np.savez(tmp_path / "evil.npz", images=arr)
    for name in ("evil.npy", "evil.npz"):
        assert cli.main(["data", "describe", "images", f"path={tmp_path / name}", "--quiet"]) == 2
        err = _one_line(capsys.readouterr().err)
        assert "never loaded" in err or "pickled" in err, err
    assert not marker.exists()


def test_dsprites_archive_pickled_metadata_is_never_opened(tmp_path, capsys):
    """The official file carries a pickled 'metadata' member; gatedvae reads the arrays and never
    touches it, so a malicious one runs nothing."""
    from gatedvae.data.dsprites import DSPRITES_SPACE

    marker = tmp_path / "pwned"
    rng = np.random.default_rng(0)
    classes = DSPRITES_SPACE.sample(30, rng)
    meta = np.empty((), dtype=object)
    meta[()] = Payload(marker)
    np.savez(
        tmp_path / "d.npz",
        imgs=(rng.random((30, 64, 64)) < 0.05).astype(np.uint8),
        latents_values=DSPRITES_SPACE.to_values(classes),
        latents_classes=classes,
        metadata=meta,
    )
    assert cli.main(["data", "describe", "dsprites_file", f"path={tmp_path / 'd.npz'}", "--quiet"]) == 0
    assert "30 images" in capsys.readouterr().out
    assert not marker.exists()
    # Pickled *images* are refused.
    np.savez(
        tmp_path / "e.npz", imgs=meta.reshape(1), latents_values=np.zeros((1, 6)), latents_classes=np.zeros((1, 6), int)
    )
    assert cli.main(["data", "describe", "dsprites_file", f"path={tmp_path / 'e.npz'}", "--quiet"]) == 2
    _one_line(capsys.readouterr().err)
    assert not marker.exists()


# --------------------------------------------------------------------------- YAML
def _python_tag(marker: Path) -> str:
    return f"!!python/object/apply:builtins.open [{json.dumps(str(marker))}, w]"


def test_yaml_python_tags_are_refused_in_config_files(tmp_path, capsys):
    marker = tmp_path / "pwned"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f"model:\n  name: {_python_tag(marker)}\n")
    rc = cli.main(["train", str(cfg), "--run-dir", str(tmp_path / "r"), "--quiet"])
    err = _one_line(capsys.readouterr().err)
    assert rc == 2 and "is not valid YAML" in err and "python/object/apply" in err
    assert not marker.exists() and not (tmp_path / "r").exists()
    # The same tag in a plain top-level position, and the other dangerous tags.
    for tag in (
        _python_tag(marker),
        "!!python/name:os.system",
        "!!python/module:os",
        f"!!python/object/new:builtins.open [{json.dumps(str(marker))}, w]",
    ):
        cfg.write_text(f"train: {tag}\n")
        with pytest.raises(ConfigError, match="is not valid YAML"):
            load_config(cfg)
    assert not marker.exists()


def test_yaml_python_tags_in_overrides_stay_text(tmp_path):
    marker = tmp_path / "pwned"
    cfg = apply_overrides(Config(), [f"data.path={_python_tag(marker)}"])  # a string field: kept as text
    assert cfg.data.path.startswith("!!python/object/apply")
    with pytest.raises(GatedVAEError):
        apply_overrides(Config(), [f"train.steps={_python_tag(marker)}"])  # not a number: refused
    assert not marker.exists()


def test_a_run_directory_config_with_a_python_tag_is_refused(trained, tmp_path, capsys):
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "status.json").write_text('{"status": "running", "step": 10, "total_steps": 20}\n')
    (run / "config.yaml").write_text((trained / "config.yaml").read_text() + f"extra: {_python_tag(marker)}\n")
    evaluate = ["evaluate", str(run), "--preset", "fast", "--device", "cpu", "--quiet"]
    for argv in (["train", "--resume", str(run), "--quiet"], evaluate):
        assert cli.main(argv) == 2
        assert "is not valid YAML" in _one_line(capsys.readouterr().err)
    assert not marker.exists()


def test_sweep_files_are_loaded_safely(tmp_path, capsys):
    marker = tmp_path / "pwned"
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"name: s\nbase: {_python_tag(marker)}\nseeds: 1\n")
    assert cli.main(["sweep", "plan", str(sweep), "--out", str(tmp_path / "sw")]) == 2
    _one_line(capsys.readouterr().err)
    assert not marker.exists()


def test_no_unsafe_loader_in_the_source():
    """A guard on the source: no pickle/torch.load/unsafe YAML/eval anywhere in the package."""
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                owner = getattr(f.value, "id", "") if isinstance(f, ast.Attribute) else ""
                if (owner, name) in {
                    ("pickle", "load"),
                    ("pickle", "loads"),
                    ("torch", "load"),
                    ("yaml", "load"),
                    ("yaml", "unsafe_load"),
                    ("yaml", "full_load"),
                    ("np", "load"),
                    ("numpy", "load"),
                } or (isinstance(f, ast.Name) and f.id in ("eval", "exec")):
                    kw = {k.arg: k.value for k in node.keywords}
                    if (
                        owner in ("np", "numpy")
                        and isinstance(kw.get("allow_pickle"), ast.Constant)
                        and kw["allow_pickle"].value is False
                    ):
                        continue
                    if (
                        owner == "torch"
                        and isinstance(kw.get("weights_only"), ast.Constant)
                        and kw["weights_only"].value is True
                    ):
                        continue
                    bad.append(f"{path.relative_to(SRC)}:{node.lineno} {owner}.{name}")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] + (
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
                )
                if any(m in ("pickle", "dill", "cloudpickle", "marshal", "shelve") for m in mods):
                    bad.append(f"{path.relative_to(SRC)}:{node.lineno} import {mods}")
    assert not bad, bad


# --------------------------------------------------------------------------- names that become paths
@pytest.mark.parametrize(
    "name",
    ["../escape", "../../etc/passwd", "/tmp/abs", "a/b", "..", ".", ".hidden", "C:\\x", "a\\b", "x\ny", "nul\0l"],
)
def test_partition_names_cannot_be_paths(name):
    with pytest.raises(ConfigError, match="must be a plain name"):
        PartitionConfig(name=name, size=1, factors=("x",))


def test_figures_of_any_valid_partition_name_stay_in_the_run(tmp_path, capsys):
    """A partition named with spaces, brackets and unicode is fine; every file evaluation writes is
    inside the run directory, and nothing appears beside it."""
    cfg = json.loads(json.dumps(BASE))
    cfg["gating"]["partitions"][0]["name"] = "pose (yaw) é"
    cfg["train"]["steps"] = 5
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    run = tmp_path / "runs" / "r"
    assert cli.main(["train", str(tmp_path / "cfg.yaml"), "--run-dir", str(run), "--quiet", "--no-tensorboard"]) == 0
    outside = sorted(p for p in tmp_path.rglob("*") if run not in p.parents and p != run)
    assert cli.main(["evaluate", str(run), "--preset", "fast", "--quiet", "--metrics", "mig", "--device", "cpu"]) == 0
    capsys.readouterr()
    assert (run / "figures" / "swap_pose (yaw) é.png").is_file()
    assert sorted(p for p in tmp_path.rglob("*") if run not in p.parents and p != run) == outside


@pytest.mark.parametrize("name", ["../../outside", "/tmp/abs-sweep", ".hidden", "a/b"])
def test_a_sweep_name_cannot_leave_the_sweeps_folder(tmp_path, monkeypatch, capsys, name):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"name": name, "base": "base.yaml", "seeds": 1}))
    assert cli.main(["sweep", "plan", "s.yaml", "--no-check-data"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert "must be a plain name" in err and "--out" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.yaml", "s.yaml"]
    if name.startswith("/"):
        assert not Path(name).exists()


def test_a_tampered_sweep_manifest_cannot_point_outside(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"name": "s", "base": "base.yaml", "seeds": 1}))
    assert cli.main(["sweep", "plan", "s.yaml", "--out", "sw", "--no-check-data"]) == 0
    manifest = json.loads((tmp_path / "sw" / "manifest.json").read_text())
    manifest["runs"][0]["id"] = "../../escaped"
    (tmp_path / "sw" / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert cli.main(["sweep", "run", "sw", "--workers", "1"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert "is not a config hash" in err
    assert not (tmp_path / "escaped").exists() and not (tmp_path.parent / "escaped").exists()


def test_cli_run_dir_is_the_users_explicit_choice(tmp_path, capsys, monkeypatch):
    """--run-dir is a path the user types (absolute or relative, as any tool's output flag); the run
    writes only inside it. Default run directories are runs/<config file stem>, never a config value."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my cfg.yaml").write_text(yaml.safe_dump(BASE))
    assert cli.main(["train", "my cfg.yaml", "--quiet", "--no-tensorboard"]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my cfg.yaml", "runs"]
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["my cfg"]


def test_a_subprocess_never_unpickles_either(trained, tmp_path):
    """The refusal through the installed entry point, as a user's shell runs it."""
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    torch.save({"x": Payload(marker)}, run / "checkpoints" / "step-000000020.safetensors")
    r = subprocess.run(
        [sys.executable, "-m", "gatedvae", "evaluate", str(run), "--preset", "fast", "--device", "cpu", "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert r.returncode == 2 and "not a gatedvae checkpoint" in r.stderr and len(r.stderr.splitlines()) == 1
    assert not marker.exists()
