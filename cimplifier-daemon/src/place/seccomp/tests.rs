use super::*;
use crate::testing::{exec, p};
use crate::trace::{CgroupId, Event, EventKind};

fn seen(pid: u32, comm: &str, nr: u32) -> Event {
    Event {
        ts_ns: 0,
        pid,
        tid: pid,
        ppid: 1,
        cgroup: CgroupId(1),
        comm: comm.into(),
        kind: EventKind::SyscallSeen {
            nr,
            syscall: Arch::X86_64.name(nr).map(str::to_owned),
        },
    }
}

fn exe(s: &str) -> Exe {
    Exe(p(s))
}

const ENFORCE: SeccompInputs = SeccompInputs {
    mode: SeccompMode::Enforce,
    no_new_privileges: true,
    rpe_server: false,
    rpe_stub: false,
};

/// nginx execs, binds and accepts; the runtime's init, whose exec was
/// not seen, made its own calls before.
fn nginx_model() -> Model {
    Model::from_events(&[
        seen(8, "runc", 165),
        seen(9, "runc:[1:CHILD]", 165),
        seen(10, "runc:[2:INIT]", 165), // mount: the runtime's, before the filter
        exec(10, "/usr/sbin/nginx"),
        seen(10, "nginx", 49),  // bind
        seen(10, "nginx", 288), // accept4
        seen(10, "nginx", 999), // no such number
    ])
}

#[test]
fn the_profile_allows_what_was_seen_and_what_the_runtime_makes_and_no_more() {
    let m = nginx_model();
    let s = seccomp(&m, &m.executables(), ENFORCE);
    assert!(s.allowed.contains_key("bind") && s.allowed.contains_key("accept4"));
    assert_eq!(
        s.allowed["bind"],
        [Grant::Made {
            exe: exe("/usr/sbin/nginx")
        }]
    );
    assert!(
        !s.allowed.contains_key("mount"),
        "the runtime's own set-up before the filter is no evidence"
    );
    // runc execs the entrypoint after installing the filter.
    assert!(s.allowed["execve"].contains(&Grant::Runtime));
    assert!(s.not_seen.is_empty(), "{:?}", s.not_seen);
    assert_eq!(s.unnamed.keys().copied().collect::<Vec<_>>(), [999]);
    assert!(
        s.summary().contains("999 (by /usr/sbin/nginx)"),
        "{}",
        s.summary()
    );

    let profile = s.profile().unwrap();
    assert_eq!(profile.default_action, "SCMP_ACT_ERRNO");
    assert_eq!(profile.default_errno_ret, Some(1));
    assert_eq!(profile.architectures, ["SCMP_ARCH_X86_64"]);
    assert_eq!(profile.syscalls[0].action, "SCMP_ACT_ALLOW");
    assert_eq!(profile.syscalls[0].names.len(), s.allowed.len());
    assert!(!profile.syscalls[0].names.contains(&"ptrace".to_owned()));
    // clone3 not seen: ENOSYS, so that libc falls back to clone.
    assert_eq!(profile.syscalls[1].names, ["clone3"]);
    assert_eq!(profile.syscalls[1].errno_ret, Some(38));

    assert!(s.explain("bind").contains("/usr/sbin/nginx made it"));
    assert_eq!(
        s.explain("ptrace"),
        "refused: no observed executable made it"
    );
    assert!(s.explain("execve").contains("OCI runtime"));
}

#[test]
fn the_same_session_gives_the_same_bytes() {
    let a = nginx_model();
    let b = nginx_model();
    let ja = seccomp(&a, &a.executables(), ENFORCE)
        .profile_json()
        .unwrap();
    let jb = seccomp(&b, &b.executables(), ENFORCE)
        .profile_json()
        .unwrap();
    assert_eq!(ja, jb);
    // Sorted names, so the order events came in does not matter.
    let names: Vec<String> = serde_json::from_str::<Profile>(&ja).unwrap().syscalls[0]
        .names
        .clone();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
}

