"""``gatedvae explore``: the explorer's model side and API on a tiny trained run, its server's safety
(loopback, Host check, upload limits, a 4xx for every bad request, nothing written to disk), the
static export, a conditional VAE's labels (against ``model.decode`` with the condition built here),
and the page itself in a real headless Chromium (selenium; ``apt-get install chromium
chromium-driver``). Without Chromium the browser tests skip with a reason, except in CI (the
environment variable ``CI`` is set, as ``.ci/run`` does): there they fail.

The browser tests print the slider -> new image latency they measure (``pytest -s`` shows it); nothing
asserts on it.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import itertools
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_config
from gatedvae.cli import main
from gatedvae.encode import load_run
from gatedvae.errors import ConfigError
from gatedvae.evaluation import evaluate_run
from gatedvae.explore.api import handle
from gatedvae.explore.export import export_page, static_data
from gatedvae.explore.server import make_server
from gatedvae.explore.session import Explorer
from gatedvae.run import condition_vectors, load_trained
from gatedvae.train import train
from gatedvae.viz.diagnostics import swap_codes
from gatedvae.viz.hinton import hinton_squares

#: A partition name that is markup: the page must show it as text, never run it.
INJECT = 'orient<img src=x onerror="window.__pwned=1">'
PARTITIONS = [
    {"name": "position", "size": 2, "factors": ["x", "y"]},
    {"name": "scale", "size": 1, "factors": ["scale"]},
    {"name": INJECT, "size": 1, "factors": ["orientation"]},
]


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with the hash of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """The tiny gated run (40 steps), evaluated with DCI (fast preset, no figures)."""
    path = tmp_path_factory.mktemp("explore") / "run"
    cfg = tiny_config(gating={"partitions": PARTITIONS}, train={"steps": 40, "checkpoint_every": 20})
    train(cfg, path, quiet=True, tensorboard=False)
    evaluate_run(path, metrics=["dci_lasso"], preset="fast", seed=0, progress=False, figures=False, device="cpu")
    return path


@pytest.fixture(scope="module")
def explorer(run) -> Explorer:
    return Explorer(run, device="cpu", seed=0)


@pytest.fixture(scope="module")
def reference(run):
    """The run as ``gatedvae encode`` loads it: the independent side of every comparison."""
    return load_run(run, device="cpu")


def _serve(ex: Explorer, **kw):
    server = make_server(ex, "127.0.0.1", 0, log=io.StringIO(), **kw)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


@pytest.fixture(scope="module")
def server(explorer):
    srv = _serve(explorer, max_upload=200_000)
    yield srv
    srv.shutdown()
    srv.server_close()


def _get(ex: Explorer, path: str, query: str = "", **kw) -> dict:
    resp = handle(ex, kw.pop("method", "GET"), path, query, **kw)
    assert resp.status == 200, resp.body[:300]
    return json.loads(resp.body)


def _png_pixels(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)), dtype=np.float64) / 255.0  # (H, W) or (H, W, 3)


def _data_url_pixels(url: str) -> np.ndarray:
    assert url.startswith("data:image/png;base64,")
    return _png_pixels(base64.b64decode(url.split(",", 1)[1]))


def _codes(z) -> str:
    return ",".join(repr(float(v)) for v in z)


def _png_file(path: Path, size=(90, 70), seed=0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


# --------------------------------------------------------------------------- the model side
def test_layout_groups_factors_and_latent_statistics(explorer, run):
    info = _get(explorer, "/api/info")
    assert [g["name"] for g in info["groups"]] == ["position", "scale", INJECT]
    assert [(g["start"], g["stop"]) for g in info["groups"]] == [(0, 2), (2, 3), (3, 4)]
    assert info["groups"][0]["factors"] == ["x", "y"] and info["gated"] and not info["gan"]
    assert [f["name"] for f in info["dataset"]["factors"]] == ["x", "y", "scale", "orientation"]
    assert info["dataset"]["images"] == 400 and info["step"] == 40 and info["image_shape"] == [1, 64, 64]
    # the aggregate posterior over the seeded sample: spread^2 = Var(mu) + E[sigma^2]
    x = explorer.dataset_images(np.arange(400))
    mu, std = explorer.posterior(x)
    np.testing.assert_allclose([lat["spread"] for lat in info["latents"]], np.sqrt(mu.var(0) + (std**2).mean(0)))
    assert all(lat["lo"] <= -3 and lat["hi"] >= 3 for lat in info["latents"])


def test_image_posterior_and_reconstruction_match_load_run(explorer, reference):
    doc = _get(explorer, "/api/image", "index=17")
    x = explorer.dataset_images(np.array([17]))  # (1, 1, 64, 64) uint8
    mu, lv = reference.encode(x, logvar=True, warn=False)
    np.testing.assert_allclose(doc["mu"], mu[0], atol=1e-6)
    np.testing.assert_allclose(doc["std"], np.exp(0.5 * lv[0]), rtol=1e-5)
    assert np.array_equal(_data_url_pixels(doc["input"]), x[0, 0] / 255.0)
    recon = reference.decode(mu)[0, 0]  # (64, 64)
    assert np.abs(_data_url_pixels(doc["recon"]) - recon).max() <= 0.5 / 255 + 1e-6
    assert doc["factors"].keys() == {"x", "y", "scale", "orientation"} and doc["source"] == "dataset image 17"


def test_decode_and_swap_equal_model_decode_of_the_swapped_codes(explorer, reference):
    a, b = _get(explorer, "/api/image", "index=3"), _get(explorer, "/api/image", "index=250")
    z = np.array(a["mu"])
    resp = handle(explorer, "GET", "/api/decode", f"z={_codes(z)}")
    assert resp.status == 200 and resp.content_type == "image/png"
    assert np.abs(_png_pixels(resp.body) - reference.decode(z[None])[0, 0]).max() <= 0.5 / 255 + 1e-6
    za, zb = np.array(a["mu"]), np.array(b["mu"])
    doc = _get(explorer, "/api/swap", f"a={_codes(za)}&b={_codes(zb)}&groups=scale,position")
    dims = [0, 1, 2]
    want_ab = reference.decode(swap_codes(zb[None], za[None], dims)[0])[0, 0]  # A with B's scale and position
    want_ba = reference.decode(swap_codes(za[None], zb[None], dims)[0])[0, 0]
    assert np.abs(_data_url_pixels(doc["a_from_b"]) - want_ab).max() <= 1 / 255
    assert np.abs(_data_url_pixels(doc["b_from_a"]) - want_ba).max() <= 1 / 255
    assert doc["codes"][0][:3] == list(zb[:3]) and doc["codes"][0][3] == za[3]
    grid = _get(explorer, "/api/swapgrid", f"a={_codes(za)}&b={_codes(zb)}")
    assert [r["group"] for r in grid["rows"]] == ["position", "scale", INJECT]
    for row, dims in zip(grid["rows"], ([0, 1], [2], [3]), strict=True):
        want = reference.decode(swap_codes(zb[None], za[None], dims)[0])[0, 0]
        assert np.abs(_data_url_pixels(row["a_from_b"]) - want).max() <= 1 / 255
    assert np.abs(_data_url_pixels(grid["recon_a"]) - reference.decode(za[None])[0, 0]).max() <= 1 / 255


def test_traversal_rows_sweep_one_latent_over_the_asked_range(explorer, reference):
    item = _get(explorer, "/api/image", "index=5")
    z, std = np.array(item["mu"]), np.array(item["std"])
    doc = _get(explorer, "/api/traverse", f"z={_codes(z)}&span=1.5&unit=aggregate&steps=5")
    assert [r["dim"] for r in doc["rows"]] == [0, 1, 2, 3] and doc["steps"] == 5
    sprite = _data_url_pixels(doc["sprite"])  # (4 * 64, 5 * 64)
    assert sprite.shape == (4 * 64, 5 * 64)
    for r, row in enumerate(doc["rows"]):
        d = row["dim"]
        lo, hi = explorer.agg_mean[d] - 1.5 * explorer.agg_std[d], explorer.agg_mean[d] + 1.5 * explorer.agg_std[d]
        np.testing.assert_allclose(row["values"], np.linspace(lo, hi, 5))
        codes = np.repeat(z[None], 5, axis=0)
        codes[:, d] = row["values"]
        want = reference.decode(codes)[:, 0]  # (5, 64, 64)
        got = sprite[r * 64 : (r + 1) * 64].reshape(64, 5, 64).transpose(1, 0, 2)
        assert np.abs(got - want).max() <= 1 / 255
    image = _get(explorer, "/api/traverse", f"z={_codes(z)}&span=2&unit=image&std={_codes(std)}&steps=3")
    np.testing.assert_allclose(image["rows"][2]["values"], [z[2] - 2 * std[2], z[2], z[2] + 2 * std[2]])
    prior = _get(explorer, "/api/traverse", f"z={_codes(z)}&span=3&unit=prior&steps=3")
    assert prior["rows"][0]["values"] == [-3.0, 0.0, 3.0]


def test_inputs_by_factor_values_random_and_prior_are_seeded(explorer):
    ds = explorer.dataset
    k = int(np.flatnonzero(ds.factors[:, 0] == 2)[0])
    want = ds.factors[k]  # an existing combination
    query = "&".join(f"{n}={c}" for n, c in zip(ds.factor_space.names, want, strict=True))
    doc = _get(explorer, "/api/find", query + "&seed=3")
    assert np.array_equal(ds.factors[doc["index"]], want) and doc["note"].startswith("exact match")
    some = _get(explorer, "/api/find", "x=2&seed=3")
    assert ds.factors[some["index"], 0] == 2
    assert _get(explorer, "/api/find", "x=2&seed=3")["index"] == some["index"]  # seeded
    # 400 ellipses cannot hold all 8^4 combinations: the nearest image, saying what differs
    taken = {tuple(f) for f in ds.factors}
    missing = next(c for c in itertools.product(range(8), repeat=4) if c not in taken)
    names = ds.factor_space.names
    near = _get(explorer, "/api/find", "&".join(f"{n}={c}" for n, c in zip(names, missing, strict=True)))
    assert near["note"].startswith("no image has all these values; nearest differs in")
    assert _get(explorer, "/api/random", "seed=7")["index"] == _get(explorer, "/api/random", "seed=7")["index"]
    p1, p2 = (_get(explorer, "/api/prior", f"group=position&seed={s}") for s in (1, 2))
    assert p1 == _get(explorer, "/api/prior", "group=position&seed=1") and p1["values"] != p2["values"]
    assert p1["start"] == 0 and len(p1["values"]) == 2
    sample = _get(explorer, "/api/sample", "seed=4")
    assert sample["input"] is None and sample["std"] == [0.0] * 4


def test_upload_is_converted_as_encode_converts_a_file(explorer, reference, tmp_path):
    path = _png_file(tmp_path / "photo.png")
    doc = _get(explorer, "/api/upload", method="POST", body=path.read_bytes(), headers={"X-Filename": "photo.png"})
    np.testing.assert_allclose(doc["mu"], reference.encode(path, warn=False)[0], atol=1e-6)
    assert doc["source"] == "upload photo.png (PNG, 90x70)" and doc["index"] is None


def test_bad_uploads_are_refused_with_a_message_before_decoding(explorer, tmp_path):
    from PIL import Image

    def refused(body: bytes) -> str:
        resp = handle(explorer, "POST", "/api/upload", "", body, {"X-Filename": "f.png"})
        assert resp.status == 400
        return json.loads(resp.body)["error"]

    assert "is not an image file" in refused(b"<svg onload=alert(1)>")
    assert "is not an image file" in refused(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    good = _png_file(tmp_path / "g.png").read_bytes()
    assert "unreadable or corrupt" in refused(good[: len(good) // 2])  # truncated
    huge = io.BytesIO()
    Image.new("L", (5000, 4000)).save(huge, "PNG")  # 20 Mpixel, a few kB compressed: refused on its header
    assert "at most 16,777,216 pixels" in refused(huge.getvalue())
    assert "upload is empty" in json.loads(handle(explorer, "POST", "/api/upload", "", b"").body)["error"]


def test_metrics_view_is_the_runs_metrics_json(explorer, run):
    doc = json.loads((run / "metrics.json").read_text())
    scores = doc["results"]["dci_lasso"]["scores"]
    (src,) = explorer.metrics_view()["sources"]
    assert src["metric"] == "dci_lasso" and src["factors"] == ["x", "y", "scale", "orientation"]
    np.testing.assert_allclose(src["squares"], hinton_squares(scores["importance"]))
    np.testing.assert_allclose(src["partition"]["squares"], hinton_squares(scores["partition"]["importance"]))
    assert src["partition"]["names"] == ["position", "scale", INJECT]
    assert src["partition"]["per_unit"] == pytest.approx(scores["partition"]["disentanglement_per_unit"])
    assert explorer.metrics_view()["headline"]["dci_lasso.disentanglement"] == scores["disentanglement"]


def test_every_endpoint_refuses_malformed_parameters_with_a_4xx(explorer):
    z = "0,0,0,0"
    bad = {
        "/api/info": ["x=1"],
        "/api/image": ["", "index=-1", "index=400", "index=abc", "index=1&index=2", "index=1&foo=2"],
        "/api/random": ["", "seed=-5", "seed=1.5", "seed=99999999999"],
        "/api/sample": ["", "seed=x"],
        "/api/find": ["nope=1", "x=99", "x=-1", "x=a", "seed=-1", "x=1&x=2"],
        "/api/decode": [
            "",
            "z=1,2",
            "z=a,b,c,d",
            "z=nan,0,0,0",
            "z=inf,0,0,0",
            "z=1e9,0,0,0",
            "z=" + z + "&noise=3",
            "%%%",
        ],
        "/api/traverse": [
            "",
            f"z={z}&span=0",
            f"z={z}&span=99",
            f"z={z}&unit=bogus",
            f"z={z}&unit=image",
            f"z={z}&steps=1",
            f"z={z}&steps=500",
            f"z={z}&std=-1,1,1,1",
        ],
        "/api/swap": [
            "",
            f"a={z}",
            f"a={z}&b={z}",
            f"a={z}&b={z}&groups=",
            f"a={z}&b={z}&groups=nope",
            f"a={z}&b=1&groups=scale",
        ],
        "/api/swapgrid": ["", f"a={z}", f"a={z}&b=x,0,0,0"],
        "/api/prior": ["", "group=scale", "group=nope&seed=1", "group=scale&seed=-1"],
        "/api/upload": ["x=1"],
        "/": ["x=1"],
        "/nope": [""],
        "/../../etc/passwd": [""],
    }
    for path, queries in bad.items():
        for q in queries:
            method = "POST" if path == "/api/upload" else "GET"
            resp = handle(explorer, method, path, q, b"x" if method == "POST" else None)
            assert 400 <= resp.status < 500, (path, q, resp.status)
            msg = json.loads(resp.body)["error"]
            assert msg and "\n" not in msg and "Traceback" not in msg, (path, q, msg)
    assert handle(explorer, "POST", "/api/decode", f"z={z}").status == 405
    assert handle(explorer, "GET", "/api/upload").status == 405


# --------------------------------------------------------------------------- the server
def _request(server, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_server_limits_hosts_methods_and_upload_size(server, tmp_path):
    status, headers, body = _request(server, "GET", "/")
    assert status == 200 and b"explore.js" in body and "'self'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    status, _, body = _request(server, "GET", "/api/info", headers={"Host": "attacker.example:80"})
    assert status == 421 and "localhost" in json.loads(body)["error"]  # DNS rebinding: refused
    assert _request(server, "GET", "/api/info", headers={"Host": "localhost:1"})[0] == 200
    assert _request(server, "PUT", "/api/info")[0] == 405
    assert _request(server, "DELETE", "/")[0] == 405
    status, _, body = _request(server, "POST", "/api/upload", body=b"x" * 300_000)
    assert status == 413 and "at most 0.190735 MB" in json.loads(body)["error"]
    status, _, body = _request(server, "POST", "/api/upload", body=b"not an image", headers={"X-Filename": "a%0Ab.txt"})
    assert status == 400 and json.loads(body)["error"].startswith("'ab.txt' (uploaded) is not an image file")
    good = _png_file(tmp_path / "g.png").read_bytes()
    status, _, body = _request(server, "POST", "/api/upload", body=good, headers={"X-Filename": "g.png"})
    assert status == 200 and len(json.loads(body)["mu"]) == 4
    assert _request(server, "GET", "/api/info", body=b"{}")[0] == 400  # a GET with a body


def test_remote_hosts_need_the_flag_and_a_warning(explorer, capsys):
    with pytest.raises(ConfigError, match="not a loopback address.*--allow-remote"):
        make_server(explorer, "0.0.0.0", 0)
    log = io.StringIO()
    srv = make_server(explorer, "0.0.0.0", 0, allow_remote=True, log=log)
    try:
        assert not srv.loopback_only and "warning: the explorer listens on 0.0.0.0" in log.getvalue()
    finally:
        srv.server_close()
    assert main(["explore", "/nonexistent/run", "--host", "0.0.0.0"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_cli_errors_are_one_line(run, capsys, tmp_path):
    assert main(["explore", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: run directory") and err.count("\n") == 1
    assert main(["explore", str(run), "--host", "192.0.2.1"]) == 2
    assert "--allow-remote" in capsys.readouterr().err
    assert main(["explore", str(run), "--max-upload-mb", "0"]) == 2
    assert "--max-upload-mb" in capsys.readouterr().err


def test_served_from_the_command_line_writes_nothing_anywhere(run, tmp_path):
    """``gatedvae explore RUN --port 0`` in a process whose home, temporary folder and working folder
    are empty: after serving the page, an upload and decodes, and Ctrl-C, all three are still empty and
    the run directory is byte for byte what it was."""
    before = _snapshot(run)
    home, tmp, cwd = (tmp_path / n for n in ("home", "tmp", "cwd"))
    for d in (home, tmp, cwd):
        d.mkdir()
    env = dict(os.environ, HOME=str(home), TMPDIR=str(tmp), PYTHONDONTWRITEBYTECODE="1", MPLCONFIGDIR=str(home / "mpl"))
    env.pop("XDG_CACHE_HOME", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gatedvae", "explore", str(run), "--port", "0"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C must reach it: a test suite started as a background job inherits SIGINT ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        assert ready, "gatedvae explore printed no address within 120 s"
        line = proc.stdout.readline()
        assert "this machine only" in line and "http://127.0.0.1:" in line, line + proc.stderr.read()
        port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for method, path, body in (
            ("GET", "/", None),
            ("GET", "/api/info", None),
            ("GET", "/api/decode?z=0,0,0,0", None),
            ("POST", "/api/upload", _png_file(tmp_path / "u.png").read_bytes()),
        ):
            conn.request(method, path, body=body)
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200, (path, resp.status)
        conn.close()
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert [list(d.rglob("*")) for d in (home, tmp, cwd)] == [[], [], []]
    assert _snapshot(run) == before


def test_export_writes_one_self_contained_page(explorer, tmp_path, run):
    before = _snapshot(run)
    path = export_page(explorer, tmp_path / "page", n_images=3, seed=0, spans=(1.0, 2.0), steps=5)
    assert sorted(p.name for p in (tmp_path / "page").iterdir()) == ["index.html"]
    html = path.read_text(encoding="utf-8")
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    assert 'src="http' not in html and 'href="http' not in html and "explore.js" not in html.split("<script>")[0]
    start = html.index('id="static-data">') + len('id="static-data">')
    data = json.loads(html[start : html.index("</script>", start)])
    assert len(data["items"]) == 3 and sorted(data["items"][0]["traversals"]) == ["1", "2"]
    assert data["swaps"]["groups"] == ["position", "scale", INJECT] and data["swaps"]["n"] == 3
    sprite = _data_url_pixels(data["swaps"]["sprite"])  # (G*N*64, N*64)
    assert sprite.shape == (3 * 3 * 64, 3 * 64)
    za, zb = np.array(data["items"][0]["mu"]), np.array(data["items"][2]["mu"])
    tile = sprite[(1 * 3 + 2) * 64 : (1 * 3 + 3) * 64, 0:64]  # scale (g=1) from item 2, the rest from item 0
    want = explorer.decode(swap_codes(zb[None], za[None], [2])[0])[0, 0]
    assert np.abs(tile - want).max() <= 1 / 255
    assert _snapshot(run) == before
    assert main(["explore", str(run), "--export", str(tmp_path / "cli"), "--export-images", "2"]) == 0
    assert (tmp_path / "cli" / "index.html").is_file()
    assert main(["explore", str(run), "--export", str(path)]) == 2  # a file, not a directory


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory) -> Path:
    """A tiny InfoGAN: two continuous codes and one categorical code of 2, 3 noise dims (6 steps)."""
    path = tmp_path_factory.mktemp("explore_gan") / "gan"
    cfg = tiny_config(
        gated=False, model={"name": "infogan", "latent_dim": 4, "categorical": [2], "noise_dim": 3}, train={"steps": 6}
    )
    train(cfg, path, quiet=True, tensorboard=False)
    return path


def test_ungated_and_gan_runs(tmp_path, gan_run):
    ungated = tmp_path / "ungated"
    train(tiny_config(gated=False, train={"steps": 10}), ungated, quiet=True, tensorboard=False)
    ex = Explorer(ungated)
    assert [(g.name, g.kind) for g in ex.groups] == [(f"z{d}", "latent") for d in range(4)]
    assert ex.metrics_view()["sources"] == [] and "gatedvae evaluate" in ex.metrics_view()["note"]
    ex = Explorer(gan_run)
    assert ex.is_gan and [(g.name, g.kind, g.start, g.stop) for g in ex.groups] == [
        ("c0", "continuous", 0, 1),
        ("c1", "continuous", 1, 2),
        ("cat0", "categorical", 2, 4),
    ]
    z = _codes([0.5, -0.5, 1.0, 0.0])
    mode = handle(ex, "GET", "/api/decode", f"z={z}").body
    assert handle(ex, "GET", "/api/decode", f"z={z}&noise=0").body == mode
    one, two = (handle(ex, "GET", "/api/decode", f"z={z}&noise={n}").body for n in (1, 2))
    assert one != mode and one != two and handle(ex, "GET", "/api/decode", f"z={z}&noise=1").body == one
    cat = _get(ex, "/api/prior", "group=cat0&seed=3")["values"]
    assert sorted(cat) == [0.0, 1.0]
    assert all(-1 <= v <= 1 for v in _get(ex, "/api/prior", "group=c0&seed=3")["values"])
    rows = _get(ex, "/api/traverse", f"z={z}&steps=4&noise=2")["rows"]
    assert [r["categorical"] for r in rows] == [False, False, True] and rows[2]["values"] == [0, 1, 0, 1]


# --------------------------------------------------------------------------- a conditional VAE
#: The conditional run's condition factors (their one-hots, concatenated in this order, feed the decoder).
CONDITION = ["scale", "orientation"]


@pytest.fixture(scope="module")
def cvae_run(tmp_path_factory) -> Path:
    """A tiny gated conditional VAE whose decoder *and* encoder read the labels of scale and
    orientation (20 steps)."""
    path = tmp_path_factory.mktemp("explore_cvae") / "cvae"
    cfg = tiny_config(
        model={"name": "cvae", "condition": CONDITION, "condition_encoder": True},
        gating={
            "partitions": [
                {"name": "position", "size": 2, "factors": ["x", "y"]},
                {"name": "rest", "size": 2, "sampler": "identity"},
            ]
        },
        train={"steps": 20, "checkpoint_every": 20},
    )
    train(cfg, path, quiet=True, tensorboard=False)
    return path


@pytest.fixture(scope="module")
def cvae(cvae_run):
    """``(explorer, prep)``: the explorer, and the run as training builds it (the independent side)."""
    prep, _, _ = load_trained(cvae_run, device="cpu")
    return Explorer(cvae_run), prep


def _onehot(classes) -> np.ndarray:
    """The decoder's condition for labels ``(N, 2)`` (scale, orientation; 8 classes each), built here."""
    classes = np.atleast_2d(np.asarray(classes))
    return np.concatenate([np.eye(8, dtype=np.float32)[classes[:, 0]], np.eye(8, dtype=np.float32)[classes[:, 1]]], 1)


