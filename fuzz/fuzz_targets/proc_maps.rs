//! Fuzz target: `/proc/<pid>/maps` text.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostprof::fuzzing::proc_maps(data));
