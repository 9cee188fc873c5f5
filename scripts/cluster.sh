#!/usr/bin/env bash
# Starts 3 local nodes in the foreground (data in ./data-cluster/nN, prefixed logs);
# Ctrl-C stops them all. Clients: tcp://127.0.0.1:1717..1719, ws/http://127.0.0.1:8080..8082.
set -euo pipefail
bin="${CARGO_TARGET_DIR:-$HOME/.cache/nexus-rs/target}/release/nexus"
root="${CLUSTER_DIR:-./data-cluster}"
mkdir -p "$root"
pids=()
trap 'kill -TERM "${pids[@]}" 2>/dev/null; wait' INT TERM EXIT
for i in 0 1 2; do
  join=(--join 127.0.0.1:7000 --join 127.0.0.1:7001 --join 127.0.0.1:7002 --bootstrap-expect 3)
  "$bin" serve --data-dir "$root/n$i" \
    -l "tcp://127.0.0.1:$((1717 + i))" -l "http://127.0.0.1:$((8080 + i))" \
    -l "health://127.0.0.1:$((8180 + i))" \
    --cluster "127.0.0.1:$((7000 + i))" "${join[@]}" "$@" 2>&1 | sed -u "s/^/[n$i] /" &
  pids+=($!)
done
wait
