#!/usr/bin/env bash
# Create a virtual environment (.venv, or $VENV) and install vindex-hub into it, editable.
#   bash scripts/setup.sh          the package alone: what `vindex-hub demo`, build, push and load need
#   bash scripts/setup.sh test     plus the test and ray extras (pytest, transformers, ruff, mypy, ray)
# torch is pinned to the CPU build first: an open `torch` requirement would pull a CUDA build.
# A second run with the same pyproject.toml and this script does nothing (a stamp per level in the
# venv says what was installed; the test level includes the base one); VINDEX_SETUP_FORCE=1
# reinstalls anyway.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
LEVEL=${1:-base}
case "$LEVEL" in
  base) EXTRAS="" ;;
  test) EXTRAS="[test,ray]" ;;
  *) echo "setup: unknown level '$LEVEL' (expected base or test)" >&2; exit 2 ;;
esac
STAMP="$VENV/.vindex-hub-setup"
[ "$LEVEL" = base ] || STAMP="$STAMP-$LEVEL"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -z "${VINDEX_SETUP_FORCE:-}" ] && [ -x "$VENV/bin/python" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$want" ]; then
  echo "setup: $VENV is up to date (pyproject.toml unchanged); nothing to do"
  exit 0
fi
started=$SECONDS
step() { echo "setup [$((SECONDS - started)) s]: $*"; }
pip_at_least() {  # pip_at_least PYTHON MAJOR MINOR: that interpreter has a pip at least that new
  "$1" -c 'import sys, pip; v = tuple(int(x) for x in pip.__version__.split(".")[:2]); sys.exit(v < (int(sys.argv[1]), int(sys.argv[2])))' "$2" "$3" 2>/dev/null
}
# pip and its options: --no-compile because pip would byte-compile every module of every wheel
# (torch alone has thousands); Python compiles the ones actually imported, once, on first use.
PIP_OPTS=(install --no-compile --progress-bar off)
WITH_PIP=()
if [ ! -x "$VENV/bin/python" ]; then
  if pip_at_least "$PYTHON" 22 3; then
    # `venv` spends seconds installing and compiling its bundled pip; this Python's own pip
    # (22.3+ can install into another interpreter) installs pip there with everything else.
    step "creating $VENV with $PYTHON (pip comes with the packages below)"
    "$PYTHON" -m venv --without-pip "$VENV"
  else
    step "creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
  fi
fi
if pip_at_least "$VENV/bin/python" 21 3; then
  PIP=("$VENV/bin/python" -m pip)
elif pip_at_least "$PYTHON" 22 3; then
  PIP=("$PYTHON" -m pip --python "$VENV/bin/python")
  WITH_PIP=(pip)
else  # an editable install from pyproject.toml needs pip 21.3+
  step "upgrading pip in $VENV"
  "$VENV/bin/python" -m ensurepip -q 2>/dev/null || true
  "$VENV/bin/python" -m pip install -q --upgrade pip
  PIP=("$VENV/bin/python" -m pip)
fi
# torch is named in the same pip command (one resolution, one install), pinned to the CPU build.
TORCH=()
"$VENV/bin/python" -c 'import torch' 2>/dev/null || TORCH=("torch==2.13.0")
step "installing vindex-hub${EXTRAS:+ with the extras $EXTRAS} (editable)${TORCH[0]:+, torch 2.13.0 (CPU build; ~200 MB unless a local wheel is found)} and their dependencies"
# pip's own lines that show progress (what it fetches, builds, installs); the rest goes to a log.
LOG="$VENV/.vindex-hub-setup.log"
set +e
# ${A[@]+"${A[@]}"}: an empty array under `set -u` in bash before 4.4 (macOS's /bin/bash).
"${PIP[@]}" "${PIP_OPTS[@]}" ${WITH_PIP[@]+"${WITH_PIP[@]}"} ${TORCH[@]+"${TORCH[@]}"} -e ".$EXTRAS" 2>&1 | tee "$LOG" \
  | grep -E --line-buffered '^(Collecting|Building|Installing|Successfully|ERROR)'
status=${PIPESTATUS[0]}
set -e
if [ "$status" -ne 0 ]; then
  tail -n 5 "$LOG" >&2
  echo "setup: installing vindex-hub failed (pip exit $status); the whole log is $LOG" >&2
  exit 1
fi
echo "$want" > "$VENV/.vindex-hub-setup"
echo "$want" > "$STAMP"
step "done; activate with: . $VENV/bin/activate"
