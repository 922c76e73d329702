#!/usr/bin/env bash
# A rolling restart under load, as users feel it (docs/BENCHMARKS.md, step 11): a 2m-2s-sync
# cluster (SYNC_MASTER + SYNC_FLUSH) from scripts/cluster.sh, a topic of 8 queues per group, and,
# for each node in turn, a producer sending one message at a time (`cluster-cli bench produce
# --in-flight 1`, 1 KiB) while the node is stopped with SIGTERM and started again: the
# controllers, then each group's slave, then its master (which hands mastership over as it
# stops). Per node, one JSON line: the longest send (the pause the producer felt, from the
# bench's latency max), p999, and any status other than SEND_OK. Last, the longest of all.
# Stops the cluster and removes its directory on exit.
#
#   scripts/bench-rolling-restart.sh [COUNT]
#
# COUNT: messages per node's run (default 6000: several seconds at one in flight, so that the
# stop and the start fall inside it). Environment: BIN_DIR (default ./target/release, built by
# cluster.sh up when missing), BENCH_DIR (default /tmp/bench-rolling).
set -eEuo pipefail
shopt -s inherit_errexit
trap 'echo "bench-rolling-restart: line $LINENO: \"$BASH_COMMAND\" failed with status $?" >&2' ERR
cd "$(dirname "$0")/.."
COUNT=${1:-6000}
BENCH_DIR=${BENCH_DIR:-/tmp/bench-rolling}
export BIN_DIR=${BIN_DIR:-$PWD/target/release}
CLI="$BIN_DIR/cluster-cli"

cleanup() { bash scripts/cluster.sh down --dir "$BENCH_DIR" >/dev/null 2>&1 || true; rm -rf "$BENCH_DIR"; }
trap cleanup EXIT
rm -rf "$BENCH_DIR"
bash scripts/cluster.sh up 2m-2s-sync --dir "$BENCH_DIR" >&2
# shellcheck disable=SC1091
set -a; . "$BENCH_DIR/cluster.env"; set +a
"$CLI" --controller "$CONTROLLER_ADDR" topic create bench --queues 8 >&2

# Each group's slaves, then its master, as the controller lists them now.
brokers_in_order() {
  "$CLI" --controller "$CONTROLLER_ADDR" --json cluster list | python3 -c '
import json, sys
for group in json.load(sys.stdin)["groups"]:
    ids = [b["id"] for b in group["brokers"]]
    master = group.get("master_id")
    for i in sorted(ids, key=lambda i: i == master):
        print("%s-%d" % (group["name"], i))'
}

# Waits (at most 30 s) until NODE's process has exited.
wait_exited() {
  local pid
  pid=$(cat "$BENCH_DIR/$1.pid")
  for _ in $(seq 300); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  echo "bench-rolling-restart: $1 did not exit within 30 s of SIGTERM" >&2
  return 1
}

# Waits (at most 30 s) until the bench wrote its first progress line to FILE: it is sending.
wait_sending() {
  for _ in $(seq 300); do
    grep -q "sent" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "bench-rolling-restart: the producer did not start sending" >&2
  return 1
}

longest=0
nodes="controller-1 controller-2 controller-3 $(brokers_in_order | tr '\n' ' ')"
for node in $nodes; do
  progress="$BENCH_DIR/bench-$node.err"
  "$CLI" --controller "$CONTROLLER_ADDR" --json bench produce --topic bench --count "$COUNT" \
    --in-flight 1 --size 1024 >"$BENCH_DIR/bench-$node.json" 2>"$progress" &
  bench=$!
  wait_sending "$progress"
  bash scripts/cluster.sh kill "$node" --signal TERM --dir "$BENCH_DIR" >&2
  wait_exited "$node"
  bash scripts/cluster.sh start "$node" --dir "$BENCH_DIR" >&2
  if ! wait "$bench"; then
    echo "bench-rolling-restart: the producer's run around $node had sends that failed:" >&2
  fi
  "$CLI" --controller "$CONTROLLER_ADDR" cluster ready --wait-s 60 >/dev/null
  python3 - "$node" "$BENCH_DIR/bench-$node.json" <<'EOF'
import json, sys
node, path = sys.argv[1], sys.argv[2]
run = json.load(open(path))
latency = run["latency_us"]
others = {k: v for k, v in run["statuses"].items() if k != "SEND_OK"}
print(json.dumps({"node": node, "longest_send_ms": round(latency["max"] / 1000, 1),
                  "p999_ms": round(latency["p999"] / 1000, 1), "sends": run["count"],
                  "not_send_ok": others}))
EOF
  max_us=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["latency_us"]["max"])' "$BENCH_DIR/bench-$node.json")
  if (( max_us > longest )); then longest=$max_us; fi
done
echo "{\"longest_send_ms\":$(python3 -c "print(round($longest / 1000, 1))")}"
