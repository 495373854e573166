"""Sweeps: grids of runs (models x gated/un-gated x hyperparameters x seeds), run on a local process
pool, a job scheduler's array or a Ray cluster, resumable, and summarised into tables and an HTML
report. See ``docs/sweeps.md``.

::

    plan = plan_sweep("configs/sweeps/table1.yaml")      # resolve and check every run
    write_manifest(plan, "sweeps/table1")                # SWEEP_DIR/manifest.json
    run_sweep("sweeps/table1", workers=2)                # SWEEP_DIR/runs/<id>/ (ordinary run directories)
    run_sweep("sweeps/table1", ensemble=10)              # runs of one network shape trained as ensembles
    write_report("sweeps/table1")                        # SWEEP_DIR/report/: CSV, Markdown, HTML
"""

from .collect import Collected, collect, markdown, write_csv
from .ensemble import group_runs, parse_ensemble, run_ensemble
from .execute import format_status, parse_shard, run_sweep, select_runs, sweep_status
from .report import html_report, write_report
from .runner import inspect_run, run_one
from .spec import EvalSettings, Plan, PlannedRun, config_hash, load_sweep, plan_sweep, read_manifest, write_manifest

__all__ = [
    "plan_sweep",
    "load_sweep",
    "write_manifest",
    "read_manifest",
    "config_hash",
    "Plan",
    "PlannedRun",
    "EvalSettings",
    "run_sweep",
    "run_one",
    "run_ensemble",
    "group_runs",
    "parse_ensemble",
    "select_runs",
    "parse_shard",
    "sweep_status",
    "format_status",
    "inspect_run",
    "collect",
    "Collected",
    "write_csv",
    "markdown",
    "write_report",
    "html_report",
]
