"""Trainer: run directory, exact resume after SIGKILL, NaN handling, fine-tuning, modes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_config
from gatedvae.config import Config, GatingConfig, PartitionConfig, save_config
from gatedvae.errors import GatedVAEError
from gatedvae.models.base import GenerativeModel
from gatedvae.train import TrainingDiverged, latest_checkpoint, train

PARTS = tiny_config().gating.partitions  # position (x, y), scale, orientation: 2 + 1 + 1 latents


def small_config(steps=40, gated=True, **train_kw) -> Config:
    return tiny_config(gated=gated, train={"steps": steps, **train_kw})


def final_tensors(run: Path) -> dict[str, torch.Tensor]:
    step, path = latest_checkpoint(run / "checkpoints")
    return load_file(str(path))


def test_run_directory_contents(tmp_path):
    run = tmp_path / "run"
    summary = train(small_config(image_every=20), run, quiet=True)
    assert summary["status"] == "finished" and summary["steps"] == 40 and summary["gated"]
    assert (run / "config.yaml").is_file() and (run / "summary.json").is_file()
    status = json.loads((run / "status.json").read_text())
    assert status == {"status": "finished", "step": 40, "total_steps": 40}
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [rec["step"] for rec in lines] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert {"recon", "kl", "total", "epoch"} <= set(lines[0])
    assert any((run / "tensorboard").iterdir())
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["step-000000030.safetensors", "step-000000040.safetensors"]  # keep_checkpoints=2


def test_same_seed_same_parameters_and_different_seed_differs(tmp_path):
    a = final_tensors(_trained(tmp_path / "a", small_config(steps=20)))
    b = final_tensors(_trained(tmp_path / "b", small_config(steps=20)))
    c = final_tensors(_trained(tmp_path / "c", small_config(steps=20, seed=1)))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if k.startswith("model/"))


def _trained(run: Path, cfg: Config) -> Path:
    train(cfg, run, quiet=True, tensorboard=False)
    return run


def test_resume_in_process_is_bitwise(tmp_path):
    cfg = small_config(steps=40)
    full = final_tensors(_trained(tmp_path / "full", cfg))
    run = tmp_path / "stopped"
    assert train(cfg, run, quiet=True, tensorboard=False, stop_after=17)["status"] == "stopped"
    train(None, run, resume=True, quiet=True, tensorboard=False)
    resumed = final_tensors(run)
    assert full.keys() == resumed.keys()
    for k in full:
        assert torch.equal(full[k], resumed[k]), k
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 40


def test_first_layer_moments_are_saved_in_linear_layout_and_restored_contiguous(tmp_path):
    """The MLP's first layer trains ``weight_t`` (in, out) so that fused Adam needs no layout copy;
    checkpoints keep nn.Linear's (out, in) for the weight and for its Adam moments (one format
    with runs saved before), and a restore gives the moments back in the parameter's layout."""
    from gatedvae.checkpoint import load_checkpoint
    from gatedvae.train import make_optimizers, prepare

    cfg = small_config(steps=10)
    run = _trained(tmp_path / "run", cfg)
    step, path = latest_checkpoint(run / "checkpoints")
    saved = load_file(str(path))
    prep = prepare(cfg)
    first = prep.model.encoder.trunk.layers[0][0]
    name = next(n for n, m in prep.model.named_modules() if m is first)
    w = saved[f"model/{name}.weight"]
    assert w.shape == (first.out_features, first.in_features)
    moments = {k: v for k, v in saved.items() if k.startswith("optim/main/state/0/exp_avg")}
    assert len(moments) == 2 and all(v.shape == w.shape and v.is_contiguous() for v in moments.values())
    opts = make_optimizers(prep.model, 1e-3, prep.device).all()
    load_checkpoint(path, prep.model, opts)
    st = opts["main"].state[first.weight_t]
    assert st["exp_avg"].shape == first.weight_t.shape and st["exp_avg"].is_contiguous()
    assert torch.equal(st["exp_avg"], saved["optim/main/state/0/exp_avg"].t())
    assert torch.equal(first.weight, w)


