#!/usr/bin/env bash
# Debian packages the build and the audio checks need; idempotent.
#   build:   cmake (the opus crate builds its bundled libopus with it)
#   checks:  ffmpeg (ffprobe, ffmpeg's ebur128 filter), sox, opus-tools
#            (opusinfo), flac (flac -t): the independent decoders the tests
#            check every delivered format with
#   demo:    espeak-ng (real speech in the simulator), when asked with --demo
#   garage:  pkg-config, libsodium-dev, libzstd-dev (--garage: scripts/stack.sh
#            builds Garage against them)
#   brokers: debootstrap (--brokers: scripts/rabbitmq.sh's chroots)
#   stack:   rabbitmq-server (--stack: scripts/stack.sh's RabbitMQ 3.10)
# Flags combine; the scripts ask for everything up front, so no two apt runs
# overlap when later steps run side by side.
set -euo pipefail
log() { printf '[debian-deps] %s\n' "$*" >&2; }
want=(cmake ffmpeg sox opus-tools flac)
for flag in "$@"; do
  case "$flag" in
    --demo) want+=(espeak-ng) ;;
    # Garage built against Debian's libsodium and zstd instead of bundled copies
    --garage) want+=(pkg-config libsodium-dev libzstd-dev) ;;
    # the RabbitMQ 4.0 and 4.3 chroots (scripts/rabbitmq.sh)
    --brokers) want+=(debootstrap) ;;
    # the local stack's RabbitMQ 3.10 (scripts/stack.sh starts it)
    --stack) want+=(rabbitmq-server) ;;
    *) log "unknown flag $flag"; exit 2 ;;
  esac
done
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
log "installing ${missing[*]} (≈ 1 minute)"
SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
# dpkg's progress goes to a log; it is shown only when the install fails.
apt_log=$(mktemp)
trap 'rm -f "$apt_log"' EXIT
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$apt_log" 2>&1 \
  || { $SUDO apt-get update -qq >"$apt_log" 2>&1 \
       && $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$apt_log" 2>&1; } \
  || { cat "$apt_log" >&2; exit 1; }
