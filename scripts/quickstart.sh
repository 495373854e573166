#!/usr/bin/env bash
# Set up the environment (first run only) and run the main job: `gatedvae quickstart`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/gatedvae quickstart "$@"
