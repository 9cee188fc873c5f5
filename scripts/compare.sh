#!/usr/bin/env bash
# Nexus-rs side by side with NATS JetStream (durable tasks) and NATS core (pub/sub) on this
# machine, interleaved in one run, and the table of docs/benchmarks.md ("Against NATS")
# generated from it. Ratios are only meaningful within one run.
#
# Usage: scripts/compare.sh [OUTDIR]          (make compare)
#   env: SECS=10 (per scenario), ANCHORS=scripts/nats (the reference harness: its NATS
#        client, server configs and compare.sh, which installs nats-server 2.15.1)
# Writes OUTDIR/table.md and prints it; every raw output stays in OUTDIR.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-10}
ANCHORS=$(cd "${ANCHORS:-scripts/nats}" && pwd)
OUT=${1:-$(mktemp -d -t nexus-compare-XXXXXX)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
target=${CARGO_TARGET_DIR:-target}
cargo build --release --quiet --bin nexus
bin=$(cd "$target/release" && pwd)/nexus
ulimit -n 20000 2>/dev/null || true

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
root=$(mktemp -d)
pids=()
stop_nodes() { kill "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true; pids=(); }
trap 'stop_nodes; rm -rf "$root"' EXIT
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/summary.txt"; }

# A fresh cluster of $1 nodes (1: standalone); sets $urls (comma-separated WebSocket URLs)
# and $node_pid (the first node's process).
declare -a http health cport
cluster() {
  stop_nodes; rm -rf "${root:?}"/*
  local n=$1 i
  for ((i = 0; i < n; i++)); do
    http[i]=$(free_port); health[i]=$(free_port); cport[i]=$(free_port)
    local extra=()
    ((n > 1)) && extra=(--cluster "127.0.0.1:${cport[i]}")
    ((i > 0)) && extra+=(--join "127.0.0.1:${cport[0]}")
    "$bin" serve --data-dir "$root/n$i" -l "http://127.0.0.1:${http[i]}" \
      -l "health://127.0.0.1:${health[i]}" "${extra[@]}" 2>>"$root/n$i.log" &
    pids[i]=$!
    for _ in $(seq 600); do curl -sf -o /dev/null "http://127.0.0.1:${health[i]}/" && break; sleep 0.1; done
  done
  if ((n > 1)); then # every node a voter
    for _ in $(seq 150); do
      local voters
      voters=$(curl -sf -u root:root -d '{"id":1,"method":"sys.node.list"}' "http://127.0.0.1:${http[0]}/" |
        python3 -c "import sys,json; print(sum(1 for n in json.load(sys.stdin)['result'] if n['role'] in ('leader','follower')))")
      [ "$voters" = "$n" ] && break
      sleep 0.2
    done
  fi
  urls=$(for ((i = 0; i < n; i++)); do printf 'ws://127.0.0.1:%s/,' "${http[i]}"; done)
  urls=${urls%,}
  node_pid=${pids[0]}
}

nexus() { # name nodes bench-args...
  local name=$1 nodes=$2; shift 2
  cluster "$nodes"
  "$bin" bench --url "$urls" --seconds "$SECS" --json "$@" >"$OUT/$name.txt" 2>"$OUT/$name.log" ||
    { log "$name: FAILED"; tail -5 "$OUT/$name.log"; return 0; }
  stop_nodes
  log "$name: $(grep -v '^{' "$OUT/$name.txt" | tr '\n' ' ')"
}

reference() { # scenario of the anchors' compare.sh: js1 js3 nats
  SCENARIOS=$1 SECS=$SECS NEXUS_BIN=$bin "$ANCHORS/compare.sh" "$OUT/ref" >/dev/null 2>&1 || true
  log "$1: $(grep -h 'RESULT' "$OUT"/ref/r1-*"$2"*.txt 2>/dev/null | tail -1)"
}

log "$("$bin" --version), $(nproc) cores, ${SECS}s per scenario, results in $OUT"
nexus tasks-1n-shared 1 tasks --callers 64 --workers 64 --connections 1 --worker-connections 1
reference js1 js-r1
nexus tasks-1n-conns 1 tasks --callers 64 --workers 64
nexus tasks-3n-shared 3 tasks --callers 64 --workers 64 --connections 3 --worker-connections 3
reference js3 js-r3
nexus tasks-1n-16 1 tasks --callers 16 --workers 16 --connections 1 --worker-connections 1
nexus topics-notify 1 topics --publishers 1 --subscribers 1 --notify
reference nats nats-pubsub
nexus topics-ack 1 topics --publishers 1 --subscribers 1
cluster 1
"$bin" bench --url "$urls" --json logins --clients 5000 --rounds 2 --node-pid "$node_pid" \
  >"$OUT/logins.txt" 2>"$OUT/logins.log" || log "logins: FAILED"
stop_nodes
log "logins: $(grep -v '^{' "$OUT/logins.txt" | tr '\n' ' ')"

python3 scripts/compare_table.py "$OUT" >"$OUT/table.md"
cat "$OUT/table.md"
