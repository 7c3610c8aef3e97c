//! Fuzz target: see `ker_agent::fuzzing::render`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ker_agent::fuzzing::render(data));
