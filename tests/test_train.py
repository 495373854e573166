"""Trainer: run directory, exact resume after SIGKILL, NaN handling, fine-tuning, modes; one
trainer per run (the run's lock), the end-of-run line of a resumed run, progress in a log file."""

from __future__ import annotations

import io
import json
import os
import random
import re
import signal
import socket
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
from gatedvae.progress import LogLines
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
    # Stopped mid log interval (17 of 16-20): its running sums were checkpointed, so line 20 is too.
    assert (run / "metrics.jsonl").read_text() == (tmp_path / "full" / "metrics.jsonl").read_text()


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


# --------------------------------------------------------------------------- one trainer per run
HOLD = (
    "import sys, time\n"
    "from gatedvae import runlock\n"  # torch-free: starts in a fraction of a second
    "assert runlock.acquire(sys.argv[1], sys.argv[2]) is not None\n"
    "print('held', flush=True)\n"
    "time.sleep(300)\n"
)


def hold_lock(run: Path, doing: str = "training") -> subprocess.Popen:
    """A process that holds ``run``'s lock as a trainer does, until it is killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run), doing], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def _files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_a_second_trainer_is_refused_readers_say_the_run_is_training_and_a_killed_holder_does_not_block(
    tmp_path, capsys
):
    from gatedvae.cli import main
    from gatedvae.evaluation import evaluate_run

    run = tmp_path / "run"
    train(small_config(steps=40), run, quiet=True, tensorboard=False, stop_after=10)
    cfg_path = tmp_path / "cfg.yaml"
    save_config(small_config(steps=40), cfg_path)
    images = tmp_path / "x.npy"
    np.save(images, np.zeros((3, 32, 32), np.uint8))
    holder = hold_lock(run)
    try:
        before = _files(run)
        assert main(["train", "--resume", str(run), "--quiet", "--no-tensorboard"]) == 2
        err = capsys.readouterr().err
        assert re.fullmatch(
            rf"error: run {re.escape(str(run))} is being trained by pid {holder.pid} on "
            rf"{re.escape(socket.gethostname())} \(since \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d, at step 10 of 40\); "
            r"wait for it or stop it\n",
            err,
        ), err
        assert main(["train", str(cfg_path), "--run-dir", str(run), "--quiet"]) == 2  # a new run into it
        assert f"is being trained by pid {holder.pid}" in capsys.readouterr().err
        assert _files(run) == before  # metrics.jsonl, status, checkpoints untouched; nothing written
        # Readers work on a run in training, and say so and which step they read.
        assert main(["encode", str(run), str(images), "--out", str(tmp_path / "codes.npy")]) == 0
        note = (
            f"note: run {run} is still being trained (pid {holder.pid} on {socket.gethostname()}, "
            "at step 10 of 40); encoding its checkpoint of step 10"
        )
        assert capsys.readouterr().err.splitlines()[0] == note  # (then encode's activity warning, if any)
        evaluate_run(run, metrics="mig", preset="fast", progress=False, figures=False, device="cpu")
        assert capsys.readouterr().err.strip() == note.replace("encoding", "evaluating")
    finally:
        holder.kill()  # SIGKILL: its lock file stays, stale
        holder.wait()
    assert (run / ".lock").is_file()
    assert main(["train", "--resume", str(run), "--quiet", "--no-tensorboard"]) == 0
    assert "finished steps 10-40 (30 this session) in " in capsys.readouterr().out
    assert not (run / ".lock").exists()
    assert json.loads((run / "status.json").read_text())["status"] == "finished"


def test_a_run_stopped_before_its_end_is_encoded_with_a_note(tmp_path, capsys):
    from gatedvae.cli import main

    run = tmp_path / "run"
    train(small_config(steps=40), run, quiet=True, tensorboard=False, stop_after=20)
    (run / "status.json").write_text(json.dumps({"status": "stopped", "step": 20, "total_steps": 40}))
    np.save(tmp_path / "x.npy", np.zeros((2, 32, 32), np.uint8))
    assert main(["encode", str(run), str(tmp_path / "x.npy"), "--out", str(tmp_path / "c.csv")]) == 0
    cap = capsys.readouterr()
    assert cap.err.splitlines()[0] == (
        f"note: run {run} is unfinished (it was stopped at step 20 of 40; continue it with gatedvae train "
        f"--resume {run}); encoding its checkpoint of step 20"
    )
    assert "step 20" in cap.out


def test_the_lock_is_reentrant_in_a_thread_and_exclusive_across_threads(tmp_path):
    """A sweep holds the run's lock and calls train() on it in the same thread; another thread is refused."""
    import threading

    from gatedvae import runlock

    run = tmp_path / "r"
    run.mkdir()
    with runlock.locked(run, "sweep") as got:
        assert got and runlock.held_here(run) and not runlock.is_locked(run)
        inner = runlock.acquire(run)
        assert inner is not None
        inner.release()
        assert (run / ".lock").is_file()  # still held by the outer hold
        other: list = []
        t = threading.Thread(target=lambda: other.append((runlock.acquire(run), runlock.is_locked(run))))
        t.start()
        t.join()
        assert other == [(None, True)]
        assert "is being worked on by a sweep by pid" in runlock.busy_message(run)
    assert not (run / ".lock").exists() and not runlock.is_locked(run)


