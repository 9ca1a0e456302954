//! What several commands print: JSON, state names, sizes, the spinner.

use std::io::Write;
use std::time::Duration;

use cimplifier::api::pb;

/// Prints to stdout.
pub fn print(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) is not an error worth reporting.
    match out.write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// Prints `value` as pretty JSON, one document.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    print(&(serde_json::to_string_pretty(value)? + "\n"))
}

/// A session as `sessions --json` and `observe --json` print it.
pub fn session_json(s: &pb::Session) -> serde_json::Value {
    serde_json::json!({
        "container": s.container, "container_id": s.container_id,
        "image_ref": s.image_ref, "image_id": s.image_id,
        "state": state_name(s.state), "end": s.end, "error": s.error,
        "from_first_exec": s.from_first_exec,
        "started_unix_ms": s.started_unix_ms, "duration_ms": s.duration_ms,
        "events": s.events, "aggregated_events": s.aggregated_events,
        "kernel_folded_events": s.kernel_folded_events,
        "lost_events": s.lost_events, "unreadable_names": s.unreadable_names,
        "foreign_programs": s.foreign_programs,
        "foreign_program_names": s.foreign_program_names,
        "complete": s.complete,
        "executables": s.executables, "resources": s.resources,
        "gaps": s.gaps.iter().map(|g| serde_json::json!({
            "from_unix_ms": g.from_unix_ms, "to_unix_ms": g.to_unix_ms, "reason": g.reason,
        })).collect::<Vec<_>>(),
        "segments": s.segments.iter().map(|g| serde_json::json!({
            "first_event": g.first_event, "started_unix_ms": g.started_unix_ms,
            "from_first_exec": g.from_first_exec, "origin": g.origin,
        })).collect::<Vec<_>>(),
    })
}

/// A session's state as the tables and JSON name it.
pub fn state_name(state: i32) -> &'static str {
    use pb::session::State;
    match State::try_from(state) {
        Ok(State::Observing) => "observing",
        Ok(State::Closed) => "closed",
        Ok(State::Failed) => "failed",
        _ => "unknown",
    }
}

/// A size in megabytes, e.g. `12.3 MB`.
pub fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// A spinner on stderr showing the step under way.
pub fn spinner() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// The spinner's look: a step without a size.
pub fn spinner_style() -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::default_spinner()
}

/// A bar of bytes, for a step that says how far it is.
pub fn bytes_style() -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template(
        "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})",
    )
    .expect("a valid template")
    .progress_chars("=> ")
}
