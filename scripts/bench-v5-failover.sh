#!/usr/bin/env bash
# What a master's failover costs a RocketMQ 5 application (docs/BENCHMARKS.md, step 9): a
# 2m-2s-sync cluster from scripts/cluster.sh; per round, the official Python producer
# (tests/python/v5_produce.py, installed by scripts/v5-python-env.sh) sends COUNT messages to
# ROCKETMQ_ENDPOINT while broker-a's master is killed with SIGKILL after 300 receipts; the
# killed broker is started again and the cluster waited ready before the next round. Prints one
# JSON line per round (the producer's summary: ok, failed, longest_gap_s) and, last, the
# longest gaps' median and maximum. Stops the cluster and removes its directory on exit.
#
#   scripts/bench-v5-failover.sh [ROUNDS] [COUNT]
#
# Environment: BIN_DIR (default ./target/release, built by cluster.sh up when missing),
# BENCH_DIR (default /tmp/bench-v5-failover).
set -eEuo pipefail
shopt -s inherit_errexit
trap 'echo "bench-v5-failover: line $LINENO: \"$BASH_COMMAND\" failed with status $?" >&2' ERR
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
COUNT=${2:-2000}
BENCH_DIR=${BENCH_DIR:-/tmp/bench-v5-failover}
export BIN_DIR=${BIN_DIR:-$PWD/target/release}

cleanup() { bash scripts/cluster.sh down --dir "$BENCH_DIR" >/dev/null 2>&1 || true; rm -rf "$BENCH_DIR"; }
trap cleanup EXIT
rm -rf "$BENCH_DIR"
python=$(bash scripts/v5-python-env.sh)
bash scripts/cluster.sh up 2m-2s-sync --dir "$BENCH_DIR" >&2
# shellcheck disable=SC1091
set -a; . "$BENCH_DIR/cluster.env"; set +a
cli() { "$BIN_DIR/cluster-cli" --controller "$CONTROLLER_ADDR" "$@"; }
cli topic create failover --queues 4 >&2

master_of_a() {
  cli --json cluster list | "$python" -c 'import json,sys
for g in json.load(sys.stdin)["groups"]:
    if g["name"] == "broker-a" and g["master_id"] is not None:
        print(g["master_id"])'
}

gaps=()
for ((round = 1; round <= ROUNDS; round++)); do
  receipts=$BENCH_DIR/receipts-$round.jsonl
  summary=$BENCH_DIR/summary-$round.json
  "$python" tests/python/v5_produce.py "$ROCKETMQ_ENDPOINT" failover "$COUNT" "$receipts" >"$summary" &
  producer=$!
  waited=0
  until [[ -f $receipts && $(wc -l <"$receipts") -ge 300 ]]; do
    sleep 0.05
    waited=$((waited + 1))
    if [[ $waited -ge 1200 ]]; then
      echo "bench-v5-failover: round $round: no 300 receipts within 60 s" >&2
      exit 1
    fi
  done
  master=$(master_of_a)
  bash scripts/cluster.sh kill "broker-a-$master" --signal KILL --dir "$BENCH_DIR" >&2
  wait "$producer" || { echo "bench-v5-failover: round $round: the producer failed" >&2; exit 1; }
  line=$(tail -n 1 "$summary")
  echo "{\"round\":$round,\"killed\":\"broker-a-$master\",\"producer\":$line}"
  gaps+=("$(sed -n 's/.*"longest_gap_s": \([0-9.]*\).*/\1/p' <<<"$line")")
  bash scripts/cluster.sh start "broker-a-$master" --dir "$BENCH_DIR" >&2
  cli cluster ready --wait-s 60 >&2 || { echo "bench-v5-failover: round $round: the cluster did not get whole again" >&2; exit 1; }
done
printf '%s\n' "${gaps[@]}" | sort -n | awk '{a[NR]=$1} END {
  median = (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2
  printf "{\"rounds\":%d,\"longest_gap_s_median\":%.3f,\"longest_gap_s_max\":%.3f}\n", NR, median, a[NR] }'
