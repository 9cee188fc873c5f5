#!/usr/bin/env bash
# Starts a fresh release node on free loopback ports, runs `nexus bench` against it, stops it.
# Usage: scripts/bench.sh [seconds]   (the numbers go into docs/benchmarks.md by hand)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
target=${CARGO_TARGET_DIR:-target}
cargo build --release --quiet --bin nexus
bin="$target/release/nexus"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
http=$(free_port)
data=$(mktemp -d)
"$bin" serve --data-dir "$data" -l "http://127.0.0.1:$http" 2>"$data.log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$data" "$data.log"' EXIT
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$http") 2>/dev/null && break; sleep 0.1; done
url="ws://127.0.0.1:$http/"
"$bin" bench tasks --url "$url" --callers 64 --workers 64 --seconds "$seconds"
"$bin" bench tasks --url "$url" --callers 16 --workers 16 --seconds "$seconds"
"$bin" bench topics --url "$url" --seconds "$seconds"
