use super::*;

fn header(pid: u32) -> RawHeader {
    RawHeader {
        pid,
        tid: pid,
        ppid: 1,
        ts_ns: 0,
        cgroup_id: 9,
        comm: "t".into(),
    }
}

fn text(s: &str) -> Option<RawStr> {
    Some(RawStr::Text {
        bytes: s.as_bytes().to_vec(),
        truncated: false,
    })
}

fn call(
    pid: u32,
    nr: u32,
    args: [u64; 6],
    ret: i64,
    s0: Option<RawStr>,
    s1: Option<RawStr>,
) -> RawRecord {
    RawRecord::Syscall(RawSyscall {
        header: header(pid),
        nr,
        flags: 0,
        args,
        ret,
        enter_ts_ns: 0,
        fold_key: [0, 0],
        str0: s0,
        str1: s1,
        argv: None,
        sockaddr: None,
    })
}

fn one(r: &mut Resolver, rec: RawRecord) -> SyscallEvent {
    let mut events = r.handle(rec);
    assert_eq!(events.len(), 1);
    match events.remove(0).kind {
        EventKind::Syscall(s) => *s,
        other => panic!("not a syscall: {other:?}"),
    }
}

fn path(s: &SyscallEvent, role: PathRole) -> Option<String> {
    s.path(role)
        .and_then(|p| p.path.as_ref())
        .map(|p| p.to_string())
}

const CWD: u64 = AT_FDCWD as i64 as u64;

fn seeded() -> Resolver {
    let mut r = Resolver::new();
    r.seed_process(
        10,
        ProcessRoot::default(),
        ContainerPath::new("/srv"),
        vec![],
    );
    r
}

#[test]
fn chdir_then_relative_open_and_dirfd() {
    let mut r = seeded();
    one(&mut r, call(10, nr::CHDIR, [0; 6], 0, text("www"), None));
    let open = one(
        &mut r,
        call(
            10,
            nr::OPENAT,
            [CWD, 0, 0, 0, 0, 0],
            3,
            text("html/index.html"),
            None,
        ),
    );
    assert_eq!(
        path(&open, PathRole::Target).as_deref(),
        Some("/srv/www/html/index.html")
    );
    let dir = one(&mut r, call(10, nr::OPEN, [0; 6], 4, text("../etc"), None));
    assert_eq!(path(&dir, PathRole::Target).as_deref(), Some("/srv/etc"));
    let via_fd = one(
        &mut r,
        call(10, nr::OPENAT, [4, 0, 0, 0, 0, 0], 5, text("passwd"), None),
    );
    assert_eq!(
        path(&via_fd, PathRole::Target).as_deref(),
        Some("/srv/etc/passwd")
    );
    // After close, the dirfd means nothing: unresolved, with the reason.
    one(
        &mut r,
        call(10, nr::CLOSE, [4, 0, 0, 0, 0, 0], 0, None, None),
    );
    let stale = one(
        &mut r,
        call(10, nr::OPENAT, [4, 0, 0, 0, 0, 0], -9, text("group"), None),
    );
    let p = stale.path(PathRole::Target).unwrap();
    assert_eq!(p.path, None);
    assert!(
        matches!(&p.resolution, Resolution::Unresolved(why) if why.contains("dirfd 4")),
        "{p:?}"
    );
    assert_eq!(stale.errno.as_deref(), Some("EBADF"));
}

#[test]
fn failed_open_keeps_errno_and_path() {
    let mut r = seeded();
    let e = one(
        &mut r,
        call(10, nr::OPENAT, [CWD, 0, 0, 0, 0, 0], -2, text("nope"), None),
    );
    assert_eq!(e.errno.as_deref(), Some("ENOENT"));
    assert_eq!(e.ret, Some(-2));
    assert_eq!(path(&e, PathRole::Target).as_deref(), Some("/srv/nope"));
    assert!(!r.fds(r.processes[&10]).contains_key(&-2));
}

#[test]
fn rename_symlink_readlink_roles() {
    let mut r = seeded();
    let mv = one(
        &mut r,
        call(
            10,
            nr::RENAMEAT2,
            [CWD, 0, CWD, 0, 0, 0],
            0,
            text("a"),
            text("/b"),
        ),
    );
    assert_eq!(path(&mv, PathRole::Old).as_deref(), Some("/srv/a"));
    assert_eq!(path(&mv, PathRole::New).as_deref(), Some("/b"));
    let ln = one(
        &mut r,
        call(10, nr::SYMLINK, [0; 6], 0, text("../x"), text("l")),
    );
    let content = ln.path(PathRole::LinkContent).unwrap();
    assert_eq!(
        (content.raw.as_str(), &content.resolution, &content.path),
        ("../x", &Resolution::Literal, &None)
    );
    assert_eq!(path(&ln, PathRole::New).as_deref(), Some("/srv/l"));
    let rl = one(
        &mut r,
        call(10, nr::READLINK, [0; 6], 4, text("l"), text("../x")),
    );
    assert_eq!(path(&rl, PathRole::Target).as_deref(), Some("/srv/l"));
    assert_eq!(rl.path(PathRole::LinkValue).unwrap().raw, "../x");
}

#[test]
fn at_empty_path_means_the_fd_itself() {
    let mut r = seeded();
    one(
        &mut r,
        call(10, nr::OPEN, [0; 6], 7, text("/etc/hosts"), None),
    );
    let st = one(
        &mut r,
        call(
            10,
            nr::NEWFSTATAT,
            [7, 0, 0, AT_EMPTY_PATH, 0, 0],
            0,
            text(""),
            None,
        ),
    );
    assert_eq!(path(&st, PathRole::Target).as_deref(), Some("/etc/hosts"));
    // fstat of a descriptor that names no path (a pipe on stdout).
    let pipe = one(
        &mut r,
        call(
            10,
            nr::NEWFSTATAT,
            [1, 0, 0, AT_EMPTY_PATH, 0, 0],
            0,
            text(""),
            None,
        ),
    );
    assert_eq!(
        pipe.path(PathRole::Target).unwrap().resolution,
        Resolution::Descriptor
    );
    let bad = one(
        &mut r,
        call(10, nr::NEWFSTATAT, [7, 0, 0, 0, 0, 0], -2, text(""), None),
    );
    assert_eq!(bad.path(PathRole::Target).unwrap().path, None);
}

