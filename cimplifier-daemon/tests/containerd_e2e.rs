//! The nginx slim case on containerd, end to end, with no Docker between
//! the daemon and the container: the test image imported into a
//! containerd namespace of its own (`docker save | ctr images import`), a
//! container created with `ctr` carrying the CRI's labels, observed by the
//! daemon through containerd's gRPC API from its first exec (the daemon
//! creates and starts its task), the nginx workload run against it, the
//! slim image emitted into the same namespace's content store, run with
//! `ctr run`, and the workload passed again.
//!
//! containerd is `$CONTAINERD_ADDRESS`, else the one dockerd runs
//! (Debian's containerd, started by the dockerd `cargo xtask setup`
//! starts). Needs root.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{Daemon, cimplifierctl, require_root, session_json, stdout_of, wait_until};
use serde_json::Value;

/// dockerd's own containerd.
const DOCKERD_CONTAINERD: &str = "/run/docker/containerd/containerd.sock";
const IMAGE: &str = "cimplifier-test/nginx:latest";
/// Where `up` keeps a containerd plan's volumes and logs.
const STATE_DIR: &str = "/var/lib/cimplifier/containerd";

fn address() -> PathBuf {
    let a = std::env::var_os("CONTAINERD_ADDRESS")
        .map_or_else(|| PathBuf::from(DOCKERD_CONTAINERD), PathBuf::from);
    assert!(
        a.exists(),
        "no containerd socket at {}: start dockerd (`cargo xtask setup`) or set \
         CONTAINERD_ADDRESS",
        a.display()
    );
    a
}

/// A containerd namespace of the test's own, its containers, tasks and
/// images removed however the test ends.
struct Namespace {
    address: PathBuf,
    name: String,
    containers: Vec<String>,
    images: Vec<String>,
}

impl Namespace {
    fn new(address: &Path, tag: &str) -> Self {
        Self {
            address: address.to_owned(),
            name: format!("cimplifier-test-{tag}-{}", std::process::id()),
            containers: vec![],
            images: vec![],
        }
    }

    fn ctr_output(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.address)
            .args(["-n", &self.name])
            .args(args)
            .output()
            .expect("running ctr (Debian's containerd package)")
    }

    fn ctr(&self, args: &[&str]) -> String {
        let out = self.ctr_output(args);
        assert!(
            out.status.success(),
            "ctr {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The pid of `id`'s running task.
    fn task_pid(&self, id: &str) -> Option<u32> {
        self.ctr(&["tasks", "ls"]).lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&id) && f.get(2) == Some(&"RUNNING")).then(|| f[1].parse().unwrap())
        })
    }

    fn import(&mut self, image: &str) -> String {
        let script = format!(
            "docker save {image} | ctr --address {} -n {} images import -",
            self.address.display(),
            self.name
        );
        let out = Command::new("sh").args(["-c", &script]).output().unwrap();
        assert!(
            out.status.success(),
            "importing {image}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let name = format!("docker.io/{image}");
        self.images.push(name.clone());
        name
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // What a failed `up` may have left: volumes and logs.
        let _ = std::fs::remove_dir_all(Path::new(STATE_DIR).join(&self.name));
        for c in &self.containers {
            let _ = self.ctr_output(&["tasks", "kill", "-a", "-s", "SIGKILL", c]);
        }
        std::thread::sleep(Duration::from_millis(500));
        for c in &self.containers {
            let _ = self.ctr_output(&["tasks", "rm", "-f", c]);
            let _ = self.ctr_output(&["containers", "rm", c]);
        }
        for i in &self.images {
            let _ = self.ctr_output(&["images", "rm", "--sync", i]);
        }
        let _ = Command::new("ctr")
            .arg("--address")
            .arg(&self.address)
            .args(["namespaces", "rm", &self.name])
            .output();
    }
}

