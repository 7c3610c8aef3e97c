//! Fuzz target: see `ker_agent::fuzzing::manifest`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ker_agent::fuzzing::manifest(data));
