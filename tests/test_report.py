"""Sweep reports: aggregation (mean, std, n over seeds; Welch's t-test against scipy), CSV and
Markdown, and the self-contained HTML page, checked in a real headless Chromium when one is
installed (``apt-get install chromium chromium-driver``; Selenium from the dev extra)."""

from __future__ import annotations

import csv
import html
import json
import math
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from gatedvae.cli import main
from gatedvae.errors import ConfigError
from gatedvae.sweep import collect, plan_sweep, read_manifest, run_sweep, write_manifest, write_report
from gatedvae.sweep.collect import Comparison, ConfigRow, compared
from gatedvae.sweep.report import _arm_title
from test_sweep import tiny_base, write_spec

INJECT = "<script>window.__pwned = 1; document.title = 'pwned';</script>"
INJECT_IMG = '<img src=x onerror="window.__pwned = 2">'


def _png(path: Path, seed: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, size=(24, 32, 3), dtype=np.uint8)).save(path)


def fake_sweep(root: Path, scores: dict[tuple[bool, int], dict[str, float]], missing: tuple = ()) -> Path:
    """A planned sweep (un-gated/gated x seeds) whose run directories are written by hand with
    the given headline scores, as ``gatedvae evaluate`` writes them. ``missing``: (gated, seed) left pending."""
    seeds = sorted({s for _, s in scores} | {s for _, s in missing})
    spec = {
        "name": "fake",
        "base": tiny_base(),
        "grid": {"gating.enabled": [False, True]},
        "seeds": seeds,
        "evaluate": {"metrics": ["mig", "dci_lasso"], "preset": "fast", "figures": True},
    }
    sweep_dir = root / "sw"
    write_manifest(plan_sweep(write_spec(root / "fake.yaml", spec)), sweep_dir)
    for e in read_manifest(sweep_dir)["runs"]:
        key = (e["config"]["gating"]["enabled"], e["seed"])
        if key not in scores:
            continue
        run = sweep_dir / "runs" / e["id"]
        (run / "figures").mkdir(parents=True)
        _png(run / "figures" / "hinton_dci_lasso.png", e["seed"])
        _png(run / "figures" / "traversals.png", e["seed"] + 100)
        total = e["config"]["train"]["steps"]
        (run / "status.json").write_text(json.dumps({"status": "finished", "step": total, "total_steps": total}))
        (run / "summary.json").write_text(
            json.dumps({"final": {"step": total, "recon": 100.0 + e["seed"], "kl": 2.0}, "seconds": 1.5})
        )
        (run / "metrics.json").write_text(
            json.dumps(
                {
                    "preset": "fast",
                    "seed": 0,
                    "checkpoint_step": total,
                    "metrics": ["dci_lasso", "mig"],
                    "figures": ["figures/hinton_dci_lasso.png", "figures/traversals.png"],
                    "headline": scores[key],
                }
            )
        )
    return sweep_dir


SCORES = {
    (False, 0): {"mig.mig": 0.10, "dci_lasso.disentanglement": 0.30},
    (False, 1): {"mig.mig": 0.14, "dci_lasso.disentanglement": 0.25},
    (False, 2): {"mig.mig": 0.12, "dci_lasso.disentanglement": 0.35},
    (True, 0): {"mig.mig": 0.40, "dci_lasso.disentanglement": 0.80},
    (True, 1): {"mig.mig": 0.35, "dci_lasso.disentanglement": 0.70},
    (True, 2): {"mig.mig": 0.47, "dci_lasso.disentanglement": 0.90},
}


# --------------------------------------------------------------------------- aggregation
def test_configuration_rows_hold_mean_std_n_over_seeds(tmp_path):
    col = collect(fake_sweep(tmp_path, SCORES))
    assert len(col.runs) == 6 and len(col.rows) == 2
    for row in col.rows:
        for score in ("mig.mig", "dci_lasso.disentanglement"):
            values = [SCORES[(row.gated, s)][score] for s in range(3)]
            mean, std, n = row.stats[score]
            assert n == 3
            assert mean == pytest.approx(np.mean(values), abs=1e-12)
            assert std == pytest.approx(np.std(values, ddof=1), abs=1e-12)
    assert col.rows[0].label == "ungated" and col.rows[1].label == "gated"
    assert col.rows[0].stats["loss.recon"][0] == pytest.approx(101.0)


