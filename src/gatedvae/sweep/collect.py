"""Collect a sweep's results: per-run scores, per-configuration mean +- std over seeds, and gated
vs un-gated comparisons with Welch's t-test; written as CSV and Markdown.

Scores come from each run's ``metrics.json`` (the ``headline`` scores of ``gatedvae evaluate``,
e.g. ``dci_lasso.disentanglement``, and every other finite scalar score of each metric, e.g.
``reconstruction.squared_error``) and ``summary.json`` (the final training loss terms as
``loss.<term>`` and the training time as ``train.seconds``).

* A **configuration** is the set of runs whose resolved configs differ only in ``train.seed``;
  its row holds, for each score, the mean, the sample standard deviation (``ddof=1``) and ``n``
  over the runs that have the score.
* A **comparison** pairs an un-gated configuration with a gated one when their configs differ
  only in the ``gating`` section (or in the keys of the sweep file's ``report.compare_ignore``)
  and ``gating.enabled`` is false in one and true in the other
  (the Gated-VAE paper's Table I, ``000_fc03c6fb001bc541.txt``, compares each model with and
  without gating). For each score it gives both means, the difference (gated minus un-gated),
  Welch's t statistic and two-sided p-value (``scipy.stats.ttest_ind(equal_var=False)``); the
  test needs at least two runs in each arm and some spread, otherwise the p-value is empty.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..io import read_json
from .runner import inspect_run, run_dir_of
from .spec import read_manifest

__all__ = [
    "RunRecord",
    "ConfigRow",
    "Comparison",
    "Collected",
    "collect",
    "write_csv",
    "markdown",
    "fmt",
    "compared",
    "DEFAULT_COLUMNS",
]

#: Scores shown in the Markdown and HTML tables when the sweep file names none (those present).
DEFAULT_COLUMNS = (
    "dci_lasso.disentanglement",
    "dci_lasso.completeness",
    "dci_lasso.informativeness",
    "dci_random_forest.disentanglement",
    "dci_random_forest.completeness",
    "dci_random_forest.informativeness",
    "dci_classifier.disentanglement",
    "dci_classifier.completeness",
    "dci_classifier.informativeness_test",
    "mig.mig",
    "sap.sap",
    "factor_vae.eval_accuracy",
    "beta_vae.eval_accuracy",
    "modularity_explicitness.modularity",
    "reconstruction.nll",
)


@dataclass
class RunRecord:
    id: str
    name: str
    label: str
    seed: int
    state: str
    error: str | None
    gated: bool
    params: dict[str, Any]
    config: dict[str, Any]
    scores: dict[str, float]
    run_dir: Path
    figures: list[str] = field(default_factory=list)


@dataclass
class ConfigRow:
    key: str
    label: str
    gated: bool
    params: dict[str, Any]
    runs: list[RunRecord]
    stats: dict[str, tuple[float, float, int]]  # score -> (mean, std, n); std is nan for n < 2

    @property
    def n_done(self) -> int:
        return sum(1 for r in self.runs if r.state == "done")


@dataclass
class Comparison:
    label: str
    ungated: ConfigRow
    gated: ConfigRow
    tests: dict[str, dict[str, float | int | None]]  # score -> {u_mean, u_std, u_n, g_mean, ..., diff, t, p}


@dataclass
class Against:
    """A configuration against the sweep's reference configuration (``report.reference``)."""

    reference: ConfigRow
    row: ConfigRow
    tests: dict[str, dict[str, float | int | None]]  # score -> {reference_mean, ..., mean, ..., difference, t, p_value}


@dataclass
class Collected:
    name: str
    sweep_dir: Path
    runs: list[RunRecord]
    rows: list[ConfigRow]
    comparisons: list[Comparison]
    scores: list[str]  # every score found, sorted
    columns: list[str]  # the scores shown in tables
    against: list[Against] = field(default_factory=list)  # every configuration against the reference
    reference: str | None = None

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.runs:
            out[r.state] = out.get(r.state, 0) + 1
        return out


