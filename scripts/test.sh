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
cargo clippy --all-targets --locked -- -D warnings
echo "[test] cargo test"
cargo test --locked "$@"
