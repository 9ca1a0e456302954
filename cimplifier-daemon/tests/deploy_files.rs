//! The deployment files in deploy/ agree with the daemon and give it what it
//! needs. Checked without a cluster, a registry or systemd as PID 1:
//! `systemd-analyze verify` on the unit (it works offline) plus its key
//! settings, the DaemonSet parsed as YAML, and the Dockerfile's stages
//! against each other and against the workspace.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_norway::Value;

const CIMPLIFIERD: &str = env!("CARGO_BIN_EXE_cimplifierd");
const CIMPLIFIERCTL: &str = env!("CARGO_BIN_EXE_cimplifierctl");
const UNIT: &str = "deploy/systemd/cimplifierd.service";
const DAEMONSET: &str = "deploy/kubernetes/daemonset.yaml";
const DOCKERFILE: &str = "deploy/Dockerfile";
const SAMPLE_CONFIG: &str = "deploy/cimplifierd.toml";
/// Where the unit, the DaemonSet and the image put the binaries.
const INSTALLED_CIMPLIFIERD: &str = "/usr/local/bin/cimplifierd";
const INSTALLED_CIMPLIFIERCTL: &str = "/usr/local/bin/cimplifierctl";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

/// The `--long` flags of a command line's words (`--flag value` or `--flag=value`).
fn long_flags<'a>(words: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    words
        .into_iter()
        .filter_map(|w| w.strip_prefix("--"))
        .map(|w| w.split('=').next().unwrap().to_owned())
        .collect()
}

/// The value after `--flag` (or of `--flag=value`) in `words`.
fn flag_value(words: &[&str], flag: &str) -> Option<String> {
    let long = format!("--{flag}");
    let eq = format!("--{flag}=");
    words.iter().enumerate().find_map(|(i, w)| {
        if *w == long {
            words.get(i + 1).map(|v| v.to_string())
        } else {
            w.strip_prefix(&eq).map(str::to_owned)
        }
    })
}

/// Asserts `binary ARGS --help` succeeds and lists every flag.
fn assert_flags_exist(binary: &str, args: &[&str], flags: &[String], whose: &str) {
    let out = common::isolated(Path::new(binary))
        .args(args)
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("running {binary} {args:?} --help: {e}"));
    assert!(
        out.status.success(),
        "{whose}: `{} {} --help` failed: {}",
        Path::new(binary).file_name().unwrap().display(),
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in flags {
        assert!(
            help.contains(&format!("--{flag}")),
            "{whose} passes --{flag}, which `{} --help` does not know:\n{help}",
            args.join(" ")
        );
    }
}

// ---------------------------------------------------------------- systemd

/// A unit file as section -> key -> values (a key may repeat).
type Unit = BTreeMap<String, BTreeMap<String, Vec<String>>>;

fn parse_unit(text: &str) -> Unit {
    let mut unit = Unit::new();
    let mut section = String::new();
    let mut pending = String::new();
    for raw in text.lines() {
        let line = raw.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with(';'))
        {
            continue;
        }
        if let Some(cont) = line.strip_suffix('\\') {
            pending.push_str(cont);
            pending.push(' ');
            continue;
        }
        let line = std::mem::take(&mut pending) + line;
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{UNIT}: not a key=value line: {line}"));
        unit.entry(section.clone())
            .or_default()
            .entry(key.trim().to_owned())
            .or_default()
            .push(value.trim().to_owned());
    }
    unit
}

fn unit_value<'a>(unit: &'a Unit, section: &str, key: &str) -> Option<&'a str> {
    unit.get(section)?.get(key)?.last().map(String::as_str)
}

fn systemd_analyze_verify(unit_path: &Path) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(unit_path)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running systemd-analyze: {e}; it is in Debian's `systemd` package, \
                 which `cargo xtask setup` installs"
            )
        });
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), said)
}

/// `systemd-analyze verify` works without systemd as PID 1: it loads the
/// unit and its dependencies offline. It exits 0 on warnings such as an
/// unknown key or a bad value, so any output at all fails the test. The
/// binary path is pointed at the freshly built daemon, which verify
/// requires to exist.
#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let text = read(UNIT);
    assert!(
        text.contains(&format!("ExecStart={INSTALLED_CIMPLIFIERD} ")),
        "{UNIT}: ExecStart should run {INSTALLED_CIMPLIFIERD}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cimplifierd.service");
    std::fs::write(
        &path,
        text.replace(
            &format!("ExecStart={INSTALLED_CIMPLIFIERD} "),
            &format!("ExecStart={CIMPLIFIERD} "),
        ),
    )
    .unwrap();
    let (ok, said) = systemd_analyze_verify(&path);
    assert!(
        ok && said.trim().is_empty(),
        "systemd-analyze verify {UNIT}: {}",
        if said.trim().is_empty() {
            "failed"
        } else {
            &said
        }
    );

    // And it does complain in this environment: a misspelt value is reported.
    let broken = dir.path().join("broken").join("cimplifierd.service");
    std::fs::create_dir_all(broken.parent().unwrap()).unwrap();
    std::fs::write(
        &broken,
        std::fs::read_to_string(&path)
            .unwrap()
            .replace("ProtectSystem=strict", "ProtectSystem=stricct"),
    )
    .unwrap();
    let (_, said) = systemd_analyze_verify(&broken);
    assert!(
        said.contains("stricct"),
        "systemd-analyze verify did not report a bad value, so it checks nothing here: {said:?}"
    );
}

