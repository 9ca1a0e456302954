//! The tracer on a real cgroup: a scripted workload runs inside it and every
//! step must come out with its resolved path and return value. Needs root.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use cimplifier::trace::{EventKind, PathRole, Resolution, SocketAddress, Tracer, TracerConfig};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_workload_is_recorded_with_resolved_paths() {
    require_root();
    let mut tracer = Tracer::load(TracerConfig::default()).expect("loading the tracer");
    let mut events = tracer.events().unwrap();
    let cgroup = TestCgroup::new("workload");
    let watched = tracer.watch_cgroup(&cgroup.path).unwrap();

    let base_dir = tempfile::tempdir().unwrap();
    let base = base_dir.path().to_str().unwrap().to_owned();
    let outside_marker = format!("{base}/outside-marker");
    std::fs::write(&outside_marker, "x").unwrap();

    let script = workload_script();
    let out = tokio::task::spawn_blocking({
        let path = cgroup.path.clone();
        let base = base.clone();
        move || {
            run_in(
                &path,
                &["/usr/bin/python3", script.to_str().unwrap(), &base],
            )
        }
    })
    .await
    .unwrap();
    // A process outside the cgroup touches a marker: it must not be recorded.
    let outside = std::process::Command::new("/bin/cat")
        .arg(&outside_marker)
        .output()
        .unwrap();
    assert!(outside.status.success());
    let port: u16 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("workload prints its port");

    let events = drain(&mut events, Duration::from_millis(500)).await;
    tracer.unwatch(&watched).unwrap();
    let counters = tracer.counters().unwrap();
    assert_eq!(
        counters.loss.lost(),
        0,
        "events were lost: {:?}",
        counters.loss
    );
    assert!(
        !events.is_empty(),
        "nothing was recorded from the watched cgroup"
    );
    let ctx = || dump(&events, 0);

    // Every event comes from the watched cgroup, carries ids and a comm.
    for e in &events {
        assert_eq!(e.cgroup, watched.id, "event from another cgroup: {e:?}");
        assert!(
            e.pid > 0 && e.tid > 0 && e.ppid > 0 && !e.comm.is_empty(),
            "{e:?}"
        );
    }

    // cd, then open relative paths: created, then read.
    let rel = format!("{base}/sub/rel.txt");
    let opens = find(&events, &["openat", "open"], PathRole::Target, &rel);
    assert!(opens.len() >= 2, "two opens of {rel} expected{}", ctx());
    assert!(opens.iter().all(|(_, s)| s.succeeded()), "{opens:?}");
    assert!(
        opens
            .iter()
            .any(|(_, s)| s.path(PathRole::Target).unwrap().raw == "sub/rel.txt"),
        "the raw name is kept as passed: {opens:?}"
    );
    let mkdir = find(
        &events,
        &["mkdir", "mkdirat"],
        PathRole::Target,
        &format!("{base}/sub"),
    );
    assert_eq!(mkdir.len(), 1, "mkdir sub{}", ctx());
    assert_eq!(mkdir[0].1.ret, Some(0));

    // openat with a dirfd: raw "rel.txt" relative to the fd of "sub".
    let via_dirfd: Vec<_> = opens
        .iter()
        .filter(|(_, s)| s.path(PathRole::Target).unwrap().raw == "rel.txt")
        .collect();
    assert_eq!(via_dirfd.len(), 1, "openat(dirfd, \"rel.txt\"): {opens:?}");
    assert_ne!(
        via_dirfd[0].1.args[0] as i32, -100,
        "it used a real dirfd, not AT_FDCWD"
    );

    // A failed open keeps its errno and its resolved path.
    let missing = find(
        &events,
        &["openat", "open"],
        PathRole::Target,
        &format!("{base}/does-not-exist.txt"),
    );
    assert_eq!(missing.len(), 1, "failed open{}", ctx());
    assert_eq!(missing[0].1.ret, Some(-2));
    assert_eq!(missing[0].1.errno.as_deref(), Some("ENOENT"));

    // rename, symlink, readlink.
    let renamed = format!("{base}/sub/renamed.txt");
    let rename = find(
        &events,
        &["rename", "renameat", "renameat2"],
        PathRole::Old,
        &rel,
    );
    assert_eq!(rename.len(), 1, "rename{}", ctx());
    assert_eq!(path_of(rename[0].1, PathRole::New), Some(renamed.as_str()));
    assert_eq!(rename[0].1.ret, Some(0));
    let link = format!("{base}/sub/link");
    let symlink = find(&events, &["symlink", "symlinkat"], PathRole::New, &link);
    assert_eq!(symlink.len(), 1, "symlink{}", ctx());
    let content = symlink[0].1.path(PathRole::LinkContent).unwrap();
    assert_eq!(
        (content.raw.as_str(), &content.resolution),
        ("renamed.txt", &Resolution::Literal)
    );
    let readlink = find(
        &events,
        &["readlink", "readlinkat"],
        PathRole::Target,
        &link,
    );
    assert_eq!(readlink.len(), 1, "readlink{}", ctx());
    assert_eq!(readlink[0].1.ret, Some("renamed.txt".len() as i64));
    assert_eq!(
        readlink[0].1.path(PathRole::LinkValue).unwrap().raw,
        "renamed.txt"
    );

    // A unix socket bound and connected by a relative name.
    let sock = format!("{base}/unix.sock");
    for name in ["bind", "connect"] {
        let calls: Vec<_> = syscalls(&events, name)
            .into_iter()
            .filter(|(_, s)| unix_path(&s.addr) == Some(sock.as_str()))
            .collect();
        assert_eq!(calls.len(), 1, "{name} on {sock}{}", ctx());
        assert_eq!(calls[0].1.ret, Some(0), "{name}");
    }

    // A TCP connect to 127.0.0.1.
    let tcp: Vec<_> = syscalls(&events, "connect")
        .into_iter()
        .filter(|(_, s)| matches!(&s.addr, Some(SocketAddress::Inet { addr }) if addr.port() == port && addr.ip().is_loopback()))
        .collect();
    assert_eq!(tcp.len(), 1, "connect to 127.0.0.1:{port}{}", ctx());
    assert_eq!(tcp[0].1.ret, Some(0));

    // exec of a child, with argv; the child inherited the cwd.
    let execs: Vec<_> = syscalls(&events, "execve")
        .into_iter()
        .filter(|(_, s)| path_of(s, PathRole::Target) == Some("/bin/cat"))
        .collect();
    assert_eq!(execs.len(), 1, "execve /bin/cat{}", ctx());
    let (exec_event, exec) = execs[0];
    assert_eq!(exec.ret, Some(0));
    assert_eq!(
        exec.argv.as_deref(),
        Some(&["/bin/cat".to_owned(), "sub/renamed.txt".to_owned()][..])
    );
    let cat_open = find(&events, &["openat", "open"], PathRole::Target, &renamed);
    assert!(
        cat_open
            .iter()
            .any(|(e, _)| e.pid == exec_event.pid && e.comm == "cat"),
        "cat's relative open resolved through the inherited cwd{}",
        ctx()
    );
    let forks = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Fork { .. }))
        .count();
    assert!(forks >= 1, "the fork of the child is recorded");
    assert!(
        events.iter().any(|e| e.pid == exec_event.pid
            && matches!(
                e.kind,
                EventKind::Exit {
                    process_exited: true
                }
            )),
        "the child's exit is recorded"
    );

    // The same events folded into the model: who read and wrote what.
    let model = cimplifier::model::Model::from_events(&events);
    let exe = |p: &str| cimplifier::model::Exe(cimplifier::trace::ContainerPath::new(p).unwrap());
    let res = |p: &str| {
        cimplifier::model::Resource::Path(cimplifier::trace::ContainerPath::new(p).unwrap())
    };
    let (python, cat) = (exe("/usr/bin/python3"), exe("/bin/cat"));
    assert!(model.callees(&python).contains(&cat), "python3 exec'd cat");
    assert!(
        model
            .writes(std::slice::from_ref(&python))
            .contains(&res(&renamed))
    );
    assert!(
        model
            .reads(std::slice::from_ref(&cat))
            .contains(&res(&renamed))
    );
    assert!(
        model
            .failed_lookups(&[python])
            .contains(&res(&format!("{base}/does-not-exist.txt")))
    );
    let unresolved: Vec<_> = events
        .iter()
        .filter_map(|e| e.syscall())
        .filter(|s| {
            s.paths.iter().any(|p| {
                matches!(
                    p.resolution,
                    Resolution::Unresolved(_) | Resolution::Unreadable
                )
            })
        })
        .collect();
    assert_eq!(
        model.unresolved_names(),
        unresolved.len() as u64,
        "{unresolved:#?}"
    );
    assert!(unresolved.is_empty(), "{unresolved:#?}");

    // Nothing from outside the cgroup.
    assert!(
        !events
            .iter()
            .filter_map(|e| e.syscall())
            .any(|s| s.paths.iter().any(|p| p.raw.contains("outside-marker"))),
        "a process outside the watched cgroup was recorded"
    );
    let outside_comms: BTreeSet<_> = events.iter().map(|e| e.comm.as_str()).collect();
    assert!(
        outside_comms
            .iter()
            .all(|c| ["sh", "python3", "cat"].contains(c)),
        "{outside_comms:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_cgroups_of_a_watched_cgroup_are_recorded() {
    require_root();
    let mut tracer = Tracer::load(TracerConfig::default()).unwrap();
    let mut events = tracer.events().unwrap();
    let parent = TestCgroup::new("parent");
    let child_path = parent.path.join("child");
    std::fs::create_dir(&child_path).unwrap();
    let child = TestCgroup { path: child_path };
    tracer.watch_cgroup(&parent.path).unwrap();
    let marker = tempfile::NamedTempFile::new().unwrap();
    tokio::task::spawn_blocking({
        let path = child.path.clone();
        let marker = marker.path().to_owned();
        move || run_in(&path, &["/bin/cat", marker.to_str().unwrap()])
    })
    .await
    .unwrap();
    let events = drain(&mut events, Duration::from_millis(300)).await;
    let marker = marker.path().to_str().unwrap();
    assert!(
        !find(&events, &["openat", "open"], PathRole::Target, marker).is_empty(),
        "an open in a sub-cgroup of the watched one must be recorded:\n{}",
        dump(&events, 50)
    );
    drop(child);
}

