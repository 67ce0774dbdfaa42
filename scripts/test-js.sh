#!/usr/bin/env bash
# Herald's browser packages (clients/js: @herald/client and @herald/react): installs them
# (npm ci), builds them, type-checks, runs the vitest unit tests and the Node tests against the
# real herald binary, then the Playwright tests in Debian's Chromium (headless) against it.
# Needs node >= 20 with npm; installs Chromium with apt-get when missing (as root, as CI runs).
# Builds target/debug/herald unless HERALD_BIN names a binary; CHROMIUM_PATH overrides
# /usr/bin/chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

if [ -z "${HERALD_BIN:-}" ]; then
  HERALD_BIN="$ROOT/target/debug/herald"
  echo "== cargo build -p herald"
  cargo build -p herald
fi
export HERALD_BIN
[ -x "$HERALD_BIN" ] || { echo "test-js: no herald binary at $HERALD_BIN" >&2; exit 1; }

export CHROMIUM_PATH="${CHROMIUM_PATH:-/usr/bin/chromium}"
if [ ! -x "$CHROMIUM_PATH" ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "== apt-get install chromium"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
  else
    echo "test-js: no Chromium at $CHROMIUM_PATH; install it (apt-get install chromium) or set CHROMIUM_PATH" >&2
    exit 1
  fi
fi

cd clients/js
echo "== npm ci (clients/js)"
# Playwright drives the system Chromium; it must not try to download browsers.
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error
echo "node $(node --version), $("$CHROMIUM_PATH" --version 2>/dev/null | head -1), herald $HERALD_BIN"
echo "== build"
npm run build --silent
echo "== typecheck"
npm run typecheck --silent
echo "== vitest (units)"
npx vitest run
echo "== vitest (against herald)"
npm run test:integration --silent
echo "== playwright"
npx playwright test