#[test]
fn unknown_process_has_unknown_cwd() {
    let mut r = Resolver::new();
    let e = one(&mut r, call(99, nr::STAT, [0; 6], 0, text("rel"), None));
    let p = e.path(PathRole::Target).unwrap();
    assert!(matches!(&p.resolution, Resolution::Unresolved(why) if why.contains("cwd unknown")));
    let abs = one(
        &mut r,
        call(99, nr::STAT, [0; 6], 0, text("/abs/./x"), None),
    );
    assert_eq!(path(&abs, PathRole::Target).as_deref(), Some("/abs/x"));
}

#[test]
fn a_return_value_outside_the_errno_range_has_no_errno() {
    // Found by the ring_record fuzzer: i64::MIN cannot be negated.
    let mut r = seeded();
    let e = one(
        &mut r,
        call(10, nr::OPEN, [0; 6], i64::MIN, text("/x"), None),
    );
    assert_eq!((e.ret, e.errno), (Some(i64::MIN), None));
    let e = one(&mut r, call(10, nr::OPEN, [0; 6], -2, text("/x"), None));
    assert_eq!(e.errno.as_deref(), Some("ENOENT"));
}

#[test]
fn snapshotter_fills_in_processes_seen_late() {
    let mut r = Resolver::with_snapshotter(Box::new(|pid| ProcessSnapshot {
        cwd: ContainerPath::new(&format!("/proc-{pid}")),
        fds: vec![(3, ContainerPath::new("/data").unwrap())],
        exe: ContainerPath::new("/usr/bin/old"),
        argv: vec!["old".into(), "-d".into()],
        ..Default::default()
    }));
    let mut events = r.handle(call(5, nr::OPENAT, [3, 0, 0, 0, 0, 0], 4, text("f"), None));
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(
        events[0].kind,
        EventKind::Running {
            exe: ContainerPath::new("/usr/bin/old"),
            argv: vec!["old".into(), "-d".into()],
            cwd: ContainerPath::new("/proc-5"),
        },
        "the process seen running comes first"
    );
    assert_eq!(events[0].pid, 5);
    let e = match events.remove(1).kind {
        EventKind::Syscall(s) => *s,
        other => panic!("not a syscall: {other:?}"),
    };
    assert_eq!(path(&e, PathRole::Target).as_deref(), Some("/data/f"));
    let c = one(&mut r, call(5, nr::OPEN, [0; 6], 6, text("g"), None));
    assert_eq!(path(&c, PathRole::Target).as_deref(), Some("/proc-5/g"));
}

#[test]
fn fork_copies_tables_and_threads_share_them() {
    let mut r = seeded();
    one(&mut r, call(10, nr::OPEN, [0; 6], 3, text("/var"), None));
    r.handle(RawRecord::Fork {
        header: header(10),
        child_tid: 11,
        clone_flags: 17,
    });
    // The child changes directory; the parent's cwd must not move.
    one(&mut r, call(11, nr::CHDIR, [0; 6], 0, text("/tmp"), None));
    let parent = one(&mut r, call(10, nr::STAT, [0; 6], 0, text("x"), None));
    assert_eq!(path(&parent, PathRole::Target).as_deref(), Some("/srv/x"));
    let child_fd = one(
        &mut r,
        call(11, nr::OPENAT, [3, 0, 0, 0, 0, 0], 4, text("log"), None),
    );
    assert_eq!(
        path(&child_fd, PathRole::Target).as_deref(),
        Some("/var/log"),
        "fds are inherited"
    );
    // A thread: events carry the process id, so it shares the cwd.
    let forks = r.handle(RawRecord::Fork {
        header: header(10),
        child_tid: 12,
        clone_flags: CLONE_THREAD | CLONE_FS | CLONE_FILES,
    });
    assert!(matches!(
        forks[0].kind,
        EventKind::Fork {
            child_pid: 10,
            thread: true,
            ..
        }
    ));
    // CLONE_FS shares the cwd between processes.
    r.handle(RawRecord::Fork {
        header: header(10),
        child_tid: 13,
        clone_flags: CLONE_FS,
    });
    one(&mut r, call(13, nr::CHDIR, [0; 6], 0, text("/opt"), None));
    let shared = one(&mut r, call(10, nr::STAT, [0; 6], 0, text("y"), None));
    assert_eq!(path(&shared, PathRole::Target).as_deref(), Some("/opt/y"));
}

#[test]
fn exit_forgets_the_process() {
    let mut r = seeded();
    r.handle(RawRecord::Fork {
        header: header(10),
        child_tid: 11,
        clone_flags: 17,
    });
    assert_eq!(r.tracked_processes(), 2);
    let e = r.handle(RawRecord::Exit {
        header: header(11),
        group_dead: true,
    });
    assert!(matches!(
        e[0].kind,
        EventKind::Exit {
            process_exited: true
        }
    ));
    assert_eq!(r.tracked_processes(), 1);
    assert_eq!(r.fd_tables.len(), 1, "the child's table is freed");
}

