"""Pair-batch sampling rate: index pairs/s and assembled image pairs/s per sampler (the
``pairs`` section of ``gatedvae bench``; the implementation is ``gatedvae.bench``).

Run: .venv/bin/python benchmarks/bench_pairs.py [--out bench_pairs.json]
"""

from __future__ import annotations

import sys

from gatedvae.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--only", "pairs", *sys.argv[1:]]))
