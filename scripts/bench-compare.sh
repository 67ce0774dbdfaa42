#!/usr/bin/env bash
# Herald versus the peers in shared/peers (Socket.IO 4.8, NATS 2.9 over WebSocket), every
# scenario of issue 5 in one run on this machine. `herald-bench compare` starts each server on
# free loopback ports, runs the scenario, stops it by its PID and prints the figures with
# Herald-versus-peer ratios; this script installs the peers if needed, builds the release
# binaries and runs the scenarios with the targets' parameters. Output: one markdown table per
# scenario on stdout, the JSON documents in $WORK/*.json.
#
# Usage: scripts/bench-compare.sh [scenario...]   (default: fanout fanout-saturation latency idle churn slow slow-overflow ws-crates)
# Environment:
#   TARGETS=herald,herald-memory,socketio,nats   what compare runs, in order (first herald* = baseline)
#   SUBSCRIBERS=1000  IDLE_CONNECTIONS=19000  FANOUT_MESSAGES=4000  WORK=/tmp/herald-bench-compare
#   BUILD=1 (0: use the existing target/release binaries)   PEERS_NODE=/tmp/peers/node
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TARGETS=${TARGETS:-herald,herald-memory,socketio,nats}
N=${SUBSCRIBERS:-1000}
IDLE=${IDLE_CONNECTIONS:-19000}
FANOUT_MESSAGES=${FANOUT_MESSAGES:-4000}
WORK=${WORK:-/tmp/herald-bench-compare}
PEERS_NODE=${PEERS_NODE:-/tmp/peers/node}
SCENARIOS=("$@")
[ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=(fanout fanout-saturation latency idle churn slow slow-overflow ws-crates)
mkdir -p "$WORK"
log() { echo "bench-compare: $*" >&2; }

if [ ! -d "$PEERS_NODE/node_modules/socket.io" ]; then
  log "installing socket.io in $PEERS_NODE"
  mkdir -p "$PEERS_NODE"
  (cd "$PEERS_NODE" && npm init -y >/dev/null && npm install --no-audit --no-fund socket.io socket.io-client >&2)
fi
if ! command -v nats-server >/dev/null; then
  log "installing nats-server"
  apt-get update >/dev/null && apt-get install -y nats-server >/dev/null
fi
if [ "${BUILD:-1}" = 1 ]; then
  cargo build --release -j 2 -p herald -p herald-bench >&2
fi
BENCH="$ROOT/target/release/herald-bench"
# Servers started by compare inherit the raised limit (herald-bench raises its own soft limit
# to the hard limit too).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

compare() {
  local name=$1
  shift
  log "$name: $*"
  echo
  echo "### $name ($(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB)"
  echo
  echo "\`herald-bench compare --targets $TARGETS $*\`"
  echo
  "$BENCH" compare --targets "$TARGETS" --node-modules "$PEERS_NODE/node_modules" --work-dir "$WORK/servers" \
    --json-out "$WORK/$name.json" "$@" || log "$name: some target did not finish cleanly (see its status)"
}

for scenario in "${SCENARIOS[@]}"; do
  case $scenario in
    # Offered 2,000 publications/s x N subscribers; what each server sustains is measured.
    fanout) compare fanout fanout -n "$N" -m "$FANOUT_MESSAGES" --rate 2000 --timeout 90 ;;
    # More offered than any target takes, each publishing over its own client protocol on one
    # WebSocket connection (Herald's publish command, NATS PUB): what each server's fan-out
    # sustains when the publisher is not the limit.
    fanout-saturation)
      compare fanout-saturation fanout -n "$N" -m 15000 --rate 20000 --publish-over ws --timeout 90 ;;
    latency) compare latency latency -n "$N" -m 1000 --rate 100 --timeout 90 ;;
    idle) compare idle idle -n "$IDLE" --duration 5 --timeout 180 ;;
    churn) compare churn churn --duration 10 --concurrency 64 ;;
    slow) compare slow slow -n "$N" -m 1000 --rate 100 --slow-share 0.01 --rounds 3 --timeout 90 ;;
    # 2 MB for each subscriber over 20 s: a stalled one overflows Herald's 1 MiB queue limit.
    slow-overflow) compare slow-overflow slow -n "$N" -m 2000 --rate 100 --payload 1000 --slow-share 0.01 --rounds 3 --timeout 120 ;;
    ws-crates)
      echo
      echo "### ws-crates ($(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores)"
      echo
      "$BENCH" ws-crates -n 10000 --fanout-connections 1000 --frames 1000
      ;;
    *) log "unknown scenario $scenario" ;;
  esac
done
