#!/usr/bin/env bash
# What TLS costs (docs/BENCHMARKS.md, step 10): the same topology from scripts/cluster.sh started
# plaintext and with --tls, alternately, ROUNDS times, and in each a topic of 8 queues per group
# and two producer runs (`cluster-cli bench produce`, 1 KiB): one message at a time (latency:
# every send one RPC, every RPC on a TLS connection) and 64 in flight (throughput: natural
# batching). One JSON line per run: round, mode (plain or tls), in_flight, msgs/s, p50, p99.
# Alternating the modes spreads a noisy neighbour's load over both. Stops each cluster and
# removes its directory.
#
#   scripts/bench-tls.sh [TOPOLOGY] [ROUNDS]
#
# TOPOLOGY: default 2m-2s-sync (replication over TLS too). ROUNDS: default 4. Environment:
# BIN_DIR (default ./target/release, built by cluster.sh up when missing), BENCH_DIR (default
# /tmp/bench-tls).
set -eEuo pipefail
shopt -s inherit_errexit
trap 'echo "bench-tls: line $LINENO: \"$BASH_COMMAND\" failed with status $?" >&2' ERR
cd "$(dirname "$0")/.."
TOPOLOGY=${1:-2m-2s-sync}
ROUNDS=${2:-4}
BENCH_DIR=${BENCH_DIR:-/tmp/bench-tls}
export BIN_DIR=${BIN_DIR:-$PWD/target/release}
CLI="$BIN_DIR/cluster-cli"

cleanup() { bash scripts/cluster.sh down --dir "$BENCH_DIR" >/dev/null 2>&1 || true; rm -rf "$BENCH_DIR"; }
trap cleanup EXIT

for ((round = 1; round <= ROUNDS; round++)); do
  for mode in plain tls; do
    cleanup
    flags=()
    if [[ $mode == tls ]]; then
      flags=(--tls)
    fi
    bash scripts/cluster.sh up "$TOPOLOGY" --dir "$BENCH_DIR" --controllers 1 "${flags[@]}" >/dev/null 2>&1
    (
      unset CLUSTER_TLS_CA
      # shellcheck disable=SC1091
      set -a; . "$BENCH_DIR/cluster.env"; set +a
      "$CLI" --controller "$CONTROLLER_ADDR" topic create bench --queues 8 >/dev/null
      for in_flight in 1 64; do
        count=$((in_flight == 1 ? 5000 : 100000))
        "$CLI" --controller "$CONTROLLER_ADDR" --json bench produce --topic bench --count "$count" \
          --in-flight "$in_flight" | tail -n 1 | python3 -c '
import json, sys
d = json.loads(sys.stdin.read())
print(json.dumps({"round": int(sys.argv[1]), "mode": sys.argv[2], "in_flight": d["in_flight"],
                  "msgs_per_s": d["msgs_per_s"], "p50_us": d["latency_us"]["p50"],
                  "p99_us": d["latency_us"]["p99"], "statuses": d["statuses"]}))
' "$round" "$mode"
      done
    )
  done
done