/// A process already running when the watch begins: its cwd comes from
/// /proc, so its (and its children's) relative names still resolve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_running_before_the_watch_resolve_relative_names() {
    require_root();
    let mut tracer = Tracer::load(TracerConfig::default()).unwrap();
    let mut events = tracer.events().unwrap();
    let cgroup = TestCgroup::new("before");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("late.txt"), "x").unwrap();
    let workload = tokio::task::spawn_blocking({
        let (cg, dir) = (cgroup.path.clone(), dir.path().to_owned());
        move || {
            let script = format!("cd {} && sleep 1 && cat late.txt", dir.display());
            run_in(&cg, &["/bin/sh", "-c", &script])
        }
    });
    // The watch begins once the shell has changed directory and runs
    // `sleep` (two processes in the cgroup), before `cat` starts.
    let procs = cgroup.path.join("cgroup.procs");
    wait_until(10, "the workload's sleep runs in the cgroup", || {
        std::fs::read_to_string(&procs).is_ok_and(|p| p.lines().count() >= 2)
    });
    tracer.watch_cgroup(&cgroup.path).unwrap();
    workload.await.unwrap();
    let events = drain(&mut events, Duration::from_millis(300)).await;
    let late = format!("{}/late.txt", dir.path().display());
    assert!(
        find(&events, &["openat", "open"], PathRole::Target, &late)
            .iter()
            .any(|(e, s)| e.comm == "cat" && s.succeeded()),
        "cat's relative open of late.txt did not resolve through the seeded cwd:\n{}",
        dump(&events, 40)
    );
    // The shell was running before the watch: it is reported as running,
    // with the file it runs, so the model needs no placeholder for it.
    let running: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Running { exe, argv, .. } => Some((exe.clone(), argv.clone())),
            _ => None,
        })
        .collect();
    assert!(
        running.iter().any(|(exe, argv)| {
            exe.as_ref().is_some_and(|x| x.as_str() == "/usr/bin/dash")
                && argv.first().is_some_and(|a| a == "/bin/sh")
        }),
        "no Running event for the shell started before the watch: {running:?}"
    );
    let model = cimplifier::model::Model::from_events(&events);
    let exes: Vec<String> = model.executables().iter().map(|e| e.to_string()).collect();
    assert!(
        exes.contains(&"/usr/bin/dash".to_owned()) && exes.contains(&"/usr/bin/cat".to_owned()),
        "{exes:?}"
    );
    assert!(
        !exes.iter().any(|e| e.starts_with("/?unobserved-exec")),
        "a placeholder remains: {exes:?}"
    );
}

