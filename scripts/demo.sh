#!/usr/bin/env bash
# The demo: brings up RabbitMQ, Garage, the Segmind simulator and a worker,
# submits sample jobs (a narration, a two-speaker dialogue, a styled line, a
# long chapter cut into parts, stitched and delivered as an MP3 at a podcast's
# loudness with captions and timing marks, and one that is RAI-blocked),
# prints a summary and leaves audio files to play in demo-output/. Idempotent; installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
OUT=demo-output
RUN=.demo
mkdir -p "$OUT" "$RUN"
started=$SECONDS
say() { printf '[demo %dm%02ds] %s\n' $(( (SECONDS - started) / 60 )) $(( (SECONDS - started) % 60 )) "$*"; }

# Expected durations are for a fresh 2-core machine; later runs take seconds.
say "1/4 Debian packages: cmake, the audio checkers, espeak-ng (real speech in the simulator), Garage's libraries (first run ≈ 1 min)"
scripts/debian-deps.sh --demo --stack --garage

# Garage (built from source the first time) and the worker are two long
# builds: they run side by side, which keeps both cores busy through each
# build's serial stretches.
say "2/4 RabbitMQ and Garage, in the background (first run ≈ 11 min beside the next step: Garage is built from source; log: $RUN/stack.log)"
# In sessions of their own (setsid), stopped with all they started on any
# exit, Ctrl-C included.
setsid scripts/stack.sh up > "$RUN/stack.env" 2> "$RUN/stack.log" &
stack_pid=$!
trap 'kill -- "-$stack_pid" 2>/dev/null || true' EXIT
# The Python example producer (examples/python) is the seventh job: its small
# venv installs from PyPI meanwhile.
EXAMPLE_VENV="${TTS_STACK_DIR:-$HOME/.local/share/tts-worker}/example-venv"
( { [ -x "$EXAMPLE_VENV/bin/python" ] && "$EXAMPLE_VENV/bin/python" -c 'import pika, jsonschema, boto3'; } 2>/dev/null \
  || { python3 -m venv "$EXAMPLE_VENV" && "$EXAMPLE_VENV/bin/pip" install -q --disable-pip-version-check \
         -r examples/python/requirements.txt; } ) > "$RUN/example-venv.log" 2>&1 &
venv_pid=$!
trap 'kill -- "-$stack_pid" 2>/dev/null || true; kill "$venv_pid" 2>/dev/null || true' EXIT
say "3/4 building the worker and the simulator (first run ≈ 14 min with Garage's build beside it; then seconds)"
cargo build --locked --workspace --bins -q
say "    built; waiting for RabbitMQ and Garage"
if ! wait "$stack_pid"; then
  echo "[demo] the stack did not come up; the end of $RUN/stack.log:"; tail -20 "$RUN/stack.log"; exit 1
fi
env_file=$(cat "$RUN/stack.env")
# shellcheck disable=SC1090
. "$env_file"

# A throwaway key shared by the simulator and the worker.
export SEGMIND_API_KEY="sk-demo-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export TTS__SEGMIND__BASE_URL=http://127.0.0.1:18090
# The simulator's media host is on loopback: listed, or the worker refuses it.
export TTS__SEGMIND__MEDIA_ALLOW_PRIVATE=127.0.0.1:18091
export TTS__HTTP__ADDR=127.0.0.1:19090
# The simulator's demo preset takes 3.5 +- 1 s a job: start the learned
# polling schedule from there.
export TTS__SEGMIND__POLL_PRIOR_LATENCY=3.5
export TTS__SEGMIND__POLL_PRIOR_SPREAD=1
export TTS__SEGMIND__POLL_TARGET_LAG=0.3
export TTS__SEGMIND__POLL_MAX=2
export TTS__S3__PREFIX=demo/

stop() { for f in "$RUN"/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; rm -f "$f"; done; }
stop # leftovers of an earlier run
trap 'stop; kill "$venv_pid" 2>/dev/null || true' EXIT

target/debug/segmind-sim --listen 127.0.0.1:18090 --media-listen 127.0.0.1:18091 --preset demo \
  > "$RUN/sim.log" 2>&1 & echo $! > "$RUN/sim.pid"
