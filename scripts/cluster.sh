#!/usr/bin/env bash
# A cluster on this machine in one command, in one of the seed's four topologies, and the
# commands to operate it: start, stop, pause and kill its nodes, read their logs.
#
#   scripts/cluster.sh up TOPOLOGY [--dir DIR] [--controllers 1|3] [--tls] [--acl]
#   scripts/cluster.sh down [--dir DIR] [--wipe]
#   scripts/cluster.sh status [--dir DIR]
#   scripts/cluster.sh kill NODE [--signal KILL|STOP|CONT|TERM] [--dir DIR]
#   scripts/cluster.sh start NODE [--dir DIR]
#   scripts/cluster.sh logs NODE [--lines N] [--follow] [--dir DIR]
#
# TOPOLOGY: single-master, multi-master (2 masters), 2m-2s-async (2 groups, master + slave each,
# ASYNC_MASTER), 2m-2s-sync (SYNC_MASTER, SYNC_FLUSH on every broker). The broker configuration
# of each is scripts/topologies/TOPOLOGY.toml, the controllers' scripts/topologies/controller.toml.
# Every process listens on 127.0.0.1, on free ports chosen at `up` (its service, a broker's
# RocketMQ 5 API, and its Prometheus metrics endpoint, which `status` prints) and kept for the cluster's
# life. Nodes: controller-1..3, and GROUP-ID for brokers (broker-a-0, broker-a-1, broker-b-0,
# broker-b-1). DIR (default ./.cluster) holds, per node, NODE.toml, its data in NODE/, its log in
# NODE.log (stdout in NODE.out) and NODE.pid, and cluster.env with CONTROLLER_ADDR=... for
# cluster-cli (`set -a; . DIR/cluster.env; set +a`) and ROCKETMQ_ENDPOINT=host:port, the access
# point to give a RocketMQ 5 application (docs/CLIENTS.md).
#
# --tls (at a cluster's first `up`): every port is TLS and nodes authenticate each other with
# certificates. `up` writes a development CA and one node certificate into DIR/tls with
# `cluster-cli tls generate` (names localhost and the 127.0.0.x addresses), gives every node
# tls_cert, tls_key and tls_ca, and adds CLUSTER_TLS_CA=DIR/tls/ca.pem to cluster.env, which
# cluster-cli reads (so `set -a; . DIR/cluster.env; set +a` is all a shell needs).
#
# --acl (at a cluster's first `up`): every controller and broker checks users' requests against
# the ACL (`acl_enabled`). `up` makes a random secret key for the built-in admin (`admin`),
# writes it to DIR/admin.credentials (mode 0600) and adds CLUSTER_CREDENTIALS=that file to
# cluster.env, so cluster-cli signs as the admin; make users for applications with
# `cluster-cli user create` and `cluster-cli acl create` (docs/SECURITY.md). It also writes a
# random bearer token to DIR/metrics.token (mode 0600), which every node's /metrics then requires
# (`metrics_token_file`; METRICS_TOKEN_FILE in cluster.env; e.g. curl -H "Authorization: Bearer
# $(cat DIR/metrics.token)"). A cluster keeps what its first `up` chose.
#
# `up` builds the release binaries (cargo build --release, quick when they are current) unless
# BIN_DIR names a directory holding `controller`, `broker` and `cluster-cli`; starts every node;
# waits (at most READY_TIMEOUT_S, default 90) until every group has a master and every broker is
# alive and in its group's in-sync set; prints `cluster-cli cluster list`; and leaves the nodes
# running in the background. `up` on a DIR of a stopped cluster of the same topology starts it
# again with its data. `down` stops every node with SIGTERM (SIGKILL after 30 s), brokers first,
# and keeps DIR unless --wipe.
#
# Exit codes: 0 done; 1 the cluster did not become ready, a node did not stop cleanly, (for
# status) a node is not running, or a command of this script failed; 2 bad usage. Every non-zero
# exit says why on stderr: a command that fails unexpectedly is named with its line.
#
# Environment: BIN_DIR (above); READY_TIMEOUT_S (above); CLUSTER_TCP_TABLES, the kernel's TCP
# tables that free ports are chosen against (default "/proc/net/tcp /proc/net/tcp6"; tests point
# it at copies of their own).
set -eEuo pipefail
# Command substitutions stop at their first failure too, as the rest of the script does.
shopt -s inherit_errexit
# A failure no line of this script expected (set -e stops there) still says what failed, so that
# no exit is silent. Not run for commands in a condition (if, while, ||, &&), which are expected
# to fail at times.
trap 'echo "cluster.sh: line $LINENO: \"$BASH_COMMAND\" failed with status $?" >&2' ERR

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOPOLOGIES="$ROOT/scripts/topologies"
READY_TIMEOUT_S=${READY_TIMEOUT_S:-90}
# How long a node may take from its start to its ready line (a broker recovers its store first).
START_TIMEOUT_S=${START_TIMEOUT_S:-60}
# Per node, where its stdout stood when it was last started (see start_node).
declare -A STARTED_AT=()
TCP_TABLES=${CLUSTER_TCP_TABLES:-/proc/net/tcp /proc/net/tcp6}
STOP_TIMEOUT_S=30

