#!/usr/bin/env bash
# Set up (scripts/setup.sh: the package alone, no test or ray extras) and run the demo:
# build -> verify -> push -> load on a small model. Extra arguments go to `vindex-hub demo`
# (`--keep` keeps the checkpoint, vindex and local Hub it made).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. "${VENV:-.venv}/bin/activate"
exec vindex-hub demo "$@"