def test_scalar_scores_beyond_the_headline_are_collected(tmp_path):
    """Any finite scalar under results[metric]["scores"] is a score (reconstruction.squared_error),
    lists and non-finite values are not, and the headline's value wins where both hold one."""
    sweep_dir = fake_sweep(tmp_path, SCORES)
    for i, run in enumerate(sorted((sweep_dir / "runs").iterdir())):
        doc = json.loads((run / "metrics.json").read_text())
        doc["results"] = {
            "reconstruction": {"scores": {"squared_error": 10.0 + i, "nll_std": float("nan"), "per_image": [1.0, 2.0]}},
            "mig": {"scores": {"mig": -1.0}},
        }
        (run / "metrics.json").write_text(json.dumps(doc))
    col = collect(sweep_dir)
    for row in col.rows:
        assert row.stats["reconstruction.squared_error"][2] == 3
        assert "reconstruction.nll_std" not in row.stats and "reconstruction.per_image" not in row.stats
        assert row.stats["mig.mig"][0] == pytest.approx(np.mean([SCORES[(row.gated, s)]["mig.mig"] for s in range(3)]))


def test_gated_vs_ungated_welch_test_matches_scipy(tmp_path):
    col = collect(fake_sweep(tmp_path, SCORES))
    (c,) = col.comparisons
    assert c.ungated.gated is False and c.gated.gated is True
    for score in ("mig.mig", "dci_lasso.disentanglement"):
        a = [SCORES[(False, s)][score] for s in range(3)]
        b = [SCORES[(True, s)][score] for s in range(3)]
        ref = stats.ttest_ind(b, a, equal_var=False)
        t = c.tests[score]
        assert t["t"] == pytest.approx(ref.statistic) and t["p_value"] == pytest.approx(ref.pvalue)
        # Welch's statistic written out: (mean_b - mean_a) / sqrt(var_a/n_a + var_b/n_b).
        assert t["t"] == pytest.approx(
            (np.mean(b) - np.mean(a)) / math.sqrt(np.var(a, ddof=1) / 3 + np.var(b, ddof=1) / 3)
        )
        assert t["difference"] == pytest.approx(np.mean(b) - np.mean(a))
    assert c.tests["dci_lasso.disentanglement"]["p_value"] < 0.01


def test_one_seed_has_no_std_and_no_p_value_and_pending_runs_are_listed(tmp_path):
    scores = {(False, 0): SCORES[(False, 0)], (True, 0): SCORES[(True, 0)], (True, 1): SCORES[(True, 1)]}
    col = collect(fake_sweep(tmp_path, scores, missing=((False, 1),)))
    un = col.rows[0]
    assert un.stats["mig.mig"][2] == 1 and math.isnan(un.stats["mig.mig"][1])
    assert col.comparisons[0].tests["mig.mig"]["p_value"] is None
    assert col.counts == {"done": 3, "pending": 1}
    md = (write_report(col.sweep_dir, formats=["md"])["files"][0]).read_text()
    assert "## Runs not done" in md and "ungated,seed=1" in md and "pending" in md
    assert "| ungated | no | 1/2 | 0.300 | 0.100 |" in md  # n = 1: the value without "±"


def test_csv_files_round_trip_the_numbers(tmp_path):
    sweep_dir = fake_sweep(tmp_path, SCORES)
    files = write_report(sweep_dir, formats=["csv"])["files"]
    assert [f.name for f in files] == ["runs.csv", "configurations.csv", "comparisons.csv"]
    runs = list(csv.DictReader(open(sweep_dir / "report" / "runs.csv")))
    assert len(runs) == 6 and {r["state"] for r in runs} == {"done"}
    confs = {r["configuration"]: r for r in csv.DictReader(open(sweep_dir / "report" / "configurations.csv"))}
    for label, gated in (("ungated", False), ("gated", True)):
        values = [float(r["mig.mig"]) for r in runs if r["configuration"] == label]
        assert float(confs[label]["mig.mig.mean"]) == pytest.approx(np.mean(values))
        assert float(confs[label]["mig.mig.std"]) == pytest.approx(np.std(values, ddof=1))
        assert confs[label]["mig.mig.n"] == "3" and confs[label]["gated"] == str(gated)
    comp = {r["score"]: r for r in csv.DictReader(open(sweep_dir / "report" / "comparisons.csv"))}
    a = [float(r["mig.mig"]) for r in runs if r["configuration"] == "ungated"]
    b = [float(r["mig.mig"]) for r in runs if r["configuration"] == "gated"]
    assert float(comp["mig.mig"]["p_value"]) == pytest.approx(stats.ttest_ind(b, a, equal_var=False).pvalue)


