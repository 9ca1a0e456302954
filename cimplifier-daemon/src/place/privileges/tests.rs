use std::collections::BTreeSet;
use std::sync::Arc;

use cimplifier_common::syscalls::nr;

use super::*;
use crate::testing::{call, exec, open, p, signal};
use crate::trace::{Event, EventKind, PathRole, SocketAddress, SyscallEvent};

/// An image from `(path, mode, uid, gid)`; a path ending in `/` is a
/// directory. `caps` marks paths with a `security.capability` xattr.
fn image(entries: &[(&str, u32, u64, u64)], caps: &[&str]) -> Arc<ImageFs> {
    let mut b = tar::Builder::new(Vec::new());
    for &(e, mode, uid, gid) in entries {
        let name = e.trim_start_matches('/');
        if caps.contains(&e) {
            b.append_pax_extensions([("SCHILY.xattr.security.capability", &b"\x01"[..])])
                .unwrap();
        }
        let mut h = tar::Header::new_ustar();
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_size(0);
        if e.ends_with('/') {
            h.set_entry_type(tar::EntryType::Directory);
        }
        b.append_data(&mut h, name, &[][..]).unwrap();
    }
    Arc::new(ImageFs::from_tar(b.into_inner().unwrap(), "test image").unwrap())
}

fn base() -> Vec<(&'static str, u32, u64, u64)> {
    vec![
        ("/usr/", 0o755, 0, 0),
        ("/usr/sbin/", 0o755, 0, 0),
        ("/usr/sbin/web", 0o755, 0, 0),
        ("/usr/bin/", 0o755, 0, 0),
        ("/usr/bin/su", 0o4755, 0, 0),
        ("/usr/bin/ping", 0o755, 0, 0),
        ("/var/", 0o755, 0, 0),
        ("/var/lib/", 0o755, 0, 0),
        ("/var/lib/web/", 0o700, 33, 33),
        ("/var/lib/web/db", 0o600, 33, 33),
        ("/var/www/", 0o755, 33, 33),
        ("/var/www/index", 0o644, 33, 33),
        ("/etc/", 0o755, 0, 0),
        ("/etc/secret", 0o600, 0, 0),
        ("/run/", 0o755, 0, 0),
        ("/tmp/", 0o1777, 0, 0),
    ]
}

fn with(mut e: Event, f: impl FnOnce(&mut SyscallEvent)) -> Event {
    if let EventKind::Syscall(s) = &mut e.kind {
        f(s);
    }
    e
}

fn bind(pid: u32, addr: &str) -> Event {
    with(call(pid, nr::BIND, [3, 0, 16, 0, 0, 0], &[]), |s| {
        s.addr = Some(SocketAddress::Inet {
            addr: addr.parse().unwrap(),
        })
    })
}

fn setuid(pid: u32, uid: u64) -> Event {
    call(pid, nr::SETUID, [uid, 0, 0, 0, 0, 0], &[])
}

fn fork(parent: u32, child: u32) -> Event {
    Event {
        kind: EventKind::Fork {
            child_pid: child,
            child_tid: child,
            thread: false,
            clone_flags: 0,
        },
        ..exec(parent, "/x")
    }
}

struct Case {
    fs: Arc<ImageFs>,
    model: Model,
    user: &'static str,
    volumes: BTreeSet<ContainerPath>,
    anonymous: bool,
    rpe: bool,
}

impl Case {
    fn new(fs: Arc<ImageFs>) -> Self {
        Self {
            model: Model::with_image_tree(Box::new(fs.clone())),
            fs,
            user: "",
            volumes: BTreeSet::new(),
            anonymous: true,
            rpe: false,
        }
    }
    fn apply(&mut self, events: &[Event]) -> &mut Self {
        for e in events {
            self.model.apply(e);
        }
        self
    }
    fn run(&self) -> Privileges {
        let ctx = Context {
            fs: &self.fs,
            user: self.user,
            plan_volumes: &self.volumes,
            anonymous_volumes: self.anonymous,
            rpe_server: self.rpe,
            rpe_stub: false,
            seccomp: crate::place::seccomp::SeccompMode::Enforce,
        };
        privileges(&self.model, &self.model.executables(), &ctx)
    }
}