#[test]
fn systemd_unit_runs_serve_with_managed_dirs_bpf_capabilities_and_a_graceful_stop() {
    let unit = parse_unit(&read(UNIT));
    let svc = |key: &str| unit_value(&unit, "Service", key);

    assert_eq!(
        svc("Type"),
        Some("notify"),
        "systemd starts what needs the daemon once it says READY=1"
    );
    let exec = svc("ExecStart").expect("ExecStart");
    let words: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(
        words[..2],
        [INSTALLED_CIMPLIFIERD, "serve"],
        "ExecStart: {exec}"
    );
    assert_flags_exist(
        CIMPLIFIERD,
        &["serve"],
        &long_flags(words[2..].iter().copied()),
        UNIT,
    );

    // The socket and the state live in the directories systemd manages.
    let runtime_dir = svc("RuntimeDirectory").expect("RuntimeDirectory=");
    let state_dir = svc("StateDirectory").expect("StateDirectory=");
    let socket = flag_value(&words, "socket").expect("ExecStart passes --socket");
    assert_eq!(
        Path::new(&socket).parent().unwrap(),
        Path::new("/run").join(runtime_dir),
        "the socket must be in RuntimeDirectory="
    );
    assert_eq!(
        socket,
        cimplifier::api::DEFAULT_SOCKET,
        "cimplifierctl's default socket"
    );
    assert_eq!(
        flag_value(&words, "state-dir").expect("ExecStart passes --state-dir"),
        Path::new("/var/lib").join(state_dir).display().to_string()
    );

    assert_eq!(svc("Restart"), Some("on-failure"));
    assert_eq!(svc("KillSignal"), Some("SIGTERM"));
    let stop = svc("TimeoutStopSec").expect("TimeoutStopSec= (sessions are written on SIGTERM)");
    let stop = humantime::parse_duration(stop)
        .or_else(|_| stop.parse::<u64>().map(std::time::Duration::from_secs))
        .unwrap_or_else(|_| panic!("TimeoutStopSec={stop}"));
    assert!(
        stop.as_secs() >= 60,
        "TimeoutStopSec={stop:?} leaves sessions little time to be written"
    );

    let caps: BTreeSet<&str> = svc("CapabilityBoundingSet")
        .expect("CapabilityBoundingSet=")
        .split_whitespace()
        .collect();
    for cap in [
        "CAP_BPF",
        "CAP_PERFMON",
        "CAP_SYS_ADMIN",
        "CAP_SYS_RESOURCE",
        "CAP_SYS_PTRACE",
        "CAP_DAC_READ_SEARCH",
        "CAP_CHOWN",
    ] {
        assert!(caps.contains(cap), "CapabilityBoundingSet= lacks {cap}");
    }
    // Hardening that would break it.
    for (key, bad) in [
        // The daemon makes containers' cgroups (observing from the first
        // exec); ReadWritePaths= opens the tree instead.
        ("ProtectControlGroups", "yes"),
        ("PrivateNetwork", "yes"),
        ("ProtectProc", "invisible"),
        ("ProcSubset", "pid"),
        ("DynamicUser", "yes"),
    ] {
        assert_ne!(
            svc(key),
            Some(bad),
            "{key}={bad} would stop the daemon from working"
        );
    }
    assert!(
        matches!(svc("User"), None | Some("root")),
        "the daemon needs root (capabilities are bounded by CapabilityBoundingSet=)"
    );
    // Read-only but for what it writes: its state, its socket, the cgroup
    // tree.
    assert_eq!(svc("ProtectSystem"), Some("strict"));
    let writable: Vec<&str> = unit["Service"]
        .get("ReadWritePaths")
        .into_iter()
        .flatten()
        .flat_map(|v| v.split_whitespace())
        .map(|p| p.trim_start_matches(['-', '+']))
        .collect();
    let socket_dir = Path::new(&socket).parent().unwrap();
    let state = Path::new("/var/lib").join(state_dir);
    let cgroup_root = Path::new("/sys/fs/cgroup");
    for (needed, what) in [
        (state.as_path(), "the state dir"),
        (socket_dir, "the socket's directory"),
        (
            cgroup_root,
            "the cgroup tree (containers' cgroups are made ahead)",
        ),
    ] {
        assert!(
            writable.iter().any(|w| needed.starts_with(w)),
            "ReadWritePaths= {writable:?} must include {} ({what})",
            needed.display()
        );
    }
    if let Ok(mount) = cimplifier::trace::cgroup::cgroup2_mount() {
        assert!(
            writable.iter().any(|w| mount.starts_with(w)),
            "this host's cgroup v2 mount {} is not writable under the unit",
            mount.display()
        );
    }
    for key in ["MemoryMax", "TasksMax"] {
        assert!(svc(key).is_some(), "{key}= bounds the daemon");
    }
    let filter = svc("SystemCallFilter").expect("SystemCallFilter=");
    for call in ["bpf", "perf_event_open"] {
        assert!(filter.contains(call), "SystemCallFilter= must allow {call}");
    }
    assert_eq!(
        unit_value(&unit, "Install", "WantedBy"),
        Some("multi-user.target")
    );
}