#[test]
fn socket_addresses_decode() {
    let cwd = ContainerPath::new("/run").unwrap();
    let mut unix = vec![1, 0];
    unix.extend_from_slice(b"app.sock\0\0");
    assert_eq!(
        decode_sockaddr(&unix, |raw| Some(cwd.join(raw))),
        SocketAddress::Unix {
            raw: "app.sock".into(),
            path: ContainerPath::new("/run/app.sock")
        }
    );
    let mut abs = vec![1, 0, 0];
    abs.extend_from_slice(b"dbus\0");
    assert_eq!(
        decode_sockaddr(&abs, |_| None),
        SocketAddress::Abstract {
            name: "dbus".into()
        }
    );
    assert_eq!(
        decode_sockaddr(&[1, 0], |_| None),
        SocketAddress::UnixUnnamed
    );
    let inet = [2, 0, 0x1f, 0x90, 127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(
        decode_sockaddr(&inet, |_| None),
        SocketAddress::Inet {
            addr: "127.0.0.1:8080".parse().unwrap()
        }
    );
    let mut v6 = vec![10, 0, 0, 80, 0, 0, 0, 0];
    v6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
    assert_eq!(
        decode_sockaddr(&v6, |_| None),
        SocketAddress::Inet {
            addr: "[::1]:80".parse().unwrap()
        }
    );
    assert_eq!(
        decode_sockaddr(&[16, 0, 1, 2], |_| None),
        SocketAddress::Other { family: 16 }
    );
}

#[test]
fn listener_address_follows_accepted_sockets() {
    let mut r = seeded();
    one(
        &mut r,
        call(10, nr::SOCKET, [2, 1, 0, 0, 0, 0], 3, None, None),
    );
    let RawRecord::Syscall(mut bind) = call(10, nr::BIND, [3, 0, 16, 0, 0, 0], 0, None, None)
    else {
        unreachable!()
    };
    bind.sockaddr = Some(vec![2, 0, 0x0c, 0xea, 0, 0, 0, 0]);
    one(&mut r, RawRecord::Syscall(bind));
    let listen = one(
        &mut r,
        call(10, nr::LISTEN, [3, 128, 0, 0, 0, 0], 0, None, None),
    );
    let want = SocketAddress::Inet {
        addr: "0.0.0.0:3306".parse().unwrap(),
    };
    assert_eq!(listen.fd_addr, Some(want.clone()));
    one(
        &mut r,
        call(10, nr::ACCEPT4, [3, 0, 0, 0, 0, 0], 5, None, None),
    );
    let close = one(
        &mut r,
        call(10, nr::SENDTO, [5, 0, 0, 0, 0, 0], 1, None, None),
    );
    assert_eq!(close.fd_addr, Some(want));
}

#[test]
fn exec_merges_entry_and_exit_and_drops_cloexec_fds() {
    let mut r = seeded();
    one(
        &mut r,
        call(
            10,
            nr::OPEN,
            [0, O_CLOEXEC, 0, 0, 0, 0],
            3,
            text("/etc/a"),
            None,
        ),
    );
    one(&mut r, call(10, nr::OPEN, [0; 6], 4, text("/etc/b"), None));
    let RawRecord::Syscall(mut entry) = call(10, nr::EXECVE, [0; 6], 0, text("bin/tool"), None)
    else {
        unreachable!()
    };
    entry.argv = Some(vec!["tool".into(), "-v".into()]);
    assert!(
        r.handle(RawRecord::ExecArgs(entry)).is_empty(),
        "entry waits for the exit"
    );
    let exec = one(&mut r, call(10, nr::EXECVE, [0; 6], 0, None, None));
    assert_eq!(
        path(&exec, PathRole::Target).as_deref(),
        Some("/srv/bin/tool")
    );
    assert_eq!(exec.argv, Some(vec!["tool".into(), "-v".into()]));
    let table = r.fds(r.processes[&10]);
    assert!(
        !table.contains_key(&3) && table.contains_key(&4),
        "O_CLOEXEC fd closed by exec"
    );
    let orphan = one(&mut r, call(10, nr::EXECVE, [0; 6], -2, None, None));
    assert_eq!(
        orphan.incomplete,
        vec!["exec entry (filename, argv) not seen".to_owned()]
    );
}

/// A raw exec record of `kind` (entry, image, exit) for tests.
fn exec_record(
    tid: u32,
    nr: u32,
    args: [u64; 6],
    ret: i64,
    flags: u32,
    name: Option<RawStr>,
    argv: Option<&[&str]>,
) -> RawSyscall {
    let RawRecord::Syscall(mut raw) = call(tid, nr, args, ret, name, None) else {
        unreachable!()
    };
    raw.flags = flags;
    raw.argv = argv.map(|a| a.iter().map(|s| s.to_string()).collect());
    raw
}

/// Tid 10's execve, as the kernel reports it at entry and, once loaded,
/// its image (`ret` 10 is the image record's old pid).
fn execve_entry(flags: u32, name: Option<RawStr>, argv: &[&str]) -> RawRecord {
    RawRecord::ExecArgs(exec_record(
        10,
        nr::EXECVE,
        [0; 6],
        0,
        flags,
        name,
        Some(argv),
    ))
}

fn execve_image(name: &str, argv: &[&str]) -> RawRecord {
    RawRecord::ExecImage(exec_record(
        10,
        nr::EXECVE,
        [0; 6],
        10,
        0,
        text(name),
        Some(argv),
    ))
}

#[test]
fn the_exec_of_a_program_of_another_abi_is_finished_when_it_is_reported() {
    let mut r = seeded();
    assert!(
        r.handle(execve_entry(0, text("/opt/old32"), &["old32"]))
            .is_empty()
    );
    assert!(r.handle(execve_image("/opt/old32", &["old32"])).is_empty());
    // Its exit is a 32-bit one, never seen: the record finishes the exec.
    let events = r.handle(RawRecord::ForeignExec {
        header: header(10),
        elf_class: 1,
        machine: 3,
    });
    assert_eq!(events.len(), 2, "{events:?}");
    let exec = events[0].syscall().expect("the exec first");
    assert_eq!(exec.ret, Some(0));
    assert!(exec.incomplete.is_empty(), "{:?}", exec.incomplete);
    assert_eq!(path(exec, PathRole::Target).as_deref(), Some("/opt/old32"));
    assert!(matches!(
        events[1].kind,
        EventKind::ForeignAbi {
            elf_class: 1,
            machine: 3
        }
    ));
    // Nothing is left to report at the process's exit.
    assert!(r.pending_exec.is_empty());
    let exit = r.handle(RawRecord::Exit {
        header: header(10),
        group_dead: true,
    });
    assert!(exit.iter().all(|e| e.syscall().is_none()), "{exit:?}");
    // Reported with no exec pending (its entry was lost): the event alone.
    let alone = r.handle(RawRecord::ForeignExec {
        header: header(11),
        elf_class: 1,
        machine: 3,
    });
    assert_eq!(alone.len(), 1, "{alone:?}");
}

#[test]
fn exec_names_unread_at_entry_come_from_the_loaded_image() {
    let mut r = seeded();
    let fault = flags::STR0_FAULT | flags::STR1_FAULT;
    assert!(
        r.handle(execve_entry(fault, Some(RawStr::Fault), &[""]))
            .is_empty()
    );
    assert!(
        r.handle(execve_image("/bin/sh", &["sh", "-c", "x"]))
            .is_empty()
    );
    let exec = one(&mut r, call(10, nr::EXECVE, [0; 6], 0, None, None));
    assert_eq!(path(&exec, PathRole::Target).as_deref(), Some("/bin/sh"));
    assert_eq!(exec.argv, Some(vec!["sh".into(), "-c".into(), "x".into()]));
    assert!(exec.incomplete.is_empty(), "{:?}", exec.incomplete);
    assert_eq!(exec.unreadable_names(), 0);

    // Names read at entry stay as the program passed them (a script's
    // image has the interpreter's argv); a relative image name joins the cwd.
    r.handle(execve_entry(0, text("run.sh"), &["./run.sh"]));
    r.handle(execve_image("run.sh", &["/bin/sh", "./run.sh"]));
    let exec = one(&mut r, call(10, nr::EXECVE, [0; 6], 0, None, None));
    assert_eq!(
        path(&exec, PathRole::Target).as_deref(),
        Some("/srv/run.sh")
    );
    assert_eq!(exec.argv, Some(vec!["./run.sh".into()]));
}

#[test]
fn a_failed_exec_takes_the_names_read_again_at_exit() {
    let mut r = seeded();
    let fault = flags::STR0_FAULT | flags::STR1_FAULT;
    let entry = exec_record(10, nr::EXECVE, [0; 6], 0, fault, Some(RawStr::Fault), None);
    r.handle(RawRecord::ExecArgs(entry));
    let exit = exec_record(
        10,
        nr::EXECVE,
        [0; 6],
        -2,
        0,
        text("nope"),
        Some(&["nope", "-x"]),
    );
    let exec = one(&mut r, RawRecord::Syscall(exit));
    assert_eq!(path(&exec, PathRole::Target).as_deref(), Some("/srv/nope"));
    assert_eq!(exec.argv, Some(vec!["nope".into(), "-x".into()]));
    assert_eq!(exec.errno.as_deref(), Some("ENOENT"));
    assert_eq!(exec.unreadable_names(), 0);

    // Unreadable at exit too: the event says so and counts both names.
    let entry = exec_record(10, nr::EXECVE, [0; 6], 0, fault, Some(RawStr::Fault), None);
    r.handle(RawRecord::ExecArgs(entry));
    let exit = exec_record(10, nr::EXECVE, [0; 6], -2, fault, Some(RawStr::Fault), None);
    let exec = one(&mut r, RawRecord::Syscall(exit));
    assert_eq!(exec.unreadable_names(), 2, "{:?}", exec.incomplete);
}

#[test]
fn execveat_through_a_dirfd_resolves_the_kernels_dev_fd_name() {
    let mut r = seeded();
    one(
        &mut r,
        call(10, nr::OPEN, [0; 6], 7, text("/opt/app"), None),
    );
    // execveat(7, "bin/tool", ...) with the entry read faulted; the
    // kernel names the file /dev/fd/7/bin/tool.
    let args = [7, 0, 0, 0, 0, 0];
    let fault = flags::STR0_FAULT | flags::STR1_FAULT;
    let entry = exec_record(10, nr::EXECVEAT, args, 0, fault, Some(RawStr::Fault), None);
    r.handle(RawRecord::ExecArgs(entry));
    // Called from thread 12, which takes the leader's id 10.
    let mut image = exec_record(
        10,
        nr::EXECVEAT,
        args,
        12,
        0,
        text("/dev/fd/7/bin/tool"),
        Some(&["tool"]),
    );
    image.header.tid = 10;
    r.handle(RawRecord::ExecImage(image));
    let exec = one(&mut r, call(10, nr::EXECVEAT, args, 0, None, None));
    assert_eq!(
        path(&exec, PathRole::Target).as_deref(),
        Some("/opt/app/bin/tool")
    );
    assert!(r.pending_exec.is_empty());

    // fexecve: execveat(7, "", AT_EMPTY_PATH) is /dev/fd/7.
    let args = [7, 0, 0, 0, AT_EMPTY_PATH, 0];
    let entry = exec_record(10, nr::EXECVEAT, args, 0, fault, Some(RawStr::Fault), None);
    r.handle(RawRecord::ExecArgs(entry));
    let image = exec_record(
        10,
        nr::EXECVEAT,
        args,
        10,
        0,
        text("/dev/fd/7"),
        Some(&["app"]),
    );
    r.handle(RawRecord::ExecImage(image));
    let exec = one(&mut r, call(10, nr::EXECVEAT, args, 0, None, None));
    assert_eq!(path(&exec, PathRole::Target).as_deref(), Some("/opt/app"));
}

#[test]
fn an_image_without_its_entry_still_names_the_exec() {
    let mut r = seeded();
    let image = exec_record(
        10,
        nr::EXECVE,
        [0; 6],
        10,
        0,
        text("/usr/bin/env"),
        Some(&["env"]),
    );
    r.handle(RawRecord::ExecImage(image));
    let exec = one(&mut r, call(10, nr::EXECVE, [0; 6], 0, None, None));
    assert_eq!(
        path(&exec, PathRole::Target).as_deref(),
        Some("/usr/bin/env")
    );
    assert_eq!(exec.argv, Some(vec!["env".into()]));
    assert!(exec.incomplete.is_empty(), "{:?}", exec.incomplete);
}

#[test]
fn dup_and_fcntl_copy_descriptors() {
    let mut r = seeded();
    one(&mut r, call(10, nr::OPEN, [0; 6], 3, text("/d"), None));
    one(
        &mut r,
        call(10, nr::DUP2, [3, 9, 0, 0, 0, 0], 9, None, None),
    );
    one(
        &mut r,
        call(
            10,
            nr::FCNTL,
            [9, F_DUPFD_CLOEXEC, 20, 0, 0, 0],
            20,
            None,
            None,
        ),
    );
    one(
        &mut r,
        call(10, nr::CLOSE_RANGE, [3, 9, 0, 0, 0, 0], 0, None, None),
    );
    let e = one(
        &mut r,
        call(10, nr::OPENAT, [20, 0, 0, 0, 0, 0], 21, text("f"), None),
    );
    assert_eq!(path(&e, PathRole::Target).as_deref(), Some("/d/f"));
    let gone = one(
        &mut r,
        call(10, nr::FCHDIR, [9, 0, 0, 0, 0, 0], -9, None, None),
    );
    assert_eq!(gone.fd_path, None);
}

fn with_addr(rec: RawRecord, addr: Vec<u8>) -> RawRecord {
    let RawRecord::Syscall(mut s) = rec else {
        unreachable!()
    };
    s.sockaddr = Some(addr);
    RawRecord::Syscall(s)
}

#[test]
fn socket_calls_name_their_addresses() {
    let mut r = seeded();
    one(
        &mut r,
        call(10, nr::CHDIR, [0; 6], 0, text("/run/app"), None),
    );
    one(
        &mut r,
        call(10, nr::SOCKET, [1, 1, 0, 0, 0, 0], 3, None, None),
    );
    let mut unix = vec![1, 0];
    unix.extend_from_slice(b"ctl.sock\0");
    let bind = one(
        &mut r,
        with_addr(call(10, nr::BIND, [3, 0, 11, 0, 0, 0], 0, None, None), unix),
    );
    let want = SocketAddress::Unix {
        raw: "ctl.sock".into(),
        path: ContainerPath::new("/run/app/ctl.sock"),
    };
    assert_eq!(bind.addr, Some(want.clone()));
    let listen = one(
        &mut r,
        call(10, nr::LISTEN, [3, 8, 0, 0, 0, 0], 0, None, None),
    );
    assert_eq!(listen.fd_addr, Some(want));

    one(
        &mut r,
        call(10, nr::SOCKET, [1, 1, 0, 0, 0, 0], 4, None, None),
    );
    let mut abs = vec![1, 0, 0];
    abs.extend_from_slice(b"bus\0name\0\0");
    let conn = one(
        &mut r,
        with_addr(
            call(10, nr::CONNECT, [4, 0, 13, 0, 0, 0], 0, None, None),
            abs,
        ),
    );
    assert_eq!(
        conn.addr,
        Some(SocketAddress::Abstract {
            name: "bus\0name".into()
        })
    );

    one(
        &mut r,
        call(10, nr::SOCKET, [2, 1, 0, 0, 0, 0], 5, None, None),
    );
    let inet = vec![2, 0, 0x1f, 0x90, 127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
    let refused = one(
        &mut r,
        with_addr(
            call(10, nr::CONNECT, [5, 0, 16, 0, 0, 0], -111, None, None),
            inet,
        ),
    );
    let want = SocketAddress::Inet {
        addr: "127.0.0.1:8080".parse().unwrap(),
    };
    assert_eq!(
        (refused.addr, refused.errno.as_deref()),
        (Some(want), Some("ECONNREFUSED"))
    );
    // A failed connect names no peer for the socket.
    let send = one(
        &mut r,
        call(10, nr::SENDTO, [5, 0, 0, 0, 0, 0], -107, None, None),
    );
    assert_eq!(send.fd_addr, None);
}

#[test]
fn fchdir_moves_the_cwd_to_the_fd() {
    let mut r = seeded();
    one(
        &mut r,
        call(10, nr::OPEN, [0; 6], 3, text("/var/lib"), None),
    );
    let cd = one(
        &mut r,
        call(10, nr::FCHDIR, [3, 0, 0, 0, 0, 0], 0, None, None),
    );
    assert_eq!(cd.fd_path, ContainerPath::new("/var/lib"));
    let e = one(&mut r, call(10, nr::MKDIR, [0; 6], 0, text("apt"), None));
    assert_eq!(path(&e, PathRole::Target).as_deref(), Some("/var/lib/apt"));
}

fn target(r: &mut Resolver, pid: u32, nr: u32, name: &str) -> Option<String> {
    let e = one(r, call(pid, nr, [CWD, 0, 0, 0, 0, 0], 0, text(name), None));
    path(&e, PathRole::Target)
}

#[test]
fn chroot_then_open_names_the_file_in_the_container() {
    let mut r = seeded();
    one(
        &mut r,
        call(10, nr::CHDIR, [0; 6], 0, text("/var/spool/postfix"), None),
    );
    let ch = one(&mut r, call(10, nr::CHROOT, [0; 6], 0, text("."), None));
    assert_eq!(
        path(&ch, PathRole::Target).as_deref(),
        Some("/var/spool/postfix")
    );
    assert_eq!(
        target(&mut r, 10, nr::OPEN, "/etc/services").as_deref(),
        Some("/var/spool/postfix/etc/services")
    );
    assert_eq!(
        target(&mut r, 10, nr::OPENAT, "incoming/x").as_deref(),
        Some("/var/spool/postfix/incoming/x")
    );
    // `..` stops at the root, in relative and absolute names alike.
    assert_eq!(
        target(&mut r, 10, nr::STAT, "../../etc/passwd").as_deref(),
        Some("/var/spool/postfix/etc/passwd")
    );
    assert_eq!(
        target(&mut r, 10, nr::STAT, "/../x").as_deref(),
        Some("/var/spool/postfix/x")
    );
    // Descriptors opened inside the root keep their full names.
    one(
        &mut r,
        call(10, nr::OPEN, [0; 6], 3, text("/private"), None),
    );
    let via_fd = one(
        &mut r,
        call(10, nr::OPENAT, [3, 0, 0, 0, 0, 0], 4, text("../smtp"), None),
    );
    assert_eq!(
        path(&via_fd, PathRole::Target).as_deref(),
        Some("/var/spool/postfix/smtp")
    );
    // Exec and unix socket names are inside the root too.
    let mut unix = vec![1, 0];
    unix.extend_from_slice(b"/public/pickup\0");
    let conn = one(
        &mut r,
        with_addr(
            call(10, nr::CONNECT, [5, 0, 17, 0, 0, 0], 0, None, None),
            unix,
        ),
    );
    assert_eq!(
        conn.addr,
        Some(SocketAddress::Unix {
            raw: "/public/pickup".into(),
            path: ContainerPath::new("/var/spool/postfix/public/pickup"),
        })
    );
    let mut rel = vec![1, 0];
    rel.extend_from_slice(b"private/rewrite\0");
    let conn = one(
        &mut r,
        with_addr(
            call(10, nr::CONNECT, [5, 0, 17, 0, 0, 0], 0, None, None),
            rel,
        ),
    );
    assert_eq!(
        conn.addr,
        Some(SocketAddress::Unix {
            raw: "private/rewrite".into(),
            path: ContainerPath::new("/var/spool/postfix/private/rewrite"),
        })
    );
}

#[test]
fn relative_chroot_and_chroot_without_chdir() {
    let mut r = seeded();
    // Relative to the cwd (/srv); the cwd stays outside the new root.
    one(&mut r, call(10, nr::CHROOT, [0; 6], 0, text("jail"), None));
    assert_eq!(
        target(&mut r, 10, nr::OPEN, "/bin/sh").as_deref(),
        Some("/srv/jail/bin/sh")
    );
    assert_eq!(
        target(&mut r, 10, nr::STAT, "x").as_deref(),
        Some("/srv/x"),
        "the cwd did not move"
    );
    one(&mut r, call(10, nr::CHDIR, [0; 6], 0, text("/"), None));
    assert_eq!(
        target(&mut r, 10, nr::STAT, "x").as_deref(),
        Some("/srv/jail/x")
    );
    // A chroot inside a chroot is relative to the first root.
    one(
        &mut r,
        call(10, nr::CHROOT, [0; 6], 0, text("/inner"), None),
    );
    assert_eq!(
        target(&mut r, 10, nr::OPEN, "/f").as_deref(),
        Some("/srv/jail/inner/f")
    );
}

#[test]
fn fchdir_then_chroot_dot() {
    let mut r = seeded();
    one(
        &mut r,
        call(10, nr::OPEN, [0; 6], 3, text("/var/empty/sshd"), None),
    );
    one(
        &mut r,
        call(10, nr::FCHDIR, [3, 0, 0, 0, 0, 0], 0, None, None),
    );
    one(&mut r, call(10, nr::CHROOT, [0; 6], 0, text("."), None));
    assert_eq!(
        target(&mut r, 10, nr::OPEN, "/dev/log").as_deref(),
        Some("/var/empty/sshd/dev/log")
    );
}

#[test]
fn a_failed_chroot_changes_nothing() {
    let mut r = seeded();
    let e = one(
        &mut r,
        call(10, nr::CHROOT, [0; 6], -1, text("/jail"), None),
    );
    assert_eq!(e.errno.as_deref(), Some("EPERM"));
    assert_eq!(
        target(&mut r, 10, nr::OPEN, "/etc/hosts").as_deref(),
        Some("/etc/hosts")
    );
}

#[test]
fn fork_copies_the_root_and_clone_fs_shares_it() {
    let mut r = seeded();
    r.handle(RawRecord::Fork {
        header: header(10),
        child_tid: 11,
        clone_flags: 17,
    });
    r.handle(RawRecord::Fork {
        header: header(10),
        child_tid: 12,
        clone_flags: CLONE_FS,
    });
    // The copy's chroot moves neither the parent nor its sibling.
    one(&mut r, call(11, nr::CHROOT, [0; 6], 0, text("/a"), None));
    assert_eq!(target(&mut r, 11, nr::OPEN, "/f").as_deref(), Some("/a/f"));
    assert_eq!(target(&mut r, 10, nr::OPEN, "/f").as_deref(), Some("/f"));
    // A child forked after the chroot inherits it.
    r.handle(RawRecord::Fork {
        header: header(11),
        child_tid: 13,
        clone_flags: 17,
    });
    assert_eq!(target(&mut r, 13, nr::OPEN, "/g").as_deref(), Some("/a/g"));
    // CLONE_FS: a chroot by either moves both.
    one(&mut r, call(12, nr::CHROOT, [0; 6], 0, text("/b"), None));
    assert_eq!(target(&mut r, 10, nr::OPEN, "/f").as_deref(), Some("/b/f"));
}

#[test]
fn an_unknown_root_leaves_names_unresolved_with_the_reason() {
    let mut r = Resolver::new();
    r.seed_process(
        20,
        ProcessRoot::Unknown("its root /x is not below the container's root /y".into()),
        ContainerPath::new("/srv"),
        vec![],
    );
    for name in ["/etc/hosts", "rel"] {
        let e = one(&mut r, call(20, nr::OPEN, [0; 6], 3, text(name), None));
        let p = e.path(PathRole::Target).unwrap();
        assert_eq!(p.path, None);
        assert!(
            matches!(&p.resolution, Resolution::Unresolved(why) if why.contains("not below")),
            "{p:?}"
        );
    }
}

#[test]
fn pivot_root_makes_the_new_root_the_containers_slash() {
    // As runc starts a container: chdir(rootfs); pivot_root(".", ".").
    let mut r = seeded();
    one(
        &mut r,
        call(10, nr::OPEN, [0; 6], 3, text("/rootfs/etc"), None),
    );
    one(&mut r, call(10, nr::OPEN, [0; 6], 4, text("/host"), None));
    one(
        &mut r,
        call(10, nr::CHDIR, [0; 6], 0, text("/rootfs"), None),
    );
    let pr = one(
        &mut r,
        call(10, nr::PIVOT_ROOT, [0; 6], 0, text("."), text(".")),
    );
    assert_eq!(path(&pr, PathRole::Old).as_deref(), Some("/rootfs"));
    assert_eq!(target(&mut r, 10, nr::STAT, "bin").as_deref(), Some("/bin"));
    assert_eq!(target(&mut r, 10, nr::OPEN, "/f").as_deref(), Some("/f"));
    let via_fd = one(
        &mut r,
        call(10, nr::OPENAT, [3, 0, 0, 0, 0, 0], 5, text("hosts"), None),
    );
    assert_eq!(
        path(&via_fd, PathRole::Target).as_deref(),
        Some("/etc/hosts")
    );
    let old_tree = one(
        &mut r,
        call(10, nr::OPENAT, [4, 0, 0, 0, 0, 0], 6, text("x"), None),
    );
    assert!(matches!(
        old_tree.path(PathRole::Target).unwrap().resolution,
        Resolution::Unresolved(_)
    ));
    // A chroot before it is undone: the new root is `/`.
    let mut r = seeded();
    one(&mut r, call(10, nr::CHROOT, [0; 6], 0, text("/jail"), None));
    one(
        &mut r,
        call(
            10,
            nr::PIVOT_ROOT,
            [0; 6],
            0,
            text("/new"),
            text("/new/old"),
        ),
    );
    assert_eq!(target(&mut r, 10, nr::OPEN, "/f").as_deref(), Some("/f"));
}

#[test]
fn a_process_gone_before_its_snapshot_takes_its_parents_root() {
    // /proc showed nothing (root None): the parent's root, when followed.
    let mut r = Resolver::with_snapshotter(Box::new(|_| ProcessSnapshot::default()));
    r.seed_process(
        2,
        ProcessRoot::Known(ContainerPath::new("/jail").unwrap()),
        None,
        vec![],
    );
    let mut h = header(30);
    h.ppid = 2;
    let RawRecord::Syscall(mut open) = call(30, nr::OPEN, [0; 6], 3, text("/f"), None) else {
        unreachable!()
    };
    open.header = h;
    let events = r.handle(RawRecord::Syscall(open));
    let s = events[1].syscall().unwrap();
    assert_eq!(path(s, PathRole::Target).as_deref(), Some("/jail/f"));
    // No followed parent: the container's root.
    let events = r.handle(call(31, nr::OPEN, [0; 6], 3, text("/f"), None));
    let s = events[1].syscall().unwrap();
    assert_eq!(path(s, PathRole::Target).as_deref(), Some("/f"));
}

#[test]
fn snapshot_root_seeds_a_chrooted_process() {
    let mut r = Resolver::with_snapshotter(Box::new(|_| ProcessSnapshot {
        root: Some(ProcessRoot::Known(
            ContainerPath::new("/var/spool/postfix").unwrap(),
        )),
        cwd: ContainerPath::new("/var/spool/postfix"),
        ..Default::default()
    }));
    let mut events = r.handle(call(7, nr::OPEN, [0; 6], 3, text("/pid/master.pid"), None));
    let e = match events.remove(1).kind {
        EventKind::Syscall(s) => *s,
        other => panic!("not a syscall: {other:?}"),
    };
    assert_eq!(
        path(&e, PathRole::Target).as_deref(),
        Some("/var/spool/postfix/pid/master.pid")
    );
}

#[test]
fn cut_and_unreadable_names_are_noted_and_not_trusted() {
    let mut r = seeded();
    let cut = Some(RawStr::Text {
        bytes: b"/deep/dir".to_vec(),
        truncated: true,
    });
    let e = one(&mut r, call(10, nr::OPEN, [0; 6], 3, cut, None));
    let p = e.path(PathRole::Target).unwrap();
    assert!(p.truncated);
    assert_eq!(
        e.incomplete,
        vec![format!(
            "target name cut at {} bytes",
            cimplifier_common::STR_SLOT
        )]
    );
    // fd 3's real name is unknown, so names relative to it are too.
    let rel = one(
        &mut r,
        call(10, nr::OPENAT, [3, 0, 0, 0, 0, 0], 4, text("f"), None),
    );
    assert!(matches!(
        rel.path(PathRole::Target).unwrap().resolution,
        Resolution::Unresolved(_)
    ));

    let e = one(
        &mut r,
        call(10, nr::RENAME, [0; 6], 0, text("a"), Some(RawStr::Fault)),
    );
    assert_eq!(
        e.path(PathRole::New).unwrap().resolution,
        Resolution::Unreadable
    );
    assert_eq!(
        e.incomplete,
        vec!["new name could not be read from the program's memory".to_owned()]
    );
}

#[test]
fn exec_from_a_thread_completes_as_the_leader() {
    let mut r = seeded();
    let RawRecord::Syscall(mut entry) = call(
        10,
        nr::EXECVEAT,
        [CWD, 0, 0, 0, 0, 0],
        0,
        text("/bin/sh"),
        None,
    ) else {
        unreachable!()
    };
    entry.header.tid = 12;
    entry.argv = Some(vec!["sh".into()]);
    entry.flags |= flags::ARGV_TRUNCATED;
    assert!(r.handle(RawRecord::ExecArgs(entry)).is_empty());
    // The old leader dies in de_thread; the exec'ing thread becomes it.
    let dead = r.handle(RawRecord::Exit {
        header: header(10),
        group_dead: false,
    });
    assert_eq!(dead.len(), 1);
    let exec = one(
        &mut r,
        call(10, nr::EXECVEAT, [CWD, 0, 0, 0, 0, 0], 0, None, None),
    );
    assert_eq!(path(&exec, PathRole::Target).as_deref(), Some("/bin/sh"));
    assert_eq!(
        exec.incomplete,
        vec!["argv cut after 1 arguments".to_owned()]
    );
    assert!(r.pending_exec.is_empty());
}

#[test]
fn exec_without_exit_is_reported_not_dropped() {
    let mut r = seeded();
    let RawRecord::Syscall(entry) = call(10, nr::EXECVE, [0; 6], 0, text("run"), None) else {
        unreachable!()
    };
    assert!(r.handle(RawRecord::ExecArgs(entry.clone())).is_empty());
    // A second entry means the first one's exit was lost.
    let lost = r.handle(RawRecord::ExecArgs(entry));
    let s = lost[0].syscall().unwrap();
    assert_eq!(
        (s.ret, path(s, PathRole::Target).as_deref()),
        (None, Some("/srv/run"))
    );
    assert!(
        s.incomplete[0].contains("exit not seen"),
        "{:?}",
        s.incomplete
    );
    // Killed mid-exec: the attempt comes out before the exit.
    let events = r.handle(RawRecord::Exit {
        header: header(10),
        group_dead: true,
    });
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].syscall().unwrap().syscall, "execve");
    assert!(matches!(
        events[1].kind,
        EventKind::Exit {
            process_exited: true
        }
    ));
    assert_eq!(r.tracked_processes(), 0);
}

