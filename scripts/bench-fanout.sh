#!/usr/bin/env bash
# Fan-out benchmark, Herald versus the peers in ../shared/peers, in one run on this machine:
# one publisher, N subscribers on one channel. Prints one JSON line per target.
# Usage: scripts/bench-fanout.sh [subscribers] [messages] [rate]
set -euo pipefail
cd "$(dirname "$0")/.."
SUBSCRIBERS=${1:-1000}
MESSAGES=${2:-2000}
RATE=${3:-200}
PEERS=${PEERS_DIR:-../shared/peers}
WORK=${BENCH_WORK:-/tmp/herald-bench-peers}
mkdir -p "$WORK"

cargo build --release -p herald -p herald-bench >&2
BENCH=target/release/herald-bench
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }

# Herald: in-memory engine (like the peers, which keep no history) and the durable default.
for engine in memory redb; do
  args=(serve --dev --port 8000 --log-level warn)
  if [ "$engine" = memory ]; then args+=(--memory); else rm -rf "$WORK/herald-data"; args+=(--data-dir "$WORK/herald-data"); fi
  target/release/herald "${args[@]}" >"$WORK/herald-$engine.log" 2>&1 & pids+=($!)
  wait_port 8000
  $BENCH --target herald --addr 127.0.0.1:8000 --subscribers "$SUBSCRIBERS" --messages "$MESSAGES" --rate "$RATE" --json | sed "s/\"target\":\"herald\"/\"target\":\"herald-$engine\"/"
  kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
done

# Socket.IO 4.8 (Node).
if [ ! -d "$WORK/node/node_modules/socket.io" ]; then
  mkdir -p "$WORK/node" && (cd "$WORK/node" && npm init -y >/dev/null && npm install --no-audit --no-fund socket.io >/dev/null 2>&1)
fi
NODE_PATH="$WORK/node/node_modules" PORT=3000 node "$PEERS/socketio-server.js" >"$WORK/socketio.log" 2>&1 & pids+=($!)
wait_port 3000
$BENCH --target socketio --addr 127.0.0.1:3000 --subscribers "$SUBSCRIBERS" --messages "$MESSAGES" --rate "$RATE" --json

# NATS with WebSocket (a NATS may already run on 4222: use other ports).
command -v nats-server >/dev/null || { apt-get update >/dev/null && apt-get install -y nats-server >/dev/null; }
sed 's/listen: 127.0.0.1:4222/listen: 127.0.0.1:4223/; s/http: 127.0.0.1:8222/http: 127.0.0.1:8223/' "$PEERS/nats-ws.conf" >"$WORK/nats-ws.conf"
nats-server -c "$WORK/nats-ws.conf" >"$WORK/nats.log" 2>&1 & pids+=($!)
wait_port 9222
$BENCH --target nats --addr 127.0.0.1:9222 --nats-tcp 127.0.0.1:4223 --subscribers "$SUBSCRIBERS" --messages "$MESSAGES" --rate "$RATE" --json