/// The system calls a `SystemCallFilter=` value allows: groups (`@name`)
/// expanded with `systemd-analyze syscall-filter`, which knows them
/// without systemd running. Deny lists (`~...`) are not used by the unit.
fn allowed_syscalls(filter: &str) -> BTreeSet<String> {
    fn expand(group: &str, seen: &mut BTreeSet<String>, into: &mut BTreeSet<String>) {
        let out = Command::new("systemd-analyze")
            .args(["syscall-filter", "--no-pager", group])
            .output()
            .expect("running systemd-analyze (Debian's systemd package)");
        assert!(
            out.status.success(),
            "systemd-analyze syscall-filter {group}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        // The first line names the group; then its calls and its groups.
        for line in text.lines().skip(1).map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.starts_with('@') {
                if seen.insert(line.to_owned()) {
                    expand(line, seen, into);
                }
            } else {
                into.insert(line.to_owned());
            }
        }
    }
    assert!(
        !filter.trim_start().starts_with('~'),
        "a deny list: {filter}"
    );
    let (mut seen, mut allowed) = (BTreeSet::new(), BTreeSet::new());
    for word in filter.split_whitespace() {
        if word.starts_with('@') {
            expand(word, &mut seen, &mut allowed);
        } else {
            allowed.insert(word.to_owned());
        }
    }
    assert!(
        allowed.contains("read") && allowed.contains("bpf"),
        "{filter} expands to {allowed:?}"
    );
    allowed
}

/// Every call the daemon was measured making (deploy/systemd/
/// measured-syscalls.txt, from `strace -f -c` of a daemon through every
/// kind of call) is allowed by the unit's filter.
#[test]
fn systemd_unit_system_call_filter_allows_every_call_the_daemon_was_measured_making() {
    let unit = parse_unit(&read(UNIT));
    let filter = unit["Service"]
        .get("SystemCallFilter")
        .expect("the unit has no SystemCallFilter=")
        .join(" ");
    let allowed = allowed_syscalls(&filter);
    let measured: Vec<String> = read("deploy/systemd/measured-syscalls.txt")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    assert!(measured.len() > 40, "{measured:?}");
    let refused: Vec<&String> = measured.iter().filter(|c| !allowed.contains(*c)).collect();
    assert!(
        refused.is_empty(),
        "SystemCallFilter={filter} refuses calls the daemon makes: {refused:?}"
    );
    // The filter is a filter: calls the daemon has no use for are out.
    for call in ["mount", "kexec_load", "init_module", "ptrace", "reboot"] {
        assert!(!allowed.contains(call), "{call} is allowed");
    }
}

