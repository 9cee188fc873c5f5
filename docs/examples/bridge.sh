#!/usr/bin/env bash
# The HTTP bridge: one JSON-RPC request per POST, credentials as HTTP Basic auth.
# Usage: bridge.sh http://127.0.0.1:8080/ root root
set -euo pipefail
url=${1:-http://127.0.0.1:8080/} user=${2:-root} pass=${3:-root}

curl -sS -u "$user:$pass" -d '{"jsonrpc":"2.0","id":1,"method":"sys.ping","params":{}}' "$url"
echo
curl -sS -u "$user:$pass" -d '{"id":2,"method":"user.create","params":{"user":"curl.demo","pass":"demo-pass"}}' "$url"
echo
curl -sS -u "$user:$pass" -d '{"id":3,"method":"task.push","params":{"method":"curl.jobs.resize","params":{"w":640},"detach":true}}' "$url"
echo
curl -sS -u "$user:$pass" -d '{"id":4,"method":"task.count","params":{"prefix":"curl"}}' "$url"
echo
