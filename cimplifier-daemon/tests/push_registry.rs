//! `emit --push` against Debian's docker-registry (issue 17, item 3): a
//! registry of its own on a free 127.0.0.1 port with its own config and
//! storage, stopped at the end.
//!
//! - Round trip: observe nginx under its workload, push its slim image
//!   (no --tag: nothing is loaded into Docker by emit), pull it into
//!   Docker from the registry, run it hardened as the report says, and
//!   the workload answers as it did on the original. The registry's
//!   manifest has a gzip layer under its compressed digest.
//! - A session whose image is gone from Docker is emitted from the registry
//!   (the engine pulls it), and refused when the tag has moved.
//! - Errors name the registry and what to do: nothing listening, a
//!   registry off this host that speaks no HTTPS (then --insecure-registry
//!   pushes), credentials refused; and the caller's docker config gives
//!   credentials that are accepted.
//!
//! Needs root, dockerd, docker-registry and apache2-utils (htpasswd).

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::lifecycle::{Script, Single};
use common::{BASE_IMAGE, Container, Daemon, docker, require_root};
use serde_json::Value;

/// A docker-registry process on `addr`, storing under its own directory.
struct Registry {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Registry {
    /// On `ip`, with htpasswd users (`user:password`) when given.
    fn start(ip: &str, users: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("{ip}:{}", free_port(ip));
        let mut auth = String::new();
        if !users.is_empty() {
            let file = dir.path().join("htpasswd");
            for (i, (user, password)) in users.iter().enumerate() {
                let mut args = vec!["-bB"];
                if i == 0 {
                    args.push("-c");
                }
                let file = file.to_str().unwrap();
                args.extend([file, user, password]);
                let out = Command::new("htpasswd")
                    .args(&args)
                    .output()
                    .expect("htpasswd (apt-get install apache2-utils)");
                assert!(out.status.success(), "{out:?}");
            }
            auth = format!(
                "auth:\n  htpasswd:\n    realm: cimplifier-test\n    path: {}\n",
                file.display()
            );
        }
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n  secret: cimplifier-test\n{auth}",
                dir.path().join("storage").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (apt-get install docker-registry)");
        let registry = Self {
            child,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&registry.addr).is_err() {
            assert!(Instant::now() < deadline, "the registry never listened");
            std::thread::sleep(Duration::from_millis(100));
        }
        registry
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ctl(d: &Daemon, args: &[&str], docker_config: Option<&Path>) -> Output {
    let mut c = common::cimplifierctl();
    c.arg("--socket").arg(&d.socket).args(args);
    // The caller's docker config, never the host's.
    let empty = tempfile::tempdir().unwrap();
    c.env("DOCKER_CONFIG", docker_config.unwrap_or(empty.path()));
    c.output().unwrap()
}

/// The host port Docker published for 80/tcp.
fn published_port(container: &str) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = docker(&["port", container, "80/tcp"]);
        if let Some(port) = text
            .lines()
            .next()
            .and_then(|l| l.rsplit(':').next()?.parse().ok())
        {
            return port;
        }
        assert!(Instant::now() < deadline, "{container} published no port");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_slim_nginx_pushed_to_a_local_registry_is_pulled_run_and_passes_its_workload() {
    require_root();
    let pid = std::process::id();
    let registry = Registry::start("127.0.0.1", &[]);
    let d = Daemon::start();
    let work = tempfile::tempdir().unwrap();
    let script = Script::new("nginx.sh", &[80]);

    let name = format!("cimplifier-push-nginx-{pid}");
    let original = Container(name.clone());
    let _ = Command::new("docker")
        .args(["rm", "-f", "-v", &name])
        .output();
    docker(&[
        "create",
        "--name",
        &name,
        "-p",
        "127.0.0.1::80",
        "cimplifier-test/nginx:latest",
    ]);
    let answers = work.path().join("answers");
    let observed = ctl(
        &d,
        &[
            "observe",
            &name,
            "--no-lifecycle",
            "--exec",
            &script.exec_line(&answers),
        ],
        None,
    );
    assert!(observed.status.success(), "{observed:?}");
    let expected: Vec<String> = std::fs::read_to_string(&answers)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    drop(original);

    let reference = format!("{}/cimplifier-push{pid}/nginx:slim", registry.addr);
    // --out gets the seccomp profile the report's docker run line names.
    let out = tempfile::tempdir().unwrap();
    let out_dir = out.path().join("slim");
    let emitted = ctl(
        &d,
        &[
            "emit",
            &name,
            "--push",
            &reference,
            "--out",
            out_dir.to_str().unwrap(),
            "--json",
        ],
        None,
    );
    assert!(
        emitted.status.success(),
        "{}",
        String::from_utf8_lossy(&emitted.stderr)
    );
    let report: Value = serde_json::from_slice(&emitted.stdout).unwrap();
    let pushed = &report["pushed"];
    assert_eq!(pushed["reference"], reference.as_str());
    let digest = pushed["manifest_digest"].as_str().unwrap().to_owned();
    println!(
        "pushed {}: layer {} bytes, {} gzip-compressed",
        pushed["pinned"], report["slim_image_bytes"], pushed["compressed_bytes"]
    );
    assert!(
        (pushed["compressed_bytes"].as_u64().unwrap())
            < report["slim_image_bytes"].as_u64().unwrap(),
        "{pushed}"
    );

    // What the registry holds: the manifest under that digest, with a
    // gzip layer whose digest is the compressed blob's.
    let manifest_url = format!(
        "http://{}/v2/cimplifier-push{pid}/nginx/manifests/slim",
        registry.addr
    );
    let got = Command::new("curl")
        .args([
            "-fsS",
            "-D",
            "-",
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json",
            &manifest_url,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&got.stdout);
    assert!(
        text.to_ascii_lowercase()
            .contains(&format!("docker-content-digest: {digest}")),
        "{text}"
    );
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    let manifest: Value = serde_json::from_str(body).unwrap();
    assert_eq!(
        manifest["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    assert_eq!(manifest["config"]["digest"], report["image_id"]);

    // Into Docker from the registry (Docker pulls from 127.0.0.0/8 over
    // plain HTTP), then run as the report says, hardened.
    docker(&["pull", &reference]);
    let _pulled = PulledImage(reference.clone());
    let pulled_id = docker(&["image", "inspect", "-f", "{{.Id}}", &reference]);
    assert_eq!(
        pulled_id,
        report["image_id"].as_str().unwrap(),
        "the same image"
    );
    let line = report["docker_run"].as_str().unwrap();
    let words: Vec<&str> = line.split_whitespace().collect();
    let flags = &words[3..words.len() - 1];
    let slim = format!("cimplifier-push-slim-{pid}");
    let slim_container = Container(slim.clone());
    let _ = Command::new("docker")
        .args(["rm", "-f", "-v", &slim])
        .output();
    let mut args = vec!["run", "-d", "--name", &slim, "-p", "127.0.0.1::80"];
    args.extend(flags.iter().copied());
    args.push(&reference);
    println!("docker {}", args.join(" "));
    docker(&args);
    let _port = published_port(&slim);
    let answered = script.run(&Single(slim.clone()), "the pulled slim nginx");
    assert_eq!(
        answered, expected,
        "the pulled image answers as the original did"
    );
    drop(slim_container);
}

/// Removes the image pulled from the registry, however the test ends.
struct PulledImage(String);

impl Drop for PulledImage {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", &self.0]).output();
    }
}

#[test]
fn push_errors_name_the_registry_and_what_to_do() {
    require_root();
    let pid = std::process::id();
    let d = Daemon::start();
    let c = Container::create("push-small", &[BASE_IMAGE, "cat", "/etc/hostname"]);
    let observed = ctl(&d, &["observe", &c.0], None);
    assert!(observed.status.success(), "{observed:?}");
    let push = |reference: &str, extra: &[&str], config: Option<&Path>| {
        let mut args = vec!["emit", &c.0, "--push", reference];
        args.extend(extra);
        ctl(&d, &args, config)
    };
    let stderr = |o: &Output| {
        let e = String::from_utf8_lossy(&o.stderr).into_owned();
        println!("{e}");
        e
    };

    // A bad reference is a usage error before any work.
    let o = push("Not A Ref", &[], None);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("REGISTRY/REPOSITORY[:TAG]"),
        "{}",
        stderr(&o)
    );

    // Nothing listening.
    let closed = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let o = push(&format!("{closed}/small:1"), &[], None);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("cannot reach registry {closed}")),
        "{}",
        stderr(&o)
    );

    // A registry off 127.0.0.1 and localhost is spoken to in HTTPS only.
    let plain = Registry::start("127.0.0.2", &[]);
    let o = push(&format!("{}/small:1", plain.addr), &[], None);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains(&format!("registry {} does not answer HTTPS", plain.addr))
            && e.contains("--insecure-registry"),
        "{e}"
    );
    let o = push(
        &format!("{}/small:1", plain.addr),
        &["--insecure-registry"],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));

