#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the demo: build -> verify -> push -> load on a small model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec vindex-hub demo "$@"
