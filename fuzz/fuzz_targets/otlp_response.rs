//! Fuzz target: A collector's answer to an OTLP export (HTTP or gRPC).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hostprof::fuzzing::otlp_response(data));
