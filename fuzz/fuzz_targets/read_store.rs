//! libFuzzer entry for `fuzzing::read_store` (raw values written into a store, then every
//! read must return Ok or an error).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzzing::read_store(data));
