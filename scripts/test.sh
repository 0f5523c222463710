#!/usr/bin/env bash
# Set up (scripts/setup.sh test: the package with its test and ray extras) and run the test
# suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
. "${VENV:-.venv}/bin/activate"
exec python -m pytest "$@"
