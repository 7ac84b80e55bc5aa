#!/usr/bin/env bash
# Runs the whole test suite against a real RabbitMQ and a real Garage,
# installing and starting them first when missing. Idempotent.
#
#   scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

env_file=$(scripts/stack.sh up)
# shellcheck disable=SC1090
. "$env_file"

echo "[test] cargo fmt --check"
cargo fmt --all -- --check
echo "[test] cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "[test] cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
read -r passed failed < <(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } } END { print p + 0, f + 0 }' "$log")
echo
echo "tests: ${passed:-0} passed, ${failed:-0} failed"
exit "$status"
