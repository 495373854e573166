"""Evaluation's device (``gatedvae evaluate --device``) and its one copy of the run: a run trained
on a GPU evaluates on a CPU-only machine; the evaluation at the end of training reuses the
trainer's dataset and model instead of building them again."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from conftest import tiny_config
from gatedvae import run as run_module
from gatedvae.callbacks import standard_callbacks
from gatedvae.cli import main
from gatedvae.errors import ConfigError
from gatedvae.evaluation import evaluate_run, evaluation_device
from gatedvae.train import train


@pytest.fixture(scope="module")
def at_end(tmp_path_factory):
    """A run trained with ``train.evaluate=fast`` (evaluated when training ends), counting how
    often a dataset and a model are built (figures left out: not what is tested, and slow)."""
    from gatedvae.evaluation import runs

    built = {"dataset": 0, "model": 0}

    def counting(name, original):
        def wrapper(*args, **kwargs):
            built[name] += 1
            return original(*args, **kwargs)

        return wrapper

    run = tmp_path_factory.mktemp("evaldev") / "run"
    cfg = tiny_config(train={"steps": 20, "evaluate": "fast"}, gated=False, data={"holdout": 0.1})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run_module, "build_dataset", counting("dataset", run_module.build_dataset))
        mp.setattr(run_module, "build_model", counting("model", run_module.build_model))
        mp.setattr(runs, "write_figures", lambda *a, **k: [])
        summary = train(cfg, run, quiet=True, tensorboard=False, callbacks=standard_callbacks())
    return run, built, summary


def test_auto_is_the_cpu_without_cuda_and_a_missing_device_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU-only machine, also on a GPU one
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert evaluation_device("auto") == evaluation_device(None) == torch.device("cpu")
    assert evaluation_device("CPU") == torch.device("cpu")
    for name, message in (
        ("cuda", "--device cuda but CUDA is not available here; use --device auto or cpu"),
        ("cuda:1", "--device cuda:1 but CUDA is not available here"),
        ("banana", "--device 'banana' is not a device; use auto, cpu, cuda or cuda:N"),
        ("meta", "--device meta: only cpu and cuda are supported; use auto, cpu, cuda or cuda:N"),
    ):
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("'", "'")) as info:
            evaluation_device(name)
        assert "\n" not in str(info.value)


def test_cuda_devices_are_checked_against_the_ones_present(monkeypatch):
    """The CUDA branch, forced on the CPU: two visible devices."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert evaluation_device("auto") == torch.device("cuda")
    assert evaluation_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match=r"--device cuda:2 but this machine has 2 CUDA devices \(cuda:0..cuda:1\)"):
        evaluation_device("cuda:2")


def test_a_run_trained_on_cuda_evaluates_here(at_end, tmp_path, capsys, monkeypatch):
    """Its config says train.device=cuda (as a GPU-trained run's does); this machine has no GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU-only machine, also on a GPU one
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    trained = at_end[0]
    run = tmp_path / "gpu_run"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("config.yaml", "status.json", "metrics.jsonl"):
        (run / name).write_bytes((trained / name).read_bytes())
    for ckpt in (trained / "checkpoints").iterdir():
        (run / "checkpoints" / ckpt.name).write_bytes(ckpt.read_bytes())
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["train"]["device"] = "cuda"
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))

    assert main(["evaluate", str(run), "--device", "cuda", "--metrics", "mig", "--preset", "fast", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --device cuda but CUDA is not available here; use --device auto or cpu\n"
    assert not (run / "metrics.json").exists() and not (run / "figures").exists()  # refused before any work

    # Before: "train.device=cuda but CUDA is not available here" (the run's training device was used).
    doc = evaluate_run(run, metrics="mig,dci_lasso", preset="fast", progress=False, figures=False)  # device auto
    assert doc["device"] == "cpu" and doc["checkpoint_step"] == 20
    assert json.loads((run / "metrics.json").read_text())["device"] == "cpu"
    here = json.loads((trained / "metrics.json").read_text())["headline"]
    assert doc["headline"] == {k: v for k, v in here.items() if k.split(".")[0] in ("mig", "dci_lasso")}


def test_evaluation_at_the_end_of_training_builds_the_run_once(at_end):
    """One dataset and one model: the trainer's, evaluated in place; the scores equal those of a
    later ``gatedvae evaluate`` (which loads the checkpoint into a fresh model)."""
    run, built, summary = at_end
    assert built == {"dataset": 1, "model": 1}, built  # before: 2 and 2 (the evaluation rebuilt both)
    first = json.loads((run / "metrics.json").read_text())
    assert first["device"] == "cpu" and summary["evaluation"] == first["headline"]
    later = evaluate_run(
        run, metrics="dci_lasso,mig,reconstruction", preset="fast", seed=0, progress=False, figures=False, device="cpu"
    )
    assert later["headline"] == {k: v for k, v in first["headline"].items() if k.split(".")[0] in later["results"]}
    assert later["results"]["reconstruction"]["scores"]["source"].startswith("held-out")  # data.holdout's images