def test_conv_weights_are_channels_last_on_cpu_and_resume_is_bitwise(tmp_path):
    """The trainer keeps conv64's weights NHWC on the CPU; checkpoints hold them contiguous and a
    resumed run (weights and Adam moments restored into that layout) equals an uninterrupted one."""
    from gatedvae.train import prepare

    cfg = tiny_config(model={"net": "conv64", "hidden": 32}, train={"steps": 12})
    prep = prepare(cfg)
    convs = [m.weight for m in prep.model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert sum(not w.is_contiguous() for w in convs) >= 6  # all but the 1-channel ends, where the layouts coincide
    full = final_tensors(_trained(tmp_path / "full", cfg))
    assert all(t.is_contiguous() for t in full.values())
    run = tmp_path / "stopped"
    assert train(cfg, run, quiet=True, tensorboard=False, stop_after=7)["status"] == "stopped"
    train(None, run, resume=True, quiet=True, tensorboard=False)
    resumed = final_tensors(run)
    assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full)


def _cli(*args):
    return [sys.executable, "-m", "gatedvae", *args]


@pytest.mark.parametrize("trial", range(2))
def test_sigkill_at_a_random_moment_then_resume_is_bitwise(tmp_path, trial):
    total = 1500
    cfg = small_config(steps=total)
    cfg_path = tmp_path / "cfg.yaml"
    save_config(cfg, cfg_path)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ref = tmp_path / "ref"
    subprocess.run(
        _cli("train", str(cfg_path), "--run-dir", str(ref), "--quiet", "--no-tensorboard"),
        check=True,
        env=env,
        timeout=300,
    )
    run = tmp_path / "killed"
    proc = subprocess.Popen(_cli("train", str(cfg_path), "--run-dir", str(run), "--quiet", "--no-tensorboard"), env=env)
    rnd = random.Random(trial)
    target = rnd.randrange(10, total - 300)  # kill once the run has passed this step
    deadline = time.time() + 240
    step = -1
    while time.time() < deadline and proc.poll() is None:
        try:
            step = json.loads((run / "status.json").read_text())["step"]
        except (OSError, ValueError, KeyError):
            step = -1
        if step >= target:
            break
        time.sleep(0.005)
    time.sleep(rnd.uniform(0.0, 0.05))  # anywhere inside a step or a checkpoint write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "running" and status["step"] < total, status
    r = subprocess.run(
        _cli("train", "--resume", str(run), "--quiet", "--no-tensorboard"),
        env=env,
        timeout=300,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    a, b = final_tensors(ref), final_tensors(run)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_nan_stops_naming_step_and_term_and_keeps_checkpoint(tmp_path, monkeypatch):
    original = GenerativeModel.regulariser

    def poisoned(self, post, z, step, generator):
        terms = original(self, post, z, step, generator)
        if step == 23:
            terms["kl"] = terms["kl"] * float("nan")
        return terms

    monkeypatch.setattr(GenerativeModel, "regulariser", poisoned)
    run = tmp_path / "nan"
    with pytest.raises(
        TrainingDiverged, match=r"loss term 'kl' is nan at step 23; the last good checkpoint \(step 20\)"
    ) as exc:
        train(small_config(steps=40), run, quiet=True, tensorboard=False)
    assert "\n" not in str(exc.value)
    assert latest_checkpoint(run / "checkpoints")[0] == 20
    tensors = final_tensors(run)
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if v.is_floating_point())
    assert json.loads((run / "status.json").read_text())["status"] == "failed"


def test_run_directory_rules(tmp_path):
    run = tmp_path / "r"
    train(small_config(steps=10), run, quiet=True, tensorboard=False)
    with pytest.raises(GatedVAEError, match="already exists and is not empty"):
        train(small_config(steps=10), run, quiet=True)
    with pytest.raises(GatedVAEError, match="already finished at step 10"):
        train(None, run, resume=True, quiet=True)
    with pytest.raises(GatedVAEError, match="does not exist"):
        train(None, tmp_path / "missing", resume=True)
    (tmp_path / "foreign").mkdir()
    with pytest.raises(GatedVAEError, match="not a gatedvae run directory"):
        train(None, tmp_path / "foreign", resume=True)


