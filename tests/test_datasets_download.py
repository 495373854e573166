"""``gatedvae data download`` against a local HTTP server on the loopback address (issue 20): a
whole download, resume of a ``.part`` with a Range request, a connection dropped mid-transfer, a
server that ignores Range, a wrong size, a failing checksum, a web page instead of the file, a 404,
no server at all, the CelebA licence gate, archives unpacked, and a downloaded data set loading.
No test touches the network beyond 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from gatedvae.cli import main
from gatedvae.data import sources as sources_mod
from gatedvae.data.download import download, fetch
from gatedvae.data.sources import Remote, Source
from gatedvae.errors import DataError


class Server:
    """A loopback HTTP server of ``files`` (path -> bytes) with switchable faults:
    ``drop_after`` (close the connection after that many body bytes, ``drops`` times),
    ``ignore_range``, ``status`` (a fixed error status), ``lie_length`` (announce more bytes than sent
    and close). ``requests`` records each request's (path, Range header)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.drop_after: int | None = None
        self.drops = 0
        self.ignore_range = False
        self.status: int | None = None
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                if server.status is not None:
                    self.send_error(server.status)
                    return
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if rng and not server.ignore_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                chunk = body[start:]
                self.send_header("Content-Length", str(len(chunk)))
                self.end_headers()
                if server.drop_after is not None and server.drops > 0:
                    server.drops -= 1
                    self.wfile.write(chunk[: server.drop_after])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(chunk)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def payload(n: int = 300_000, seed: int = 0) -> bytes:
    """A gzip-looking payload (the right magic bytes) of ``n`` bytes."""
    return b"\x1f\x8b" + np.random.default_rng(seed).integers(0, 256, n - 2, dtype=np.uint8).tobytes()


def remote_for(server: Server, name: str, body: bytes, **kw) -> Remote:
    server.files["/" + name] = body
    return Remote(server.base + "/" + name, name, kw.pop("kind", "gzip"), hashlib.md5(body).hexdigest(), **kw)


def one_line(exc: pytest.ExceptionInfo, *fragments: str) -> None:
    msg = str(exc.value)
    assert msg and "\n" not in msg, msg
    for f in fragments:
        assert f in msg, (f, msg)


def quiet(*_):
    pass


def test_whole_download_is_verified_and_renamed(server, tmp_path):
    body = payload()
    r = remote_for(server, "a.gz", body)
    out = fetch(r, tmp_path / "a.gz", progress=False, log=quiet)
    assert out.read_bytes() == body and not (tmp_path / "a.gz.part").exists()
    assert server.requests == [("/a.gz", None)]
    fetch(r, tmp_path / "a.gz", progress=False, log=quiet)  # already there: verified, not fetched
    assert len(server.requests) == 1


def test_partial_file_is_resumed_with_range(server, tmp_path):
    body = payload()
    r = remote_for(server, "a.gz", body)
    (tmp_path / "a.gz.part").write_bytes(body[:123_456])
    fetch(r, tmp_path / "a.gz", progress=False, log=quiet)
    assert (tmp_path / "a.gz").read_bytes() == body
    assert server.requests == [("/a.gz", "bytes=123456-")]


def test_dropped_connection_resumes_then_gives_up_with_the_url(server, tmp_path):
    body = payload()
    r = remote_for(server, "a.gz", body)
    server.drop_after, server.drops = 50_000, 2
    logs: list[str] = []
    fetch(r, tmp_path / "a.gz", progress=False, retries=3, log=logs.append)
    assert (tmp_path / "a.gz").read_bytes() == body
    assert [rng for _, rng in server.requests] == [None, "bytes=50000-", "bytes=100000-"]
    assert sum("dropped" in m for m in logs) == 2
    server.requests.clear()
    server.drops = 10
    with pytest.raises(DataError) as exc:
        fetch(r, tmp_path / "b.gz", progress=False, retries=1, log=quiet)
    one_line(exc, r.url, "broke off at 100,000", "run the same command again to resume")
    assert (tmp_path / "b.gz.part").stat().st_size == 100_000 and not (tmp_path / "b.gz").exists()
    server.drops = 0
    fetch(r, tmp_path / "b.gz", progress=False, log=quiet)  # the next run resumes from the .part
    assert (tmp_path / "b.gz").read_bytes() == body and server.requests[-1][1] == "bytes=100000-"


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    body = payload()
    r = remote_for(server, "a.gz", body)
    (tmp_path / "a.gz.part").write_bytes(b"\x1f\x8bstale bytes")
    server.ignore_range = True
    fetch(r, tmp_path / "a.gz", progress=False, log=quiet)
    assert (tmp_path / "a.gz").read_bytes() == body


def test_a_complete_part_is_finished_on_416(server, tmp_path):
    body = payload(5000)
    r = remote_for(server, "a.gz", body)
    (tmp_path / "a.gz.part").write_bytes(body)
    fetch(r, tmp_path / "a.gz", progress=False, log=quiet)
    assert (tmp_path / "a.gz").read_bytes() == body


