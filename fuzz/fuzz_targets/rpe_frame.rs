//! RPE frames as a caller partition or a server sends them. See `cimplifier_fuzz::rpe_targets::rpe_frame`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cimplifier_fuzz::rpe_targets::rpe_frame(data));
