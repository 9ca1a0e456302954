//! Helpers shared by the fuzz targets in `fuzz_targets/`.
//!
//! Every target ends the same way: whatever events the input produced are
//! folded into a [`Model`] and the model is queried, so the model stage is
//! fuzzed by each of the three front ends.

use std::sync::OnceLock;

use cimplifier::model::Model;
use cimplifier::trace::Event;

/// Builds a model from `events` and runs every per-executable query on it.
pub fn exercise_model(events: &[Event]) {
    let model = Model::from_events(events.iter());
    let _ = model.unresolved_names();
    let exes: Vec<_> = model.executables().into_iter().collect();
    for exe in &exes {
        let one = std::slice::from_ref(exe);
        let reads = model.reads(one);
        let writes = model.writes(one);
        let _ = model.failed_lookups(one);
        for resource in writes.iter().chain(reads.iter()) {
            let _ = model.writers(resource);
        }
        let _ = model.callers(exe);
        let _ = model.callees(exe);
    }
    // The same queries over every executable at once.
    let _ = model.reads(&exes);
    let _ = model.writes(&exes);
    let _ = model.failed_lookups(&exes);
    if let Some((first, rest)) = exes.split_first() {
        let _ = model.shared(std::slice::from_ref(first), rest);
    }
}

/// True when `CIMPLIFIER_FUZZ_VERBOSE` is set: the targets then print why an
/// input was rejected and how many events it produced. Meant for checking
/// seeds (`cargo fuzz run TARGET seed-file`), not for fuzzing runs.
pub fn verbose() -> bool {
    static VERBOSE: OnceLock<bool> = OnceLock::new();
    *VERBOSE.get_or_init(|| std::env::var_os("CIMPLIFIER_FUZZ_VERBOSE").is_some())
}
