#!/usr/bin/env bash
# The idle path (docs/BENCHMARKS.md, "Idle path"): what one message at a time costs in a
# 2m-2s-sync cluster (SYNC_MASTER + SYNC_FLUSH), against the raw disk's fdatasync latency
# measured in the same run, on the same file system.
#
#   scripts/bench-idle.sh [ROUNDS]
#
# In one run: (1) the raw disk: 1,137-byte records (a 1 KiB message as stored) each written with
# pwrite and made durable with fdatasync, one at a time, to a preallocated file in BENCH_DIR
# (the commit log's shape); its p50 and p99. (2) A fresh 2m-2s-sync cluster from
# scripts/cluster.sh, a topic of 8 queues per group, and `cluster-cli bench produce` (1 KiB
# bodies) at 1, 8 and 64 messages in flight: p50, p99, msgs/s, the brokers' CPU per message
# (utime + stime of the four broker processes from /proc/PID/stat, before and after the run,
# over the messages sent) and their context switches per message (every thread's voluntary and
# involuntary switches from /proc/PID/task/*/status: the wake-ups). (3) Before each round, the
# floor: `cluster-cli bench floor` (a producer, master and slave as three bare threads over
# loopback TCP, two fdatasyncs per message, in BENCH_DIR): the least a SYNC_MASTER + SYNC_FLUSH
# acknowledgement takes here, and the least CPU it costs; and `cluster-cli bench rpc` against
# broker-a-0 (the round trip of its cheapest RPC, QueryOffset from memory, one at a time): what
# the gRPC stack alone costs per round trip. Each in-flight level runs ROUNDS times
# (default 3), the levels interleaved; one JSON line per run, then a summary per level (the
# median run by p50) with p50 and p99 as ratios of the raw fdatasync p50 and p99, and at one in
# flight as ratios of the floor's median p50 and CPU per message.
# Stops the cluster and removes BENCH_DIR on exit.
#
# Environment: BIN_DIR (default ./target/release, built by cluster.sh up when missing),
# BENCH_DIR (default /tmp/bench-idle), COUNT_1, COUNT_8, COUNT_64 (messages per run at each
# level; default 5000, 20000, 100000), FSYNC_COUNT (raw fdatasyncs, default 5000), FLOOR_COUNT
# (messages per floor run, default 5000).
set -eEuo pipefail
shopt -s inherit_errexit
trap 'echo "bench-idle: line $LINENO: \"$BASH_COMMAND\" failed with status $?" >&2' ERR
cd "$(dirname "$0")/.."

