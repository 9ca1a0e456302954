//! The model as a report: a table for people, JSON for programs (the format
//! is in docs/model-json.md), and the call graph in Graphviz DOT.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::{Access, Exe, Model, Resource};

pub const FORMAT: &str = "cimplifier-model";
pub const VERSION: u32 = 1;

/// Where the events came from and whether they are the whole story.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// `events` (an event log) or `strace`.
    pub kind: String,
    pub files: Vec<String>,
    pub events: u64,
    /// Events the tracer lost; a model of a lossy trace may miss uses.
    pub lost_events: u64,
    /// False when events were lost or the log was cut off.
    pub complete: bool,
    /// The image tree symlinks and `#!` lines were read from, if any.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub image_tree: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceUse {
    pub resource: Resource,
    pub access: BTreeSet<Access>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutableReport {
    pub path: Exe,
    pub callers: BTreeSet<Exe>,
    pub callees: BTreeSet<Exe>,
    /// R(e): what must exist for it to run as observed.
    pub reads: BTreeSet<Resource>,
    /// W(e): what it created, changed, removed or connected to.
    pub writes: BTreeSet<Resource>,
    pub failed_lookups: BTreeSet<Resource>,
    /// Every use, with all the ways it was used.
    pub uses: Vec<ResourceUse>,
}

/// A socket and who binds or reaches it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketReport {
    pub socket: Resource,
    pub bound_by: BTreeSet<Exe>,
    pub connected_by: BTreeSet<Exe>,
    /// For an inet listener: the endpoints connected to that reach it
    /// (a wildcard listener accepts connections to any address on its port).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub reached_as: Vec<Resource>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub format: String,
    pub version: u32,
    pub source: Source,
    /// Names that could not be made absolute or read: a model with any is
    /// not the whole truth.
    pub unresolved_names: u64,
    pub executables: Vec<ExecutableReport>,
    /// The exec call graph, caller -> callee.
    pub calls: Vec<(Exe, Exe)>,
    pub sockets: Vec<SocketReport>,
}

impl Report {
    pub fn new(model: &Model, source: Source) -> Self {
        let executables = model
            .executables()
            .into_iter()
            .map(|exe| {
                let one = std::slice::from_ref(&exe);
                ExecutableReport {
                    callers: model.callers(&exe),
                    callees: model.callees(&exe),
                    reads: model.reads(one),
                    writes: model.writes(one),
                    failed_lookups: model.failed_lookups(one),
                    uses: model
                        .uses(one)
                        .into_iter()
                        .map(|(resource, access)| ResourceUse { resource, access })
                        .collect(),
                    path: exe,
                }
            })
            .collect();
        Self {
            format: FORMAT.into(),
            version: VERSION,
            source,
            unresolved_names: model.unresolved_names(),
            executables,
            calls: model.calls().into_iter().collect(),
            sockets: sockets(model),
        }
    }