def _finite(v: Any) -> bool:
    """A JSON number (not a bool) that is finite."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _scores(run_dir: Path) -> tuple[dict[str, float], list[str]]:
    out: dict[str, float] = {}
    doc = read_json(run_dir / "metrics.json")
    out.update({k: float(v) for k, v in (doc.get("headline") or {}).items() if _finite(v)})
    # Every other scalar score of each metric too (e.g. reconstruction.squared_error), so a sweep's
    # report can show any of them, not only the headline ones.
    for metric, res in (doc.get("results") or {}).items():
        scores = res.get("scores") if isinstance(res, dict) else None
        if isinstance(scores, dict):
            for k, v in scores.items():
                if _finite(v):
                    out.setdefault(f"{metric}.{k}", float(v))
    summary = read_json(run_dir / "summary.json")
    for k, v in (summary.get("final") or {}).items():
        if k not in ("step", "epoch", "phase") and _finite(v):
            out[f"loss.{k}"] = float(v)
    if isinstance(summary.get("seconds"), (int, float)):
        out["train.seconds"] = float(summary["seconds"])
    return out, [f for f in doc.get("figures") or [] if isinstance(f, str)]


def _strip(config: dict[str, Any], ignore: tuple[str, ...] = ()) -> str:
    """Canonical JSON of a config without ``train.seed`` and the dotted keys/sections in ``ignore``."""
    c = json.loads(json.dumps(config))
    for key in ("train.seed", *ignore):
        *path, last = key.split(".")
        node = c
        for part in path:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(last, None)
    return json.dumps(c, sort_keys=True)


def _pair_label(u: str, g: str) -> str:
    """What two configuration labels have in common (``ungated,beta=1`` / ``gated,beta=1`` -> ``beta=1``);
    when nothing (``ungated`` / ``gated``): the pair itself, ``ungated vs gated``."""
    gp = g.split(",")
    common = [p for p in u.split(",") if p in gp]
    return ",".join(common) if common else f"{u} vs {g}"


def _only(label: str, common: str) -> str:
    """The parts of ``label`` not in ``common`` (what sets it apart in its comparison)."""
    shared = set(common.split(","))
    return ",".join(p for p in label.split(",") if p not in shared) or label


def compared(c: Comparison) -> str:
    """What a comparison compares, each thing said once: ``beta=1: ungated vs gated``, or
    ``ungated vs gated`` when the two configurations differ in nothing else."""
    pair = f"{c.ungated.label} vs {c.gated.label}"
    if c.label == pair:
        return pair
    return f"{c.label}: {_only(c.ungated.label, c.label)} vs {_only(c.gated.label, c.label)}"


def _stats(values: list[float]) -> tuple[float, float, int]:
    n = len(values)
    if n == 0:
        return (math.nan, math.nan, 0)
    a = np.asarray(values, dtype=np.float64)
    return (float(a.mean()), float(a.std(ddof=1)) if n > 1 else math.nan, n)


def _welch(a: list[float], b: list[float]) -> tuple[float | None, float | None]:
    if len(a) < 2 or len(b) < 2:
        return None, None
    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.ttest_ind(np.asarray(b, float), np.asarray(a, float), equal_var=False)
    t, p = float(res.statistic), float(res.pvalue)
    return (t if math.isfinite(t) else None, p if math.isfinite(p) else None)


def _tests(
    first: ConfigRow, second: ConfigRow, found: list[str], names: tuple[str, str]
) -> dict[str, dict[str, float | int | None]]:
    """Welch's t-test of ``second`` against ``first`` for every score either has: each one's mean,
    std and n under the key prefixes ``names`` (``""``: no prefix), ``difference`` (second - first),
    ``t`` and ``p_value``."""
    tests = {}
    for s in found:
        a = [r.scores[s] for r in first.runs if s in r.scores]
        b = [r.scores[s] for r in second.runs if s in r.scores]
        if not a and not b:
            continue
        t, p = _welch(a, b)
        entry: dict[str, float | int | None] = {}
        for name, row in zip(names, (first, second), strict=True):
            mean, std, n = row.stats[s]
            prefix = f"{name}_" if name else ""
            entry.update({f"{prefix}mean": mean, f"{prefix}std": std, f"{prefix}n": n})
        _, _, n1 = first.stats[s]
        _, _, n2 = second.stats[s]
        entry.update(difference=second.stats[s][0] - first.stats[s][0] if n1 and n2 else math.nan, t=t, p_value=p)
        tests[s] = entry
    return tests


def collect(sweep_dir: str | os.PathLike, columns: list[str] | None = None, reference: str | None = None) -> Collected:
    """Read every run of a sweep and aggregate it (see the module docstring).

    ``columns``: the scores the tables show (default: the sweep file's ``report.metrics``, else
    :data:`DEFAULT_COLUMNS` present in the results, else every score found). A run that is not
    done contributes the scores it has (none, usually) and shows up in the run table with its state.
    ``reference``: a configuration's label (default: the sweep file's ``report.reference``); every
    other configuration is compared with it by Welch's t-test (``Collected.against``). An unknown
    label is a one-line error naming the configurations.
    """
    d = Path(sweep_dir)
    manifest = read_manifest(d)
    runs: list[RunRecord] = []
    for e in manifest["runs"]:
        rd = run_dir_of(d, e)
        info = inspect_run(rd, e)
        scores, figures = _scores(rd) if info["state"] == "done" else ({}, [])
        runs.append(
            RunRecord(
                e["id"],
                e["name"],
                e["label"],
                int(e["seed"]),
                info["state"],
                info["error"],
                bool(e["config"].get("gating", {}).get("enabled", False)),
                e.get("params") or {},
                e["config"],
                scores,
                rd,
                figures,
            )
        )
    groups: dict[str, list[RunRecord]] = {}
    for r in runs:
        groups.setdefault(_strip(r.config), []).append(r)
    found = sorted({k for r in runs for k in r.scores})
    rows = []
    for key, members in groups.items():
        members.sort(key=lambda r: r.seed)
        stats = {s: _stats([r.scores[s] for r in members if s in r.scores]) for s in found}
        rows.append(ConfigRow(key, members[0].label, members[0].gated, members[0].params, members, stats))
    comparisons = []
    report = manifest.get("report") or {}
    ignore = tuple(report.get("compare_ignore") or ("gating",))
    by_pair: dict[str, list[ConfigRow]] = {}
    for row in rows:
        by_pair.setdefault(_strip(row.runs[0].config, ignore), []).append(row)
    for members in by_pair.values():
        for u in (m for m in members if not m.gated):
            for g in (m for m in members if m.gated):
                tests = _tests(u, g, found, ("ungated", "gated"))
                comparisons.append(Comparison(_pair_label(u.label, g.label), u, g, tests))
    if columns is None:
        wanted = report.get("metrics")
        columns = list(wanted) if wanted else [c for c in DEFAULT_COLUMNS if c in found] or list(found)
    for row in rows:  # a column no run has yet (a sweep in progress) shows "-"
        for c in columns:
            row.stats.setdefault(c, (math.nan, math.nan, 0))
    reference = reference or report.get("reference")
    against = []
    if reference:
        refs = [row for row in rows if row.label == reference]
        if not refs:
            labels = ", ".join(row.label for row in rows)
            raise ConfigError(f"report reference '{reference}' is not a configuration of this sweep ({labels})")
        against = [
            Against(refs[0], row, _tests(refs[0], row, found, ("reference", ""))) for row in rows if row is not refs[0]
        ]
    col = Collected(str(manifest.get("name")), d, runs, rows, comparisons, found, list(columns))
    col.against, col.reference = against, reference
    return col


# --------------------------------------------------------------------------- formatting
def fmt(value: float | int | None, digits: int = 3) -> str:
    """A number for a table: ``-`` for missing, 3 decimals below 100, fewer above."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, int):
        return str(value)
    if abs(value) >= 1000:
        return f"{value:.0f}"
    if abs(value) >= 100:
        return f"{value:.1f}"
    return f"{value:.{digits}f}"


