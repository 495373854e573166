"""Data-parallel training (train/distributed.py) with 2 gloo processes on the CPU.

The contract under test: N processes on a global batch of B train the run one process trains
on B, up to float rounding. One ``torch.multiprocessing.spawn`` of 2 processes runs several
scenarios in sequence (a process start costs seconds), and one ``torchrun`` subprocess runs
the real command line. The single-process references are trained in the test process.

Every run here sets ``train.device=cpu`` (gloo), whatever GPUs the machine has: on one GPU a
second process would find no ``cuda:1``, on two it would get NCCL. NCCL has its own test, which
runs where two GPUs are (``gpu`` marker).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

import conftest
from gatedvae.config import Config, save_config
from gatedvae.train import distributed, latest_checkpoint, train

WORLD = 2


#: The collectives' timeout in the spawned processes: long enough for any scenario, short enough
#: that a process left waiting by its peer fails the test in bounded time.
TIMEOUT = timedelta(seconds=90)


def tiny_config(steps: int = 30, model: str = "beta_vae", batch_size: int = 16, **train_kw) -> Config:
    """A gated beta-VAE with the paper's MLP (batch norm in every hidden layer) on 400 ellipses, on the CPU."""
    train_kw = {"device": "cpu", **train_kw}
    return conftest.tiny_config(
        model={"name": model},
        train={"steps": steps, "batch_size": batch_size, "checkpoint_every": 10, "threads": 1, **train_kw},
    )


