//! `analyze`: the model of a recorded trace, offline (no daemon).

use std::path::{Path, PathBuf};

use cimplifier::model::report::{Input, analyze as model};

use crate::render::print;

pub fn analyze(
    events: Option<PathBuf>,
    strace: Vec<PathBuf>,
    root: Option<&Path>,
    json: bool,
    dot: bool,
) -> anyhow::Result<()> {
    if root.is_none() && !strace.is_empty() {
        eprintln!(
            "cimplifierctl: warning: no --root: symlink chains (e.g. /bin -> usr/bin) and the \
             interpreters of #! scripts are NOT resolved, so the model misses them; give --root / \
             if the log was recorded on this host, or the container's file system \
             (/proc/PID/root or an unpacked image)"
        );
    }
    let input = match events {
        Some(path) => Input::Events(path),
        None => Input::Strace(strace),
    };
    let report = model(&input, root)?;
    let text = if json {
        serde_json::to_string_pretty(&report)? + "\n"
    } else if dot {
        report.dot()
    } else {
        report.table()
    };
    if !report.source.complete {
        eprintln!(
            "cimplifierctl: warning: the trace is incomplete ({} events lost, the log was cut off, or the start-up was not observed): the model may miss uses",
            report.source.lost_events
        );
    }
    print(&text)
}
