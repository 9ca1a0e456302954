//! The paper's cases, on hand-built events.

use std::net::SocketAddr;

use cimplifier_common::syscalls::{self, nr};

use super::*;
use crate::trace::{CgroupId, PathArg, PathRole, Resolution, SocketAddress, SyscallEvent};

fn p(s: &str) -> ContainerPath {
    ContainerPath::new(s).unwrap()
}

fn exe(s: &str) -> Exe {
    Exe(p(s))
}

fn res(s: &str) -> Resource {
    Resource::Path(p(s))
}

fn arg(role: PathRole, path: &str) -> PathArg {
    PathArg {
        role,
        raw: path.to_owned(),
        path: ContainerPath::new(path),
        resolution: Resolution::Resolved,
        truncated: false,
    }
}

fn call(
    pid: u32,
    n: u32,
    args: [u64; 6],
    ret: i64,
    paths: Vec<PathArg>,
    addr: Option<SocketAddress>,
) -> Event {
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
            args,
            ret: Some(ret),
            errno: None,
            paths,
            fd_path: None,
            fd_addr: None,
            addr,
            argv: None,
            incomplete: vec![],
        })),
    }
}

fn exec(pid: u32, path: &str) -> Event {
    call(
        pid,
        nr::EXECVE,
        [0; 6],
        0,
        vec![arg(PathRole::Target, path)],
        None,
    )
}

fn fork(parent: u32, child: u32) -> Event {
    Event {
        ts_ns: 0,
        pid: parent,
        tid: parent,
        ppid: 1,
        cgroup: CgroupId(1),
        comm: "t".into(),
        kind: EventKind::Fork {
            child_pid: child,
            child_tid: child,
            thread: false,
            clone_flags: 17,
        },
    }
}

const CWD: u64 = -100i64 as u64;
const O_WRONLY_CREAT: u64 = 0o101;

fn set(items: &[Resource]) -> BTreeSet<Resource> {
    items.iter().cloned().collect()
}

#[test]
fn created_then_moved_file() {
    let m = Model::from_events(&[
        exec(10, "/app/job"),
        call(
            10,
            nr::OPENAT,
            [CWD, 0, O_WRONLY_CREAT, 0, 0, 0],
            3,
            vec![arg(PathRole::Target, "/tmp/a.part")],
            None,
        ),
        call(
            10,
            nr::RENAME,
            [0; 6],
            0,
            vec![
                arg(PathRole::Old, "/tmp/a.part"),
                arg(PathRole::New, "/data/a"),
            ],
            None,
        ),
    ]);
    let job = [exe("/app/job")];
    assert_eq!(m.writes(&job), set(&[res("/data/a"), res("/tmp/a.part")]));
    // The renamed file must exist to be renamed; its directories to be reached.
    assert_eq!(
        m.reads(&job),
        set(&[
            res("/"),
            res("/app"),
            res("/app/job"),
            res("/data"),
            res("/tmp"),
            res("/tmp/a.part")
        ])
    );
    let uses = m.uses(&job);
    assert_eq!(
        uses[&res("/tmp/a.part")],
        [Access::Write, Access::Create, Access::Delete]
            .into_iter()
            .collect()
    );
}

#[test]
fn a_unix_socket_shared_by_two_executables() {
    let sock = |path: &str| {
        Some(SocketAddress::Unix {
            raw: path.into(),
            path: ContainerPath::new(path),
        })
    };
    let m = Model::from_events(&[
        exec(1, "/usr/sbin/mysqld"),
        call(
            1,
            nr::BIND,
            [3, 0, 0, 0, 0, 0],
            0,
            vec![],
            sock("/run/mysqld/mysqld.sock"),
        ),
        exec(2, "/usr/sbin/php-fpm"),
        call(
            2,
            nr::CONNECT,
            [5, 0, 0, 0, 0, 0],
            0,
            vec![],
            sock("/run/mysqld/mysqld.sock"),
        ),
    ]);
    let (db, php) = ([exe("/usr/sbin/mysqld")], [exe("/usr/sbin/php-fpm")]);
    let node = res("/run/mysqld/mysqld.sock");
    assert!(m.writes(&db).contains(&node) && m.writes(&php).contains(&node));
    assert!(
        m.reads(&db).contains(&res("/run/mysqld")),
        "bind needs the parent directory"
    );
    assert_eq!(
        m.shared(&db, &php),
        set(&[node.clone(), res("/run/mysqld")])
    );
    assert_eq!(
        m.writers(&node),
        [db[0].clone(), php[0].clone()].into_iter().collect()
    );
}

