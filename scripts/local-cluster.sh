#!/usr/bin/env bash
# A local cluster, ready to use: three controllers and two broker groups with one master each
# (multi-master), exactly as docs/OPERATIONS.md starts them by hand, on one machine.
#
#   scripts/local-cluster.sh              # build (release), start, wait until ready, stay up
#   Ctrl-C or SIGTERM                     # stops every process it started, cleanly
#
# Environment (all optional):
#   CLUSTER_DIR    where data and logs go (default ./.local-cluster); reused across runs, so a
#                  restart keeps topics and messages
#   CONTROLLER_PORTS  three ports (default "9876 9877 9878")
#   BROKER_PORTS      two ports (default "10911 10921")
#   HOST           address to listen on and advertise (default 127.0.0.1)
#   BIN_DIR        directory holding built `controller`, `broker` and `cluster-cli`; when unset,
#                  the script builds them with `cargo build --release` and uses target/release
#   READY_TIMEOUT_S   how long to wait for the cluster to be ready (default 60)
#
# Prints "cluster ready: CONTROLLER_ADDR=..." once `cluster-cli controller status` exits 0 (a
# leader, every controller reachable) and `cluster-cli cluster list` exits 0 listing both groups
# (every broker registered and alive), then waits. Exits 1 if the cluster is not ready in time (the logs are in CLUSTER_DIR).
set -euo pipefail

cd "$(dirname "$0")/.."
CLUSTER_DIR=${CLUSTER_DIR:-./.local-cluster}
HOST=${HOST:-127.0.0.1}
read -r -a CONTROLLER_PORTS <<<"${CONTROLLER_PORTS:-9876 9877 9878}"
read -r -a BROKER_PORTS <<<"${BROKER_PORTS:-10911 10921}"
READY_TIMEOUT_S=${READY_TIMEOUT_S:-60}
if [[ ${#CONTROLLER_PORTS[@]} -ne 3 || ${#BROKER_PORTS[@]} -ne 2 ]]; then
  echo "local-cluster: CONTROLLER_PORTS needs three ports and BROKER_PORTS two" >&2
  exit 2
fi

if [[ -z "${BIN_DIR:-}" ]]; then
  cargo build --release --locked -p replication -p broker -p cluster-cli
  BIN_DIR=./target/release
fi
for binary in controller broker cluster-cli; do
  if [[ ! -x "$BIN_DIR/$binary" ]]; then
    echo "local-cluster: $BIN_DIR/$binary is missing" >&2
    exit 2
  fi
done

mkdir -p "$CLUSTER_DIR"
pids=()
stop() {
  trap - INT TERM EXIT
  if [[ ${#pids[@]} -gt 0 ]]; then
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
}
trap 'stop; exit 0' INT TERM
trap stop EXIT

peers=""
controller_addr=""
for i in 0 1 2; do
  id=$((i + 1))
  addr="$HOST:${CONTROLLER_PORTS[$i]}"
  peers+="${peers:+,}$id=$addr"
  controller_addr+="${controller_addr:+,}$addr"
done

for i in 0 1 2; do
  id=$((i + 1))
  "$BIN_DIR/controller" --id "$id" --listen "$HOST:${CONTROLLER_PORTS[$i]}" --peers "$peers" \
    --data-dir "$CLUSTER_DIR/c$id" >"$CLUSTER_DIR/controller-$id.out" 2>"$CLUSTER_DIR/controller-$id.log" &
  pids+=($!)
done

groups=(broker-a broker-b)
for i in 0 1; do
  "$BIN_DIR/broker" --listen "$HOST:${BROKER_PORTS[$i]}" --store-path "$CLUSTER_DIR/${groups[$i]}-0" \
    --set "broker_name=\"${groups[$i]}\"" --set 'broker_role="ASYNC_MASTER"' \
    --set "controller_addr=\"$controller_addr\"" \
    >"$CLUSTER_DIR/${groups[$i]}-0.out" 2>"$CLUSTER_DIR/${groups[$i]}-0.log" &
  pids+=($!)
done

cli() { "$BIN_DIR/cluster-cli" --controller "$controller_addr" "$@"; }
# Ready: a leader and every controller reachable; both groups registered, every broker alive.
ready() {
  cli controller status >/dev/null 2>&1 || return 1
  local list
  list=$(cli --json cluster list 2>/dev/null) || return 1
  for group in "${groups[@]}"; do
    grep -q "\"name\":\"$group\"" <<<"$list" || return 1
  done
}
deadline=$((SECONDS + READY_TIMEOUT_S))
until ready; do
  for pid in "${pids[@]}"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "local-cluster: a process exited during start; see $CLUSTER_DIR/*.log" >&2
      exit 1
    fi
  done
  if ((SECONDS >= deadline)); then
    echo "local-cluster: not ready after ${READY_TIMEOUT_S}s; see $CLUSTER_DIR/*.log" >&2
    cli controller status >&2 || true
    cli cluster list >&2 || true
    exit 1
  fi
  sleep 0.2
done

cli controller status
cli cluster list
echo "cluster ready: CONTROLLER_ADDR=$controller_addr"
echo "try: cluster-cli --controller $controller_addr topic create orders --queues 4"
wait "${pids[@]}"