def _ref_decode(prep, z, cond: np.ndarray) -> np.ndarray:
    """``model.decode`` of codes ``(N, M)`` with the one-hot condition ``(N, c)``: ``(N, H, W)``."""
    import torch

    with torch.no_grad():
        zt = torch.as_tensor(np.atleast_2d(z), dtype=torch.float32)
        out = prep.model.mean_image(prep.model.decode(zt, torch.as_tensor(cond).expand(len(zt), -1)))
    return out.clamp(0, 1)[:, 0].numpy()


def _ref_encode(prep, x: np.ndarray, cond: np.ndarray | None) -> np.ndarray:
    """Posterior means of uint8 images ``(N, C, H, W)`` with the encoder's condition: ``(N, M)``."""
    import torch

    with torch.no_grad():
        c = torch.as_tensor(cond) if cond is not None else None
        return prep.model.encode(torch.as_tensor(x, dtype=torch.float32) / 255.0, c).mu.double().numpy()


def test_conditional_run_decodes_with_the_labels_asked_for(cvae, tmp_path):
    ex, prep = cvae
    ds = prep.dataset
    info = _get(ex, "/api/info")
    assert info["condition"]["encoder"] and [f["name"] for f in info["condition"]["factors"]] == CONDITION
    assert len(info["condition"]["factors"][0]["values"]) == 8 and info["groups"][1]["name"] == "rest"
    # a dataset image: its own labels, encoded and decoded with them (training's condition_vectors)
    a, b = _get(ex, "/api/image", "index=17"), _get(ex, "/api/image", "index=250")
    own = condition_vectors(ds, tuple(CONDITION), np.array([17, 250]), prep.device).numpy()  # (2, 16)
    assert np.array_equal(_onehot([a["cond"], b["cond"]]), own)
    assert a["cond"] == ds.factors[17, 2:].tolist() and set(a["labels"]) == set(CONDITION)
    x = ex.dataset_images(np.array([17, 250]))
    mu = _ref_encode(prep, x, own)  # (2, M)
    np.testing.assert_allclose(a["mu"], mu[0], atol=1e-6)
    assert np.abs(_data_url_pixels(a["recon"]) - _ref_decode(prep, mu[0], own[:1])[0]).max() <= 1 / 255
    # the decoder's labels are what the request asks for, not the image's
    za, zb = np.array(a["mu"]), np.array(b["mu"])
    other = [(a["cond"][0] + 4) % 8, a["cond"][1]]
    pixels = {}
    for cond in (a["cond"], other):
        resp = handle(ex, "GET", "/api/decode", f"z={_codes(za)}&cond={cond[0]},{cond[1]}")
        pixels[tuple(cond)] = _png_pixels(resp.body)
        assert np.abs(pixels[tuple(cond)] - _ref_decode(prep, za, _onehot(cond))[0]).max() <= 0.5 / 255 + 1e-6
    assert np.abs(pixels[tuple(other)] - pixels[tuple(a["cond"])]).max() > 0.01
    # a swap: each output keeps its own image's labels (A's with cond_a, B's with cond_b)
    ca, cb = ",".join(map(str, other)), ",".join(map(str, b["cond"]))
    doc = _get(ex, "/api/swap", f"a={_codes(za)}&b={_codes(zb)}&groups=position&cond_a={ca}&cond_b={cb}")
    want_ab = _ref_decode(prep, swap_codes(zb[None], za[None], [0, 1])[0], _onehot(other))[0]
    want_ba = _ref_decode(prep, swap_codes(za[None], zb[None], [0, 1])[0], _onehot(b["cond"]))[0]
    assert np.abs(_data_url_pixels(doc["a_from_b"]) - want_ab).max() <= 1 / 255
    assert np.abs(_data_url_pixels(doc["b_from_a"]) - want_ba).max() <= 1 / 255
    grid = _get(ex, "/api/swapgrid", f"a={_codes(za)}&b={_codes(zb)}&cond_a={ca}&cond_b={cb}")
    want = _ref_decode(prep, swap_codes(za[None], zb[None], [2, 3])[0], _onehot(b["cond"]))[0]
    assert np.abs(_data_url_pixels(grid["rows"][1]["b_from_a"]) - want).max() <= 1 / 255
    assert np.abs(_data_url_pixels(grid["recon_a"]) - pixels[tuple(other)]).max() <= 1 / 255
    # traversals: every tile with the labels asked for
    tr = _get(ex, "/api/traverse", f"z={_codes(za)}&span=2&unit=prior&steps=3&cond={ca}")
    codes = np.repeat(za[None], 3, axis=0)
    codes[:, 3] = [-2.0, 0.0, 2.0]
    got = _data_url_pixels(tr["sprite"])[3 * 64 : 4 * 64].reshape(64, 3, 64).transpose(1, 0, 2)
    assert np.abs(got - _ref_decode(prep, codes, _onehot(other))).max() <= 1 / 255
    # an upload's labels are picked: the encoder reads them, the reconstruction is decoded with them
    from gatedvae.encode import as_images

    path = _png_file(tmp_path / "photo.png")
    up = _get(ex, "/api/upload", "cond=3,5", method="POST", body=path.read_bytes(), headers={"X-Filename": "p.png"})
    xu = as_images(path, ex.image_shape)  # (1, 1, 64, 64) uint8, as gatedvae encode converts a file
    np.testing.assert_allclose(up["mu"], _ref_encode(prep, xu, _onehot([3, 5]))[0], atol=1e-6)
    assert up["cond"] == [3, 5] and up["index"] is None
    # a prior draw takes labels, or draws them with its seed
    assert _get(ex, "/api/sample", "seed=4&cond=1,2")["cond"] == [1, 2]
    assert _get(ex, "/api/sample", "seed=4")["cond"] == _get(ex, "/api/sample", "seed=4")["cond"]
    # labels missing, malformed, or given to a run that takes none: 4xx with one line
    z = "0,0,0,0"
    bad = {
        "/api/decode": [f"z={z}", f"z={z}&cond=1", f"z={z}&cond=1,2,3", f"z={z}&cond=8,0", f"z={z}&cond=-1,0"],
        "/api/traverse": [f"z={z}", f"z={z}&cond=a,b"],
        "/api/swap": [f"a={z}&b={z}&groups=rest&cond_a=1,1", f"a={z}&b={z}&groups=rest&cond_a=1,1&cond_b=1,1.5"],
        "/api/swapgrid": [f"a={z}&b={z}", f"a={z}&b={z}&cond_b=0,0"],
        "/api/sample": ["seed=1&cond=", "seed=1&cond=0,99"],
    }
    for route, queries in bad.items():
        for q in queries:
            resp = handle(ex, "GET", route, q)
            assert 400 <= resp.status < 500 and "\n" not in json.loads(resp.body)["error"], (route, q, resp.body)
    for q in ("", "cond=0"):
        resp = handle(ex, "POST", "/api/upload", q, path.read_bytes())
        assert resp.status == 400 and "cond" in json.loads(resp.body)["error"]
    # the static export: each image with its own labels; a swap tile with those of the image giving the rest
    data = static_data(ex, n_images=3, seed=0, spans=(2.0,), steps=3)
    items = data["items"]
    assert [it["cond"] for it in items] == [ds.factors[it["index"], 2:].tolist() for it in items]
    sprite = _data_url_pixels(data["swaps"]["sprite"])  # (G*N*64, N*64)
    z0, z2 = np.array(items[0]["mu"]), np.array(items[2]["mu"])
    tile = sprite[(0 * 3 + 0) * 64 : (0 * 3 + 1) * 64, 2 * 64 : 3 * 64]  # item 2 with item 0's position
    want = _ref_decode(prep, swap_codes(z0[None], z2[None], [0, 1])[0], _onehot(items[2]["cond"]))[0]
    assert np.abs(tile - want).max() <= 1 / 255


