"""``train.precision``, the CUDA device settings and their record, resume and reading across devices.

Everything here runs on the CPU: bf16 autocast is real there; fp16 (CUDA-only) runs with its
refusal lifted, to test the gradient scaler's checkpointing; the CUDA branch of
``configure_device`` runs with a faked device name and capability (the flags it sets are
process-wide and exist on a CPU build too). The GPU itself: tests marked ``gpu`` elsewhere and
``scripts/gpu_check.sh``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from conftest import tiny_config
from gatedvae.checkpoint import CheckpointError, checkpoint_device, load_checkpoint, read_header
from gatedvae.errors import ConfigError, GatedVAEError
from gatedvae.nets.norm import _moments, use_statistics
from gatedvae.run import load_model, load_trained
from gatedvae.train import device as device_mod
from gatedvae.train import ensemble as ensemble_mod
from gatedvae.train import latest_checkpoint, train
from gatedvae.train import loop as loop_mod
from gatedvae.train.device import configure_device, device_settings
from gatedvae.train.loop import ResumeDeviceError
from gatedvae.train.step import Precision, check_precision, precision_context


def _train(run: Path, **dotted):
    return train(tiny_config(dotted), run, quiet=True, tensorboard=False)


def _tensors(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(latest_checkpoint(run / "checkpoints")[1]))


def _rewrite_checkpoint(path: Path, header_change=None, tensor_change=None) -> None:
    """Rewrite a checkpoint with its JSON header and/or tensors changed (as another machine wrote it)."""
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    tensors = load_file(str(path))
    header = json.loads(meta["header"])
    if header_change:
        header_change(header)
    if tensor_change:
        tensor_change(tensors)
    meta["header"] = json.dumps(header)
    save_file(tensors, str(path), metadata=meta)


# --------------------------------------------------------------------------- what each device can do
@pytest.mark.parametrize("precision", ["tf32", "fp16"])
def test_a_cuda_only_precision_on_the_cpu_is_refused_in_one_line_before_anything_is_written(tmp_path, precision):
    with pytest.raises(ConfigError, match=f"train.precision={precision} needs a CUDA device") as exc:
        _train(tmp_path / "run", **{"train.precision": precision})
    assert "\n" not in str(exc.value) and "use train.precision=bf16 or fp32" in str(exc.value)
    assert not (tmp_path / "run").exists()
    check_precision("bf16", torch.device("cpu"))  # bf16 and fp32 run on the CPU
    check_precision("fp32", torch.device("cpu"))


def test_bf16_and_tf32_need_an_ampere_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Tesla T4")
    for precision in ("bf16", "tf32"):
        with pytest.raises(ConfigError, match="needs an Ampere or newer GPU.*Tesla T4.*7.5"):
            check_precision(precision, torch.device("cuda:0"))
    check_precision("fp16", torch.device("cuda:0"))


def test_precision_context_is_autocast_for_the_mixed_precisions_only():
    assert not isinstance(precision_context("fp32", torch.device("cpu")), torch.autocast)
    assert not isinstance(precision_context("tf32", torch.device("cuda")), torch.autocast)
    with precision_context("bf16", torch.device("cpu")):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


# --------------------------------------------------------------------------- bf16 on the CPU
def test_bf16_runs_the_networks_in_bfloat16_and_the_losses_in_float32(tmp_path, monkeypatch):
    seen: dict[str, set] = {"linear": set(), "recon_input": set()}
    forward = nn.Linear.forward

    def linear(self, x):
        out = forward(self, x)
        seen["linear"].add(out.dtype)
        return out

    monkeypatch.setattr(nn.Linear, "forward", linear)
    from gatedvae.models import base

    reconstruction = base.GenerativeModel.reconstruction

    def recon(self, out, target):
        seen["recon_input"].add((out.dtype, torch.is_autocast_enabled("cpu")))
        return reconstruction(self, out, target)

    monkeypatch.setattr(base.GenerativeModel, "reconstruction", recon)
    summary = _train(tmp_path / "run", **{"train.precision": "bf16", "train.steps": 10})
    assert seen["linear"] == {torch.bfloat16}  # every layer of the networks under autocast
    assert seen["recon_input"] == {(torch.float32, False)}  # the loss: float32 logits, autocast off
    assert summary["precision"] == "bf16" and summary["environment"]["precision"] == "bf16"
    assert "precision: bf16" in (tmp_path / "run" / "config.yaml").read_text()
    assert all(isinstance(v, float) and v == v for k, v in summary["final"].items() if k in ("recon", "kl"))


def test_bf16_resumes_bitwise(tmp_path):
    cfg = tiny_config({"train.precision": "bf16", "train.steps": 16})
    train(cfg, tmp_path / "full", quiet=True, tensorboard=False)
    assert train(cfg, tmp_path / "r", quiet=True, tensorboard=False, stop_after=7)["status"] == "stopped"
    train(None, tmp_path / "r", resume=True, quiet=True, tensorboard=False)
    full, resumed = _tensors(tmp_path / "full"), _tensors(tmp_path / "r")
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_fp16_checkpoints_the_gradient_scaler_and_resumes_bitwise(tmp_path, monkeypatch):
    """fp16 is CUDA-only; with its refusal lifted it runs on the CPU (autocast float16, a CPU
    GradScaler), which is enough to test that the scaler's state is checkpointed and restored."""
    for mod in (loop_mod, device_mod):
        monkeypatch.setattr(mod, "check_precision", lambda precision, device: None)
    cfg = tiny_config({"train.precision": "fp16", "train.steps": 16})
    train(cfg, tmp_path / "full", quiet=True, tensorboard=False)
    assert train(cfg, tmp_path / "r", quiet=True, tensorboard=False, stop_after=9)["status"] == "stopped"
    scaler = read_header(latest_checkpoint(tmp_path / "r" / "checkpoints")[1])["grad_scaler"]
    assert scaler["scale"] < 65536.0  # backed off from the initial scale: it is state worth keeping
    train(None, tmp_path / "r", resume=True, quiet=True, tensorboard=False)
    full, resumed = _tensors(tmp_path / "full"), _tensors(tmp_path / "r")
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    assert (
        read_header(latest_checkpoint(tmp_path / "r" / "checkpoints")[1])["grad_scaler"]
        == read_header(latest_checkpoint(tmp_path / "full" / "checkpoints")[1])["grad_scaler"]
    )


