//! The tracer on chrooted processes: names a program passes inside its
//! chroot must come out as the container (here, the host) sees them. Needs
//! root.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use cimplifier::trace::{EventKind, PathRole, Tracer, TracerConfig};
use common::*;

/// A jail directory holding `f`, `sub/g` and `h`.
fn jail() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    for f in ["f", "sub/g", "h"] {
        std::fs::write(dir.path().join(f), "x").unwrap();
    }
    let path = dir.path().to_str().unwrap().to_owned();
    (dir, path)
}

/// `python3 -c script arg` inside the cgroup at `cgroup` (a shell moves
/// itself in, then execs it), its stdin and stdout piped.
fn python_in(cgroup: &std::path::Path, script: &str, arg: &str) -> std::process::Child {
    Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec \"$@\"",
            cgroup.display()
        ))
        .args(["sh", "/usr/bin/python3", "-c", script, arg])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The opens of `path` (resolved), with the raw names they were given.
fn opens_of(events: &[cimplifier::trace::Event], path: &str) -> Vec<String> {
    find(events, &["openat", "open"], PathRole::Target, path)
        .iter()
        .filter(|(_, s)| s.succeeded())
        .map(|(_, s)| s.path(PathRole::Target).unwrap().raw.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_inside_a_chroot_resolve_to_the_full_path() {
    require_root();
    let mut tracer = Tracer::load(TracerConfig::default()).expect("loading the tracer");
    let mut events = tracer.events().unwrap();
    let cgroup = TestCgroup::new("chroot");
    let watched = tracer.watch_cgroup(&cgroup.path).unwrap();
    let (_dir, jail) = jail();

    // fchdir + chroot("."), as daemons do; then an absolute, a relative and
    // a `..` name, and a child forked after the chroot. The process waits to
    // be told to go until the tracer has seen it: a process first seen is
    // seeded from /proc when its first event is read, and a chroot already
    // made by then would be in that snapshot as well as in its event.
    let script = r#"
import os, sys
sys.stdin.readline()
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
os.fchdir(fd)
os.chroot(".")
open("/f").read()
open("sub/../../sub/g").read()
pid = os.fork()
if pid == 0:
    open("/h").read()
    os._exit(0)
os.waitpid(pid, 0)
"#;
    let mut child = python_in(&cgroup.path, script, &jail);
    let pid = child.id();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !seen.iter().any(|e: &cimplifier::trace::Event| e.pid == pid) {
        match tokio::time::timeout_at(deadline, events.next_event()).await {
            Ok(Some(e)) => seen.push(e),
            other => panic!("the tracer never saw the workload (pid {pid}): {other:?}"),
        }
    }
    child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "the workload failed: {status}");
    seen.extend(drain(&mut events, Duration::from_millis(500)).await);
    let events = seen;
    tracer.unwatch(&watched).unwrap();
    let ctx = || dump(&events, usize::MAX);

    let chroot = syscalls(&events, "chroot");
    assert_eq!(chroot.len(), 1, "one chroot{}", ctx());
    assert_eq!(chroot[0].1.ret, Some(0));
    assert_eq!(path_of(chroot[0].1, PathRole::Target), Some(jail.as_str()));

    assert_eq!(opens_of(&events, &format!("{jail}/f")), ["/f"], "{}", ctx());
    assert_eq!(
        opens_of(&events, &format!("{jail}/sub/g")),
        ["sub/../../sub/g"],
        "`..` stops at the root{}",
        ctx()
    );
    assert_eq!(opens_of(&events, &format!("{jail}/h")), ["/h"], "{}", ctx());
    assert!(
        opens_of(&events, "/f").is_empty() && opens_of(&events, "/h").is_empty(),
        "no name of the chrooted process is left in its own view{}",
        ctx()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_chrooted_before_the_watch_is_seeded_with_its_root() {
    require_root();
    let mut tracer = Tracer::load(TracerConfig::default()).expect("loading the tracer");
    let mut events = tracer.events().unwrap();
    let cgroup = TestCgroup::new("chroot-seed");
    let (_dir, jail) = jail();

    // Chroots, says so, then opens a file once told to: the watch begins in
    // between.
    let script = r#"
import os, sys
os.chroot(sys.argv[1])
os.chdir("/sub")
print("ready", flush=True)
sys.stdin.readline()
open("/f").read()
open("g").read()
"#;
    let mut child = python_in(&cgroup.path, script, &jail);
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    let watched = tracer.watch_cgroup(&cgroup.path).unwrap();
    child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    let events = drain(&mut events, Duration::from_millis(500)).await;
    tracer.unwatch(&watched).unwrap();
    let ctx = || dump(&events, usize::MAX);

    let running = events
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::Running { cwd, .. } => Some(cwd.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("the running process is reported{}", ctx()));
    assert_eq!(
        running.as_ref().map(|c| c.as_str().to_owned()),
        Some(format!("{jail}/sub")),
        "its cwd in the container's view"
    );
    assert_eq!(opens_of(&events, &format!("{jail}/f")), ["/f"], "{}", ctx());
    assert_eq!(
        opens_of(&events, &format!("{jail}/sub/g")),
        ["g"],
        "{}",
        ctx()
    );
}
