#!/usr/bin/env bash
# Runs the whole test suite against a real RabbitMQ and a real Garage,
# installing and starting them first when missing. Idempotent.
#
#   scripts/test.sh [extra cargo test args]
#
# 1. fmt, clippy
# 2. cargo test --workspace against RabbitMQ 3.10 (Debian bookworm's, :5672)
# 3. the integration suite and the scale-in churn scenario against RabbitMQ
#    4.3 (Debian sid's, in a chroot on :5674; scripts/rabbitmq.sh 4.3): 4.3
#    changed what counts as a delivery
# 4. the delivery-count and delivery-limit tests against RabbitMQ 4.0
#    (Debian trixie's, in a chroot on :5673; scripts/rabbitmq.sh 4.0)
# 5. tests/deploy/check.py: Helm chart, deploy/, Dockerfile, alert rules,
#    dashboard and compose file, with real validators (scripts/tools.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

env_file=$(scripts/stack.sh up)
# shellcheck disable=SC1090
. "$env_file"
tools_file=$(scripts/tools.sh)
# shellcheck disable=SC1090
. "$tools_file"
rabbitmq43_url=$(scripts/rabbitmq.sh 4.3 up)
rabbitmq40_url=$(scripts/rabbitmq.sh 4.0 up)

echo "[test] cargo fmt --check"
cargo fmt --all -- --check
echo "[test] cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
run() { # label, command...
  echo "[test] $1"
  shift
  set +e
  "$@" 2>&1 | tee -a "$log"
  local s=${PIPESTATUS[0]}
  set -e
  if [ "$s" -ne 0 ]; then status=$s; fi
}
run "cargo test (RabbitMQ 3.10 on :5672)" cargo test --workspace --locked "$@"
run "integration suite on RabbitMQ 4.3 ($rabbitmq43_url)" \
  env TTS__AMQP__URL="$rabbitmq43_url" TTS_TEST_RABBITMQCTL="$PWD/scripts/rabbitmq.sh 4.3 ctl" \
  cargo test --locked --test integration "$@"
run "churn scenario on RabbitMQ 4.3" \
  env TTS__AMQP__URL="$rabbitmq43_url" TTS_TEST_RABBITMQCTL="$PWD/scripts/rabbitmq.sh 4.3 ctl" \
  cargo test --locked --test chaos churn "$@"
# 4.0: what differs between versions (delivery counting, the default delivery
# limit, hand-overs); the whole suite runs on 3.10 and 4.3.
run "delivery-count and delivery-limit tests on RabbitMQ 4.0 ($rabbitmq40_url)" \
  env TTS__AMQP__URL="$rabbitmq40_url" TTS_TEST_RABBITMQCTL="$PWD/scripts/rabbitmq.sh 4.0 ctl" \
  cargo test --locked --test integration "$@" -- \
  polls_always_fail storage_outage poison delivery_limit shutdown_hands refusal_of_one_request older_version
run "deploy checks (helm, kubernetes-validate, hadolint, promtool, compose)" \
  "$TTS_TOOLS_PYTHON" tests/deploy/check.py
read -r passed failed < <(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } } END { print p + 0, f + 0 }' "$log")
checks=$(grep -c '^  ok ' "$log" || true)
echo
echo "tests: ${passed:-0} passed, ${failed:-0} failed; deploy checks: $checks ok"
exit "$status"
