#!/usr/bin/env bash
# Create .venv (if missing) and install vindex-hub with its test and ray extras into it.
# torch is pinned to the CPU build first: an open `torch` requirement would pull a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[test,ray]"
