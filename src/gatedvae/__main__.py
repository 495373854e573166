"""``python -m gatedvae`` is the ``gatedvae`` command."""

import sys

from .cli import main

sys.exit(main())
