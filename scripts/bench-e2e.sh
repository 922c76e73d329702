#!/usr/bin/env bash
# End-to-end produce benchmark against one fresh standalone broker (docs/BENCHMARKS.md, step 2):
# starts a broker on an empty store, creates an 8-queue topic, runs `cluster-cli bench produce`
# (300,000 x 1 KiB, 64 in flight), prints one line: LABEL and the JSON summary (msgs_per_s,
# latency_us, messages_per_rpc, ...), and removes the store. Repeat it and take the median: runs on a shared VM move by 10-30 %.
#
#   scripts/bench-e2e.sh [SYNC_FLUSH|ASYNC_FLUSH] [LABEL] [extra bench produce flags...]
#
# Environment: BIN_DIR (default ./target/release, built by
# `cargo build --release -p broker -p cluster-cli`), BENCH_DIR (default /tmp/bench-e2e).
set -euo pipefail
cd "$(dirname "$0")/.."
FLUSH=${1:-SYNC_FLUSH}
LABEL=${2:-$FLUSH}
shift $(($# >= 2 ? 2 : $#))
BIN_DIR=${BIN_DIR:-./target/release}
BENCH_DIR=${BENCH_DIR:-/tmp/bench-e2e}
rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR"
"$BIN_DIR/broker" --listen 127.0.0.1:0 --store-path "$BENCH_DIR/store" \
  --flush-disk-type "$FLUSH" >"$BENCH_DIR/broker.out" 2>"$BENCH_DIR/broker.log" &
broker_pid=$!
trap 'kill "$broker_pid" 2>/dev/null; wait "$broker_pid" 2>/dev/null; rm -rf "$BENCH_DIR"' EXIT
addr=""
for _ in $(seq 200); do
  addr=$(sed -n 's/^broker listening on //p' "$BENCH_DIR/broker.out")
  [[ -n "$addr" ]] && break
  sleep 0.05
done
[[ -n "$addr" ]] || { echo "bench-e2e: the broker did not start; see $BENCH_DIR/broker.log" >&2; exit 1; }
cli() { "$BIN_DIR/cluster-cli" --broker "$addr" "$@"; }
cli topic create bench --queues 8 >/dev/null
summary=$(cli --json bench produce --topic bench --count 300000 --size 1024 --in-flight 64 "$@" 2>/dev/null)
echo "$LABEL $summary"
