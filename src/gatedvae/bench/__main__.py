"""``python -m gatedvae.bench``: the benchmark without the rest of the CLI; also the entry of the
sections measured in a fresh interpreter (``--child KIND ARGS``, :mod:`.children`)."""

import argparse
import sys

from .children import child_main
from .command import add_arguments, bench_command

if len(sys.argv) > 2 and sys.argv[1] == "--child":
    sys.exit(child_main(sys.argv[2:]))
parser = argparse.ArgumentParser(prog="python -m gatedvae.bench", description="Measure training speed and more.")
add_arguments(parser)
bench_command(parser.parse_args())
