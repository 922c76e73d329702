#!/usr/bin/env bash
# A failover drill on this machine: brings up a replicated topology, produces and consumes the
# whole time, kills the master of a group with SIGKILL each round and restarts it once the new
# master has taken over, then drains and checks the whole history (`cluster-cli drill`).
#
#   scripts/failover-drill.sh --topology 2m-2s-sync|2m-2s-async [--rounds N] [--dir DIR]
#                             [--controllers 1|3] [--signal KILL|STOP] [--tls] [--acl] [--keep]
#
# --tls and --acl start the cluster with every port encrypted and users checked against the ACL
# (scripts/cluster.sh); the drill then runs as the built-in admin, over TLS.
# --signal STOP pauses the master instead of killing it (its process stays, silent: the lease
# path) and wakes it with SIGCONT once its successor serves; it rejoins as a slave.
# Progress goes to stderr; the last line of stdout is one JSON object: `passed`, `rounds`,
# `sent`, `acked` (answered SEND_OK), `send_failures` (by status or error), `lost`
# (acknowledged, never consumed), `duplicates` (deliveries beyond the first), `redeliveries` (of
# those, the same stored message handed out again) and `redelivered_per_round_max`,
# `order_violations` (a producer's acknowledged messages of one queue consumed out of send
# order), and from the kill, each as {p50, p99, max}: `decision_ms` (the controller's route push
# naming the new master), `serving_ms` (the new master answers as master), `failover_ms` (the
# first SEND_OK the group's new master gave to a send started after the kill); and
# `round_details`. The cluster is brought down afterwards (and DIR removed unless
# --keep); DIR defaults to a fresh temporary directory.
#
# Exit codes: 0 the drill passed; 1 it failed: a 2m-2s-sync topology lost an acknowledged
# message, a message came out of order, or a round did not fail over (2m-2s-async may lose up to
# the replication lag: the loss is counted and reported, not failed); 2 bad usage or the cluster
# did not come up. BIN_DIR as for scripts/cluster.sh.
set -eEuo pipefail
shopt -s inherit_errexit
# No silent exit: a command that fails unexpectedly (set -e stops there) is named with its line.
trap 'echo "failover-drill.sh: line $LINENO: \"$BASH_COMMAND\" failed with status $?" >&2' ERR

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOPOLOGY=
ROUNDS=5
DIR=
CONTROLLERS=3
KEEP=0
SIGNAL=KILL
SECURE=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --topology) TOPOLOGY=${2:?--topology needs 2m-2s-sync or 2m-2s-async}; shift 2 ;;
    --rounds) ROUNDS=${2:?--rounds needs a number}; shift 2 ;;
    --dir) DIR=${2:?--dir needs a directory}; shift 2 ;;
    --controllers) CONTROLLERS=${2:?--controllers needs 1 or 3}; shift 2 ;;
    --signal) SIGNAL=${2:?--signal needs KILL or STOP}; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --tls|--acl) SECURE+=("$1"); shift ;;
    -h|--help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
    *) echo "failover-drill.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
case $TOPOLOGY in
  2m-2s-sync) allow_loss=() ;;
  2m-2s-async) allow_loss=(--allow-loss) ;;
  *) echo "failover-drill.sh: --topology must be 2m-2s-sync or 2m-2s-async" >&2; exit 2 ;;
esac
[[ $SIGNAL =~ ^(KILL|STOP)$ ]] || { echo "failover-drill.sh: --signal must be KILL or STOP" >&2; exit 2; }
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "failover-drill.sh: --rounds must be at least 1" >&2; exit 2; }
if [[ -z $DIR ]]; then
  DIR=$(mktemp -d "${TMPDIR:-/tmp}/failover-drill.XXXXXX")
elif [[ -e $DIR/cluster.env ]]; then
  echo "failover-drill.sh: $DIR already holds a cluster; the drill needs a fresh one" >&2
  exit 2
fi
CLUSTER=("$ROOT/scripts/cluster.sh")

finish() {
  local down=(down --dir "$DIR")
  [[ $KEEP == 1 ]] || down+=(--wipe)
  "${CLUSTER[@]}" "${down[@]}" >&2 || true
  [[ $KEEP == 1 ]] && echo "failover-drill.sh: data and logs kept in $DIR" >&2
  return 0
}
trap finish EXIT

if ! "${CLUSTER[@]}" up "$TOPOLOGY" --dir "$DIR" --controllers "$CONTROLLERS" "${SECURE[@]}" >&2; then
  echo "failover-drill.sh: the $TOPOLOGY cluster did not come up (logs in $DIR)" >&2
  KEEP=1
  exit 2
fi
# shellcheck disable=SC1091
. "$DIR/cluster.env"
# A cluster started with --tls: cluster-cli dials it over TLS with its CA.
if [[ -n ${CLUSTER_TLS_CA:-} ]]; then
  export CLUSTER_TLS_CA
fi
# A cluster started with --acl: cluster-cli signs as its built-in admin.
if [[ -n ${CLUSTER_CREDENTIALS:-} ]]; then
  export CLUSTER_CREDENTIALS
fi

# A killed master is started again; a paused one is woken.
if [[ $SIGNAL == KILL ]]; then
  start_cmd="'${CLUSTER[0]}' start {node} --dir '$DIR'"
else
  start_cmd="'${CLUSTER[0]}' kill {node} --signal CONT --dir '$DIR'"
fi
# The drill's own exit code is the script's; its JSON line says why it failed.
status=0
"$BIN_DIR/cluster-cli" --controller "$CONTROLLER_ADDR" drill --rounds "$ROUNDS" \
  "${allow_loss[@]}" \
  --kill-cmd "'${CLUSTER[0]}' kill {node} --signal $SIGNAL --dir '$DIR'" \
  --start-cmd "$start_cmd" || status=$?
if [[ $status -ne 0 ]]; then
  KEEP=1
  echo "failover-drill.sh: the drill failed (exit $status; its JSON line says why)" >&2
fi
exit $status
