#!/usr/bin/env bash
# Nexus-rs side by side with NATS JetStream (durable tasks) and NATS core (pub/sub) on this
# machine, interleaved in one run, and the table of docs/benchmarks.md ("Against NATS")
# generated from it. Ratios are only meaningful within one run. JetStream runs twice:
# at its default (fsync every 2 minutes: js1, js3) and with `sync_interval: always`
# (fsync before every ack, as our Raft log: js1s, js3s).
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
# 20,000 sessions need as many open files in the node and in the bench, plus the node's
# own (listeners, RocksDB): where the hard limit is lower, as many sessions as it allows.
ulimit -Hn 65536 2>/dev/null || true
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
SESSIONS=20000
files=$(ulimit -n)
if [ "$files" != unlimited ] && [ "$files" -lt $((SESSIONS + 500)) ]; then
  SESSIONS=$((files - 500))
fi

log() { echo "[$(date +%T)] $*" | tee -a "$OUT/summary.txt"; }
# free_port, stop_nodes and `cluster N` (a fresh cluster of N nodes served by $bin).
source scripts/cluster-lib.sh

nexus() { # name nodes bench-args...
  local name=$1 nodes=$2; shift 2
  cluster "$nodes"
  "$bin" bench --url "$urls" --seconds "$SECS" --json "$@" >"$OUT/$name.txt" 2>"$OUT/$name.log" ||
    { log "$name: FAILED"; tail -5 "$OUT/$name.log"; return 0; }
  stop_nodes
  log "$name: $(grep -v '^{' "$OUT/$name.txt" | tr '\n' ' ')"
}

reference() { # scenario of the anchors' compare.sh (js1 js3 js1s js3s nats), its output file
  SCENARIOS=$1 SECS=$SECS NEXUS_BIN=$bin "$ANCHORS/compare.sh" "$OUT/ref" >/dev/null 2>&1 || true
  log "$1: $(grep -h 'RESULT' "$OUT/ref/r1-$2.txt" 2>/dev/null | tail -1)"
}

log "$("$bin" --version), $(nproc) cores, ${SECS}s per scenario, results in $OUT"
nexus tasks-1n-shared 1 tasks --callers 64 --workers 64 --connections 1 --worker-connections 1
reference js1 js-r1
reference js1s js-r1-sync
nexus tasks-1n-conns 1 tasks --callers 64 --workers 64
nexus tasks-3n-shared 3 tasks --callers 64 --workers 64 --connections 3 --worker-connections 3
reference js3 js-r3
reference js3s js-r3-sync
nexus tasks-1n-16 1 tasks --callers 16 --workers 16 --connections 1 --worker-connections 1
nexus topics-notify 1 topics --publishers 1 --subscribers 1 --notify
reference nats nats-pubsub
nexus topics-ack 1 topics --publishers 1 --subscribers 1
logins() { # name clients: a fresh node, `clients` connections logged in twice
  cluster 1
  "$bin" bench --url "$urls" --json logins --clients "$2" --rounds 2 --node-pid "$node_pid" \
    >"$OUT/$1.txt" 2>"$OUT/$1.log" || log "$1: FAILED"
  stop_nodes
  log "$1: $(grep -v '^{' "$OUT/$1.txt" | tr '\n' ' ')"
}
logins logins 5000
[ "$SESSIONS" -lt 20000 ] &&
  log "open-files limit $files: the memory scenario holds $SESSIONS sessions, not 20,000"
logins logins-20k "$SESSIONS"

python3 scripts/compare_table.py "$OUT" >"$OUT/table.md"
cat "$OUT/table.md"
