//! The bodies of the daemon's fuzz targets, one function per parser of
//! outside input; each must reject bad input with an error, never panic.
//! The fuzz binaries (`fuzz_targets/`) call them, and
//! `cimplifier-daemon/tests/fuzz_replay.rs` includes this file to replay
//! every seed and every past crash through them as ordinary tests, so it
//! uses nothing but the `cimplifier` library.
//!
//! Every event-producing target ends the same way: the events are folded
//! into a [`Model`] and the model is queried, so the model stage is fuzzed
//! by each front end.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use cimplifier::model::Model;
use cimplifier::trace::Event;

/// strace text (`strace -f -y -yy -s 4096 -o FILE`, or one `-ff` file) ->
/// events -> model. Parsing may fail; it must never panic.
pub fn strace_parser(data: &[u8]) {
    use cimplifier::trace::strace::parse_strace_text;
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
}

/// An event log (JSON lines, docs/event-log.md) -> events -> model.
pub fn event_log(data: &[u8]) {
    use cimplifier::trace::log::EventLog;
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
}

/// One ring-buffer record (the bytes the kernel programs send) -> decoder ->
/// resolver -> model. The decoder checks every length the record claims.
pub fn ring_record(data: &[u8]) {
    use cimplifier::trace::decode::decode;
    use cimplifier::trace::resolve::Resolver;
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
}

/// An image layer or a `docker image save` archive (tar; `tar` entries
/// that are sparse, truncated or lie about their sizes included) -> image
/// tree -> slim plan (ELF dependency lookup of every file run, symlink
/// walks) -> the slim layer.
pub fn image_tree(data: &[u8]) {
    use cimplifier::image::fs::ImageFs;
    use cimplifier::place::slim::{SlimOptions, plan};
    for fs in [
        ImageFs::from_tar(data.to_vec(), "fuzz layer"),
        ImageFs::from_archive(data.to_vec(), "fuzz archive"),
    ] {
        let fs = match fs {
            Ok(fs) => Arc::new(fs),
            Err(e) => {
                if verbose() {
                    eprintln!("{e:#}");
                }
                continue;
            }
        };
        // Every file is run once, so each ELF's dependencies are looked up.
        let files: Vec<String> = fs
            .entries()
            .map(|(p, _)| p.as_str().to_owned())
            .take(64)
            .collect();
        let events = exec_events(&files);
        let model = Model::from_events(events.iter());
        let slim = plan(&model, &fs, &SlimOptions::with_safety_sets());
        let _ = fs.write_tar(&|p| slim.keep.contains_key(p));
    }
}

/// A partitioning policy (TOML, docs/policy.md).
pub fn policy(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Err(e) = cimplifier::partition::Policy::from_toml(&text)
        && verbose()
    {
        eprintln!("{e}");
    }
}

/// A run plan (docker-compose.yml as `emit --policy` writes it), which `up`
/// and `verify` read back from a directory the user controls.
pub fn compose_file(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match cimplifier::docker::compose::ComposeFile::parse(&text, Path::new("fuzz.yml")) {
        Ok(plan) => {
            let _ = plan.start_order();
            let _ = plan.to_yaml();
        }
        Err(e) => {
            if verbose() {
                eprintln!("{e:#}");
            }
        }
    }
}

/// A session bundle (`cimplifierctl import`), imported into a fresh store
/// and folded into a model as emit would.
pub fn session_bundle(data: &[u8]) {
    use cimplifier::store::{OnExisting, Store};
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = Store::open(dir.path()).expect("a fresh store");
    match store.import(data, Some("fuzz"), OnExisting::Refuse) {
        Ok(record) => {
            let mut model = Model::new();
            if let Err(e) = store.fold(&record, &mut model, |_| {})
                && verbose()
            {
                eprintln!("{e:#}");
            }
            let _ = record.incompleteness();
            let _ = store.export(&record, &mut std::io::sink());
        }
        Err(e) => {
            if verbose() {
                eprintln!("{e:#}");
            }
        }
    }
}

/// A successful exec of each path, by one process each.
fn exec_events(paths: &[String]) -> Vec<Event> {
    use cimplifier::trace::{
        CgroupId, ContainerPath, EventKind, PathArg, PathRole, Resolution, SyscallEvent,
    };
    use cimplifier_common::syscalls::{self, nr};
    paths
        .iter()
        .enumerate()
        .map(|(i, p)| Event {
            ts_ns: i as u64,
            pid: 100 + i as u32,
            tid: 100 + i as u32,
            ppid: 1,
            cgroup: CgroupId(1),
            comm: "fuzz".into(),
            kind: EventKind::Syscall(Box::new(SyscallEvent {
                syscall: syscalls::name(nr::EXECVE).to_owned(),
                nr: nr::EXECVE,
                args: [0; 6],
                ret: Some(0),
                errno: None,
                paths: vec![PathArg {
                    role: PathRole::Target,
                    raw: p.clone(),
                    path: ContainerPath::new(p),
                    resolution: Resolution::Resolved,
                    truncated: false,
                }],
                fd_path: None,
                fd_addr: None,
                addr: None,
                argv: None,
                incomplete: vec![],
            })),
        })
        .collect()
}

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