def fmt_p(p: float | None) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def mean_std(stats: tuple[float, float, int]) -> str:
    m, s, n = stats
    if n == 0:
        return "-"
    return fmt(m) if n == 1 else f"{fmt(m)} ± {fmt(s)}"


def _csv_value(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(",", ":"))
    return v


def write_csv(col: Collected, out_dir: str | os.PathLike) -> list[Path]:
    """``runs.csv`` (one row per run), ``configurations.csv`` (mean, std, n per score) and
    ``comparisons.csv`` (one row per comparison and score) in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    params = sorted({k for r in col.runs for k in r.params})

    def write(name: str, header: list[str], rows: list[list[Any]]) -> None:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        for row in rows:
            w.writerow([_csv_value(v) for v in row])
        tmp = out / f".{name}.tmp"
        tmp.write_text(buf.getvalue(), encoding="utf-8")
        os.replace(tmp, out / name)
        written.append(out / name)

    write(
        "runs.csv",
        ["id", "name", "configuration", "seed", "gated", "state", "error", *params, *col.scores],
        [
            [
                r.id,
                r.name,
                r.label,
                r.seed,
                r.gated,
                r.state,
                r.error,
                *[r.params.get(p) for p in params],
                *[r.scores.get(s) for s in col.scores],
            ]
            for r in col.runs
        ],
    )
    write(
        "configurations.csv",
        [
            "configuration",
            "gated",
            "runs",
            "done",
            *params,
            *[f"{s}.{x}" for s in col.scores for x in ("mean", "std", "n")],
        ],
        [
            [
                row.label,
                row.gated,
                len(row.runs),
                row.n_done,
                *[row.params.get(p) for p in params],
                *[v for s in col.scores for v in row.stats[s]],
            ]
            for row in col.rows
        ],
    )
    keys = [
        "ungated_mean",
        "ungated_std",
        "ungated_n",
        "gated_mean",
        "gated_std",
        "gated_n",
        "difference",
        "t",
        "p_value",
    ]
    write(
        "comparisons.csv",
        ["comparison", "ungated", "gated", "score", *keys],
        [
            [c.label, c.ungated.label, c.gated.label, s, *[t[k] for k in keys]]
            for c in col.comparisons
            for s, t in c.tests.items()
        ],
    )
    if col.against:
        akeys = ["reference_mean", "reference_std", "reference_n", "mean", "std", "n", "difference", "t", "p_value"]
        write(
            "against.csv",
            ["configuration", "reference", "score", *akeys],
            [
                [a.row.label, a.reference.label, s, *[t[k] for k in akeys]]
                for a in col.against
                for s, t in a.tests.items()
            ],
        )
    return written


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _welch_rows(
    items: Sequence[Any], columns: Sequence[str], label: Callable[[Any], str], first: str, second: str
) -> list[list[str]]:
    """The Markdown rows of a Welch-test section: per item and score with a test, its label, the
    score, the two groups as mean +- std (n) (keys ``first`` + ``mean``/``std``/``n``, then
    ``second`` + ...), the difference and p."""

    def group(t: dict[str, Any], prefix: str) -> str:
        return f"{mean_std((t[prefix + 'mean'], t[prefix + 'std'], t[prefix + 'n']))} (n={t[prefix + 'n']})"

    rows = []
    for item in items:
        for s in columns:
            t = item.tests.get(s)
            if t is not None:
                rows.append(
                    [label(item), s, group(t, first), group(t, second), fmt(t["difference"]), fmt_p(t["p_value"])]
                )
    return rows


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(col: Collected) -> str:
    """The report as Markdown: status, the gated vs un-gated comparison, the configurations, failures."""
    counts = col.counts
    lines = [
        f"# Sweep {col.name}",
        "",
        f"{len(col.runs)} runs in {len(col.rows)} configurations: "
        + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        + ".",
        "Scores are mean ± standard deviation over seeds (n = runs with the score).",
    ]
    if col.comparisons:
        lines += [
            "",
            "## Gated vs un-gated",
            "",
            "Welch's t-test (two-sided) of gated against un-gated runs of the same configuration; "
            "difference = gated - un-gated.",
            "",
        ]
        rows = _welch_rows(col.comparisons, col.columns, lambda c: c.label, "ungated_", "gated_")
        if rows:
            lines.append(_md_table(["configuration", "score", "un-gated", "gated", "difference", "p (Welch)"], rows))
        else:
            lines.append("No scores yet: no run of the compared configurations is done.")
        lines += [
            "",
            "Configurations compared: " + "; ".join(compared(c) for c in col.comparisons) + ".",
        ]
    if col.against:
        lines += [
            "",
            f"## Against {col.reference}",
            "",
            f"Welch's t-test (two-sided) of each configuration against {col.reference}; "
            f"difference = configuration - {col.reference}.",
            "",
        ]
        rows = _welch_rows(col.against, col.columns, lambda a: a.row.label, "", "reference_")
        lines.append(
            _md_table(
                ["configuration", "score", "configuration's", col.reference or "", "difference", "p (Welch)"], rows
            )
            if rows
            else "No scores yet."
        )
    lines += ["", "## Configurations", ""]
    header = ["configuration", "gated", "n", *col.columns]
    rows = [
        [
            row.label,
            "yes" if row.gated else "no",
            f"{row.n_done}/{len(row.runs)}",
            *[mean_std(row.stats[s]) for s in col.columns],
        ]
        for row in col.rows
    ]
    lines.append(_md_table(header, rows))
    bad = [r for r in col.runs if r.state != "done"]
    if bad:
        lines += ["", "## Runs not done", ""]
        lines.append(_md_table(["run", "id", "state", "error"], [[r.name, r.id, r.state, r.error or ""] for r in bad]))
    others = [s for s in col.scores if s not in col.columns]
    if others:
        lines += ["", f"Other scores (in the CSV files): {', '.join(others)}."]
    return "\n".join(lines) + "\n"
