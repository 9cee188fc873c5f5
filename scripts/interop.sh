#!/usr/bin/env bash
# Drives a real node with the published Python client pynexus2 (PyPI) over TCP and WebSocket,
# then runs docs/examples (curl, plain WebSocket, pynexus2, and Node.js with the npm clients
# rpc-websockets and jayson). Needs python3 with venv, node and npm (make test-deps installs
# them); the venv and node_modules live beside the build output, outside the clone.
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
echo "docs/examples: curl bridge, plain WebSocket, pynexus2 worker, Node.js"
bridge=$(bash docs/examples/bridge.sh "http://127.0.0.1:$http/" root root)
echo "$bridge"
grep -q '"count":1' <<<"$bridge" || { echo "FAIL: bridge.sh did not count its task" >&2; exit 1; }
timeout 60 "$venv/bin/python" docs/examples/websocket_plain.py "ws://127.0.0.1:$http/" root root
timeout 60 "$venv/bin/python" docs/examples/pynexus2_worker.py 127.0.0.1 "$tcp" root root

# Node.js: two published npm JSON-RPC 2.0 clients (no Nexus client is on npm), pinned,
# installed beside the build output. ESM resolves packages from the script's directory,
# so the example runs from a copy there.
nodedir="$target/../node-interop"
if ! [ -d "$nodedir/node_modules/rpc-websockets" ] || ! [ -d "$nodedir/node_modules/jayson" ]; then
  mkdir -p "$nodedir"
  (cd "$nodedir" && npm install --silent --no-audit --no-fund --no-save rpc-websockets@10.0.1 jayson@5.0.0)
fi
cp docs/examples/node_client.mjs "$nodedir/"
timeout 60 node "$nodedir/node_client.mjs" "ws://127.0.0.1:$http/" 127.0.0.1 "$tcp" root root
echo "docs/examples: all ran"
