#!/usr/bin/env bash
# Runs every test: Rust unit and integration tests, then the interop tests with the stock
# npm `centrifuge` SDK and PyPI `cent` against the real binary.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --workspace --all-targets
cargo test --workspace
scripts/interop.sh
scripts/test-js.sh
scripts/test-examples.sh
