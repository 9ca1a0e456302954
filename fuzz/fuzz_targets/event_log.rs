//! An event log (JSON lines) -> events -> model. See `cimplifier_fuzz::daemon_targets::event_log`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cimplifier_fuzz::daemon_targets::event_log(data));