def test_decoder_finetuning_freezes_the_encoder(tmp_path):
    run = tmp_path / "ft"
    cfg = small_config(steps=20, finetune_steps=10, keep_checkpoints=5)
    train(cfg, run, quiet=True, tensorboard=False)
    at20 = load_file(str(run / "checkpoints" / "step-000000020.safetensors"))
    at30 = load_file(str(run / "checkpoints" / "step-000000030.safetensors"))
    enc = [k for k in at20 if k.startswith("model/encoder.")]
    dec = [k for k in at20 if k.startswith("model/decoder.") and "running" not in k and "num_batches" not in k]
    assert enc and dec
    assert all(torch.equal(at20[k], at30[k]) for k in enc)  # parameters and batch-norm statistics
    assert any(not torch.equal(at20[k], at30[k]) for k in dec)
    phases = [json.loads(line)["phase"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert phases[-1] == "finetune" and phases[0] == "train"


@pytest.mark.parametrize(
    "gating",
    [
        GatingConfig(enabled=True, partitions=PARTS, schedule="random"),
        GatingConfig(enabled=True, partitions=PARTS, mode="clamp"),
        GatingConfig(enabled=True, partitions=PARTS, gate_kl=True),
        GatingConfig(
            enabled=True,
            partitions=(
                PartitionConfig(name="pos", size=2, factors=("x", "y"), sampler="cluster", clusters=20, noise=0.1),
                PartitionConfig(name="free", size=2, sampler="identity"),
            ),
        ),
    ],
    ids=["random", "dcign-clamp", "gate-kl", "cluster+free"],
)
def test_gating_modes_train(tmp_path, gating):
    cfg = tiny_config(gating=gating, train={"steps": 12})
    summary = train(cfg, tmp_path / "m", quiet=True, tensorboard=False)
    assert summary["status"] == "finished" and np.isfinite(summary["final"]["total"])


def test_conditional_vae_trains_on_factor_labels(tmp_path):
    cfg = tiny_config(gated=False, model={"name": "cvae", "condition": ["scale"]}, train={"steps": 10})
    assert train(cfg, tmp_path / "c", quiet=True, tensorboard=False)["status"] == "finished"


def test_partition_naming_missing_factor_is_a_clear_error(tmp_path):
    bad = GatingConfig(enabled=True, partitions=(PartitionConfig(name="shape", size=4, factors=("shape",)),))
    with pytest.raises(GatedVAEError, match="lacks; its factors are: x, y, scale, orientation"):
        train(tiny_config(gating=bad, train={"steps": 5}), tmp_path / "p", quiet=True)
    assert not (tmp_path / "p").exists() or not any((tmp_path / "p" / "checkpoints").glob("*"))


def test_evaluation_as_the_last_step_of_training(tmp_path):
    """train.evaluate is run by the callback gatedvae train attaches; the bare loop never evaluates."""
    from gatedvae.callbacks import standard_callbacks

    bare = tmp_path / "bare"
    summary = train(small_config(steps=10, evaluate="fast"), bare, quiet=True, tensorboard=False)
    assert "evaluation" not in summary and not (bare / "metrics.json").exists()
    run = tmp_path / "e"
    cfg = small_config(steps=10, evaluate="fast")
    summary = train(cfg, run, quiet=True, tensorboard=False, callbacks=standard_callbacks())
    doc = json.loads((run / "metrics.json").read_text())
    assert doc["preset"] == "fast" and doc["checkpoint_step"] == 10
    assert summary["evaluation"] == doc["headline"] and summary["evaluation"]
    assert json.loads((run / "summary.json").read_text())["evaluation"] == summary["evaluation"]


def test_callbacks_are_called_after_each_step_and_at_the_end(tmp_path):
    """on_step sees every step (counted from 1) before its checkpoint, on_end the finished run; a
    field a callback adds to the summary lands in summary.json. TensorBoard images come from the
    TensorBoardImages callback (every train.image_every steps and at the end)."""
    from gatedvae.callbacks import TensorBoardImages
    from gatedvae.train import Callback

    calls: list = []

    class Record(Callback):
        def on_step(self, run, step):
            calls.append((step, latest_checkpoint(run.run_dir / "checkpoints")))

        def on_end(self, run, summary):
            status = json.loads((run.run_dir / "status.json").read_text())["status"]
            calls.append(("end", status, run.prep.model.training))
            summary["note"] = "seen"

    run = tmp_path / "run"
    summary = train(small_config(steps=20, image_every=10), run, quiet=True, callbacks=[Record(), TensorBoardImages()])
    assert [c[0] for c in calls[:-1]] == list(range(1, 21))
    assert calls[10][1][0] == 10  # step 11 sees checkpoint 10; step 10 saw none yet
    assert calls[9][1] is None
    assert calls[-1] == ("end", "finished", False)
    assert summary["note"] == "seen" == json.loads((run / "summary.json").read_text())["note"]
    events = b"".join(p.read_bytes() for p in (run / "tensorboard").iterdir())
    assert b"reconstructions" in events and b"traversals" in events and b"loss/recon" in events
    bare = tmp_path / "bare"
    train(small_config(steps=20, image_every=10), bare, quiet=True)
    events = b"".join(p.read_bytes() for p in (bare / "tensorboard").iterdir())
    assert b"loss/recon" in events and b"reconstructions" not in events
