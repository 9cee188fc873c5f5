#!/usr/bin/env bash
# A fresh 3-node release cluster on loopback, then:
#   1. task round trips with clients spread over the 3 nodes (64/64 and 16/16), and with
#      every pusher on one node and every worker on another,
#   2. publishes and pipe writes crossing nodes,
#   3. failover: sequential writes through a follower while the leader is killed with -9
#      (then it is restarted),
#   4. cleanup: a follower holding a lock is killed with -9; time until the lock is granted
#      through another node,
#   5. catch-up: the cluster is filled (users + detached tasks) and a 4th node joins; the
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

declare -a http health cluster nodeargs
start_node() { # index, join args...
  local i=$1; shift
  http[$i]=$(free_port); health[$i]=$(free_port); cluster[$i]=$(free_port)
  nodeargs[$i]="$*"
  run_node "$i" "$@"
}
restart_node() { # index: same ports, data dir and arguments
  # shellcheck disable=SC2086
  run_node "$1" ${nodeargs[$1]}
}
run_node() {
  local i=$1; shift
  "$bin" serve --data-dir "$root/n$i" -l "http://127.0.0.1:${http[$i]}" \
    -l "health://127.0.0.1:${health[$i]}" \
    --cluster "127.0.0.1:${cluster[$i]}" "$@" 2>>"$root/n$i.log" &
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
echo "== 3 nodes: pushers on one node, workers on another"
"$bin" bench tasks --url "ws://127.0.0.1:${http[0]}/" --workers-url "ws://127.0.0.1:${http[1]}/" \
  --callers 64 --workers 64 --seconds "$seconds"
echo "== 3 nodes: publishes and pipe writes crossing nodes"
"$bin" bench topics --url "$urls" --seconds "$seconds"
"$bin" bench pipes --url "$urls" --seconds "$seconds"

echo "== failover: writes through a follower, leader killed with -9 after 3 s"
leader=""; for i in 0 1 2; do [ "$(role_of $i)" = leader ] && leader=$i; done
follower=$(( (leader + 1) % 3 ))
"$bin" bench writes --url "ws://127.0.0.1:${http[$follower]}/" --seconds 8 &
writer=$!
sleep 3
kill -9 "${pids[$leader]}"
wait $writer
restart_node "$leader"
wait_ready "$leader"

echo "== cleanup: a follower whose client holds a lock is killed with -9"
leader=""; for i in 0 1 2; do [ "$(role_of $i)" = leader ] && leader=$i; done
victim=$(( (leader + 1) % 3 ))
survivor=$(( (leader + 2) % 3 ))
"$bin" bench cleanup --url "ws://127.0.0.1:${http[$victim]}/,ws://127.0.0.1:${http[$survivor]}/" \
  --kill-pid "${pids[$victim]}"

echo "== catch-up: fill, then a 4th node joins"
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