usage() {
  sed -n '5,10p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

die() {
  echo "cluster.sh: $*" >&2
  exit 2
}

# --- arguments -----------------------------------------------------------------------------------

[[ $# -ge 1 ]] || usage
COMMAND=$1
shift
DIR=./.cluster
CONTROLLERS=
SIGNAL=KILL
LINES=100
FOLLOW=0
WIPE=0
TLS=0
ACL=0
POSITIONAL=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --dir) DIR=${2:?--dir needs a directory}; shift 2 ;;
    --controllers) CONTROLLERS=${2:?--controllers needs 1 or 3}; shift 2 ;;
    --signal) SIGNAL=${2:?--signal needs KILL, STOP, CONT or TERM}; shift 2 ;;
    --lines) LINES=${2:?--lines needs a number}; shift 2 ;;
    --follow|-f) FOLLOW=1; shift ;;
    --wipe) WIPE=1; shift ;;
    --tls) TLS=1; shift ;;
    --acl) ACL=1; shift ;;
    -h|--help) usage ;;
    -*) die "unknown option $1" ;;
    *) POSITIONAL+=("$1"); shift ;;
  esac
done
[[ -z $CONTROLLERS || $CONTROLLERS == 1 || $CONTROLLERS == 3 ]] || die "--controllers must be 1 or 3"
[[ $SIGNAL =~ ^(KILL|STOP|CONT|TERM)$ ]] || die "--signal must be KILL, STOP, CONT or TERM"
[[ $LINES =~ ^[0-9]+$ ]] || die "--lines must be a number"
if [[ $COMMAND == up ]]; then
  mkdir -p "$DIR"
fi
[[ -d $DIR ]] || die "no cluster in $DIR (run: scripts/cluster.sh up TOPOLOGY --dir $DIR)"
DIR=$(cd "$DIR" && pwd)

# --- nodes ---------------------------------------------------------------------------------------

# The nodes of the cluster in DIR, controllers first (the order they start in).
nodes() {
  [[ -f $DIR/nodes ]] || die "no cluster in $DIR (run: scripts/cluster.sh up TOPOLOGY --dir $DIR)"
  cat "$DIR/nodes"
}

is_node() {
  nodes | grep -qx -- "$1"
}

binary_of() {
  case $1 in
    controller-*) echo controller ;;
    *) echo broker ;;
  esac
}

# The pid of NODE if it is running (a pid file alone is not enough: the pid may be reused).
pid_of() {
  local pidfile=$DIR/$1.pid pid
  [[ -f $pidfile ]] || return 1
  pid=$(<"$pidfile")
  [[ -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$DIR/$1.toml" || return 1
  echo "$pid"
}

# running, paused (SIGSTOP) or down.
state_of() {
  local pid
  if ! pid=$(pid_of "$1"); then
    echo down
  elif [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) == T ]]; then
    echo paused
  else
    echo running
  fi
}