#[test]
fn no_return_calls_have_no_ret() {
    let mut r = seeded();
    let RawRecord::Syscall(mut exit) = call(10, nr::EXIT_GROUP, [1, 0, 0, 0, 0, 0], 0, None, None)
    else {
        unreachable!()
    };
    exit.flags = flags::NO_RETURN;
    let e = one(&mut r, RawRecord::Syscall(exit));
    assert_eq!(
        (e.syscall.as_str(), e.ret, e.errno),
        ("exit_group", None, None)
    );
}

/// The kernel reports a folded descriptor before every call that reads a
/// name through it here: each dirfd and each descriptor acted on (close
/// aside, which ends one unreported).
#[test]
fn the_kernel_reports_folded_descriptors_before_every_call_resolved_through_them() {
    use cimplifier_common::syscalls::{NO_FD_ARG, TRACED, fd_args};
    for &n in TRACED {
        let reported = fd_args(n);
        for arg in name_args(n).into_iter().flatten() {
            if let Some(dirfd) = arg.dirfd {
                assert!(
                    reported.contains(&(dirfd as u8)),
                    "{}: dirfd argument {dirfd} is not in fd_args {reported:?}",
                    syscalls::name(n)
                );
            }
        }
        if acts_on_fd(n) && n != nr::CLOSE {
            assert!(reported.contains(&0), "{}", syscalls::name(n));
        }
        assert!(
            reported
                .iter()
                .all(|&a| a == NO_FD_ARG || (a as usize) < syscalls::arity(n)),
            "{}: {reported:?}",
            syscalls::name(n)
        );
    }
}

