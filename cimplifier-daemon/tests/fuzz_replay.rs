//! Every fuzz seed and every past crash (fuzz/seeds/TARGET,
//! fuzz/crashes-found/TARGET-*) replayed through the daemon's fuzz target
//! bodies as ordinary tests: a parser that panics on any of them fails CI
//! without a fuzzing toolchain. The bodies are fuzz/src/daemon_targets.rs,
//! included as they are.

#[path = "../../fuzz/src/daemon_targets.rs"]
mod daemon_targets;

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The seeds and past crashes of `target`; at least one seed must exist.
fn inputs(target: &str) -> Vec<PathBuf> {
    let seeds = fuzz_dir().join("seeds").join(target);
    let mut all: Vec<PathBuf> = std::fs::read_dir(&seeds)
        .unwrap_or_else(|e| panic!("{}: {e}", seeds.display()))
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!all.is_empty(), "{} holds no seed", seeds.display());
    let crashes = fuzz_dir().join("crashes-found");
    all.extend(
        std::fs::read_dir(&crashes)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{target}-")))
            }),
    );
    all.sort();
    all
}

fn replay(target: &str, body: fn(&[u8])) {
    let inputs = inputs(target);
    for input in &inputs {
        println!("{target}: {}", input.display());
        body(&std::fs::read(input).unwrap());
    }
    println!("{target}: {} inputs replayed", inputs.len());
}

#[test]
fn strace_parser() {
    replay("strace_parser", daemon_targets::strace_parser);
}

#[test]
fn event_log() {
    replay("event_log", daemon_targets::event_log);
}

#[test]
fn ring_record() {
    replay("ring_record", daemon_targets::ring_record);
}

#[test]
fn image_tree() {
    replay("image_tree", daemon_targets::image_tree);
}

#[test]
fn policy() {
    replay("policy", daemon_targets::policy);
}

#[test]
fn compose_file() {
    replay("compose_file", daemon_targets::compose_file);
}

#[test]
fn session_bundle() {
    replay("session_bundle", daemon_targets::session_bundle);
}
