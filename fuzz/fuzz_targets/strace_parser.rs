//! strace text (`strace -f -y -yy -s 4096 -o FILE`, or one `-ff` file) ->
//! events -> model. Parsing may fail; it must never panic.

#![no_main]

use std::path::Path;

use cimplifier::trace::strace::parse_strace_text;
use cimplifier_fuzz::{exercise_model, verbose};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // `None`: a `-f` log whose lines start with a pid. `Some`: a `-ff`
    // per-process file, whose pid comes from its name.
    for pid in [None, Some(1234)] {
        match parse_strace_text(&text, pid, Path::new("fuzz.strace")) {
            Ok(events) => {
                if verbose() {
                    eprintln!("pid {pid:?}: {} events", events.len());
                }
                exercise_model(&events);
            }
            Err(e) => {
                if verbose() {
                    eprintln!("pid {pid:?}: {e:#}");
                }
            }
        }
    }
});