#[test]
fn log_mode_logs_off_mode_and_no_evidence_write_nothing() {
    let m = nginx_model();
    let log = seccomp(
        &m,
        &m.executables(),
        SeccompInputs {
            mode: SeccompMode::Log,
            ..ENFORCE
        },
    );
    let profile = log.profile().unwrap();
    assert_eq!(profile.default_action, "SCMP_ACT_LOG");
    assert_eq!(
        profile.syscalls.len(),
        2,
        "the trial refuses clone3 as enforcing would"
    );
    assert_eq!(profile.syscalls[1].errno_ret, Some(38));
    let off = seccomp(
        &m,
        &m.executables(),
        SeccompInputs {
            mode: SeccompMode::Off,
            ..ENFORCE
        },
    );
    assert_eq!(off.profile(), None);
    // A session recorded before the tracer sent syscall evidence.
    let old = Model::from_events(&[exec(10, "/usr/sbin/nginx")]);
    let s = seccomp(&old, &old.executables(), ENFORCE);
    assert_eq!(s.profile(), None);
    assert!(s.summary().contains("WARNING"), "{}", s.summary());
}

#[test]
fn without_no_new_privileges_the_runtime_changes_ids_after_the_filter() {
    let m = nginx_model();
    let nnp = seccomp(&m, &m.executables(), ENFORCE);
    let privs = seccomp(
        &m,
        &m.executables(),
        SeccompInputs {
            no_new_privileges: false,
            ..ENFORCE
        },
    );
    assert!(!nnp.allowed.contains_key("setuid") && !nnp.allowed.contains_key("capset"));
    assert!(privs.allowed["setuid"].contains(&Grant::Runtime));
    assert!(privs.allowed["capset"].contains(&Grant::Runtime));
}

#[test]
fn a_partition_gets_only_its_executables_syscalls() {
    let m = Model::from_events(&[
        exec(10, "/usr/sbin/nginx"),
        seen(10, "nginx", 49),
        exec(11, "/usr/sbin/php-fpm"),
        seen(11, "php-fpm", 62), // kill
    ]);
    let web = seccomp(&m, &BTreeSet::from([exe("/usr/sbin/nginx")]), ENFORCE);
    assert!(web.allowed.contains_key("bind") && !web.allowed.contains_key("kill"));
    // A forked child runs its parent's program until it execs.
    let m = Model::from_events(&[
        exec(10, "/usr/sbin/nginx"),
        crate::testing::call(10, 57, [0; 6], &[]),
        Event {
            kind: EventKind::Fork {
                child_pid: 12,
                child_tid: 12,
                thread: false,
                clone_flags: 17,
            },
            ..seen(10, "nginx", 0)
        },
        seen(12, "nginx", 62),
    ]);
    let s = seccomp(&m, &m.executables(), ENFORCE);
    assert_eq!(
        s.allowed["kill"],
        [Grant::Made {
            exe: exe("/usr/sbin/nginx")
        }]
    );
}

#[test]
fn what_an_observed_call_implies_is_allowed() {
    // redis was seen forking its rewrite child and installing handlers,
    // but the run ended before the child exited and before any signal.
    let m = Model::from_events(&[
        exec(10, "/usr/bin/redis-server"),
        seen(10, "redis-server", 13), // rt_sigaction
        seen(10, "redis-server", 56), // clone
        exec(11, "/usr/bin/quiet"),
        seen(11, "quiet", 0),
    ]);
    let s = seccomp(&m, &m.executables(), ENFORCE);
    let by = |name: &str| -> Vec<String> {
        s.allowed
            .get(name)
            .map(|g| g.iter().map(Grant::to_string).collect())
            .unwrap_or_default()
    };
    for name in ["exit_group", "exit"] {
        assert!(
            by(name).contains(&"/usr/bin/redis-server runs, so it ends".to_owned()),
            "{name}"
        );
        assert!(
            by(name).contains(&"/usr/bin/quiet runs, so it ends".to_owned()),
            "{name}"
        );
    }
    assert!(
        by("wait4").contains(&"/usr/bin/redis-server starts processes, and reaps them".to_owned())
    );
    assert!(
        by("rt_sigreturn")
            .iter()
            .any(|g| g.contains("/usr/bin/redis-server installed a signal handler"))
    );
    assert!(
        !by("wait4").iter().any(|g| g.contains("quiet")),
        "quiet starts nothing: {:?}",
        by("wait4")
    );
}