def test_network_outputs_come_back_as_float32_and_fp32_attaches_nothing():
    from gatedvae.nets.heads import Posterior

    class Net(nn.Module):
        def forward(self, x):
            h = x @ torch.ones(3, 2)  # (B, 2) bfloat16 under autocast
            return Posterior(h, h), [h], {"h": h}

    model = nn.Sequential()
    model.add_module("net", Net())
    prec = Precision("bf16", "cpu")
    with prec.networks(model):
        post, listed, mapped = model.net(torch.ones(4, 3))
    assert post.mu.dtype == post.logvar.dtype == listed[0].dtype == mapped["h"].dtype == torch.float32
    assert model.net(torch.ones(4, 3))[0].mu.dtype == torch.float32  # outside: no autocast at all
    plain = nn.Sequential(nn.Linear(3, 2))
    with Precision("fp32").networks(plain):
        pass
    assert not plain[0]._forward_hooks and not plain[0]._forward_pre_hooks


def test_reference_batch_statistics_are_float32_under_bf16_autocast():
    x = torch.randn(64, 5, dtype=torch.float64) * 3 + 1
    mean, var = _moments(x.to(torch.bfloat16))
    assert mean.dtype == var.dtype == torch.float32
    torch.testing.assert_close(mean.double(), x.to(torch.bfloat16).double().mean(0), rtol=0, atol=1e-5)
    m32, v32 = _moments(x.float())
    assert m32.dtype == torch.float32
    bn = nn.BatchNorm1d(5)
    with torch.autocast("cpu", dtype=torch.bfloat16), use_statistics({bn: (mean, var)}):
        y = bn(nn.functional.linear(x.float(), torch.eye(5)))  # bfloat16 input, float32 statistics
    assert torch.isfinite(y).all()
    assert bn.running_mean.dtype == torch.float32 and torch.equal(bn.running_mean, torch.zeros(5))


# --------------------------------------------------------------------------- device settings and their record
def test_on_the_cpu_nothing_is_set_and_the_record_says_what_ran(tmp_path, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    record = configure_device(torch.device("cpu"), "fp32", True)
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark) == before
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    assert record["device"] == "cpu" and record["torch"] == torch.__version__ and "tf32" not in record
    summary = _train(tmp_path / "run", **{"train.steps": 5})
    assert summary["precision"] == "fp32" and summary["environment"]["device"] == "cpu"
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["environment"] == summary["environment"]
    assert "precision" not in (tmp_path / "run" / "config.yaml").read_text()  # the 0.1 layout at the default
    header = read_header(latest_checkpoint(tmp_path / "run" / "checkpoints")[1])
    assert header["device"] == "cpu" and header["environment"]["torch"] == torch.__version__


