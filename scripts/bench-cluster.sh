#!/usr/bin/env bash
# Cluster benchmark: the same fan-out scenario (one publisher, N subscribers on one channel)
# against one node with the memory engine, then three nodes on Redis (engine.type = redis) with
# the subscribers spread over the three and the publisher on the first. Prints one JSON line per
# run from `herald-bench fanout --json`, plus the CPU seconds used by the nodes and by Redis and
# Redis CPU per publication (`herald-bench --server-pid` with Redis's PID: user + system CPU from
# the first publication to the last delivery, from /proc/PID/stat).
#
# Redis is our own `redis-server` on a free port (no persistence), so its CPU is ours alone; the
# shared Redis on 6379 is not touched.
#
# Usage: scripts/bench-cluster.sh [subscribers=1000] [messages=2000] [rate=200]
# Environment: TIMEOUT=90 THREADS=2 BUILD=1 (0: use the existing release binaries)
#   HERALD_BIN=target/release/herald (another build of the server, to compare two)
#   WORK=/tmp/herald-bench-cluster   (servers listen on free loopback ports)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
N=${1:-1000}
M=${2:-2000}
RATE=${3:-200}
TIMEOUT=${TIMEOUT:-90}
THREADS=${THREADS:-2}
WORK=${WORK:-/tmp/herald-bench-cluster}
mkdir -p "$WORK"

log() { echo "bench-cluster: $*" >&2; }

need_fds=$((N + 200))
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$need_fds" ]; then
  ulimit -n "$need_fds" 2>/dev/null || log "open-file limit $(ulimit -n) is below $need_fds"
fi
if [ "${BUILD:-1}" = 1 ]; then
  cargo build --release -p herald -p herald-bench >&2
fi
HERALD=${HERALD_BIN:-"$ROOT/target/release/herald"}
BENCH="$ROOT/target/release/herald-bench"
command -v redis-server >/dev/null || { log "redis-server is not installed"; exit 1; }

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
# CPU seconds (user + system) of the given PIDs, from /proc/PID/stat.
cpu_seconds() {
  local ticks total=0 pid
  ticks=$(getconf CLK_TCK)
  for pid in "$@"; do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
  done
  python3 -c "print(round($total / $ticks, 2))"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# run LABEL SUBSCRIBER_ADDRS... -- NODE_PIDS...: one fanout run, publishing to the first address.
run() {
  local label=$1
  shift
  local addrs=() pids=()
  while [ "$1" != -- ]; do addrs+=("$1"); shift; done
  shift
  pids=("$@")
  local sub_args=()
  for addr in "${addrs[@]}"; do sub_args+=(--subscriber-addr "$addr"); done
  local nodes_before redis_before=0 nodes_after redis_after=0
  nodes_before=$(cpu_seconds "${pids[@]}")
  [ -n "${REDIS_PID:-}" ] && redis_before=$(cpu_seconds "$REDIS_PID")
  log "$label: $N subscribers over ${#addrs[@]} node(s) x $M messages at $RATE/s"
  local line
  line=$(timeout $((TIMEOUT + 30)) "$BENCH" fanout --label "$label" --addr "${addrs[0]}" "${sub_args[@]}" \
    --subscribers "$N" --messages "$M" --rate "$RATE" --timeout "$TIMEOUT" --threads "$THREADS" \
    --server-pid "$CPU_PID" --json || true)
  nodes_after=$(cpu_seconds "${pids[@]}")
  [ -n "${REDIS_PID:-}" ] && redis_after=$(cpu_seconds "$REDIS_PID")
  LINE="$line" NB="$nodes_before" NA="$nodes_after" RB="$redis_before" RA="$redis_after" python3 -c '
import json, os
report = json.loads(os.environ["LINE"] or "{}")
nodes = float(os.environ["NA"]) - float(os.environ["NB"])
redis = float(os.environ["RA"]) - float(os.environ["RB"])
# Whole run (connecting 1,000 subscribers included), nodes and Redis.
report["run_nodes_cpu_seconds"] = round(nodes, 2)
report["run_redis_cpu_seconds"] = round(redis, 2)
print(json.dumps(report))
'
}

# One node, memory engine.
port=$(free_port)
"$HERALD" serve --dev --memory --port "$port" --log-level warn >"$WORK/memory.log" 2>&1 &
pid=$!
started+=("$pid")
wait_port "$port" && kill -0 "$pid" || { log "the memory node did not start"; tail "$WORK/memory.log" >&2; exit 1; }
REDIS_PID='' CPU_PID=$pid run memory-1-node "127.0.0.1:$port" -- "$pid"
stop_pid "$pid"

# Three nodes on our own Redis.
redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
started+=("$REDIS_PID")
wait_port "$redis_port" || { log "redis-server did not start"; exit 1; }
prefix="bench-$(date +%s)"
addrs=() pids=()
for i in 1 2 3; do
  port=$(free_port)
  HERALD_ENGINE_TYPE=redis HERALD_ENGINE_REDIS_ADDRESS="127.0.0.1:$redis_port" HERALD_ENGINE_REDIS_PREFIX="$prefix" \
    "$HERALD" serve --dev --port "$port" --log-level warn >"$WORK/node$i.log" 2>&1 &
  pids+=($!)
  started+=($!)
  addrs+=("127.0.0.1:$port")
done
for addr in "${addrs[@]}"; do wait_port "${addr##*:}" || { log "node $addr did not start"; exit 1; }; done
CPU_PID=$REDIS_PID run redis-3-nodes "${addrs[@]}" -- "${pids[@]}"
# Where Redis spent its time (calls, µs per call), for the record.
if command -v redis-cli >/dev/null; then
  redis-cli -p "$redis_port" INFO commandstats | grep -E '^cmdstat_(evalsha|eval|publish|hmget|xrange|zadd|hset)' >&2 || true
fi
