#!/usr/bin/env bash
# Create .venv (if missing) and install vindex-hub with its test and ray extras into it.
# torch is pinned to the CPU build first: an open `torch` requirement would pull a CUDA build.
# A second run with the same pyproject.toml and this script does nothing (a stamp in .venv says
# what was installed); set VINDEX_SETUP_FORCE=1 to reinstall anyway.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
STAMP=.venv/.vindex-hub-setup
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -z "${VINDEX_SETUP_FORCE:-}" ] && [ -x .venv/bin/python ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$want" ]; then
  echo "setup: .venv is up to date (pyproject.toml unchanged); nothing to do"
  exit 0
fi
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
echo "setup: upgrading pip"
python -m pip install -q --upgrade pip
echo "setup: installing torch 2.13.0 (CPU build; the first run downloads ~200 MB and takes a minute)"
python -m pip install -q "torch==2.13.0"
echo "setup: installing vindex-hub and its test extras (editable)"
python -m pip install -q -e ".[test,ray]"
echo "$want" > "$STAMP"
echo "setup: done; activate with: . .venv/bin/activate"
