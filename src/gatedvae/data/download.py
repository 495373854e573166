"""``gatedvae data download NAME [--to DIR]``: fetch a benchmark data set's official files.

Each file (:mod:`gatedvae.data.sources`) is fetched from its official URL into ``<file>.part``
with a progress bar, then verified and renamed into place (``os.replace``): a file under its final
name is always complete. A ``.part`` left by an interrupted download is resumed with an HTTP
``Range`` request (a server that ignores it sends the whole file, which is then written from the
start); a connection that drops mid-transfer is resumed the same way, up to ``retries`` times in
one call, and the command says how to go on when it gives up. Verification: the size the server
announced (and the known size, where there is one), the file's format by its first bytes (an HTML
page where a zip was expected is refused) and the MD5 where one is known. Archives named by the
source are unpacked (only the members under the named prefix, never outside the target folder).

No network, a refusing server (HTTP 4xx/5xx) or a damaged file is one line naming the URL, so a
user can fetch the file by hand and point ``data.path`` at it. A data set whose licence must be
accepted (CelebA) is never fetched without ``accept_licence=True`` (``--accept-licence``).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from ..errors import DataError
from .cache import why
from .sources import Remote, Source, default_path, source

__all__ = ["download", "fetch", "verify", "extract"]

_MAGIC = {
    "h5": (b"\x89HDF\r\n\x1a\n",),
    "zip": (b"PK\x03\x04", b"PK\x05\x06"),
    "gzip": (b"\x1f\x8b",),
    "jpeg": (b"\xff\xd8\xff",),
}
_BLOCK = 1 << 20
_USER_AGENT = "gatedvae-data-download/0.3"


def _by_hand(url: str, dest: Path) -> str:
    return f"fetch {url} by hand into {dest.parent} (then set data.path to it)"


def verify(path: Path, remote: Remote, total: int | None = None, url: str | None = None) -> None:
    """Refuse (one-line DataError) a file whose size, format or MD5 is not the expected one."""
    remote = Remote(url or remote.url, remote.filename, remote.kind, remote.md5, remote.size)
    size = path.stat().st_size
    for want, what in ((total, "the server announced"), (remote.size, "the file has")):
        if want is not None and size != want:
            raise DataError(f"{remote.url}: downloaded {size:,} bytes, {what} {want:,}; {_by_hand(remote.url, path)}")
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head.lstrip()[:1] == b"<" and remote.kind != "any":
        raise DataError(
            f"{remote.url} sent a web page instead of the {remote.kind} file (a login, quota or virus-scan page?); "
            f"{_by_hand(remote.url, path)}"
        )
    magics = _MAGIC.get(remote.kind)
    if magics and not any(head.startswith(m) for m in magics):
        raise DataError(
            f"{remote.url}: the downloaded file is not a {remote.kind} file (it starts {head[:8].hex()}); "
            f"{_by_hand(remote.url, path)}"
        )
    if remote.md5:
        md5 = hashlib.md5(usedforsecurity=False)
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(_BLOCK), b""):
                md5.update(block)
        if md5.hexdigest() != remote.md5:
            raise DataError(
                f"{remote.url}: the downloaded file fails its MD5 check (got {md5.hexdigest()}, expected "
                f"{remote.md5}); it is damaged or the server changed it, run again or {_by_hand(remote.url, path)}"
            )


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """``(first byte, total)`` of a ``Content-Range: bytes a-b/total`` header (None where unknown)."""
    if not value or not value.startswith("bytes "):
        return None, None
    span, _, total = value[6:].partition("/")
    first = span.split("-")[0]
    return (int(first) if first.isdigit() else None), (int(total) if total.isdigit() else None)


class _Unreachable(DataError):
    """No connection to the server, or it refused: the next mirror may do better."""


def fetch(
    remote: Remote,
    dest: Path,
    progress: bool = True,
    retries: int = 3,
    timeout: float = 60.0,
    log: Callable[[str], None] = print,
) -> Path:
    """Download ``remote`` to ``dest`` (resuming ``dest.part``), verify it, rename it into place.
    The official URL first, then its mirrors (same file, same checks) if it cannot be reached."""
    dest = Path(dest)
    if dest.exists():
        verify(dest, remote)
        log(f"{dest} is already there (verified)")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    urls = (remote.url, *remote.mirrors)
    for i, url in enumerate(urls):
        try:
            return _fetch_from(url, remote, dest, progress, retries, timeout, log)
        except _Unreachable as exc:
            if i + 1 == len(urls):
                if len(urls) > 1:
                    raise DataError(f"{exc} (mirrors tried too: {', '.join(urls[1:])})") from None
                raise DataError(str(exc)) from None
            log(f"{url} failed ({str(exc).split(';')[0]}); trying {urls[i + 1]}")
    raise AssertionError("unreachable")  # pragma: no cover


def _fetch_from(
    url: str, remote: Remote, dest: Path, progress: bool, retries: int, timeout: float, log: Callable[[str], None]
) -> Path:
    part = dest.with_name(dest.name + ".part")
    drops, total = 0, None
    while True:
        have = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": _USER_AGENT, **({"Range": f"bytes={have}-"} if have else {})}
        try:
            resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # nothing left to send: the .part is whole (verified below)
                break
            raise _Unreachable(
                f"{url} refused the download: HTTP {exc.code} {exc.reason}; {_by_hand(url, dest)}"
            ) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise _Unreachable(
                f"could not reach {url} ({why(reason) if isinstance(reason, BaseException) else reason}); "
                f"no network? {_by_hand(url, dest)}"
            ) from None
        with resp:
            length = resp.headers.get("Content-Length")
            length = int(length) if length and length.isdigit() else None
            if have and resp.status == 206:
                first, total = _content_range(resp.headers.get("Content-Range"))
                if first != have:  # not the range asked for: start again
                    have, total = 0, None
                    part.unlink(missing_ok=True)
                    continue
                if total is None and length is not None:
                    total = have + length
            else:  # 200: the whole file (a server that ignores Range included)
                have, total = 0, length
            if remote.size is not None and total is not None and total != remote.size:
                part.unlink(missing_ok=True)
                raise DataError(
                    f"{url} offers {total:,} bytes, the official file has {remote.size:,}; {_by_hand(url, dest)}"
                )
            bar = None
            if progress:
                from ..progress import progress_bar

                bar = progress_bar(total=total, initial=have, desc=dest.name, unit="B")
            dropped = ""
            try:
                with open(part, "ab" if have else "wb") as fh:  # a local write error (full disk) propagates
                    while True:
                        try:
                            block = resp.read(_BLOCK)
                        except (OSError, http.client.HTTPException) as exc:  # the connection broke
                            dropped = why(exc) or type(exc).__name__
                            break
                        if not block:
                            break
                        fh.write(block)
                        if bar is not None:
                            bar.update(len(block))
            finally:
                if bar is not None:
                    bar.close()
        size = part.stat().st_size
        if total is not None and size > total:
            part.unlink(missing_ok=True)
            raise DataError(f"{url} sent {size:,} bytes, more than the {total:,} it announced; {_by_hand(url, dest)}")
        if dropped or (total is not None and size < total):
            drops += 1
            if drops > retries:
                raise DataError(
                    f"the download of {url} broke off at {size:,} of {total or '?'} bytes {drops} times "
                    f"({dropped or 'connection closed early'}); run the same command again to resume from there"
                )
            log(f"{dest.name}: the connection dropped at {size:,} bytes; resuming")
            continue
        break
    try:
        verify(part, remote, total, url)
    except DataError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    return dest


def _safe_target(root: Path, member: str, prefix: str) -> Path | None:
    """Where ``member`` of an archive goes under ``root`` (the prefix stripped), or None to skip it
    (outside the prefix, a directory, or a path that would leave ``root``)."""
    if not member.startswith(prefix):
        return None
    rel = PurePosixPath(member[len(prefix) :])
    if not rel.parts or rel.is_absolute() or ".." in rel.parts:
        return None
    return root.joinpath(*rel.parts)


def extract(archive: Path, prefix: str, into: Path, log: Callable[[str], None] = print) -> Path:
    """Unpack the regular-file members of ``archive`` (zip or tar.gz) under ``prefix`` into ``into``
    (written in ``into.part`` and renamed: a folder under its final name is complete)."""
    if into.is_dir() and any(into.iterdir()):
        log(f"{into} is already unpacked")
        return into
    tmp = into.with_name(into.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    count = 0
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    target = None if info.is_dir() else _safe_target(tmp, info.filename, prefix)
                    if target is not None:
                        target.parent.mkdir(parents=True, exist_ok=True)
                        with zf.open(info) as src, open(target, "wb") as dst:
                            shutil.copyfileobj(src, dst, _BLOCK)
                        count += 1
        else:
            with tarfile.open(archive, "r:*") as tf:
                for info in tf:
                    target = _safe_target(tmp, info.name, prefix) if info.isfile() else None
                    if target is not None:
                        target.parent.mkdir(parents=True, exist_ok=True)
                        with tf.extractfile(info) as src, open(target, "wb") as dst:
                            shutil.copyfileobj(src, dst, _BLOCK)
                        count += 1
    except (OSError, EOFError, zipfile.BadZipFile, tarfile.TarError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"{archive} could not be unpacked ({why(exc)}); delete it and download again") from None
    if not count:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"{archive} holds no files under {prefix}; is it the right archive?")
    shutil.rmtree(into, ignore_errors=True)
    os.replace(tmp, into)
    log(f"unpacked {count:,} files into {into}")
    return into


def download(
    name: str,
    to: str | os.PathLike | None = None,
    accept_licence: bool = False,
    progress: bool = True,
    data_dir_setting: str = "",
    retries: int = 3,
    timeout: float = 60.0,
    log: Callable[[str], None] = print,
    src: Source | None = None,
) -> Path:
    """Fetch the data set ``name`` into ``to`` (default ``<data_dir>/<name>/``, where its loader
    looks when ``data.path`` is empty); returns the folder. ``src`` replaces the registered source
    (tests point it at a local server)."""
    src = src or source(name)
    if src.accept and not accept_licence:
        raise DataError(
            f"{src.title} may be used only under its licence: {src.licence}; read it at {src.homepage}, then run "
            f"`gatedvae data download {name} --accept-licence` to accept it and download (nothing was downloaded)"
        )
    folder = Path(to).expanduser() if to else default_path(name, data_dir_setting)
    log(f"{src.title}: {src.size}; licence: {src.licence}")
    for remote in src.files:
        fetch(remote, folder / remote.filename, progress=progress, retries=retries, timeout=timeout, log=log)
    for archive, prefix, into in src.extract:
        extract(folder / archive, prefix, folder / into, log=log)
    return folder
