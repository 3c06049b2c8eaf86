#!/usr/bin/env bash
# Runs each fuzz target for SECONDS (default 600) in one libFuzzer process (one core), one
# target after the other, starting from the seeds of seeds.sh plus whatever corpus earlier
# runs left in fuzz/corpus. Needs the nightly toolchain and cargo-fuzz
# (`cargo install cargo-fuzz`). A crash stops the run and leaves the input in
# fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-600}
if [[ ! -d corpus/decode_to_fingerprint || ! -d corpus/read_store ]]; then
    bash seeds.sh
fi
target_dir=${CARGO_TARGET_DIR:-$PWD/target}/fuzz
for target in decode_to_fingerprint read_store; do
    case $target in
        # Seeds are up to 44 kB; longer inputs only decode longer.
        decode_to_fingerprint) extra=(-max_len=65536) ;;
        # Operations are a few bytes each; let the fuzzer chain many from the start.
        read_store) extra=(-len_control=0 -max_len=2048) ;;
    esac
    cargo +nightly fuzz run --target-dir "$target_dir" "$target" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 "${extra[@]}"
done