    // Credentials: refused without, accepted from the caller's docker config.
    let guarded = Registry::start("127.0.0.1", &[("ci", "s3cret")]);
    let reference = format!("{}/small{pid}:1", guarded.addr);
    let o = push(&reference, &[], None);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains(&format!("registry {} refused", guarded.addr))
            && e.contains(&format!("docker login {}", guarded.addr)),
        "{e}"
    );
    let config = tempfile::tempdir().unwrap();
    let write_config = |password: &str| {
        // user:password in base64, as `docker login` stores it.
        let mut b64 = Command::new("base64")
            .args(["-w", "0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write as _;
            let mut stdin = b64.stdin.take().unwrap();
            stdin
                .write_all(format!("ci:{password}").as_bytes())
                .unwrap();
        }
        let auth = String::from_utf8(b64.wait_with_output().unwrap().stdout).unwrap();
        std::fs::write(
            config.path().join("config.json"),
            format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, guarded.addr),
        )
        .unwrap();
    };
    write_config("wrong");
    let o = push(&reference, &[], Some(config.path()));
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains("refused"), "{}", stderr(&o));
    write_config("s3cret");
    let o = push(&reference, &[], Some(config.path()));
    assert!(o.status.success(), "{}", stderr(&o));
}

/// An image of its own (the base image with a label), so that removing
/// it from Docker removes it for good; removed however the test ends.
fn own_image(tag: &str, label: &str) -> PulledImage {
    let scratch = Container::create(&format!("own-{label}"), &[BASE_IMAGE, "true"]);
    docker(&[
        "commit",
        "--change",
        &format!("LABEL cimplifier.test={label}"),
        "--change",
        r#"CMD ["/bin/sh", "-c", "cat /etc/os-release > /dev/null"]"#,
        &scratch.0,
        tag,
    ]);
    PulledImage(tag.to_owned())
}

