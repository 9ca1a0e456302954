//! One ring-buffer record -> decoder -> resolver -> model. See `cimplifier_fuzz::daemon_targets::ring_record`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cimplifier_fuzz::daemon_targets::ring_record(data));