fn caps(p: &Privileges) -> Vec<&'static str> {
    p.capabilities.keys().map(|c| c.name()).collect()
}

#[test]
fn binding_a_port_below_1024_as_root_needs_net_bind_service() {
    let mut c = Case::new(image(&base(), &[]));
    c.apply(&[exec(1, "/usr/sbin/web"), bind(1, "0.0.0.0:80")]);
    let got = c.run();
    assert_eq!(caps(&got), ["NET_BIND_SERVICE"]);
    assert_eq!(
        got.explain(Capability::NetBindService),
        "granted: /usr/sbin/web bound 0.0.0.0:80"
    );
    assert_eq!(
        got.explain(Capability::Chown),
        "dropped: no observed operation needs it"
    );
    // A high port needs nothing.
    let mut c = Case::new(image(&base(), &[]));
    c.apply(&[exec(1, "/usr/sbin/web"), bind(1, "0.0.0.0:8080")]);
    assert!(c.run().capabilities.is_empty());
}

#[test]
fn a_process_that_left_root_needs_no_capability_and_its_setuid_needs_setuid() {
    let mut c = Case::new(image(&base(), &[]));
    c.apply(&[
        exec(1, "/usr/sbin/web"),
        fork(1, 2),
        setuid(2, 33),
        // The worker, no longer root, binds a low port: that would fail,
        // and root's capabilities would not help it.
        bind(2, "0.0.0.0:81"),
    ]);
    let got = c.run();
    assert_eq!(caps(&got), ["SETUID"]);
    assert_eq!(
        got.explain(Capability::Setuid),
        "granted: /usr/sbin/web called setuid(33)"
    );
    // The child inherited the new uid; the parent stayed root.
    c.apply(&[fork(2, 3), bind(3, "0.0.0.0:82"), bind(1, "0.0.0.0:83")]);
    let ev = &c.run().capabilities[&Capability::NetBindService];
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert!(ev[0].did.ends_with(":83"), "{ev:?}");
}

#[test]
fn setgroups_needs_setgid_and_resetting_roots_ids_needs_nothing() {
    let mut c = Case::new(image(&base(), &[]));
    c.apply(&[
        exec(1, "/usr/sbin/web"),
        call(1, nr::SETGID, [0; 6], &[]),
        call(1, nr::SETGROUPS, [0; 6], &[]),
    ]);
    assert_eq!(caps(&c.run()), ["SETGID"]);
}

#[test]
fn an_image_user_other_than_root_needs_no_capability() {
    let mut c = Case::new(image(&base(), &[]));
    c.user = "33:33";
    c.apply(&[exec(1, "/usr/sbin/web"), bind(1, "0.0.0.0:80")]);
    assert!(c.run().capabilities.is_empty());
    assert_eq!(c.run().start_uid, Some(33));
}

#[test]
fn chown_to_another_owner_needs_chown_and_to_the_same_owner_not() {
    let mut c = Case::new(image(&base(), &[]));
    c.apply(&[
        exec(1, "/usr/sbin/web"),
        call(
            1,
            nr::CHOWN,
            [0, 33, u32::MAX as u64, 0, 0, 0],
            &[(PathRole::Target, "/var/www/index")],
        ),
    ]);
    assert!(c.run().capabilities.is_empty(), "already owned by 33");
    c.apply(&[call(
        1,
        nr::CHOWN,
        [0, 33, 33, 0, 0, 0],
        &[(PathRole::Target, "/run")],
    )]);
    let got = c.run();
    // /run is no tmpfs here (nothing was written in it): root meets the
    // directory it gave away again after a restart.
    assert_eq!(caps(&got), ["CHOWN", "DAC_OVERRIDE"]);
    assert_eq!(
        got.capabilities[&Capability::Chown][0].did,
        "changed the owner of /run from 0:0 to 33:33"
    );
}

