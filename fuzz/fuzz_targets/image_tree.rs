//! An image layer or docker-save archive -> image tree -> slim plan -> layer. See `cimplifier_fuzz::daemon_targets::image_tree`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cimplifier_fuzz::daemon_targets::image_tree(data));
