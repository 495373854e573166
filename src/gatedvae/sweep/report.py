"""The sweep report: CSV, Markdown and a self-contained HTML page.

:func:`write_report` writes into ``SWEEP_DIR/report/`` (or another directory):

* ``runs.csv``, ``configurations.csv``, ``comparisons.csv`` and ``report.md``
  (:mod:`gatedvae.sweep.collect`);
* ``report.html``: one file that opens from disk with no server and no network: inline CSS, no
  script, every figure embedded as a base64 ``data:`` URI. It holds the gated vs un-gated
  comparison (Welch's t-test), the configurations table (mean ± std over seeds), the figures of
  one run per configuration (the lowest finished seed: Hinton diagrams of the DCI importance
  matrix as in the Gated-VAE paper's Figure 3, ``000_fc03c6fb001bc541.txt``, latent traversals
  and reconstructions), gated and un-gated side by side, and the table of every run with its state.

Every string that reaches the page (names, config values, error messages) goes through
:func:`html.escape`: a config value ``<script>`` is shown as text, never run.
"""

from __future__ import annotations

import base64
import html
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..io import atomic_write_text
from .collect import Collected, ConfigRow, collect, compared, fmt, fmt_p, markdown, mean_std, write_csv

__all__ = ["write_report", "html_report", "FIGURES", "FORMATS"]

