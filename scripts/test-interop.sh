#!/usr/bin/env bash
# Interop tests: the stock npm `centrifuge` SDK (Node) and PyPI `cent` against the real binary.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build -p herald
export HERALD_BIN="$PWD/target/debug/herald"

echo "== npm centrifuge"
(cd interop/node && npm ci --no-audit --no-fund && npm test)

if [ -d interop/python ]; then
  echo "== PyPI cent"
  python3 -m venv interop/python/.venv
  interop/python/.venv/bin/pip install --quiet -r interop/python/requirements.txt
  interop/python/.venv/bin/python -m pytest -q interop/python
fi