/// A large process shells out through posix_spawn (a vfork-style clone that
/// shares its memory) with every name on a page it never touched, so the
/// read at syscall entry faults. The exec must still come out with its path
/// and argv (from sched_process_exec), a failed exec with its names (read
/// again at exit), and nothing may be left unreadable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawns_with_names_on_untouched_pages_are_recorded_whole() {
    require_root();
    let mut tracer = Tracer::load(TracerConfig::default()).unwrap();
    let mut events = tracer.events().unwrap();
    let cgroup = TestCgroup::new("unmapped");
    tracer.watch_cgroup(&cgroup.path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().to_str().unwrap().to_owned();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/spawn_unmapped.py");
    tokio::task::spawn_blocking({
        let (cg, base) = (cgroup.path.clone(), base.clone());
        move || run_in(&cg, &["/usr/bin/python3", script.to_str().unwrap(), &base])
    })
    .await
    .unwrap();
    let events = drain(&mut events, Duration::from_millis(500)).await;
    let ctx = || {
        dump(
            &events
                .iter()
                .filter(|e| e.syscall().is_some_and(|s| s.syscall.starts_with("exec")))
                .cloned()
                .collect::<Vec<_>>(),
            40,
        )
    };

    let spawned = find(&events, &["execve"], PathRole::Target, "/bin/true");
    assert_eq!(spawned.len(), 1, "the spawn of /bin/true{}", ctx());
    let (_, exec) = spawned[0];
    assert_eq!(exec.ret, Some(0));
    assert_eq!(
        exec.argv.as_deref(),
        Some(&["true".to_owned(), "from-an-unmapped-page".to_owned()][..])
    );
    assert!(exec.incomplete.is_empty(), "{exec:?}");

    let missing = format!("{base}/no-such-program");
    let failed = find(&events, &["execve"], PathRole::Target, &missing);
    assert_eq!(failed.len(), 1, "the failed spawn of {missing}{}", ctx());
    assert_eq!(failed[0].1.errno.as_deref(), Some("ENOENT"));
    assert_eq!(
        failed[0].1.argv.as_deref(),
        Some(&["no-such-program".to_owned(), "-x".to_owned()][..])
    );

    let probe = format!("{base}/probe");
    assert_eq!(
        find(
            &events,
            &["access", "faccessat", "faccessat2"],
            PathRole::Target,
            &probe
        )
        .len(),
        1,
        "access of {probe}:\n{}",
        dump(&events, 400)
    );

    let unreadable: Vec<_> = events.iter().filter(|e| e.unreadable_names() > 0).collect();
    assert!(
        unreadable.is_empty(),
        "names left unreadable: {unreadable:#?}"
    );
    let model = cimplifier::model::Model::from_events(&events);
    assert!(
        model
            .executables()
            .iter()
            .any(|e| e.to_string() == "/bin/true"),
        "the spawned program is an executable of the model: {:?}",
        model.executables()
    );
}

