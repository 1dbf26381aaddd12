//! Fuzz target: `/proc/<pid>/cgroup` text.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostprof::fuzzing::proc_cgroup(data));
