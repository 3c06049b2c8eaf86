#!/usr/bin/env bash
# Runs every check on a fresh machine: installs the Debian tools and fetches the real
# music the tests use (scripts/setup.sh), then formatting, lints and the whole test suite
# in one release build, then the web page's tests in headless Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CRATEDIGGER_CORPUS=${CRATEDIGGER_CORPUS:-$HOME/.cache/cratedigger-corpus}
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
log=$(mktemp)
weblog=$(mktemp)
trap 'rm -f "$log" "$weblog"' EXIT
# The Redis Cluster tests (crates/index-redis, the CLI's cluster tests) start their own
# clusters on free loopback ports and stop them when they end, even when they fail.
cargo test --workspace --release 2>&1 | tee "$log"
# The fuzz targets already ran on stable above (crates/fuzzing/tests/smoke.rs). Where
# nightly and cargo-fuzz are installed, CRATEDIGGER_FUZZ_S=30 also runs each under libFuzzer.
if [[ -n "${CRATEDIGGER_FUZZ_S:-}" ]]; then
    bash fuzz/run.sh "$CRATEDIGGER_FUZZ_S"
fi
# The web page, end to end in headless Chromium: web-tests/ starts the release binary on a
# loopback port (playwright-core from npm drives Debian's chromium).
cargo build --release --quiet -p cratedigger
(cd web-tests && npm ci --no-audit --no-fund --silent && node --test --test-reporter=spec) 2>&1 | tee "$weblog"
# cargo prints one "test result" line per test binary, the last often a doc-test section
# with nothing in it; node's runner closes with "ℹ pass N" and "ℹ fail N". Close with the
# totals over all of them.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     /^ℹ pass [0-9]+$/ { p += $3 }
     /^ℹ fail [0-9]+$/ { f += $3 }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log" "$weblog"
