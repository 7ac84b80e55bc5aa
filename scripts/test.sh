#!/usr/bin/env bash
# Runs the whole test suite against a real RabbitMQ and a real Garage,
# installing and starting them first when missing. Idempotent.
#
#   scripts/test.sh [extra cargo test args]
#
# 0. set-up: Debian packages, then side by side with the first build the
#    stack, the validators and the RabbitMQ 4.3 / 4.0 chroots
# 1. fmt, clippy; contract/asyncapi.yaml through @asyncapi/parser
# 2. cargo test --workspace against RabbitMQ 3.10 (Debian bookworm's, :5672):
#    the schemas generated from the types equal contract/schemas/, every
#    event the suite reads is valid by them, and the example producers
#    (examples/python, examples/node) run end to end
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

started=$SECONDS
say() { printf '[test %dm%02ds] %s\n' $(( (SECONDS - started) / 60 )) $(( (SECONDS - started) % 60 )) "$*"; }
work=$(mktemp -d)
log="$work/results.log"
declare -A pid=()
# Background set-up steps run in sessions of their own (setsid): on any exit,
# Ctrl-C included, they are stopped with everything they started.
cleanup() { for p in "${pid[@]}"; do kill -- "-$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 \
  || { echo "[test] Node.js 20+ with npm is needed (the AsyncAPI parser, the Node example)" >&2; exit 1; }

# Set-up runs beside the first build: every apt install first (so no two
# overlap), then the stack (Garage is built from source on a fresh machine,
# ≈ 6 min), the validators and the RabbitMQ 4.3 and 4.0 chroots (≈ 2 min
# each, mostly downloads) in the background while clippy builds.
say "Debian packages (first run ≈ 1 min)"
scripts/debian-deps.sh --stack --garage --brokers
background() { # name, command...: output in $work/name.{out,log}
  local name=$1; shift
  setsid "$@" > "$work/$name.out" 2> "$work/$name.log" &
  pid[$name]=$!
}
await() { # name, what: waits for a background step; its stdout is in $work/name.out
  if ! wait "${pid[$1]}"; then
    echo "[test] $2 failed; the end of its log:" >&2; tail -30 "$work/$1.log" >&2; exit 1
  fi
}
say "in the background: RabbitMQ 3.10 + Garage (first run ≈ 10 min beside clippy), validators and example producers' packages (≈ 2 min), RabbitMQ 4.3 and 4.0 chroots (≈ 4 min)"
background stack scripts/stack.sh up
background tools scripts/tools.sh
background brokers sh -c 'scripts/rabbitmq.sh 4.3 up && scripts/rabbitmq.sh 4.0 up'

say "cargo fmt --check"
cargo fmt --all -- --check
say "cargo clippy (first run ≈ 10 min, beside the set-up)"
cargo clippy --workspace --all-targets --locked -- -D warnings
await stack "scripts/stack.sh up"
# shellcheck disable=SC1090
. "$(cat "$work/stack.out")"
await tools "scripts/tools.sh"
# shellcheck disable=SC1090
. "$(cat "$work/tools.out")"
say "AsyncAPI document, parsed and validated by @asyncapi/parser"
node contract/validate.mjs
status=0
run() { # label, command...
  say "$1"
  shift
  set +e
  "$@" 2>&1 | tee -a "$log"
  local s=${PIPESTATUS[0]}
  set -e
  if [ "$s" -ne 0 ]; then status=$s; fi
}
# Every broker is up before the first test: the chaos scenarios restart
# RabbitMQ 3.10, and nothing else should be starting meanwhile.
await brokers "scripts/rabbitmq.sh 4.3 up, 4.0 up"
rabbitmq43_url=$(scripts/rabbitmq.sh 4.3 up)
rabbitmq40_url=$(scripts/rabbitmq.sh 4.0 up)
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
  polls_always_fail storage_outage poison delivery_limit shutdown_hands refusal_of_one_request older_version \
  newer_version
run "deploy checks (helm, kubernetes-validate, hadolint, promtool, compose)" \
  "$TTS_TOOLS_PYTHON" tests/deploy/check.py
read -r passed failed < <(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } } END { print p + 0, f + 0 }' "$log")
checks=$(grep -c '^  ok ' "$log" || true)
echo
say "tests: ${passed:-0} passed, ${failed:-0} failed; deploy checks: $checks ok"
exit "$status"