listen_of() {
  sed -n 's/^listen = "\(.*\)"$/\1/p' "$DIR/$1.toml"
}

metrics_of() {
  sed -n 's/^metrics_listen = "\(.*\)"$/\1/p' "$DIR/$1.toml"
}

v5_of() {
  sed -n 's/^v5_listen = "\(.*\)"$/\1/p' "$DIR/$1.toml"
}

start_node() {
  local node=$1 binary
  binary=$(binary_of "$node")
  if pid_of "$node" >/dev/null; then
    echo "cluster.sh: $node is already running" >&2
    return 1
  fi
  # Where this start's output begins: the ready line counts only if printed by this start.
  STARTED_AT[$node]=$(stat -c %s "$DIR/$node.out" 2>/dev/null || echo 0)
  # setsid: the node is no part of this shell's session, so a Ctrl-C here never reaches it.
  setsid "$BIN_DIR/$binary" -c "$DIR/$node.toml" </dev/null >>"$DIR/$node.out" 2>>"$DIR/$node.log" &
  echo $! >"$DIR/$node.pid"
}

# Waits (up to START_TIMEOUT_S) until NODE, just started, prints its ready line ("... listening
# on ADDR"). Returns 1, saying why with the end of its log, if it exited first or stays silent.
wait_started() {
  local node=$1 waited=0 offset=${STARTED_AT[$1]:-0}
  while :; do
    if tail -c +"$((offset + 1))" "$DIR/$node.out" 2>/dev/null | grep -q ' listening on '; then
      return 0
    fi
    if ! pid_of "$node" >/dev/null; then
      echo "cluster.sh: $node exited while starting; the end of $DIR/$node.log:" >&2
      tail -n 5 "$DIR/$node.log" >&2 || true
      return 1
    fi
    if [[ $waited -ge $((START_TIMEOUT_S * 50)) ]]; then
      echo "cluster.sh: $node did not say it serves within $START_TIMEOUT_S s; see $DIR/$node.log" >&2
      return 1
    fi
    sleep 0.02
    waited=$((waited + 1))
  done
}

# Sends SIGNAL to NODE; for KILL and TERM, waits until it is gone (SIGKILL after the stop
# timeout for TERM). Returns 1 if TERM did not stop it in time.
signal_node() {
  local node=$1 signal=$2 pid waited=0
  pid=$(pid_of "$node") || { echo "cluster.sh: $node is not running" >&2; return 1; }
  kill -s "$signal" "$pid"
  [[ $signal == KILL || $signal == TERM ]] || return 0
  # A paused process does not act on TERM until it runs again.
  [[ $signal == TERM ]] && kill -s CONT "$pid" 2>/dev/null
  while [[ -e /proc/$pid ]] && pid_of "$node" >/dev/null; do
    sleep 0.02
    waited=$((waited + 1))
    if [[ $signal == TERM && $waited -ge $((STOP_TIMEOUT_S * 50)) ]]; then
      echo "cluster.sh: $node did not stop within $STOP_TIMEOUT_S s of SIGTERM: SIGKILL" >&2
      kill -s KILL "$pid" 2>/dev/null || true
      return 1
    fi
  done
}

load_env() {
  [[ -f $DIR/cluster.env && -f $DIR/nodes ]] ||
    die "no cluster in $DIR (run: scripts/cluster.sh up TOPOLOGY --dir $DIR)"
  local bin_dir=${BIN_DIR:-}
  # A CA or credentials of another cluster in the caller's environment must not apply here.
  unset CLUSTER_TLS_CA CLUSTER_CREDENTIALS
  # shellcheck disable=SC1091
  . "$DIR/cluster.env"
  # The binaries `up` used, unless the caller names others.
  BIN_DIR=${bin_dir:-$BIN_DIR}
  export CONTROLLER_ADDR
  # cluster-cli dials over TLS, trusting the cluster's CA, when the cluster has one.
  if [[ -n ${CLUSTER_TLS_CA:-} ]]; then
    export CLUSTER_TLS_CA
  fi
  # ... and signs as the built-in admin when the cluster checks users (--acl).
  if [[ -n ${CLUSTER_CREDENTIALS:-} ]]; then
    export CLUSTER_CREDENTIALS
  fi
}