/// A session whose image is no longer in Docker is emitted from the
/// registry its reference names, pulled by the engine; when the tag has
/// moved to another image since, emit refuses, saying so.
#[test]
fn emit_pulls_a_source_image_gone_from_the_engine_and_refuses_a_moved_tag() {
    require_root();
    let pid = std::process::id();
    let registry = Registry::start("127.0.0.1", &[]);
    let source = format!("{}/cimplifier-src{pid}:1", registry.addr);
    let image = own_image(&source, "observed");
    docker(&["push", &source]);
    let d = Daemon::start();
    let c = Container::create("pull-src", &[&source]);
    let out = ctl(&d, &["observe", &c.0], None);
    assert!(out.status.success(), "{out:?}");
    drop(c);
    drop(image);
    let gone = Command::new("docker")
        .args(["image", "inspect", &source])
        .output()
        .unwrap();
    assert!(
        !gone.status.success(),
        "the source image is still in Docker"
    );

    let slim = format!("cimplifier-e2e/pulled{pid}:slim");
    let _slim = PulledImage(slim.clone());
    let session = format!("cimplifier-pull-src-{pid}");
    let emit = || ctl(&d, &["emit", &session, "--tag", &slim], None);
    let out = emit();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "emit from the registry: {said}");
    docker(&["image", "inspect", &slim]);
    // Pulled back: the observed image is in Docker again.
    docker(&["rmi", &source]);

    // The tag moved: another image under the same name.
    let moved = own_image(&source, "moved");
    docker(&["push", &source]);
    drop(moved);
    let _ = Command::new("docker").args(["rmi", &source]).output();
    let out = emit();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a moved tag was taken");
    assert!(said.contains("the tag moved"), "{said}");
}

