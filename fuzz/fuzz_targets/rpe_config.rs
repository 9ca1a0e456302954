//! The RPE server's and stub's TOML configuration. See `cimplifier_fuzz::rpe_targets::rpe_config`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cimplifier_fuzz::rpe_targets::rpe_config(data));
