//! Fuzz target: An ELF file's call frame information, built into an unwind table.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostprof::fuzzing::unwind_table(data));
