//! The paper's slimming case studies, end to end with real Docker, real
//! images built from Debian packages (`cargo xtask images`) and real
//! clients: observe the original under its workload (a script of
//! tests/workloads) with `cimplifierctl observe --exec`, `emit` the slim
//! image, run it, run the same workload again and require the same
//! results. Then both the original and the slim container
//! go through a second pass, a restart and a SIGKILL with a start, the
//! workload after each, and the slim one must answer as the original did
//! at every step (tests/common/lifecycle.rs). Prints each size reduction.
//! Needs root.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::lifecycle::{Answers, Script, Single, assert_same, run_steps};
use common::{Container, Daemon, docker, require_root};
use serde_json::Value;

fn ctl(daemon: &Daemon) -> Command {
    let mut c = common::cimplifierctl();
    c.arg("--socket").arg(&daemon.socket);
    c
}

/// The host port Docker published for `inner` (e.g. "80/tcp"), once the
/// container runs.
fn published_port(container: &str, inner: &str) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new("docker")
            .args(["port", container, inner])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        if let Some(port) = text
            .lines()
            .next()
            .and_then(|l| l.rsplit(':').next()?.parse().ok())
        {
            return port;
        }
        assert!(
            Instant::now() < deadline,
            "{container} never published {inner}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        assert!(Instant::now() < deadline, "{what} never became ready");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn http(port: u16, method: &str, path: &str, form: Option<&str>) -> (String, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "--max-time",
        "10",
        "-X",
        method,
        "-w",
        "\n%{http_code}",
    ]);
    if let Some(form) = form {
        cmd.args(["--data", form]);
    }
    let out = cmd
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.to_owned(), body.to_owned())
}

fn http_ready(port: u16) -> bool {
    http(port, "GET", "/", None).0 != "000"
}

/// What one case does: its image, port, readiness and workload.
struct Case {
    name: &'static str,
    image: &'static str,
    inner_port: &'static str,
    /// The paper's size reduction, the floor for ours.
    paper_percent: f64,
    ready: fn(u16) -> bool,
    /// The workload, a script of tests/workloads that reaches the
    /// container at `CIMPLIFIER_TARGET` on its own port; what it prints
    /// are its answers, equal answers mean it passed.
    script: &'static str,
    ports: &'static [u16],
}

impl Case {
    fn script(&self) -> Script {
        Script::new(self.script, self.ports)
    }
}

/// The case's workload once it is ready on `container`'s published port
/// (which a restart may change).
fn pass(case: &Case, container: &str, against: &str) -> Vec<String> {
    let port = published_port(container, case.inner_port);
    wait_until(case.name, || (case.ready)(port));
    case.script().run(&Single(container.to_owned()), against)
}

/// The answers of `container` at its first pass (`first`) and at every
/// step of the lifecycle after it.
fn lifecycle(case: &Case, container: &str, against: &str, first: Vec<String>) -> Vec<Answers> {
    let mut all = vec![Answers {
        step: "first pass".into(),
        lines: first,
    }];
    all.extend(run_steps(
        &mut Single(container.to_owned()),
        against,
        None,
        &mut |_, against| pass(case, container, against),
    ));
    all
}

struct Emitted {
    report: Value,
    tag: String,
    oci_dir: PathBuf,
    daemon: Daemon,
    _work: tempfile::TempDir,
}

