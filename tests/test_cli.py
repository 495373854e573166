"""Command line: help, user errors as one line with exit status 2, data commands."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from gatedvae.cli import main


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "gatedvae.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_help_lists_commands():
    r = run_cli("--help")
    assert r.returncode == 0
    for cmd in ("quickstart", "data"):
        assert cmd in r.stdout


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert "gatedvae" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, match",
    [
        (["data", "describe", "ellipses", "sise=10"], "did you mean 'size'"),
        (["data", "describe", "ellipses", "size=ten"], "size: expected int"),
        (["data", "describe", "svhn"], "not one of"),
        (["data", "describe", "dsprites_file"], "data.path is empty"),
        (["data", "describe", "dsprites_file", "path=/nonexistent/d.npz"], "/nonexistent/d.npz"),
        (["data", "describe", "ellipses", "stride.x=2"], "full-grid"),
    ],
)
def test_user_errors_are_one_line_exit_2(args, match, capsys):
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert match in err
    assert "Traceback" not in err


def test_user_error_in_subprocess_has_no_traceback():
    r = run_cli("data", "describe", "ellipses", "corelation=0.3")
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: unknown config key") and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_data_describe_and_preview(tmp_path, capsys):
    assert main(["data", "describe", "ellipses", "size=500", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "500 images" in out and "factor x" in out
    png = tmp_path / "p.png"
    assert main(["data", "preview", "ellipses", "size=500", "--out", str(png), "--quiet"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_command_prints_usage():
    r = run_cli()
    assert r.returncode == 2 and "usage" in r.stderr.lower()


def test_import_shortens_openmp_spin_wait_unless_the_user_set_it():
    """``import gatedvae`` sets libgomp's GOMP_SPINCOUNT to 1000 when unset (a 2-thread step under
    one competing process: 1.7x faster, docs/performance.md) and leaves a user's value alone."""
    code = "import os, gatedvae; print(os.environ['GOMP_SPINCOUNT'])"
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1000"
    out = subprocess.run(
        [sys.executable, "-c", code], env={**env, "GOMP_SPINCOUNT": "42"}, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "42"


@pytest.mark.parametrize("after", [False, True], ids=["overrides-first", "overrides-after-flags"])
def test_overrides_go_before_or_after_flags(tmp_path, capsys, after):
    """``gatedvae train CFG --run-dir r data.size=300`` reads the override as it reads it before
    ``--run-dir`` (it was "unrecognized arguments" with the top-level usage line)."""
    from conftest import tiny_config
    from gatedvae.config import load_config, save_config

    cfg = tmp_path / "cfg.yaml"
    save_config(tiny_config(train={"steps": 40}), cfg)
    run, overrides = tmp_path / "run", ["train.steps=3", "data.size=300"]
    flags = ["--run-dir", str(run), "--quiet", "--no-tensorboard"]
    argv = ["train", str(cfg), *flags, *overrides] if after else ["train", str(cfg), *overrides, *flags]
    assert main(argv) == 0, capsys.readouterr().err
    saved = load_config(run / "config.yaml")
    assert saved.train.steps == 3 and saved.data.size == 300
    data = ["data", "describe", "ellipses", *(["--quiet", "size=500"] if after else ["size=500", "--quiet"])]
    assert main(data) == 0 and "500 images" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:  # a flag that does not exist is still refused
        main(["train", str(cfg), "--run-dir", str(tmp_path / "r2"), "--bogus", "train.steps=3"])
    assert exc.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_warnings_of_a_command_are_one_line(monkeypatch, capsys):
    """A warning raised inside a command (a cluster count, label rows without images, a collapsed
    partition) is printed as 'warning: ...' on one line, without Python's source line."""
    import warnings

    from gatedvae import cli

    def noisy(args):
        message = "2999 clusters of 3000 images hold 1.0 images each;\n use about 38-60"
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        return 0

    monkeypatch.setattr(cli, "cmd_list_models", noisy)
    before = warnings.showwarning
    assert cli.main(["list", "models"]) == 0
    err = capsys.readouterr().err
    assert err == "warning: 2999 clusters of 3000 images hold 1.0 images each; use about 38-60\n"
    assert warnings.showwarning is before  # restored for the caller


def test_an_unknown_metric_without_a_near_name_is_still_punctuated():
    from gatedvae.errors import ConfigError
    from gatedvae.evaluation.suite import resolve_metrics

    with pytest.raises(ConfigError, match=r"^unknown metric 'qqqqqq'; metrics: dci_lasso, "):
        resolve_metrics("qqqqqq")
