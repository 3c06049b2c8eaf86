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
cargo test --workspace --release
