#!/usr/bin/env bash
# Where Docker runs: builds the image, starts deploy/docker-compose.yml's three nodes with
# generated secrets, waits until every node's health listener answers ok and the cluster
# lists three ready members, then takes it all down (volumes included).
# Usage: scripts/compose-smoke.sh docker compose   (or: docker-compose)
set -euo pipefail
cd "$(dirname "$0")/.."
compose=("$@" -p nexus-smoke -f deploy/docker-compose.yml)
NEXUS_ROOT_PASSWORD="$(head -c 12 /dev/urandom | base64)"
NEXUS_CLUSTER_SECRET="$(head -c 32 /dev/urandom | base64)"
export NEXUS_ROOT_PASSWORD NEXUS_CLUSTER_SECRET
trap '"${compose[@]}" down -v >/dev/null 2>&1 || true' EXIT
"${compose[@]}" up -d --build
for port in 8180 8181 8182; do
  for _ in $(seq 120); do
    curl -fsS "http://127.0.0.1:$port/" >/dev/null 2>&1 && break
    sleep 1
  done
  curl -fsS "http://127.0.0.1:$port/" >/dev/null || { "${compose[@]}" logs; exit 1; }
done
# Gossip brings each member's status a moment after its own health: ask until all three
# are listed ready, for two minutes at most.
ready=0
for _ in $(seq 120); do
  out=$(curl -fsS -u "root:$NEXUS_ROOT_PASSWORD" -d '{"id":1,"method":"sys.node.list","params":{}}' http://127.0.0.1:8080/ || true)
  ready=$(grep -o '"status":"ready"' <<<"$out" | wc -l)
  [ "$ready" -eq 3 ] && break
  sleep 1
done
[ "$ready" -eq 3 ] || { echo "compose smoke: $ready ready nodes: $out" >&2; exit 1; }
echo "compose smoke: three nodes formed one cluster, all ready"