#: The figures of a run shown in the HTML report, in order (file name prefixes in RUN/figures/).
FIGURES = ("hinton_dci_lasso", "hinton_dci_random_forest", "hinton_dci_classifier", "traversals", "reconstructions")
FORMATS = ("csv", "md", "html")

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:1400px;\
padding:0 1rem;color:#1d1d1f;background:#fff}
h1{font-size:1.6rem;margin-bottom:.2rem}\
h2{font-size:1.25rem;margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
h3{font-size:1.05rem;margin:.6rem 0 .3rem}.meta{color:#555;margin-top:0}nav a{margin-right:1rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.86rem}\
th,td{border:1px solid #d0d0d0;padding:.25rem .5rem;text-align:right;vertical-align:top}
td:not(.l):not(.err){white-space:nowrap}
th{background:#f3f3f3;position:sticky;top:0}td.l,th.l{text-align:left}tr:nth-child(even) td{background:#fafafa}
.sig{font-weight:700}.state-done{color:#1a7f37}.state-failed{color:#b42318;font-weight:600}\
.state-partial,.state-running,.state-trained{color:#9a6700}
.pair{display:flex;flex-wrap:wrap;gap:1.2rem;margin-bottom:1.5rem}\
.config{flex:1 1 560px;border:1px solid #e3e3e3;border-radius:6px;padding:.6rem .8rem}
figure{margin:.4rem 0}figure img{max-width:100%;height:auto;border:1px solid #eee}figcaption{font-size:.8rem;color:#555}
.params{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.8rem;color:#333;white-space:pre-wrap;word-break:break-all}
.err{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.8rem;text-align:left;white-space:pre-wrap}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


def _table(header: list[str], rows: Iterable[list[tuple[str, str]]], cls: str, left: int = 1) -> str:
    """rows: cells as (already escaped html, css class)."""
    out = [f'<table class="{cls}"><thead><tr>']
    out += [f'<th class="{"l" if i < left else ""}">{_e(h)}</th>' for i, h in enumerate(header)]
    out.append("</tr></thead><tbody>")
    for row in rows:
        out.append("<tr>" + "".join(f'<td class="{c}">{h}</td>' for h, c in row) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _img(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{_e(caption)}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _caption(stem: str) -> str:
    if stem.startswith("hinton_"):
        what = stem[len("hinton_") :]
        if what.endswith("_partitions"):
            return f"Hinton diagram: {what[: -len('_partitions')]} importance, partitions x factors"
        return f"Hinton diagram: {what} importance, latents x factors"
    return {"traversals": "latent traversals", "reconstructions": "images and reconstructions"}.get(stem, stem)


def _arm_title(row: ConfigRow) -> str:
    """The configuration's label, with ``(gated)`` / ``(un-gated)`` unless the label says it already
    (``gated``, ``ungated,beta=4``, a variant ``gated_vae``)."""
    if "gated" in row.label.lower():
        return row.label
    return f"{row.label} ({'gated' if row.gated else 'un-gated'})"


def _figure_block(row: ConfigRow) -> str:
    rep = next((r for r in row.runs if r.state == "done" and r.figures), None)
    head = f'<div class="config"><h3>{_e(_arm_title(row))}</h3>'
    if rep is None:
        return head + "<p>No finished run with figures.</p></div>"
    parts = [head, f'<p class="meta">run {_e(rep.name)} ({_e(rep.id)})</p>']
    available = {Path(f).stem: rep.run_dir / f for f in rep.figures}
    for prefix in FIGURES:
        for stem in sorted(s for s in available if s == prefix or s.startswith(prefix + "_")):
            path = available[stem]
            if path.is_file():
                parts.append(_img(path, _caption(stem)))
    parts.append("</div>")
    return "".join(parts)


def html_report(col: Collected, figures: bool = True) -> str:
    """The self-contained HTML page of a collected sweep (see the module docstring)."""
    counts = col.counts
    title = f"Sweep {col.name}"
    out = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="meta">{len(col.runs)} runs in {len(col.rows)} configurations: '
        + _e(", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
        + f". Generated {_e(time.strftime('%Y-%m-%d %H:%M'))} from {_e(col.sweep_dir)}. "
        "Scores are mean ± standard deviation over seeds.</p>",
        '<nav><a href="#comparison">gated vs un-gated</a><a href="#configurations">configurations</a>'
        + ('<a href="#figures">figures</a>' if figures else "")
        + '<a href="#runs">runs</a></nav>',
    ]
    # Comparison.
    out.append('<h2 id="comparison">Gated vs un-gated</h2>')
    if col.comparisons:
        out.append(
            "<p>Welch's t-test (two-sided) of the gated runs against the un-gated runs of the same "
            "configuration; difference = gated - un-gated; p &lt; 0.05 in bold.</p>"
        )
        rows = []
        for c in col.comparisons:
            for s in col.columns:
                t = c.tests.get(s)
                if t is None:
                    continue
                sig = "sig" if t["p_value"] is not None and t["p_value"] < 0.05 else ""
                rows.append(
                    [
                        (_e(c.label), "l"),
                        (_e(s), "l"),
                        (_e(f"{mean_std((t['ungated_mean'], t['ungated_std'], t['ungated_n']))}"), ""),
                        (_e(t["ungated_n"]), ""),
                        (_e(f"{mean_std((t['gated_mean'], t['gated_std'], t['gated_n']))}"), ""),
                        (_e(t["gated_n"]), ""),
                        (_e(fmt(t["difference"])), sig),
                        (_e(fmt_p(t["p_value"])), sig),
                    ]
                )
        if rows:
            out.append(
                _table(
                    ["configuration", "score", "un-gated", "n", "gated", "n", "difference", "p (Welch)"],
                    rows,
                    "comparison",
                    left=2,
                )
            )
        else:
            out.append("<p>No scores yet: no run of the compared configurations is done.</p>")
        out.append("<p>Compared: " + "; ".join(_e(compared(c)) for c in col.comparisons) + ".</p>")
    else:
        out.append("<p>This sweep has no pair of configurations that differ only in gating.</p>")
    # Configurations.
    out.append('<h2 id="configurations">Configurations</h2>')
    rows = [
        [
            (_e(r.label), "l"),
            (_e(_params_text(r.params)), "l params"),
            ("yes" if r.gated else "no", ""),
            (_e(f"{r.n_done}/{len(r.runs)}"), ""),
            *[(_e(mean_std(r.stats[s])), "") for s in col.columns],
        ]
        for r in col.rows
    ]
    out.append(_table(["configuration", "parameters", "gated", "done", *col.columns], rows, "configurations", left=2))
    others = [s for s in col.scores if s not in col.columns]
    if others:
        out.append(f"<p>Other scores (in configurations.csv): {_e(', '.join(others))}.</p>")
    # Figures: pairs side by side, then the rest.
    if figures:
        out.append('<h2 id="figures">Figures</h2><p>One run per configuration (its lowest finished seed).</p>')
        shown: set[str] = set()
        for c in col.comparisons:
            blocks = [row for row in (c.ungated, c.gated) if row.key not in shown]
            if blocks:
                out.append('<div class="pair">' + "".join(_figure_block(r) for r in blocks) + "</div>")
                shown.update(r.key for r in blocks)
        rest = [r for r in col.rows if r.key not in shown]
        for i in range(0, len(rest), 2):
            out.append('<div class="pair">' + "".join(_figure_block(r) for r in rest[i : i + 2]) + "</div>")
    # Runs.
    out.append('<h2 id="runs">Runs</h2>')
    rows = [
        [
            (_e(r.name), "l"),
            (_e(r.id), "l"),
            (_e(r.seed), ""),
            (_e(r.state), f"state-{_e(r.state)}"),
            *[(_e(fmt(r.scores.get(s))), "") for s in col.columns],
            (_e(r.error or ""), "err"),
        ]
        for r in col.runs
    ]
    out.append(_table(["run", "id", "seed", "state", *col.columns, "error"], rows, "runs", left=2))
    out.append("</body></html>\n")
    return "".join(out)


def write_report(
    sweep_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    formats: Iterable[str] = FORMATS,
    columns: list[str] | None = None,
    figures: bool = True,
    reference: str | None = None,
) -> dict[str, Any]:
    """Collect a sweep and write its report files; returns ``{"collected", "files"}``.

    Args:
        sweep_dir: the sweep directory.
        out_dir: where to write (default ``SWEEP_DIR/report``).
        formats: any of ``csv``, ``md``, ``html``.
        columns: the scores the tables show (default: the sweep's ``report.metrics``, else the
            usual headline scores present).
        figures: embed figures in the HTML page.
        reference: compare every configuration with this one (default: the sweep's
            ``report.reference``); Markdown section ``Against ...`` and ``against.csv``.
    """
    formats = [f.strip().lower() for f in formats if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ConfigError(f"unknown report format {', '.join(bad) or '(none)'}; use csv, md, html")
    col = collect(sweep_dir, columns, reference)
    if columns:
        unknown = [c for c in columns if c not in col.scores]
        if unknown and col.scores:
            raise ConfigError(f"no run has the score(s) {', '.join(unknown)}; scores found: {', '.join(col.scores)}")
    out = Path(out_dir) if out_dir is not None else Path(sweep_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    if "csv" in formats:
        files += write_csv(col, out)
    if "md" in formats:
        atomic_write_text(out / "report.md", markdown(col))
        files.append(out / "report.md")
    if "html" in formats:
        atomic_write_text(out / "report.html", html_report(col, figures=figures))
        files.append(out / "report.html")
    return {"collected": col, "files": files}
