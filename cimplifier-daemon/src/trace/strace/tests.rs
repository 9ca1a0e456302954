use super::*;
use crate::trace::{EventKind, PathRole, SocketAddress};

const LOG: &str = r#"100 execve("/usr/bin/sh", ["sh", "-c", "x, y"], 0x7ffe /* 39 vars */) = 0
100 newfstatat(AT_FDCWD</>, "early", 0x7ffd, 0) = -1 ENOENT (No such file or directory)
100 chdir("/srv")                     = 0
100 openat(AT_FDCWD</srv>, "www/index.html", O_RDONLY|O_CLOEXEC) = 3</srv/www/index.html>
100 newfstatat(AT_FDCWD</srv>, "missing", 0x7ffd, 0) = -1 ENOENT (No such file or directory)
100 vfork( <unfinished ...>
101 execve("/usr/bin/cat", ["cat", "a\"b"], 0x5589 /* 39 vars */ <unfinished ...>
100 <... vfork resumed>)            = 101
101 <... execve resumed>)           = 0
101 openat(AT_FDCWD</srv>, "log", O_WRONLY|O_CREAT|O_TRUNC, 0666) = 3</srv/log>
101 connect(4<socket:[9]>, {sa_family=AF_INET, sin_port=htons(8080), sin_addr=inet_addr("127.0.0.1")}, 16) = 0
101 bind(5<socket:[10]>, {sa_family=AF_UNIX, sun_path="run/app.sock"}, 110) = 0
101 exit_group(0)                     = ?
101 +++ exited with 0 +++
100 --- SIGCHLD {si_signo=SIGCHLD, si_code=CLD_EXITED, si_pid=101} ---
"#;

fn parse(log: &str) -> Vec<Event> {
    let mut p = Parser::default();
    for line in log.lines() {
        p.line(line, None).unwrap();
    }
    p.events
}

#[test]
fn arrows_inside_arguments_are_not_brackets() {
    let events = parse(concat!(
        "7 accept4(3<UNIX-STREAM:[1->2,\"/s.sock\"]>, {sa_family=AF_UNIX}, [110 => 2], SOCK_CLOEXEC) = 4<UNIX-STREAM:[3->4,\"/s.sock\"]>\n",
        "7 accept4(3<UNIX-STREAM:[1->2,\"/s.sock\"]>, <unfinished ...>\n",
        "7 <... accept4 resumed>{sa_family=AF_UNIX}, [110 => 2], SOCK_CLOEXEC) = 5<UNIX-STREAM:[5->6]>\n",
    ));
    let rets: Vec<_> = events
        .iter()
        .filter_map(|e| e.syscall())
        .map(|s| (s.syscall.as_str(), s.ret))
        .collect();
    assert_eq!(rets, [("accept4", Some(4)), ("accept4", Some(5))]);
}

#[test]
fn reads_the_shapes_strace_prints() {
    let events = parse(LOG);
    let calls: Vec<_> = events
        .iter()
        .filter_map(|e| e.syscall().map(|s| (e, s)))
        .collect();
    let names: Vec<_> = calls.iter().map(|(_, s)| s.syscall.as_str()).collect();
    assert_eq!(
        names,
        [
            "execve",
            "newfstatat",
            "chdir",
            "openat",
            "newfstatat",
            "vfork",
            "execve",
            "openat",
            "connect",
            "bind",
            "exit_group"
        ]
    );
    let path = |i: usize| {
        calls[i]
            .1
            .path(PathRole::Target)
            .and_then(|p| p.path.clone())
            .map(|p| p.to_string())
    };
    assert_eq!(
        path(3).as_deref(),
        Some("/srv/www/index.html"),
        "relative to the cwd chdir set"
    );
    assert_eq!(
        path(1).as_deref(),
        Some("/early"),
        "cwd seeded from AT_FDCWD</>"
    );
    assert_eq!(calls[4].1.errno.as_deref(), Some("ENOENT"));
    assert_eq!(path(4).as_deref(), Some("/srv/missing"));
    assert_eq!(
        calls[0].1.argv.as_deref(),
        Some(&["sh".to_owned(), "-c".to_owned(), "x, y".to_owned()][..])
    );
    assert_eq!(
        calls[6].1.argv.as_deref(),
        Some(&["cat".to_owned(), "a\"b".to_owned()][..]),
        "resumed exec"
    );
    assert_eq!(
        path(7).as_deref(),
        Some("/srv/log"),
        "the vfork child inherited the cwd"
    );
    assert_eq!(calls[7].1.args[2], 0o1101);
    assert_eq!(
        calls[8].1.addr,
        Some(SocketAddress::Inet {
            addr: "127.0.0.1:8080".parse().unwrap()
        })
    );
    assert!(
        matches!(&calls[9].1.addr, Some(SocketAddress::Unix { path: Some(p), .. }) if p.as_str() == "/srv/run/app.sock")
    );
    assert_eq!(calls[10].1.ret, None, "exit_group does not return");
    assert!(
        events
            .iter()
            .any(|e| matches!(e.kind, EventKind::Fork { child_pid: 101, .. }))
    );
    assert!(events.iter().any(|e| e.pid == 101
        && matches!(
            e.kind,
            EventKind::Exit {
                process_exited: true
            }
        )));
    assert_eq!(calls[7].0.comm, "cat");
}

