#!/usr/bin/env bash
# Debian packages the build and the audio checks need; idempotent.
#   build:   cmake (the opus crate builds its bundled libopus with it)
#   checks:  ffmpeg (ffprobe, ffmpeg's ebur128 filter), sox, opus-tools
#            (opusinfo), flac (flac -t): the independent decoders the tests
#            check every delivered format with
#   demo:    espeak-ng (real speech in the simulator), when asked with --demo
set -euo pipefail
log() { printf '[debian-deps] %s\n' "$*" >&2; }
want=(cmake ffmpeg sox opus-tools flac)
[ "${1:-}" = "--demo" ] && want+=(espeak-ng)
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
log "installing ${missing[*]} (≈ 1 minute)"
SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 \
  || { $SUDO apt-get update -qq >&2; $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2; }