/// The nginx workload against the container whose init is `pid`, from
/// inside its network namespace (containerd gives it no address outside).
fn workload(pid: u32) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/nginx.sh");
    let net = format!("--net=/proc/{pid}/ns/net");
    let mut out = None;
    // nginx may still be binding its port.
    wait_until(30, "nginx to answer", || {
        let o = Command::new("nsenter")
            .args([net.as_str(), "bash"])
            .arg(&script)
            .env("CIMPLIFIER_TARGET", "127.0.0.1")
            .output()
            .unwrap();
        let ok = o.status.success();
        out = Some(o);
        ok
    });
    stdout_of(&out.unwrap())
}

/// Observes through the daemon's gRPC API; returns once it has begun.
async fn observe(d: &Daemon, container: &str, restart: bool, attach: bool) {
    cimplifier::api::connect(&d.socket)
        .await
        .unwrap()
        .observe(cimplifier::api::pb::ObserveRequest {
            container: container.to_owned(),
            restart,
            attach,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("observing {container}: {e}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn nginx_on_containerd_from_cri_labels_to_ctr_run() {
    require_root();
    let address = address();
    let mut ns = Namespace::new(&address, "cri");
    let image = ns.import(IMAGE);
    let pod = format!("web-{}", std::process::id());
    ns.ctr(&[
        "containers",
        "create",
        "--label",
        "io.kubernetes.pod.namespace=shop",
        "--label",
        &format!("io.kubernetes.pod.name={pod}"),
        "--label",
        "io.kubernetes.container.name=nginx",
        &image,
        "web",
    ]);
    ns.containers.push("web".into());

    let d = Daemon::start_with_env(&[], &[("CONTAINERD_ADDRESS", &address)]);
    let target = format!("containerd://{}/web", ns.name);
    common::observe(&d, &target).await;
    let session = format!("shop_{pod}_nginx");
    let pid = ns.task_pid("web").expect("the daemon started the task");
    let answers = workload(pid);
    assert!(answers.contains("nginx workload: passed"), "{answers}");
    // The lifecycle inside the session: a reload, a graceful restart and a
    // crash with a start, the workload after each.
    use cimplifier::api::pb::{LifecycleRequest, LifecycleStep};
    let mut api = cimplifier::api::connect(&d.socket).await.unwrap();
    for step in [
        LifecycleStep::Reload,
        LifecycleStep::Restart,
        LifecycleStep::KillStart,
    ] {
        api.lifecycle(LifecycleRequest {
            container: session.clone(),
            step: step as i32,
        })
        .await
        .unwrap_or_else(|e| panic!("{step:?}: {e}"));
        let pid = ns.task_pid("web").expect("running after the step");
        let answers = workload(pid);
        assert!(
            answers.contains("nginx workload: passed"),
            "{step:?}: {answers}"
        );
    }
    stdout_of(&d.ctl(&["stop", &session]));

    let (record, events) = d.session_events(&session);
    assert_eq!(record["from_first_exec"], true, "{record:#}");
    assert_eq!(
        record["containerd"]["namespace"],
        ns.name.as_str(),
        "{record:#}"
    );
    assert_eq!(
        record["lifecycle"],
        serde_json::json!(["reload", "restart", "kill-start"]),
        "{record:#}"
    );
    assert_eq!(record["end"], "stopped", "the steps' exits did not end it");
    assert_eq!(
        record["run"]["cmd"],
        serde_json::json!(["nginx", "-g", "daemon off;"]),
        "how it ran, from its spec: {record:#}"
    );
    assert_eq!(session_json(&d, &session)["complete"], true);
    assert!(
        common::touches(&events, "/usr/sbin/nginx"),
        "the entrypoint's exec is in the session"
    );
    assert!(
        common::touches(&events, "/etc/nginx/nginx.conf"),
        "nginx's start-up is in the session"
    );

    let slim = format!("cimplifier-test-{}/nginx:slim", std::process::id());
    ns.images.push(slim.clone());
    let emitted = stdout_of(&d.ctl(&["emit", &session, "--tag", &slim]));
    println!("{emitted}");
    assert!(
        ns.ctr(&["images", "ls", "-q"]).lines().any(|l| l == slim),
        "emit named {slim} in containerd"
    );

    // verify --image in containerd: hardened by its label (capabilities,
    // seccomp, read-only root with its tmpfs, anonymous volumes filled
    // from the image), the workload inside its network namespace, through
    // the lifecycle steps the original went through.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/nginx.sh");
    let verified = Command::new(env!("CARGO_BIN_EXE_cimplifierctl"))
        .env("CONTAINERD_ADDRESS", &address)
        .arg("--socket")
        .arg(&d.socket)
        .args(["verify", &session, "--image", &slim, "--json", "--workload"])
        .arg(format!("bash {}", script.display()))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&verified.stderr);
    let report: serde_json::Value = serde_json::from_slice(&verified.stdout).unwrap_or_default();
    assert_eq!(verified.status.code(), Some(0), "{report:#} {said}");
    assert_eq!(report["verified"], true, "{report:#}");
    assert_eq!(
        report["workload"]["passes"].as_array().map(Vec::len),
        Some(4),
        "the first pass and one after each step: {report:#}"
    );
    assert_eq!(
        ns.ctr(&["containers", "ls", "-q"]).trim(),
        "web",
        "verify removed what it started"
    );

    ns.ctr(&["run", "-d", &slim, "slim"]);
    ns.containers.push("slim".into());
    let pid = ns.task_pid("slim").expect("ctr run started the slim image");
    let answers = workload(pid);
    assert!(answers.contains("nginx workload: passed"), "{answers}");
    // Slim: the package manager the workload never used is gone.
    let probe = ns.ctr_output(&[
        "tasks",
        "exec",
        "--exec-id",
        "probe",
        "slim",
        "/usr/bin/apt",
    ]);
    assert!(!probe.status.success(), "apt is still in the slim image");
}

/// A container someone else started (`ctr run`): attached to from now on
/// (the session says its start-up was missed), then restarted under
/// observation (the session sees nginx start again).
#[tokio::test(flavor = "multi_thread")]
async fn a_running_containerd_container_is_attached_to_or_restarted_under_observation() {
    require_root();
    let address = address();
    let mut ns = Namespace::new(&address, "running");
    let image = ns.import(IMAGE);
    ns.ctr(&["run", "-d", &image, "web"]);
    ns.containers.push("web".into());
    let pid = ns.task_pid("web").expect("ctr run started it");
    let d = Daemon::start_with_env(&[], &[("CONTAINERD_ADDRESS", &address)]);
    let target = format!("containerd://{}/web", ns.name);

    // Neither: refused, saying what to pass.
    let refused = d.ctl(&["observe", &target, "--duration", "1s"]);
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        why.contains("--restart") && why.contains("--attach"),
        "{why}"
    );

    observe(&d, &target, false, true).await;
    let answers = workload(pid);
    assert!(answers.contains("nginx workload: passed"), "{answers}");
    stdout_of(&d.ctl(&["stop", "web"]));
    let (record, events) = d.session_events("web");
    assert_eq!(record["from_first_exec"], false, "{record:#}");
    assert!(
        !common::touches(&events, "/usr/sbin/nginx"),
        "nginx was running before: its exec is not in an attached session"
    );

    // The same container again: the session goes on in a new segment.
    observe(&d, &target, true, false).await;
    let pid = ns.task_pid("web").expect("the daemon started it again");
    let answers = workload(pid);
    assert!(answers.contains("nginx workload: passed"), "{answers}");
    stdout_of(&d.ctl(&["stop", "web"]));
    let (record, events) = d.session_events("web");
    let segments = record["segments"].as_array().unwrap();
    assert_eq!(segments.len(), 2, "{record:#}");
    assert_eq!(segments[1]["from_first_exec"], true, "{record:#}");
    assert_eq!(
        record["from_first_exec"], false,
        "the first segment attached: {record:#}"
    );
    assert!(
        common::touches(&events, "/etc/nginx/nginx.conf"),
        "nginx started again under observation"
    );
}

/// A container that `ctr run` creates and starts at once, labelled for
/// observation: the daemon hears containerd's `/containers/create`, makes
/// and watches the cgroup its spec names before the task exists, and the
/// session sees nginx from its first exec, named from the CRI labels.
#[tokio::test(flavor = "multi_thread")]
async fn a_labelled_container_ctr_runs_is_observed_from_its_first_exec() {
    require_root();
    let address = address();
    let mut ns = Namespace::new(&address, "labels");
    let image = ns.import(IMAGE);
    let d = Daemon::start_with_env(&["--watch-labels"], &[("CONTAINERD_ADDRESS", &address)]);
    let pod = format!("labelled-{}", std::process::id());
    // The watch is up once the daemon says so in its sessions (it has no
    // call for it): give it a moment to subscribe.
    std::thread::sleep(Duration::from_secs(2));
    ns.ctr(&[
        "run",
        "-d",
        "--label",
        "io.cimplifier.observe=true",
        "--label",
        "io.kubernetes.pod.namespace=shop",
        "--label",
        &format!("io.kubernetes.pod.name={pod}"),
        "--label",
        "io.kubernetes.container.name=nginx",
        &image,
        "web",
    ]);
    ns.containers.push("web".into());
    let session = format!("shop_{pod}_nginx");
    wait_until(30, "the labelled container's session", || {
        String::from_utf8_lossy(&d.ctl(&["sessions", "--json"]).stdout).contains(&session)
    });
    let pid = ns.task_pid("web").expect("ctr run started it");
    let answers = workload(pid);
    assert!(answers.contains("nginx workload: passed"), "{answers}");
    stdout_of(&d.ctl(&["stop", &session]));
    let (record, events) = d.session_events(&session);
    assert_eq!(record["from_first_exec"], true, "{record:#}");
    assert!(
        common::touches(&events, "/etc/nginx/nginx.conf"),
        "nginx's start-up is in the session"
    );

    // By an OCI annotation (where the CRI passes a pod's), no label.
    ns.ctr(&[
        "run",
        "-d",
        "--annotation",
        "io.cimplifier.observe=true",
        &image,
        "annotated",
    ]);
    ns.containers.push("annotated".into());
    wait_until(30, "the annotated container's session", || {
        String::from_utf8_lossy(&d.ctl(&["sessions", "--json"]).stdout).contains("annotated")
    });
    stdout_of(&d.ctl(&["stop", "annotated"]));
    let (record, _) = d.session_events("annotated");
    assert_eq!(record["from_first_exec"], true, "{record:#}");
}

/// A containerd session survives the daemon's crash: killed with SIGKILL
/// and started again, the daemon finds the task still running, resumes
/// the session with the gap marked, and what the container does after
/// the restart is in it.
#[tokio::test(flavor = "multi_thread")]
async fn a_containerd_session_is_resumed_after_the_daemon_is_killed() {
    require_root();
    let address = address();
    let mut ns = Namespace::new(&address, "resume");
    let image = ns.import(IMAGE);
    ns.ctr(&["containers", "create", &image, "web"]);
    ns.containers.push("web".into());
    let mut d = Daemon::start_with_env(&[], &[("CONTAINERD_ADDRESS", &address)]);
    observe(&d, &format!("containerd://{}/web", ns.name), false, false).await;
    let pid = ns.task_pid("web").expect("the daemon started the task");
    wait_until(20, "the start-up is stored", || {
        session_json(&d, "web")["events"].as_u64().unwrap_or(0) > 0
    });
    d.kill_hard();
    d.restart();
    let resumed = session_json(&d, "web");
    assert_eq!(resumed["state"], "observing", "resumed: {resumed}");
    let segments = resumed["segments"].as_array().unwrap();
    assert_eq!(segments.len(), 2, "{resumed}");
    assert_eq!(segments[1]["origin"], "resumed after a daemon restart");
    assert_eq!(resumed["gaps"].as_array().unwrap().len(), 1, "{resumed}");

    let before = resumed["events"].as_u64().unwrap();
    let answers = workload(pid);
    assert!(answers.contains("nginx workload: passed"), "{answers}");
    stdout_of(&d.ctl(&["stop", "web"]));
    let (record, events) = d.session_events("web");
    assert!(record["events"].as_u64().unwrap() > before, "{record:#}");
    assert!(
        common::touches(&events, "/var/www/html/about.html"),
        "the workload after the restart is in the session"
    );
}

/// `observe --exec` on containerd: the daemon names where the container
/// is reached (loopback for a task in the host's network namespace,
/// `ctr --net-host`), cimplifierctl runs the workload against it, then
/// again after a restart, a kill-start and a reload inside the session.
#[tokio::test(flavor = "multi_thread")]
async fn observe_exec_runs_the_workload_and_the_lifecycle_on_containerd() {
    require_root();
    let address = address();
    let mut ns = Namespace::new(&address, "exec");
    let image = ns.import(IMAGE);
    ns.ctr(&["containers", "create", "--net-host", &image, "web"]);
    ns.containers.push("web".into());
    let d = Daemon::start_with_env(&[], &[("CONTAINERD_ADDRESS", &address)]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads/nginx.sh");
    let out = d.ctl(&[
        "observe",
        &format!("containerd://{}/web", ns.name),
        "--exec",
        &format!("bash {}", script.display()),
    ]);
    let said = stdout_of(&out);
    assert!(
        said.contains("first pass: ok, after restart: ok, after kill-start: ok, after reload: ok"),
        "{said}"
    );
    let (record, _) = d.session_events("web");
    assert_eq!(record["from_first_exec"], true, "{record:#}");
    assert_eq!(
        record["lifecycle"],
        serde_json::json!(["restart", "kill-start", "reload"]),
        "{record:#}"
    );
}

/// The shell and `cat` of the flag image in two partitions on containerd,
/// with no Docker between: observed in containerd, emitted with `--policy`
/// into the namespace's content store, the run plan passes `verify
/// --plan` (each partition started under observation, the shell's `cat`
/// run in the reader's partition by RPE over a socket directory shared
/// between them, /srv/app seeded from the source image); then `up` starts
/// it (the shell prints what `cat` read in the other partition) and
/// `down --volumes` leaves no task, container, snapshot or volume behind.
#[test]
fn a_partitioned_plan_runs_on_containerd_with_up_down_and_verify() {
    require_root();
    let address = address();
    let pid = std::process::id();
    let mut ns = Namespace::new(&address, "split");
    let source = format!("cimplifier-e2e/ctr-flag{pid}:latest");
    common::flag_image(&format!("ctr-flag-base-{pid}"), &source);
    let image = ns.import(&source);
    let _ = Command::new("docker").args(["rmi", &source]).output();
    ns.ctr(&["containers", "create", &image, "split"]);
    ns.containers.push("split".into());
    let d = Daemon::start_with_env(&[], &[("CONTAINERD_ADDRESS", &address)]);
    let ctl = |args: &[&str]| -> (Option<i32>, Value, String) {
        let out = cimplifierctl()
            .env("CONTAINERD_ADDRESS", &address)
            .arg("--socket")
            .arg(&d.socket)
            .args(args)
            .output()
            .unwrap();
        let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let said = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), json, said)
    };
    let target = format!("containerd://{}/split", ns.name);
    let (code, info, said) = ctl(&["observe", &target, "--json"]);
    assert_eq!(code, Some(0), "{said}");
    assert_eq!(info["complete"], true, "{info}");

    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, common::SHELL_AND_READER_POLICY).unwrap();
    let out = dir.path().join("split");
    let plan = out.to_str().unwrap();
    let tag = format!("cimplifier-test-{pid}/split");
    let (code, report, said) = ctl(&[
        "emit",
        "split",
        "--policy",
        policy.to_str().unwrap(),
        "--tag",
        &tag,
        "--out",
        plan,
        "--json",
    ]);
    assert_eq!(code, Some(0), "{said}");
    for image in report["partitions"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(std::iter::once(&report["seed"]))
        .filter_map(|p| p["image"].as_str())
    {
        ns.images.push(image.to_owned());
    }
    let compose = std::fs::read_to_string(out.join("docker-compose.yml")).unwrap();
    assert!(
        compose.contains(&format!("x-cimplifier-containerd-namespace: {}", ns.name)),
        "the plan says where its images are: {compose}"
    );
    // What `up` makes, removed however the test ends.
    for service in ["shell", "reader", "cimplifier-seed"] {
        ns.containers.push(format!("split-{service}-1"));
    }

    let (code, verified, said) = ctl(&[
        "verify",
        "split",
        "--plan",
        plan,
        "--workload",
        "test \"$(cat /proc/net/dev | grep -c :)\" = 1 && sleep 2",
        "--json",
    ]);
    assert_eq!(code, Some(0), "{said}");
    assert_eq!(verified["verified"], true, "{verified}");
    assert_eq!(
        verified["output_sessions"].as_array().map(Vec::len),
        Some(2),
        "{verified}"
    );
    assert_eq!(
        ns.ctr(&["containers", "ls", "-q"]).trim(),
        "split",
        "verify removed what it started"
    );

    // Without CNI nothing can be published: refused by name, nothing made.
    let (code, _, said) = ctl(&["up", plan, "--publish", "8080:80"]);
    assert_ne!(code, Some(0), "{said}");
    assert!(said.contains("--publish") && said.contains("CNI"), "{said}");
    assert_eq!(ns.ctr(&["containers", "ls", "-q"]).trim(), "split");

    let (code, up, said) = ctl(&["up", plan, "--json"]);
    assert_eq!(code, Some(0), "{said}");
    assert_eq!(up["containers"].as_array().map(Vec::len), Some(2), "{up}");
    assert_eq!(up["seeded"], serde_json::json!(["srv-app"]), "{up}");
    let volume = Path::new(STATE_DIR)
        .join(&ns.name)
        .join("volumes/split_srv-app/data");
    assert_eq!(
        std::fs::read_to_string(volume.join("flag")).unwrap(),
        "hello\n",
        "the seed filled the shared volume from the source image"
    );
    // The shell's `cat` ran in the reader's partition and read the flag.
    let log = Path::new(STATE_DIR)
        .join(&ns.name)
        .join("logs/split-shell-1.log");
    wait_until(30, "the shell partition to print the flag", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("hello"))
    });
    let (_, again, said) = ctl(&["up", plan]);
    assert!(
        said.contains("already up"),
        "a second up is refused: {again} {said}"
    );

    let (code, removed, said) = ctl(&["down", plan, "--volumes", "--json"]);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        removed
            .as_array()
            .is_some_and(|r| r.iter().any(|x| x == "split_srv-app")),
        "{removed}"
    );
    assert_eq!(ns.ctr(&["containers", "ls", "-q"]).trim(), "split");
    assert!(
        !ns.ctr(&["tasks", "ls"]).contains("split-"),
        "no task of the plan is left"
    );
    let snapshots = ns.ctr(&["snapshots", "ls"]);
    assert!(
        !snapshots.lines().any(|l| l.starts_with("split-")),
        "no snapshot of the plan's containers is left: {snapshots}"
    );
    // What is left is the images' unpacked layers (committed, held by each
    // image's gc.ref label until the image is removed, as containerd's own
    // unpacker leaves them) and the snapshots of containers still there.
    let containers = ns.ctr(&["containers", "ls", "-q"]);
    for line in snapshots.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (key, kind) = (fields[0], fields[fields.len() - 1]);
        assert!(
            kind == "Committed" || containers.lines().any(|c| c.trim() == key),
            "snapshot {key} ({kind}) is neither a layer nor a container's: {snapshots}"
        );
    }
    assert!(
        !Path::new(STATE_DIR).join(&ns.name).exists(),
        "down --volumes removed the volumes and logs"
    );
}
