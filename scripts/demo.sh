#!/usr/bin/env bash
# The main job on a fresh machine: build cratedigger, index real music from the open
# corpus into the embedded store, then play producer: slow an 8 s excerpt of one track
# to 0.8x with sox (tempo and pitch together, like a record played slow), bury it under a
# drum loop and another song at equal loudness, encode to MP3, and ask cratedigger what
# the new song samples.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
bash scripts/setup.sh
cargo build --release --quiet -p cratedigger
bin=$here/target/release/cratedigger
corpus=${CRATEDIGGER_CORPUS:-$HOME/.cache/cratedigger-corpus}
work=${CRATEDIGGER_DEMO_DIR:-$HOME/.cache/cratedigger-demo}
db=$work/db
mkdir -p "$work"
speed=${DEMO_SPEED:-0.8}

echo "== indexing the reference library (Mars Shooter and Singularity soundtracks)"
# The demo store is disposable: rebuilt each run, so it always matches this build's
# fingerprint parameters.
rm -rf "$db"
"$bin" --db "$db" index "$corpus/marsshooter-data/usr/share/games/marsshooter/audio/music" \
  "$corpus/singularity-music/usr/share/games/singularity/music"

echo "== making a new song that samples one of them (sox speed $speed, under drums and another song)"
ref="$corpus/marsshooter-data/usr/share/games/marsshooter/audio/music/08_second_birth.ogg"
drums="$corpus/sonic-pi-samples/usr/share/sonic-pi/samples/loop_amen.flac"
bg=$(find "$corpus/fretsonfire-songs-sectoid" -name song.ogg | sort | head -n 1)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
ffmpeg -nostdin -v quiet -y -i "$ref" -ac 1 -ar 44100 "$tmp/ref.wav"
sox "$tmp/ref.wav" "$tmp/excerpt.wav" trim 60 8 speed "$speed" rate 44100
ffmpeg -nostdin -v quiet -y -i "$bg" -ac 1 -ar 44100 "$tmp/bg.wav"
sox "$drums" -r 44100 -c 1 "$tmp/drum.wav"
sox "$tmp/drum.wav" "$tmp/drums.wav" repeat 25 trim 0 30
sox "$tmp/bg.wav" "$tmp/bg30.wav" trim 30 30
sox -m "$tmp/bg30.wav" "$tmp/drums.wav" "$tmp/backing.wav"
rms() { sox "$1" -n stat 2>&1 | awk '/RMS +amplitude/ {print $3}'; }
gain=$(awk -v a="$(rms "$tmp/backing.wav")" -v b="$(rms "$tmp/excerpt.wav")" 'BEGIN {print a / b}')
sox "$tmp/excerpt.wav" "$tmp/placed.wav" pad 10 0
sox -m -v 1 "$tmp/backing.wav" -v "$gain" "$tmp/placed.wav" "$tmp/mix.wav" trim 0 30 gain -n -1
query=$work/new-song.mp3
ffmpeg -nostdin -v quiet -y -i "$tmp/mix.wav" -b:a 128k "$query"
echo "   $query: 30 s; the sample starts at 0:10.0, taken from 1:00.0 of $(basename "$ref")"

echo "== what does the new song sample?"
"$bin" --db "$db" identify "$query"
found=$("$bin" --db "$db" identify --json "$query" | python3 -c '
import json, sys
m = json.load(sys.stdin)["matches"]
print(m[0]["tempo"] if m else "none")')
echo "== expected speed x$speed; cratedigger found tempo x$found"
