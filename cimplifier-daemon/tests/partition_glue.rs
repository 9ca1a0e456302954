//! The RPE glue placed in partitions is the static one embedded in
//! cimplifierd, whatever lies beside the daemon. A plain `cargo build`
//! of the workspace leaves dynamically linked `cimplifier-rpe-*` binaries
//! next to `cimplifierd`; a daemon that took those emitted a server and
//! stubs that died with "error while loading shared libraries:
//! libgcc_s.so.1" in every partition that did not happen to keep it.
//!
//! Here a shell and `sort` (neither needs libgcc_s) are split into two
//! partitions, emitted by a daemon with dynamic RPE binaries beside it, and
//! run: the shell's call to sort must go through the stub to the server and
//! print sort's output. Needs root and dockerd.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use cimplifier::emit::partitioned::Role;
use cimplifier_build::glue::GlueBinary;
use common::{
    BASE_IMAGE, Container, Daemon, PlanCleanup, container_logs, docker, emit_partitioned,
    require_root, stdout_of, wait_until,
};

const LIBGCC_S: &str = "/usr/lib/x86_64-linux-gnu/libgcc_s.so.1";

/// The RPE binaries as a plain `cargo build --release` of the workspace
/// makes them (dynamically linked), in a target dir of their own.
fn dynamic_rpe_binaries() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target_dir = workspace.join("target").join("rpe-dynamic");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = cimplifier_build::nested_cargo(&cargo, &["RUSTUP_TOOLCHAIN"])
        .current_dir(&workspace)
        .args(["build", "--release", "-p", "cimplifier-rpe", "--bins"])
        .arg("--target-dir")
        .arg(&target_dir)
        .status()
        .expect("running cargo");
    assert!(status.success(), "cargo build -p cimplifier-rpe failed");
    target_dir.join("release")
}

#[test]
fn dynamic_rpe_binaries_beside_the_daemon_are_not_what_partitions_get() {
    require_root();
    let pid = std::process::id();

    // The layout users have: cimplifierd with dynamic RPE binaries beside it.
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("cimplifierd");
    std::fs::copy(env!("CARGO_BIN_EXE_cimplifierd"), &exe).unwrap();
    let dynamic = dynamic_rpe_binaries();
    for bin in GlueBinary::ALL {
        let from = dynamic.join(bin.file_name());
        let bytes = std::fs::read(&from).unwrap();
        let elf = goblin::elf::Elf::parse(&bytes).unwrap();
        assert!(
            elf.libraries.contains(&"libgcc_s.so.1"),
            "{} needs libgcc_s.so.1, as a plain cargo build makes it: {:?}",
            from.display(),
            elf.libraries
        );
        std::fs::copy(&from, dir.path().join(bin.file_name())).unwrap();
    }
    let d = Daemon::start_exe(&exe, &[], &[]);

    // An image whose own command shells out to sort.
    let image = format!("cimplifier-e2e/glue-src{pid}:latest");
    let mut cleanup = PlanCleanup {
        daemon: &d,
        plans: Vec::new(),
        images: vec![image.clone()],
    };
    let base = Container::create("glue-base", &[BASE_IMAGE, "true"]);
    docker(&[
        "commit",
        "--change",
        r#"CMD ["/bin/sh", "-c", "printf 'b\\na\\n' > /tmp/in; sort /tmp/in"]"#,
        &base.0,
        &image,
    ]);
    let c = Container::create("glue", &[&image]);
    stdout_of(&d.ctl(&["observe", &c.0]));

    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "kind = \"disjoint-subsets\"\n[partitions]\nshell = [\"/bin/sh\"]\nsorter = [\"/usr/bin/sort\"]\n",
    )
    .unwrap();
    let out = dir.path().join("split");
    let tag = format!("cimplifier-e2e/glue{pid}");
    let report = emit_partitioned(&d, &c.0, &policy, &tag, &out);
    cleanup.images.extend(report.images().map(str::to_owned));
    let role = |n: &str| {
        report
            .partitions
            .iter()
            .find(|p| p.name.as_str() == n)
            .unwrap_or_else(|| panic!("no partition {n}"))
            .role
            .clone()
    };
    assert_eq!(role("shell"), Role::Entrypoint);
    assert_eq!(role("sorter"), Role::Server);

    let compose: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(&report.compose_file).unwrap()).unwrap();
    let project = compose["name"]
        .as_str()
        .expect("the project's name")
        .to_owned();
    let shell = format!("{project}-shell-1");
    let sorter = format!("{project}-sorter-1");
    let logs = container_logs;
    let plan = out.to_str().unwrap().to_owned();
    let up = d.ctl(&["up", &plan]);
    cleanup.plans.push(plan);
    assert!(
        up.status.success(),
        "up failed: {}\nthe RPE server's log ({sorter}):\n{}",
        String::from_utf8_lossy(&up.stderr),
        logs(&sorter)
    );
    wait_until(60, "the shell partition to finish", || {
        docker(&["inspect", "-f", "{{.State.Running}}", &shell]) == "false"
    });
    let exit = docker(&["inspect", "-f", "{{.State.ExitCode}}", &shell]);
    assert_eq!(
        (exit.as_str(), logs(&shell).as_str()),
        ("0", "a\nb\n"),
        "the shell's sort ran in the sorter partition through RPE; the sorter's log:\n{}",
        logs(&sorter)
    );
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Running}}", &sorter]),
        "true",
        "the RPE server runs: {}",
        logs(&sorter)
    );

    // Neither partition keeps libgcc_s: the glue got by without it.
    for container in [&shell, &sorter] {
        let has = Command::new("docker")
            .args(["cp", &format!("{container}:{LIBGCC_S}"), "-"])
            .output()
            .unwrap();
        assert!(
            !has.status.success(),
            "{container} has {LIBGCC_S}, so it proves nothing"
        );
    }
}
