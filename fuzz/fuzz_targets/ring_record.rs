//! One ring-buffer record (the bytes the kernel programs send) -> decoder ->
//! resolver -> model. The decoder checks every length the record claims.

#![no_main]

use cimplifier::trace::decode::decode;
use cimplifier::trace::resolve::Resolver;
use cimplifier_fuzz::{exercise_model, verbose};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match decode(data) {
        Ok(rec) => {
            if verbose() {
                eprintln!("{rec:?}");
            }
            let mut resolver = Resolver::new();
            let events = resolver.handle(rec);
            if verbose() {
                eprintln!("{events:?}");
            }
            exercise_model(&events);
        }
        Err(e) => {
            if verbose() {
                eprintln!("{e}");
            }
        }
    }
});