#[test]
fn bad_lines_are_errors_not_panics() {
    let mut p = Parser::default();
    assert!(p.line("not a pid", None).is_err());
    assert!(
        p.line("12 openat(AT_FDCWD, \"x\"", None).is_err(),
        "no closing paren"
    );
    assert!(
        p.line(
            "12 openat(AT_FDCWD, \"x\", O_RDONLY) = -1 EWHATEVER (?)",
            None
        )
        .is_err()
    );
    // Untraced calls are skipped.
    p.line("12 read(3, \"abc\", 3) = 3", None).unwrap();
    assert!(p.events.is_empty());
}

#[test]
fn names_after_a_chroot_are_placed_inside_it() {
    // As strace -f -y prints a process that chroots (`-y` shows the
    // host's view, the names the program's own).
    let events = parse(concat!(
        "7 chdir(\"/var/spool/postfix\") = 0\n",
        "7 chroot(\".\") = 0\n",
        "7 openat(AT_FDCWD</var/spool/postfix>, \"/etc/services\", O_RDONLY|O_CLOEXEC) = 3</var/spool/postfix/etc/services>\n",
        "7 chroot(\"/missing\") = -1 ENOENT (No such file or directory)\n",
        "7 openat(AT_FDCWD</var/spool/postfix>, \"maildrop\", O_RDONLY|O_DIRECTORY) = 4</var/spool/postfix/maildrop>\n",
    ));
    let paths: Vec<_> = events
        .iter()
        .filter_map(|e| e.syscall())
        .map(|s| {
            let target = s.path(PathRole::Target).unwrap();
            (
                s.syscall.as_str(),
                target.path.as_ref().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        paths,
        [
            ("chdir", "/var/spool/postfix".to_owned()),
            ("chroot", "/var/spool/postfix".to_owned()),
            ("openat", "/var/spool/postfix/etc/services".to_owned()),
            ("chroot", "/var/spool/postfix/missing".to_owned()),
            ("openat", "/var/spool/postfix/maildrop".to_owned()),
        ]
    );
}

#[test]
fn per_process_files_take_the_pid_from_the_name() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("trace.42");
    std::fs::write(
        &f,
        "execve(\"/bin/true\", [\"true\"], 0x1 /* 1 var */) = 0\n",
    )
    .unwrap();
    let events = read_strace_logs(&[f.as_path()]).unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].pid, 42);
    let err = read_strace_logs(&[dir.path().join("nope").as_path()]).unwrap_err();
    assert!(format!("{err:#}").contains("nope"));
}

#[test]
fn a_huge_bad_line_is_quoted_in_part() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("huge.strace");
    let huge = format!("1 open(\"{}\" = -1 EBOGUS (nope)\n", "x".repeat(5 << 20));
    std::fs::write(&f, huge).unwrap();
    let err = format!("{:#}", read_strace_logs(&[f.as_path()]).unwrap_err());
    assert!(err.len() < 2000, "{} bytes: {}", err.len(), &err[..200]);
    assert!(err.contains("huge.strace:1"), "{err}");
}

#[test]
fn a_cut_off_last_line_is_read_up_to_and_an_empty_log_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("cut.strace");
    std::fs::write(
        &f,
        "7 execve(\"/bin/true\", [\"true\"], 0x1 /* 1 var */) = 0\n7 openat(AT_FDCWD, \"/etc/pa",
    )
    .unwrap();
    let logs = read_strace(&[f.as_path()]).unwrap();
    assert_eq!(logs.events.len(), 1);
    assert_eq!(logs.cut_off, vec![f.clone()]);
    // The same line, whole (with its newline), is an error.
    std::fs::write(&f, "7 openat(AT_FDCWD, \"/etc/pa\n").unwrap();
    assert!(read_strace(&[f.as_path()]).is_err());

    let empty = dir.path().join("empty.strace");
    std::fs::write(&empty, "").unwrap();
    let err = format!("{:#}", read_strace(&[empty.as_path()]).err().unwrap());
    assert!(err.contains("empty"), "{err}");
}
