#!/usr/bin/env bash
# Brings up the local stack tts-worker needs: RabbitMQ and Garage (S3).
# Idempotent: what is already installed or running is reused.
#
#   scripts/stack.sh up      install/start what is missing, write the env file
#   scripts/stack.sh env     print the env file's path
#   scripts/stack.sh down    stop Garage (RabbitMQ is a system service; left running)
#
# State lives outside the clone (TTS_STACK_DIR, default ~/.local/share/tts-worker),
# so several clones share one Garage instead of fighting over its ports.
set -euo pipefail

STACK_DIR="${TTS_STACK_DIR:-$HOME/.local/share/tts-worker}"
GARAGE_DIR="$STACK_DIR/garage"
ENV_FILE="$STACK_DIR/env.sh"
S3_PORT="${TTS_STACK_S3_PORT:-3900}"
RPC_PORT="${TTS_STACK_RPC_PORT:-3901}"
BUCKET="${TTS_STACK_BUCKET:-tts-audio}"

log() { printf '[stack] %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port seconds what
  for _ in $(seq 1 "$(( $2 * 2 ))"); do port_open "$1" && return 0; sleep 0.5; done
  log "$3 did not open port $1 within $2 s"; return 1
}

ensure_rabbitmq() {
  if port_open 5672; then log "RabbitMQ is up on 5672"; return; fi
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    log "installing rabbitmq-server (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq rabbitmq-server >&2
  fi
  log "starting RabbitMQ"
  # 9>&-: the daemon must not inherit (and so hold forever) the set-up lock.
  rabbitmq-server -detached >&2 9>&- || true
  wait_port 5672 120 RabbitMQ
  # The port opens before the broker accepts logins; wait for the app.
  for _ in $(seq 1 60); do rabbitmqctl -q await_startup >/dev/null 2>&1 && break; sleep 1; done
  log "RabbitMQ is up"
}

# Garage is a test server here: built with only what the stack uses (the
# LMDB metadata engine; no SQLite, K2V, metrics or bundled C libraries, which
# Debian provides) and a quick release profile (no LTO, parallel codegen,
# opt-level 1). That halves the one-time build; it serves the demo's and the
# tests' objects at the same speed as far as they can tell.
GARAGE_VERSION=2.5.0
ensure_garage_binary() {
  export PATH="$HOME/.cargo/bin:$PATH"
  if command -v garage >/dev/null 2>&1; then return; fi
  "$(dirname "$0")/debian-deps.sh" --garage
  log "building Garage $GARAGE_VERSION (one time, ≈ 5 minutes on 2 cores)"
  local started=$SECONDS
  CARGO_PROFILE_RELEASE_LTO=false \
  CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
  CARGO_PROFILE_RELEASE_OPT_LEVEL=1 \
  CARGO_PROFILE_RELEASE_DEBUG=false \
  CARGO_PROFILE_RELEASE_STRIP=true \
    cargo install "garage@$GARAGE_VERSION" --locked --quiet \
      --no-default-features --features lmdb,system-libs >&2
  log "Garage built in $(( SECONDS - started )) s"
}

garage_cli() { garage -c "$GARAGE_DIR/garage.toml" "$@"; }

ensure_garage() {
  ensure_garage_binary
  mkdir -p "$GARAGE_DIR/meta" "$GARAGE_DIR/data"
  if [ ! -f "$GARAGE_DIR/garage.toml" ]; then
    cat > "$GARAGE_DIR/garage.toml" <<TOML
# Single-node, throwaway Garage for tts-worker's demo and tests.
metadata_dir = "$GARAGE_DIR/meta"
data_dir = "$GARAGE_DIR/data"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$RPC_PORT"
rpc_public_addr = "127.0.0.1:$RPC_PORT"
rpc_secret = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$S3_PORT"
root_domain = ".s3.garage.localhost"
TOML
  fi
  if ! port_open "$S3_PORT"; then
    log "starting Garage on 127.0.0.1:$S3_PORT"
    nohup garage -c "$GARAGE_DIR/garage.toml" server > "$GARAGE_DIR/garage.log" 2>&1 9>&- &
    echo $! > "$GARAGE_DIR/garage.pid"
    wait_port "$S3_PORT" 60 Garage
    wait_port "$RPC_PORT" 60 "Garage RPC"
  else
    log "Garage is up on $S3_PORT"
  fi
  # Layout: one node with a role. Done once per data dir.
  if [ ! -f "$GARAGE_DIR/.layout-done" ]; then
    local node=""
    for _ in $(seq 1 30); do
      node=$(garage_cli node id -q 2>/dev/null | cut -d@ -f1) && [ -n "$node" ] && break
      sleep 1
    done
    [ -n "$node" ] || { log "cannot read Garage's node id"; exit 1; }
    garage_cli layout assign -z local -c 1G "$node" >&2
    garage_cli layout apply --version 1 >&2
    touch "$GARAGE_DIR/.layout-done"
  fi
  # Key and bucket: a fixed, throwaway key imported once.
  if [ ! -f "$GARAGE_DIR/key.env" ]; then
    local id="GK$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    local secret="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    garage_cli key import --yes -n tts-worker "$id" "$secret" >&2
    printf 'KEY_ID=%s\nKEY_SECRET=%s\n' "$id" "$secret" > "$GARAGE_DIR/key.env"
  fi
  # shellcheck disable=SC1091
  . "$GARAGE_DIR/key.env"
  if ! garage_cli bucket info "$BUCKET" >/dev/null 2>&1; then
    garage_cli bucket create "$BUCKET" >&2
  fi
  garage_cli bucket allow --read --write --owner "$BUCKET" --key "$KEY_ID" >/dev/null 2>&1 || true
  cat > "$ENV_FILE" <<ENV
# Written by scripts/stack.sh: how to reach the local stack.
export AWS_ACCESS_KEY_ID=$KEY_ID
export AWS_SECRET_ACCESS_KEY=$KEY_SECRET
export TTS__S3__ENDPOINT=http://127.0.0.1:$S3_PORT
export TTS__S3__BUCKET=$BUCKET
export TTS__S3__REGION=garage
export TTS__S3__FORCE_PATH_STYLE=true
export TTS__AMQP__URL=amqp://guest:guest@127.0.0.1:5672/%2f
ENV
  log "Garage bucket $BUCKET ready (env: $ENV_FILE)"
}

case "${1:-up}" in
  # One set-up at a time: a second run (the demo and the tests side by
  # side, or a rerun after Ctrl-C) waits instead of building Garage twice.
  up) mkdir -p "$STACK_DIR"; exec 9>"$STACK_DIR/.stack.lock"; flock 9
      ensure_rabbitmq; ensure_garage; echo "$ENV_FILE" ;;
  env) echo "$ENV_FILE" ;;
  down)
    if [ -f "$GARAGE_DIR/garage.pid" ]; then kill "$(cat "$GARAGE_DIR/garage.pid")" 2>/dev/null || true; rm -f "$GARAGE_DIR/garage.pid"; fi ;;
  *) echo "usage: $0 up|env|down" >&2; exit 2 ;;
esac
