use cimplifier_common::syscalls::{self, nr};

use super::*;
use crate::testing::signal;
use crate::trace::{CgroupId, EventKind, PathArg, PathRole, Resolution};

fn arg(path: &str) -> PathArg {
    PathArg {
        role: PathRole::Target,
        raw: path.to_owned(),
        path: ContainerPath::new(path),
        resolution: Resolution::Resolved,
        truncated: false,
    }
}

fn call(pid: u32, n: u32, path: &str, errno: Option<&str>) -> Event {
    Event {
        ts_ns: 0,
        pid,
        tid: pid,
        ppid: 1,
        cgroup: CgroupId(1),
        comm: "t".into(),
        kind: EventKind::Syscall(Box::new(SyscallEvent {
            syscall: syscalls::name(n).to_owned(),
            nr: n,
            args: [0; 6],
            ret: Some(if errno.is_some() { -2 } else { 3 }),
            errno: errno.map(str::to_owned),
            paths: vec![arg(path)],
            fd_path: None,
            fd_addr: None,
            addr: None,
            argv: None,
            incomplete: vec![],
        })),
    }
}

fn exec(pid: u32, path: &str, errno: Option<&str>) -> Event {
    let mut e = call(pid, nr::EXECVE, path, errno);
    if let EventKind::Syscall(s) = &mut e.kind
        && errno.is_none()
    {
        s.ret = Some(0);
    }
    e
}

fn open(pid: u32, path: &str, errno: Option<&str>) -> Event {
    call(pid, nr::OPENAT, path, errno)
}

fn original(events: &[Event]) -> Original {
    let mut o = Original::new();
    for e in events {
        o.apply(e);
    }
    o
}

fn compare(original: &Original, partition: &str, events: &[Event]) -> Vec<Regression> {
    let mut c = OutputComparer::new(original, partition);
    for e in events {
        c.apply(e);
    }
    c.finish().0
}

#[test]
fn a_file_the_original_read_and_the_output_lacks_is_named_with_its_fix() {
    let o = original(&[
        exec(7, "/usr/sbin/nginx", None),
        open(7, "/etc/nginx/mime.types", None),
    ]);
    let out = compare(
        &o,
        "",
        &[
            exec(9, "/usr/sbin/nginx", None),
            open(9, "/etc/nginx/mime.types", Some("ENOENT")),
        ],
    );
    assert_eq!(out.len(), 1, "{out:?}");
    let r = &out[0];
    assert_eq!(r.kind, RegressionKind::CallFails);
    assert_eq!(
        (r.executable.as_str(), r.resource.as_str(), r.errno.as_str()),
        ("/usr/sbin/nginx", "/etc/nginx/mime.types", "ENOENT")
    );
    assert!(
        r.fix.contains("--include /etc/nginx/mime.types"),
        "{}",
        r.fix
    );

    // The same output with the file in place: nothing to report.
    let fine = compare(
        &o,
        "",
        &[
            exec(9, "/usr/sbin/nginx", None),
            open(9, "/etc/nginx/mime.types", None),
        ],
    );
    assert!(fine.is_empty(), "{fine:?}");
}