def test_decoder_only_condition_and_labels_refused_where_not_conditional(explorer, tmp_path):
    """A cvae whose encoder reads no labels: the same labels on the decoder, none on the encoder."""
    run = tmp_path / "cvae_dec"
    train(
        tiny_config(gated=False, model={"name": "cvae", "condition": ["scale"]}, train={"steps": 2}),
        run,
        quiet=True,
        tensorboard=False,
    )
    ex = Explorer(run)
    prep, _, _ = load_trained(run, device="cpu")
    doc = _get(ex, "/api/image", "index=9")
    own = condition_vectors(prep.dataset, ("scale",), np.array([9]), prep.device).numpy()  # (1, 8)
    mu = _ref_encode(prep, ex.dataset_images(np.array([9])), None)[0]
    np.testing.assert_allclose(doc["mu"], mu, atol=1e-6)
    assert doc["cond"] == [int(prep.dataset.factors[9, 2])] and not _get(ex, "/api/info")["condition"]["encoder"]
    assert np.abs(_data_url_pixels(doc["recon"]) - _ref_decode(prep, mu, own)[0]).max() <= 1 / 255
    body = _png_file(tmp_path / "u.png").read_bytes()
    ups = [_get(ex, "/api/upload", f"cond={c}", method="POST", body=body) for c in (0, 7)]
    assert ups[0]["mu"] == ups[1]["mu"] and ups[0]["recon"] != ups[1]["recon"]  # the encoder ignores labels
    for route, q in (("/api/decode", "z=0,0,0,0&cond=1"), ("/api/swapgrid", "a=0,0,0,0&b=0,0,0,0&cond_a=0")):
        resp = handle(explorer, "GET", route, q)  # the gated beta-VAE takes no labels
        assert resp.status == 400 and "conditional runs" in json.loads(resp.body)["error"]


