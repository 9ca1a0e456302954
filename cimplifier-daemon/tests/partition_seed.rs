//! A shared volume starts with the source image's content whatever the
//! start order (issue 12, class 2). A Docker named volume is filled from
//! the image of whichever container mounts it first; here the shell's
//! partition holds nothing of `/srv/app` but the directory it writes in,
//! while `cat` in the other partition reads `/srv/app/flag`, which the
//! source image ships. Started shell first, a volume filled by its first
//! mounter would lack the flag and `cat` would fail; the run plan's seed
//! fills it from the source image before any partition starts. Needs root
//! and dockerd.

mod common;

use std::process::Command;

use cimplifier::docker::compose::{StartOrder, up_in_order};
use common::{Container, Daemon, PlanCleanup, docker, emit_partitioned, require_root, wait_until};

#[test]
fn a_shared_volume_holds_the_source_content_when_its_writer_starts_first() {
    require_root();
    let pid = std::process::id();
    let d = Daemon::start();
    // Before the cleanup, so it is still there when `down` reads the plan.
    let dir = tempfile::tempdir().unwrap();

    // The source: /srv/app/flag in the image; its command writes beside it
    // and has cat (another partition) read both.
    let image = format!("cimplifier-e2e/seed-src{pid}:latest");
    let mut cleanup = PlanCleanup {
        daemon: &d,
        plans: Vec::new(),
        images: vec![image.clone()],
    };
    common::flag_image("seed-base", &image);
    let c = Container::create("seed", &[&image]);
    let observed = d.ctl(&["observe", &c.0]);
    assert!(observed.status.success(), "{observed:?}");

    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, common::SHELL_AND_READER_POLICY).unwrap();
    let out = dir.path().join("split");
    let tag = format!("cimplifier-e2e/seed{pid}");
    let report = emit_partitioned(&d, &c.0, &policy, &tag, &out);
    cleanup.images.extend(report.images().map(str::to_owned));
    assert!(
        report
            .volumes
            .iter()
            .any(|v| v.mount.as_str() == "/srv/app"),
        "/srv/app is shared: {}",
        report.render_text()
    );

    // The entry partition (the shell, which writes in /srv/app) first.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let engine = cimplifier::docker::connect().unwrap();
    let started = rt
        .block_on(up_in_order(&engine, &out, StartOrder::Reversed, &|step| {
            println!("up: {step}")
        }))
        .unwrap();
    cleanup.plans.push(out.to_str().unwrap().to_owned());
    println!("started in this order: {:?}", started.containers);

    let compose: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(&report.compose_file).unwrap()).unwrap();
    let shell = format!("{}-shell-1", compose["name"].as_str().unwrap());
    wait_until(60, "the shell partition to finish", || {
        docker(&["inspect", "-f", "{{.State.Running}}", &shell]) == "false"
    });
    let logs = Command::new("docker")
        .args(["logs", &shell])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&logs.stdout),
        String::from_utf8_lossy(&logs.stderr),
    );
    assert_eq!(
        (
            docker(&["inspect", "-f", "{{.State.ExitCode}}", &shell]).as_str(),
            stdout.as_ref()
        ),
        ("0", "hello\n1\n"),
        "cat read the source's flag and the shell's file through the shared volume; stderr: {stderr}"
    );

    // Both partitions ran with the plan's least privileges (docs/privileges.md):
    // every capability dropped but what evidence grants, no new privileges,
    // and a read-only root (the shell writes only in the shared volume).
    // The reader's RPE server starts cat as the caller's user, so it keeps
    // SETUID, SETGID and KILL, named as the RPE server in the report.
    for p in &report.partitions {
        let container = format!("{}-{}-1", compose["name"].as_str().unwrap(), p.name);
        let host = docker(&[
            "inspect",
            "-f",
            "{{json .HostConfig.CapDrop}} {{json .HostConfig.CapAdd}} {{json .HostConfig.SecurityOpt}} {{.HostConfig.ReadonlyRootfs}}",
            &container,
        ]);
        println!("{}: {host}; {}", p.name, p.privileges.summary());
        assert!(host.starts_with("[\"ALL\"] "), "{host}");
        assert!(host.contains("no-new-privileges:true"), "{host}");
        // Each ran (and the shell read through the reader) under its own
        // seccomp profile: its executables' syscalls, runc's after the
        // filter, and the RPE stub's or server's.
        assert!(
            host.contains("seccomp=") && host.contains("SCMP_ACT_ERRNO"),
            "{} has no seccomp profile of ours: {host}",
            p.name
        );
        let seccomp = &p.privileges.seccomp;
        assert!(
            p.privileges.summary().contains("syscalls allowed: "),
            "{}",
            p.privileges.summary()
        );
        let rpe = if p.serves.is_empty() {
            "the RPE stub needs it"
        } else {
            "the RPE server needs it"
        };
        assert!(
            seccomp.explain("connect").contains(rpe) || seccomp.explain("accept4").contains(rpe),
            "{}: {:?}",
            p.name,
            seccomp.allowed.keys().collect::<Vec<_>>()
        );
        assert!(!seccomp.allowed.contains_key("ptrace"), "{}", p.name);
        assert!(
            host.ends_with(" true"),
            "{} is not read-only: {host}",
            p.name
        );
        let caps: Vec<&str> = p.privileges.capabilities.keys().map(|c| c.name()).collect();
        if p.serves.is_empty() {
            assert!(caps.is_empty(), "{}: {caps:?}", p.name);
        } else {
            assert_eq!(caps, ["KILL", "SETGID", "SETUID"], "{}", p.name);
            assert!(
                report
                    .explain_item(&cimplifier::emit::slim::Explained::parse("cap:SETUID").unwrap())
                    .contains("granted: the RPE server starts each callee as its caller's uid"),
            );
        }
    }
}
