#!/usr/bin/env bash
# A fresh 3-node release cluster on loopback, then:
#   1. task round trips with clients spread over the 3 nodes (64/64 and 16/16),
#   2. failover: sequential writes through a follower while the leader is killed with -9,
#   3. catch-up: the cluster is filled (users + detached tasks) and a 4th node joins; the
#      time until it is ready and has every user.
# Usage: scripts/bench-cluster.sh [seconds] [fill-users] [fill-tasks]
# (numbers go into docs/benchmarks.md by hand)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
fill_users=${2:-1000}
fill_tasks=${3:-100000}
target=${CARGO_TARGET_DIR:-target}
cargo build --release --quiet --bin nexus
bin="$target/release/nexus"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
root=$(mktemp -d)
pids=()
cleanup() { kill -9 "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$root"; }
trap cleanup EXIT

declare -a http health cluster
start_node() { # index, join args...
  local i=$1; shift
  http[$i]=$(free_port); health[$i]=$(free_port); cluster[$i]=$(free_port)
  "$bin" serve --data-dir "$root/n$i" -l "http://127.0.0.1:${http[$i]}" \
    -l "health://127.0.0.1:${health[$i]}" \
    --cluster "127.0.0.1:${cluster[$i]}" "$@" 2>"$root/n$i.log" &
  pids[$i]=$!
}
ready() { curl -sf -o /dev/null "http://127.0.0.1:${health[$1]}/"; }
wait_ready() { for _ in $(seq 600); do ready "$1" && return 0; sleep 0.1; done; echo "node $1 not ready" >&2; cat "$root/n$1.log" >&2; exit 1; }
rpc() { # node, method, params
  curl -sf -u root:root -d "{\"id\":1,\"method\":\"$2\",\"params\":$3}" "http://127.0.0.1:${http[$1]}/"
}
role_of() { # node → its own role
  rpc "$1" sys.node.list '{}' | python3 -c "import sys,json; c='127.0.0.1:${cluster[$1]}'; print([n['role'] for n in json.load(sys.stdin)['result'] if n['cluster']==c][0])"
}

start_node 0
wait_ready 0
for i in 1 2; do start_node $i --join "127.0.0.1:${cluster[0]}"; done
for i in 1 2; do wait_ready $i; done
# All three voters.
for _ in $(seq 100); do
  n=$(rpc 0 sys.node.list '{}' | python3 -c "import sys,json; print(sum(1 for n in json.load(sys.stdin)['result'] if n['role'] in ('leader','follower')))")
  [ "$n" = 3 ] && break; sleep 0.2
done
urls="ws://127.0.0.1:${http[0]}/,ws://127.0.0.1:${http[1]}/,ws://127.0.0.1:${http[2]}/"
echo "== 3 nodes: task round trips, clients spread over all nodes"
"$bin" bench tasks --url "$urls" --callers 64 --workers 64 --seconds "$seconds"
"$bin" bench tasks --url "$urls" --callers 16 --workers 16 --seconds "$seconds"

echo "== failover: writes through a follower, leader killed with -9 after 3 s"
leader=""; for i in 0 1 2; do [ "$(role_of $i)" = leader ] && leader=$i; done
follower=$(( (leader + 1) % 3 ))
"$bin" bench writes --url "ws://127.0.0.1:${http[$follower]}/" --seconds 8 &
writer=$!
sleep 3
kill -9 "${pids[$leader]}"
wait $writer

echo "== catch-up: fill, then a 4th node joins"
survivor=$follower
"$bin" bench fill --url "ws://127.0.0.1:${http[$survivor]}/" --users "$fill_users" --tasks "$fill_tasks"
want=$(rpc "$survivor" user.count '{"prefix":""}' | python3 -c "import sys,json; print(json.load(sys.stdin)['result']['count'])")
t0=$(date +%s.%N)
start_node 3 --join "127.0.0.1:${cluster[$survivor]}"
wait_ready 3
for _ in $(seq 6000); do
  got=$(rpc 3 user.count '{"prefix":""}' 2>/dev/null | python3 -c "import sys,json; print(json.load(sys.stdin)['result']['count'])" 2>/dev/null || echo 0)
  [ "$got" = "$want" ] && break; sleep 0.05
done
t1=$(date +%s.%N)
snap=$(sed 's/\x1b\[[0-9;]*m//g' "$root/n3.log" | grep -o 'installed a state snapshot.*' | head -1 || true)
printf 'catch-up: a new node was ready with all %s users (and %s tasks) %.2f s after it started; %s\n' \
  "$want" "$fill_tasks" "$(echo "$t1 - $t0" | bc -l)" "${snap:-no snapshot installed}"
