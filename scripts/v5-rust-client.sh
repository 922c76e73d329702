#!/usr/bin/env bash
# Builds, once, the program in tests/rust-client that drives the cluster's apache.rocketmq.v2 API
# through the official RocketMQ 5 Rust client (crates.io `rocketmq`, pinned in its Cargo.toml and
# Cargo.lock, used unchanged), and prints the path of the binary.
#
# Usage: scripts/v5-rust-client.sh
# Environment: V5_RUST_TARGET (default: target/v5-rust-client in the repository), the directory
# cargo builds it in; kept apart from the workspace's so that neither build waits for the other.
# Concurrent calls wait for each other; a build that is up to date takes a second.
# Exit status: 0 with the binary's path on stdout; 1 with the reason on stderr.
set -euo pipefail
trap 'echo "v5-rust-client: line $LINENO: \"$BASH_COMMAND\" failed with status $?" >&2' ERR

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${V5_RUST_TARGET:-$ROOT/target/v5-rust-client}
MANIFEST=$ROOT/tests/rust-client/Cargo.toml

command -v cargo >/dev/null || { echo "v5-rust-client: cargo is not installed" >&2; exit 1; }
mkdir -p "$TARGET"
exec 9>"$TARGET.lock"
flock 9

if ! cargo build --quiet --locked --manifest-path "$MANIFEST" --target-dir "$TARGET" >&2; then
  echo "v5-rust-client: cargo could not build tests/rust-client; crates.io must be reachable for the first build" >&2
  exit 1
fi
echo "$TARGET/debug/v5-rust-client"
