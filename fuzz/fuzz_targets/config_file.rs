//! Fuzz target: A `--config` YAML file.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostprof::fuzzing::config_file(data));