target/debug/tts-worker run > "$RUN/worker.log" 2>&1 & echo $! > "$RUN/worker.pid"
for _ in $(seq 1 60); do curl -fs http://127.0.0.1:19090/readyz >/dev/null 2>&1 && break; sleep 0.5; done
curl -fs http://127.0.0.1:19090/readyz >/dev/null || { echo "[demo] the worker did not become ready:"; tail -20 "$RUN/worker.log"; exit 1; }
say "4/4 worker ready; submitting 8 jobs (≈ 1 min; the chapter is ≈ 9 minutes of speech, in parts)"

submit() { # name, extension, then submit args
  local name=$1 ext=$2; shift 2
  target/debug/tts-worker submit --wait --print-event --timeout 180 --job-id "demo-$name-$(date +%s)" --out "$OUT/$name.$ext" "$@" \
    > "$RUN/$name.out" 2>&1 || true
}
pids=()
submit narration wav --text "Narrate softly: In a quiet village by the sea, the lighthouse keeper counted the ships that came home." --voice-1 Kore &
pids+=($!)
submit dialogue ogg --format ogg --sample-rate 48000 --voice-1 Puck --voice-2 Charon --temperature 0.7 \
  --text $'Speaker 1: Did you see the storm last night?\nSpeaker 2: I did. The whole harbour was lit by lightning.' &
pids+=($!)
submit cheerful wav --format mulaw --text "Say cheerfully: Your order has shipped and will arrive tomorrow!" --voice-1 zephyr &
pids+=($!)
submit blocked wav --text "Something the safety filter refuses [[sim:rai]]" &
pids+=($!)
# A long text (≈ 8,000 characters, ≈ 9 minutes of speech): one job, cut into
# parts of long_text.part_chars (3,000), synthesized in parallel, stitched,
# delivered as a 44.1 kHz MP3 at −16 LUFS (a podcast's loudness) with WebVTT
# and SRT captions.
chapter=""
for i in 1 2 3 4 5 6 7 8 9 10 11 12; do
  chapter+="Chapter one, part $i. The keeper climbed the hundred steps of the lighthouse each evening, trimmed the wick, and polished the great lens until it shone. "
  chapter+="From the gallery he could see the whole bay: the fishing boats turning for home, the gulls settling on the breakwater, the first lights of the village coming on one by one. "
  chapter+="He wrote the names of the boats in his logbook, and the hour each one passed the point, as his father had done before him."$'\n\n'
done
submit chapter mp3 --format mp3 --sample-rate 44100 --loudness -16 --captions vtt --captions srt --style "Narrate calmly, like an audiobook" --text "$chapter" --voice-1 Charon &
pids+=($!)
# Chinese (≈ 1,000 characters): parts are sized by how long they take to speak,
# not by characters (a Han character is ≈ 3.3 English ones), so it is two parts
# of ≈ 500, each well under one call's cap; captions break lines between
# words at 16 characters.
story=""
for i in $(seq 1 28); do
  story+="灯塔看守人每天晚上爬上一百级台阶，修剪灯芯，把巨大的透镜擦得闪闪发亮。"
  story+=$'\n'
done
submit chinese wav --captions vtt --text "$story" --voice-1 Kore &
pids+=($!)
# A job its producer withdraws: six times the chapter (12 parts, 4 at
# Segmind at once), cancelled once it has been published (`tts-worker
# cancel`, a message to the tts.control exchange that every replica reads
# from the tts.fleet stream). It ends as tts.job.cancelled before its next
# part is paid for; the parts already paid are kept. (A job whose parts are
# all submitted by then completes: a cancel withholds submissions only.)
cancel_id="demo-cancelled-$(date +%s)"
target/debug/tts-worker submit --wait --timeout 180 --job-id "$cancel_id" --text "$chapter$chapter$chapter$chapter$chapter$chapter" --voice-1 Kore \
  > "$RUN/cancelled.out" 2>&1 &
pids+=($!)
(for _ in $(seq 1 100); do grep -q "$cancel_id" "$RUN/cancelled.out" 2>/dev/null && break; sleep 0.2; done
 target/debug/tts-worker cancel --job-id "$cancel_id" > "$RUN/cancel.out" 2>&1) &
pids+=($!)
# A producer of your own: the Python example publishes a version 2 request
# with a correlation id and a traceparent, checks the event against
# contract/schemas/ and downloads the MP3 and its captions.
if wait "$venv_pid"; then
  AMQP_URL=$TTS__AMQP__URL TTS_REQUESTS_QUEUE=tts.requests S3_ENDPOINT=$TTS__S3__ENDPOINT AWS_REGION=$TTS__S3__REGION \
    "$EXAMPLE_VENV/bin/python" examples/python/producer.py --out-dir "$OUT/example" \
    --text "Hello from the Python example producer: this request and its event were checked against the contract." \
    > "$RUN/example.out" 2> "$RUN/example.log" &
  pids+=($!)