@pytest.mark.parametrize(
    "precision, deterministic, tf32, algorithms, benchmark",
    [("fp32", True, False, True, False), ("tf32", True, True, True, False), ("bf16", False, False, False, True)],
)
def test_the_cuda_branch_sets_records_and_restores_the_flags(
    monkeypatch, precision, deterministic, tf32, algorithms, benchmark
):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA H200")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    cuda = torch.device("cuda:0")
    before = device_mod._save_flags()
    with device_settings(cuda, precision, deterministic) as record:
        assert torch.backends.cuda.matmul.allow_tf32 is tf32 and torch.backends.cudnn.allow_tf32 is tf32
        assert torch.are_deterministic_algorithms_enabled() is algorithms
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic is algorithms and torch.backends.cudnn.benchmark is benchmark
        assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") == (":4096:8" if deterministic else None)
    assert record["device"] == "cuda:0" and record["device_name"] == "NVIDIA H200" and record["capability"] == "9.0"
    assert record["tf32"] == {"matmul": tf32, "cudnn": tf32}
    assert record["deterministic"] == {
        "algorithms": algorithms,
        "cudnn_deterministic": algorithms,
        "cudnn_benchmark": benchmark,
        "cublas_workspace_config": ":4096:8" if deterministic else None,
    }
    assert set(record) >= {"torch", "cuda", "cudnn", "precision"}
    assert device_mod._save_flags() == before  # the process is left as it was


