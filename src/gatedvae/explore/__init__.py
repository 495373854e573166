"""``gatedvae explore``: look inside a trained run in the browser (docs/explore.md).

* :mod:`.session`: :class:`Explorer`, the run loaded once, answering pure questions (posteriors,
  decodes, traversals, swaps, prior draws, what ``metrics.json`` says);
* :mod:`.api`: the HTTP routes as functions, every bad request a 4xx with a one-line message;
* :mod:`.server`: the standard library's threading HTTP server, loopback by default;
* :mod:`.export`: the same page as one self-contained static HTML file;
* :mod:`.command`: the command's options and body; ``assets/``: the page (plain HTML, CSS, JS).

The names below are imported on first use, so that the command line's parser (which reads
:mod:`.command`) loads no torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["Explorer", "make_server", "export_page"]

_WHERE = {"Explorer": ".session", "make_server": ".server", "export_page": ".export"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
