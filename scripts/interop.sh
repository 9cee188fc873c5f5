#!/usr/bin/env bash
# Drives a real node with the published Python client pynexus2 (PyPI) over TCP and WebSocket.
# Needs python3 with venv; the venv lives beside the build output, outside the clone.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
venv="$target/../pyenv-interop"
if ! "$venv/bin/python" -c 'import pynexus, websocket' 2>/dev/null; then
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv" || { echo "python3 venv unavailable: sudo apt-get install -y python3-venv" >&2; exit 1; }
  "$venv/bin/pip" install -q 'pynexus2==1.4.0' 'websocket-client==1.8.0'
fi
cargo build --quiet --bin nexus
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
tcp=$(free_port); http=$(free_port)
data=$(mktemp -d)
"$target/debug/nexus" serve --data-dir "$data" -l "tcp://127.0.0.1:$tcp" -l "http://127.0.0.1:$http" 2>"$data.log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$data" "$data.log"' EXIT
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$tcp") 2>/dev/null && break; sleep 0.1; done
timeout 120 "$venv/bin/python" tests/interop/pynexus_check.py "$tcp" "$http"

# The examples of docs/clients.md, as written there, against the same node.
echo "docs/examples: curl bridge, plain WebSocket, pynexus2 worker"
bridge=$(bash docs/examples/bridge.sh "http://127.0.0.1:$http/" root root)
echo "$bridge"
grep -q '"count":1' <<<"$bridge" || { echo "FAIL: bridge.sh did not count its task" >&2; exit 1; }
timeout 60 "$venv/bin/python" docs/examples/websocket_plain.py "ws://127.0.0.1:$http/" root root
timeout 60 "$venv/bin/python" docs/examples/pynexus2_worker.py 127.0.0.1 "$tcp" root root
echo "docs/examples: all ran"