def test_comparison_labels_say_what_differs_once(tmp_path):
    """A sweep over gating alone: "Compared: ungated vs gated", not "ungated: ungated vs gated", and a
    figure headed "gated", not "gated (gated)"; with another axis the shared part is said once."""
    sweep_dir = fake_sweep(tmp_path, SCORES)
    write_report(sweep_dir, formats=["md", "html", "csv"])
    md = (sweep_dir / "report" / "report.md").read_text()
    page = (sweep_dir / "report" / "report.html").read_text()
    assert "Configurations compared: ungated vs gated." in md and "ungated: ungated" not in md
    assert "| ungated vs gated | mig.mig |" in md  # the comparison's row names the pair
    assert "<p>Compared: ungated vs gated.</p>" in page and "ungated: ungated" not in page
    assert "<h3>gated</h3>" in page and "<h3>ungated</h3>" in page and "(gated)" not in page
    comp = list(csv.DictReader(open(sweep_dir / "report" / "comparisons.csv")))
    assert {r["comparison"] for r in comp} == {"ungated vs gated"}

    def row(label, gated):
        return ConfigRow(label, label, gated, {}, [], {})

    two = Comparison("beta=4", row("ungated,beta=4", False), row("gated,beta=4", True), {})
    assert compared(two) == "beta=4: ungated vs gated"
    assert _arm_title(row("vae", False)) == "vae (un-gated)" and _arm_title(row("gated_vae", True)) == "gated_vae"
    assert _arm_title(row("beta=4", True)) == "beta=4 (gated)"