def final(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(latest_checkpoint(run / "checkpoints")[1]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def freeze_biases_feeding_batch_norm(model: torch.nn.Module) -> torch.nn.Module:
    """Freeze each Linear bias that a batch norm follows: the equivalence check's one adjustment.

    Batch norm subtracts the batch mean, so such a bias has a gradient of exactly zero in exact
    arithmetic; in floats it is rounding noise (~1e-9) that Adam divides by its own square root,
    turning it into steps of about +-lr whose signs depend on the summation order. Any two
    summation orders (one process or two, or another BLAS) then disagree on these biases and on
    the running means that track them, by O(lr * steps), although the function trained is the
    same. Freezing them (a zero gradient, so Adam leaves them at their initial values, in
    both runs) removes that noise and lets every tensor be compared tightly.
    """
    for seq in model.modules():
        if isinstance(seq, torch.nn.Sequential):
            mods = list(seq)
            for a, b in zip(mods, mods[1:], strict=False):  # consecutive pairs
                if (
                    isinstance(a, torch.nn.Linear)
                    and isinstance(b, torch.nn.modules.batchnorm._BatchNorm)
                    and a.bias is not None
                ):
                    a.bias.register_hook(torch.zeros_like)  # (requires_grad would be reset by the trainer)
    return model


def _frozen_build_model(module):
    original = module.build_model

    def build(*args, **kwargs):
        return freeze_biases_feeding_batch_norm(original(*args, **kwargs))

    return build, original


# ----------------------------------------------------------------------------- the workers
def _poison_kl_on_rank(rank: int, at_step: int):
    """Make the KL term NaN at one step, in one process only (its slice of the data, say)."""
    from gatedvae.models.base import GenerativeModel

    original = GenerativeModel.regulariser

    def poisoned(self, post, z, step, generator):
        terms = original(self, post, z, step, generator)
        if step == at_step and distributed.launched_world()[1] == rank:
            terms["kl"] = terms["kl"] * float("nan")
        return terms

    GenerativeModel.regulariser = poisoned
    return lambda: setattr(GenerativeModel, "regulariser", original)


def _sync_batchnorm(rank: int, out: Path) -> dict:
    """Each process normalises its half of one global batch; the test compares with one process."""
    results = {}
    for dims in ((16, 6), (16, 3, 4, 4)):
        bn = torch.nn.BatchNorm1d(dims[1]) if len(dims) == 2 else torch.nn.BatchNorm2d(dims[1])
        distributed.convert_sync_batchnorm(bn)
        g = torch.Generator().manual_seed(3)
        with torch.no_grad():
            bn.weight.copy_(torch.rand(dims[1], generator=g) + 0.5)
            bn.bias.copy_(torch.randn(dims[1], generator=g))
        x_all = torch.randn(dims, generator=g) * 3 + 1  # (16, C, ...)
        c_all = torch.randn(dims, generator=g)  # fixed cotangent: loss = sum(y * c)
        rows = slice(rank * 8, rank * 8 + 8)
        x = x_all[rows].clone().requires_grad_(True)
        y = bn(x)
        (y * c_all[rows]).sum().backward()
        wgrad = torch.cat([bn.weight.grad, bn.bias.grad])
        torch.distributed.all_reduce(wgrad)  # the sum over processes = the gradient of the global sum
        tag = "bn1d" if len(dims) == 2 else "bn2d"
        save_file(
            {
                "y": y.detach(),
                "xgrad": x.grad,
                "wgrad": wgrad,
                "running_mean": bn.running_mean,
                "running_var": bn.running_var,
            },
            str(out / f"{tag}_rank{rank}.safetensors"),
        )
        results[tag] = True
    return results


def _io_failures(rank: int, out_p: Path, report: dict, device: str = "cpu") -> None:
    """Rank 0 cannot write: its checkpoint of step 20 (a full disk), then a callback's file at step
    12 (a lost permission; the next log step is 15). Every process must stop with rank 0's error,
    promptly, not wait in its next collective for the backend's timeout."""
    from gatedvae.train import Callback, loop

    original_save = loop.save_checkpoint

    def full_disk(path, *args, **kwargs):
        if Path(path).name == "step-000000020.safetensors":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return original_save(path, *args, **kwargs)

    class ImagesAtStep12(Callback):
        def on_step(self, run, step):
            if step == 12:
                raise PermissionError(errno.EACCES, "Permission denied", str(run.run_dir / "tensorboard" / "x"))

    for name, hooks in (("full_disk", []), ("callback", [ImagesAtStep12()])):
        if rank == 0 and name == "full_disk":
            loop.save_checkpoint = full_disk
        t0 = time.perf_counter()
        try:
            cfg = tiny_config(40, log_every=5, device=device)
            train(cfg, out_p / name, quiet=True, tensorboard=False, callbacks=hooks)
            report[name] = {"error": "no error"}
        except Exception as exc:  # noqa: BLE001 - recorded for the test to compare across processes
            report[name] = {"type": type(exc).__name__, "error": str(exc), "errno": getattr(exc, "errno", None)}
        finally:
            loop.save_checkpoint = original_save
        report[name]["seconds"] = time.perf_counter() - t0


def _worker(rank: int, port: int, out: str) -> None:
    out_p = Path(out)
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD), RANK=str(rank), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    # The group train() joins (it uses one that exists as it is), with a bounded timeout.
    torch.distributed.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=TIMEOUT)
    from gatedvae import run as run_module
    from gatedvae.errors import ConfigError
    from gatedvae.train import TrainingDiverged, loop

    writes: list[str] = []

    def audit(event: str, args: tuple) -> None:  # every file this process creates, changes or removes
        if (
            event == "open"
            and isinstance(args[0], (str, bytes, os.PathLike))
            and args[1]
            and any(m in str(args[1]) for m in "wax+")
        ):
            writes.append(os.fsdecode(args[0]))
        elif event in ("os.rename", "os.mkdir", "os.remove", "os.rmdir", "os.truncate") and isinstance(
            args[0], (str, bytes, os.PathLike)
        ):
            writes.append(os.fsdecode(args[0]))
            if event == "os.rename":
                writes.append(os.fsdecode(args[1]))

    sys.addaudithook(audit)
    report: dict = {}

    # 1. A gated beta-VAE with batch norm, 30 steps, TensorBoard on (train() joins the group from the environment).
    report["summary"] = train(tiny_config(30), out_p / "ddp", quiet=True)

    # 1b. The same with the biases that feed a batch norm frozen, for the comparison with one process.
    run_module.build_model, original_build = _frozen_build_model(run_module)
    try:
        train(tiny_config(30), out_p / "equiv", quiet=True, tensorboard=False)
    finally:
        run_module.build_model = original_build

    # 2. Stopped at step 13 and resumed.
    train(tiny_config(30), out_p / "stopped", quiet=True, tensorboard=False, stop_after=13)
    train(None, out_p / "stopped", resume=True, quiet=True, tensorboard=False)
    report["writes"] = [w for w in writes if w.startswith(out)]

    # 3. FactorVAE: a second optimiser (the discriminator) stepped inside the model.
    captured = []
    original_prepare = loop.prepare
    loop.prepare = lambda *a, **k: captured.append(original_prepare(*a, **k)) or captured[-1]
    try:
        train(tiny_config(10, model="factor_vae"), out_p / "fvae", quiet=True, tensorboard=False)
    finally:
        loop.prepare = original_prepare
    save_file(
        {k: v.contiguous() for k, v in captured[0].model.state_dict().items()},
        str(out_p / f"fvae_rank{rank}.safetensors"),
    )

    # 4. NaN in one process only, checked every step (the CPU path) and deferred (the CUDA path).
    for name, devices in (("nan", ("cpu",)), ("nan_deferred", ())):
        restore = _poison_kl_on_rank(1, 23)
        loop.PER_STEP_CHECK_DEVICES = devices
        try:
            train(tiny_config(40, log_every=7, checkpoint_every=10), out_p / name, quiet=True, tensorboard=False)
            report[name] = "no error"
        except TrainingDiverged as exc:
            report[name] = str(exc)
        finally:
            loop.PER_STEP_CHECK_DEVICES = ("cpu",)
            restore()

    # 5. A global batch that 2 processes cannot split.
    try:
        train(tiny_config(5, batch_size=15), out_p / "odd", quiet=True)
        report["odd"] = "no error"
    except ConfigError as exc:
        report["odd"] = str(exc)

    # 6. Synchronised batch norm on its own.
    report.update(_sync_batchnorm(rank, out_p))

    # 7. Rank 0 fails to write (last: before the fix, rank 1 was left waiting).
    _io_failures(rank, out_p, report)
    (out_p / f"report_rank{rank}.json").write_text(json.dumps(report))


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    reports = [json.loads((out / f"report_rank{r}.json").read_text()) for r in range(WORLD)]
    return out, reports


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The single-process reference: the same config, the whole global batch in one process."""
    out = tmp_path_factory.mktemp("single")
    torch.set_num_threads(1)
    from gatedvae import run as run_module

    with pytest.MonkeyPatch.context() as mp_:
        mp_.setattr(run_module, "build_model", _frozen_build_model(run_module)[0])
        train(tiny_config(30), out / "run", quiet=True, tensorboard=False)
    return out / "run"


# ----------------------------------------------------------------------------- the tests
def assert_same_training(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-5) -> None:
    model_keys = [k for k in a if k.startswith("model/")]
    assert model_keys and set(a) == set(b)
    for k in model_keys:
        if a[k].is_floating_point():
            assert torch.allclose(a[k], b[k], rtol=1e-4, atol=atol), (k, (a[k] - b[k]).abs().max().item())
        else:
            assert torch.equal(a[k], b[k]), k


def test_two_processes_train_like_one_on_the_global_batch(spawned, single):
    out, _ = spawned
    ddp, one = final(out / "equiv"), final(single)
    assert_same_training(ddp, one)
    # The optimiser moments (to rounding relative to each tensor's scale) and the generator too.
    for k in ddp:
        if k.startswith("optim/"):
            assert (ddp[k] - one[k]).abs().max() <= 1e-4 * one[k].abs().max(), k
    assert torch.equal(ddp["rng/torch"], one["rng/torch"])
    logged = [json.loads(line) for line in (out / "equiv" / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(line) for line in (single / "metrics.jsonl").read_text().splitlines()]
    assert (
        [rec["step"] for rec in logged] == [rec["step"] for rec in ref] == [5, 10, 15, 20, 25, 30]
    )  # one line per log step
    for a, b in zip(logged, ref, strict=True):
        for term in ("recon", "kl", "total"):
            assert a[term] == pytest.approx(b[term], rel=1e-4), (a["step"], term)


def test_batch_norm_statistics_and_gradients_are_those_of_the_global_batch(spawned):
    out, _ = spawned
    for tag, cls in (("bn1d", torch.nn.BatchNorm1d), ("bn2d", torch.nn.BatchNorm2d)):
        parts = [load_file(str(out / f"{tag}_rank{r}.safetensors")) for r in range(WORLD)]
        c = parts[0]["running_mean"].shape[0]
        dims = (16, 6) if tag == "bn1d" else (16, 3, 4, 4)
        bn = cls(c)
        g = torch.Generator().manual_seed(3)
        with torch.no_grad():
            bn.weight.copy_(torch.rand(c, generator=g) + 0.5)
            bn.bias.copy_(torch.randn(c, generator=g))
        x = (torch.randn(dims, generator=g) * 3 + 1).requires_grad_(True)
        cot = torch.randn(dims, generator=g)
        y = bn(x)
        (y * cot).sum().backward()
        torch.testing.assert_close(torch.cat([p["y"] for p in parts]), y.detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(torch.cat([p["xgrad"] for p in parts]), x.grad, rtol=1e-4, atol=1e-5)
        for p in parts:
            torch.testing.assert_close(p["wgrad"], torch.cat([bn.weight.grad, bn.bias.grad]), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(p["running_mean"], bn.running_mean, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(p["running_var"], bn.running_var, rtol=1e-5, atol=1e-6)


def test_only_rank_zero_writes_the_run_directory(spawned):
    out, reports = spawned
    assert reports[1]["writes"] == []
    ours = reports[0]["writes"]
    for written in (
        "ddp/config.yaml",
        "ddp/status.json",
        "ddp/metrics.jsonl",
        "ddp/checkpoints/step-000000030.safetensors",
        "ddp/summary.json",
        "ddp/tensorboard",
        "stopped/checkpoints/step-000000013.safetensors",
    ):
        assert str(out / written) in ours, written
    run = out / "ddp"
    assert {p.name for p in run.iterdir()} >= {
        "config.yaml",
        "status.json",
        "metrics.jsonl",
        "summary.json",
        "checkpoints",
        "tensorboard",
    }
    assert json.loads((run / "status.json").read_text()) == {"status": "finished", "step": 30, "total_steps": 30}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["backend"] == "gloo"
    assert reports[0]["summary"]["final"]["step"] == 30 and reports[1]["summary"]["final"] == {}


def test_resume_of_a_data_parallel_run_is_bitwise(spawned):
    out, _ = spawned
    a, b = final(out / "ddp"), final(out / "stopped")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_second_optimiser_keeps_the_replicas_identical(spawned):
    out, _ = spawned
    r0, r1 = (load_file(str(out / f"fvae_rank{r}.safetensors")) for r in range(WORLD))
    assert any(k.startswith("discriminator.") for k in r0)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k  # each process saw different data: only averaging keeps them equal
    saved = final(out / "fvae")
    for k in r0:
        assert torch.equal(saved[f"model/{k}"], r0[k]), k


@pytest.mark.parametrize("name", ["nan", "nan_deferred"])
def test_nan_in_one_process_stops_all_at_that_step(spawned, name):
    out, reports = spawned
    msgs = [r[name] for r in reports]
    assert msgs[0] == msgs[1], msgs
    assert "loss term 'kl' is nan at step 23; the last good checkpoint (step 20) is kept" in msgs[0]
    assert latest_checkpoint(out / name / "checkpoints")[0] == 20
    tensors = final(out / name)
    assert all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point())
    assert json.loads((out / name / "status.json").read_text())["status"] == "failed"


def test_a_batch_that_does_not_split_is_a_one_line_error(spawned):
    out, reports = spawned
    for r in reports:
        assert "train.batch_size=15 (the global batch) does not split evenly over 2 processes" in r["odd"]
        assert "\n" not in r["odd"]
    assert not (out / "odd").exists()


def _assert_io_failures_stop_every_process(out: Path, reports: list[dict]) -> None:
    full = [r["full_disk"] for r in reports]
    path = out / "full_disk" / "checkpoints" / "step-000000020.safetensors"
    for r in full:  # the same error on every process (the command line prints the same one line)
        assert r["type"] == "OSError" and r["errno"] == errno.ENOSPC, full
        assert r["error"] == f"[Errno {errno.ENOSPC}] No space left on device: '{path}'", full
        assert r["seconds"] < TIMEOUT.total_seconds() / 3, full  # promptly, not at the collectives' timeout
    assert latest_checkpoint(out / "full_disk" / "checkpoints")[0] == 10
    hook = [r["callback"] for r in reports]
    for r in hook:
        assert r["type"] == "PermissionError" and r["errno"] == errno.EACCES, hook
        assert r["error"] == f"[Errno {errno.EACCES}] Permission denied: '{out / 'callback' / 'tensorboard' / 'x'}'"
        assert r["seconds"] < TIMEOUT.total_seconds() / 3, hook
    # raised at the next log step (15), before the checkpoint of step 20
    assert latest_checkpoint(out / "callback" / "checkpoints")[0] == 10
    assert [json.loads(line)["step"] for line in (out / "callback" / "metrics.jsonl").read_text().splitlines()] == [
        5,
        10,
        15,
    ]


def test_a_write_failure_on_rank_zero_stops_every_process_at_once(spawned):
    out, reports = spawned
    _assert_io_failures_stop_every_process(out, reports)


def test_the_other_processes_raise_the_failed_ones_error():
    """What crosses between the processes: an OSError becomes the same OSError (its subclass, errno,
    text and file), any other error one line naming the process that failed."""
    from gatedvae.errors import GatedVAEError

    rebuilt = distributed._rebuild(distributed._describe(PermissionError(errno.EACCES, "Permission denied", "/r/x")), 0)
    assert type(rebuilt) is PermissionError and str(rebuilt) == "[Errno 13] Permission denied: '/r/x'"
    rebuilt = distributed._rebuild(distributed._describe(GatedVAEError("run 'r' is busy")), 0)
    assert isinstance(rebuilt, distributed.RankFailed) and str(rebuilt) == "run 'r' is busy" and rebuilt.exit_code == 2
    rebuilt = distributed._rebuild(distributed._describe(ValueError("bad\n value")), 1)
    assert str(rebuilt) == "rank 1 failed: ValueError: bad value"
    ctx = distributed.Context(torch.device("cpu"))  # one process: the block as it is
    with pytest.raises(OSError, match="No space"), ctx.main_io():
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(KeyError), ctx.defer_errors():
        raise KeyError("raised at once")


def _nccl_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD), RANK=str(rank), LOCAL_RANK=str(rank)
    )
    out_p = Path(out)
    report: dict = {"summary": train(tiny_config(20, device="cuda"), out_p / "nccl", quiet=True, tensorboard=False)}
    _io_failures(rank, out_p, report, device="cuda")
    (out_p / f"report_rank{rank}.json").write_text(json.dumps(report, default=str))


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs (NCCL between two processes)")
def test_nccl_trains_and_a_write_failure_stops_every_process(tmp_path):
    """torchrun's two processes on two GPUs: NCCL, one process per GPU; rank 0's write failures
    stop both at once (NCCL would otherwise wait 10 minutes in the next collective)."""
    mp.spawn(_nccl_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    reports = [json.loads((tmp_path / f"report_rank{r}.json").read_text()) for r in range(WORLD)]
    summary = reports[0]["summary"]
    assert summary["backend"] == "nccl" and summary["world_size"] == 2 and summary["steps"] == 20
    assert json.loads((tmp_path / "nccl" / "status.json").read_text())["status"] == "finished"
    _assert_io_failures_stop_every_process(tmp_path, reports)


def test_sharded_draws_are_rows_of_the_global_draw():
    """Without any process group: the mode itself, for each way the models draw."""
    for world in (2, 4):
        ref = torch.Generator().manual_seed(5)
        want_n = torch.randn((8 * world, 3), generator=ref)
        want_u = torch.rand(torch.Size([8 * world, 2]), generator=ref)
        want_i = torch.randint(0, 10, (8 * world,), generator=ref)
        state = ref.get_state()
        for rank in range(world):
            g = torch.Generator().manual_seed(5)
            with distributed.ShardedDraws(g, rank, world):
                n = torch.randn((8, 3), generator=g)
                u = torch.rand(torch.Size([8, 2]), generator=g)
                i = torch.randint(0, 10, (8,), generator=g)
                other = torch.randn(8, 3)  # no generator: untouched
            rows = slice(rank * 8, rank * 8 + 8)
            assert torch.equal(n, want_n[rows]) and torch.equal(u, want_u[rows]) and torch.equal(i, want_i[rows])
            assert other.shape == (8, 3)
            assert torch.equal(g.get_state(), state)  # every process advances its generator identically


@pytest.mark.skipif(
    shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
    reason="torchrun is not installed",
)
def test_torchrun_command_line(tmp_path, spawned):
    cfg = tmp_path / "cfg.yaml"
    save_config(tiny_config(30), cfg)
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [
        str(torchrun) if torchrun.exists() else "torchrun",
        "--standalone",
        "--nproc_per_node",
        str(WORLD),
        "-m",
        "gatedvae",
        "train",
        str(cfg),
        "--run-dir",
        str(tmp_path / "run"),
        "--quiet",
        "--no-tensorboard",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("finished 30 steps") == 1, r.stdout  # rank 0 reports, rank 1 is silent
    # The same arithmetic as the spawned processes: the same numbers.
    a, b = final(tmp_path / "run"), final(spawned[0] / "ddp")
    for k in a:
        assert torch.equal(a[k], b[k]), k