#[test]
fn a_program_that_created_files_may_remove_them() {
    let m = Model::from_events(&[
        exec(10, "/usr/bin/redis-server"),
        crate::testing::open(10, "/var/lib/redis/appendonly.aof.1.incr.aof", 0o101),
        seen(10, "redis-server", 2),
        exec(11, "/usr/bin/reader"),
        crate::testing::open(11, "/etc/passwd", 0),
    ]);
    let s = seccomp(&m, &m.executables(), ENFORCE);
    for name in ["unlink", "unlinkat"] {
        assert_eq!(
            s.allowed[name],
            [Grant::MayRemove {
                exe: exe("/usr/bin/redis-server"),
                created: p("/var/lib/redis/appendonly.aof.1.incr.aof"),
            }],
            "{name}"
        );
    }
    assert!(
        s.explain("unlink")
            .contains("/usr/bin/redis-server created /var/lib/redis/appendonly.aof.1.incr.aof")
    );
    let reader = seccomp(&m, &BTreeSet::from([exe("/usr/bin/reader")]), ENFORCE);
    assert!(!reader.allowed.contains_key("unlink"), "it created nothing");
}

#[test]
fn a_process_met_running_is_named() {
    let m = Model::from_events(&[seen(10, "old", 49)]);
    let s = seccomp(&m, &m.executables(), ENFORCE);
    assert_eq!(s.not_seen.len(), 1);
    assert!(!s.allowed.contains_key("bind"));
    assert!(s.summary().contains("exec was not seen"), "{}", s.summary());
}

#[test]
fn names_and_numbers_come_from_the_x86_64_table() {
    assert_eq!(Arch::X86_64.name(0), Some("read"));
    assert_eq!(Arch::X86_64.name(435), Some("clone3"));
    assert_eq!(Arch::X86_64.number("openat"), Some(257));
    assert_eq!(Arch::X86_64.number("no_such_call"), None);
    assert_eq!(SeccompMode::parse("log"), Ok(SeccompMode::Log));
    assert!(SeccompMode::parse("audit").is_err());
}

/// A session traced with per-syscall hooks says which syscalls ran no
/// program: those are allowed, as nobody could be seen making them; the
/// hooked ones still need evidence.
#[test]
fn syscalls_the_tracer_did_not_hook_are_allowed_unseen_and_only_those() {
    let unhooked = |nrs: Vec<u32>| Event {
        ts_ns: 0,
        pid: 0,
        tid: 0,
        ppid: 0,
        cgroup: CgroupId(0),
        comm: String::new(),
        kind: EventKind::Unhooked { nrs },
    };
    let mut events = vec![unhooked(vec![0, 1, 202])];
    events.extend([exec(10, "/usr/sbin/nginx"), seen(10, "nginx", 49)]);
    let m = Model::from_events(&events);
    let s = seccomp(&m, &m.executables(), ENFORCE);
    for name in ["read", "write", "futex"] {
        assert!(s.allowed[name].contains(&Grant::Unhooked), "{name}");
    }
    assert!(
        !s.allowed.contains_key("epoll_wait"),
        "hooked, and not seen"
    );
    assert!(
        s.explain("read").contains("not hooked"),
        "{}",
        s.explain("read")
    );

    // Traced with every syscall hooked: nothing is allowed unseen.
    let m = nginx_model();
    let s = seccomp(&m, &m.executables(), ENFORCE);
    assert!(s.allowed.values().flatten().all(|g| *g != Grant::Unhooked));
}