def test_report_columns_and_formats_are_checked(tmp_path, capsys):
    sweep_dir = fake_sweep(tmp_path, SCORES)
    with pytest.raises(ConfigError, match="no run has the score"):
        write_report(sweep_dir, columns=["mig.migg"])
    with pytest.raises(ConfigError, match="unknown report format pdf"):
        write_report(sweep_dir, formats=["pdf"])
    assert main(["report", str(sweep_dir), "--metrics", "mig.mig", "--format", "md", "--out", str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert (
        "| ungated | no | 3/3 | 0.120 ± 0.020 |" in md
        and "dci_lasso.disentanglement" not in md.split("## Configurations")[1].split("\n\n")[1]
    )


def test_html_escapes_every_string(tmp_path):
    sweep_dir = fake_sweep(tmp_path, SCORES)
    manifest = json.loads((sweep_dir / "manifest.json").read_text())
    manifest["name"] = INJECT
    for e in manifest["runs"]:
        e["label"] = INJECT_IMG + e["label"]
        e["name"] = INJECT + e["name"]
        e["params"]["data.labels"] = INJECT
    (sweep_dir / "manifest.json").write_text(json.dumps(manifest))
    page = (write_report(sweep_dir, formats=["html"])["files"][0]).read_text()
    assert "<script" not in page.lower() and "onerror=" not in page.replace("onerror=&quot;", "")
    assert html.escape(INJECT) in page and html.escape(INJECT_IMG) in page
    assert not re.search(r"""src=["'](?!data:image/png;base64,)""", page)  # nothing fetched: data URIs only


# --------------------------------------------------------------------------- a real sweep and a real browser
@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """Two trained runs (un-gated and gated) with figures; a variant name and a config value that
    carry a script. (Statistics over seeds are pinned on the hand-written sweeps above.)"""
    root = tmp_path_factory.mktemp("report")
    spec = {
        "name": "report",
        "base": tiny_base(steps=20),
        "variants": [{"name": INJECT}],
        "grid": {"gating.enabled": [False, True], "data.labels": [INJECT_IMG]},
        "seeds": 1,
        "evaluate": {"metrics": ["dci_lasso", "mig"], "preset": "fast", "figures": True},
    }
    sweep_dir = root / "sw"
    assert main(["sweep", "plan", str(write_spec(root / "r.yaml", spec)), "--out", str(sweep_dir)]) == 0
    res = run_sweep(sweep_dir, workers=1, progress=False, tensorboard=False)
    assert res["done"] == 2
    assert main(["report", str(sweep_dir)]) == 0
    return sweep_dir


def test_report_command_writes_csv_markdown_html(real):
    out = real / "report"
    for name in ("runs.csv", "configurations.csv", "comparisons.csv", "report.md", "report.html"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    md = (out / "report.md").read_text()
    assert "## Gated vs un-gated" in md and "dci_lasso.disentanglement" in md and " ± " in md
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 4 and "<script" not in page.lower()
    assert "Hinton diagram" in page and "latent traversals" in page


def _browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (it is in the dev extra: pip install -e '.[dev]')")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("no Chromium: install it with apt-get install chromium chromium-driver (.ci/run does)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    profile = tempfile.mkdtemp(prefix="gatedvae-chromium-")
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
    ):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts), profile


def test_html_report_in_headless_chromium(real):
    drv, profile = _browser()
    try:
        drv.get((real / "report" / "report.html").resolve().as_uri())
        assert drv.execute_script("return document.readyState") == "complete"
        assert drv.title == "Sweep report"
        got = drv.execute_script("""
            const imgs = Array.from(document.images);
            return {
              tables: Array.from(document.querySelectorAll('table')).map(t => [t.className, t.tBodies[0].rows.length,
                       t.getBoundingClientRect().height]),
              images: imgs.length,
              decoded: imgs.filter(i => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0).length,
              external: imgs.filter(i => !i.src.startsWith('data:image/png;base64,')).length,
              scripts: document.scripts.length,
              pwned: window.__pwned === undefined ? null : window.__pwned,
              text: document.body.innerText,
            };""")
        tables = {name: (rows, height) for name, rows, height in got["tables"]}
        assert tables["comparison"][0] >= 4 and tables["configurations"][0] == 2 and tables["runs"][0] == 2
        assert all(height > 0 for _, height in tables.values())  # laid out, visible
        assert got["images"] >= 4 and got["decoded"] == got["images"] and got["external"] == 0
        assert got["scripts"] == 0 and got["pwned"] is None  # the injected markup did not run ...
        assert INJECT in got["text"] and INJECT_IMG in got["text"]  # ... and is shown as text
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_report_of_a_sweep_with_nothing_finished(tmp_path):
    spec = {
        "name": "new",
        "base": tiny_base(),
        "grid": {"gating.enabled": [False, True]},
        "seeds": 2,
        "evaluate": {"metrics": ["mig"], "figures": False},
        "report": {"metrics": ["mig.mig", "dci_lasso.completeness"]},
    }
    sweep_dir = tmp_path / "sw"
    write_manifest(plan_sweep(write_spec(tmp_path / "n.yaml", spec)), sweep_dir)
    files = write_report(sweep_dir)["files"]
    assert len(files) == 5
    md = (sweep_dir / "report" / "report.md").read_text()
    assert "No scores yet" in md and "| ungated | no | 0/2 | - | - |" in md and "4 pending" in md
    page = (sweep_dir / "report" / "report.html").read_text()
    assert "No scores yet" in page and "state-pending" in page


def test_every_configuration_against_a_reference(tmp_path):
    """report.reference / --reference: each other configuration against the named one, Welch's
    t-test as scipy computes it, in the Markdown and against.csv; an unknown name is one line."""
    from scipy import stats

    from gatedvae.errors import ConfigError

    sweep_dir = fake_sweep(tmp_path, SCORES)
    col = collect(sweep_dir, reference="gated")
    (a,) = col.against
    assert a.reference.label == "gated" and a.row.label == "ungated"
    g = [SCORES[(True, s)]["mig.mig"] for s in range(3)]
    u = [SCORES[(False, s)]["mig.mig"] for s in range(3)]
    t = a.tests["mig.mig"]
    assert t["p_value"] == pytest.approx(stats.ttest_ind(u, g, equal_var=False).pvalue)
    assert t["difference"] == pytest.approx(np.mean(u) - np.mean(g))
    res = write_report(sweep_dir, formats=["md", "csv"], reference="gated")
    md = next(f for f in res["files"] if f.suffix == ".md").read_text()
    assert "## Against gated" in md and "| ungated | mig.mig |" in md
    assert any(f.name == "against.csv" for f in res["files"])
    assert collect(sweep_dir).against == []  # none unless asked
    with pytest.raises(
        ConfigError, match=r"report reference 'gate' is not a configuration of this sweep \(ungated, gated\)"
    ):
        collect(sweep_dir, reference="gate")


def test_report_reference_in_a_sweep_file_is_checked():
    from gatedvae.errors import ConfigError
    from gatedvae.sweep.spec import _report_settings

    assert _report_settings({"reference": "gated_vae"}, "s.yaml")["reference"] == "gated_vae"
    assert "reference" not in _report_settings({}, "s.yaml")  # manifests and run ids as before
    with pytest.raises(ConfigError, match="report.reference must name one configuration"):
        _report_settings({"reference": ["a", "b"]}, "s.yaml")