#[test]
fn a_shell_script_executing_a_binary_builds_the_call_graph() {
    let m = Model::from_events(&[
        exec(1, "/entrypoint.sh"),
        fork(1, 2),
        call(
            2,
            nr::OPENAT,
            [CWD, 0, 0, 0, 0, 0],
            3,
            vec![arg(PathRole::Target, "/etc/ld.so.cache")],
            None,
        ),
        exec(2, "/usr/bin/cat"),
        call(
            2,
            nr::OPENAT,
            [CWD, 0, 0, 0, 0, 0],
            3,
            vec![arg(PathRole::Target, "/etc/motd")],
            None,
        ),
    ]);
    let (sh, cat) = (exe("/entrypoint.sh"), exe("/usr/bin/cat"));
    assert_eq!(m.callees(&sh), [cat.clone()].into_iter().collect());
    assert_eq!(m.callers(&cat), [sh.clone()].into_iter().collect());
    // Before its exec the child still runs the script's executable.
    assert!(
        m.reads(std::slice::from_ref(&sh))
            .contains(&res("/etc/ld.so.cache"))
    );
    assert!(
        m.reads(std::slice::from_ref(&cat))
            .contains(&res("/usr/bin/cat")),
        "the callee's own file"
    );
    assert!(
        m.reads(std::slice::from_ref(&cat))
            .contains(&res("/etc/motd"))
    );
    assert!(!m.reads(&[sh]).contains(&res("/etc/motd")));
}

#[test]
fn failed_probes_are_kept_apart_and_do_not_make_files_appear() {
    let m = Model::from_events(&[
        exec(1, "/usr/bin/python3"),
        call(
            1,
            nr::NEWFSTATAT,
            [CWD, 0, 0, 0, 0, 0],
            -2,
            vec![arg(PathRole::Target, "/usr/lib/python3/x.so")],
            None,
        ),
        call(
            1,
            nr::OPENAT,
            [CWD, 0, 0, 0, 0, 0],
            3,
            vec![arg(PathRole::Target, "/usr/lib/python3/x.py")],
            None,
        ),
    ]);
    let py = [exe("/usr/bin/python3")];
    assert_eq!(m.failed_lookups(&py), set(&[res("/usr/lib/python3/x.so")]));
    assert!(!m.reads(&py).contains(&res("/usr/lib/python3/x.so")));
    assert!(!m.writes(&py).contains(&res("/usr/lib/python3/x.so")));
    assert!(m.reads(&py).contains(&res("/usr/lib/python3/x.py")));
}

#[test]
fn metadata_changes_stay_apart_from_content_writes() {
    let m = Model::from_events(&[
        exec(1, "/bin/chown"),
        call(
            1,
            nr::FCHOWNAT,
            [CWD, 0, 33, 33, 0, 0],
            0,
            vec![arg(PathRole::Target, "/var/www/big.tar")],
            None,
        ),
    ]);
    let chown = [exe("/bin/chown")];
    assert!(m.writes(&chown).contains(&res("/var/www/big.tar")));
    assert_eq!(
        m.uses(&chown)[&res("/var/www/big.tar")],
        [Access::Metadata].into_iter().collect()
    );
}

#[test]
fn descriptor_calls_add_nothing() {
    let m = Model::from_events(&[
        exec(1, "/bin/stat"),
        // fstatat(fd, "", AT_EMPTY_PATH): the path is the fd's, not a new need.
        call(
            1,
            nr::NEWFSTATAT,
            [3, 0, 0, 0x1000, 0, 0],
            0,
            vec![PathArg {
                raw: String::new(),
                ..arg(PathRole::Target, "/etc/hosts")
            }],
            None,
        ),
    ]);
    assert_eq!(
        m.reads(&[exe("/bin/stat")]),
        set(&[res("/"), res("/bin"), res("/bin/stat")])
    );
}

