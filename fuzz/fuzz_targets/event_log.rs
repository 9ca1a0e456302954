//! An event log (JSON lines, docs/event-log.md) -> events -> model.

#![no_main]

use std::path::Path;

use cimplifier::trace::log::EventLog;
use cimplifier_fuzz::{exercise_model, verbose};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match EventLog::from_reader(data, Path::new("fuzz.jsonl")) {
        Ok(log) => {
            if verbose() {
                eprintln!(
                    "{} events, summary {:?}, complete {}",
                    log.events.len(),
                    log.summary,
                    log.is_complete()
                );
            }
            exercise_model(&log.events);
        }
        Err(e) => {
            if verbose() {
                eprintln!("{e:#}");
            }
        }
    }
});