/// The system calls in `strace -c` output (its last column).
fn strace_summary_calls(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.split_whitespace().last())
        .filter(|w| {
            *w != "total"
                && *w != "syscall"
                && w.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
        .map(str::to_owned)
        .collect()
}

/// Measured again on every run: a real daemon under `strace -f -c`
/// observes a container from its first exec, emits its slim image as an
/// OCI layout, exports the session, and stops on SIGTERM; the unit's
/// filter allows every call it made. Needs root, eBPF and Docker.
#[test]
fn systemd_unit_system_call_filter_allows_every_call_of_a_real_observe_and_emit() {
    common::require_root();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("cimplifier.sock");
    let counts = dir.path().join("strace.txt");
    let mut strace = common::isolated(Path::new("strace"))
        .args(["-f", "-c", "-o"])
        .arg(&counts)
        .args([CIMPLIFIERD, "serve", "--config", "/dev/null", "--socket"])
        .arg(&socket)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("running strace (Debian's strace package)");
    let ctl = |args: &[&str]| {
        common::cimplifierctl()
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .output()
            .unwrap()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !ctl(&["version"]).status.success() {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon never answered"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let c = common::Container::create(
        "syscalls",
        &[common::BASE_IMAGE, "/bin/sh", "-c", "cat /etc/os-release"],
    );
    for args in [
        vec!["observe", &c.0],
        vec!["report", &c.0, "--json"],
        vec![
            "emit",
            &c.0,
            "--oci-dir",
            dir.path().join("oci").to_str().unwrap(),
        ],
        vec![
            "export",
            &c.0,
            "-o",
            dir.path().join("bundle").to_str().unwrap(),
        ],
    ] {
        let out = ctl(&args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // SIGTERM to the daemon itself (strace's child), so its shutdown is
    // measured too.
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", strace.id())).unwrap();
    let daemon: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(strace.wait().unwrap().success(), "the daemon stops cleanly");
    let made = strace_summary_calls(&std::fs::read_to_string(&counts).unwrap());
    for call in ["bpf", "perf_event_open", "accept4", "openat"] {
        assert!(made.contains(call), "strace saw no {call}: {made:?}");
    }
    let unit = parse_unit(&read(UNIT));
    let filter = unit["Service"]
        .get("SystemCallFilter")
        .expect("the unit has no SystemCallFilter=")
        .join(" ");
    let allowed = allowed_syscalls(&filter);
    let refused: Vec<&String> = made.iter().filter(|c| !allowed.contains(*c)).collect();
    assert!(
        refused.is_empty(),
        "SystemCallFilter={filter} refuses calls the daemon made: {refused:?}"
    );
}

/// The unit's view of the file system, approximated without systemd as
/// PID 1: the daemon runs in a mount namespace where every mount is
/// read-only (ProtectSystem=strict) but the unit's ReadWritePaths= (the
/// test's own state and socket directories stand for /var/lib/cimplifier
/// and /run/cimplifier), with the cgroup tree read-only again under
/// ProtectControlGroups=yes. Under it, a container that exits at once is
/// observed from its first exec: the daemon can make its cgroup ahead.
/// Needs root, eBPF and Docker.
#[test]
fn systemd_unit_file_system_view_still_observes_from_the_first_exec() {
    common::require_root();
    let unit = parse_unit(&read(UNIT));
    let svc = |key: &str| unit_value(&unit, "Service", key);
    assert_eq!(svc("ProtectSystem"), Some("strict"));
    let dir = tempfile::tempdir().unwrap();
    let (state, run) = (dir.path().join("state"), dir.path().join("run"));
    std::fs::create_dir_all(&state).unwrap();
    std::fs::create_dir_all(&run).unwrap();
    let writable: Vec<String> = unit["Service"]
        .get("ReadWritePaths")
        .into_iter()
        .flatten()
        .flat_map(|v| v.split_whitespace())
        .map(|p| match p.trim_start_matches(['-', '+']) {
            "/var/lib/cimplifier" => state.display().to_string(),
            "/run/cimplifier" => run.display().to_string(),
            other => other.to_owned(),
        })
        .collect();
    // Each path's mounts, and the path itself made a mount, read-write.
    let rw = |path: &str| {
        format!(
            "[ -e {path} ] && {{ awk -v p={path} '$5 == p || index($5, p \"/\") == 1 {{print $5}}' \
             /proc/self/mountinfo | while read -r m; do mount -o remount,bind,rw \"$m\"; done; \
             mountpoint -q {path} || {{ mount --bind {path} {path} && mount -o remount,bind,rw {path}; }}; }}\n"
        )
    };
    let mut script = String::from(
        "set -e\nmount --make-rprivate /\n\
         awk '{print $5}' /proc/self/mountinfo | while read -r m; do \
         mount -o remount,bind,ro \"$m\" 2>/dev/null || true; done\n",
    );
    for path in &writable {
        script += &rw(path);
    }
    if svc("ProtectControlGroups") == Some("yes") {
        script += "awk '$5 == \"/sys/fs/cgroup\" || index($5, \"/sys/fs/cgroup/\") == 1 {print $5}' \
                   /proc/self/mountinfo | while read -r m; do mount -o remount,bind,ro \"$m\"; done\n";
    }
    script += "exec \"$@\"\n";
    let socket = run.join("cimplifier.sock");
    let mut daemon = common::isolated(Path::new("unshare"))
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "sh",
        ])
        .args([CIMPLIFIERD, "serve", "--config", "/dev/null", "--socket"])
        .arg(&socket)
        .arg("--state-dir")
        .arg(&state)
        .spawn()
        .unwrap();
    let ctl = |args: &[&str]| {
        common::cimplifierctl()
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .output()
            .unwrap()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !ctl(&["version"]).status.success() {
        assert!(
            std::time::Instant::now() < deadline && daemon.try_wait().unwrap().is_none(),
            "the daemon never answered under the unit's file system view"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let c = common::Container::create(
        "unitview",
        &[common::BASE_IMAGE, "/bin/sh", "-c", "cat /etc/os-release"],
    );
    let observed = ctl(&["observe", &c.0]);
    common::stop_daemon(&mut daemon);
    assert!(
        observed.status.success(),
        "under the unit's file system view, a container that exits at once is not observed: {}",
        String::from_utf8_lossy(&observed.stderr)
    );
    let said = String::from_utf8_lossy(&observed.stdout);
    assert!(said.contains("no events lost"), "{said}");
}

#[test]
fn sample_config_is_one_the_daemon_accepts() {
    let config = cimplifier::api::DaemonConfig::load(Some(&repo().join(SAMPLE_CONFIG)))
        .unwrap_or_else(|e| panic!("{SAMPLE_CONFIG}: {e:#}"));
    if let Some(mib) = config.ring_buffer_mib {
        assert!(mib.is_power_of_two(), "ring_buffer_mib {mib}");
    }
}

// ------------------------------------------------------------- Kubernetes

fn documents() -> Vec<Value> {
    use serde::Deserialize;
    let text = read(DAEMONSET);
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{DAEMONSET}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// The words of a container's command line (`sh -c SCRIPT` is split too).
fn command_words(container: &Value) -> Vec<String> {
    let mut words = Vec::new();
    for key in ["command", "args"] {
        for part in container[key].as_sequence().into_iter().flatten() {
            words.extend(str_of(part).split_whitespace().map(str::to_owned));
        }
    }
    words
}

/// The DaemonSet of containerd nodes, as `kubectl kustomize` renders it.
const CONTAINERD_DAEMONSET: &str = "deploy/kubernetes-containerd";

#[test]
fn containerd_daemonset_dials_containerd_and_mounts_its_socket_not_dockers() {
    use serde::Deserialize;
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(repo().join(CONTAINERD_DAEMONSET))
        .output()
        .expect("running kubectl (`cargo xtask setup` installs it)");
    assert!(
        out.status.success(),
        "kubectl kustomize {CONTAINERD_DAEMONSET}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let docs: Vec<Value> = serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .collect();
    let ds = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("DaemonSet"))
        .expect("a DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(
        pod["hostPID"].as_bool(),
        Some(true),
        "the base's settings stay"
    );
    let daemon = &pod["containers"][0];
    let address = daemon["env"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|e| e["name"].as_str() == Some(cimplifier::engine::containerd::ADDRESS_ENV))
        .map(|e| str_of(&e["value"]).to_owned())
        .expect("CONTAINERD_ADDRESS is set");
    let volumes = pod["volumes"].as_sequence().expect("volumes");
    let socket_volume = volumes
        .iter()
        .find(|v| {
            v["hostPath"]["path"].as_str() == Some(cimplifier::engine::containerd::DEFAULT_ADDRESS)
        })
        .expect("containerd's socket from the host");
    assert_eq!(socket_volume["hostPath"]["type"].as_str(), Some("Socket"));
    let mounted = daemon["volumeMounts"]
        .as_sequence()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["name"] == socket_volume["name"])
        .expect("the socket is mounted");
    assert_eq!(
        str_of(&mounted["mountPath"]),
        address,
        "the daemon dials what is mounted"
    );
    assert!(
        !text.contains("docker.sock"),
        "no Docker socket on a containerd node:\n{text}"
    );
}

#[test]
fn daemonset_is_privileged_sees_host_pids_and_mounts_what_the_daemon_reads() {
    let docs = documents();
    let kinds: Vec<&str> = docs.iter().map(|d| str_of(&d["kind"])).collect();
    let find = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"].as_str() == Some(kind))
            .unwrap_or_else(|| panic!("{DAEMONSET} has no {kind} (kinds: {kinds:?})"))
    };
    let namespace = str_of(&find("Namespace")["metadata"]["name"]);
    let account = find("ServiceAccount");
    let ds = find("DaemonSet");
    assert_eq!(str_of(&ds["metadata"]["namespace"]), namespace);
    assert_eq!(str_of(&account["metadata"]["namespace"]), namespace);

    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(
        pod["serviceAccountName"].as_str(),
        account["metadata"]["name"].as_str()
    );
    assert_eq!(pod["hostPID"].as_bool(), Some(true), "hostPID: true");
    assert!(
        pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30) >= 60,
        "terminationGracePeriodSeconds leaves sessions little time to be written"
    );
    // Not on the control plane unless the operator says so.
    for t in pod["tolerations"].as_sequence().into_iter().flatten() {
        let key = str_of(&t["key"]);
        assert!(
            !(t["operator"].as_str() == Some("Exists") && t["key"].is_null()),
            "a toleration of every taint runs the daemon on control-plane nodes too: {t:?}"
        );
        assert!(
            !key.starts_with("node-role.kubernetes.io/"),
            "tolerating {key} runs the daemon on control-plane nodes: leave it to the operator"
        );
    }
    let containers = pod["containers"].as_sequence().expect("containers");
    let daemon = containers
        .iter()
        .find(|c| command_words(c).iter().any(|w| w.ends_with("/cimplifierd")))
        .expect("a container running cimplifierd");
    assert_eq!(
        daemon["securityContext"]["privileged"].as_bool(),
        Some(true),
        "privileged: true"
    );

    // Its command line is one the daemon accepts.
    let words = command_words(daemon);
    let serve = words
        .iter()
        .position(|w| w == "serve")
        .expect("cimplifierd serve");
    assert_eq!(words[serve - 1], INSTALLED_CIMPLIFIERD);
    let serve_words: Vec<&str> = words[serve + 1..].iter().map(String::as_str).collect();
    assert_flags_exist(
        CIMPLIFIERD,
        &["serve"],
        &long_flags(serve_words.iter().copied()),
        DAEMONSET,
    );
    let socket = flag_value(&serve_words, "socket")
        .unwrap_or_else(|| cimplifier::api::DEFAULT_SOCKET.to_owned());

    // Every host path the daemon needs, mounted where it looks for it.
    let volumes: BTreeMap<&str, &str> = pod["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .filter_map(|v| Some((v["name"].as_str()?, v["hostPath"]["path"].as_str()?)))
        .collect();
    let mounts: BTreeMap<&str, (&str, bool)> = daemon["volumeMounts"]
        .as_sequence()
        .expect("volumeMounts")
        .iter()
        .filter_map(|m| {
            let host = volumes.get(m["name"].as_str()?)?;
            Some((
                *host,
                (
                    m["mountPath"].as_str()?,
                    m["readOnly"].as_bool() == Some(true),
                ),
            ))
        })
        .collect();
    let socket_dir = Path::new(&socket).parent().unwrap().display().to_string();
    let required: [(&[&str], &str); 6] = [
        (&["/sys/fs/cgroup"], "cgroups of the containers"),
        (&["/sys/kernel/btf"], "kernel BTF"),
        (
            &["/sys/kernel/tracing", "/sys/kernel/debug/tracing"],
            "tracefs",
        ),
        (
            &["/var/run/docker.sock", "/run/docker.sock"],
            "the Docker engine",
        ),
        (&["/var/lib/cimplifier"], "the state dir"),
        (&[socket_dir.as_str()], "the API socket's directory"),
    ];
    for (paths, what) in required {
        let (host, (at, _)) = mounts
            .iter()
            .find(|(host, _)| paths.contains(host))
            .unwrap_or_else(|| {
                panic!("no hostPath mount of {paths:?} ({what}); mounts: {mounts:?}")
            });
        let wanted = if *host == "/sys/kernel/debug/tracing" {
            "/sys/kernel/tracing"
        } else {
            host
        };
        assert_eq!(*at, wanted, "{host} ({what}) must be mounted at {wanted}");
    }
    assert!(
        mounts["/sys/kernel/btf"].1,
        "/sys/kernel/btf should be read-only"
    );
    // The daemon pins nothing: bpffs is not its to write.
    assert!(
        !mounts.contains_key("/sys/fs/bpf"),
        "bpffs is mounted, but the daemon pins no program or map"
    );
    let state = flag_value(&serve_words, "state-dir")
        .unwrap_or_else(|| cimplifier::session::DEFAULT_STATE_DIR.to_owned());
    assert_eq!(
        mounts["/var/lib/cimplifier"].0, state,
        "--state-dir must be the mounted state dir"
    );

    // Probes that reach the daemon over its socket.
    for probe in ["readinessProbe", "livenessProbe"] {
        let p = &daemon[probe];
        assert!(p.is_mapping(), "{probe} is missing");
        let cmd: Vec<&str> = p["exec"]["command"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{probe}: an exec probe (the API has no TCP port)"))
            .iter()
            .map(str_of)
            .collect();
        assert_eq!(cmd[0], INSTALLED_CIMPLIFIERCTL, "{probe}");
        assert_eq!(
            flag_value(&cmd, "socket").as_deref(),
            Some(socket.as_str()),
            "{probe} must ask the daemon's socket"
        );
        // `cimplifierctl [--socket S] SUBCOMMAND ...`: the subcommand exists.
        let sub = cmd
            .windows(2)
            .find(|w| !w[1].starts_with("--") && w[0] != "--socket")
            .map(|w| w[1])
            .unwrap_or_else(|| panic!("{probe}: no cimplifierctl subcommand in {cmd:?}"));
        assert_flags_exist(CIMPLIFIERCTL, &[sub], &[], DAEMONSET);
    }

    let resources = &daemon["resources"];
    assert!(
        resources["requests"]["memory"].is_string(),
        "resources.requests.memory"
    );
    assert!(
        resources["limits"]["memory"].is_string(),
        "resources.limits.memory"
    );

    // Metrics: the annotation, the port and the flag agree.
    let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));
    let port: u16 = str_of(&annotations["prometheus.io/port"])
        .parse()
        .expect("prometheus.io/port");
    let addr: std::net::SocketAddr = flag_value(&serve_words, "metrics-addr")
        .expect("--metrics-addr")
        .parse()
        .expect("--metrics-addr is an address");
    assert_eq!(addr.port(), port, "--metrics-addr and prometheus.io/port");
    assert!(
        !addr.ip().is_loopback(),
        "--metrics-addr must not be loopback in a pod"
    );
    assert!(
        daemon["ports"]
            .as_sequence()
            .into_iter()
            .flatten()
            .any(|p| p["containerPort"].as_u64() == Some(port.into())),
        "containerPort {port}"
    );

    // Metrics listen on the pod's address, so a NetworkPolicy lets in only
    // a scraper, and only to that port.
    let pod_labels = &ds["spec"]["template"]["metadata"]["labels"];
    let policy = docs
        .iter()
        .filter(|d| d["kind"].as_str() == Some("NetworkPolicy"))
        .find(|p| {
            str_of(&p["metadata"]["namespace"]) == namespace
                && p["spec"]["podSelector"]["matchLabels"]
                    .as_mapping()
                    .is_some_and(|m| m.iter().all(|(k, v)| pod_labels[k.clone()] == *v))
        })
        .unwrap_or_else(|| panic!("{DAEMONSET}: no NetworkPolicy selects the daemon's pods"));
    assert!(
        policy["spec"]["policyTypes"]
            .as_sequence()
            .into_iter()
            .flatten()
            .any(|t| t.as_str() == Some("Ingress")),
        "the NetworkPolicy must restrict Ingress"
    );
    let rules = policy["spec"]["ingress"]
        .as_sequence()
        .expect("ingress rules");
    for rule in rules {
        let ports: Vec<u64> = rule["ports"]
            .as_sequence()
            .expect("each ingress rule names its ports")
            .iter()
            .filter_map(|p| p["port"].as_u64())
            .collect();
        assert_eq!(ports, [u64::from(port)], "only the metrics port is open");
        assert!(
            rule["from"].as_sequence().is_some_and(|f| !f.is_empty()),
            "an ingress rule without `from` lets in everyone: {rule:?}"
        );
    }
}

// ------------------------------------------------------------- Dockerfile

#[derive(Debug)]
struct Stage {
    name: String,
    from: String,
    /// (instruction upper-cased, rest of the line), continuations joined.
    lines: Vec<(String, String)>,
}

fn parse_dockerfile(text: &str) -> (BTreeMap<String, String>, Vec<Stage>) {
    let mut args = BTreeMap::new();
    let mut stages: Vec<Stage> = Vec::new();
    let mut logical = Vec::new();
    let mut pending = String::new();
    for raw in text.lines() {
        let line = raw.trim();
        if line.starts_with('#') || (line.is_empty() && pending.is_empty()) {
            continue;
        }
        if let Some(cont) = line.strip_suffix('\\') {
            pending.push_str(cont);
            pending.push(' ');
        } else {
            logical.push(std::mem::take(&mut pending) + line);
        }
    }
    for line in logical {
        let (inst, rest) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        let (inst, rest) = (inst.to_ascii_uppercase(), rest.trim().to_owned());
        if inst == "FROM" {
            let words: Vec<&str> = rest.split_whitespace().collect();
            let name = match words.as_slice() {
                [_, kw, name] if kw.eq_ignore_ascii_case("as") => name.to_string(),
                _ => stages.len().to_string(),
            };
            stages.push(Stage {
                name,
                from: words[0].to_owned(),
                lines: Vec::new(),
            });
        } else if let Some(stage) = stages.last_mut() {
            stage.lines.push((inst, rest));
        } else if inst == "ARG" {
            let (k, v) = rest.split_once('=').unwrap_or((&rest, ""));
            args.insert(k.to_owned(), v.to_owned());
        }
    }
    (args, stages)
}

/// The binaries a workspace crate's Cargo.toml declares.
fn manifest_bins(package: &str) -> Vec<String> {
    let manifest: toml::Value = toml::from_str(&read(&format!("{package}/Cargo.toml"))).unwrap();
    manifest["bin"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["name"].as_str().map(str::to_owned))
        .collect()
}

/// The files a `cargo build` command line writes: TARGET/PROFILE/BIN.
fn cargo_build_outputs(run: &str, workdir: &str, env: &BTreeMap<String, String>) -> Vec<PathBuf> {
    let words: Vec<&str> = run.split_whitespace().collect();
    let start = words
        .windows(2)
        .position(|w| w[0].ends_with("cargo") && w[1] == "build")
        .expect("cargo build");
    let words = &words[start..];
    let target = flag_value(words, "target-dir")
        .or_else(|| env.get("CARGO_TARGET_DIR").cloned())
        .map(|t| Path::new(workdir).join(t))
        .unwrap_or_else(|| Path::new(workdir).join("target"));
    // With --target, binaries go under TARGET/TRIPLE/PROFILE.
    let target = match flag_value(words, "target") {
        Some(triple) => target.join(triple),
        None => target,
    };
    let profile = match flag_value(words, "profile") {
        Some(p) if p == "dev" => "debug".to_owned(),
        Some(p) => p,
        None if words.contains(&"--release") || words.contains(&"-r") => "release".to_owned(),
        None => "debug".to_owned(),
    };
    let mut bins: Vec<String> = words
        .windows(2)
        .filter(|w| w[0] == "--bin")
        .map(|w| w[1].to_owned())
        .collect();
    if words.contains(&"--bins") {
        let package = flag_value(words, "package")
            .or_else(|| {
                words
                    .windows(2)
                    .find(|w| w[0] == "-p")
                    .map(|w| w[1].to_owned())
            })
            .expect("cargo build --bins names its package with -p");
        bins.extend(manifest_bins(&package));
    }
    assert!(
        !bins.is_empty(),
        "the builder's cargo build should name its binaries with --bin (or -p PKG --bins)"
    );
    bins.iter().map(|b| target.join(&profile).join(b)).collect()
}

#[test]
fn dockerfile_runtime_stage_copies_only_what_the_builder_builds() {
    let (args, stages) = parse_dockerfile(&read(DOCKERFILE));
    assert!(
        stages.len() >= 2,
        "{DOCKERFILE}: a builder and a runtime stage: {stages:?}"
    );
    let builder = stages
        .iter()
        .find(|s| s.name == "builder")
        .expect("a stage named builder");
    let runtime = stages.last().unwrap();
    assert_ne!(
        runtime.name, "builder",
        "the last stage is the runtime image"
    );

    // Base images are build arguments (local images when no registry is
    // reachable) defaulting to Debian bookworm.
    let base = |stage: &Stage| -> String {
        let arg = stage
            .from
            .strip_prefix("${")
            .and_then(|s| s.strip_suffix('}'))
            .unwrap_or_else(|| {
                panic!("stage {} should be FROM an ARG: {}", stage.name, stage.from)
            });
        args.get(arg)
            .cloned()
            .unwrap_or_else(|| panic!("ARG {arg} before the first FROM"))
    };
    assert_eq!(base(builder), "debian:bookworm");
    assert_eq!(base(runtime), "debian:bookworm-slim");

    // What the builder produces.
    let mut workdir = "/".to_owned();
    let mut env = BTreeMap::new();
    let mut built = Vec::new();
    for (inst, rest) in &builder.lines {
        match inst.as_str() {
            "WORKDIR" => workdir = Path::new(&workdir).join(rest).display().to_string(),
            "ENV" => {
                for kv in rest.split_whitespace() {
                    if let Some((k, v)) = kv.split_once('=') {
                        env.insert(k.to_owned(), v.to_owned());
                    }
                }
            }
            "RUN" if rest.contains("cargo build") => {
                built.extend(cargo_build_outputs(rest, &workdir, &env))
            }
            _ => {}
        }
    }
    assert!(!built.is_empty(), "the builder runs no cargo build");
    let bins: BTreeSet<String> = manifest_bins("cimplifier-daemon").into_iter().collect();
    for path in &built {
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(
            bins.contains(name),
            "the builder builds {name}, not a binary of the daemon: {bins:?}"
        );
    }

    // What the runtime stage copies from it.
    let mut copied = BTreeMap::new();
    for (inst, rest) in &runtime.lines {
        let words: Vec<&str> = rest.split_whitespace().collect();
        if inst != "COPY" || !words.iter().any(|w| w.starts_with("--from=")) {
            continue;
        }
        assert!(
            words.contains(&"--from=builder"),
            "the runtime stage copies from a stage other than builder: {rest}"
        );
        let paths: Vec<&str> = words
            .iter()
            .copied()
            .filter(|w| !w.starts_with("--"))
            .collect();
        let (dest, sources) = paths.split_last().expect("COPY SRC... DEST");
        assert!(!sources.is_empty(), "COPY {rest}");
        for src in sources {
            assert!(
                built.iter().any(|b| b == Path::new(src)),
                "the runtime stage copies {src}, which the builder does not build (it builds {built:?})"
            );
            let to = if sources.len() > 1 || dest.ends_with('/') {
                Path::new(dest).join(Path::new(src).file_name().unwrap())
            } else {
                PathBuf::from(dest)
            };
            copied.insert(to.display().to_string(), src.to_string());
        }
    }
    // The unit, the DaemonSet and the probes run these. The RPE glue that
    // `emit --policy` places is embedded in cimplifierd: nothing else.
    assert_eq!(
        copied.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        BTreeSet::from([INSTALLED_CIMPLIFIERCTL, INSTALLED_CIMPLIFIERD]),
        "the runtime image gets the two daemon binaries, and nothing else"
    );
    for path in [INSTALLED_CIMPLIFIERD, INSTALLED_CIMPLIFIERCTL] {
        assert!(
            copied.contains_key(path),
            "the runtime image has no {path}: it has {copied:?}"
        );
    }
    assert!(
        runtime
            .lines
            .iter()
            .any(|(inst, rest)| inst == "RUN" && rest.contains("ca-certificates")),
        "the runtime stage installs ca-certificates"
    );

    // The builder's toolchain is the one `cargo xtask setup` installs.
    let setup = read("xtask/src/setup.rs");
    let pinned = setup
        .lines()
        .find_map(|l| l.strip_prefix("pub const BPF_LINKER_VERSION: &str = \""))
        .and_then(|l| l.strip_suffix("\";"))
        .expect("BPF_LINKER_VERSION in xtask/src/setup.rs");
    let builder_text: String = builder
        .lines
        .iter()
        .map(|(i, r)| format!("{i} {r}\n"))
        .collect();
    assert!(
        builder_text.contains(&format!("BPF_LINKER_VERSION={pinned}")),
        "the builder should pin bpf-linker {pinned} like xtask setup"
    );
    for pkg in [
        "rustc-web",
        "cargo-web",
        "rust-web-src",
        "llvm-22-dev",
        "libpolly-22-dev",
    ] {
        assert!(
            setup.contains(&format!("\"{pkg}\"")),
            "xtask setup no longer installs {pkg}"
        );
        assert!(
            builder_text.split_whitespace().any(|w| w == pkg),
            "the builder does not install {pkg}, which xtask setup does"
        );
    }

    let ignore = read(".dockerignore");
    assert!(
        ignore
            .lines()
            .any(|l| l.trim() == "**/target" || l.trim() == "target"),
        ".dockerignore should keep target/ out of the build context"
    );
}
