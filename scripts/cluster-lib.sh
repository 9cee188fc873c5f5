# Shared by compare.sh and ab.sh (sourced): fresh local clusters of the binary in $bin.
# The caller sets `bin`; `root` (a scratch dir) and the EXIT trap are set here.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
root=$(mktemp -d)
pids=()
stop_nodes() { kill "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true; pids=(); }
trap 'stop_nodes; rm -rf "$root"' EXIT

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