def test_the_evaluation_at_the_end_runs_without_the_deterministic_algorithms_mode(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA H200")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    with device_settings(torch.device("cuda"), "fp32", True):
        with device_mod.determinism_relaxed():
            assert not torch.are_deterministic_algorithms_enabled()
        assert torch.are_deterministic_algorithms_enabled()


def test_a_users_cublas_workspace_setting_is_kept(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "A100")
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    with device_settings(torch.device("cuda"), "fp32", True) as record:
        pass
    assert record["deterministic"]["cublas_workspace_config"] == ":16:8"


def test_an_operator_without_a_deterministic_kernel_stops_the_run_in_one_line(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError(
            "index_add_cuda_ does not have a deterministic implementation, but you set "
            "'torch.use_deterministic_algorithms(True)'. You can turn off determinism just for this operation..."
        )

    monkeypatch.setattr(ensemble_mod, "training_step", refuse)  # the step every member takes
    with pytest.raises(GatedVAEError, match="index_add_cuda_ does not have a deterministic") as exc:
        _train(tmp_path / "run")
    assert "\n" not in str(exc.value) and "train.deterministic=false" in str(exc.value)
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "failed"


# --------------------------------------------------------------------------- across devices
@pytest.fixture
def stopped(tmp_path) -> Path:
    run = tmp_path / "run"
    train(tiny_config({"train.steps": 20}), run, quiet=True, tensorboard=False, stop_after=10)
    return run


def _as_if_written_on_cuda(run: Path, with_device: bool = True) -> None:
    """The run's checkpoint as a GPU machine writes it: its header's device, and (without one, as
    before 0.3) a CUDA generator's 16-byte state."""
    path = latest_checkpoint(run / "checkpoints")[1]
    if with_device:
        _rewrite_checkpoint(path, header_change=lambda h: h.update(device="cuda:0"))
    else:

        def cuda_state(t):
            t["rng/torch"] = torch.zeros(16, dtype=torch.uint8)

        _rewrite_checkpoint(path, header_change=lambda h: h.pop("device", None), tensor_change=cuda_state)


@pytest.mark.parametrize("with_device", [True, False], ids=["recorded", "pre-0.3"])
def test_resuming_a_cuda_checkpoint_on_the_cpu_is_refused_in_one_line(stopped, with_device):
    _as_if_written_on_cuda(stopped, with_device)
    before = {p.name: p.read_bytes() for p in stopped.iterdir() if p.is_file()}
    with pytest.raises(ResumeDeviceError) as exc:
        train(None, stopped, resume=True, quiet=True, tensorboard=False)
    message = str(exc.value)
    assert "\n" not in message and "checkpointed on cuda" in message and "would resume on cpu" in message
    assert "--resume-on-other-device" in message
    assert {p.name: p.read_bytes() for p in stopped.iterdir() if p.is_file() and p.name != ".lock"} == {
        k: v for k, v in before.items() if k != ".lock"
    }


def test_resuming_on_another_device_when_asked_continues_reseeded_with_a_note(stopped, capsys):
    _as_if_written_on_cuda(stopped, with_device=False)  # a CUDA generator state: it cannot be loaded here
    summary = train(None, stopped, resume=True, quiet=True, tensorboard=False, other_device=True)
    assert summary["status"] == "finished" and summary["resumed_from"] == 10
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpointed on cuda and continues on cpu from step 10" in err[0]
    assert "not bitwise" in err[0]
    assert read_header(latest_checkpoint(stopped / "checkpoints")[1])["device"] == "cpu"


def test_the_refusal_for_a_cpu_checkpoint_on_a_gpu_names_the_cpu_way_to_resume(stopped):
    path = latest_checkpoint(stopped / "checkpoints")[1]
    assert checkpoint_device(path) == "cpu"
    with pytest.raises(ResumeDeviceError, match="CUDA_VISIBLE_DEVICES= gatedvae train --resume"):
        loop_mod._check_resume_device(stopped, path, torch.device("cuda:0"), other_device=False)
    # another GPU of the same machine is the same kind of device: the generator state moves (exact)
    _rewrite_checkpoint(path, header_change=lambda h: h.update(device="cuda:1"))
    assert loop_mod._check_resume_device(stopped, path, torch.device("cuda:0"), False) == "cuda:1"


def test_resuming_a_run_configured_for_cuda_on_a_machine_without_one_says_so(stopped, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU-only machine, also on a GPU one
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    cfg = stopped / "config.yaml"
    cfg.write_text(cfg.read_text().replace("device: cpu", "device: cuda"))
    with pytest.raises(ResumeDeviceError, match="trains on train.device=cuda but CUDA is not available here"):
        train(None, stopped, resume=True, quiet=True, tensorboard=False)


def test_a_run_trained_on_cuda_is_read_on_a_cpu_only_machine(stopped, monkeypatch):
    """evaluate / encode / load_run: checkpoints load into host memory, then onto the device."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU-only machine, also on a GPU one
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    _as_if_written_on_cuda(stopped, with_device=False)
    cfg = stopped / "config.yaml"
    cfg.write_text(cfg.read_text().replace("device: cpu", "device: cuda"))
    prep, step, _ = load_trained(stopped)  # the run's train.device is absent here: the CPU
    assert prep.device == torch.device("cpu") and step == 10
    loaded = load_model(stopped, "cpu")
    assert next(loaded.model.parameters()).device.type == "cpu"
    path = latest_checkpoint(stopped / "checkpoints")[1]
    with pytest.raises(CheckpointError, match="written on cuda; its random generator state does not fit"):
        load_checkpoint(path, loaded.model, generator=torch.Generator())


# --------------------------------------------------------------------------- on a GPU (skipped without one)
GPU_TF32 = {"fp32": False, "tf32": True, "bf16": False, "fp16": False}


@pytest.mark.gpu
@pytest.mark.parametrize("net", ["mlp", "conv64"])
@pytest.mark.parametrize("precision", sorted(GPU_TF32))
def test_each_precision_trains_on_cuda_records_its_flags_and_resumes_bitwise(tmp_path, precision, net):
    dotted = {"train.device": "cuda", "train.precision": precision, "train.steps": 16, "model.net": net}
    if net == "conv64":
        dotted.update({"data.size": 64, "train.batch_size": 8})
    cfg = tiny_config(dotted)
    before = torch.are_deterministic_algorithms_enabled()
    summary = train(cfg, tmp_path / "full", quiet=True, tensorboard=False)
    assert torch.are_deterministic_algorithms_enabled() == before  # the run's flags were put back
    env = summary["environment"]
    assert env["device"].startswith("cuda") and env["device_name"] and env["precision"] == precision
    assert env["tf32"] == {"matmul": GPU_TF32[precision], "cudnn": GPU_TF32[precision]}
    assert env["deterministic"]["algorithms"] and env["deterministic"]["cublas_workspace_config"]
    assert all(v == v and abs(v) < 1e9 for k, v in summary["final"].items() if isinstance(v, float))
    assert train(cfg, tmp_path / "r", quiet=True, tensorboard=False, stop_after=7)["status"] == "stopped"
    train(None, tmp_path / "r", resume=True, quiet=True, tensorboard=False)
    full, resumed = _tensors(tmp_path / "full"), _tensors(tmp_path / "r")
    differ = [k for k in full if not torch.equal(full[k], resumed[k])]
    assert not differ, differ


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("model", ["beta_vae", "factor_vae"])
def test_mixed_precision_steps_make_the_host_wait_for_nothing(precision, model):
    """Autocast, the float32 casts and (fp16) the gradient scaler with the fused Adam add no host
    wait: steps after the first run under ``torch.cuda.set_sync_debug_mode("error")``."""
    from gatedvae.run import prepare
    from gatedvae.train import Batcher, make_generators, make_optimizers, training_step

    cfg = tiny_config({"train.device": "cuda", "train.precision": precision, "model.name": model})
    with device_settings(torch.device("cuda"), precision, True):
        prep = prepare(cfg, device=torch.device("cuda"))
        rng, gen = make_generators(0, prep.device)
        optimizers = make_optimizers(prep.model, 1e-3, prep.device)
        prec, batcher = Precision(precision, prep.device), Batcher(prep)
        prep.model.train()
        for step in range(6):
            torch.cuda.set_sync_debug_mode("error" if step else "default")  # step 0 allocates Adam's state
            try:
                training_step(prep.model, batcher.draw(step, rng, False), step, gen, optimizers, precision=prec)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()
