#!/usr/bin/env bash
# Fan-out benchmark, Herald versus the peers in shared/peers (Socket.IO 4.8, NATS 2.9 with
# WebSocket), the same scenario in one run on this machine: one publisher, N subscribers on one
# channel. Starts each server in turn, runs `herald-bench fanout` against it, stops it by PID,
# and prints one JSON line per target and a markdown table with ratios against Herald.
#
# Usage: scripts/bench-fanout.sh [subscribers=1000] [messages=2000] [rate=200]
# Environment:
#   TIMEOUT=90          bound of each fanout run in seconds (herald-bench --timeout)
#   THREADS=2           load generator worker threads
#   TARGETS="herald herald-memory socketio nats"   what to run, in this order (first herald* = baseline)
#   BUILD_HERALD=1      0: do not try `cargo build --release -p herald`, use the existing binary
#   HERALD_BIN=target/release/herald   the Herald binary (skipped, row "pending", when missing)
#   HERALD_PORT=8000 SOCKETIO_PORT=3000 NATS_TCP_PORT=4223 NATS_WS_PORT=9223 NATS_HTTP_PORT=8223
#   PEERS_DIR=../shared/peers  PEERS_NODE=/tmp/peers/node  WORK=/tmp/herald-bench
# Neither peer stores history or recovers missed messages; Herald assigns offsets and (by default)
# stores every publication durably.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
N=${1:-1000}
M=${2:-2000}
RATE=${3:-200}
TIMEOUT=${TIMEOUT:-90}
THREADS=${THREADS:-2}
TARGETS=${TARGETS:-herald herald-memory socketio nats}
HERALD_PORT=${HERALD_PORT:-8000}
SOCKETIO_PORT=${SOCKETIO_PORT:-3000}
NATS_TCP_PORT=${NATS_TCP_PORT:-4223}
NATS_WS_PORT=${NATS_WS_PORT:-9223}
NATS_HTTP_PORT=${NATS_HTTP_PORT:-8223}
PEERS_DIR=$(cd "${PEERS_DIR:-$ROOT/../shared/peers}" && pwd)
PEERS_NODE=${PEERS_NODE:-/tmp/peers/node}
WORK=${WORK:-/tmp/herald-bench}
mkdir -p "$WORK"
RESULTS="$WORK/results.jsonl"
: >"$RESULTS"

log() { echo "bench-fanout: $*" >&2; }

# Every subscriber is one socket in the load generator and one in the server.
need_fds=$((N + 200))
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$need_fds" ]; then
  ulimit -n "$need_fds" 2>/dev/null || log "open-file limit $(ulimit -n) is below $need_fds: expect connection failures"
fi

cargo build --release -p herald-bench >&2
BENCH="$ROOT/target/release/herald-bench"
if [ "${BUILD_HERALD:-1}" = 1 ]; then
  cargo build --release -p herald >&2 || log "herald did not build; using target/release/herald if it exists"
fi

started=()
stop_pid() {
  kill "$1" 2>/dev/null || return 0
  for _ in $(seq 1 50); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$1" 2>/dev/null || true
}
cleanup() { for pid in "${started[@]}"; do stop_pid "$pid"; done; }
trap cleanup EXIT
trap 'exit 130' INT TERM

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { for _ in $(seq 1 150); do port_open "$1" && return 0; sleep 0.1; done; return 1; }

# start LABEL PORT LOG CMD...: starts a server in the background; sets SERVER_PID.
start() {
  local label=$1 port=$2 logfile=$3
  shift 3
  if port_open "$port"; then
    log "port $port is already in use: skipping $label"
    return 1
  fi
  "$@" >"$logfile" 2>&1 &
  SERVER_PID=$!
  started+=("$SERVER_PID")
  if ! wait_port "$port"; then
    log "$label did not open port $port; its log:"
    tail -n 20 "$logfile" >&2
    stop_pid "$SERVER_PID"
    return 1
  fi
}

