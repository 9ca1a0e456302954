//! strace text -> events -> model. See `cimplifier_fuzz::daemon_targets::strace_parser`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cimplifier_fuzz::daemon_targets::strace_parser(data));
