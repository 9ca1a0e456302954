//! Shared pieces of the end-to-end tracer tests. They need root, eBPF and
//! (some) Docker; they fail with a message saying so rather than skip.
#![allow(dead_code)]

pub mod lifecycle;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use std::time::Instant;

use cimplifier::trace::cgroup::cgroup2_mount;
use cimplifier::trace::{
    ContainerPath, Event, EventStream, PathRole, SocketAddress, SyscallEvent, Tracer,
};

pub fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the tracer tests load eBPF programs and create cgroups: run them as root \
         (`cargo xtask test` does), after `cargo xtask setup`"
    );
}

/// A fresh cgroup v2 directory, removed (with its processes gone) on drop.
pub struct TestCgroup {
    pub path: PathBuf,
}

impl TestCgroup {
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = cgroup2_mount().unwrap().join(format!(
            "cimplifier-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        Self { path }
    }
}

/// Runs `argv` inside the cgroup at `cgroup`: a shell moves itself in, then
/// execs it. Panics with its stderr when it fails.
pub fn run_in(cgroup: &Path, argv: &[&str]) -> Output {
    let script = format!("echo $$ > {}/cgroup.procs && exec \"$@\"", cgroup.display());
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .args(argv)
        .output()
        .unwrap_or_else(|e| panic!("running {argv:?}: {e}"));
    assert!(
        out.status.success(),
        "{argv:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Reads events until none arrives for `quiet`.
pub async fn drain(events: &mut EventStream, quiet: Duration) -> Vec<Event> {
    let mut out = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(quiet, events.next_event()).await {
        out.push(e);
    }
    out
}

/// Every event the tracer wrote before `mark` (CLOCK_MONOTONIC ns, see
/// `monotonic_ns`), however slow the reader: for counts that two tracers
/// must agree on, where a quiet gap would be a guess.
pub async fn drain_through(tracer: &Tracer, events: &mut EventStream, mark: u64) -> Vec<Event> {
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_millis(50), events.next_event()).await {
            Ok(Some(e)) => out.push(e),
            Ok(None) => panic!("the event stream ended while draining"),
            Err(_) if tracer.drained_ns() >= mark && events.is_empty() => return out,
            Err(_) => {}
        }
    }
}

pub fn workload_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/trace_workload.py")
}

pub fn syscalls<'a>(events: &'a [Event], name: &str) -> Vec<(&'a Event, &'a SyscallEvent)> {
    events
        .iter()
        .filter_map(|e| e.syscall().filter(|s| s.syscall == name).map(|s| (e, s)))
        .collect()
}

pub fn path_of(s: &SyscallEvent, role: PathRole) -> Option<&str> {
    s.path(role)
        .and_then(|p| p.path.as_ref())
        .map(ContainerPath::as_str)
}

/// Syscalls named one of `names` whose `role` path resolved to `path`.
pub fn find<'a>(
    events: &'a [Event],
    names: &[&str],
    role: PathRole,
    path: &str,
) -> Vec<(&'a Event, &'a SyscallEvent)> {
    events
        .iter()
        .filter_map(|e| e.syscall().map(|s| (e, s)))
        .filter(|(_, s)| names.contains(&s.syscall.as_str()) && path_of(s, role) == Some(path))
        .collect()
}

pub fn unix_path(addr: &Option<SocketAddress>) -> Option<&str> {
    match addr {
        Some(SocketAddress::Unix { path: Some(p), .. }) => Some(p.as_str()),
        _ => None,
    }
}

/// Describes the events for an assertion message (the first `n`).
pub fn dump(events: &[Event], n: usize) -> String {
    events
        .iter()
        .take(n)
        .map(|e| serde_json::to_string(e).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A command running `exe` (one of this crate's binaries) as a test must:
/// without the caller's `CIMPLIFIER_*` variables, which would otherwise
/// override what the test chose, and killed (SIGTERM) when the test's
/// thread ends, so that a test killed before its Drop runs leaves no daemon
/// or host-wide eBPF programs behind.
pub fn isolated(exe: &Path) -> Command {
    let mut cmd = Command::new(exe);
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(|n| n.starts_with("CIMPLIFIER_")) {
            cmd.env_remove(name);
        }
    }
    // SAFETY: prctl only, between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
                .map_err(std::io::Error::from)
        });
    }
    cmd
}

