"""All benchmarks in one run: the same as ``gatedvae bench`` (see ``gatedvae.bench`` and
docs/performance.md for what is measured and how).

Run: .venv/bin/python benchmarks/run.py [--only train,metrics] [--quick] [--out bench.json] [--markdown]
"""

from __future__ import annotations

import sys

from gatedvae.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
