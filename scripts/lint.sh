#!/usr/bin/env bash
# Set up (scripts/setup.sh test: ruff and mypy are test extras) and run the static checks:
# ruff (lint, import order, format), then mypy (pyproject.toml [tool.mypy]: strict on format/,
# numerics/, hub/, load/). CI runs this before the test suite; `bash scripts/lint.sh --fix`
# applies ruff's safe fixes and formats in place. docs/development.md describes the checks.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
. "${VENV:-.venv}/bin/activate"
if [ "${1:-}" = "--fix" ]; then
  ruff check --fix .
  ruff format .
  exit 0
fi
echo "lint: ruff check"
ruff check .
echo "lint: ruff format --check"
ruff format --check .
echo "lint: mypy"
mypy