#[test]
fn chmod_of_a_file_root_does_not_own_needs_fowner() {
    let mut c = Case::new(image(&base(), &[]));
    c.apply(&[
        exec(1, "/usr/sbin/web"),
        call(1, nr::CHMOD, [0; 6], &[(PathRole::Target, "/etc/secret")]),
    ]);
    assert!(c.run().capabilities.is_empty());
    c.apply(&[call(
        1,
        nr::UTIMENSAT,
        [0; 6],
        &[(PathRole::Target, "/var/www/index")],
    )]);
    assert_eq!(caps(&c.run()), ["FOWNER"]);
}

#[test]
fn files_whose_bits_deny_root_need_dac_capabilities() {
    let mut c = Case::new(image(&base(), &[]));
    // Root owns /etc/secret (0600): its owner bits allow.
    c.apply(&[exec(1, "/usr/sbin/web"), open(1, "/etc/secret", 0)]);
    assert!(c.run().capabilities.is_empty());
    // /var/lib/web is 0700 www-data: searching it and reading db needs
    // DAC_READ_SEARCH, writing db DAC_OVERRIDE.
    c.apply(&[open(1, "/var/lib/web/db", 0)]);
    let got = c.run();
    assert_eq!(caps(&got), ["DAC_READ_SEARCH"]);
    let did: Vec<&str> = got.capabilities[&Capability::DacReadSearch]
        .iter()
        .map(|e| e.did.as_str())
        .collect();
    assert_eq!(
        did,
        [
            "read /var/lib/web/db (mode 0600, owner 33:33)",
            "searched /var/lib/web (mode 0700, owner 33:33)",
        ]
    );
    c.apply(&[open(1, "/var/lib/web/db", 1)]);
    assert_eq!(caps(&c.run()), ["DAC_OVERRIDE", "DAC_READ_SEARCH"]);
}

#[test]
fn raw_sockets_and_chroot() {
    let mut c = Case::new(image(&base(), &[]));
    c.apply(&[
        exec(1, "/usr/sbin/web"),
        // socket(AF_INET, SOCK_STREAM): nothing; socket(AF_INET, SOCK_RAW).
        call(1, nr::SOCKET, [2, 1, 0, 0, 0, 0], &[]),
    ]);
    assert!(c.run().capabilities.is_empty());
    c.apply(&[
        call(1, nr::SOCKET, [2, 3 | 0o2000000, 1, 0, 0, 0], &[]),
        call(1, nr::CHROOT, [0; 6], &[(PathRole::Target, "/var/www")]),
    ]);
    assert_eq!(caps(&c.run()), ["NET_RAW", "SYS_CHROOT"]);
}

#[test]
fn a_signal_to_a_process_sharing_no_uid_needs_kill() {
    let mut c = Case::new(image(&base(), &[]));
    c.apply(&[
        exec(1, "/usr/sbin/web"),
        // To itself, to root's other processes, and to a process that set
        // its real uid but kept root as its saved uid: no capability.
        signal(1, (0, 0), (0, 0)),
        signal(1, (0, 0), (33, 0)),
        // A sender whose real uid is the receiver's: none either.
        signal(1, (33, 0), (33, 33)),
    ]);
    assert!(c.run().capabilities.is_empty(), "{:?}", caps(&c.run()));
    c.apply(&[signal(1, (0, 0), (33, 33))]);
    let got = c.run();
    assert_eq!(caps(&got), ["KILL"]);
    assert_eq!(
        got.explain(Capability::Kill),
        "granted: /usr/sbin/web sent SIGTERM to a process of uid 33, which shares no uid with it"
    );
    // The kernel's ids decide, not the uid the model followed: a process
    // the model thinks left root still signalled with CAP_KILL.
    let mut c = Case::new(image(&base(), &[]));
    c.apply(&[
        exec(1, "/usr/sbin/web"),
        setuid(1, 33),
        signal(1, (0, 0), (101, 101)),
    ]);
    assert!(caps(&c.run()).contains(&"KILL"));
}