fn folded_open_origin(pid: u32, name: &str, ret: i64, key: [u64; 2]) -> RawRecord {
    let RawRecord::Syscall(mut raw) = call(
        pid,
        nr::OPENAT,
        [CWD, 0, 0o200000, 0, 0, 0],
        ret,
        text(name),
        None,
    ) else {
        unreachable!()
    };
    raw.fold_key = key;
    RawRecord::Syscall(raw)
}

#[test]
fn a_folded_descriptor_replays_its_first_open_with_its_own_number() {
    let mut r = seeded();
    one(&mut r, folded_open_origin(10, "/etc", 3, [7, 8]));
    one(
        &mut r,
        call(10, nr::CLOSE, [3, 0, 0, 0, 0, 0], 0, None, None),
    );
    // The kernel kept the repeat's descriptor 5 and reports it before a
    // call names it: the open again, returning 5.
    let replayed = one(
        &mut r,
        RawRecord::FdRepeat {
            header: header(10),
            fd: 5,
            key: [7, 8],
        },
    );
    assert_eq!((replayed.nr, replayed.ret), (nr::OPENAT, Some(5)));
    assert_eq!(path(&replayed, PathRole::Target).as_deref(), Some("/etc"));
    let at = one(
        &mut r,
        call(
            10,
            nr::NEWFSTATAT,
            [5, 0, 0, 0, 0, 0],
            0,
            text("passwd"),
            None,
        ),
    );
    assert_eq!(path(&at, PathRole::Target).as_deref(), Some("/etc/passwd"));

    // Another process's key, or a key from before an exec, names nothing
    // held: an open whose name is unreadable, counted as such.
    for pid in [11, 10] {
        if pid == 10 {
            let mut image = exec_record(
                10,
                nr::EXECVE,
                [0; 6],
                10,
                0,
                text("/bin/true"),
                Some(&["true"]),
            );
            image.header.tid = 10;
            r.handle(RawRecord::ExecImage(image));
        }
        let lost = one(
            &mut r,
            RawRecord::FdRepeat {
                header: header(pid),
                fd: 4,
                key: [7, 8],
            },
        );
        assert_eq!(lost.ret, Some(4));
        assert_eq!(
            lost.path(PathRole::Target).map(|p| &p.resolution),
            Some(&Resolution::Unreadable)
        );
    }
}