# --------------------------------------------------------------------------- in a real browser
def _in_ci() -> bool:
    """Whether this is CI: the CI variable set to anything but empty, 0, false or no."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _no_browser(reason: str):
    if _in_ci():
        pytest.fail(f"{reason}; in CI (the CI variable is set) the explorer's browser tests must run, not skip")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _no_browser("selenium is not installed (it is in the dev extra: pip install -e '.[dev]')")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        _no_browser("no Chromium: install it with apt-get install chromium chromium-driver (.ci/run does)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="gatedvae-chromium-")
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,1700",
        f"--user-data-dir={profile}",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(executable_path=driver), options=opts)
    drv.set_script_timeout(60)
    yield drv
    drv.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _wait(drv, script: str, timeout: float = 30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = drv.execute_script(script)
        if value:
            return value
        time.sleep(0.02)
    errors = drv.execute_script("return window.__explore && window.__explore.errors")
    raise AssertionError(f"timed out waiting for: {script}; page errors: {errors}")


def _idle(drv) -> None:
    _wait(drv, "return window.__explore && window.__explore.ready && window.__explore.busy === 0")


def _pixels(drv, selector: str) -> np.ndarray:
    """The canvas's pixels (its grey channel) in [0, 1]: what the page shows."""
    got = drv.execute_script(
        "const c = document.querySelector(arguments[0]);"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "const out = []; for (let i = 0; i < d.length; i += 4) out.push(d[i]); return [c.width, c.height, out];",
        selector,
    )
    w, h, values = got
    return np.asarray(values, dtype=np.float64).reshape(h, w) / 255.0