# --------------------------------------------------------------------------- progress in a log file
def test_progress_written_to_a_log_file_is_a_few_plain_lines(tmp_path, capsys):
    """stderr not a terminal (a file, a scheduler's log): no bar redraws, one line per ~10%."""
    from gatedvae.cli import main

    cfg_path = tmp_path / "cfg.yaml"
    save_config(small_config(steps=40), cfg_path)
    assert main(["train", str(cfg_path), "--run-dir", str(tmp_path / "run"), "--no-tensorboard"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    lines = err.strip().splitlines()
    assert 1 <= len(lines) <= 12, err
    assert lines[-1].startswith("run: 40/40 step (100%)") and "recon=" in lines[-1]


def test_log_lines_come_every_tenth_at_most_once_a_second_and_at_least_once_a_minute(monkeypatch):
    now = [0.0]
    monkeypatch.setattr("gatedvae.progress.time.monotonic", lambda: now[0])
    out = io.StringIO()
    bar = LogLines(total=1000, desc="job", unit="step", file=out)
    for _ in range(1000):  # 1000 steps in 100 s: ten lines, one per 100 steps
        now[0] += 0.1
        bar.update(1)
    bar.close()  # nothing new since the last line
    lines = out.getvalue().splitlines()
    assert len(lines) == 10 and lines[0].startswith("job: 100/1,000 step (10%) 10 s, 10 step/s")
    out = io.StringIO()
    bar = LogLines(total=10_000, desc="fast", file=out)
    for _ in range(10_000):  # all in 0.5 s: the one-second floor holds the tenths back
        now[0] += 0.00005
        bar.update(1)
    bar.close()
    assert len(out.getvalue().splitlines()) == 1  # the closing line only
    out = io.StringIO()
    bar = LogLines(total=10, desc="slow", file=out)
    for _ in range(3):  # one step in three minutes: a line a minute at least
        now[0] += 180
        bar.update(1)
    assert len(out.getvalue().splitlines()) == 3


def test_a_signal_asks_for_one_stop_and_the_same_signal_again_stops_at_once(monkeypatch):
    """First SIGINT: stop after the step. Its copy within half a second (torchrun forwards the
    terminal's Ctrl-C to workers that got it already): the same stop. Later: the previous handler
    runs (Ctrl-C twice stops at once). An ignored signal stays ignored; handlers are put back."""
    from gatedvae.train import loop

    now = [100.0]
    monkeypatch.setattr(loop.time, "monotonic", lambda: now[0])
    seen: list[int] = []
    original = signal.signal(signal.SIGINT, lambda s, f: seen.append(s))
    try:
        with loop._StopOnSignal() as stop:
            signal.raise_signal(signal.SIGINT)
            assert stop.signum == signal.SIGINT and seen == []
            now[0] += 0.1
            signal.raise_signal(signal.SIGINT)  # the forwarded copy
            assert seen == []
            now[0] += 1.0
            signal.raise_signal(signal.SIGINT)  # a second Ctrl-C: the previous handler, now
            assert seen == [signal.SIGINT]
        previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            with loop._StopOnSignal() as stop:
                signal.raise_signal(signal.SIGTERM)
                assert stop.signum is None  # ignored before: still ignored
        finally:
            signal.signal(signal.SIGTERM, previous)
    finally:
        signal.signal(signal.SIGINT, original)
