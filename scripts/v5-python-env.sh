#!/usr/bin/env bash
# Makes, once, a Python virtual environment holding the official RocketMQ 5 Python client
# (pinned in tests/python/requirements.txt, installed from PyPI unchanged) for the tests that
# drive the cluster's apache.rocketmq.v2 API with it, and prints the path of its python.
#
# Usage: scripts/v5-python-env.sh
# Environment: V5_VENV (default: target/v5-venv in the repository), PYTHON (default: python3,
# 3.9 or later). Made again when requirements.txt changes; concurrent calls wait for each other.
# Exit status: 0 with the python's path on stdout; 1 with the reason on stderr.
set -euo pipefail
trap 'echo "v5-python-env: line $LINENO: \"$BASH_COMMAND\" failed with status $?" >&2' ERR

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${V5_VENV:-$ROOT/target/v5-venv}
PYTHON=${PYTHON:-python3}
REQUIREMENTS=$ROOT/tests/python/requirements.txt

command -v "$PYTHON" >/dev/null || { echo "v5-python-env: $PYTHON is not installed (Python 3.9 or later is needed)" >&2; exit 1; }
mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock 9

if [[ -x $VENV/bin/python ]] && cmp -s "$REQUIREMENTS" "$VENV/requirements.installed"; then
  echo "$VENV/bin/python"
  exit 0
fi
rm -rf "$VENV"
echo "v5-python-env: making $VENV (pip install -r tests/python/requirements.txt)" >&2
"$PYTHON" -m venv "$VENV"
if ! "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQUIREMENTS" >&2; then
  echo "v5-python-env: pip could not install the client; PyPI must be reachable" >&2
  rm -rf "$VENV"
  exit 1
fi
cp "$REQUIREMENTS" "$VENV/requirements.installed"
echo "$VENV/bin/python"
