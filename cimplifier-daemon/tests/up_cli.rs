//! `cimplifierctl up` is all or nothing and names the real cause: a run
//! plan whose network owner exits as it starts is rolled back (no
//! container, no new volume left) and the error names that partition with
//! its last log lines; `--publish` publishes the owner's port. Real Docker,
//! with two tiny images built from the base test image. Needs root.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::{BASE_IMAGE, docker, require_root};

/// An image built from the base test image with `cmd` as its command,
/// removed on drop.
struct Image(String);

impl Image {
    fn build(what: &str, cmd: &str) -> Self {
        let tag = format!("cimplifier-test-up/{what}:{}", std::process::id());
        let mut child = Command::new("docker")
            .args(["build", "-q", "-t", &tag, "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        write!(
            child.stdin.take().unwrap(),
            "FROM {BASE_IMAGE}\nCMD {cmd}\n"
        )
        .unwrap();
        assert!(child.wait().unwrap().success(), "building {tag}");
        Self(tag)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", "-f", &self.0]).output();
    }
}

fn ctl(args: &[&str]) -> Output {
    common::cimplifierctl().args(args).output().unwrap()
}

fn plan(dir: &std::path::Path, project: &str, owner: &str, other: &str) -> String {
    let yaml = format!(
        "name: {project}\nservices:\n  web:\n    image: {owner}\n    volumes:\n    - data:/data\n  \
         php:\n    image: {other}\n    network_mode: service:web\nvolumes:\n  data: {{}}\n"
    );
    std::fs::write(dir.join("docker-compose.yml"), yaml).unwrap();
    dir.to_str().unwrap().to_owned()
}

fn project_left(project: &str) -> (String, String) {
    (
        docker(&[
            "ps",
            "-a",
            "--filter",
            &format!("label=com.docker.compose.project={project}"),
            "--format",
            "{{.Names}}",
        ]),
        docker(&[
            "volume",
            "ls",
            "--filter",
            &format!("name={project}_"),
            "--format",
            "{{.Name}}",
        ]),
    )
}

#[test]
fn up_rolls_back_and_names_the_partition_that_exited() {
    require_root();
    let exits = Image::build(
        "exits",
        r#"["/bin/sh", "-c", "echo starting; echo 'fatal: no config in /etc/web' >&2; exit 3"]"#,
    );
    let sleeps = Image::build("sleeps", r#"["sleep", "600"]"#);
    let project = format!("cimplifier-up-{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let path = plan(dir.path(), &project, &exits.0, &sleeps.0);

    let out = ctl(&["up", &path]);
    let err = String::from_utf8_lossy(&out.stderr);
    let left = project_left(&project);
    let _ = ctl(&["down", &path, "--volumes"]);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("partition web") && err.contains("exited with code 3"),
        "names the partition that exited: {err}"
    );
    assert!(
        err.contains("fatal: no config in /etc/web"),
        "with its last log lines: {err}"
    );
    assert!(err.contains("was removed"), "{err}");
    assert_eq!(
        left,
        (String::new(), String::new()),
        "nothing is left behind"
    );

    // A plan that runs, published where asked; then up again is refused.
    let path = plan(dir.path(), &project, &sleeps.0, &sleeps.0);
    let out = ctl(&["up", &path, "--publish", "127.0.0.1::80", "--json"]);
    let cleanup = Down(path.clone());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let published = report["published"].as_array().unwrap();
    assert!(
        published
            .iter()
            .any(|p| p.as_str().unwrap().starts_with("127.0.0.1:")
                && p.as_str().unwrap().ends_with("-> 80/tcp")),
        "{report}"
    );
    let bad = ctl(&["up", &path, "--publish", "80"]);
    assert_eq!(
        bad.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    drop(cleanup);
}

/// `down --volumes` on drop.
struct Down(String);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = ctl(&["down", &self.0, "--volumes"]);
    }
}
