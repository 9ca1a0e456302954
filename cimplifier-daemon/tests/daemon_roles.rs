//! Roles on the unix socket (docs/security.md): a caller's role comes from
//! its uid and gid. A member of the read-only group may look at sessions
//! and reports but is refused emit and observe with PERMISSION_DENIED; a
//! member of the admin group (socket_group) may emit; a user in neither is
//! refused everything; every admin call is written to the audit log with
//! the caller's uid. Real daemon, Docker and eBPF, and real system users and
//! groups made for the test (removed after); run as those users with
//! runuser. Needs root.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{BASE_IMAGE, Container, require_root};

/// Runs a host admin command (groupadd, useradd...), panicking on failure.
fn admin(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// System groups and users made for one test, removed on drop.
struct Principals {
    groups: Vec<String>,
    users: Vec<String>,
}

impl Principals {
    fn new() -> Self {
        Self {
            groups: vec![],
            users: vec![],
        }
    }

    /// A system group `cimpl-TAG-PID`.
    fn group(&mut self, tag: &str) -> String {
        let name = format!("cimpl-{tag}-{}", std::process::id());
        let _ = Command::new("groupdel").arg(&name).output();
        admin("groupadd", &["--system", &name]);
        self.groups.push(name.clone());
        name
    }

    /// A system user `cimpl-TAG-PID` (with its own primary group), also in
    /// `groups`; returns its name and uid.
    fn user(&mut self, tag: &str, groups: &[&str]) -> (String, u32) {
        let name = format!("cimpl-{tag}-{}", std::process::id());
        let _ = Command::new("userdel").arg(&name).output();
        let mut args = vec![
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "--user-group",
        ];
        let joined = groups.join(",");
        if !groups.is_empty() {
            args.extend(["--groups", &joined]);
        }
        args.push(&name);
        admin("useradd", &args);
        self.users.push(name.clone());
        let uid = nix::unistd::User::from_name(&name)
            .unwrap()
            .expect("the user just made")
            .uid
            .as_raw();
        (name, uid)
    }
}

impl Drop for Principals {
    fn drop(&mut self) {
        for user in &self.users {
            let _ = Command::new("userdel").arg(user).output();
        }
        for group in &self.groups {
            let _ = Command::new("groupdel").arg(group).output();
        }
    }
}

/// A `cimplifierd serve` whose log goes to a file the test reads.
struct LoggedDaemon {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoggedDaemon {
    fn start(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // Reachable by any uid, so the socket's own mode decides who gets in.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let socket = dir.path().join("run/cimplifier.sock");
        let log = dir.path().join("daemon.log");
        let child = common::cimplifierd()
            .args(["serve", "--config", "/dev/null", "--socket"])
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .args(extra)
            .env("RUST_LOG", "info")
            .stderr(std::fs::File::create(&log).unwrap())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let d = Self {
            child,
            socket,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !d.ctl(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "cimplifierd never answered: {}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        d
    }

    /// cimplifierctl as root.
    fn ctl(&self, args: &[&str]) -> Output {
        common::cimplifierctl()
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap()
    }

    /// cimplifierctl as `user` (runuser: its own uid, primary group and
    /// supplementary groups from the group database).
    fn ctl_as(&self, user: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new("runuser");
        for (name, _) in std::env::vars_os() {
            if name.to_str().is_some_and(|n| n.starts_with("CIMPLIFIER_")) {
                cmd.env_remove(name);
            }
        }
        cmd.args(["-u", user, "--"])
            .arg(env!("CARGO_BIN_EXE_cimplifierctl"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to 10 s for a log line holding every one of `parts`.
    fn log_line(&self, parts: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.log_text();
            if let Some(line) = text.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no log line holds all of {parts:?}:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for LoggedDaemon {
    fn drop(&mut self) {
        common::stop_daemon(&mut self.child);
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts `out` is a refusal for lack of a role: exit 8, the daemon's
/// PERMISSION_DENIED message holding each of `says`.
fn denied(out: &Output, says: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(8), "refused as denied: {err}");
    assert!(err.contains("PermissionDenied"), "{err}");
    for s in says {
        assert!(err.contains(s), "the refusal says {s:?}: {err}");
    }
}

fn image_exists(tag: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", tag])
        .output()
        .unwrap()
        .status
        .success()
}

/// Removes an image tag however the test ends.
struct RemoveImage(String);

impl Drop for RemoveImage {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", &self.0]).output();
    }
}

#[test]
fn unix_callers_get_the_role_of_their_group_and_admin_calls_are_audited() {
    require_root();
    let mut who = Principals::new();
    let admins = who.group("adm");
    let readers = who.group("ro");
    let (admin_user, admin_uid) = who.user("a", &[&admins]);
    let (reader, reader_uid) = who.user("r", &[&readers]);
    let (outsider, _) = who.user("n", &[]);
    let d = LoggedDaemon::start(&["--socket-group", &admins, "--read-only-group", &readers]);
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode, 0o666,
        "every local user reaches the socket; roles decide"
    );

    // A closed session, made by root.
    let c = Container::create(
        "roles",
        &[BASE_IMAGE, "/bin/sh", "-c", "cat /etc/os-release"],
    );
    let observed = d.ctl(&["observe", &c.0]);
    assert!(observed.status.success(), "{}", stderr(&observed));

    // The read-only user may look.
    let listed = d.ctl_as(&reader, &["sessions", "--json"]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&c.0));
    let report = d.ctl_as(&reader, &["report", &c.0, "--json"]);
    assert!(report.status.success(), "{}", stderr(&report));
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    assert!(report.is_object(), "{report}");

    // ... but not act: emit and observe are refused, naming the caller, the
    // call, the role it needs and the setting that grants it.
    let tag = format!("cimplifier-e2e/authz-roles{}:latest", std::process::id());
    let _image = RemoveImage(tag.clone());
    let refused = d.ctl_as(&reader, &["emit", &c.0, "--tag", &tag]);
    denied(
        &refused,
        &[
            &format!("uid {reader_uid} ({reader})"),
            "has the read-only role",
            "Emit needs the admin role",
            "socket_group (--socket-group, CIMPLIFIER_SOCKET_GROUP",
        ],
    );
    assert!(!image_exists(&tag), "nothing was emitted");
    denied(
        &d.ctl_as(&reader, &["observe", &c.0, "--restart"]),
        &["Observe needs the admin role"],
    );
    denied(
        &d.ctl_as(&reader, &["sessions", "rm", &c.0]),
        &["DeleteSession needs the admin role"],
    );
    let denial = d.log_line(&["cimplifier::audit", "denied", &format!("uid={reader_uid}")]);
    assert!(denial.contains("Emit"), "{denial}");

    // A user in neither group is refused even looking.
    denied(
        &d.ctl_as(&outsider, &["sessions"]),
        &[
            "has no role",
            "ListSessions needs the read-only role",
            "read_only_group (--read-only-group, CIMPLIFIER_READ_ONLY_GROUP",
        ],
    );
    assert_ne!(d.ctl_as(&outsider, &["version"]).status.code(), Some(0));

    // A member of the admin group may emit, and the audit log says who did.
    let emitted = d.ctl_as(&admin_user, &["emit", &c.0, "--tag", &tag]);
    assert!(emitted.status.success(), "{}", stderr(&emitted));
    assert!(image_exists(&tag));
    let line = d.log_line(&[
        "cimplifier::audit",
        &format!("uid={admin_uid}"),
        "rpc=\"Emit\"",
        "outcome=\"ok\"",
    ]);
    assert!(line.contains(&tag) && line.contains(&c.0), "{line}");
    // Root's calls are audited too.
    d.log_line(&["cimplifier::audit", "uid=0", "rpc=\"Observe\""]);
}
