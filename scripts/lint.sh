#!/usr/bin/env bash
# Lint and format checks with the ruff pinned in the dev extra (configured in pyproject.toml:
# rules E, F, W, I, B, UP at 120 columns). Sets up the environment with the test extras first.
#   scripts/lint.sh          check: `ruff check .` and `ruff format --check .` (what CI runs)
#   scripts/lint.sh --fix    apply ruff's safe fixes, then format in place
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev || exit 1
ruff=.venv/bin/ruff
if [[ ${1:-} == --fix ]]; then
  "$ruff" check --fix .
  rc=$?
  "$ruff" format . || rc=1
  exit $rc
fi
rc=0
if ! "$ruff" check .; then
  echo "lint: 'ruff check .' found the problems above; 'scripts/lint.sh --fix' fixes the safe ones" >&2
  rc=1
fi
if ! "$ruff" format --check .; then
  echo "lint: 'ruff format --check .' would reformat the files above; 'scripts/lint.sh --fix' formats them" >&2
  rc=1
fi
[[ $rc -eq 0 ]] && echo "lint: ruff check and ruff format --check passed"
exit $rc
