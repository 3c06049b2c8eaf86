//! libFuzzer entry for `fuzzing::decode_to_fingerprint` (arbitrary bytes -> decode ->
//! reference and query quads).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzzing::decode_to_fingerprint(data));
