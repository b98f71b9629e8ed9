#!/bin/sh
# Creates ./.venv and installs the bridge into it (editable).  setup-venv.sh [test]
# With "test", the test/bench extras too (pytest, aiortc, playwright driver, mypy, ruff, shiv...).
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
if [ "${1:-}" = test ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
else
  .venv/bin/python -m pip install -q --disable-pip-version-check -e .
fi
