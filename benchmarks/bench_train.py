"""Training images/s next to the machine's matrix-multiply roofline (the ``train`` section of
``gatedvae bench``; the implementation is ``gatedvae.bench``).

Run: .venv/bin/python benchmarks/bench_train.py [--seconds 2.5] [--rounds 5] [--threads N] [--quick]
     [--out bench_train.json]
"""

from __future__ import annotations

import sys

from gatedvae.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--only", "train", *sys.argv[1:]]))
