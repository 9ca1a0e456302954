//! A session bundle, imported into a fresh store and folded. See `cimplifier_fuzz::daemon_targets::session_bundle`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cimplifier_fuzz::daemon_targets::session_bundle(data));
