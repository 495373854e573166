"""On a CUDA GPU (the ``cuda`` cases are marked ``gpu``; skipped with "needs a CUDA GPU" without one):
every registered model trains there, a run SIGKILLed at a random step and resumed there ends
bitwise equal to an uninterrupted one (MLP and conv64 networks: the deterministic settings of
``train.deterministic``, docs/training.md), and ``train.precision=bf16`` trains there.

``scripts/gpu_check.sh`` runs these with the other GPU-marked tests (tests/test_sync.py's sync-free
check of every model), then the bench rows and a short fixed training compared with recorded values.
The bodies are plain functions of the device; their ``cpu`` cases are marked ``slow``, since the
default suite covers the same paths on the CPU (tests/test_sync.py trains every model,
tests/test_train.py SIGKILLs and resumes, tests/test_precision.py trains in bf16).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_config
from gatedvae.config import Config, save_config
from gatedvae.models import MODELS
from gatedvae.train import latest_checkpoint, train


# --------------------------------------------------------------------------- helpers
def model_config(name: str, device: str, steps: int = 20, **train_kw) -> Config:
    """Model ``name`` on 200 ellipses, a 16-wide MLP, batches of 8, ungated (every model can be)."""
    train_cfg = {"steps": steps, "batch_size": 8, "log_every": 10, "checkpoint_every": steps, "device": device}
    return tiny_config(
        data={"size": 200}, model={"name": name, "hidden": 16}, gated=False, train={**train_cfg, **train_kw}
    )


def net_config(net: str, device: str, steps: int, **train_kw) -> Config:
    """The tiny gated beta-VAE (tests/conftest.py) with the ``mlp`` or the ``conv64`` networks."""
    model = {"net": "conv64", "hidden": 32} if net == "conv64" else {}
    return tiny_config(model=model, train={"steps": steps, "device": device, **train_kw})


def final_tensors(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(latest_checkpoint(run / "checkpoints")[1]))


def logged(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_finished_finite_on(run: Path, summary: dict, device: str) -> None:
    """The run finished on ``device``; every logged value and every saved tensor is finite."""
    assert summary["status"] == "finished", summary
    assert summary["environment"]["device"].startswith(device), summary["environment"]
    lines = logged(run)
    assert lines and lines[-1]["step"] == summary["steps"]
    for line in lines:
        for key, value in line.items():
            assert not isinstance(value, float) or math.isfinite(value), (line["step"], key, value)
    for key, t in final_tensors(run).items():
        assert not t.is_floating_point() or torch.isfinite(t).all(), key


def train_every_model(name: str, run: Path, device: str) -> None:
    cfg = model_config(name, device)
    summary = train(cfg, run, quiet=True, tensorboard=False)
    assert_finished_finite_on(run, summary, device)


def sigkill_then_resume_is_bitwise(net: str, tmp_path: Path, device: str, seed: int, total: int = 1500) -> int:
    """Train ``net`` uninterrupted and, in another process, SIGKILL it at a random step (anywhere in
    a step or a checkpoint write), resume it in a third: the final parameters, Adam moments and
    generator states are bitwise equal. Returns the step the killed run had checkpointed."""
    cfg_path = tmp_path / "cfg.yaml"
    save_config(net_config(net, device, total), cfg_path)
    # The trainer sets the cuBLAS workspace itself before CUDA starts; a fresh process tests that.
    env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    env["OMP_NUM_THREADS"] = "1"

    def cli(*args: str) -> list[str]:
        return [sys.executable, "-m", "gatedvae", *args, "--quiet", "--no-tensorboard"]

    ref = tmp_path / "ref"
    subprocess.run(cli("train", str(cfg_path), "--run-dir", str(ref)), check=True, env=env, timeout=300)
    run = tmp_path / "killed"
    proc = subprocess.Popen(cli("train", str(cfg_path), "--run-dir", str(run)), env=env)
    rnd = random.Random(seed)
    target = rnd.randrange(10, total // 2)  # kill once the run has checkpointed this step
    note = f"(seed {seed}: killed after step {target} of {total})"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads((run / "status.json").read_text())["step"] >= target:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.005)
    time.sleep(rnd.uniform(0.0, 0.05))
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, f"the run ended before it was killed: make it longer {note}"
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "running" and status["step"] < total, (status, note)
    r = subprocess.run(cli("train", "--resume", str(run)), env=env, timeout=300, capture_output=True, text=True)
    assert r.returncode == 0, (r.stderr, note)
    needed = {"algorithms": True, "cudnn_deterministic": True, "cudnn_benchmark": False}
    needed["cublas_workspace_config"] = ":4096:8"
    for path in (ref, run):
        environment = json.loads((path / "summary.json").read_text())["environment"]
        assert environment["device"].startswith(device), environment
        if device.startswith("cuda"):  # the settings exact resume needs, set and recorded
            flags = environment["deterministic"]
            assert {k: flags.get(k) for k in needed} == needed, environment
    a, b = final_tensors(ref), final_tensors(run)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), (k, note)
    return int(status["step"])


def bf16_trains(net: str, tmp_path: Path, device: str, steps: int = 60) -> None:
    """bf16 autocast trains ``net`` as fp32 does: finite, the parameters stay float32, the loss goes
    down, and its last three logged losses are within 10 % of the same run's in fp32 (on the CPU,
    measured: 0.1-2 % apart; tests/test_precision.py checks, at 16 steps, the flags each precision
    records and its exact resume)."""
    finals = {}
    for precision in ("fp32", "bf16"):
        cfg = net_config(net, device, steps, precision=precision, checkpoint_every=steps, lr=3e-3)
        run = tmp_path / precision
        summary = train(cfg, run, quiet=True, tensorboard=False)
        assert_finished_finite_on(run, summary, device)
        assert summary["precision"] == precision and summary["environment"]["precision"] == precision
        if device.startswith("cuda"):
            assert summary["environment"]["tf32"] == {"matmul": False, "cudnn": False}
        weights = [t for k, t in final_tensors(run).items() if k.startswith("model/") and t.is_floating_point()]
        assert weights and all(t.dtype == torch.float32 for t in weights)
        totals = [line["total"] for line in logged(run)]
        assert totals[-1] < totals[0], (precision, totals)
        finals[precision] = sum(totals[-3:]) / 3
    assert abs(finals["bf16"] - finals["fp32"]) <= 0.1 * abs(finals["fp32"]), finals


# --------------------------------------------------------------------------- the tests
# Each test on CUDA (marked gpu) and, to keep the bodies honest on machines without one, on the CPU
# (marked slow: the default suite covers these paths on the CPU elsewhere, see the module's docstring).
DEVICES = [
    pytest.param("cuda", marks=pytest.mark.gpu, id="cuda"),
    pytest.param("cpu", marks=pytest.mark.slow, id="cpu"),
]
#: Steps of the SIGKILL runs: long enough that the kill lands before the end (it is drawn in the
#: first half); conv64 on the CPU is slow, so shorter there.
KILL_STEPS = {("cuda", "mlp"): 1500, ("cuda", "conv64"): 1500, ("cpu", "mlp"): 1500, ("cpu", "conv64"): 200}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_trains(name, device, tmp_path):
    train_every_model(name, tmp_path / "run", device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("net", ["mlp", "conv64"])
def test_sigkill_at_a_random_step_then_resume_is_bitwise(net, device, tmp_path):
    # a new step each run (the seed is in any failure's message, to repeat it)
    seed = random.SystemRandom().randrange(2**16)
    sigkill_then_resume_is_bitwise(net, tmp_path, device, seed=seed, total=KILL_STEPS[device, net])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("net", ["mlp", "conv64"])
def test_bf16_trains_as_fp32_does(net, device, tmp_path):
    bf16_trains(net, tmp_path, device)


# --------------------------------------------------------------------------- scripts/gpu_check.sh
# The check itself runs here at smoke size on the CPU (slow); its verdicts and comparisons in the
# default suite, without training anything.
ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def _check_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def test_the_fixed_training_comparison_names_what_left_its_tolerance():
    check = _check_module()
    tol = check.DEFAULT_TOLERANCES
    want = {
        "losses": {"100": {"recon": 300.0, "kl": 20.0, "total": 380.0}},
        "scores": {"mig.mig": 0.30},
        "images_per_second": 10_000.0,
    }
    same = json.loads(json.dumps(want))
    assert check.compare(same, want, "fp32", tol) == []
    near = json.loads(json.dumps(want))
    near["losses"]["100"]["recon"] = 300.0 * 1.015  # within fp32's 2 %
    near["images_per_second"] = 8_000.0  # within [0.7, 1.5] x
    assert check.compare(near, want, "fp32", tol) == []
    far = json.loads(json.dumps(want))
    far["losses"]["100"]["recon"] = 300.0 * 1.04  # beyond fp32's 2 %, within bf16's 5 %
    far["scores"]["mig.mig"] = 0.15
    far["images_per_second"] = 5_000.0
    assert check.compare(far, want, "bf16", tol) == [
        "bf16 mig.mig 0.150 (recorded 0.300)",
        "bf16 5000 img/s outside [0.7, 1.5] x recorded 10000",
    ]
    assert check.compare(far, want, "fp32", tol)[0] == "fp32 recon at step 100 312 (recorded 300)"
    del far["losses"]["100"]
    assert check.compare(far, want, "fp32", tol)[0] == "fp32 step 100 not logged"


def _junit(path: Path, cases: list[tuple[str, str]]) -> Path:
    """A pytest JUnit XML report of ``(test id, outcome)``, outcome passed, failed or skipped."""
    body = {"passed": "", "failed": '<failure message="assert"/>', "skipped": '<skipped message="needs a CUDA GPU"/>'}
    rows = "".join(
        f'<testcase classname="tests.{test.split("::")[0]}" name="{test.split("::")[1]}">{body[outcome]}</testcase>'
        for test, outcome in cases
    )
    path.write_text(f'<testsuites><testsuite name="pytest" errors="0">{rows}</testsuite></testsuites>')
    return path


def test_the_pytest_summary_needs_gpu_tests_to_have_run_on_cuda(tmp_path, capsys):
    check = _check_module()
    kill = "test_gpu::test_sigkill_at_a_random_step_then_resume_is_bitwise"
    xml = _junit(
        tmp_path / "a.xml",
        [
            (f"{kill}[mlp-cuda]", "passed"),
            (f"{kill}[conv64-cuda]", "failed"),
            ("test_sync::test_no_host_sync_between_log_steps_on_cuda[vae]", "passed"),
            ("test_distributed::test_nccl_on_two_gpus", "skipped"),
        ],
    )
    assert check.main(["pytest-summary", str(xml), "--device", "cuda"]) == 1
    out = _last_json(capsys.readouterr().out)
    assert out["summary"] == f"2 passed, 1 failed, 1 skipped: {kill}[conv64-cuda]"
    assert out["resume"] == "conv64 FAILED, mlp passed" and out["resume_ok"] is False
    xml = _junit(tmp_path / "b.xml", [(f"{kill}[mlp-cuda]", "skipped"), (f"{kill}[conv64-cuda]", "skipped")])
    assert check.main(["pytest-summary", str(xml), "--device", "cuda"]) == 1  # nothing ran on the GPU
    assert _last_json(capsys.readouterr().out)["summary"].endswith("no GPU test ran on a CUDA device")
    assert check.main(["pytest-summary", str(xml), "--device", "cpu"]) == 0  # the CPU smoke run: fine


def test_the_ensemble_summary_reports_issue_18s_gpu_targets(tmp_path, capsys):
    """Step 5's summary of ``gatedvae bench --only ensemble``: the stacked rows, and on CUDA the two
    targets (reported, not failed); a section that did not run fails the step."""
    check = _check_module()

    def row(net, strategy, k, ms, vs):
        return {"net": net, "strategy": strategy, "members": k, "step_ms": ms, "images_per_s": 128 * k / ms * 1e3,
                "vs_one_run": vs, "fraction_of_roofline": 0.5, "projected_hours": ms * 288_000 / 3.6e6}  # fmt: skip

    rows = [row("mlp-256", "one run", 1, 1.0, 1.0), row("mlp-256", "stacked", 32, 1.5, 21.3),
            row("mlp-1200", "one run", 1, 0.9, 1.0), row("mlp-1200", "stacked", 10, 1.8, 5.0)]  # fmt: skip
    path = tmp_path / "ensemble.json"
    path.write_text(json.dumps({"ensemble": {"device": "cuda", "rows": rows, "errors": {}}}))
    assert check.main(["ensemble-summary", str(path)]) == 0
    out = _last_json(capsys.readouterr().out)
    assert out["targets"] == {"small_vs_one_run": True, "paper_step_ms": False}
    assert out["summary"] == (
        "mlp-256 K=32 21.3x one run; mlp-1200 K=10 1.80 ms/step (0.1 h for 288k); "
        "targets met 1/2 (>= 20x at K=32, <= 1.5 ms at K=10)"
    )
    path.write_text(json.dumps({"ensemble": {"device": "cpu", "rows": rows, "errors": {}}}))
    assert check.main(["ensemble-summary", str(path)]) == 0
    assert _last_json(capsys.readouterr().out)["targets"] == {}  # the targets are the GPU's
    path.write_text(json.dumps({"ensemble": {"device": "cuda", "rows": rows[:1], "errors": {"mlp-256 stacked": "x"}}}))
    assert check.main(["ensemble-summary", str(path)]) == 1
    assert _last_json(capsys.readouterr().out)["summary"] == "ensembles not measured (mlp-256 stacked: x)"


def test_the_script_refuses_bad_arguments_and_a_machine_without_cuda_in_one_line(tmp_path):
    def run(*args: str, **env: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "OUT": str(tmp_path / "out"), **env}
        return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=60)

    r = run("--only", "6")
    assert r.returncode == 2 and r.stdout == "gpu_check: FAIL --only takes steps 1-5, e.g. --only 2,4\n"
    r = run("--frobnicate")
    assert r.returncode == 2 and r.stdout.startswith("gpu_check: FAIL unknown argument '--frobnicate'")
    assert run("--help").stdout.startswith("The GPU regression check: one command")
    if not torch.cuda.is_available():
        r = run(PYTHON=sys.executable)
        assert r.returncode == 1 and r.stdout.splitlines() == [
            "gpu_check: FAIL no Python with torch that sees a CUDA device "
            f"(tried {sys.executable}, python3, .venv/bin/python; set PYTHON=...)"
        ]
        assert (tmp_path / "out" / "verdict.txt").read_text() == r.stdout


@pytest.mark.slow
def test_the_whole_check_at_smoke_size_on_the_cpu(tmp_path):
    """scripts/gpu_check.sh --device cpu --tiny end to end (about a minute): records the expected values
    it lacks, then compares with them; a recorded loss moved beyond its tolerance fails, named."""
    expected = tmp_path / "expected.json"
    shutil.copy(ROOT / "scripts" / "gpu_expected.json", expected)
    env = {**os.environ, "OUT": str(tmp_path / "out"), "GPU_CHECK_EXPECTED": str(expected), "PYTHON": sys.executable}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", str(SCRIPT), "--device", "cpu", "--tiny", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )

    r = run()
    verdict = r.stdout.splitlines()[-1]
    assert r.returncode == 0 and verdict.startswith("gpu_check: PASS cpu, tiny in "), r.stdout
    assert "GPU tests 0 passed, 0 failed" in verdict and "bench median img/s fp32 " in verdict
    assert "ensembles mlp-" in verdict and "h for 288k" in verdict
    assert "no expected values recorded for cpu: " in verdict and "(tiny); recorded now" in verdict
    assert sum(line.startswith("gpu_check:") for line in r.stdout.splitlines()) == 1
    out = tmp_path / "out"
    assert (out / "verdict.txt").read_text() == verdict + "\n"
    for name in (
        "gpu_check.log",
        "pytest.xml",
        "bench.json",
        "ensemble.json",
        "fixed/fixed.json",
        "fixed/gpu_expected.json",
    ):
        assert (out / name).is_file(), name
    doc = json.loads(expected.read_text())
    (key,) = doc["devices"]
    assert set(doc["devices"][key]) >= {"fp32", "bf16", "torch", "recorded"}
    # Again, step 4 only, compared with what was recorded (the smoke run's speed is noise: any band).
    doc["tolerances"]["images_per_second_band"] = [0.0, 1e9]
    expected.write_text(json.dumps(doc))
    r = run("--only", "4")
    assert r.returncode == 0 and "within tolerance" in r.stdout.splitlines()[-1], r.stdout
    step = min(doc["devices"][key]["fp32"]["losses"], key=int)
    doc["devices"][key]["fp32"]["losses"][step]["recon"] *= 1.1
    expected.write_text(json.dumps(doc))
    r = run("--only", "4")
    verdict = r.stdout.splitlines()[-1]
    assert r.returncode == 1 and verdict.startswith("gpu_check: FAIL fixed training: "), r.stdout
    assert f"fp32 recon at step {step} " in verdict
