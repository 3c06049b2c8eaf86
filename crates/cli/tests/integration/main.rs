//! Integration tests of the `cratedigger` binary, run as a user runs it.
//!
//! The real-music tests need the open corpus (`$CRATEDIGGER_CORPUS`, default
//! `~/.cache/cratedigger-corpus`, fetched by `scripts/setup.sh`) and sox, rubberband and
//! ffmpeg; without them they fail, unless `CRATEDIGGER_SKIP_CORPUS_TESTS=1`.

/// The HTTP client and load generator of `cratedigger-bench load`, shared by path so that
/// the tests drive the server with the same code (parts only the benchmark uses are unused
/// here).
#[allow(dead_code)]
#[path = "../../../bench/src/loadgen.rs"]
mod loadgen;
mod util;

mod catalogue;
mod cluster;
mod concurrent;
mod crash;
mod errors;
mod fixture;
mod hostile;
mod identify;
mod serve;
mod store;
