#!/usr/bin/env bash
# What security costs (docs/BENCHMARKS.md, step 10): the same topology from scripts/cluster.sh
# started three ways, in turn, ROUNDS times: `plain`; `tls` (--tls: every port encrypted,
# mutual TLS between nodes); `secure` (--tls --acl: also every request signed and checked
# against the ACL, sent as an ordinary user whose policy allows send on the topic, so that each
# send pays the signature check and a policy decision). In each, a topic of 8 queues per group
# and two producer runs (`cluster-cli bench produce`, 1 KiB): one message at a time (latency)
# and 64 in flight (throughput). One JSON line per run: round, mode, in_flight, msgs/s, p50,
# p99, statuses. Taking turns spreads a noisy neighbour's load over every mode. Stops each
# cluster and removes its directory.
#
#   scripts/bench-security.sh [TOPOLOGY] [ROUNDS]
#
# TOPOLOGY: default 2m-2s-sync (SYNC_MASTER + SYNC_FLUSH; replication over TLS too). ROUNDS:
# default 3. Environment: BIN_DIR (default ./target/release, built by cluster.sh up when
# missing), BENCH_DIR (default /tmp/bench-security), MODES (default "plain tls secure").
set -eEuo pipefail
shopt -s inherit_errexit
trap 'echo "bench-security: line $LINENO: \"$BASH_COMMAND\" failed with status $?" >&2' ERR
cd "$(dirname "$0")/.."
TOPOLOGY=${1:-2m-2s-sync}
ROUNDS=${2:-3}
BENCH_DIR=${BENCH_DIR:-/tmp/bench-security}
MODES=${MODES:-plain tls secure}
export BIN_DIR=${BIN_DIR:-$PWD/target/release}
CLI="$BIN_DIR/cluster-cli"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "bench-security: ROUNDS must be at least 1" >&2; exit 2; }

cleanup() { bash scripts/cluster.sh down --dir "$BENCH_DIR" >/dev/null 2>&1 || true; rm -rf "$BENCH_DIR"; }
trap cleanup EXIT

for ((round = 1; round <= ROUNDS; round++)); do
  for mode in $MODES; do
    cleanup
    case $mode in
      plain) flags=() ;;
      tls) flags=(--tls) ;;
      secure) flags=(--tls --acl) ;;
      *) echo "bench-security: unknown mode $mode (plain, tls, secure)" >&2; exit 2 ;;
    esac
    echo "bench-security: round $round, $mode" >&2
    if ! bash scripts/cluster.sh up "$TOPOLOGY" --dir "$BENCH_DIR" --controllers 1 "${flags[@]}" >/dev/null 2>"$BENCH_DIR.up.log"; then
      echo "bench-security: the $mode cluster did not come up:" >&2
      cat "$BENCH_DIR.up.log" >&2
      exit 1
    fi
    (
      unset CLUSTER_TLS_CA CLUSTER_CREDENTIALS
      # shellcheck disable=SC1091
      set -a; . "$BENCH_DIR/cluster.env"; set +a
      "$CLI" --controller "$CONTROLLER_ADDR" topic create bench --queues 8 >/dev/null
      if [[ $mode == secure ]]; then
        # An ordinary user, so that every send is decided by a policy, not the admin's pass.
        "$CLI" --controller "$CONTROLLER_ADDR" user create bench \
          --credentials-out "$BENCH_DIR/bench.credentials" >/dev/null
        "$CLI" --controller "$CONTROLLER_ADDR" acl create --user bench --resource topic:bench \
          --actions send >/dev/null
        export CLUSTER_CREDENTIALS=$BENCH_DIR/bench.credentials
      fi
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
rm -f "$BENCH_DIR.up.log"
