#!/usr/bin/env bash
# Interoperability tests with stock third-party clients against the real herald binary:
#   tests/interop  the npm `centrifuge` SDK (Node, `ws` as WebSocket), run with `node --test`
#   tests/python   PyPI `cent` (server HTTP API client), run with pytest
# Needs node >= 20 with npm, and python3 (3.11) with venv and pip. Builds target/debug/herald
# when missing (or set HERALD_BIN to a binary). Exits non-zero when anything fails.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

if [ -z "${HERALD_BIN:-}" ]; then
  HERALD_BIN="$ROOT/target/debug/herald"
  if [ ! -x "$HERALD_BIN" ] || [ "${INTEROP_BUILD:-1}" = 1 ]; then
    echo "== cargo build -p herald"
    cargo build -p herald || { echo "interop: cargo build -p herald failed" >&2; exit 1; }
  fi
fi
export HERALD_BIN
[ -x "$HERALD_BIN" ] || { echo "interop: no herald binary at $HERALD_BIN" >&2; exit 1; }

node_status=0
python_status=0

echo "== npm centrifuge (tests/interop)"
(
  set -e
  cd tests/interop
  npm ci --no-audit --no-fund --loglevel=error
  echo "centrifuge $(node -p "require('./node_modules/centrifuge/package.json').version"), ws $(node -p "require('./node_modules/ws/package.json').version"), node $(node --version)"
  node --test --test-concurrency=1 --test-timeout=60000 test/
) || node_status=$?

echo "== PyPI cent (tests/python)"
(
  set -e
  cd tests/python
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
  fi
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
  echo "cent $(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("cent"))'), $(.venv/bin/python --version)"
  .venv/bin/python -m pytest -p no:cacheprovider -q -rfE .
) || python_status=$?

echo "== interop summary: node tests exit $node_status, python tests exit $python_status"
if [ "$node_status" -ne 0 ] || [ "$python_status" -ne 0 ]; then
  exit 1
fi