#[test]
fn a_refusal_naming_no_resource_is_never_folded_into_an_earlier_call() {
    let kill = |ret| call(1, nr::KILL, [9, 15, 0, 0, 0, 0], ret, vec![], None);
    let close = call(1, nr::CLOSE, [3, 0, 0, 0, 0, 0], 0, vec![], None);
    // Both name nothing: the daemon would fold a refused kill into the
    // executable's first close, and verify would never see it.
    assert_eq!(uses_of(&close), Some(vec![]));
    assert_eq!(uses_of(&kill(0)), Some(vec![]));
    assert_eq!(uses_of(&kill(-1)), None, "EPERM");
    assert_eq!(uses_of(&kill(-3)), Some(vec![]), "ESRCH: no privilege");
    let raw = call(1, nr::SOCKET, [2, 3, 1, 0, 0, 0], -13, vec![], None);
    assert_eq!(uses_of(&raw), None, "EACCES");
}

/// getdents64 on a descriptor opened on `dir`, returning `ret` bytes.
fn getdents(pid: u32, dir: Option<&str>, ret: i64) -> Event {
    let mut e = call(
        pid,
        nr::GETDENTS64,
        [3, 0, 32768, 0, 0, 0],
        ret,
        vec![],
        None,
    );
    if let EventKind::Syscall(s) = &mut e.kind {
        s.fd_path = dir.map(p);
    }
    e
}

#[test]
fn listing_a_directory_is_a_list_access_and_a_read() {
    const O_DIRECTORY: u64 = 0o200000;
    let m = Model::from_events(&[
        exec(1, "/usr/bin/app"),
        call(
            1,
            nr::OPENAT,
            [CWD, 0, O_DIRECTORY, 0, 0, 0],
            3,
            vec![arg(PathRole::Target, "/etc/app/plugins")],
            None,
        ),
        getdents(1, Some("/etc/app/plugins"), 120),
        getdents(1, Some("/etc/app/plugins"), 0),
        // Opened and not listed: a traversal (openat on a dirfd), no list.
        call(
            1,
            nr::OPENAT,
            [CWD, 0, O_DIRECTORY, 0, 0, 0],
            4,
            vec![arg(PathRole::Target, "/etc/app/other")],
            None,
        ),
        // A descriptor whose origin is unknown names nothing.
        getdents(1, None, 120),
    ]);
    let app = [exe("/usr/bin/app")];
    assert_eq!(m.listed(&app), set(&[res("/etc/app/plugins")]));
    assert_eq!(
        m.uses(&app)[&res("/etc/app/plugins")],
        [Access::Read, Access::List].into()
    );
    assert!(m.reads(&app).contains(&res("/etc/app/plugins")));
    assert!(!m.writes(&app).contains(&res("/etc/app/plugins")));
    assert!(Access::List.is_read() && !Access::List.is_write());
    assert_eq!(m.unnamed_listings(), 1, "counted, not dropped");
}

#[test]
fn inet_listeners_accept_by_socket_semantics() {
    let ep = |s: &str| {
        let a: SocketAddr = s.parse().unwrap();
        InetEndpoint {
            ip: a.ip(),
            port: a.port(),
        }
    };
    assert!(ep("0.0.0.0:3306").accepts(&ep("127.0.0.1:3306")));
    assert!(ep("[::]:3306").accepts(&ep("[::1]:3306")));
    assert!(ep("127.0.0.1:3306").accepts(&ep("127.0.0.1:3306")));
    assert!(!ep("127.0.0.1:3306").accepts(&ep("10.1.1.1:3306")));
    assert!(!ep("0.0.0.0:3306").accepts(&ep("127.0.0.1:3307")));
}

#[test]
fn unresolved_names_are_counted_not_dropped() {
    let unresolved = PathArg {
        path: None,
        resolution: Resolution::Unresolved("cwd unknown".into()),
        ..arg(PathRole::Target, "rel.txt")
    };
    let m = Model::from_events(&[call(
        1,
        nr::OPENAT,
        [CWD, 0, 0, 0, 0, 0],
        3,
        vec![unresolved],
        None,
    )]);
    assert_eq!(m.unresolved_names(), 1);
    assert_eq!(
        m.executables().len(),
        1,
        "an unobserved exec still gets an executable"
    );
}

