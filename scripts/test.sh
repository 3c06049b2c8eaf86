#!/usr/bin/env bash
# Runs every check on a fresh machine: installs the Debian tools and fetches the real
# music the tests use (scripts/setup.sh), then formatting, lints and the whole test suite
# in one release build.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CRATEDIGGER_CORPUS=${CRATEDIGGER_CORPUS:-$HOME/.cache/cratedigger-corpus}
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# The Redis Cluster tests (crates/index-redis, the CLI's cluster tests) start their own
# clusters on free loopback ports and stop them when they end, even when they fail.
cargo test --workspace --release 2>&1 | tee "$log"
# cargo prints one "test result" line per test binary, the last often a doc-test section
# with nothing in it; close with the totals over all of them.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
