#!/usr/bin/env bash
# Replication benchmark (docs/BENCHMARKS.md, step 4): one controller, a master and one slave of
# group broker-a on 127.0.0.1, fresh stores; `cluster-cli bench produce` (1 KiB, 64 in flight)
# against the master while the slave's lag is sampled from the controller's `cluster list` every
# 100 ms. Prints one line: LABEL, then one JSON object with the bench summary (msgs_per_s,
# latency_us, ...) and the lag samples' p99 (`lag_bytes_p99`, `lag_ms_p99`). Removes its
# directory on exit. Repeat and take the median: runs on a shared VM move by 10-30 %.
#
#   scripts/bench-replication.sh ASYNC_MASTER|SYNC_MASTER ASYNC_FLUSH|SYNC_FLUSH [LABEL] [COUNT]
#
# Environment: BIN_DIR (default ./target/release, built by
# `cargo build --release -p broker -p controller -p cluster-cli`), BENCH_DIR (default
# /tmp/bench-replication), BROKER_SETTINGS (extra KEY=VALUE settings for both brokers, separated
# by spaces, e.g. "scrub_bytes_per_second=0").
set -eEuo pipefail
shopt -s inherit_errexit
# No silent exit: a command that fails unexpectedly (set -e stops there) is named with its line.
trap 'echo "bench-replication: line $LINENO: \"$BASH_COMMAND\" failed with status $?" >&2' ERR
cd "$(dirname "$0")/.."
ROLE=${1:?usage: bench-replication.sh ASYNC_MASTER|SYNC_MASTER ASYNC_FLUSH|SYNC_FLUSH [LABEL] [COUNT]}
FLUSH=${2:?usage: bench-replication.sh ASYNC_MASTER|SYNC_MASTER ASYNC_FLUSH|SYNC_FLUSH [LABEL] [COUNT]}
LABEL=${3:-$ROLE+$FLUSH}
COUNT=${4:-200000}
BIN_DIR=${BIN_DIR:-./target/release}
BENCH_DIR=${BENCH_DIR:-/tmp/bench-replication}
for binary in controller broker cluster-cli; do
  [[ -x "$BIN_DIR/$binary" ]] || { echo "bench-replication: $BIN_DIR/$binary is missing; build it first" >&2; exit 1; }
done
rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$BENCH_DIR"
}
trap cleanup EXIT

# Members sign internal calls with the cluster secret; a fresh one per run.
secret=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
# A quorum of one never dials its own peer address, so the controller can take any free port
# and say which on stdout.
"$BIN_DIR/controller" --id 1 --listen 127.0.0.1:0 --peers "1=127.0.0.1:1" \
  --data-dir "$BENCH_DIR/controller" --set "cluster_secret=\"$secret\"" >"$BENCH_DIR/controller.out" 2>"$BENCH_DIR/controller.log" &
pids+=($!)
controller=""
for _ in $(seq 200); do
  controller=$(sed -n 's/^controller listening on //p' "$BENCH_DIR/controller.out")
  [[ -n "$controller" ]] && break
  sleep 0.05
done
[[ -n "$controller" ]] || { echo "bench-replication: the controller did not start; see $BENCH_DIR/controller.log" >&2; exit 1; }

extra_settings=()
for setting in ${BROKER_SETTINGS:-}; do extra_settings+=(--set "$setting"); done
start_broker() { # ID ROLE
  "$BIN_DIR/broker" --listen 127.0.0.1:0 --store-path "$BENCH_DIR/broker-a-$1" --flush-disk-type "$FLUSH" \
    --set 'broker_name="broker-a"' --set "broker_id=$1" --set "broker_role=\"$2\"" \
    --set "controller_addr=\"$controller\"" --set "cluster_secret=\"$secret\"" \
    --set controller_heartbeat_interval_ms=200 "${extra_settings[@]}" \
    >"$BENCH_DIR/broker-$1.out" 2>"$BENCH_DIR/broker-$1.log" &
  pids+=($!)
}
start_broker 0 "$ROLE"
start_broker 1 SLAVE

cli() { "$BIN_DIR/cluster-cli" --controller "$controller" "$@"; }
in_sync() {
  cli --json cluster list 2>/dev/null | grep -q '"in_sync_set":\[0,1\]'
}
for _ in $(seq 300); do in_sync && break; sleep 0.1; done
in_sync || { echo "bench-replication: the slave did not join the in-sync set; see $BENCH_DIR/*.log" >&2; exit 1; }
master=$(sed -n 's/^broker listening on //p' "$BENCH_DIR/broker-0.out")
cli topic create bench --queues 8 >/dev/null

# Lag samples while the bench runs: the slave's lag as its master last reported it.
(
  while true; do
    # A sample without the slave (or no answer) is an empty line, not the sampler's end.
    cli --json cluster list 2>/dev/null |
      grep -o '"id":1,[^}]*' | grep -o '"lag_bytes":[0-9]*\|"lag_ms":[0-9]*' | tr '\n' ' ' || true
    echo
    sleep 0.1
  done
) >"$BENCH_DIR/lag.samples" &
sampler=$!
pids+=($sampler)
# Its progress lines stay out of the output, but not its error.
if ! summary=$("$BIN_DIR/cluster-cli" --broker "$master" --json bench produce --topic bench \
  --count "$COUNT" --size 1024 --in-flight 64 2>"$BENCH_DIR/bench.err"); then
  echo "bench-replication: bench produce failed:" >&2
  tail -n 20 "$BENCH_DIR/bench.err" >&2
  exit 1
fi
kill "$sampler" 2>/dev/null || true
p99() { # FIELD (no sample of it: 0)
  { grep -o "\"$1\":[0-9]*" "$BENCH_DIR/lag.samples" || true; } | cut -d: -f2 | sort -n |
    awk '{ v[NR] = $1 } END { if (NR == 0) { print 0 } else { i = int(NR * 0.99); if (i < 1) i = 1; print v[i] } }'
}
echo "$LABEL {\"bench\":$summary,\"lag_bytes_p99\":$(p99 lag_bytes),\"lag_ms_p99\":$(p99 lag_ms),\"lag_samples\":$(wc -l <"$BENCH_DIR/lag.samples")}"
