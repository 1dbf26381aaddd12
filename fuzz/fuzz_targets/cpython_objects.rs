//! Fuzz target: a Python process's memory as hostprof reads it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostprof::fuzzing::cpython_objects(data));