#[test]
fn a_setuid_or_file_capability_exec_allows_new_privileges() {
    let mut c = Case::new(image(&base(), &["/usr/bin/ping"]));
    c.apply(&[exec(1, "/usr/sbin/web")]);
    assert!(c.run().no_new_privileges);
    c.apply(&[exec(2, "/usr/bin/ping")]);
    let got = c.run();
    assert!(!got.no_new_privileges);
    assert_eq!(
        got.new_privileges_by[0].did,
        "executed /usr/bin/ping (file capabilities)"
    );
    let mut c = Case::new(image(&base(), &[]));
    c.apply(&[exec(1, "/usr/bin/su")]);
    assert_eq!(
        c.run().new_privileges_by[0].to_string(),
        "/usr/bin/su executed /usr/bin/su (mode 4755)"
    );
}

#[test]
fn the_rpe_server_is_granted_what_it_needs_by_name() {
    let mut c = Case::new(image(&base(), &[]));
    c.rpe = true;
    c.apply(&[exec(1, "/usr/sbin/web")]);
    let got = c.run();
    assert_eq!(caps(&got), ["KILL", "SETGID", "SETUID"]);
    assert!(
        got.explain(Capability::Setuid)
            .starts_with("granted: the RPE server starts each callee as its caller's uid"),
        "{}",
        got.explain(Capability::Setuid)
    );
}

#[test]
fn writes_in_fresh_volatile_directories_get_tmpfs_and_others_a_volume() {
    let mut c = Case::new(image(&base(), &[]));
    c.apply(&[
        exec(1, "/usr/sbin/web"),
        open(1, "/run/web.pid", 0o101),
        open(1, "/var/lib/web/db", 1),
    ]);
    let got = c.run();
    assert!(got.root.read_only, "{:?}", got.root);
    assert_eq!(got.root.tmpfs[0].spec(), "/run:mode=755,uid=0,gid=0");
    assert_eq!(got.root.volumes, [p("/var/lib/web")]);
    let flags = got.docker_run_flags().join(" ");
    assert!(
        flags.ends_with("--read-only --tmpfs /run:mode=755,uid=0,gid=0 -v /var/lib/web"),
        "{flags}"
    );
    assert!(flags.starts_with("--cap-drop ALL"), "{flags}");
    assert!(
        flags.contains("--security-opt no-new-privileges"),
        "{flags}"
    );
}

#[test]
fn a_write_outside_the_plans_volumes_or_at_the_root_keeps_the_root_writable() {
    let mut c = Case::new(image(&base(), &[]));
    c.anonymous = false;
    c.apply(&[exec(1, "/usr/sbin/web"), open(1, "/var/lib/web/db", 1)]);
    let got = c.run();
    assert!(!got.root.read_only);
    assert_eq!(
        got.root.prevented_by[0].to_string(),
        "/usr/sbin/web wrote /var/lib/web/db in /var/lib/web, which is no volume of the plan"
    );
    assert!(!got.docker_run_flags().contains(&"--read-only".to_owned()));
    // In a volume of the plan it is fine.
    c.volumes.insert(p("/var/lib/web"));
    assert!(c.run().root.read_only);
    // A marker at / is in no state directory.
    c.apply(&[open(1, "/ready", 0o101)]);
    let got = c.run();
    assert_eq!(
        got.root.prevented_by[0].to_string(),
        "/usr/sbin/web wrote /ready, in no state directory"
    );
}

#[test]
fn a_volatile_directory_holding_image_files_is_a_volume_not_a_tmpfs() {
    let mut fs = base();
    fs.push(("/run/shipped.conf", 0o644, 0, 0));
    let mut c = Case::new(image(&fs, &[]));
    c.apply(&[exec(1, "/usr/sbin/web"), open(1, "/run/web.pid", 0o101)]);
    let got = c.run();
    assert!(got.root.tmpfs.is_empty());
    assert_eq!(got.root.volumes, [p("/run")]);
}

