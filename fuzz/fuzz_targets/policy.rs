//! A partitioning policy (TOML). See `cimplifier_fuzz::daemon_targets::policy`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cimplifier_fuzz::daemon_targets::policy(data));