def test_wrong_size_checksum_and_web_page_are_refused(server, tmp_path):
    body = payload()
    r = remote_for(server, "a.gz", body, size=len(body) + 10)
    with pytest.raises(DataError) as exc:
        fetch(r, tmp_path / "a.gz", progress=False, log=quiet)
    one_line(exc, r.url, "offers 300,000 bytes", "300,010")
    bad = Remote(r.url, "a.gz", "gzip", "0" * 32)
    with pytest.raises(DataError) as exc:
        fetch(bad, tmp_path / "a.gz", progress=False, log=quiet)
    one_line(exc, r.url, "fails its MD5 check", "expected " + "0" * 32)
    page = remote_for(server, "page.zip", b"<!DOCTYPE html><html>Virus scan warning</html>", kind="zip")
    with pytest.raises(DataError) as exc:
        fetch(Remote(page.url, "p.zip", "zip"), tmp_path / "p.zip", progress=False, log=quiet)
    one_line(exc, page.url, "web page instead of the zip file")
    wrong = remote_for(server, "w.h5", b"PK\x03\x04 not hdf5", kind="h5")
    with pytest.raises(DataError) as exc:
        fetch(Remote(wrong.url, "w.h5", "h5"), tmp_path / "w.h5", progress=False, log=quiet)
    one_line(exc, "not a h5 file")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing damaged left behind


def test_404_and_no_server_name_the_url(server, tmp_path):
    r = Remote(server.base + "/missing.gz", "m.gz", "gzip")
    with pytest.raises(DataError) as exc:
        fetch(r, tmp_path / "m.gz", progress=False, log=quiet)
    one_line(exc, r.url, "HTTP 404", "by hand")
    server.status = 503
    with pytest.raises(DataError) as exc:
        fetch(r, tmp_path / "m.gz", progress=False, log=quiet)
    one_line(exc, "HTTP 503")
    closed = Server()
    url = closed.base + "/x.gz"
    closed.close()
    with pytest.raises(DataError) as exc:
        fetch(Remote(url, "x.gz", "gzip"), tmp_path / "x.gz", progress=False, log=quiet, timeout=5)
    one_line(exc, "could not reach " + url, "no network?", "data.path")


def test_mirror_is_tried_when_the_official_url_refuses(server, tmp_path):
    body = payload(4000)
    good = remote_for(server, "mirror/a.gz", body)
    r = Remote(server.base + "/official/a.gz", "a.gz", "gzip", good.md5, mirrors=(good.url,))
    logs: list[str] = []
    fetch(r, tmp_path / "a.gz", progress=False, log=logs.append)
    assert (tmp_path / "a.gz").read_bytes() == body and "trying" in logs[0]


def test_celeba_needs_the_licence_accepted(tmp_path, capsys):
    assert main(["data", "download", "celeba", "--to", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "non-commercial" in err and "--accept-licence" in err and "nothing was downloaded" in err
    assert not (tmp_path / "c").exists()


def test_cli_downloads_unpacks_and_the_loader_reads_it(server, tmp_path, monkeypatch, capsys):
    """Cars3D end to end: a tar.gz of data/cars/*.mat served on loopback, fetched by the CLI into
    --to, unpacked, and built by data.name=cars3d from there."""
    from test_datasets_formats import write_cars3d

    write_cars3d(tmp_path / "src" / "data" / "cars", 2)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(tmp_path / "src" / "data", arcname="data")
        info = tarfile.TarInfo("../evil.txt")  # a member that would leave the folder: skipped
        info.size = 4
        tf.addfile(info, io.BytesIO(b"evil"))
    body = buf.getvalue()
    r = remote_for(server, "nips2015-analogy-data.tar.gz", body)
    src = sources_mod.SOURCES["cars3d"]
    fake = Source(src.name, src.title, src.homepage, src.licence, (r,), src.size, extract=src.extract)
    monkeypatch.setitem(sources_mod.SOURCES, "cars3d", fake)
    dest = tmp_path / "cars"
    assert main(["data", "download", "cars3d", "--to", str(dest), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "unpacked 3 files" in out and f"data.path={dest}" in out  # 2 .mat + list.txt
    assert not (tmp_path / "evil.txt").exists()
    assert main(["data", "describe", "cars3d", f"path={dest}", "--quiet"]) == 0
    assert "cars3d: 192 images of 3x64x64" in capsys.readouterr().out
    assert main(["data", "download", "cars3d", "--to", str(dest), "--quiet"]) == 0  # again: nothing fetched
    assert len(server.requests) == 1


def test_download_function_default_folder(server, tmp_path, monkeypatch):
    body = payload(3000)
    r = remote_for(server, "t.gz", body)
    src = Source("mnist", "T", "h", "l", (r,))
    monkeypatch.setenv("GATEDVAE_DATA", str(tmp_path))
    folder = download("mnist", progress=False, log=quiet, src=src)
    assert folder == tmp_path / "mnist" and (folder / "t.gz").read_bytes() == body


def test_every_source_is_well_formed():
    for name, src in sources_mod.SOURCES.items():
        assert src.name == name and src.licence and src.homepage.startswith("http")
        for r in src.files:
            assert r.url.startswith(("http://", "https://")) and r.filename and "/" not in r.filename
            assert r.md5 is None or len(r.md5) == 32
    assert sources_mod.SOURCES["celeba"].accept and not sources_mod.SOURCES["shapes3d"].accept
    assert {"mpi3d", "mpi3d_realistic", "mpi3d_real"} <= set(sources_mod.SOURCES)
    assert Path(sources_mod.default_path("mpi3d_real", "/x")) == Path("/x/mpi3d")
