#!/usr/bin/env bash
# Set up Cordon and play the offline demo on the embedded default city.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/cordon demo "$@"
