#!/usr/bin/env bash
# RabbitMQ 4.0 beside the system's 3.10, for running the suite against both.
#
# Debian bookworm packages RabbitMQ 3.10 only; trixie's rabbitmq-server (4.0.5)
# installs into a debootstrap chroot and runs there, sharing the host's network
# on its own ports. Idempotent; the chroot is made once per machine (~4 min).
#
#   scripts/rabbitmq4.sh up     install/start it, print its AMQP URL
#   scripts/rabbitmq4.sh down   stop it
#   scripts/rabbitmq4.sh ctl …  rabbitmqctl against it
set -euo pipefail

STACK_DIR="${TTS_STACK_DIR:-$HOME/.local/share/tts-worker}"
ROOT="$STACK_DIR/rabbitmq4-root"
PORT="${TTS_RABBITMQ4_PORT:-5673}"
DIST_PORT="${TTS_RABBITMQ4_DIST_PORT:-25673}"
NODE="rabbit4@localhost"
MIRROR="${TTS_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

log() { printf '[rabbitmq4] %s\n' "$*" >&2; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

in_root() {
  chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/var/lib/rabbitmq \
    RABBITMQ_NODE_PORT="$PORT" RABBITMQ_NODENAME="$NODE" RABBITMQ_DIST_PORT="$DIST_PORT" "$@"
}

mounts() {
  mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
  mountpoint -q "$ROOT/dev" || mount --bind /dev "$ROOT/dev"
}

install() {
  if [ -x "$ROOT/usr/sbin/rabbitmq-server" ]; then return; fi
  if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap (apt)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >&2 ||
      { apt-get update -qq >&2; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >&2; }
  fi
  if [ ! -x "$ROOT/usr/bin/apt-get" ]; then
    log "debootstrap trixie into $ROOT (one time, ~2 min)"
    rm -rf "$ROOT"
    mkdir -p "$ROOT"
    debootstrap --variant=minbase trixie "$ROOT" "$MIRROR" >&2
  fi
  grep -q '^127.0.0.1 localhost' "$ROOT/etc/hosts" 2>/dev/null || echo '127.0.0.1 localhost' >> "$ROOT/etc/hosts"
  mounts
  log "installing rabbitmq-server 4.0 in the chroot (one time, ~2 min)"
  # The package's maintainer scripts must not start a service.
  printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d"
  chmod +x "$ROOT/usr/sbin/policy-rc.d"
  in_root apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive in_root apt-get install -y -qq --no-install-recommends rabbitmq-server >&2
}

up() {
  install
  grep -q '^127.0.0.1 localhost' "$ROOT/etc/hosts" || echo '127.0.0.1 localhost' >> "$ROOT/etc/hosts"
  mounts
  if ! port_open "$PORT"; then
    log "starting RabbitMQ 4 as $NODE on $PORT"
    in_root rabbitmq-server -detached >&2 || true
    for _ in $(seq 1 240); do port_open "$PORT" && break; sleep 0.5; done
    port_open "$PORT" || { log "RabbitMQ 4 did not open $PORT"; exit 1; }
    for _ in $(seq 1 60); do in_root rabbitmqctl -q -n "$NODE" await_startup >/dev/null 2>&1 && break; sleep 1; done
  fi
  log "RabbitMQ $(in_root rabbitmqctl -q -n "$NODE" version 2>/dev/null || echo '?') is up on $PORT"
  echo "amqp://guest:guest@127.0.0.1:$PORT/%2f"
}

case "${1:-up}" in
  up) up ;;
  down) if port_open "$PORT"; then in_root rabbitmqctl -q -n "$NODE" stop >&2 || true; fi ;;
  ctl) shift; in_root rabbitmqctl -n "$NODE" "$@" ;;
  *) echo "usage: $0 up|down|ctl ARGS" >&2; exit 2 ;;
esac