usage() {
  sed -n '6p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
ROUNDS=${1:-3}
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || usage
BENCH_DIR=${BENCH_DIR:-/tmp/bench-idle}
export BIN_DIR=${BIN_DIR:-$PWD/target/release}
CLI="$BIN_DIR/cluster-cli"
declare -A COUNTS=([1]=${COUNT_1:-5000} [8]=${COUNT_8:-20000} [64]=${COUNT_64:-100000})
FSYNC_COUNT=${FSYNC_COUNT:-5000}
FLOOR_COUNT=${FLOOR_COUNT:-5000}
RESULTS="$BENCH_DIR/results.jsonl"
FLOORS="$BENCH_DIR/floor.jsonl"
RPCS="$BENCH_DIR/rpc.jsonl"

cleanup() { bash scripts/cluster.sh down --dir "$BENCH_DIR" >/dev/null 2>&1 || true; rm -rf "$BENCH_DIR"; }
trap cleanup EXIT
rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR"

# --- (1) the raw disk ------------------------------------------------------------------------------
# Python's overhead per call (a few microseconds) counts against the disk, not the cluster.
python3 - "$BENCH_DIR/raw-fsync" "$FSYNC_COUNT" >"$BENCH_DIR/raw.json" <<'EOF'
import json, os, sys, time
path, count = sys.argv[1], int(sys.argv[2])
record = b"r" * 1137
fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
os.posix_fallocate(fd, 0, (count + 1) * len(record))
os.fsync(fd)
latencies = []
for i in range(count):
    started = time.perf_counter_ns()
    os.pwrite(fd, record, i * len(record))
    os.fdatasync(fd)
    latencies.append((time.perf_counter_ns() - started) // 1000)
os.close(fd)
os.unlink(path)
latencies.sort()
print(json.dumps({"fdatasyncs": count, "p50_us": latencies[count // 2],
                  "p99_us": latencies[count * 99 // 100], "max_us": latencies[-1]}))
EOF
echo "raw fdatasync: $(cat "$BENCH_DIR/raw.json")" >&2

# --- (2) the cluster ------------------------------------------------------------------------------
bash scripts/cluster.sh up 2m-2s-sync --dir "$BENCH_DIR" >&2
# shellcheck disable=SC1091
set -a; . "$BENCH_DIR/cluster.env"; set +a
"$CLI" --controller "$CONTROLLER_ADDR" topic create bench --queues 8 >&2

# utime + stime of every broker, in clock ticks.
broker_ticks() {
  local total=0 pid fields
  for pidfile in "$BENCH_DIR"/broker-*.pid; do
    pid=$(cat "$pidfile")
    read -r -a fields <"/proc/$pid/stat"
    # Fields 14 and 15 (utime, stime); the command name holds no space here.
    total=$((total + fields[13] + fields[14]))
  done
  echo "$total"
}
TICKS_PER_S=$(getconf CLK_TCK)

# Context switches (voluntary and not) of every thread of every broker: the wake-ups.
broker_switches() {
  local total=0 pid count
  for pidfile in "$BENCH_DIR"/broker-*.pid; do
    pid=$(cat "$pidfile")
    count=$(cat /proc/"$pid"/task/*/status 2>/dev/null | awk '/ctxt_switches/ { s += $2 } END { print s + 0 }')
    total=$((total + count))
  done
  echo "$total"
}

# broker-a-0's client port, for `bench rpc`.
MASTER_ADDR=$(sed -n 's/^listen = "\(.*\)"$/\1/p' "$BENCH_DIR/broker-a-0.toml")
[[ -n $MASTER_ADDR ]] || { echo "bench-idle: no listen address in $BENCH_DIR/broker-a-0.toml" >&2; exit 1; }

# Warms the connections and the page cache; not counted.
"$CLI" --controller "$CONTROLLER_ADDR" --json bench produce --topic bench --count 2000 \
  --in-flight 8 --size 1024 >/dev/null 2>&1

for round in $(seq "$ROUNDS"); do
  "$CLI" --json bench floor --dir "$BENCH_DIR" --count "$FLOOR_COUNT" | tee -a "$FLOORS" >&2
  env -u CONTROLLER_ADDR "$CLI" --broker "$MASTER_ADDR" --json bench rpc --count "$FLOOR_COUNT" | tee -a "$RPCS" >&2
  for in_flight in 1 8 64; do
    count=${COUNTS[$in_flight]}
    before=$(broker_ticks)
    switches_before=$(broker_switches)
    "$CLI" --controller "$CONTROLLER_ADDR" --json bench produce --topic bench --count "$count" \
      --in-flight "$in_flight" --size 1024 >"$BENCH_DIR/run.json" 2>/dev/null
    after=$(broker_ticks)
    switches=$(($(broker_switches) - switches_before))
    python3 - "$BENCH_DIR/run.json" "$round" "$((after - before))" "$TICKS_PER_S" "$switches" <<'EOF' | tee -a "$RESULTS"
import json, sys
run = json.load(open(sys.argv[1]))
round_, ticks, per_s = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
switches = int(sys.argv[5])
others = {k: v for k, v in run["statuses"].items() if k != "SEND_OK"}
print(json.dumps({"round": round_, "in_flight": run["in_flight"], "count": run["count"],
                  "p50_us": run["latency_us"]["p50"], "p99_us": run["latency_us"]["p99"],
                  "msgs_per_s": run["msgs_per_s"],
                  "broker_cpu_us_per_msg": round(ticks * 1e6 / per_s / run["count"], 1),
                  "broker_switches_per_msg": round(switches / run["count"], 1),
                  "not_send_ok": others}))
EOF
  done
done

python3 - "$BENCH_DIR/raw.json" "$RESULTS" "$FLOORS" "$RPCS" <<'EOF'
import json, sys
raw = json.load(open(sys.argv[1]))
runs = [json.loads(line) for line in open(sys.argv[2])]
floors = [json.loads(line) for line in open(sys.argv[3])]
rpcs = [json.loads(line) for line in open(sys.argv[4])]
def middle(values):
    values = sorted(values)
    return values[len(values) // 2]
floor = {key: middle(f[key] for f in floors) for key in ("p50_us", "p99_us", "cpu_us_per_msg")}
rpc = {key: middle(r[key] for r in rpcs) for key in ("p50_us", "p99_us")}
print("summary (median run by p50 of each level; raw fdatasync p50 %d us, p99 %d us; "
      "floor p50 %d us, p99 %d us, %.1f us of CPU per message; one RPC round trip p50 %d us, "
      "p99 %d us; medians of %d runs)"
      % (raw["p50_us"], raw["p99_us"], floor["p50_us"], floor["p99_us"],
         floor["cpu_us_per_msg"], rpc["p50_us"], rpc["p99_us"], len(floors)))
failed = 0
for in_flight in (1, 8, 64):
    level = sorted((r for r in runs if r["in_flight"] == in_flight), key=lambda r: r["p50_us"])
    median = level[len(level) // 2]
    failed += sum(sum(r["not_send_ok"].values()) for r in level)
    print(json.dumps({"in_flight": in_flight, "p50_us": median["p50_us"],
                      "p99_us": median["p99_us"], "msgs_per_s": median["msgs_per_s"],
                      "broker_cpu_us_per_msg": median["broker_cpu_us_per_msg"],
                      "broker_switches_per_msg": median["broker_switches_per_msg"],
                      "runs_cpu_us_per_msg": [r["broker_cpu_us_per_msg"] for r in level],
                      "p50_over_raw_fsync_p50": round(median["p50_us"] / raw["p50_us"], 2),
                      "p99_over_raw_fsync_p99": round(median["p99_us"] / raw["p99_us"], 2),
                      "runs_p50_us": [r["p50_us"] for r in level],
                      "runs_p99_us": [r["p99_us"] for r in level]}
                     | ({"p50_over_floor_p50": round(median["p50_us"] / floor["p50_us"], 2),
                         "cpu_over_floor": round(median["broker_cpu_us_per_msg"]
                                                 / floor["cpu_us_per_msg"], 2)}
                        if in_flight == 1 else {})))
if failed:
    print("bench-idle: %d sends were not SEND_OK" % failed, file=sys.stderr)
    sys.exit(1)
EOF