#[test]
fn the_same_events_give_the_same_privileges() {
    let events = [
        exec(1, "/usr/sbin/web"),
        bind(1, "0.0.0.0:80"),
        open(1, "/var/lib/web/db", 1),
        fork(1, 2),
        setuid(2, 33),
    ];
    let mut a = Case::new(image(&base(), &[]));
    let mut b = Case::new(image(&base(), &[]));
    a.apply(&events);
    b.apply(&events);
    assert_eq!(
        serde_json::to_string(&a.run()).unwrap(),
        serde_json::to_string(&b.run()).unwrap()
    );
}

#[test]
fn capability_names_parse_with_or_without_cap_prefix() {
    assert_eq!(
        Capability::from_name("cap_net_bind_service"),
        Some(Capability::NetBindService)
    );
    assert_eq!(Capability::from_name("SYS_ADMIN"), None);
}

#[test]
fn the_runtimes_own_set_up_is_no_evidence() {
    let mut c = Case::new(image(&base(), &[]));
    // Pid 9 never exec'd while watched: runc's init setting up the
    // container, writing mount points and dropping groups.
    c.apply(&[
        exec(1, "/usr/sbin/web"),
        call(9, nr::SETGROUPS, [1, 0x7fff_0000, 0, 0, 0, 0], &[]),
        open(9, "/var/lib/docker/overlay2/x/merged/dev", 0o101),
    ]);
    let got = c.run();
    assert!(got.capabilities.is_empty(), "{got:?}");
    assert!(got.root.read_only, "{got:?}");
}

#[test]
fn nested_state_directories_share_one_mount() {
    let mut fs = base();
    fs.push(("/var/lib/web/aof/", 0o755, 0, 0));
    let mut c = Case::new(image(&fs, &[]));
    // A rename from the outer directory into the inner one: two mounts
    // would make it fail with EXDEV.
    c.apply(&[
        exec(1, "/usr/sbin/web"),
        open(1, "/var/lib/web/tmp-manifest", 0o101),
        open(1, "/var/lib/web/aof/log", 0o101),
        call(
            1,
            nr::RENAME,
            [0; 6],
            &[
                (PathRole::Old, "/var/lib/web/tmp-manifest"),
                (PathRole::New, "/var/lib/web/aof/manifest"),
            ],
        ),
    ]);
    let got = c.run();
    assert_eq!(got.root.volumes, [p("/var/lib/web")], "{:?}", got.root);
}

#[test]
fn privileged_calls_of_a_process_whose_exec_was_not_seen_are_named() {
    let mut c = Case::new(image(&base(), &[]));
    // Pid 7 ran before the watch began (an --attach session): its bind is
    // evidence of a need that cannot be attributed, so it is named.
    let mut e = bind(7, "0.0.0.0:80");
    e.comm = "web".into();
    c.apply(&[e]);
    let got = c.run();
    assert!(got.capabilities.is_empty());
    assert_eq!(got.not_seen, [Exe(p("/?unobserved-exec/web"))]);
    assert!(
        got.summary()
            .contains("WARNING: processes whose exec was not seen (/?unobserved-exec/web)"),
        "{}",
        got.summary()
    );
}

#[test]
fn a_process_that_kept_its_capabilities_across_setuid_still_needs_setgid() {
    // setpriv --reuid=33 --regid=33 --init-groups: PR_SET_KEEPCAPS, then
    // setresuid first, setresgid and setgroups after, as uid 33.
    let mut c = Case::new(image(&base(), &[]));
    c.apply(&[
        exec(1, "/usr/bin/setpriv"),
        call(1, nr::SETRESUID, [33, 33, 33, 0, 0, 0], &[]),
        call(1, nr::SETRESGID, [33, 33, 33, 0, 0, 0], &[]),
        call(1, nr::SETGROUPS, [1, 0x7fff_0000, 0, 0, 0, 0], &[]),
        // Setting its own uid again needs nothing.
        call(1, nr::SETUID, [33, 0, 0, 0, 0, 0], &[]),
    ]);
    let got = c.run();
    assert_eq!(caps(&got), ["SETGID", "SETUID"]);
    assert_eq!(
        got.explain(Capability::Setgid),
        "granted: /usr/bin/setpriv called setgroups with 1 groups; \
         /usr/bin/setpriv called setresgid(33, 33, 33)"
    );
    assert_eq!(
        got.explain(Capability::Setuid),
        "granted: /usr/bin/setpriv called setresuid(33, 33, 33)"
    );
}

