#!/usr/bin/env bash
# Set up the environment with the test extras (first run only) and run the test suite.
# Extra arguments go to pytest, e.g. `scripts/test.sh -m slow` for the long checks.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
exec .venv/bin/python -m pytest "$@"