    /// The human summary: one row per executable, then the call graph and
    /// the sockets.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let width = self
            .executables
            .iter()
            .map(|e| e.path.0.as_str().len())
            .max()
            .unwrap_or(10)
            .max(10);
        let _ = writeln!(
            out,
            "{:<width$}  {:>6}  {:>6}  {:>6}  {:>7}  {:>7}",
            "EXECUTABLE", "R", "W", "FAILED", "CALLERS", "CALLEES"
        );
        for e in &self.executables {
            let _ = writeln!(
                out,
                "{:<width$}  {:>6}  {:>6}  {:>6}  {:>7}  {:>7}",
                e.path.0.as_str(),
                e.reads.len(),
                e.writes.len(),
                e.failed_lookups.len(),
                e.callers.len(),
                e.callees.len()
            );
        }
        let _ = writeln!(out, "\nCall graph ({} edges):", self.calls.len());
        for (a, b) in &self.calls {
            let _ = writeln!(out, "  {a} -> {b}");
        }
        let _ = writeln!(out, "\nSockets ({}):", self.sockets.len());
        for s in &self.sockets {
            let list = |set: &BTreeSet<Exe>| {
                if set.is_empty() {
                    "-".to_owned()
                } else {
                    set.iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            };
            let _ = writeln!(
                out,
                "  {}  bound by {}; connected by {}",
                describe(&s.socket),
                list(&s.bound_by),
                list(&s.connected_by)
            );
        }
        let src = &self.source;
        let _ = writeln!(
            out,
            "\n{} events from {} ({}); {} unresolved names; {}",
            src.events,
            src.files.join(", "),
            src.kind,
            self.unresolved_names,
            if src.complete {
                "complete: no events lost".to_owned()
            } else {
                format!(
                    "INCOMPLETE: {} events lost or the log was cut off",
                    src.lost_events
                )
            }
        );
        match (&src.image_tree, src.kind.as_str()) {
            (Some(_), _) => {}
            // `report` has no --root: the daemon's plan and emit read the image.
            (None, "session") => {
                let _ = writeln!(
                    out,
                    "Modelled without the image: symlink chains and #! interpreters are followed \
                     by plan and emit, which read it."
                );
            }
            (None, _) => {
                let _ = writeln!(
                    out,
                    "No image tree given (--root): symlink chains and #! interpreters are not included."
                );
            }
        }
        let unobserved: Vec<&str> = self
            .executables
            .iter()
            .filter(|e| e.path.is_unobserved())
            .map(|e| e.path.0.as_str())
            .collect();
        if !unobserved.is_empty() {
            let _ = writeln!(
                out,
                "{}: processes whose exec was not seen (running before the watch began, or the \
                 container runtime's set-up such as runc:[2:INIT] before the entrypoint); named \
                 after their command, with no file behind them, so nothing is kept for them.",
                unobserved.join(", ")
            );
        }
        out
    }

    /// The exec call graph for Graphviz; each node shows its R/W sizes.
    pub fn dot(&self) -> String {
        let mut out = String::from("digraph calls {\n  node [shape=box];\n");
        for e in &self.executables {
            let _ = writeln!(
                out,
                "  {} [label={}];",
                quote(e.path.0.as_str()),
                quote(&format!(
                    "{}\nR={} W={}",
                    e.path,
                    e.reads.len(),
                    e.writes.len()
                ))
            );
        }
        for (a, b) in &self.calls {
            let _ = writeln!(out, "  {} -> {};", quote(a.0.as_str()), quote(b.0.as_str()));
        }
        out.push_str("}\n");
        out
    }
}

fn describe(r: &Resource) -> String {
    match r {
        Resource::Path(p) => format!("unix {p}"),
        Resource::AbstractSocket(n) => format!("abstract @{n}"),
        Resource::Inet(e) => format!("inet {}", std::net::SocketAddr::new(e.ip, e.port)),
    }
}

/// A DOT string literal.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn sockets(model: &Model) -> Vec<SocketReport> {
    let mut by_socket: BTreeMap<Resource, (BTreeSet<Exe>, BTreeSet<Exe>)> = BTreeMap::new();
    for exe in model.executables() {
        for (r, access) in model.uses(std::slice::from_ref(&exe)) {
            let entry = || (BTreeSet::new(), BTreeSet::new());
            if access.contains(&Access::Bind) {
                by_socket
                    .entry(r.clone())
                    .or_insert_with(entry)
                    .0
                    .insert(exe.clone());
            }
            if access.contains(&Access::Connect) {
                by_socket
                    .entry(r)
                    .or_insert_with(entry)
                    .1
                    .insert(exe.clone());
            }
        }
    }
    let connected: Vec<Resource> = by_socket
        .iter()
        .filter(|(_, (_, c))| !c.is_empty())
        .map(|(r, _)| r.clone())
        .collect();
    by_socket
        .into_iter()
        .map(|(socket, (bound_by, connected_by))| {
            let reached_as = match &socket {
                Resource::Inet(listener) if !bound_by.is_empty() => connected
                    .iter()
                    .filter(|c| {
                        matches!(c, Resource::Inet(to) if listener.accepts(to)) && **c != socket
                    })
                    .cloned()
                    .collect(),
                _ => Vec::new(),
            };
            SocketReport {
                socket,
                bound_by,
                connected_by,
                reached_as,
            }
        })
        .collect()
}

