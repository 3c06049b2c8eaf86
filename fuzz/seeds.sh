#!/usr/bin/env bash
# Fills fuzz/corpus/ with seed inputs: for decode_to_fingerprint, a second of music in
# every format the product reads (made with ffmpeg, each prefixed with the byte that picks
# its extension hint, see fuzzing::EXT_HINTS); for read_store, fuzzing::store_seeds().
set -euo pipefail
cd "$(dirname "$0")"
decode=corpus/decode_to_fingerprint
mkdir -p "$decode"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
ffmpeg -nostdin -v error -y -f lavfi \
    -i "sine=frequency=440:duration=1,volume=0.3" -f lavfi -i "anoisesrc=d=1:a=0.05:seed=7" \
    -filter_complex amix=inputs=2 -ar 22050 -ac 1 -c:a pcm_s16le "$tmp/music.wav"
# The hint byte is the index in EXT_HINTS: 1 mp3, 2 wav, 3 flac, 4 ogg, 5 opus, 6 m4a.
hint=1
for spec in mp3:libmp3lame wav:pcm_s16le flac:flac ogg:libvorbis opus:libopus m4a:aac; do
    ext=${spec%%:*}
    ffmpeg -nostdin -v error -y -i "$tmp/music.wav" -c:a "${spec#*:}" "$tmp/seed.$ext"
    { printf "\\x$(printf %02x $hint)"; cat "$tmp/seed.$ext"; } > "$decode/seed-$ext"
    hint=$((hint + 1))
done
cargo run --quiet --release --manifest-path ../Cargo.toml -p fuzzing --example write_seeds -- \
    "$PWD/corpus/read_store"
echo "seeds: $(ls "$decode" | wc -l) decode, $(ls corpus/read_store | wc -l) store"