cli() {
  "$BIN_DIR/cluster-cli" --controller "$CONTROLLER_ADDR" "$@"
}

# --- free ports ----------------------------------------------------------------------------------

# Ports something listens on now, from the kernel's tables (no ss or netstat needed). Always
# succeeds: a function's status is that of its last command, so a loop that ends on a test must
# not leave the test's failure as the function's (`[[ ... ]] && echo` on a last line that is not
# a listener once made `up` exit 1 in silence).
listening_ports() {
  local file local_addr state
  for file in $TCP_TABLES; do
    [[ -r $file ]] || continue
    while read -r _ local_addr _ state _; do
      if [[ $state == 0A ]]; then
        echo $((16#${local_addr##*:}))
      fi
    done < <(tail -n +2 "$file")
  done
  return 0
}

TAKEN=" "
# Sets PORT to a port no one listens on and not handed out before, below the kernel's range for
# outgoing connections (32768 up), so that no client's own port takes it before the node binds it.
free_port() {
  local used
  used=" $(listening_ports | tr '\n' ' ') "
  while :; do
    PORT=$((20000 + RANDOM % 12000))
    [[ $used == *" $PORT "* || $TAKEN == *" $PORT "* ]] && continue
    TAKEN+="$PORT "
    return
  done
}

# --- commands ------------------------------------------------------------------------------------

fill() {
  local template=$1 out=$2
  shift 2
  local script=() pair
  for pair in "$@"; do
    script+=(-e "s|@${pair%%=*}@|${pair#*=}|g")
  done
  sed "${script[@]}" "$template" >"$out"
}

build_binaries() {
  if [[ -n ${BIN_DIR:-} ]]; then
    BIN_DIR=$(cd "$BIN_DIR" && pwd)
  else
    echo "cluster.sh: building the release binaries (cargo build --release)" >&2
    (cd "$ROOT" && cargo build --release --locked -p controller -p broker -p cluster-cli >&2)
    BIN_DIR=${CARGO_TARGET_DIR:-$ROOT/target}/release
  fi
  local binary
  for binary in controller broker cluster-cli; do
    [[ -x $BIN_DIR/$binary ]] || die "$BIN_DIR/$binary is missing"
  done
}

# Writes a fresh cluster's configuration into DIR: free ports, one secret, the nodes' files.
configure_fresh() {
  local topology=$1 template=$2 node
  local brokers controller_addr="" peers="" secret i
  CONTROLLERS=${CONTROLLERS:-3}
  brokers=$(sed -n 's/^# cluster.sh nodes: //p' "$template")
  [[ -n $brokers ]] || die "$template lists no nodes ('# cluster.sh nodes: ...')"
  secret=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
  : >"$DIR/nodes"
  for ((i = 1; i <= CONTROLLERS; i++)); do
    free_port
    peers+="${peers:+,}$i=127.0.0.1:$PORT"
    controller_addr+="${controller_addr:+,}127.0.0.1:$PORT"
    echo -n "controller-$i $PORT" >>"$DIR/nodes"
    free_port
    echo " $PORT" >>"$DIR/nodes"
  done
  for node in $brokers; do
    free_port
    echo -n "$node $PORT" >>"$DIR/nodes"
    free_port
    echo -n " $PORT" >>"$DIR/nodes"
    free_port
    echo " $PORT" >>"$DIR/nodes"
  done
  local ports; ports=$(cat "$DIR/nodes")
  cut -d' ' -f1 <<<"$ports" >"$DIR/nodes"
  # Any broker is an access point for RocketMQ 5 clients: the last one listed (a slave in the
  # topologies that have slaves, so that a master's failover leaves it be).
  local v5_endpoint=""
  while read -r node port metrics_port v5_port; do
    case $node in
      controller-*)
        fill "$TOPOLOGIES/controller.toml" "$DIR/$node.toml" "ID=${node#controller-}" \
          "LISTEN=127.0.0.1:$port" "PEERS=$peers" "DATA_DIR=$DIR/$node" \
          "CLUSTER_SECRET=$secret" "METRICS_LISTEN=127.0.0.1:$metrics_port" ;;
      *)
        fill "$template" "$DIR/$node.toml" "GROUP=${node%-*}" "ID=${node##*-}" \
          "LISTEN=127.0.0.1:$port" "STORE_PATH=$DIR/$node" "CONTROLLER_ADDR=$controller_addr" \
          "CLUSTER_SECRET=$secret" "METRICS_LISTEN=127.0.0.1:$metrics_port" \
          "V5_LISTEN=127.0.0.1:$v5_port"
        v5_endpoint=127.0.0.1:$v5_port ;;
    esac
  done <<<"$ports"
  chmod 600 "$DIR"/*.toml
  printf 'TOPOLOGY=%s\nCONTROLLERS=%s\nCONTROLLER_ADDR=%s\nROCKETMQ_ENDPOINT=%s\n' "$topology" \
    "$CONTROLLERS" "$controller_addr" "$v5_endpoint" >"$DIR/cluster.env"
  if [[ $TLS == 1 ]]; then
    configure_tls
  fi
  if [[ $ACL == 1 ]]; then
    configure_acl
  fi
}

# --acl: acl_enabled on every node, the built-in admin's secret key on the controllers, the
# admin's credentials file for cluster-cli, and a bearer token for every node's /metrics.
configure_acl() {
  local node secret
  secret=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
  (umask 077 && printf 'access_key=admin\nsecret_key=%s\n' "$secret" >"$DIR/admin.credentials")
  (umask 077 && od -An -N24 -tx1 /dev/urandom | tr -d ' \n' >"$DIR/metrics.token")
  for node in $(nodes); do
    printf '# Users checked against the ACL (cluster.sh up --acl; docs/SECURITY.md).\n' >>"$DIR/$node.toml"
    printf 'acl_enabled = true\n' >>"$DIR/$node.toml"
    printf 'metrics_token_file = "%s"\n' "$DIR/metrics.token" >>"$DIR/$node.toml"
    case $node in
      controller-*) printf 'admin_secret_key = "%s"\n' "$secret" >>"$DIR/$node.toml" ;;
    esac
  done
  printf 'CLUSTER_CREDENTIALS=%s\nMETRICS_TOKEN_FILE=%s\n' "$DIR/admin.credentials" \
    "$DIR/metrics.token" >>"$DIR/cluster.env"
}

# --tls: a development CA and node certificate in DIR/tls, the three settings on every node
# (appended: every key of the flat tables may come last), and the CA for cluster-cli.
configure_tls() {
  local node
  # --force: a fresh configuration (a retry on other ports) replaces what an earlier try wrote.
  "$BIN_DIR/cluster-cli" tls generate --dir "$DIR/tls" --force >/dev/null
  for node in $(nodes); do
    printf '# TLS on every port (cluster.sh up --tls; docs/OPERATIONS.md, "TLS").\n' >>"$DIR/$node.toml"
    printf 'tls_cert = "%s"\ntls_key = "%s"\ntls_ca = "%s"\n' "$DIR/tls/node.pem" \
      "$DIR/tls/node-key.pem" "$DIR/tls/ca.pem" >>"$DIR/$node.toml"
  done
  printf 'CLUSTER_TLS_CA=%s\n' "$DIR/tls/ca.pem" >>"$DIR/cluster.env"
}

cmd_up() {
  [[ ${#POSITIONAL[@]} -eq 1 ]] || die "up needs one TOPOLOGY: single-master, multi-master, 2m-2s-async, 2m-2s-sync"
  local topology=${POSITIONAL[0]}
  local template=$TOPOLOGIES/$topology.toml
  [[ $topology != controller && -f $template ]] ||
    die "unknown topology $topology: single-master, multi-master, 2m-2s-async, 2m-2s-sync"
  build_binaries
  local node fresh=0
  if [[ -f $DIR/cluster.env ]]; then
    local previous
    # shellcheck disable=SC1091
    previous=$(. "$DIR/cluster.env"; echo "$TOPOLOGY $CONTROLLERS")
    [[ $previous == "$topology ${CONTROLLERS:-${previous#* }}" ]] ||
      die "$DIR holds a ${previous% *} cluster with ${previous#* } controller(s): use another --dir, or 'down --wipe' it first"
    for node in $(nodes); do
      [[ $(state_of "$node") == down ]] || die "$node is already running: the cluster is up (status, or down first)"
    done
    if [[ $TLS == 1 ]] && ! grep -q '^CLUSTER_TLS_CA=' "$DIR/cluster.env"; then
      die "$DIR holds a plaintext cluster: --tls applies to a new one (another --dir, or 'down --wipe' it first)"
    fi
    if [[ $ACL == 1 ]] && ! grep -q '^CLUSTER_CREDENTIALS=' "$DIR/cluster.env"; then
      die "$DIR holds a cluster without the ACL: --acl applies to a new one (another --dir, or 'down --wipe' it first)"
    fi
    echo "cluster.sh: starting the $topology cluster in $DIR again, with its data" >&2
  else
    fresh=1
    configure_fresh "$topology" "$template"
  fi
  # The binaries of this start, for status and start later.
  sed -i '/^BIN_DIR=/d' "$DIR/cluster.env"
  printf 'BIN_DIR=%s\n' "$BIN_DIR" >>"$DIR/cluster.env"
  load_env
  local attempt=1 failed
  while :; do
    failed=""
    for node in $(nodes); do
      start_node "$node"
      echo "cluster.sh: started $node on $(listen_of "$node")" >&2
    done
    for node in $(nodes); do
      wait_started "$node" || failed+="$node "
    done
    [[ -z $failed ]] && break
    # Another process may take a port between the scan and the bind (two clusters starting at
    # once): a fresh cluster picks new ports and starts again, up to three times.
    if [[ $fresh == 1 && $attempt -lt 3 ]] && grep -qs 'Address already in use' \
      $(for node in $failed; do echo "$DIR/$node.log"; done); then
      echo "cluster.sh: a port was taken meanwhile ($failed); starting again on other ports" >&2
      for node in $(nodes); do
        [[ $(state_of "$node") == down ]] || signal_node "$node" KILL || true
        rm -rf "${DIR:?}/$node" "$DIR/$node".{toml,out,log,pid}
      done
      rm -f "$DIR/nodes" "$DIR/cluster.env"
      rm -rf "$DIR/tls" "$DIR/admin.credentials"
      configure_fresh "$topology" "$template"
      sed -i '/^BIN_DIR=/d' "$DIR/cluster.env"
      printf 'BIN_DIR=%s\n' "$BIN_DIR" >>"$DIR/cluster.env"
      load_env
      attempt=$((attempt + 1))
      continue
    fi
    echo "cluster.sh: $failed did not start; logs in $DIR/*.log; nodes left running (down to stop)" >&2
    exit 1
  done
  local groups brokers
  groups=$(nodes | grep -v '^controller-' | sed 's/-[0-9]*$//' | sort -u | wc -l)
  brokers=$(nodes | grep -vc '^controller-')
  echo "cluster.sh: waiting for $groups group(s) of $brokers broker(s): masters elected, slaves in sync" >&2
  if ! cli cluster ready --groups "$groups" --brokers "$brokers" --wait-s "$READY_TIMEOUT_S" >&2; then
    echo "cluster.sh: not ready within $READY_TIMEOUT_S s; logs in $DIR/*.log; nodes left running (down to stop)" >&2
    exit 1
  fi
  cli cluster list || true
  echo "cluster up: $topology in $DIR; CONTROLLER_ADDR=$CONTROLLER_ADDR ROCKETMQ_ENDPOINT=$ROCKETMQ_ENDPOINT (also in $DIR/cluster.env)"
}

# The brokers that are masters now (GROUP-ID, one per line), as the controllers say; nothing when
# they do not answer.
masters_now() {
  cli cluster list 2>/dev/null | awk 'NR > 1 && $6 == "MASTER" { print $2 "-" $4 }' || true
}

cmd_down() {
  load_env
  local node clean=0 masters
  # Brokers first: they stop cleanly while the controllers still answer. Slaves before masters:
  # a stopping slave leaves its in-sync set at once, so a master stopped after it has nobody to
  # hand over to and stops at once, instead of handing mastership to a slave about to stop.
  masters=$(masters_now)
  for node in $(nodes | grep -v '^controller-' | grep -vxF -e "$masters" || true) \
    $(nodes | grep -v '^controller-' | grep -xF -e "$masters" || true) \
    $(nodes | grep '^controller-'); do
    [[ $(state_of "$node") == down ]] && continue
    if signal_node "$node" TERM; then
      echo "cluster.sh: stopped $node" >&2
    else
      clean=1
    fi
  done
  if [[ $WIPE == 1 ]]; then
    rm -rf "$DIR"
    echo "cluster.sh: removed $DIR" >&2
  fi
  if [[ $clean != 0 ]]; then
    echo "cluster.sh: not every node stopped cleanly (above)" >&2
    exit 1
  fi
}

cmd_status() {
  load_env
  local node all=0 state pid scheme=http
  [[ -n ${CLUSTER_TLS_CA:-} ]] && scheme=https
  printf '%-14s %-8s %-8s %-22s %-22s %s\n' NODE STATE PID ADDR V5 METRICS
  for node in $(nodes); do
    state=$(state_of "$node")
    pid=$(pid_of "$node" || echo -)
    printf '%-14s %-8s %-8s %-22s %-22s %s\n' "$node" "$state" "$pid" "$(listen_of "$node")" \
      "$(v5_of "$node" | grep . || echo -)" "$scheme://$(metrics_of "$node")/metrics"
    [[ $state == running ]] || all=1
  done
  echo
  cli cluster list || true
  if [[ $all != 0 ]]; then
    echo "cluster.sh: not every node is running" >&2
    exit 1
  fi
}

# Sets NODE to the one node named on the command line (not echoed: a die in a command
# substitution would stop only the substitution).
one_node() {
  [[ ${#POSITIONAL[@]} -eq 1 ]] || die "$COMMAND needs one NODE"
  is_node "${POSITIONAL[0]}" || die "no node ${POSITIONAL[0]} in $DIR: $(nodes | tr '\n' ' ')"
  NODE=${POSITIONAL[0]}
}

cmd_kill() {
  local node
  one_node
  node=$NODE
  signal_node "$node" "$SIGNAL" || exit 1
  echo "cluster.sh: sent SIG$SIGNAL to $node" >&2
}

cmd_start() {
  local node
  one_node
  node=$NODE
  load_env
  start_node "$node" || exit 1
  wait_started "$node" || exit 1
  echo "cluster.sh: started $node on $(listen_of "$node")" >&2
}

cmd_logs() {
  local node
  one_node
  node=$NODE
  if [[ $FOLLOW == 1 ]]; then
    exec tail -n "$LINES" -f "$DIR/$node.log"
  fi
  tail -n "$LINES" "$DIR/$node.log"
}

case $COMMAND in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  kill) cmd_kill ;;
  start) cmd_start ;;
  logs) cmd_logs ;;
  -h|--help|help) usage ;;
  *) die "unknown command $COMMAND: up, down, status, kill, start, logs" ;;
esac