#[test]
fn fold_origins_are_bounded_and_dropped_with_their_process() {
    let mut origins = FoldOrigins::default();
    let origin = |pid: u32, n: u64| {
        let RawRecord::Syscall(mut raw) = folded_open_origin(pid, "/etc", 3, [n, 1]) else {
            unreachable!()
        };
        raw.header.pid = pid;
        raw
    };
    for n in 0..(FoldOrigins::MAX as u64 + 10) {
        origins.insert(&origin(10 + (n % 3) as u32, n));
    }
    assert_eq!(origins.held, FoldOrigins::MAX);
    // The oldest went first.
    assert!(origins.get(10, [0, 1]).is_none());
    let last = FoldOrigins::MAX as u64 + 9;
    assert!(origins.get(10 + (last % 3) as u32, [last, 1]).is_some());
    origins.forget(10);
    origins.forget(11);
    origins.forget(12);
    assert_eq!(origins.held, 0);
    // Many short-lived processes: the insertion order does not grow without end.
    for pid in 0..(3 * FoldOrigins::MAX as u32) {
        origins.insert(&origin(pid, 1));
        origins.forget(pid);
    }
    assert!(
        origins.order.len() <= 2 * FoldOrigins::MAX + 1,
        "{}",
        origins.order.len()
    );
}