#[test]
fn chmod_of_a_directory_made_at_run_time_and_chowned_away_needs_fowner() {
    let mut c = Case::new(image(&base(), &[]));
    c.apply(&[
        exec(1, "/usr/sbin/web"),
        call(1, nr::MKDIR, [0; 6], &[(PathRole::Target, "/var/lib/hold")]),
        call(
            1,
            nr::CHOWN,
            [0, 33, 0, 0, 0, 0],
            &[(PathRole::Target, "/var/lib/hold")],
        ),
        call(1, nr::CHMOD, [0; 6], &[(PathRole::Target, "/var/lib/hold")]),
    ]);
    assert_eq!(caps(&c.run()), ["CHOWN", "DAC_OVERRIDE", "FOWNER"]);
}

#[test]
fn what_root_gives_away_where_it_outlives_a_restart_needs_dac_override() {
    let mut c = Case::new(image(&base(), &[]));
    c.apply(&[
        exec(1, "/usr/sbin/web"),
        // In a tmpfs: gone at the next start.
        open(1, "/run/web.sock", 0o101),
        call(
            1,
            nr::CHOWN,
            [0, 33, 33, 0, 0, 0],
            &[(PathRole::Target, "/run/web.sock")],
        ),
    ]);
    assert_eq!(caps(&c.run()), ["CHOWN"]);
    // In a volume: after a SIGKILL, root finds it again, owned by 33.
    c.apply(&[
        open(1, "/var/lib/web/lock", 0o101),
        call(
            1,
            nr::CHOWN,
            [0, 33, 33, 0, 0, 0],
            &[(PathRole::Target, "/var/lib/web/lock")],
        ),
    ]);
    let got = c.run();
    // DAC_READ_SEARCH: /var/lib/web is www-data's 0700.
    assert_eq!(caps(&got), ["CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH"]);
    assert!(
        got.explain(Capability::DacOverride).contains(
            "/usr/sbin/web gave /var/lib/web/lock to uid 33 where it outlives a restart, \
             so root meets it again after a crash"
        ),
        "{}",
        got.explain(Capability::DacOverride)
    );
}

#[test]
fn a_hardening_label_asks_for_no_more_than_emit_grants() {
    let ok = Hardening {
        cap_add: vec!["NET_BIND_SERVICE".into()],
        security_opt: vec![
            "no-new-privileges:true".into(),
            "seccomp={\"defaultAction\":\"SCMP_ACT_ERRNO\"}".into(),
        ],
        ..Hardening::default()
    };
    assert_eq!(ok.check(), Ok(()));
    let sys_admin = Hardening {
        cap_add: vec!["SYS_ADMIN".into()],
        ..Hardening::default()
    };
    assert!(sys_admin.check().unwrap_err().contains("SYS_ADMIN"));
    for opt in ["seccomp=unconfined", "apparmor=unconfined", "label=disable"] {
        let wide = Hardening {
            security_opt: vec![opt.into()],
            ..Hardening::default()
        };
        assert!(wide.check().unwrap_err().contains(opt), "{opt}");
    }
}

#[test]
fn the_hardening_carries_the_profile_inline() {
    let mut p = Privileges {
        no_new_privileges: true,
        ..Privileges::default()
    };
    p.seccomp.evidence = true;
    p.seccomp.allowed.insert("read".into(), vec![]);
    let h = p.hardening();
    assert_eq!(h.security_opt[0], "no-new-privileges:true");
    assert!(h.security_opt[1].starts_with("seccomp={\"defaultAction\":\"SCMP_ACT_ERRNO\""));
    assert_eq!(h.check(), Ok(()));
    assert!(
        p.docker_run_flags()
            .join(" ")
            .contains("--security-opt seccomp=seccomp.json")
    );
}