/// Observe the original under the workload, run the lifecycle's steps
/// against it (no longer observed), then emit. Returns the original's
/// answers at each step and the emit report.
fn observe_and_emit(case: &Case) -> (Vec<Answers>, Emitted) {
    require_root();
    let daemon = Daemon::start();
    let work = tempfile::tempdir().unwrap();
    let name = format!("cimplifier-e2e-{}-{}", case.name, std::process::id());
    let container = Container(name.clone());
    let _ = Command::new("docker")
        .args(["rm", "-f", "-v", &name])
        .output();
    docker(&[
        "create",
        "--name",
        &name,
        "-p",
        &format!("127.0.0.1::{}", case.inner_port),
        case.image,
    ]);
    let answers = work.path().join("answers");
    // The test runs the lifecycle itself, after the observed pass, so the
    // answers of each step compare like with like; verify runs it observed.
    let out = ctl(&daemon)
        .args(["observe", &name, "--no-lifecycle", "--exec"])
        .arg(case.script().exec_line(&answers))
        .output()
        .unwrap();
    let original = std::fs::read_to_string(&answers).unwrap_or_default();
    assert!(
        out.status.success(),
        "observe --exec failed: {}\n{original}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("no events lost"), "{said}");
    let original = original.lines().map(str::to_owned).collect();
    let original = lifecycle(case, &name, "the original", original);
    drop(container);

    let tag = format!("cimplifier-e2e/{}:slim", case.name);
    let oci_dir = work.path().join("oci");
    // --out gets the seccomp profile the report's docker run line names.
    let emit = ctl(&daemon)
        .args(["emit", &name, "--tag", &tag])
        .arg("--oci-dir")
        .arg(&oci_dir)
        .arg("--out")
        .arg(work.path().join("out"))
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        emit.status.success(),
        "emit failed: {}",
        String::from_utf8_lossy(&emit.stderr)
    );
    let report: Value = serde_json::from_slice(&emit.stdout).unwrap();
    common::lifecycle::verify(&daemon, &name, &["--image", &tag], &case.script());
    (
        original,
        Emitted {
            report,
            tag,
            oci_dir,
            daemon,
            _work: work,
        },
    )
}

/// The flags of the report's `docker run` line: the observed container's
/// run settings and the slim image's least privileges (capabilities,
/// no-new-privileges, read-only root with its tmpfs and volumes).
fn report_run_flags(e: &Emitted) -> Vec<String> {
    let line = e.report["docker_run"].as_str().unwrap();
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words[..3], ["docker", "run", "-d"], "{line}");
    assert_eq!(words.last(), Some(&e.tag.as_str()), "{line}");
    words[3..words.len() - 1]
        .iter()
        .map(|w| (*w).to_owned())
        .collect()
}

/// Runs the slim image as its report says, hardened; returns the
/// container and its published port.
fn run_slim(case: &Case, e: &Emitted) -> (Container, u16) {
    run_slim_as(case, e, "slim", &report_run_flags(e), &[])
}