/// A thread other than the leader calls exec: the kernel gives it the
/// leader's id, so its exit comes under another thread id than its entry.
/// The exec must still be recorded, with its return value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_from_a_non_leader_thread_is_recorded_whole() {
    require_root();
    let mut tracer = Tracer::load(TracerConfig::default()).unwrap();
    let mut events = tracer.events().unwrap();
    let cgroup = TestCgroup::new("thread-exec");
    tracer.watch_cgroup(&cgroup.path).unwrap();
    let script = "import os, threading, time\n\
                  threading.Thread(target=lambda: os.execv('/bin/true', ['true', 'from-a-thread'])).start()\n\
                  time.sleep(5)\n";
    tokio::task::spawn_blocking({
        let cg = cgroup.path.clone();
        move || run_in(&cg, &["/usr/bin/python3", "-c", script])
    })
    .await
    .unwrap();
    let events = drain(&mut events, Duration::from_millis(500)).await;
    let execs = find(&events, &["execve"], PathRole::Target, "/bin/true");
    assert_eq!(
        execs.len(),
        1,
        "the exec from a thread:\n{}",
        dump(&events, 400)
    );
    let (e, exec) = execs[0];
    assert_eq!(exec.ret, Some(0), "{exec:?}");
    assert!(exec.incomplete.is_empty(), "{exec:?}");
    assert_eq!(e.tid, e.pid, "it completes as the leader");
    assert_eq!(
        exec.argv.as_deref(),
        Some(&["true".to_owned(), "from-a-thread".to_owned()][..])
    );
    // What the new program does is its own: its loader's reads are
    // charged to /bin/true, not to python.
    let model = cimplifier::model::Model::from_events(&events);
    let exe = model
        .executables()
        .into_iter()
        .find(|x| x.to_string() == "/bin/true")
        .unwrap_or_else(|| panic!("no /bin/true in {:?}", model.executables()));
    let reads: Vec<String> = model
        .reads(&[exe])
        .iter()
        .map(|r| format!("{r:?}"))
        .collect();
    assert!(
        reads.iter().any(|r| r.contains("libc.so")),
        "/bin/true's reads: {reads:?}"
    );
}

/// A cgroup `levels` levels below `top`, made one directory at a time.
fn nested(top: &Path, levels: usize) -> Vec<std::path::PathBuf> {
    let mut dirs = Vec::new();
    let mut dir = top.to_path_buf();
    for i in 0..levels {
        dir = dir.join(format!("l{i}"));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        dirs.push(dir.clone());
    }
    dirs
}

/// Nested cgroups, removed deepest first however the test ends.
struct Nested(Vec<std::path::PathBuf>);