/// What to build a model from.
#[derive(Clone, Debug)]
pub enum Input {
    /// An event log written by `cimplifierd trace`.
    Events(std::path::PathBuf),
    /// strace logs: one `-f` log, or the per-pid files of `-ff`.
    Strace(Vec<std::path::PathBuf>),
}

/// Builds the model of `input`, following links and `#!` lines in `root`
/// when given, and reports it.
pub fn analyze(input: &Input, root: Option<&std::path::Path>) -> anyhow::Result<Report> {
    use anyhow::Context;
    let mut model = match root {
        Some(root) => {
            anyhow::ensure!(
                root.is_dir(),
                "image tree {}: not a directory; pass the root of an unpacked image or /proc/PID/root of a running container",
                root.display()
            );
            Model::with_image_tree(Box::new(super::DirTree::new(root)))
        }
        None => Model::new(),
    };
    let image_tree = root.map(|r| r.display().to_string());
    let source = match input {
        Input::Events(path) => {
            let log = crate::trace::log::EventLog::read(path)?;
            log.events.iter().for_each(|e| model.apply(e));
            Source {
                kind: "events".into(),
                files: vec![path.display().to_string()],
                events: log.events.len() as u64,
                lost_events: log.summary.as_ref().map_or(0, |s| s.loss.lost()),
                complete: log.is_complete(),
                image_tree,
            }
        }
        Input::Strace(paths) => {
            anyhow::ensure!(!paths.is_empty(), "no strace log given");
            let refs: Vec<&std::path::Path> = paths.iter().map(|p| p.as_path()).collect();
            let logs = crate::trace::strace::read_strace(&refs).context(
                "reading strace logs (expected `strace -f -y -yy -s 4096 -o FILE` output)",
            )?;
            logs.events.iter().for_each(|e| model.apply(e));
            Source {
                kind: "strace".into(),
                files: paths.iter().map(|p| p.display().to_string()).collect(),
                events: logs.events.len() as u64,
                // strace drops nothing; it slows the program instead.
                lost_events: 0,
                // ...but a log cut off mid-line lost its end.
                complete: logs.cut_off.is_empty(),
                image_tree,
            }
        }
    };
    Ok(Report::new(&model, source))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::ContainerPath;

    fn report(kind: &str, exes: &[&str]) -> Report {
        let executables = exes
            .iter()
            .map(|e| ExecutableReport {
                path: Exe(ContainerPath::new(e).unwrap()),
                callers: BTreeSet::new(),
                callees: BTreeSet::new(),
                reads: BTreeSet::new(),
                writes: BTreeSet::new(),
                failed_lookups: BTreeSet::new(),
                uses: Vec::new(),
            })
            .collect();
        Report {
            format: FORMAT.into(),
            version: VERSION,
            source: Source {
                kind: kind.into(),
                files: vec!["web".into()],
                events: 1,
                lost_events: 0,
                complete: true,
                image_tree: None,
            },
            unresolved_names: 0,
            executables,
            calls: Vec::new(),
            sockets: Vec::new(),
        }
    }

    #[test]
    fn a_session_report_hints_at_no_flag_it_lacks() {
        let table = report("session", &["/bin/sh"]).table();
        assert!(!table.contains("--root"), "{table}");
        assert!(report("strace", &["/bin/sh"]).table().contains("--root"));
    }

    #[test]
    fn unobserved_pseudo_executables_are_explained() {
        let table = report("session", &["/bin/sh", "/?unobserved-exec/runc:[2:INIT]"]).table();
        let note = table
            .lines()
            .find(|l| l.starts_with("/?unobserved-exec/runc:[2:INIT]:"))
            .unwrap_or_else(|| panic!("no note on the pseudo-executable:\n{table}"));
        assert!(note.contains("exec was not seen"), "{note}");
        assert!(
            !report("session", &["/bin/sh"])
                .table()
                .contains("exec was not seen")
        );
    }
}