def _severe_logs(drv) -> list[str]:
    return [e["message"] for e in drv.get_log("browser") if e["level"] == "SEVERE"]


def _slider_latency(drv, dim: int, presses: int) -> dict[str, float]:
    """Press the right arrow on latent ``dim``'s slider ``presses`` times, each after the previous
    image arrived; the page's own measurement (input event -> new image drawn, and -> next frame)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    slider = drv.find_element(By.CSS_SELECTOR, f'input[type=range][data-dim="{dim}"]')
    first = drv.execute_script("return window.__explore.latencies.length")
    for _ in range(presses):
        done = drv.execute_script("return window.__explore.decodes")
        slider.send_keys(Keys.ARROW_RIGHT)
        _wait(drv, f"return window.__explore.decodes > {done}")
    _wait(drv, "return window.__explore.frameLatencies.length >= window.__explore.latencies.length")
    lat = drv.execute_script("return window.__explore.latencies")[first:]
    frame = drv.execute_script("return window.__explore.frameLatencies")[first:]
    return {
        "n": len(lat),
        "median_ms": float(np.median(lat)),
        "p90_ms": float(np.percentile(lat, 90)),
        "frame_median_ms": float(np.median(frame)),
    }


def _show_index(drv, slot: str, index: int) -> None:
    from selenium.webdriver.common.by import By

    before = drv.execute_script("return window.__explore.slots")
    field = drv.find_element(By.CSS_SELECTOR, f"#slot-{slot} input.index")
    field.clear()
    field.send_keys(str(index))
    drv.find_element(By.CSS_SELECTOR, f"#slot-{slot} button.show-index").click()
    _wait(drv, f"return window.__explore.slots > {before}")
    _idle(drv)


def test_page_in_chromium_sliders_swap_upload_and_bad_requests(browser, server, explorer, reference, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    drv = browser
    drv.get_log("browser")  # drop what earlier pages logged
    drv.get(server.url)
    _idle(drv)
    _wait(drv, "return window.__explore.swaps > 0 && window.__explore.traversals > 0")
    assert _severe_logs(drv) == []
    text = drv.find_element(By.TAG_NAME, "body").text
    assert "position" in text and "owns x, y" in text and INJECT in text  # shown as text ...
    assert drv.execute_script("return window.__pwned === undefined")  # ... never run
    assert len(drv.find_elements(By.CSS_SELECTOR, "#groups input[type=range]")) == 4
    assert len(drv.find_elements(By.CSS_SELECTOR, "svg.hinton.latents rect.sq")) > 0
    assert len(drv.find_elements(By.CSS_SELECTOR, "#strips canvas")) == 4
    assert len(drv.find_elements(By.CSS_SELECTOR, "#swap-grid th[data-group]")) == 3
    assert len(drv.find_elements(By.CSS_SELECTOR, "#swap-grid td[data-group] canvas")) == 6

    # a slider moves: a new image, measured from the input event
    before = _pixels(drv, "#decoded")
    slider = drv.find_element(By.CSS_SELECTOR, 'input[type=range][data-dim="2"]')
    done = drv.execute_script("return window.__explore.decodes")
    slider.send_keys(Keys.END)
    _wait(drv, f"return window.__explore.decodes > {done}")
    after = _pixels(drv, "#decoded")
    assert after.shape == (64, 64) and np.abs(after - before).max() > 0.05
    z = drv.execute_script("return S.z")
    assert np.abs(after - reference.decode(np.array(z)[None])[0, 0]).max() <= 1 / 255
    tiny = _slider_latency(drv, 0, 15)
    print(f"\nexplore slider latency, tiny MLP (hidden 24, 4 latents): {tiny}")
    # reset puts the input's means back
    drv.find_element(By.ID, "reset-all").click()
    _wait(drv, f"return window.__explore.decodes > {done + 16}")
    assert drv.execute_script("return S.z") == drv.execute_script("return S.slots.a.mu")

    # swap one partition between two chosen images, against model.decode of the swapped codes
    _show_index(drv, "a", 17)
    _show_index(drv, "b", 123)
    boxes = {b.get_attribute("value"): b for b in drv.find_elements(By.CSS_SELECTOR, "input[name=swap-group]")}
    swaps = drv.execute_script("return window.__explore.swaps")
    boxes["position"].click()  # off
    _wait(drv, f"return window.__explore.swaps > {swaps}")
    swaps = drv.execute_script("return window.__explore.swaps")
    boxes["scale"].click()  # on
    _wait(drv, f"return window.__explore.swaps > {swaps}")
    _idle(drv)
    x = explorer.dataset_images(np.array([17, 123]))
    za, zb = reference.encode(x, warn=False)
    want_ab = reference.decode(swap_codes(zb[None], za[None], [2])[0])[0, 0]
    want_ba = reference.decode(swap_codes(za[None], zb[None], [2])[0])[0, 0]
    assert np.abs(_pixels(drv, "#swap-ab") - want_ab).max() <= 1 / 255
    assert np.abs(_pixels(drv, "#swap-ba") - want_ba).max() <= 1 / 255
    assert "A with B's scale" in drv.find_element(By.ID, "swap-result").text

    # uploads: a bad file shows its error; a good one becomes input A
    bad = tmp_path / "notes.png"
    bad.write_text("these are not pixels")
    errors = len(drv.execute_script("return window.__explore.errors"))
    drv.find_element(By.CSS_SELECTOR, "#slot-a input.upload").send_keys(str(bad))
    _wait(drv, f"return window.__explore.errors.length > {errors}")
    message = drv.find_element(By.ID, "message")
    assert message.is_displayed() and "'notes.png' (uploaded) is not an image file" in message.text
    assert "not an image file" in drv.find_element(By.CSS_SELECTOR, "#slot-a .slot-error").text
    good = _png_file(tmp_path / "photo.png", seed=3)
    slots = drv.execute_script("return window.__explore.slots")
    drv.find_element(By.CSS_SELECTOR, "#slot-a input.upload").send_keys(str(good))
    _wait(drv, f"return window.__explore.slots > {slots}")
    assert "upload photo.png" in drv.find_element(By.CSS_SELECTOR, "#slot-a .caption").text
    np.testing.assert_allclose(
        drv.execute_script("return S.slots.a.mu"), reference.encode(good, warn=False)[0], atol=1e-6
    )

    # every endpoint with malformed parameters, from the page's own fetch: 4xx and a JSON message
    urls = [
        "/api/info?x=1",
        "/api/image?index=-3",
        "/api/random?seed=abc",
        "/api/sample",
        "/api/find?colour=2",
        "/api/decode?z=1,2,3",
        "/api/traverse?z=0,0,0,0&steps=0",
        "/api/swap?a=0,0,0,0&b=0,0,0,0&groups=nope",
        "/api/swapgrid?a=0,0,0,0",
        "/api/prior?group=scale",
        "/api/nothing",
    ]
    got = drv.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "Promise.all(arguments[0].map(u => fetch(u).then(async r => [u, r.status, (await r.json()).error])))"
        ".then(done);",
        urls,
    )
    got.append(
        drv.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch('/api/upload?x=1', {method: 'POST', body: 'x'})"
            ".then(async r => done(['upload', r.status, (await r.json()).error]));"
        )
    )
    for url, status, error in got:
        assert 400 <= status < 500 and error, (url, status, error)


def test_slider_latency_of_the_papers_mlp_and_conv64(browser, tmp_path):
    """The issue's target: < 100 ms from slider input to the new image on a 2-core CPU, for the paper's
    MLP (hidden 1200, 8 latents) and the conv64 net, 64x64 images. Measured and printed (weights do
    not change the cost: 2 training steps)."""
    results = {}
    for name, model in (
        ("paper MLP (hidden 1200, 8 latents)", {"latent_dim": 8, "hidden": 1200}),
        ("conv64 (hidden 256, 10 latents)", {"latent_dim": 10, "hidden": 256, "net": "conv64"}),
    ):
        run = tmp_path / name.split()[0]
        train(tiny_config(gated=False, model=model, train={"steps": 2}), run, quiet=True, tensorboard=False)
        srv = _serve(Explorer(run))
        try:
            browser.get(srv.url)
            _idle(browser)
            _wait(browser, "return window.__explore.traversals > 0 && window.__explore.swaps > 0")
            results[name] = _slider_latency(browser, 0, 20)
        finally:
            srv.shutdown()
            srv.server_close()
    for name, r in results.items():
        print(f"\nexplore slider latency, {name}: {r}")
        assert r["n"] == 20


def test_static_export_in_chromium(browser, explorer, tmp_path):
    from selenium.webdriver.common.by import By

    path = export_page(explorer, tmp_path / "page", n_images=4, seed=0)
    browser.get_log("browser")  # drop what earlier pages logged
    browser.get(path.resolve().as_uri())
    _idle(browser)
    _wait(browser, "return window.__explore.swaps > 0 && window.__explore.traversals > 0")
    assert _severe_logs(browser) == []
    assert "static export" in browser.find_element(By.ID, "run-meta").text
    assert browser.execute_script("return window.__pwned === undefined")
    external = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name).filter(n => !n.startsWith('data:'))"
    )
    assert external == []  # nothing loaded from anywhere
    assert len(browser.find_elements(By.CSS_SELECTOR, "#strips canvas")) == 4
    before = _pixels(browser, "#decoded")
    slider = browser.find_element(By.CSS_SELECTOR, 'input[type=range][data-dim="0"]')
    from selenium.webdriver.common.keys import Keys

    done = browser.execute_script("return window.__explore.decodes")
    slider.send_keys(Keys.END)
    _wait(browser, f"return window.__explore.decodes > {done}")
    time.sleep(0.2)  # the frame is drawn from an already decoded sprite
    assert np.abs(_pixels(browser, "#decoded") - before).max() > 0.05
    # the swap shown is the precomputed tile: item 1's scale into item 0 (A = item 0, B = item 1)
    data = json.loads(browser.execute_script("return document.getElementById('static-data').textContent"))
    za, zb = np.array(data["items"][0]["mu"]), np.array(data["items"][1]["mu"])
    want = explorer.decode(swap_codes(zb[None], za[None], [0, 1])[0])[0, 0]  # position is checked first
    assert np.abs(_pixels(browser, "#swap-ab") - want).max() <= 1 / 255


def test_gan_page_in_chromium_code_sliders_and_resample_noise(browser, gan_run):
    from selenium.webdriver.common.by import By

    srv = _serve(Explorer(gan_run))
    try:
        browser.get(srv.url)
        _idle(browser)
        _wait(browser, "return window.__explore.traversals > 0 && window.__explore.swaps > 0")
        assert "GAN (3 noise dims)" in browser.find_element(By.ID, "run-meta").text
        assert len(browser.find_elements(By.CSS_SELECTOR, "#groups input[type=range]")) == 2  # c0, c1
        assert len(browser.find_elements(By.CSS_SELECTOR, "#groups input[type=radio]")) == 2  # cat0's categories
        before = _pixels(browser, "#decoded")
        done = browser.execute_script("return window.__explore.decodes")
        browser.find_element(By.ID, "resample-noise").click()
        _wait(browser, f"return window.__explore.decodes > {done}")
        assert browser.find_element(By.ID, "noise-label").text == "noise: draw 1"
        assert np.abs(_pixels(browser, "#decoded") - before).max() > 0
        z = browser.execute_script("return S.z")
        want = _png_pixels(handle(srv.explorer, "GET", "/api/decode", f"z={_codes(z)}&noise=1").body)
        assert np.abs(_pixels(browser, "#decoded") - want).max() <= 1 / 255
        done = browser.execute_script("return window.__explore.decodes")
        browser.find_elements(By.CSS_SELECTOR, "#groups input[type=radio]")[1].click()
        _wait(browser, f"return window.__explore.decodes > {done}")
        assert browser.execute_script("return S.z.slice(2)") == [0, 1]
    finally:
        srv.shutdown()
        srv.server_close()


def test_conditional_page_in_chromium_a_label_dropdown_changes_the_image(browser, cvae):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    ex, prep = cvae
    srv = _serve(ex)
    try:
        browser.get(srv.url)
        _idle(browser)
        _wait(browser, "return window.__explore.traversals > 0 && window.__explore.swaps > 0")
        assert "decoder and encoder conditioned on scale, orientation" in browser.find_element(By.ID, "run-meta").text
        sel = Select(browser.find_element(By.CSS_SELECTOR, '#slot-a select.cond-select[data-cond="scale"]'))
        own = browser.execute_script("return S.slots.a.cond")
        assert int(sel.first_selected_option.get_attribute("value")) == own[0]  # the input's own labels
        before, recon = _pixels(browser, "#decoded"), _pixels(browser, "#slot-a canvas.recon")
        done = browser.execute_script("return window.__explore.decodes")
        sel.select_by_value(str((own[0] + 4) % 8))
        _wait(browser, f"return window.__explore.decodes > {done}")
        _idle(browser)
        cond = browser.execute_script("return S.cond.a")
        assert cond == [(own[0] + 4) % 8, own[1]]
        after = _pixels(browser, "#decoded")
        assert np.abs(after - before).max() > 0.01
        want = _ref_decode(prep, np.array(browser.execute_script("return S.z")), _onehot(cond))[0]
        assert np.abs(after - want).max() <= 1 / 255
        assert np.abs(_pixels(browser, "#slot-a canvas.recon") - recon).max() > 0.01
        assert "decoded with the chosen labels" in browser.find_element(By.ID, "slot-a").text
        done = browser.execute_script("return window.__explore.decodes")
        browser.find_element(By.CSS_SELECTOR, "#slot-a button.own-labels").click()  # back to the input's own
        _wait(browser, f"return window.__explore.decodes > {done}")
        _idle(browser)
        assert browser.execute_script("return S.cond.a") == own
        assert int(sel.first_selected_option.get_attribute("value")) == own[0]
        assert np.abs(_pixels(browser, "#decoded") - before).max() <= 1 / 255
    finally:
        srv.shutdown()
        srv.server_close()
