//! A run plan (docker-compose.yml). See `cimplifier_fuzz::daemon_targets::compose_file`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cimplifier_fuzz::daemon_targets::compose_file(data));
