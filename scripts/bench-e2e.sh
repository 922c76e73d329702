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
set -eEuo pipefail
shopt -s inherit_errexit
# No silent exit: a command that fails unexpectedly (set -e stops there) is named with its line.
trap 'echo "bench-e2e: line $LINENO: \"$BASH_COMMAND\" failed with status $?" >&2' ERR
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
# The broker may be gone already, and wait answers its exit status: neither may stop the
# clean-up half way (set -e holds in the trap too).
trap 'kill "$broker_pid" 2>/dev/null || true; wait "$broker_pid" 2>/dev/null || true; rm -rf "$BENCH_DIR"' EXIT
addr=""
for _ in $(seq 200); do
  addr=$(sed -n 's/^broker listening on //p' "$BENCH_DIR/broker.out")
  [[ -n "$addr" ]] && break
  sleep 0.05
done
[[ -n "$addr" ]] || { echo "bench-e2e: the broker did not start; see $BENCH_DIR/broker.log" >&2; exit 1; }
cli() { "$BIN_DIR/cluster-cli" --broker "$addr" "$@"; }
cli topic create bench --queues 8 >/dev/null
# Its progress lines stay out of the output, but not its error.
if ! summary=$(cli --json bench produce --topic bench --count 300000 --size 1024 --in-flight 64 "$@" \
  2>"$BENCH_DIR/bench.err"); then
  echo "bench-e2e: bench produce failed:" >&2
  tail -n 20 "$BENCH_DIR/bench.err" >&2
  exit 1
fi
echo "$LABEL $summary"
