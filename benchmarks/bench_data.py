"""dSprites generation time, store size and resident memory, in a fresh process (the ``data``
section of ``gatedvae bench``; the implementation is ``gatedvae.bench``).

Run: .venv/bin/python benchmarks/bench_data.py [--out bench_data.json]

CorrelatedEllipses at its default size is measured by ``benchmarks/scaling.py`` (memory
against dataset size).
"""

from __future__ import annotations

import sys

from gatedvae.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--only", "data", *sys.argv[1:]]))