impl Drop for Nested {
    fn drop(&mut self) {
        for d in self.0.iter().rev() {
            for _ in 0..50 {
                if std::fs::remove_dir(d).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// A task may lie deeper than the kernel filter's walk (MAX_CGROUP_LEVEL
/// levels): the watched ancestor is met on the way down, so its events are
/// recorded. A watch (or exclusion) deeper than the walk could never be
/// met: it is refused, naming the depth, instead of recording nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cgroups_deeper_than_the_kernel_walk_are_followed_or_refused() {
    require_root();
    let mut tracer = Tracer::load(TracerConfig::default()).unwrap();
    let mut events = tracer.events().unwrap();
    let top = TestCgroup::new("deep");
    let depth = cimplifier_common::MAX_CGROUP_LEVEL as usize + 4;
    let dirs = Nested(nested(&top.path, depth));
    let deepest = dirs.0.last().unwrap().clone();
    let level = cimplifier::trace::cgroup::cgroup_level(&deepest).unwrap();
    assert!(
        level > cimplifier_common::MAX_CGROUP_LEVEL as usize,
        "{level}"
    );

    let refused = tracer.watch_cgroup(&deepest).map(|w| w.id);
    let message = format!(
        "{:#}",
        refused.expect_err("a watch below the walk is refused")
    );
    assert!(message.contains("levels below"), "{message}");
    let refused = tracer.exclude_cgroup(&deepest).map(|w| w.id);
    assert!(refused.is_err(), "an exclusion below the walk is refused");

    let watched = tracer.watch_cgroup(&top.path).unwrap();
    let marker = tempfile::NamedTempFile::new().unwrap();
    tokio::task::spawn_blocking({
        let (cg, marker) = (deepest.clone(), marker.path().to_owned());
        move || run_in(&cg, &["/bin/cat", marker.to_str().unwrap()])
    })
    .await
    .unwrap();
    let events = drain(&mut events, Duration::from_millis(300)).await;
    tracer.unwatch(&watched).unwrap();
    assert!(
        !find(
            &events,
            &["openat", "open"],
            PathRole::Target,
            marker.path().to_str().unwrap()
        )
        .is_empty(),
        "an open {depth} levels below the watched cgroup must be recorded:\n{}",
        dump(&events, 50)
    );
    drop(dirs);
}

/// A watch of a running cgroup reads /proc with the cgroup frozen, so
/// nothing forks or execs between that read and the kernel's map insert;
/// it is thawed after, and a cgroup found frozen (a paused container)
/// stays frozen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_freezes_a_running_cgroup_only_while_it_reads_proc() {
    require_root();
    use cimplifier::trace::cgroup::Frozen;
    let frozen = |cg: &Path| {
        std::fs::read_to_string(cg.join("cgroup.events"))
            .unwrap()
            .lines()
            .any(|l| l == "frozen 1")
    };
    let tracer = Tracer::load(TracerConfig::default()).unwrap();
    let cgroup = TestCgroup::new("freeze");
    let sleeper = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec sleep 30",
            cgroup.path.display()
        ))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // However the test ends: nothing left frozen, the sleeper gone.
    struct Cleanup(u32, std::path::PathBuf, std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::write(self.1.join("cgroup.freeze"), "0");
            let _ = std::fs::write(self.2.join("freezer.state"), "THAWED");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.0 as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            for _ in 0..50 {
                if !self.2.exists() || std::fs::remove_dir(&self.2).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    let v1 = Path::new("/sys/fs/cgroup/freezer").join(cgroup.path.file_name().unwrap());
    let _cleanup = Cleanup(sleeper.id(), cgroup.path.clone(), v1.clone());
    let procs = cgroup.path.join("cgroup.procs");
    wait_until(10, "sleep runs in the cgroup", || {
        std::fs::read_to_string(&procs).is_ok_and(|p| !p.trim().is_empty())
    });

    // The guard itself: frozen while held, thawed when dropped.
    let guard = Frozen::new(&cgroup.path, Duration::from_secs(1)).unwrap();
    assert!(frozen(&cgroup.path), "frozen while the guard is held");
    drop(guard);
    wait_until(5, "the cgroup thaws", || !frozen(&cgroup.path));

    let w = tracer.watch_cgroup(&cgroup.path).unwrap();
    assert!(!frozen(&cgroup.path), "a watch leaves the cgroup running");
    tracer.unwatch(&w).unwrap();

    std::fs::write(cgroup.path.join("cgroup.freeze"), "1").unwrap();
    wait_until(5, "the cgroup freezes", || frozen(&cgroup.path));
    let w = tracer.watch_cgroup(&cgroup.path).unwrap();
    assert!(frozen(&cgroup.path), "a paused cgroup stays paused");
    tracer.unwatch(&w).unwrap();
    std::fs::write(cgroup.path.join("cgroup.freeze"), "0").unwrap();
    wait_until(5, "the cgroup thaws", || !frozen(&cgroup.path));

    // Paused through the v1 freezer (`docker pause` on a hybrid host like
    // these): the v2 files do not show it, and a v2 freeze would never
    // complete; it is found frozen already and left so.
    if Path::new("/sys/fs/cgroup/freezer/freezer.state").exists()
        || Path::new("/sys/fs/cgroup/freezer/cgroup.procs").exists()
    {
        std::fs::create_dir(&v1).unwrap();
        std::fs::write(v1.join("cgroup.procs"), sleeper.id().to_string()).unwrap();
        std::fs::write(v1.join("freezer.state"), "FROZEN").unwrap();
        wait_until(5, "the v1 freezer freezes", || {
            std::fs::read_to_string(v1.join("freezer.state")).is_ok_and(|s| s.trim() == "FROZEN")
        });
        let guard = Frozen::new(&cgroup.path, Duration::from_secs(1));
        assert!(
            guard.is_ok(),
            "a v1-frozen cgroup is frozen already: {guard:?}"
        );
        drop(guard);
        assert_eq!(
            std::fs::read_to_string(v1.join("freezer.state"))
                .unwrap()
                .trim(),
            "FROZEN",
            "and stays frozen"
        );
    }
    drop(_cleanup);
    let mut sleeper = sleeper;
    let _ = sleeper.wait();
}

/// What a model says per executable: its uses, its privileged operations
/// and its syscalls; and its unresolved names.
type ModelView = (
    std::collections::BTreeMap<
        cimplifier::model::Exe,
        std::collections::BTreeMap<
            cimplifier::model::Resource,
            BTreeSet<cimplifier::model::Access>,
        >,
    >,
    BTreeSet<cimplifier::model::privileged::Observed>,
    std::collections::BTreeMap<u32, BTreeSet<cimplifier::model::Exe>>,
    u64,
);

fn model_view(events: &[cimplifier::trace::Event]) -> ModelView {
    let m = cimplifier::model::Model::from_events(events);
    let exes = m.executables();
    let uses = exes
        .iter()
        .map(|e| (e.clone(), m.uses(std::slice::from_ref(e))))
        .collect();
    (
        uses,
        m.privileged(&exes),
        m.syscalls(&exes),
        m.unresolved_names(),
    )
}

/// Two tracers watch one cgroup, one folding repeats in the kernel and one
/// not, while real programs repeat stats and failed opens (python's
/// imports, a shell loop, a process started before the watch), change
/// directory, repeat a stat after dropping root, and repeat opens whose
/// descriptors they then close, list, enter, chmod, dup, replace, close by
/// range, hand to a forked child or across an exec, or hold at exit
/// (`repeated_fds.py`): the models built from the two streams are equal,
/// per executable, with as many unresolved names, and the folding one sent
/// fewer events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folding_repeats_in_the_kernel_leaves_the_model_unchanged() {
    require_root();
    let mut folding = Tracer::load(TracerConfig::default()).expect("loading the tracer");
    let mut full = Tracer::load(TracerConfig {
        fold_repeats: false,
        ..Default::default()
    })
    .expect("loading the second tracer");
    let mut folded_events = folding.events().unwrap();
    let mut full_events = full.events().unwrap();
    let cgroup = TestCgroup::new("fold");
    let base_dir = tempfile::tempdir().unwrap();
    let base = base_dir.path().to_str().unwrap().to_owned();
    // A process running before the watch began, which repeats once told.
    // It says it is ready and waits on a pipe (read is not hooked): a wait
    // polling with stat, or a start-up still under way, could make a call
    // between the two watches below, seen by one tracer only.
    let mut early = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec python3 -c '
import os
os.write(1, b\"r\"); os.read(0, 1)
for _ in range(50): os.stat(\"/etc/passwd\"); os.path.exists(\"/no/such/early\")
'",
            cgroup.path.display()
        ))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = [0u8; 1];
    std::io::Read::read_exact(early.stdout.as_mut().unwrap(), &mut ready)
        .expect("the early process says it is ready");
    let mut go = early.stdin.take().unwrap();
    // Both tracers' hooks first (attaching takes a while), so that the two
    // watches below begin together: a call between them would be one
    // tracer's only.
    let idle = TestCgroup::new("fold-idle");
    let idle_watches = [&folding, &full].map(|t| t.watch_cgroup(&idle.path).unwrap());
    std::thread::sleep(Duration::from_millis(300));
    let watched = folding.watch_cgroup(&cgroup.path).unwrap();
    let watched_full = full.watch_cgroup(&cgroup.path).unwrap();
    std::io::Write::write_all(&mut go, b"g").unwrap();
    drop(go);
    let early = tokio::task::spawn_blocking(move || {
        let mut early = early;
        early.wait().unwrap()
    });

    let script = workload_script();
    let fds_script = workload_script().with_file_name("repeated_fds.py");
    let shell = format!(
        "python3 {script} {base} > /dev/null
         python3 {fds_script} {base}/fds
         python3 -c 'import json, email.parser, http.client, xml.dom.minidom, sqlite3, decimal'
         python3 -c '
import os
for _ in range(3): os.path.exists(\"/etc/shadow\"); os.path.exists(\"/no/such\")
os.setgid(65534); os.setuid(65534)
for _ in range(3): os.path.exists(\"/etc/shadow\"); os.path.exists(\"/no/such\")
'
         for i in 1 2 3 4 5; do
           test -e /etc/passwd; test -e /no/such; cat /no/such 2>/dev/null
           ls /etc > /dev/null; cd /etc; test -e passwd; cd /
         done",
        script = script.display(),
        fds_script = fds_script.display(),
    );
    tokio::task::spawn_blocking({
        let path = cgroup.path.clone();
        move || run_in(&path, &["/bin/sh", "-c", &shell])
    })
    .await
    .unwrap();
    assert!(early.await.unwrap().success());

    let mark = cimplifier::trace::loader::monotonic_ns();
    let a = drain_through(&folding, &mut folded_events, mark).await;
    let b = drain_through(&full, &mut full_events, mark).await;
    let folded = folding.cgroup_folded(watched.id).unwrap();
    folding.unwatch(&watched).unwrap();
    full.unwatch(&watched_full).unwrap();
    for (t, w) in [&folding, &full].into_iter().zip(&idle_watches) {
        t.unwatch(w).unwrap();
    }
    for t in [&folding, &full] {
        let c = t.counters().unwrap();
        assert_eq!(c.loss.lost(), 0, "events were lost: {:?}", c.loss);
    }
    assert_eq!(full.cgroup_folded(watched_full.id).unwrap(), 0);
    println!(
        "folding: {} events sent, {folded} folded; full: {} events",
        a.len(),
        b.len()
    );
    // Syscall records only: a first-use record (`SyscallSeen`) of the
    // process running before the watch can be one tracer's only, when the
    // other's freeze interrupted its wait in between.
    let calls = |events: &[cimplifier::trace::Event]| {
        events.iter().filter(|e| e.syscall().is_some()).count()
    };
    assert!(
        folded > 100 && calls(&a) + (folded as usize) == calls(&b),
        "the folding tracer sent {} syscall events and folded {folded}; the other sent {}",
        calls(&a),
        calls(&b)
    );
    let (va, vb) = (model_view(&a), model_view(&b));
    assert_eq!(va.3, vb.3, "unresolved names");
    assert_eq!(va.1, vb.1, "privileged operations");
    assert_eq!(va.2, vb.2, "syscalls");
    for (exe, uses) in &vb.0 {
        assert_eq!(va.0.get(exe), Some(uses), "the uses of {exe}");
    }
    assert_eq!(va.0.len(), vb.0.len());
    // The process that ran before the watch folded its repeats too.
    let early_probes = |events: &[cimplifier::trace::Event]| {
        events
            .iter()
            .filter_map(|e| e.syscall())
            .filter(|s| s.paths.iter().any(|p| p.raw == "/no/such/early"))
            .count()
    };
    assert_eq!((early_probes(&a), early_probes(&b)), (1, 50));
    // The repeated opens of a file only read and closed: one sent.
    let passwd_opens = |events: &[cimplifier::trace::Event]| {
        events
            .iter()
            .filter_map(|e| e.syscall())
            .filter(|s| {
                s.syscall == "openat"
                    && s.ret.is_some_and(|r| r >= 0)
                    && s.paths.iter().any(|p| p.raw == "/etc/passwd")
            })
            .count()
    };
    let (opens_folded, opens_full) = (passwd_opens(&a), passwd_opens(&b));
    assert!(
        opens_full >= 23 && opens_folded < opens_full - 20,
        "successful opens of /etc/passwd sent: {opens_folded} folding, {opens_full} not"
    );
    // Each descriptor used later was reported and its open replayed: the
    // names relative to one resolved as without folding.
    let under_dir = |events: &[cimplifier::trace::Event]| {
        events
            .iter()
            .filter_map(|e| e.syscall())
            .flat_map(|s| &s.paths)
            .filter(|p| {
                p.raw == "file"
                    && p.path
                        .as_ref()
                        .is_some_and(|r| r.as_str() == format!("{base}/fds/dir/file"))
            })
            .count()
    };
    assert_eq!(
        (under_dir(&a), under_dir(&b)),
        (14, 14),
        "names relative to a descriptor, folding and not"
    );
    // The stat after dropping root was sent: other evidence of privilege.
    assert!(
        va.1.iter().any(|o| matches!(o.uid, cimplifier::model::privileged::Uid::Set(65534))
            && matches!(&o.op, cimplifier::model::privileged::Operation::File { path, .. } if path.as_str() == "/etc/shadow")),
        "{:?}",
        va.1
    );
}

/// Two tracers watch one cgroup, one on the per-syscall tracepoints (the
/// default) and one on every syscall, while real programs open, stat,
/// list, rename, connect, fork and exec, and copy data with read and
/// write: per executable the two models hold the same uses, privileged
/// operations and unresolved names, and the same syscalls but the
/// unhooked ones, which the per-syscall tracer never sees and its session
/// says it did not hook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_syscall_hooks_see_what_every_syscall_hooks_see_but_the_unhooked_calls() {
    use cimplifier::trace::loader::HookMode;
    use cimplifier_common::syscalls::{UNHOOKED, unhooked};
    require_root();
    let mut per = Tracer::load(TracerConfig::default()).expect("loading the tracer");
    let mut every = Tracer::load(TracerConfig {
        hooks: HookMode::EverySyscall,
        ..Default::default()
    })
    .expect("loading the second tracer");
    let mut per_events = per.events().unwrap();
    let mut every_events = every.events().unwrap();
    let cgroup = TestCgroup::new("hooks");
    // Both tracers' hooks first, so that the two watches begin together.
    let idle = TestCgroup::new("hooks-idle");
    let idle_watches = [&per, &every].map(|t| t.watch_cgroup(&idle.path).unwrap());
    let watched = [&per, &every].map(|t| t.watch_cgroup(&cgroup.path).unwrap());
    let base_dir = tempfile::tempdir().unwrap();
    let base = base_dir.path().to_str().unwrap().to_owned();
    let shell = format!(
        "python3 {script} {base} > /dev/null
         python3 -c 'import json, sqlite3, http.client'
         dd if=/etc/services of={base}/copy bs=512 2>/dev/null
         sort < {base}/copy | md5sum > {base}/sum
         for i in 1 2 3; do test -e /etc/passwd; ls /etc > /dev/null; done",
        script = workload_script().display()
    );
    tokio::task::spawn_blocking({
        let path = cgroup.path.clone();
        move || run_in(&path, &["/bin/sh", "-c", &shell])
    })
    .await
    .unwrap();
    let mark = cimplifier::trace::loader::monotonic_ns();
    let mut a: Vec<_> = per.unhooked_event(watched[0].id).into_iter().collect();
    a.extend(drain_through(&per, &mut per_events, mark).await);
    let b = drain_through(&every, &mut every_events, mark).await;
    assert!(every.unhooked_event(watched[1].id).is_none());
    for (t, ws) in [&per, &every].into_iter().zip([0, 1]) {
        t.unwatch(&watched[ws]).unwrap();
        t.unwatch(&idle_watches[ws]).unwrap();
    }
    for t in [&per, &every] {
        let c = t.counters().unwrap();
        assert_eq!(c.loss.lost(), 0, "events were lost: {:?}", c.loss);
    }
    let model = cimplifier::model::Model::from_events(&a);
    assert_eq!(
        model
            .unhooked_syscalls()
            .iter()
            .copied()
            .collect::<Vec<_>>(),
        UNHOOKED
            .iter()
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
    );
    let (va, vb) = (model_view(&a), model_view(&b));
    assert_eq!(va.3, vb.3, "unresolved names");
    assert_eq!(va.1, vb.1, "privileged operations");
    for (exe, uses) in &vb.0 {
        assert_eq!(va.0.get(exe), Some(uses), "the uses of {exe}");
    }
    assert_eq!(va.0.len(), vb.0.len());
    let hooked: std::collections::BTreeMap<_, _> =
        vb.2.iter().filter(|(nr, _)| !unhooked(**nr)).collect();
    assert_eq!(
        va.2.iter().collect::<std::collections::BTreeMap<_, _>>(),
        hooked
    );
    // The every-syscall tracer saw the data being copied; the other ran no
    // program for it.
    let dd =
        vb.0.keys()
            .find(|e| e.to_string().ends_with("/dd"))
            .expect("dd ran");
    assert!(
        vb.2[&0].contains(dd) && vb.2[&1].contains(dd),
        "dd read and wrote"
    );
    assert!(va.2.keys().all(|nr| !unhooked(*nr)));
}

/// A 32-bit program's system calls never reach the syscall tracepoints
/// as x86_64 ones: its exec is reported (`ForeignAbi`), so the session
/// can say it is incomplete, and a 64-bit one is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_32_bit_program_is_reported_as_untraced() {
    use cimplifier::trace::EventKind;
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let exe = common::i386_program(dir.path());
    let mut tracer = Tracer::load(TracerConfig::default()).expect("loading the tracer");
    let mut events = tracer.events().unwrap();
    let cgroup = TestCgroup::new("abi");
    let watched = tracer.watch_cgroup(&cgroup.path).unwrap();
    let script = format!("{} ; test $? = 7 && /bin/true", exe.display());
    tokio::task::spawn_blocking({
        let path = cgroup.path.clone();
        move || run_in(&path, &["/bin/sh", "-c", &script])
    })
    .await
    .unwrap();
    let got = drain(&mut events, Duration::from_millis(500)).await;
    tracer.unwatch(&watched).unwrap();
    let foreign: Vec<_> = got
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::ForeignAbi { elf_class, machine } => {
                Some((e.comm.as_str(), elf_class, machine))
            }
            _ => None,
        })
        .collect();
    assert_eq!(foreign, [("open32", 1, 3)], "{}", dump(&got, 40));
    assert_eq!(got.iter().map(|e| e.foreign_programs()).sum::<u64>(), 1);
    // Its exec never returns to a hook (its exit is a 32-bit one): the
    // resolver finishes it, as successful, just before the foreign_abi
    // event, so the program is named and in the model.
    let exec_at = got
        .iter()
        .position(|e| {
            e.syscall().is_some_and(|s| {
                s.syscall == "execve" && s.paths.iter().any(|p| p.raw.ends_with("/open32"))
            })
        })
        .unwrap_or_else(|| panic!("no exec of open32: {}", dump(&got, 40)));
    let exec = got[exec_at].syscall().unwrap();
    assert_eq!((exec.ret, exec.incomplete.len()), (Some(0), 0), "{exec:?}");
    assert!(
        matches!(got[exec_at + 1].kind, EventKind::ForeignAbi { .. }),
        "{}",
        dump(&got, 40)
    );
    let model = cimplifier::model::Model::from_events(&got);
    let open32 = cimplifier::model::Exe(
        cimplifier::trace::ContainerPath::new(exe.to_str().unwrap()).unwrap(),
    );
    assert!(
        model.executables().contains(&open32),
        "{:?}",
        model.executables()
    );
    assert!(!model.callers(&open32).is_empty(), "its caller, the shell");
    // Its open went by unseen: why the session must say so.
    assert!(
        !got.iter()
            .filter_map(|e| e.syscall())
            .any(|s| s.paths.iter().any(|p| p.raw == "/etc/hostname")),
        "{}",
        dump(&got, 40)
    );
}
