#!/usr/bin/env bash
# Two builds of nexus side by side on make compare's task scenarios, interleaved in one
# run (before, after, before, after...), each on a fresh node or cluster: what a change
# costs. NATS is not run; only our own ratio before and after is in question.
#
# Usage: scripts/ab.sh BEFORE_BIN AFTER_BIN [OUTDIR]
#   env: SECS=10 (per run), ROUNDS=3
# Build BEFORE from a worktree with its own CARGO_TARGET_DIR: cargo keys workspace crates by
# their path inside the workspace, so a shared target directory mixes the two builds.
# Prints one line per run (round trips/s and latencies, from `nexus bench --json`) and
# keeps the raw outputs in OUTDIR.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: $0 BEFORE_BIN AFTER_BIN [OUTDIR]" >&2; exit 2; }
before=$(realpath "$1") after=$(realpath "$2")
# Two builds sharing a target directory can leave one binary behind for both.
if cmp -s "$before" "$after"; then
  echo "$before and $after are the same binary: nothing to compare" >&2
  exit 2
fi
SECS=${SECS:-10} ROUNDS=${ROUNDS:-3}
OUT=${3:-$(mktemp -d -t nexus-ab-XXXXXX)}
mkdir -p "$OUT"
ulimit -n 20000 2>/dev/null || true
bin=$before
# free_port, stop_nodes and `cluster N` (a fresh cluster of N nodes served by $bin).
source scripts/cluster-lib.sh

run() { # label binary nodes connections
  local label=$1 nodes=$3 conns=$4
  bin=$2
  cluster "$nodes"
  "$bin" bench --url "$urls" --seconds "$SECS" --json tasks --callers 64 --workers 64 \
    --connections "$conns" --worker-connections "$conns" >"$OUT/$label.txt" 2>"$OUT/$label.log" ||
    { echo "$label: FAILED"; return 0; }
  stop_nodes
  echo "$label: $(grep -v '^{' "$OUT/$label.txt" | head -1)"
}

echo "before: $("$before" --version), after: $("$after" --version), $(nproc) cores, ${SECS}s per run"
for ((r = 1; r <= ROUNDS; r++)); do
  for nodes in 1 3; do
    run "r$r-${nodes}n-before" "$before" "$nodes" "$nodes"
    run "r$r-${nodes}n-after" "$after" "$nodes" "$nodes"
  done
done
