"""Soak: train for a long time and record resident memory every minute; memory must not grow once
warmed up (issue 7, docs/reliability.md).

A real ``gatedvae train`` process (the command line, with checkpoints, the metrics log and
TensorBoard scalars and images, everything a long run does) trains the gated beta-VAE of
``configs/dsprites_beta_vae_gated.yaml`` on dSprites with an open-ended step budget. This script
samples the process's resident set size (``VmRSS`` in ``/proc/PID/status``) every ``--interval``
seconds, stops the run with SIGINT after ``--minutes`` (the command line's clean interrupt), checks
that the run directory is resumable (its latest checkpoint loads), and reports:

* RSS at the end of the warm-up (``--warmup`` minutes) and its largest value after it;
* the least-squares slope of RSS after the warm-up, in MB per minute;
* steps done, checkpoints kept, and how the run directory grew on disk (the metrics log and the
  TensorBoard events grow by design; checkpoints are pruned to ``train.keep_checkpoints``).

The soak passes (exit status 0) when RSS after the warm-up never exceeds its warm-up value by more
than ``--tolerance-mb`` (default 32 MB) or ``--tolerance`` (default 3%), whichever is larger.

Run (the issue's soak, 20 minutes):
    .venv/bin/python benchmarks/soak.py --minutes 20 --out soak.json
A short check (2 minutes, a sample every 10 s):
    .venv/bin/python benchmarks/soak.py --minutes 2 --interval 10 --warmup 0.5
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs" / "dsprites_beta_vae_gated.yaml"
# Scaled like the quickstart (hidden 256) with frequent checkpoints, logs and images, so that a
# leak in any of them would show within minutes; one thread (the machine is shared).
DEFAULT_OVERRIDES = [
    "train.steps=1000000000",
    "model.hidden=256",
    "train.threads=1",
    "train.log_every=100",
    "train.checkpoint_every=500",
    "train.image_every=1000",
    "train.keep_checkpoints=2",
]


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB, from /proc."""
    fields = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(rest.split()[0]) / 1024.0  # kB -> MB
    return fields["VmRSS"], fields["VmHWM"]


def dir_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def last_step(run: Path) -> int:
    """The step of the last line of the run's metrics log (written every train.log_every steps)."""
    try:
        with open(run / "metrics.jsonl", "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = f.read().decode("utf-8", "replace").splitlines()
        return int(json.loads(lines[-1])["step"]) if lines else 0
    except (OSError, ValueError, KeyError, IndexError):
        return 0


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (minutes, MB) points, MB per minute."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    sxx = sum((t - mx) ** 2 for t, _ in points)
    return sum((t - mx) * (v - my) for t, v in points) / sxx if sxx > 0 else 0.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=20.0, help="how long to train (default 20)")
    ap.add_argument("--interval", type=float, default=60.0, help="seconds between memory samples (default 60)")
    ap.add_argument("--warmup", type=float, default=3.0, help="minutes of warm-up not judged (default 3)")
    ap.add_argument(
        "--tolerance-mb", type=float, default=32.0, help="allowed RSS growth after warm-up, MB (default 32)"
    )
    ap.add_argument(
        "--tolerance", type=float, default=0.03, help="allowed RSS growth after warm-up, fraction (default 0.03)"
    )
    ap.add_argument(
        "--config", default=str(DEFAULT_CONFIG), help="config to train (default: the paper's gated beta-VAE)"
    )
    ap.add_argument("--set", nargs="*", default=[], metavar="key=value", help="more overrides, after the soak's own")
    ap.add_argument("--run-dir", help="where the run goes (default: a temporary directory, removed afterwards)")
    ap.add_argument("--out", help="write the samples and the verdict as JSON here")
    args = ap.parse_args(argv)
    if args.warmup >= args.minutes:
        ap.error("--warmup must be shorter than --minutes")

    tmp = None
    if args.run_dir:
        run = Path(args.run_dir)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="gatedvae-soak-")
        run = Path(tmp.name) / "run"
    cmd = [
        sys.executable,
        "-m",
        "gatedvae",
        "train",
        args.config,
        *DEFAULT_OVERRIDES,
        *args.set,
        "--run-dir",
        str(run),
        "--quiet",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    print("soak: " + " ".join(cmd[2:]), flush=True)
    log = tempfile.TemporaryFile(mode="w+")  # the child's output (a pipe could fill up and stall it)
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    t0 = time.monotonic()
    samples: list[dict] = []
    try:
        while True:
            elapsed = time.monotonic() - t0
            if proc.poll() is not None:
                log.seek(0)
                raise SystemExit(f"soak: the training process ended early (status {proc.returncode}):\n{log.read()}")
            rss, hwm = rss_mb(proc.pid)
            sample = {
                "minute": round(elapsed / 60.0, 3),
                "rss_mb": round(rss, 1),
                "peak_mb": round(hwm, 1),
                "step": last_step(run),
                "run_dir_mb": round(dir_mb(run), 2) if run.exists() else 0.0,
            }
            samples.append(sample)
            print(
                f"  {sample['minute']:6.2f} min  RSS {rss:8.1f} MB  peak {hwm:8.1f} MB  step {sample['step']:>8}  "
                f"run dir {sample['run_dir_mb']:7.2f} MB",
                flush=True,
            )
            if elapsed >= args.minutes * 60.0:
                break
            time.sleep(min(args.interval, args.minutes * 60.0 - elapsed))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # the command line's clean stop ("interrupted", status 130)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    ckpts = sorted((run / "checkpoints").glob("step-*.safetensors"))
    resumable = False
    if ckpts:
        from gatedvae.checkpoint import read_header

        resumable = int(read_header(ckpts[-1])["step"]) > 0
    warm = [s for s in samples if s["minute"] <= args.warmup]
    after = [s for s in samples if s["minute"] > args.warmup]
    base = warm[-1]["rss_mb"] if warm else samples[0]["rss_mb"]
    worst = max((s["rss_mb"] for s in after), default=base)
    allowed = max(args.tolerance_mb, args.tolerance * base)
    growth = worst - base
    mb_per_min = slope([(s["minute"], s["rss_mb"]) for s in after])
    verdict = {
        "minutes": args.minutes,
        "warmup_minutes": args.warmup,
        "rss_after_warmup_mb": base,
        "rss_max_after_warmup_mb": worst,
        "growth_mb": round(growth, 1),
        "allowed_growth_mb": round(allowed, 1),
        "slope_mb_per_minute": round(mb_per_min, 3),
        "steps": samples[-1]["step"],
        "checkpoints_kept": [p.name for p in ckpts],
        "resumable": resumable,
        "run_dir_growth_mb": round(samples[-1]["run_dir_mb"] - (warm[-1]["run_dir_mb"] if warm else 0.0), 2),
        "passed": growth <= allowed and resumable,
        "command": cmd[2:],
        "samples": samples,
    }
    print(
        f"soak: RSS {base:.1f} MB after {args.warmup:g} min of warm-up, at most {worst:.1f} MB after it "
        f"(growth {growth:+.1f} MB, allowed {allowed:.1f}); slope {mb_per_min:+.3f} MB/min; "
        f"{verdict['steps']} steps; checkpoints kept {len(ckpts)}; resumable {resumable}; "
        f"{'PASSED' if verdict['passed'] else 'FAILED'}"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(verdict, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    if tmp is not None:
        tmp.cleanup()
    return 0 if verdict["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
