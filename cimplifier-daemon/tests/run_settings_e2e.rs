//! How the container was run survives emit (issue 12, class 7): a
//! container created with its own command, environment, user, working
//! directory and published port (`docker create ... IMAGE sh -c '...'`) is
//! observed; its slim image, and its one-one partitioned system started
//! with `up`, run that same command the same way and print the same. The
//! image's own command (`/bin/bash`) is never what runs. Needs root, eBPF
//! and dockerd.

mod common;

use std::process::Command;

use cimplifier::emit::partitioned::Role;
use cimplifier::emit::runconfig::{Origin, Setting};
use common::{
    BASE_IMAGE, Container, Daemon, docker, emit_partitioned, require_root, stdout_of, wait_until,
};
use serde_json::Value;

/// The command the container is created with; the image's is /bin/bash.
const SCRIPT: &str = r#"echo "$GREETING in $(pwd) as $(id -u)"; cat /etc/debian_version"#;

/// Creates the container with its own settings, observes it until it
/// exits, and returns what it printed.
fn observe_own_command(d: &Daemon, tag: &str) -> (Container, String) {
    let c = Container::create(
        tag,
        &[
            "-e",
            "GREETING=hello-from-the-container",
            "-w",
            "/tmp",
            "-u",
            "65534",
            "-p",
            "127.0.0.1::8000",
            // Not carried (no image config or run plan key holds it): the
            // report must name it.
            "--cap-add",
            "SYS_NICE",
            BASE_IMAGE,
            "sh",
            "-c",
            SCRIPT,
        ],
    );
    // `observe` starts it and returns when the session ends: the container
    // exits once it has printed.
    let out = d.ctl(&["observe", &c.0, "--duration", "60s"]);
    let said = stdout_of(&out);
    assert!(said.contains("no events lost"), "{said}");
    let printed = docker(&["logs", &c.0]);
    assert!(
        printed.starts_with("hello-from-the-container in /tmp as 65534\n"),
        "the original printed {printed:?}"
    );
    (c, printed)
}

fn origin(settings: &Value, setting: &str, name: Option<&str>) -> String {
    settings
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["setting"] == setting && name.is_none_or(|n| s["name"] == n))
        .unwrap_or_else(|| panic!("no {setting} {name:?} in {settings}"))["from"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn the_slim_image_runs_the_containers_own_command() {
    require_root();
    let d = Daemon::start();
    let (c, printed) = observe_own_command(&d, "runconfig-slim");
    let tag = format!("cimplifier-e2e/runconfig-slim:{}", std::process::id());
    let report: Value =
        serde_json::from_str(&stdout_of(&d.ctl(&["emit", &c.0, "--tag", &tag, "--json"]))).unwrap();
    let slim = format!("{}-run", c.0);
    let _slim = Container(slim.clone());
    let out = Command::new("docker")
        .args(["run", "--name", &slim, &tag])
        .output()
        .unwrap();
    let _ = Command::new("docker").args(["rmi", "-f", &tag]).output();
    assert!(
        out.status.success(),
        "the slim image did not run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        printed,
        "the slim image printed otherwise"
    );

    // The report says where each setting came from, and how to publish
    // the port as the container did.
    let settings = &report["run"]["settings"];
    assert_eq!(origin(settings, "cmd", None), "container", "{settings}");
    assert_eq!(origin(settings, "working_dir", None), "container");
    assert_eq!(origin(settings, "user", None), "container");
    assert_eq!(origin(settings, "env", Some("GREETING")), "container");
    let run = report["docker_run"].as_str().unwrap();
    assert!(run.contains("-p 127.0.0.1::8000 "), "{run}");
    // The engine names it as the kernel does.
    assert_eq!(report["run"]["left_out"][0], "--cap-add CAP_SYS_NICE");
    let text = stdout_of(&d.ctl(&["emit", &c.0, "--tag", &tag]));
    let _ = Command::new("docker").args(["rmi", "-f", &tag]).output();
    assert!(
        text.contains("cmd [\"sh\",\"-c\",")
            && text.contains("container (docker create IMAGE COMMAND)"),
        "{text}"
    );
}

/// Stops the partitioned system and removes its images however the test
/// ends.
struct Up<'a>(&'a Daemon, String, Vec<String>);

impl Drop for Up<'_> {
    fn drop(&mut self) {
        let _ = self.0.ctl(&["down", &self.1, "--volumes"]);
        for image in &self.2 {
            let _ = Command::new("docker").args(["rmi", "-f", image]).output();
        }
    }
}

#[test]
fn a_one_one_partitioned_system_runs_the_containers_own_command() {
    require_root();
    let d = Daemon::start();
    let (c, printed) = observe_own_command(&d, "runconfig-split");
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "kind = \"one-one\"\n").unwrap();
    let out = dir.path().join("split");
    let tag = format!("cimplifier-e2e/rc{}", std::process::id());
    let report = emit_partitioned(&d, &c.0, &policy, &tag, &out);
    let entry = report
        .partitions
        .iter()
        .find(|p| p.role == Role::Entrypoint)
        .expect("an entry partition");

    // Removes the system and the images however the test ends.
    let plan_dir = out.to_str().unwrap().to_owned();
    let images = report.images().map(str::to_owned).collect();
    let _down = Up(&d, plan_dir.clone(), images);
    let up: Value = serde_json::from_str(&stdout_of(&d.ctl(&["up", &plan_dir, "--json"]))).unwrap();
    let project = up["project"].as_str().unwrap();
    let entry_container = format!("{project}-{}-1", entry.name);
    wait_until(60, "the entry partition to finish", || {
        docker(&["inspect", "-f", "{{.State.Running}}", &entry_container]) == "false"
    });
    let split_printed = docker(&["logs", &entry_container]);
    let owner = format!("{project}-{}-1", report.network_owner);
    let published = docker(&["port", &owner]);
    assert_eq!(
        split_printed, printed,
        "the partitioned system printed otherwise"
    );
    assert!(
        published.contains("8000/tcp -> 127.0.0.1:"),
        "up publishes the port: {published:?}"
    );
    assert_eq!(entry.cmd[..2], ["sh", "-c"], "{:?}", entry.cmd);
    let cmd = report
        .run
        .settings
        .iter()
        .find(|s| s.setting == Setting::Cmd)
        .unwrap();
    assert_eq!(cmd.from, Origin::Container);
    let compose = std::fs::read_to_string(&report.compose_file).unwrap();
    assert!(
        compose.contains("host_ip: 127.0.0.1") && compose.contains("target: 8000"),
        "the published port is in the run plan:\n{compose}"
    );
}
