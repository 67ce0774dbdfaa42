#!/usr/bin/env bash
# Runs every test: Rust unit and integration tests (the Redis cluster tests included), the interop
# tests with the stock npm `centrifuge` SDK and PyPI `cent` against the real binary, the browser
# packages (vitest, Playwright in Chromium) and the five examples' end-to-end browser tests.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --workspace --all-targets
cargo test --workspace
scripts/interop.sh
scripts/test-js.sh
scripts/test-examples.sh