#[test]
fn a_failure_the_original_had_too_is_not_a_regression() {
    let o = original(&[
        exec(7, "/usr/bin/app", None),
        open(7, "/etc/app/optional.conf", Some("ENOENT")),
        open(7, "/etc/app/optional.conf", None),
    ]);
    let out = compare(
        &o,
        "",
        &[
            exec(9, "/usr/bin/app", None),
            open(9, "/etc/app/optional.conf", Some("ENOENT")),
        ],
    );
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn a_failure_with_another_errno_than_the_originals_is_one() {
    let o = original(&[
        exec(7, "/usr/bin/app", None),
        open(7, "/var/lib/app/db", Some("ENOENT")),
        open(7, "/var/lib/app/db", None),
    ]);
    let out = compare(
        &o,
        "",
        &[
            exec(9, "/usr/bin/app", None),
            open(9, "/var/lib/app/db", Some("EACCES")),
        ],
    );
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(out[0].fix.contains("owner and mode"), "{}", out[0].fix);
}

#[test]
fn a_path_search_is_not_a_missing_program_but_a_failed_exec_is() {
    let o = original(&[exec(7, "/bin/sh", None)]);
    let out = compare(
        &o,
        "",
        &[
            exec(9, "/bin/sh", None),
            // A `PATH` search: tried, then found.
            exec(10, "/usr/local/bin/gzip", Some("ENOENT")),
            exec(10, "/usr/bin/gzip", None),
            // Not found anywhere.
            exec(11, "/usr/local/bin/convert", Some("ENOENT")),
            exec(11, "/usr/bin/convert", Some("ENOENT")),
        ],
    );
    let missing: Vec<&str> = out
        .iter()
        .filter(|r| r.kind == RegressionKind::ExecMissing)
        .map(|r| r.resource.as_str())
        .collect();
    assert_eq!(
        missing,
        ["/usr/bin/convert", "/usr/local/bin/convert"],
        "{out:?}"
    );
}

#[test]
fn in_a_partition_a_missing_file_points_at_its_volume_too() {
    let o = original(&[exec(7, "/bin/cat", None), open(7, "/srv/app/flag", None)]);
    let out = compare(
        &o,
        "reader",
        &[
            exec(9, "/bin/cat", None),
            open(9, "/srv/app/flag", Some("ENOENT")),
        ],
    );
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].partition, "reader");
    assert!(out[0].fix.contains("shared volume"), "{}", out[0].fix);
}

#[test]
fn what_only_another_executable_used_is_not_held_against_this_one() {
    let o = original(&[exec(7, "/usr/bin/a", None), open(7, "/etc/a.conf", None)]);
    let out = compare(
        &o,
        "",
        &[
            exec(9, "/usr/bin/b", None),
            open(9, "/etc/a.conf", Some("ENOENT")),
        ],
    );
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn a_failure_the_output_recovered_from_is_not_a_regression() {
    // Postfix's local: stat the maildir, make it if missing, then use it.
    let o = original(&[
        exec(7, "/usr/lib/postfix/sbin/local", None),
        open(7, "/home/a/Maildir/new", None),
    ]);
    let recovered = compare(
        &o,
        "smtp",
        &[
            exec(9, "/usr/lib/postfix/sbin/local", None),
            open(9, "/home/a/Maildir/new", Some("ENOENT")),
            open(9, "/home/a/Maildir/new", None),
        ],
    );
    assert!(recovered.is_empty(), "{recovered:?}");
    // The control: the same failure, never recovered from.
    let lasting = compare(
        &o,
        "smtp",
        &[
            exec(9, "/usr/lib/postfix/sbin/local", None),
            open(9, "/home/a/Maildir/new", Some("ENOENT")),
        ],
    );
    assert_eq!(lasting.len(), 1, "{lasting:?}");
}

fn kill(pid: u32, errno: Option<&str>) -> Event {
    let mut e = call(pid, nr::KILL, "/", errno);
    if let EventKind::Syscall(s) = &mut e.kind {
        s.paths.clear();
        s.ret = Some(if errno.is_some() { -1 } else { 0 });
    }
    e
}

#[test]
fn a_signal_the_original_sent_across_uids_and_the_output_may_not_is_named() {
    let before = [
        exec(1, "/usr/sbin/php-fpm8.2", None),
        signal(1, (0, 0), (33, 33)),
        kill(1, None),
    ];
    let sent = original(&before);
    let after = [
        exec(1, "/usr/sbin/php-fpm8.2", None),
        kill(1, Some("EPERM")),
        kill(1, Some("EPERM")),
    ];
    let found = compare(&sent, "", &after);
    assert_eq!(found.len(), 1, "{found:?}");
    let r = &found[0];
    assert_eq!(
        (
            r.executable.as_str(),
            r.syscall.as_str(),
            r.errno.as_str(),
            r.count
        ),
        ("/usr/sbin/php-fpm8.2", "kill", "EPERM", 2)
    );
    assert!(r.fix.contains("CAP_KILL"), "{}", r.fix);
    // A signal within one uid needed nothing: its refusal in the output
    // is not this regression (a kill of a gone process is ESRCH anyway).
    let same_uid = original(&[exec(1, "/bin/sh", None), signal(1, (0, 0), (0, 0))]);
    assert!(
        compare(
            &same_uid,
            "",
            &[exec(1, "/bin/sh", None), kill(1, Some("EPERM"))]
        )
        .is_empty()
    );
}