else
  echo "[demo] could not install the Python example's packages; see $RUN/example-venv.log" > "$RUN/example.out"
fi
wait "${pids[@]}" # not a bare wait: the simulator and worker run in the background too

echo
echo "================ demo summary ================"
for name in narration dialogue cheerful chapter chinese blocked; do
  printf '%-10s %s\n' "$name" "$(grep -E '^(completed|failed)' "$RUN/$name.out" || tail -1 "$RUN/$name.out")"
done
echo
echo "events (CloudEvents 1.0, as published to tts.events and the reply queue):"
for name in narration dialogue cheerful chapter chinese blocked; do
  sed -n '/^{/,/^}/p' "$RUN/$name.out"
done
echo
echo "example producer (examples/python/producer.py): $(cat "$RUN/example.out")"
echo
echo "audio files:"
ls -l "$OUT"/*.wav "$OUT"/*.ogg "$OUT"/*.mp3 "$OUT"/*.vtt "$OUT"/*.srt "$OUT"/*.marks.json "$OUT"/example/* 2>/dev/null || echo "  (none)"
echo
echo "metrics (excerpt):"
curl -fs http://127.0.0.1:19090/metrics | grep -E '^tts_(jobs_total|queue_depth|segmind_requests_total|inference_duration_seconds_(sum|count))' || true
echo
echo "Play them with e.g.: ffplay $OUT/chapter.mp3, aplay $OUT/narration.wav   (or open them in any audio player; the captions beside the MP3 load with it)"
completed=$(grep -l '^completed job' "$RUN"/narration.out "$RUN"/dialogue.out "$RUN"/cheerful.out "$RUN"/chapter.out "$RUN"/chinese.out | wc -l)
blocked=$(grep -c '^failed job .*: content_blocked ' "$RUN/blocked.out" || true)
cancelled=$(grep -c '^failed job .*: cancelled ' "$RUN/cancelled.out" || true)
parts=$(grep -oE '^  [0-9]+ parts' "$RUN/chapter.out" | grep -oE '[0-9]+' || echo 0)
zh_parts=$(grep -oE '^  [0-9]+ parts' "$RUN/chinese.out" | grep -oE '[0-9]+' || echo 0)
# What the chapter's MP3 measures (target −16 LUFS under −1 dBTP: the
# limiter shaves the peaks and the gain makes up what it took), and what
# ffmpeg reads from the file itself.
measured=$(grep -oE -- '-?[0-9.]+ LUFS, true peak -?[0-9.]+ dBTP' "$RUN/chapter.out" || echo "loudness unknown")
if command -v ffmpeg >/dev/null && [ -s "$OUT/chapter.mp3" ]; then
  ffmpeg_reads=$(ffmpeg -hide_banner -nostats -i "$OUT/chapter.mp3" -af ebur128=peak=true -f null - 2>&1 \
    | awk '/Summary:/{s=1} s&&/ I:/{i=$2} s&&/Peak:/{p=$2} END{if(i!="") printf "%s LUFS, true peak %s dBTP", i, p}')
  measured="$measured (ffmpeg reads ${ffmpeg_reads:-nothing})"
fi
say "done"
example=$(grep -c '"type": *"tts.job.completed"' "$RUN/example.out" || true)
if [ "$completed" -eq 5 ] && [ "$blocked" -eq 1 ] && [ "$cancelled" -eq 1 ] && [ "$parts" -gt 1 ] && [ "$zh_parts" -gt 1 ] && [ -s "$OUT/chapter.vtt" ] && [ -s "$OUT/chinese.vtt" ] && [ "$example" -eq 1 ]; then
  echo "[demo] OK: the Python example producer's job completed and checked against contract/schemas/ (audio in $OUT/example/); 5 completed (the chapter as one MP3 of $parts parts, asked −16 LUFS, delivered $measured, with captions $OUT/chapter.vtt and .srt, marks in $OUT/chapter.mp3.marks.json; the dialogue as Ogg Opus; the cheerful line as 8 kHz μ-law; ≈ 1,000 Chinese characters as $zh_parts parts sized by their speech, captions in $OUT/chinese.vtt), 1 content_blocked, 1 cancelled by its producer while it ran"
else echo "[demo] unexpected results; logs in $RUN/"; exit 1; fi
