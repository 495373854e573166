"""``gatedvae sweep plan|run|status|report`` and ``gatedvae report``: thin commands over
:mod:`gatedvae.sweep` (wired into :mod:`gatedvae.cli` by :func:`add_commands`)."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from ..errors import ConfigError

__all__ = ["add_commands"]


def _default_dir(plan) -> Path:
    # The sweep's name becomes a directory under sweeps/: never a path that leaves it.
    name = plan.name
    if any(c in "/\\:" or ord(c) < 32 for c in name) or name.startswith(".") or len(name) > 100:
        raise ConfigError(
            f"sweep name {name!r} must be a plain name (no '/', '\\', ':' or leading '.'); "
            "rename it, or choose the directory with --out"
        )
    return Path("sweeps") / name


def _plan(sweep_file: str, out: str | None, check_data: bool, quiet: bool = False) -> Path:
    from .runner import inspect_run, run_dir_of
    from .spec import plan_sweep, write_manifest

    plan = plan_sweep(sweep_file, check_data=check_data)
    sweep_dir = Path(out) if out else _default_dir(plan)
    path, info = write_manifest(plan, sweep_dir)
    labels = Counter(r.label for r in plan.runs)
    done = sum(1 for r in plan.runs if inspect_run(run_dir_of(sweep_dir, r.to_json()), r.to_json())["state"] == "done")
    if not quiet:
        ev = plan.runs[0].evaluate
        evaluation = (
            f"evaluation: {','.join(ev.metrics) if ev.metrics else 'all metrics'}, preset {ev.preset}"
            if ev
            else "no evaluation (set evaluate: in the sweep file or train.evaluate)"
        )
        print(f"planned {len(plan.runs)} runs in {len(labels)} configurations ({evaluation})")
        width = max(len(k) for k in labels)
        for label, n in labels.items():
            print(f"  {label:<{width}}  {n} run{'s' if n != 1 else ''}")
        kept = f"; {info['kept']} runs kept from the previous plan" if info["kept"] else ""
        dropped = (
            f"; {info['dropped']} runs of the previous plan dropped (their directories are left alone)"
            if info["dropped"]
            else ""
        )
        print(f"wrote {path} ({done} runs already done{kept}{dropped})")
    return sweep_dir


def cmd_plan(args: argparse.Namespace) -> int:
    sweep_dir = _plan(args.sweep_file, args.out, not args.no_check_data)
    print(f"next: gatedvae sweep run {sweep_dir} --workers 2")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .ensemble import parse_ensemble
    from .execute import parse_shard, run_sweep

    ensemble = parse_ensemble(args.ensemble)  # a bad value is refused before anything is planned
    target = Path(args.target)
    if target.is_file():
        sweep_dir = _plan(str(target), args.out, True, quiet=args.quiet)
    else:
        if args.out:
            raise ConfigError("--out is for a sweep file; a sweep directory runs where it is")
        sweep_dir = target
    if args.workers is not None and args.workers_per_gpu is not None:
        raise ConfigError("give --workers or --workers-per-gpu, not both")
    if args.backend == "local":
        given = [
            o
            for o, v in (
                ("--address", args.address),
                ("--cpus-per-run", args.cpus_per_run),
                ("--gpus-per-run", args.gpus_per_run),
            )
            if v is not None
        ]
        if given:
            raise ConfigError(
                f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} for --backend ray; "
                "add --backend ray or drop them"
            )
    shard = parse_shard(args.shard) if args.shard else None
    res = run_sweep(
        sweep_dir,
        workers=args.workers if args.workers is not None else 1,
        workers_per_gpu=args.workers_per_gpu,
        index=args.index,
        shard=shard,
        backend=args.backend,
        address=args.address,
        cpus=args.cpus_per_run,
        gpus=args.gpus_per_run,
        retry_failed=not args.skip_failed,
        tensorboard=not args.no_tensorboard,
        progress=not args.quiet,
        ensemble=ensemble,
        ensemble_strategy=args.ensemble_strategy,
        eval_workers=args.eval_workers,
    )
    part = f" (of {len(res['status'].get('states', {}))} in the sweep)" if (args.index is not None or shard) else ""
    print(
        f"{res['selected']} runs selected{part}: {res['done']} done, {res['failed']} failed"
        + (f", {res['busy']} busy in another process" if res["busy"] else "")
        + (f"; {res['skipped']} {'was' if res['skipped'] == 1 else 'were'} already finished" if res["skipped"] else "")
    )
    if res["failed"]:
        for o in res["outcomes"]:
            if o["state"] == "failed":
                print(f"  failed: {o['name']} ({o['id']}): {o['error']}")
        print(
            f"errors are in {sweep_dir}/runs/<id>/error.txt; "
            "run the same command again to retry (resumes from checkpoints)"
        )
    elif res["status"].get("complete"):
        print(f"sweep complete: gatedvae sweep report {sweep_dir}")
    return 0 if not res["failed"] and not res["busy"] else 1


def cmd_status(args: argparse.Namespace) -> int:
    from .execute import format_status, sweep_status

    st = sweep_status(args.sweep_dir)
    if args.json:
        print(json.dumps(st, indent=1))
    else:
        print(format_status(st, show_all=args.all))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    columns = [c.strip() for c in args.metrics.split(",") if c.strip()] if args.metrics else None
    res = write_report(
        args.sweep_dir,
        args.out,
        formats=args.format.split(","),
        columns=columns,
        figures=not args.no_figures,
        reference=args.reference,
    )
    col = res["collected"]
    counts = ", ".join(f"{n} {s}" for s, n in sorted(col.counts.items()))
    print(
        f"{len(col.runs)} runs ({counts}) in {len(col.rows)} configurations, "
        f"{len(col.comparisons)} gated vs un-gated comparisons"
        + (f", {len(col.against)} against {col.reference}" if col.against else "")
    )
    for f in res["files"]:
        print(f"wrote {f}")
    return 0


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep_dir", metavar="SWEEP_DIR", help="a sweep directory (holds manifest.json)")
    p.add_argument("--out", help="output directory (default: SWEEP_DIR/report)")
    p.add_argument("--format", default="csv,md,html", help="comma-separated: csv, md, html (default: all three)")
    p.add_argument(
        "--reference",
        metavar="CONFIGURATION",
        help="compare every configuration with this one (Welch's t-test), e.g. gated_vae "
        "(default: the sweep file's report.reference)",
    )
    p.add_argument(
        "--metrics",
        help="scores shown in the tables, e.g. dci_lasso.disentanglement,mig.mig "
        "(default: the sweep file's report.metrics, else the usual headline scores)",
    )
    p.add_argument("--no-figures", action="store_true", help="no figures in the HTML page")
    p.set_defaults(func=cmd_report)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``sweep`` (plan, run, status, report) and ``report`` to the main parser's subcommands."""
    s = sub.add_parser(
        "sweep",
        help="grids of runs: plan, run (local pool, job arrays, Ray), status, report",
        description="Sweeps over models x gated/un-gated x hyperparameters x seeds (see docs/sweeps.md). "
        "plan resolves a sweep file into SWEEP_DIR/manifest.json; run trains and evaluates the runs "
        "(repeatable: finished runs are skipped, stopped ones resume); report writes CSV, Markdown and HTML.",
    )
    ssub = s.add_subparsers(dest="sweep_command", metavar="ACTION")

    p = ssub.add_parser(
        "plan",
        help="resolve a sweep file into SWEEP_DIR/manifest.json (a typo fails here)",
        description="Resolve and check every run of a sweep file; write SWEEP_DIR/manifest.json with "
        "one resolved config, a stable id and a readable name per run.",
    )
    p.add_argument(
        "sweep_file",
        metavar="SWEEP_FILE",
        help="a .yaml sweep file (see configs/sweeps/) or a .py file defining sweep()",
    )
    p.add_argument("--out", metavar="SWEEP_DIR", help="the sweep directory (default: sweeps/<sweep name>)")
    p.add_argument(
        "--no-check-data",
        action="store_true",
        help="do not build the datasets to check partition factor names (for huge image folders)",
    )
    p.set_defaults(func=cmd_plan)

    r = ssub.add_parser(
        "run",
        help="train and evaluate the runs not done yet",
        description="Run a planned sweep (or plan a sweep file, then run it). Finished runs are "
        "skipped, stopped runs resume from their checkpoint, failed runs are recorded (and retried "
        "next time); exit status 1 if any run failed.",
    )
    r.add_argument(
        "target", metavar="SWEEP_DIR|SWEEP_FILE", help="a planned sweep directory, or a sweep file to plan first"
    )
    r.add_argument("--out", metavar="SWEEP_DIR", help="with a sweep file: the sweep directory (default: sweeps/<name>)")
    r.add_argument(
        "--workers",
        type=int,
        help="runs at once in local processes, each with cores/workers torch threads unless the config sets "
        "train.threads (default 1: in this process); with N visible GPUs worker i runs on GPU i mod N; "
        "with --backend ray and no --address: the local Ray instance's CPUs",
    )
    r.add_argument(
        "--workers-per-gpu",
        type=int,
        metavar="K",
        help="local backend: K runs at once on each visible GPU (K x GPUs workers; instead of --workers)",
    )
    r.add_argument(
        "--ensemble",
        metavar="K|auto",
        default="1",
        help="train up to K runs of the same network shape, data, batch size and steps (and the same "
        "checkpoint step, when resuming) together as one ensemble, one unit of work for --workers, a shard or "
        "Ray; each run is still recorded on its own. auto: all such runs on CUDA (at most 32; split so that each "
        "GPU in use gets one); on the CPU at most 8 where the stacked step trains them (split so that each "
        "worker gets one), else 1 (default 1: each run alone)",
    )
    r.add_argument(
        "--ensemble-strategy",
        choices=("auto", "loop", "stacked"),
        default="auto",
        help="how an ensemble's step is computed: loop (each run's own step: the same numbers as the run "
        "alone), stacked (the runs' networks batched, one Adam: faster per image on GPUs and CPUs), auto "
        "(stacked where the models allow it, on CUDA and on a Linux (glibc) CPU; loop otherwise; default)",
    )
    r.add_argument(
        "--eval-workers",
        type=int,
        default=0,
        metavar="N",
        help="local backend: the workers only train and N more processes evaluate the trained runs on the CPU "
        "meanwhile (default 0: a run is evaluated by the worker that trained it, after its training)",
    )
    r.add_argument("--index", type=int, help="run only run number INDEX (0-based; e.g. $SLURM_ARRAY_TASK_ID)")
    r.add_argument("--shard", metavar="I/N", help="run only shard I of N (runs I, I+N, I+2N, ...)")
    r.add_argument("--backend", choices=("local", "ray"), default="local", help="local process pool (default) or Ray")
    r.add_argument(
        "--address", help="Ray: the cluster to join (auto, ray://HOST:10001); default: start a local instance"
    )
    r.add_argument(
        "--cpus-per-run", type=float, help="Ray: CPUs each run asks for (default: the sweep's resources.cpus, else 1)"
    )
    r.add_argument(
        "--gpus-per-run", type=float, help="Ray: GPUs each run asks for (default: the sweep's resources.gpus, else 0)"
    )
    r.add_argument("--skip-failed", action="store_true", help="do not retry runs whose last attempt failed")
    r.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard logs in the runs")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_run)

    st = ssub.add_parser("status", help="the state of every run (done, partial, failed, ...)")
    st.add_argument("sweep_dir", metavar="SWEEP_DIR", help="a sweep directory")
    st.add_argument("--all", action="store_true", help="list done runs too")
    st.add_argument("--json", action="store_true", help="print JSON")
    st.set_defaults(func=cmd_status)

    rep = ssub.add_parser(
        "report",
        help="CSV, Markdown and a self-contained HTML page of the results",
        description="Aggregate every run's metrics.json: mean ± std over seeds per configuration, "
        "gated vs un-gated with Welch's t-test; write CSV, Markdown and HTML (opens from disk).",
    )
    _report_args(rep)

    def usage(_args: argparse.Namespace) -> int:
        s.print_help(sys.stderr)
        return 2

    s.set_defaults(func=usage)

    top = sub.add_parser(
        "report",
        help="the same as gatedvae sweep report",
        description="Report a sweep: the same as gatedvae sweep report.",
    )
    _report_args(top)
