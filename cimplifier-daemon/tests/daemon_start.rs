//! `cimplifierd serve` failing to start says why and leaves nothing
//! behind: as non-root it says it needs root; a read-only state directory
//! is not blamed on another daemon; no stale socket stays. Needs root (to
//! mount a read-only tmpfs and to drop to another uid).

mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};

use common::require_root;

fn serve(socket: &Path, state: &Path, uid: Option<u32>) -> Output {
    let mut cmd = common::cimplifierd();
    cmd.arg("serve")
        .arg("--socket")
        .arg(socket)
        .arg("--state-dir")
        .arg(state)
        .arg("--config")
        .arg("/dev/null");
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    cmd.output().unwrap()
}

/// A tmpfs mounted read-only once `state` is made on it; unmounted on drop.
struct ReadOnly(std::path::PathBuf);

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_failed_start_says_why_and_leaves_no_socket() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();

    let out = serve(
        &dir.path().join("a.sock"),
        &dir.path().join("a-state"),
        Some(65534),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs root"), "{err}");
    assert!(!err.contains("tracefs"), "{err}");

    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    let ok = |args: &[&str]| {
        let s = Command::new("mount").args(args).arg(&ro).status().unwrap();
        assert!(s.success(), "mount {args:?}");
    };
    ok(&["-t", "tmpfs", "tmpfs"]);
    let _mounted = ReadOnly(ro.clone());
    std::fs::create_dir(ro.join("state")).unwrap();
    ok(&["-o", "remount,ro"]);
    let socket = dir.path().join("run/b.sock");
    let out = serve(&socket, &ro.join("state"), None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not writable"), "{err}");
    assert!(!err.contains("another cimplifierd"), "{err}");
    assert!(!socket.exists(), "a failed start leaves no socket");
}

/// Under systemd (`Type=notify`), the daemon says READY=1 once its socket
/// is bound, and STOPPING=1 when told to stop.
#[test]
fn systemd_hears_ready_once_the_socket_is_bound() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify.sock");
    let listener = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    listener
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut d = common::Daemon::start_with_env(&[], &[("NOTIFY_SOCKET", notify.as_path())]);
    let mut buf = [0u8; 256];
    let n = listener.recv(&mut buf).expect("no READY=1 within 30 s");
    let said = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(said.lines().any(|l| l == "READY=1"), "{said:?}");
    assert!(d.socket.exists());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let n = listener.recv(&mut buf).expect("no STOPPING=1 within 30 s");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    assert!(d.child.wait().unwrap().success());
}

/// `--log-format json`: every line the daemon logs is one JSON object with
/// its time, level, target and message.
#[test]
fn the_daemon_logs_json_lines_when_asked() {
    use std::io::Read;
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/j.sock");
    let mut child = common::cimplifierd()
        .args([
            "--log-format",
            "json",
            "serve",
            "--config",
            "/dev/null",
            "--socket",
        ])
        .arg(&socket)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_until(30, "the daemon serves", || socket.exists());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(child.wait().unwrap().success(), "{err}");
    let lines: Vec<serde_json::Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let serving = lines
        .iter()
        .find(|l| l["message"] == "serving")
        .unwrap_or_else(|| panic!("no `serving` line: {err}"));
    assert_eq!(serving["level"], "INFO", "{serving}");
    assert_eq!(serving["socket"], socket.to_str().unwrap(), "{serving}");
    assert!(
        serving["timestamp"].as_str().unwrap().ends_with('Z'),
        "{serving}"
    );
}

/// A test daemon reads neither the host's config nor the caller's
/// `CIMPLIFIER_*` variables: both are planted here, pointing at a config
/// and a value the daemon refuses, and the test daemon starts anyway.
#[test]
fn a_planted_config_and_environment_do_not_reach_a_test_daemon() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let planted = dir.path().join("cimplifierd.toml");
    std::fs::write(&planted, "ring_buffer_mib = 3\n").unwrap();
    // SAFETY: the other threads of this binary only read the environment
    // through std (spawning a command), which takes the same lock.
    unsafe {
        std::env::set_var("CIMPLIFIER_CONFIG", &planted);
        std::env::set_var("CIMPLIFIER_RING_BUFFER_MIB", "3");
    }
    let d = common::Daemon::start();
    assert!(d.ctl(&["version"]).status.success());
}

/// Settings come from the config file, then the environment, then flags:
/// the environment's ring-buffer size overrides the config's bad one.
#[test]
fn the_environment_overrides_the_config_file() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cimplifierd.toml");
    std::fs::write(&config, "ring_buffer_mib = 3\n").unwrap();
    let serve = |env: Option<&str>| {
        let mut cmd = common::cimplifierd();
        cmd.arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--socket")
            .arg(dir.path().join("run/e.sock"))
            .arg("--state-dir")
            .arg(dir.path().join("state"));
        if let Some(mib) = env {
            cmd.env("CIMPLIFIER_RING_BUFFER_MIB", mib);
        }
        cmd
    };
    let refused = serve(None).output().unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("ring_buffer_mib 3 must be a power of two"),
        "{err}"
    );

    let mut child = serve(Some("4")).spawn().unwrap();
    let socket = dir.path().join("run/e.sock");
    common::wait_until(30, "the daemon serves with the environment's size", || {
        socket.exists()
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
}

/// The ids of the eBPF programs process `pid` holds open.
fn bpf_programs_held_by(pid: u32) -> std::collections::BTreeSet<u32> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Default::default();
    };
    fds.filter_map(|fd| std::fs::read_to_string(fd.ok()?.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|id| id.trim().parse().ok())
        })
        .collect()
}

/// SIGTERM detaches the programs: the daemon exits 0 and none of the eBPF
/// programs it held stays loaded in the kernel.
#[test]
fn sigterm_detaches_the_programs() {
    require_root();
    let mut d = common::Daemon::start();
    let pid = d.child.id();
    let mut held = Default::default();
    common::wait_until(30, "the daemon holds its eBPF programs", || {
        held = bpf_programs_held_by(pid);
        !held.is_empty()
    });
    let loaded = || -> std::collections::BTreeSet<u32> {
        aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .map(|p| p.id())
            .collect()
    };
    assert!(
        held.is_subset(&loaded()),
        "the kernel lists them while it runs"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(d.child.wait().unwrap().success());
    // The kernel frees a program once its last reference (an attachment
    // torn down with the process) is gone, a moment after the exit.
    common::wait_until(10, "the daemon's programs to be unloaded", || {
        held.is_disjoint(&loaded())
    });
}
