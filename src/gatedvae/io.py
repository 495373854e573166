"""Small helpers every layer uses: atomic files, JSON reads, the did-you-mean message, headless
matplotlib. Standard library only (matplotlib is imported when :func:`use_agg` is called).

Atomic writes go to a temporary file in the same directory (named after the process, so two writers
never share one) and are renamed over the target: a reader sees the old file or the new one, never
a torn one, and a kill mid-write leaves the old file intact.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["atomic_write_text", "atomic_json", "read_json", "closest", "unknown_choice", "use_agg"]


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (temp file + rename); returns the path."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)  # only left behind when the write or the rename failed
    return p


def atomic_json(path: str | os.PathLike, data: Any, indent: int | None = 2) -> Path:
    """Write ``data`` as JSON (a trailing newline) to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(data, indent=indent) + "\n")


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON object in ``path``; ``{}`` when the file is absent, unreadable, torn or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def closest(value: str, valid: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The entry of ``valid`` nearest to ``value`` (difflib's ratio at least ``cutoff``), or None."""
    found = difflib.get_close_matches(str(value), [str(v) for v in valid], n=1, cutoff=cutoff)
    return found[0] if found else None


def unknown_choice(kind: str, value: Any, valid: Iterable[str], cutoff: float = 0.6) -> ConfigError:
    """The one-line error for a name that is not among ``valid``: ``unknown metric 'mgi'; did you mean
    'mig'?`` when one is close, else ``...; choose one of a, b, c``."""
    valid = sorted(str(v) for v in valid)
    near = closest(str(value), valid, cutoff)
    hint = f"; did you mean {near!r}?" if near else f"; choose one of {', '.join(valid)}"
    return ConfigError(f"unknown {kind} {str(value)!r}{hint}")


def use_agg():
    """``matplotlib.pyplot`` with the non-interactive Agg backend (figures are files here, never windows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
