"""The explorer's web server: the standard library's ``ThreadingHTTPServer`` over :func:`.api.handle`.

Safe by default:

* it listens on loopback (127.0.0.1); any other address needs ``allow_remote`` (the command's
  ``--allow-remote``) and a warning is printed: there is no authentication, anyone who can reach
  the port can use the run's model;
* on loopback it answers only requests addressed to a loopback name (the ``Host`` header), so a web
  page elsewhere cannot reach it through DNS rebinding;
* an upload is read only when its declared length is within the limit (413 otherwise), is never
  written anywhere, and is decoded by Pillow only after its header says it is an image of a
  bounded size (:meth:`.session.Explorer.upload`);
* the page may load nothing from elsewhere (a Content-Security-Policy of ``'self'``);
* nothing is written to disk: not the run directory, not a temporary file.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TextIO
from urllib.parse import unquote, urlsplit

from ..errors import ConfigError
from .api import Response, error_response, handle
from .defaults import DEFAULT_MAX_UPLOAD
from .session import Explorer

__all__ = ["make_server", "check_address", "is_loopback", "ExplorerServer"]

_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is a loopback address."""
    if host.strip().lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ExplorerServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer that carries the explorer and its limits."""

    daemon_threads = True
    explorer: Explorer
    max_upload: int
    loopback_only: bool
    verbose: bool
    log: TextIO

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = f"[{host}]" if ":" in str(host) else host
        return f"http://{shown}:{port}/"


class _Handler(BaseHTTPRequestHandler):
    server: ExplorerServer
    server_version = "gatedvae-explore"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = 60  # seconds a connection may stay silent (a client that declares a body and never sends it)
    # Headers and body go out in two writes: with Nagle's algorithm the second waits for the client's
    # delayed ACK, 40 ms on Linux (a decode request from http.client took 44 ms with it, 0.4 ms without).
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args) -> None:  # noqa: A002  (the base class's name)
        if self.server.verbose:
            self.server.log.write(f"explore: {self.address_string()} {format % args}\n")

    def _send(self, resp: Response, head: bool = False) -> None:
        self.send_response(resp.status)
        self.send_header("Content-Type", resp.content_type)
        self.send_header("Content-Length", str(len(resp.body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", _CSP)
        for key, value in resp.headers.items():
            self.send_header(key, value)
        if resp.status >= 400 and resp.status != 404:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if not head:
            self.wfile.write(resp.body)
        if resp.status >= 500:
            self.server.log.write(f"explore: {self.requestline!r} -> {resp.status}\n")

    def _host_ok(self) -> bool:
        if not self.server.loopback_only:
            return True
        host = (self.headers.get("Host") or "").strip().lower()
        if host.startswith("[") and "]" in host:
            name = host[1 : host.index("]")]  # [::1]:8765
        elif host.count(":") == 1:
            name = host.split(":")[0]  # 127.0.0.1:8765, localhost:8765
        else:
            name = host
        return is_loopback(name)

    def _dispatch(self, method: str) -> None:
        if not self._host_ok():
            self._send(
                error_response(
                    "this explorer answers only requests addressed to localhost / 127.0.0.1 "
                    f"(it listens on loopback); open it as http://127.0.0.1:{self.server.server_address[1]}/",
                    421,
                )
            )
            return
        parts = urlsplit(self.path)
        body = None
        headers = {}
        if method == "POST":
            length = self.headers.get("Content-Length")
            if length is None or not length.strip().isdigit():
                self._send(error_response("a POST needs a Content-Length header (the file's size in bytes)", 411))
                return
            size = int(length)
            if size > self.server.max_upload:
                limit = self.server.max_upload / (1024 * 1024)
                self._send(
                    error_response(
                        f"the upload is {size / (1024 * 1024):.1f} MB; the explorer takes files of at most "
                        f"{limit:g} MB (gatedvae explore --max-upload-mb)",
                        413,
                    )
                )
                return
            body = self.rfile.read(size)
            raw = unquote(self.headers.get("X-Filename", "upload"))
            name = "".join(c for c in raw if c.isprintable() and c not in "\\/")[-120:] or "upload"
            headers["X-Filename"] = name
        elif self.headers.get("Content-Length", "0").strip() not in ("", "0"):
            self._send(error_response(f"{method} requests carry no body", 400))
            return
        resp = handle(self.server.explorer, method, parts.path, parts.query, body, headers)
        self._send(resp, head=method == "HEAD")

    def do_GET(self) -> None:  # noqa: N802  (http.server's names)
        self._dispatch("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def _refuse(self) -> None:
        self._send(error_response(f"{self.command} is not allowed; the explorer answers GET and POST", 405))

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse  # noqa: N815


def check_address(host: str, port: int, allow_remote: bool) -> None:
    """One-line ConfigError for a host that is not loopback (without ``allow_remote``) or a bad port."""
    if not is_loopback(host) and not allow_remote:
        raise ConfigError(
            f"--host {host} is not a loopback address: the explorer has no authentication and anyone who can reach "
            "it can use the run's model; add --allow-remote to listen there anyway, or drop --host (127.0.0.1)"
        )
    if not 0 <= int(port) <= 65535:
        raise ConfigError(f"--port {port} is not a port number; use 1..65535, or 0 for any free port")


def make_server(
    explorer: Explorer,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    allow_remote: bool = False,
    max_upload: int = DEFAULT_MAX_UPLOAD,
    verbose: bool = False,
    log: TextIO | None = None,
) -> ExplorerServer:
    """A bound (not yet serving) server for ``explorer``; ``port=0`` (the default) picks a free port.

    A host that is not loopback is refused unless ``allow_remote``, and then a warning goes to
    ``log`` (stderr). One-line ConfigError for a port in use or an address that cannot be bound.
    """
    log = log or sys.stderr
    check_address(host, port, allow_remote)
    loopback = is_loopback(host)
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET

    class _Server(ExplorerServer):
        address_family = family

    try:
        server = _Server((host.strip("[]"), int(port)), _Handler)
    except OSError as exc:
        why = " ".join(str(exc.strerror or exc).split())
        hint = "; choose another with --port N (0: any free port)" if exc.errno in (98, 48, 10048) else ""
        raise ConfigError(f"cannot listen on {host}:{port} ({why}){hint}") from None
    server.explorer = explorer
    server.max_upload = int(max_upload)
    server.loopback_only = loopback
    server.verbose = verbose
    server.log = log
    if not loopback:
        log.write(
            f"warning: the explorer listens on {host}, not only on this machine: it has no authentication, so anyone "
            "who can reach this port can use the run's model and upload images to it\n"
        )
    return server
