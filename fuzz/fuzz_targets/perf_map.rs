//! Fuzz target: a perf map (`/tmp/perf-PID.map`) as a JIT runtime writes it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostprof::fuzzing::perf_map(data));
