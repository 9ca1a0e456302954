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
