"""The 0.1 home of run evaluation, kept so that ``from gatedvae.evaluate import evaluate_run`` works.

Everything here moved to :mod:`gatedvae.evaluation` (``load_trained``: :mod:`gatedvae.run`, the
one loader of a trained run); new code imports from there.
"""

from __future__ import annotations

from .evaluation import FORMAT, evaluate_run, format_headline, to_jsonable, udr_runs, write_figures
from .run import load_trained

__all__ = ["evaluate_run", "udr_runs", "to_jsonable", "format_headline", "write_figures", "load_trained", "FORMAT"]
