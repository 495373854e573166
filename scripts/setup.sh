#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install the package.
#   scripts/setup.sh          runtime dependencies
#   scripts/setup.sh dev      plus the test extras
# PyTorch is pinned to the CPU build torch==2.13.0 here; the package itself only asks for a
# range, so a GPU user can install their own CUDA build first (it is kept if importable).
# Set GATEDVAE_TORCH_INDEX to an index URL to fetch torch from somewhere else.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
py="${PYTHON:-}"
if [[ -z $py ]]; then
  for cand in python3.11 python3.12 python3.10 python3; do
    if command -v "$cand" >/dev/null 2>&1; then py=$cand; break; fi
  done
fi
[[ -n $py ]] || { echo "setup: no python3 found; install Python 3.10 or newer" >&2; exit 2; }
if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv with $($py --version)"
  "$py" -m venv .venv
fi
vpy=.venv/bin/python
stamp=.venv/.gatedvae-installed${extras:+-$extras}
want="$(cat pyproject.toml | cksum)"
if [[ -f $stamp && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
log=.venv/setup.log
pip_install() {
  # pip's chatter goes to .venv/setup.log; it is shown only when an install fails.
  if ! "$vpy" -m pip install "$@" >>"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "setup: pip install $* failed (full log: $log)" >&2
    exit 1
  fi
}
if ! "$vpy" -c "import torch" >/dev/null 2>&1; then
  echo "setup: installing torch==2.13.0 (CPU build)"
  pip_install ${GATEDVAE_TORCH_INDEX:+--index-url "$GATEDVAE_TORCH_INDEX"} "torch==2.13.0"
fi
target="."
[[ -n $extras ]] && target=".[$extras]"
echo "setup: installing gatedvae${extras:+ with [$extras]}"
pip_install -e "$target"
echo "$want" > "$stamp"
