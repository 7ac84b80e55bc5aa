#!/usr/bin/env bash
# A newer RabbitMQ beside the system's 3.10, for running the suite against
# every supported line.
#
# Debian bookworm packages RabbitMQ 3.10 only. Trixie's rabbitmq-server (4.0.5)
# and sid's (4.3.6) install into debootstrap chroots and run there, sharing the
# host's network on their own ports. Idempotent; each chroot is made once per
# machine (~4 min).
#
#   scripts/rabbitmq.sh 4.0|4.3 up     install/start it, print its AMQP URL
#   scripts/rabbitmq.sh 4.0|4.3 down   stop it
#   scripts/rabbitmq.sh 4.0|4.3 ctl …  rabbitmqctl against it
set -euo pipefail

STACK_DIR="${TTS_STACK_DIR:-$HOME/.local/share/tts-worker}"
# The machine's own Debian mirror (its apt configuration), unless given.
machine_mirror() {
  awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null \
    || awk '$1 == "deb" { print $2; exit }' /etc/apt/sources.list 2>/dev/null
}
MIRROR="${TTS_DEBIAN_MIRROR:-$(machine_mirror)}"
[ -n "$MIRROR" ] || { echo "no Debian mirror in the apt configuration; set TTS_DEBIAN_MIRROR" >&2; exit 1; }
LINE="${1:-}"
case "$LINE" in
  4.0) SUITE=trixie; ROOT="$STACK_DIR/rabbitmq4-root"; PORT=5673; DIST_PORT=25673; NODE="rabbit4@localhost" ;;
  4.3) SUITE=sid; ROOT="$STACK_DIR/rabbitmq43-root"; PORT=5674; DIST_PORT=25674; NODE="rabbit43@localhost" ;;
  *) echo "usage: $0 4.0|4.3 up|down|ctl ARGS" >&2; exit 2 ;;
esac
shift

log() { printf '[rabbitmq %s] %s\n' "$LINE" "$*" >&2; }
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
    log "debootstrap $SUITE into $ROOT (one time, ~2 min)"
    rm -rf "$ROOT"
    mkdir -p "$ROOT"
    debootstrap --variant=minbase "$SUITE" "$ROOT" "$MIRROR" >&2
  fi
  grep -q '^127.0.0.1 localhost' "$ROOT/etc/hosts" 2>/dev/null || echo '127.0.0.1 localhost' >> "$ROOT/etc/hosts"
  mounts
  log "installing rabbitmq-server from $SUITE in the chroot (one time, ~2 min)"
  # The package's maintainer scripts must not start a service.
  printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d"
  chmod +x "$ROOT/usr/sbin/policy-rc.d"
  # sid's Release file is often past its Valid-Until date on these mirrors.
  in_root apt-get -o Acquire::Check-Valid-Until=false update -qq >&2
  DEBIAN_FRONTEND=noninteractive in_root apt-get install -y -qq --no-install-recommends rabbitmq-server >&2
}

up() {
  install
  grep -q '^127.0.0.1 localhost' "$ROOT/etc/hosts" || echo '127.0.0.1 localhost' >> "$ROOT/etc/hosts"
  mounts
  if ! port_open "$PORT"; then
    log "starting RabbitMQ as $NODE on $PORT"
    # 9>&-: the daemon must not inherit (and so hold forever) the set-up lock.
    in_root rabbitmq-server -detached >&2 9>&- || true
    for _ in $(seq 1 240); do port_open "$PORT" && break; sleep 0.5; done
    port_open "$PORT" || { log "RabbitMQ $LINE did not open $PORT"; exit 1; }
    for _ in $(seq 1 60); do in_root rabbitmqctl -q -n "$NODE" await_startup >/dev/null 2>&1 && break; sleep 1; done
  fi
  log "RabbitMQ $(in_root rabbitmqctl -q -n "$NODE" version 2>/dev/null || echo '?') is up on $PORT"
  echo "amqp://guest:guest@127.0.0.1:$PORT/%2f"
}

case "${1:-up}" in
  # One set-up at a time per line: a second run waits instead of
  # debootstrapping over the first.
  up) mkdir -p "$STACK_DIR"; exec 9>"$STACK_DIR/.rabbitmq-$LINE.lock"; flock 9; up ;;
  down) if port_open "$PORT"; then in_root rabbitmqctl -q -n "$NODE" stop >&2 || true; fi ;;
  ctl) shift; in_root rabbitmqctl -n "$NODE" "$@" ;;
  *) echo "usage: $0 4.0|4.3 up|down|ctl ARGS" >&2; exit 2 ;;
esac
