#!/usr/bin/env bash
# End-to-end tests of the examples/ apps: builds each example binary, then runs
# tests/examples-e2e (node's test runner + playwright-core) against them in headless Debian
# Chromium. Installs Chromium with apt when it is missing (set CHROMIUM to use another binary).
# Screenshots of each page land in tests/examples-e2e/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${CHROMIUM:-}" ]; then
  if ! command -v chromium >/dev/null; then
    echo "== installing chromium (apt)"
    apt-get update && apt-get install -y chromium
  fi
  export CHROMIUM="$(command -v chromium)"
fi
"$CHROMIUM" --version

echo "== cargo build (examples)"
packages=()
for manifest in examples/*/Cargo.toml; do
  packages+=(-p "example-$(basename "$(dirname "$manifest")")")
done
cargo build "${packages[@]}"
export EXAMPLES_BIN_DIR="$PWD/target/debug"

echo "== examples e2e (tests/examples-e2e)"
cd tests/examples-e2e
npm ci --no-audit --no-fund --loglevel=error
echo "playwright-core $(node -p "require('./node_modules/playwright-core/package.json').version"), node $(node --version)"
node --test --test-concurrency=1 --test-timeout=180000 test/