/// A docker config in a directory of its own holding `user:password` for
/// `registry`, as `docker login` writes it.
fn docker_config(registry: &str, user: &str, password: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut b64 = Command::new("base64")
        .args(["-w", "0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut stdin = b64.stdin.take().unwrap();
        stdin
            .write_all(format!("{user}:{password}").as_bytes())
            .unwrap();
    }
    let auth = String::from_utf8(b64.wait_with_output().unwrap().stdout).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        format!(r#"{{"auths":{{"{registry}":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
    dir
}

/// The observed image is gone from the engine and its registry asks for
/// credentials: emit has the engine pull it with the caller's (from
/// cimplifierctl's docker config); without them, or with wrong ones, the
/// pull is refused, naming the registry and how to log in.
#[test]
fn emit_pulls_a_source_image_from_a_registry_with_the_callers_credentials() {
    require_root();
    let pid = std::process::id();
    let registry = Registry::start("127.0.0.1", &[("ci", "s3cret")]);
    let source = format!("{}/cimplifier-guarded{pid}:1", registry.addr);
    let image = own_image(&source, "guarded");
    let good = docker_config(&registry.addr, "ci", "s3cret");
    let wrong = docker_config(&registry.addr, "ci", "wrong");
    // Pushed with the credentials, never through the host's docker config.
    docker(&["--config", good.path().to_str().unwrap(), "push", &source]);
    let d = Daemon::start();
    let c = Container::create("pull-guarded", &[&source]);
    let out = ctl(&d, &["observe", &c.0], None);
    assert!(out.status.success(), "{out:?}");
    drop(c);
    drop(image);
    let gone = Command::new("docker")
        .args(["image", "inspect", &source])
        .output()
        .unwrap();
    assert!(
        !gone.status.success(),
        "the source image is still in Docker"
    );
    let _pulled = PulledImage(source.clone());

    let slim = format!("cimplifier-e2e/guarded{pid}:slim");
    let _slim = PulledImage(slim.clone());
    let session = format!("cimplifier-pull-guarded-{pid}");
    let emit = |config: Option<&Path>| ctl(&d, &["emit", &session, "--tag", &slim], config);
    for (config, said) in [
        (None, "no credentials were given"),
        (Some(wrong.path()), "the credentials of ci"),
    ] {
        let out = emit(config);
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "pulled without the right credentials"
        );
        assert!(
            e.contains(&format!("registry {}", registry.addr))
                && e.contains(&format!("`docker login {}", registry.addr))
                && e.contains(said),
            "{e}"
        );
        assert!(!e.contains("wrong"), "the password is not echoed: {e}");
    }
    let out = emit(Some(good.path()));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "emit with the caller's credentials: {e}"
    );
    docker(&["image", "inspect", &slim]);
    docker(&["image", "inspect", &source]);
}
