#!/usr/bin/env bash
# Installs iptables from the distribution's packages when it is missing, for the tests that cut
# one link between two loopback addresses (tests/tests/partition.rs). Needs root (the tests run
# as root in CI) and apt-get (Debian, Ubuntu).
#
# Usage: scripts/install-iptables.sh
# Exit status: 0 when iptables is there (already, or installed now); 1 with the reason on stderr.
set -euo pipefail
trap 'echo "install-iptables: line $LINENO: \"$BASH_COMMAND\" failed with status $?" >&2' ERR

if command -v iptables >/dev/null || [[ -x /usr/sbin/iptables || -x /sbin/iptables ]]; then
  exit 0
fi
if [[ $(id -u) != 0 ]]; then
  echo "install-iptables: iptables is missing and installing it needs root" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null; then
  echo "install-iptables: iptables is missing and this system has no apt-get to install it" >&2
  exit 1
fi
# Concurrent callers wait for each other (apt takes its own lock, but fails instead of waiting).
exec 9>/tmp/install-iptables.lock
flock 9
if [[ -x /usr/sbin/iptables || -x /sbin/iptables ]]; then
  exit 0
fi
echo "install-iptables: installing iptables (apt-get)" >&2
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y --no-install-recommends iptables >&2; then
  apt-get update >&2
  apt-get install -y --no-install-recommends iptables >&2
fi
echo "install-iptables: done" >&2
