#!/usr/bin/env bash
# Interop tests of Herald's extensions through stock clients: change events, filters, audience and
# patch mode with the npm `centrifuge` SDK, and the npm `cent.js` server API client
# (interop/node). The protocol-compatibility suites (npm `centrifuge`, PyPI `cent`) are
# scripts/interop.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build -p herald
export HERALD_BIN="$PWD/target/debug/herald"

echo "== Herald extensions through npm centrifuge, and npm cent.js (interop/node)"
(cd interop/node && npm ci --no-audit --no-fund && npm test)