/// `cimplifierd`, isolated. A `serve` should also be given `--config`
/// (`/dev/null` for none) so that the host's config is not read.
pub fn cimplifierd() -> Command {
    isolated(Path::new(env!("CARGO_BIN_EXE_cimplifierd")))
}

/// `cimplifierctl`, isolated.
pub fn cimplifierctl() -> Command {
    isolated(Path::new(env!("CARGO_BIN_EXE_cimplifierctl")))
}

/// A `cimplifierd serve` process on its own socket and state directory,
/// killed on drop.
pub struct Daemon {
    pub child: Child,
    /// The cimplifierd binary it runs.
    pub exe: PathBuf,
    pub socket: PathBuf,
    pub state: PathBuf,
    extra: Vec<String>,
    env: Vec<(String, PathBuf)>,
    _dir: tempfile::TempDir,
}

impl Daemon {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_with_env(extra, &[])
    }

    pub fn start_with_env(extra: &[&str], env: &[(&str, &Path)]) -> Self {
        Self::start_exe(Path::new(env!("CARGO_BIN_EXE_cimplifierd")), extra, env)
    }

    /// Runs the cimplifierd at `exe` (e.g. a copy placed elsewhere).
    pub fn start_exe(exe: &Path, extra: &[&str], env: &[(&str, &Path)]) -> Self {
        Self::start_exe_on(exe, None, extra, env)
    }

    /// A daemon whose state directory is `state` (a small file system, say).
    pub fn start_on_state(state: &Path, extra: &[&str], env: &[(&str, &Path)]) -> Self {
        let exe = Path::new(env!("CARGO_BIN_EXE_cimplifierd"));
        Self::start_exe_on(exe, Some(state), extra, env)
    }

    fn start_exe_on(
        exe: &Path,
        state: Option<&Path>,
        extra: &[&str],
        env: &[(&str, &Path)],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // Reachable by any uid, so the socket's own mode decides who gets in.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let socket = dir.path().join("run/cimplifier.sock");
        let state = state.map_or_else(|| dir.path().join("state"), Path::to_path_buf);
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, PathBuf)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.to_path_buf()))
            .collect();
        let child = Self::spawn(exe, &socket, &state, &extra, &env);
        let d = Self {
            child,
            exe: exe.to_path_buf(),
            socket,
            state,
            extra,
            env,
            _dir: dir,
        };
        d.wait_ready();
        d
    }

    fn spawn(
        exe: &Path,
        socket: &Path,
        state: &Path,
        extra: &[String],
        env: &[(String, PathBuf)],
    ) -> Child {
        let mut cmd = isolated(exe);
        cmd.envs(env.iter().map(|(k, v)| (k, v))).arg("serve");
        // The host's /etc/cimplifier/cimplifierd.toml is not the test's.
        if !extra.iter().any(|a| a == "--config") {
            cmd.args(["--config", "/dev/null"]);
        }
        cmd.arg("--socket")
            .arg(socket)
            .arg("--state-dir")
            .arg(state)
            .args(extra)
            .spawn()
            .unwrap()
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.ctl(&["version"]).status.success() {
            assert!(Instant::now() < deadline, "cimplifierd never answered");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the daemon with SIGKILL, as a crash would.
    pub fn kill_hard(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Starts the daemon again on the same socket and state directory.
    pub fn restart(&mut self) {
        self.child = Self::spawn(&self.exe, &self.socket, &self.state, &self.extra, &self.env);
        self.wait_ready();
    }

    /// A session's record and events, through `cimplifierctl export`.
    pub fn session_events(&self, name: &str) -> (serde_json::Value, Vec<Event>) {
        let out = self.ctl(&["export", name, "-o", "-"]);
        assert!(
            out.status.success(),
            "export {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut lines = out.stdout.split(|&b| b == b'\n').filter(|l| !l.is_empty());
        let header: serde_json::Value = serde_json::from_slice(lines.next().unwrap()).unwrap();
        let events = lines.map(|l| serde_json::from_slice(l).unwrap()).collect();
        (header["session"].clone(), events)
    }

    /// Runs cimplifierctl against this daemon.
    pub fn ctl(&self, args: &[&str]) -> Output {
        cimplifierctl()
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        stop_daemon(&mut self.child);
    }
}

/// Stops a daemon as systemd would: SIGTERM, then SIGKILL if it has not
/// exited in a minute. A daemon that shuts down closes its syscall hooks
/// several at a time; killed, it leaves them to the kernel's exit, one by
/// one, at ~2.5 times the wait. Every test's daemon so tests the shutdown:
/// one that hangs or fails fails the test (unless it is failing already).
pub fn stop_daemon(child: &mut Child) {
    // Reaped already: its pid may be another process's now.
    if !matches!(child.try_wait(), Ok(None)) {
        return;
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            assert!(
                status.success() || std::thread::panicking(),
                "the daemon (pid {pid}) failed its shutdown on SIGTERM: {status}"
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        std::thread::panicking(),
        "the daemon (pid {pid}) had not exited a minute after SIGTERM: killed"
    );
}

/// Runs the docker CLI; panics with its stderr when it fails.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("running the docker CLI");
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A container (and its anonymous volumes) removed however the test ends.
pub struct Container(pub String);

impl Container {
    /// `docker create --name cimplifier-TAG-PID ARGS...`.
    pub fn create(tag: &str, args: &[&str]) -> Self {
        let name = format!("cimplifier-{tag}-{}", std::process::id());
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v", &name])
            .output();
        let mut all = vec!["create", "--name", &name];
        all.extend_from_slice(args);
        docker(&all);
        Self(name)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v", &self.0])
            .output();
    }
}

/// The smallest test image (`cargo xtask images`).
pub const BASE_IMAGE: &str = "cimplifier-test/base:bookworm";

/// A command's stdout; panics with its stderr when it failed.
pub fn stdout_of(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `cimplifierctl sessions --json`, the entry of session `name`.
pub fn session_json(d: &Daemon, name: &str) -> serde_json::Value {
    let all: serde_json::Value =
        serde_json::from_str(&stdout_of(&d.ctl(&["sessions", "--json"]))).unwrap();
    all.as_array()
        .unwrap()
        .iter()
        .find(|s| s["container"] == name)
        .unwrap_or_else(|| panic!("no session {name} in {all}"))
        .clone()
}

/// Whether any event opened, exec'd or stat'd `path`.
pub fn touches(events: &[Event], path: &str) -> bool {
    events.iter().any(|e| {
        e.syscall().is_some_and(|s| {
            s.paths
                .iter()
                .any(|p| p.raw == path || p.path.as_ref().is_some_and(|x| x.as_str() == path))
        })
    })
}

/// Polls `f` every 100 ms until it is true; panics with `what` after `secs`.
pub fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `cimplifierctl emit SESSION --policy POLICY --tag TAG --out OUT --json`:
/// the partitioned emit's report, also printed.
pub fn emit_partitioned(
    d: &Daemon,
    session: &str,
    policy: &Path,
    tag: &str,
    out: &Path,
) -> cimplifier::emit::partitioned::PartitionEmitReport {
    let report: cimplifier::emit::partitioned::PartitionEmitReport =
        serde_json::from_str(&stdout_of(&d.ctl(&[
            "emit",
            session,
            "--policy",
            policy.to_str().unwrap(),
            "--tag",
            tag,
            "--out",
            out.to_str().unwrap(),
            "--json",
        ])))
        .unwrap();
    println!("{}", report.render_text());
    report
}

/// Stops the run plans (`down --volumes`) and removes the images a
/// partitioned test made, however the test ends.
pub struct PlanCleanup<'a> {
    pub daemon: &'a Daemon,
    pub plans: Vec<String>,
    pub images: Vec<String>,
}

impl Drop for PlanCleanup<'_> {
    fn drop(&mut self) {
        for plan in &self.plans {
            let _ = self.daemon.ctl(&["down", plan, "--volumes"]);
        }
        for image in &self.images {
            let _ = Command::new("docker").args(["rmi", image]).output();
        }
    }
}

/// `docker logs CONTAINER`, stdout then stderr.
pub fn container_logs(container: &str) -> String {
    let o = Command::new("docker")
        .args(["logs", container])
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The policy that puts the shell and `cat` in partitions of their own.
pub const SHELL_AND_READER_POLICY: &str = "kind = \"disjoint-subsets\"\n[partitions]\nshell = [\"/bin/sh\"]\nreader = [\"/usr/bin/cat\"]\n";

/// Builds `image` from the base image: it ships /srv/app/flag, and its
/// command writes beside it and has `cat` read both, so by
/// [`SHELL_AND_READER_POLICY`] two partitions share /srv/app. `tag` names
/// the scratch container. The caller removes the image.
pub fn flag_image(tag: &str, image: &str) {
    let base = Container::create(
        tag,
        &[
            BASE_IMAGE,
            "sh",
            "-c",
            "mkdir -p /srv/app && echo hello > /srv/app/flag",
        ],
    );
    docker(&["start", "-a", &base.0]);
    docker(&[
        "commit",
        "--change",
        r#"CMD ["/bin/sh", "-c", "echo 1 > /srv/app/pid; cat /srv/app/flag /srv/app/pid"]"#,
        &base.0,
        image,
    ]);
}

/// A created container that reads a file every `period` seconds once
/// started.
pub fn looping(tag: &str, period: &str) -> Container {
    Container::create(
        tag,
        &[
            BASE_IMAGE,
            "/bin/sh",
            "-c",
            &format!("while true; do cat /etc/hostname > /dev/null; sleep {period}; done"),
        ],
    )
}

/// `cimplifierctl observe CONTAINER --no-lifecycle --json` against `d`,
/// which runs until the container stops: its summary on stdout, piped,
/// and its stderr piped.
pub fn observe_until_stopped(d: &Daemon, container: &str) -> std::process::Child {
    cimplifierctl()
        .arg("--socket")
        .arg(&d.socket)
        .args(["observe", container, "--no-lifecycle", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Observes `container` through the daemon's gRPC API.
pub async fn observe(d: &Daemon, container: &str) {
    cimplifier::api::connect(&d.socket)
        .await
        .unwrap()
        .observe(cimplifier::api::pb::ObserveRequest {
            container: container.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// A static 32-bit x86 program that opens `/etc/hostname` through
/// `int 0x80` (i386 syscall 5) and exits 7, assembled with binutils.
pub fn i386_program(dir: &Path) -> PathBuf {
    let src = dir.join("open32.s");
    std::fs::write(
        &src,
        ".globl _start
_start:
 mov $5, %eax
 mov $name, %ebx
 xor %ecx, %ecx
 int $0x80
 mov $1, %eax
 mov $7, %ebx
 int $0x80
.data
name: .asciz \"/etc/hostname\"
",
    )
    .unwrap();
    let obj = dir.join("open32.o");
    let exe = dir.join("open32");
    for (tool, args) in [
        (
            "as",
            vec!["--32", "-o", obj.to_str().unwrap(), src.to_str().unwrap()],
        ),
        (
            "ld",
            vec![
                "-m",
                "elf_i386",
                "-o",
                exe.to_str().unwrap(),
                obj.to_str().unwrap(),
            ],
        ),
    ] {
        let out = std::process::Command::new(tool)
            .args(&args)
            .output()
            .unwrap_or_else(|e| {
                panic!("running {tool} (binutils, installed by `cargo xtask setup`): {e}")
            });
        assert!(
            out.status.success(),
            "{tool}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    exe
}