/// A merged-/usr tree: /bin -> usr/bin, sh -> dash, and a `#!/bin/sh` script.
fn merged_usr_tree() -> tempfile::TempDir {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    std::fs::create_dir_all(r.join("usr/bin")).unwrap();
    std::fs::create_dir_all(r.join("srv")).unwrap();
    symlink("usr/bin", r.join("bin")).unwrap();
    symlink("dash", r.join("usr/bin/sh")).unwrap();
    std::fs::write(r.join("usr/bin/dash"), b"\x7fELF").unwrap();
    std::fs::write(r.join("usr/bin/cat"), b"\x7fELF").unwrap();
    std::fs::write(r.join("srv/run.sh"), b"#!/bin/sh\ncat /srv/x\n").unwrap();
    dir
}

#[test]
fn script_gets_its_interpreter_through_merged_usr_links() {
    let root = merged_usr_tree();
    let mut m = Model::with_image_tree(Box::new(DirTree::new(root.path())));
    for e in [exec(10, "/srv/run.sh"), fork(10, 11), exec(11, "/bin/cat")] {
        m.apply(&e);
    }
    let script = exe("/srv/run.sh");
    let sh = exe("/bin/sh");
    assert_eq!(
        m.callees(&script),
        [sh.clone(), exe("/bin/cat")].into_iter().collect(),
        "a shebang gives two executables: the script calls its interpreter"
    );
    assert!(m.executables().contains(&sh));
    let r = m.reads(std::slice::from_ref(&script));
    for needed in [
        "/bin",
        "/bin/sh",
        "/usr/bin/sh",
        "/usr/bin/dash",
        "/usr",
        "/srv",
    ] {
        assert!(r.contains(&res(needed)), "R(run.sh) lacks {needed}: {r:?}");
    }
    // The interpreter's own R holds the file it runs and the links to it.
    let r_sh = m.reads(std::slice::from_ref(&sh));
    assert!(r_sh.contains(&res("/usr/bin/dash")) && r_sh.contains(&res("/bin")));
    // cat, exec'd as /bin/cat, needs the /bin link and /usr/bin/cat.
    let r_cat = m.reads(&[exe("/bin/cat")]);
    assert!(r_cat.contains(&res("/bin")) && r_cat.contains(&res("/usr/bin/cat")));
    assert!(!r_cat.contains(&res("/usr/bin/dash")));
}

#[test]
fn without_a_tree_a_script_is_one_executable() {
    let m = Model::from_events(&[exec(10, "/srv/run.sh")]);
    assert_eq!(m.executables(), [exe("/srv/run.sh")].into_iter().collect());
}

#[test]
fn a_process_seen_running_has_its_real_executable() {
    let running = Event {
        ts_ns: 0,
        pid: 7,
        tid: 7,
        ppid: 1,
        cgroup: CgroupId(1),
        comm: "nginx".into(),
        kind: EventKind::Running {
            exe: Some(p("/usr/sbin/nginx")),
            argv: vec!["nginx".into()],
            cwd: Some(p("/")),
        },
    };
    let open = call(
        7,
        nr::OPENAT,
        [CWD, 0, 0, 0, 0, 0],
        3,
        vec![arg(PathRole::Target, "/etc/nginx/nginx.conf")],
        None,
    );
    let m = Model::from_events(&[running, open]);
    let nginx = [exe("/usr/sbin/nginx")];
    assert_eq!(m.executables(), nginx.iter().cloned().collect());
    let r = m.reads(&nginx);
    assert!(r.contains(&res("/usr/sbin/nginx")) && r.contains(&res("/etc/nginx/nginx.conf")));
}

#[test]
fn the_runtimes_stages_are_known_by_name_only_when_their_exec_was_not_seen() {
    for stage in ["runc", "runc:[0:PARENT]", "runc:[2:INIT]", "exe"] {
        assert!(unknown_exe(stage).is_runtime(), "{stage}");
    }
    assert!(!unknown_exe("nginx").is_runtime());
    // A program of the image named so, whose exec was seen, is the image's.
    assert!(!exe("/usr/local/bin/exe").is_runtime());
    assert!(!exe("/usr/bin/runc").is_runtime());
}