# bench LABEL ARGS...: one fanout run against the server SERVER_PID, JSON line to RESULTS.
bench() {
  local label=$1
  shift
  log "$label: $N subscribers x $M messages at $RATE/s"
  timeout $((TIMEOUT + 30)) "$BENCH" fanout --label "$label" --subscribers "$N" --messages "$M" --rate "$RATE" \
    --timeout "$TIMEOUT" --threads "$THREADS" --server-pid "$SERVER_PID" --json "$@" | tee -a "$RESULTS" ||
    log "$label: herald-bench exited with $? (status in its JSON line, if any)"
}

PENDING=()
HERALD=${HERALD_BIN:-$ROOT/target/release/herald}
run_herald() {
  local label=$1
  if [ ! -x "$HERALD" ]; then
    log "$HERALD does not exist (yet): skipping $label"
    PENDING+=("$label")
    return 0
  fi
  local help args
  help=$("$HERALD" serve --help 2>&1 || true)
  args=(serve --dev --port "$HERALD_PORT")
  if [ "$label" = herald-memory ]; then
    if [[ $help != *--memory* ]]; then
      log "this herald has no --memory: skipping $label"
      return 0
    fi
    args+=(--memory)
  elif [[ $help == *--data-dir* ]]; then
    rm -rf "$WORK/herald-data"
    args+=(--data-dir "$WORK/herald-data")
  fi
  [[ $help == *--log-level* ]] && args+=(--log-level warn)
  start "$label" "$HERALD_PORT" "$WORK/$label.log" "$HERALD" "${args[@]}" || { PENDING+=("$label"); return 0; }
  bench "$label" --target herald --addr "127.0.0.1:$HERALD_PORT"
  stop_pid "$SERVER_PID"
}

run_socketio() {
  if [ ! -d "$PEERS_NODE/node_modules/socket.io" ]; then
    log "installing socket.io in $PEERS_NODE"
    mkdir -p "$PEERS_NODE"
    (cd "$PEERS_NODE" && npm init -y >/dev/null && npm install --no-audit --no-fund socket.io socket.io-client >&2)
  fi
  start socketio "$SOCKETIO_PORT" "$WORK/socketio.log" \
    env NODE_PATH="$PEERS_NODE/node_modules" PORT="$SOCKETIO_PORT" node "$PEERS_DIR/socketio-server.js" || return 0
  bench socketio --target socketio --addr "127.0.0.1:$SOCKETIO_PORT"
  stop_pid "$SERVER_PID"
}

run_nats() {
  if ! command -v nats-server >/dev/null; then
    log "installing nats-server"
    apt-get update >/dev/null && apt-get install -y nats-server >/dev/null
  fi
  # A NATS may already run on the default ports: a copy of the config with other ports.
  sed -e "s/4222/$NATS_TCP_PORT/; s/8222/$NATS_HTTP_PORT/; s/9222/$NATS_WS_PORT/" "$PEERS_DIR/nats-ws.conf" >"$WORK/nats-ws.conf"
  start nats "$NATS_WS_PORT" "$WORK/nats.log" nats-server -c "$WORK/nats-ws.conf" || return 0
  wait_port "$NATS_TCP_PORT" || log "NATS TCP port $NATS_TCP_PORT did not open"
  bench nats --target nats --addr "127.0.0.1:$NATS_WS_PORT" --nats-tcp "127.0.0.1:$NATS_TCP_PORT"
  stop_pid "$SERVER_PID"
}

for target in $TARGETS; do
  case $target in
    herald | herald-memory) run_herald "$target" ;;
    socketio) run_socketio ;;
    nats) run_nats ;;
    *) log "unknown target $target" ;;
  esac
done

echo
echo "Fan-out, $N subscribers x $M publications at $RATE/s ($(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores," \
  "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')). Neither peer stores history or recovers missed messages."
echo
"$BENCH" table "${PENDING[@]/#/--pending=}" <"$RESULTS"