/// Runs the slim image with `flags` (and `extra`, e.g. a probe's mount)
/// as container `cimplifier-e2e-<case>-<label>-<pid>`.
fn run_slim_as(
    case: &Case,
    e: &Emitted,
    label: &str,
    flags: &[String],
    extra: &[&str],
) -> (Container, u16) {
    let name = format!(
        "cimplifier-e2e-{}-{label}-{}",
        case.name,
        std::process::id()
    );
    let _ = Command::new("docker")
        .args(["rm", "-f", "-v", &name])
        .output();
    let publish = format!("127.0.0.1::{}", case.inner_port);
    let mut args: Vec<&str> = vec!["run", "-d", "--name", &name];
    if !flags.iter().any(|f| f == "-p") {
        args.extend(["-p", &publish]);
    }
    args.extend(flags.iter().map(String::as_str));
    args.extend(extra);
    args.push(&e.tag);
    println!("{} ({label}): docker {}", case.name, args.join(" "));
    docker(&args);
    let c = Container(name.clone());
    std::thread::sleep(Duration::from_millis(500));
    if docker(&["inspect", "-f", "{{.State.Running}}", &name]) != "true" {
        panic!(
            "the slim {} ({label}) stopped: docker run {}\nits log:\n{}",
            case.name,
            args.join(" "),
            docker(&["logs", &name])
        );
    }
    let port = published_port(&name, case.inner_port);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(case.ready)(port) {
        if Instant::now() > deadline {
            panic!(
                "the slim {} never became ready; its log:\n{}",
                case.name,
                docker(&["logs", &name])
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    (c, port)
}

/// Programs of the source image (linked to libc only, which every slim
/// image here keeps) copied to a host directory, to mount into a slim
/// container and probe what it may do from inside.
fn probe_dir(image: &str, work: &Path) -> PathBuf {
    let dir = work.join("probe");
    std::fs::create_dir_all(&dir).unwrap();
    let name = format!("cimplifier-e2e-probe-{}", std::process::id());
    let _c = Container(name.clone());
    docker(&["create", "--name", &name, image]);
    for prog in [
        "/usr/bin/touch",
        "/usr/sbin/chroot",
        "/usr/bin/true",
        "/usr/bin/sync",
    ] {
        docker(&["cp", &format!("{name}:{prog}"), dir.to_str().unwrap()]);
    }
    dir
}

/// Runs `args` inside `container`; its exit status and what it printed.
fn exec_in(container: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("docker")
        .arg("exec")
        .arg(container)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// In the hardened slim container a dropped capability is refused, the
/// root is read-only and a syscall no executable made is refused by the
/// seccomp profile; the same commands succeed in the same image run
/// without the privilege flags (the positive control).
fn hardening_holds(case: &Case, e: &Emitted, work: &Path) {
    let probe = probe_dir(case.image, work);
    let mount = format!("{}:/cimplifier-probe:ro", probe.display());
    let extra = ["-v", mount.as_str()];
    let (hard, _) = run_slim_as(case, e, "hardened", &report_run_flags(e), &extra);
    let (soft, _) = run_slim_as(case, e, "unhardened", &[], &extra);
    // SYS_CHROOT is in Docker's default set, and nothing observed chroots.
    let chroot = ["/cimplifier-probe/chroot", "/", "/cimplifier-probe/true"];
    let (ok, said) = exec_in(&soft.0, &chroot);
    assert!(ok, "chroot failed without the privilege flags: {said}");
    let (ok, said) = exec_in(&hard.0, &chroot);
    assert!(!ok && said.contains("Operation not permitted"), "{said}");
    let touch = ["/cimplifier-probe/touch", "/cimplifier-written"];
    let (ok, said) = exec_in(&soft.0, &touch);
    assert!(ok, "touch failed without the privilege flags: {said}");
    let (ok, said) = exec_in(&hard.0, &touch);
    assert!(!ok && said.contains("Read-only file system"), "{said}");
    // syncfs: no observed executable made it, and no capability guards it.
    let syncfs = ["/cimplifier-probe/sync", "--file-system", "/"];
    let (ok, said) = exec_in(&soft.0, &syncfs);
    assert!(ok, "syncfs failed without the privilege flags: {said}");
    let (ok, said) = exec_in(&hard.0, &syncfs);
    assert!(!ok && said.contains("Operation not permitted"), "{said}");
    assert!(
        e.report["privileges"]["seccomp"]["allowed"]
            .get("syncfs")
            .is_none(),
        "the probe's syscall was observed after all"
    );
}

/// The report's seccomp profile: what it allows, written where the
/// `docker run` line says, and the same bytes as the report describes.
/// `emit --explain` of each item, for the emitted session and tag: its
/// text output.
fn explained(e: &Emitted, items: &[&str]) -> String {
    let mut cmd = ctl(&e.daemon);
    cmd.args(["emit"])
        .arg(e.report["container"].as_str().unwrap())
        .args(["--tag", &e.tag]);
    for item in items {
        cmd.args(["--explain", item]);
    }
    String::from_utf8_lossy(&cmd.output().unwrap().stdout).into_owned()
}

fn seccomp_profile(e: &Emitted) -> Value {
    let run = e.report["docker_run"].as_str().unwrap();
    let file = run
        .split_whitespace()
        .find_map(|w| w.strip_prefix("seccomp="))
        .unwrap_or_else(|| panic!("no seccomp profile in {run}"));
    assert!(Path::new(file).is_absolute(), "{run}");
    let profile: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    assert_eq!(profile["defaultAction"], "SCMP_ACT_ERRNO", "{profile}");
    let allowed = profile["syscalls"][0]["names"].as_array().unwrap();
    let in_report = e.report["privileges"]["seccomp"]["allowed"]
        .as_object()
        .unwrap();
    assert_eq!(allowed.len(), in_report.len());
    println!(
        "{}: syscalls allowed: {} (Docker's default allows 292)",
        e.tag,
        allowed.len()
    );
    profile
}

fn report_sizes(case: &Case, report: &Value) -> f64 {
    let percent = report["reduction_percent"].as_f64().unwrap();
    println!(
        "{}: {} -> {} bytes, {:.1}% smaller (paper: {}%); kept {} of {} files",
        case.name,
        report["source_image_bytes"],
        report["slim_image_bytes"],
        percent,
        case.paper_percent,
        report["kept_files"],
        report["source_files"],
    );
    println!(
        "{}: syscalls allowed: {}",
        case.name,
        report["privileges"]["seccomp"]["allowed"]
            .as_object()
            .map_or(0, |a| a.len())
    );
    // What each keep reason costs in the layer: a 512-byte header per
    // entry and its content padded to 512 (PAX records left out).
    let mut by_reason: std::collections::BTreeMap<String, (u64, u64, u64)> = Default::default();
    for k in report["kept"].as_array().unwrap() {
        let bytes = k["bytes"].as_u64().unwrap();
        let r = by_reason
            .entry(k["reason"].as_str().unwrap().to_owned())
            .or_default();
        r.0 += 1;
        r.1 += bytes;
        r.2 += 512 + bytes.div_ceil(512) * 512;
    }
    for (reason, (n, bytes, tar)) in by_reason {
        println!("  {reason:<20} {n:>6} entries {bytes:>10} content bytes {tar:>10} layer bytes");
    }
    let mut rules = std::collections::BTreeSet::new();
    for (_, k) in kept_for(report, "state_directory") {
        rules.insert(format!(
            "state directory {} ({})",
            k["dir"], k["written_by"]
        ));
    }
    for (_, k) in kept_for(report, "code_tree") {
        rules.insert(format!(
            "code tree {} of {}: {} of {}",
            k["dir"], k["exe"], k["loaded"], k["files"]
        ));
    }
    for r in rules {
        println!("  {r}");
    }
    println!(
        "  listings of unnamed directories: {}",
        report["unnamed_listings"]
    );
    for d in report["listed_directories"].as_array().unwrap() {
        println!(
            "  listed {} by {}: {} entries, {} not kept ({} bytes{})",
            d["dir"],
            d["listed_by"],
            d["entries"],
            d["missing"],
            d["missing_bytes"],
            d.get("why_missing")
                .map(|w| format!(", {w}"))
                .unwrap_or_default()
        );
        // A shortened listing is never silent: it says why.
        assert_eq!(
            d["missing"].as_u64().unwrap() > 0,
            d.get("why_missing").is_some(),
            "{d}"
        );
    }
    percent
}

/// Emits the same session again with `--strict`; its layer's size.
fn strict_size(e: &Emitted) -> u64 {
    let out = ctl(&e.daemon)
        .args(["emit", e.report["container"].as_str().unwrap()])
        .arg("--oci-dir")
        .arg(e.oci_dir.with_extension("strict"))
        .args(["--strict", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "emit --strict failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let kept = report["kept"].as_array().unwrap();
    assert!(
        !kept.iter().any(|k| k["reason"] == "state_directory"
            || k["reason"] == "code_tree"
            || k["reason"] == "listed_directory"),
        "--strict kept more than what was observed"
    );
    let bytes = report["slim_image_bytes"].as_u64().unwrap();
    println!(
        "  --strict: {bytes} bytes; the state directory, code tree and listed directory rules cost {} bytes",
        e.report["slim_image_bytes"].as_u64().unwrap() as i64 - bytes as i64
    );
    bytes
}

/// The state directories the report lists, with their writers.
fn state_dirs(report: &Value) -> Vec<(String, Vec<String>)> {
    report["state_directories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["dir"].as_str().unwrap().to_owned(),
                d["written_by"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e.as_str().unwrap().to_owned())
                    .collect(),
            )
        })
        .collect()
}

/// The kept entries with `reason`, as (path, the whole record).
fn kept_for<'a>(report: &'a Value, reason: &str) -> Vec<(&'a str, &'a Value)> {
    report["kept"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["reason"] == reason)
        .map(|k| (k["path"].as_str().unwrap(), k))
        .collect()
}

/// Entry names of the slim image's single layer, from the OCI layout.
fn layer_entries(oci_dir: &Path) -> Vec<String> {
    let index: Value =
        serde_json::from_slice(&std::fs::read(oci_dir.join("index.json")).unwrap()).unwrap();
    let blob = |digest: &str| {
        oci_dir
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    let layer = std::fs::read(blob(manifest["layers"][0]["digest"].as_str().unwrap())).unwrap();
    let mut archive = tar::Archive::new(&layer[..]);
    archive
        .entries()
        .unwrap()
        .map(|e| {
            e.unwrap()
                .path()
                .unwrap()
                .to_string_lossy()
                .trim_start_matches("./")
                .trim_end_matches('/')
                .to_owned()
        })
        .collect()
}

const NGINX: Case = Case {
    name: "nginx",
    image: "cimplifier-test/nginx:latest",
    inner_port: "80/tcp",
    paper_percent: 95.0,
    ready: http_ready,
    script: "nginx.sh",
    ports: &[80],
};

#[test]
fn nginx_static_site() {
    let (original, e) = observe_and_emit(&NGINX);
    let first = &original[0].lines;
    assert!(first.contains(&"GET / -> 200".to_owned()), "{first:?}");
    assert!(
        first.contains(&"GET /missing -> 404".to_owned()),
        "{first:?}"
    );
    let (slim, _) = run_slim(&NGINX, &e);
    let first = pass(&NGINX, &slim.0, "the slim nginx, first pass");
    let output = lifecycle(&NGINX, &slim.0, "the slim nginx", first);
    assert_same("nginx", &original, &output);
    let percent = report_sizes(&NGINX, &e.report);
    strict_size(&e);
    // nginx globs its include directories: the model knows it listed them.
    let listed: Vec<&str> = e.report["listed_directories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["dir"].as_str().unwrap())
        .collect();
    assert!(listed.contains(&"/etc/nginx/conf.d"), "{listed:?}");
    // nginx writes its pid file in /run: a state directory, kept whole.
    assert!(
        state_dirs(&e.report).contains(&("/run".into(), vec!["/usr/sbin/nginx".into()])),
        "{:?}",
        state_dirs(&e.report)
    );
    assert!(
        percent >= NGINX.paper_percent,
        "{percent:.1}% < the paper's {}%",
        NGINX.paper_percent
    );

    // Negative: a file the workload never touched is gone, and the report
    // says why; the binary and the merged-/usr links it needs are there.
    let entries = layer_entries(&e.oci_dir);
    for needed in [
        "usr/sbin/nginx",
        "etc/nginx/nginx.conf",
        "lib64",
        "var/www/html/about.html",
    ] {
        assert!(
            entries.iter().any(|x| x == needed),
            "{needed} missing from the slim layer"
        );
    }
    assert!(
        !entries.iter().any(|x| x == "usr/bin/apt"),
        "apt was never used"
    );
    let kept = e.report["kept"].as_array().unwrap();
    let reason = |path: &str| {
        kept.iter()
            .find(|k| k["path"] == path)
            .map(|k| k["reason"].clone())
    };
    assert_eq!(reason("/usr/bin/apt"), None);
    assert_eq!(reason("/usr/sbin/nginx").unwrap(), "observed");
    assert_eq!(reason("/lib64").unwrap(), "elf_dependency");
    let text = explained(&e, &["/usr/bin/apt", "/etc/nginx/nginx.conf"]);
    assert!(
        text.contains("/usr/bin/apt: removed: no observed executable used it"),
        "{text}"
    );
    assert!(
        text.contains("/etc/nginx/nginx.conf: kept: used by /usr/sbin/nginx (read)"),
        "{text}"
    );
    // The same inputs give the same image.
    assert!(
        text.contains(e.report["image_id"].as_str().unwrap()),
        "a second emit gave another image id:\n{text}"
    );

    // Least privilege: the master binds port 80 as root and hands the
    // workers to www-data; the root is read-only, every write landing in
    // a tmpfs or a volume.
    let privileges = &e.report["privileges"];
    println!("nginx privileges: {privileges}");
    let caps = privileges["capabilities"].as_object().unwrap();
    for cap in ["NET_BIND_SERVICE", "SETUID", "SETGID"] {
        assert!(caps.contains_key(cap), "{cap} not granted: {privileges}");
    }
    assert!(!caps.contains_key("SYS_CHROOT"), "{privileges}");
    assert_eq!(privileges["root"]["read_only"], true, "{privileges}");
    assert_eq!(privileges["no_new_privileges"], true, "{privileges}");
    let run = e.report["docker_run"].as_str().unwrap();
    assert!(
        run.contains("--cap-drop ALL")
            && run.contains("--cap-add NET_BIND_SERVICE")
            && run.contains("--security-opt no-new-privileges")
            && run.contains("--read-only"),
        "{run}"
    );
    let text = explained(&e, &["cap:NET_BIND_SERVICE", "cap:SYS_CHROOT"]);
    assert!(
        text.contains("cap:NET_BIND_SERVICE: granted: /usr/sbin/nginx bound 0.0.0.0:80"),
        "{text}"
    );
    assert!(
        text.contains("cap:SYS_CHROOT: dropped: no observed operation needs it"),
        "{text}"
    );
    // Seccomp: what nginx made, what runc makes after the filter, no more.
    let profile = seccomp_profile(&e);
    let allowed: Vec<&str> = profile["syscalls"][0]["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    for needed in ["bind", "accept4", "epoll_wait", "execve", "setuid"] {
        assert!(
            allowed.contains(&needed),
            "{needed} not allowed: {allowed:?}"
        );
    }
    for refused in ["ptrace", "mount", "kexec_load", "bpf"] {
        assert!(!allowed.contains(&refused), "{refused} allowed");
    }
    assert!(allowed.len() < 150, "{} allowed", allowed.len());
    // runc's stages in the cgroup are the runtime, not unknown programs.
    assert_eq!(
        e.report["privileges"]["seccomp"].get("not_seen"),
        None,
        "{}",
        e.report["privileges"]["seccomp"]
    );
    let text = explained(&e, &["syscall:bind", "syscall:ptrace"]);
    assert!(
        text.contains("syscall:bind: allowed: /usr/sbin/nginx made it"),
        "{text}"
    );
    assert!(
        text.contains("syscall:ptrace: refused: no observed executable made it"),
        "{text}"
    );
    assert!(text.contains("syscalls allowed: "), "{text}");
    hardening_holds(&NGINX, &e, e._work.path());
}

fn redis_ready(port: u16) -> bool {
    let out: Output = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "ping"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "PONG"
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

const REDIS: Case = Case {
    name: "redis",
    image: "cimplifier-test/redis:latest",
    inner_port: "6379/tcp",
    paper_percent: 92.0,
    ready: redis_ready,
    script: "redis.sh",
    ports: &[6379],
};

#[test]
fn redis_with_aof() {
    let (original, e) = observe_and_emit(&REDIS);
    for step in &original {
        assert_eq!(step.lines[0], "redis-benchmark completed without errors");
    }
    let (slim, _) = run_slim(&REDIS, &e);
    let first = pass(&REDIS, &slim.0, "the slim redis, first pass");
    let output = lifecycle(&REDIS, &slim.0, "the slim redis", first);
    assert_same("redis", &original, &output);
    // The append-only file brings the data back after a restart.
    docker(&["restart", "-t", "5", &slim.0]);
    let port = published_port(&slim.0, REDIS.inner_port);
    wait_until("the restarted slim redis", || redis_ready(port));
    assert_eq!(redis_cli(port, &["GET", "cimplifier:aof"]), "survives");
    let percent = report_sizes(&REDIS, &e.report);
    strict_size(&e);
    // Its data directory is a state directory (the image has it empty).
    assert!(
        state_dirs(&e.report)
            .iter()
            .any(|(d, by)| d == "/var/lib/redis" && by.iter().any(|e| e.ends_with("redis-server"))),
        "{:?}",
        state_dirs(&e.report)
    );
    assert!(
        percent >= REDIS.paper_percent,
        "{percent:.1}% < the paper's {}%",
        REDIS.paper_percent
    );
    // What redis wrote at run time is in its volume, not baked into the image.
    let entries = layer_entries(&e.oci_dir);
    assert!(entries.iter().any(|x| x == "var/lib/redis"));
    assert!(
        !entries
            .iter()
            .any(|x| x.starts_with("var/lib/redis/appendonly")),
        "{entries:?}"
    );
}

const FLASK: Case = Case {
    name: "flask",
    image: "cimplifier-test/flask:latest",
    inner_port: "5000/tcp",
    paper_percent: 75.0,
    ready: http_ready,
    script: "flask.sh",
    ports: &[5000],
};

#[test]
fn flask_web_app() {
    let (original, e) = observe_and_emit(&FLASK);
    assert!(
        original[0]
            .lines
            .iter()
            .any(|l| l.contains("Thank you, alice")),
        "{original:?}"
    );
    // The guestbook lives in memory: the second pass sees the first's
    // entry, a restart empties it (the slim app must do the same).
    assert_ne!(original[0].lines, original[1].lines);
    assert_eq!(original[0].lines, original[2].lines);
    let (slim, _) = run_slim(&FLASK, &e);
    let first = pass(&FLASK, &slim.0, "the slim Flask app, first pass");
    let output = lifecycle(&FLASK, &slim.0, "the slim Flask app", first);
    assert_same("flask", &original, &output);
    let percent = report_sizes(&FLASK, &e.report);
    let strict = strict_size(&e);
    // Python imports lazily: the packages it loaded from are kept whole,
    // each file with the tree it belongs to.
    let trees = e.report["code_trees"].as_array().unwrap();
    assert!(
        trees
            .iter()
            .any(|t| t["dir"] == "/usr/lib/python3/dist-packages/flask" && t["kind"] == "python"),
        "{trees:?}"
    );
    let code = kept_for(&e.report, "code_tree");
    assert!(
        code.iter().any(
            |(p, k)| p.starts_with("/usr/lib/python3/dist-packages/werkzeug/")
                && k["dir"] == "/usr/lib/python3/dist-packages/werkzeug"
        ),
        "no werkzeug module kept for its code tree"
    );
    assert!(strict < e.report["slim_image_bytes"].as_u64().unwrap());
    // Python lists each directory it imports from. Its standard library's
    // top level is over the budget: named, not kept, not silent.
    let stdlib = e.report["listed_directories"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["dir"] == "/usr/lib/python3.11")
        .expect("python3 listed its standard library");
    assert_eq!(stdlib["why_missing"], "over-budget", "{stdlib}");
    assert!(
        percent >= FLASK.paper_percent,
        "{percent:.1}% < the paper's {}%",
        FLASK.paper_percent
    );
}
