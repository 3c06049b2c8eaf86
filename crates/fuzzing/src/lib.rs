//! Fuzz target bodies: untrusted bytes in, `Ok` or a clear error out, never a panic.
//!
//! Each target is a plain function so that two callers share it: the cargo-fuzz targets
//! in `fuzz/` (nightly, libFuzzer) and the smoke test in `tests/smoke.rs` (stable, part
//! of `cargo test --workspace`), which replays seeds and generated inputs through it.
//! A panic or an abort inside a target is the bug the fuzzer reports.

mod decode;
mod store;

pub use decode::{EXT_HINTS, MAX_DURATION_S, decode_to_fingerprint};
pub use store::{Edit, Op, parse_ops, read_store, store_seeds};
