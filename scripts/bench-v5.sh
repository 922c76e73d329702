#!/usr/bin/env bash
# The v5 API against the native API in one run (docs/BENCHMARKS.md, step 9): a 2m-2s-sync
# cluster (SYNC_MASTER + SYNC_FLUSH on every broker) from scripts/cluster.sh, one topic of 8
# queues per group; `cluster-cli bench produce` (1 KiB, 64 in flight) through the native API
# and through RocketMQ 5's (`--api v5`, at the cluster's ROCKETMQ_ENDPOINT), each in two ways:
# concurrent sends gathered into one request (`native`, `v5`: the same bounds, 64 messages per
# request, one request with a partial batch in flight; the v5 API carries several messages per
# SendMessage, as the official Rust client's batch_send sends them), and one message per request
# (`native-single`, `v5-single`: as the official clients' send). In turn, ROUNDS times each.
# Prints one JSON line per run and the medians and the ratios v5 / native and
# v5-single / native-single. Then consumption: COUNT messages sent once to a topic `drain`, and,
# ROUNDS times, a new group drains them through each API in turn (`bench consume`: the native
# push consumer pulling 256 at a time; `--api v5`: receive 32 and acknowledge them in one call,
# two loops per broker group); a last line gives those medians and their ratio. Stops the
# cluster and removes its directory on exit.
#
#   scripts/bench-v5.sh [COUNT] [ROUNDS]
#
# Environment: BIN_DIR (default ./target/release, built by cluster.sh up when missing),
# BENCH_DIR (default /tmp/bench-v5).
set -eEuo pipefail
shopt -s inherit_errexit
trap 'echo "bench-v5: line $LINENO: \"$BASH_COMMAND\" failed with status $?" >&2' ERR
cd "$(dirname "$0")/.."
COUNT=${1:-100000}
ROUNDS=${2:-3}
BENCH_DIR=${BENCH_DIR:-/tmp/bench-v5}
export BIN_DIR=${BIN_DIR:-$PWD/target/release}

cleanup() { bash scripts/cluster.sh down --dir "$BENCH_DIR" >/dev/null 2>&1 || true; rm -rf "$BENCH_DIR"; }
trap cleanup EXIT
rm -rf "$BENCH_DIR"
bash scripts/cluster.sh up 2m-2s-sync --dir "$BENCH_DIR" >&2
# shellcheck disable=SC1091
set -a; . "$BENCH_DIR/cluster.env"; set +a
"$BIN_DIR/cluster-cli" --controller "$CONTROLLER_ADDR" topic create bench --queues 8 >&2

native=() single=() v5=() v5single=()
for ((round = 1; round <= ROUNDS; round++)); do
  for variant in native native-single v5 v5-single; do
    case $variant in
      native) args=(--api native) ;;
      native-single) args=(--api native --batch-max-messages 1) ;;
      v5) args=(--api v5) ;;
      v5-single) args=(--api v5 --batch-max-messages 1) ;;
    esac
    line=$("$BIN_DIR/cluster-cli" --controller "$CONTROLLER_ADDR" --json bench produce \
      --topic bench --count "$COUNT" --size 1024 --in-flight 64 "${args[@]}" 2>/dev/null) || {
      echo "bench-v5: bench produce ($variant) failed: $line" >&2
      exit 1
    }
    echo "$variant $line"
    rate=$(sed -n 's/.*"msgs_per_s":\([0-9.]*\).*/\1/p' <<<"$line")
    case $variant in
      native) native+=("$rate") ;;
      native-single) single+=("$rate") ;;
      v5) v5+=("$rate") ;;
      v5-single) v5single+=("$rate") ;;
    esac
  done
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
n=$(median "${native[@]}")
s=$(median "${single[@]}")
v=$(median "${v5[@]}")
w=$(median "${v5single[@]}")
awk -v n="$n" -v s="$s" -v v="$v" -v w="$w" 'BEGIN { printf "{\"native_msgs_per_s\":%d,\"v5_msgs_per_s\":%d,\"v5_over_native\":%.2f,\"native_single_msgs_per_s\":%d,\"v5_single_msgs_per_s\":%d,\"v5_single_over_native_single\":%.2f}\n", n, v, v / n, s, w, w / s }'

"$BIN_DIR/cluster-cli" --controller "$CONTROLLER_ADDR" topic create drain --queues 8 >&2
"$BIN_DIR/cluster-cli" --controller "$CONTROLLER_ADDR" --json bench produce --topic drain \
  --count "$COUNT" --size 1024 --in-flight 64 >/dev/null 2>&1 || { echo "bench-v5: could not fill topic drain" >&2; exit 1; }
consume_native=() consume_v5=()
for ((round = 1; round <= ROUNDS; round++)); do
  for api in native v5; do
    line=$("$BIN_DIR/cluster-cli" --controller "$CONTROLLER_ADDR" --json bench consume \
      --topic drain --group "drain-$api-$round" --count "$COUNT" --api "$api" --idle-exit-ms 5000 2>/dev/null) || {
      echo "bench-v5: bench consume ($api) failed: $line" >&2
      exit 1
    }
    echo "consume-$api $line"
    rate=$(sed -n 's/.*"msgs_per_s":\([0-9.]*\).*/\1/p' <<<"$line")
    case $api in
      native) consume_native+=("$rate") ;;
      v5) consume_v5+=("$rate") ;;
    esac
  done
done
cn=$(median "${consume_native[@]}")
cv=$(median "${consume_v5[@]}")
awk -v n="$cn" -v v="$cv" 'BEGIN { printf "{\"consume_native_msgs_per_s\":%d,\"consume_v5_msgs_per_s\":%d,\"consume_v5_over_native\":%.2f}\n", n, v, v / n }'
