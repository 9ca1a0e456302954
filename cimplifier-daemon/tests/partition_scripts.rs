//! Scripts and their `#!` interpreters across partitions. When the kernel
//! runs a script it execs the interpreter with argv [interpreter, (arg),
//! script, args...] in the script's process: that process is the script's
//! in the model (every file the interpreter opens for it, the script and
//! the interpreter's libraries included, is the script's), so the
//! interpreter must run in the script's partition. A stub at the
//! interpreter's path sent the call to the interpreter's partition, whose
//! server refused it ("partition X may not execute SCRIPT"), as seen with
//! Debian's cowsay (a perl script) partitioned one-one.
//!
//! Here a shell runs a perl script, a `#!/bin/sh` script that calls
//! `sort`, and perl itself (perl-base and dash are in every Debian image):
//! one-one, and with the perl script and perl together but apart from
//! their caller. A policy that leaves a stub at the perl script's
//! interpreter (the shell's own perl call goes elsewhere) is refused.
//! Needs root and dockerd.

mod common;

use cimplifier::emit::partitioned::{PartitionEmitReport, Role};
use common::{
    BASE_IMAGE, Container, Daemon, PlanCleanup, container_logs, docker, require_root, stdout_of,
    wait_until,
};

const GREET: &str = "#!/usr/bin/perl -w\nuse strict;\nprint \"hello, $ARGV[0]\\n\";\n";
const ORDER: &str = "#!/bin/sh\nprintf \"b\\na\\n\" | sort\n";
const EXPECTED: &str = "hello, world\na\nb\n";

/// Emits `container` with `policy`, runs the plan, and returns the entry
/// partition's exit code and output, with every partition's log.
fn run_partitioned(
    d: &Daemon,
    cleanup: &mut PlanCleanup,
    container: &str,
    name: &str,
    policy: &str,
) -> (String, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let policy_file = dir.path().join("policy.toml");
    std::fs::write(&policy_file, policy).unwrap();
    let out = dir.keep().join("split");
    let tag = format!("cimplifier-e2e/scripts-{name}{}", std::process::id());
    let report: PartitionEmitReport = serde_json::from_str(&stdout_of(&d.ctl(&[
        "emit",
        container,
        "--policy",
        policy_file.to_str().unwrap(),
        "--tag",
        &tag,
        "--out",
        out.to_str().unwrap(),
        "--json",
    ])))
    .unwrap();
    println!("{}", report.render_text());
    cleanup
        .images
        .extend(report.partitions.iter().map(|p| p.image.clone()));
    let compose: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(&report.compose_file).unwrap()).unwrap();
    let project = compose["name"].as_str().unwrap().to_owned();
    let names: Vec<String> = report
        .partitions
        .iter()
        .map(|p| format!("{project}-{}-1", p.name.as_str()))
        .collect();
    let entry = report
        .partitions
        .iter()
        .find(|p| matches!(p.role, Role::Entrypoint | Role::EntrypointAndServer))
        .map(|p| format!("{project}-{}-1", p.name.as_str()))
        .expect("an entry partition");
    let plan = out.to_str().unwrap().to_owned();
    let up = d.ctl(&["up", &plan]);
    cleanup.plans.push(plan);
    let all_logs = || {
        names
            .iter()
            .map(|n| format!("--- {n}\n{}", container_logs(n)))
            .collect::<String>()
    };
    assert!(
        up.status.success(),
        "up failed: {}\n{}",
        String::from_utf8_lossy(&up.stderr),
        all_logs()
    );
    wait_until(60, "the entry partition to finish", || {
        docker(&["inspect", "-f", "{{.State.Running}}", &entry]) == "false"
    });
    let exit = docker(&["inspect", "-f", "{{.State.ExitCode}}", &entry]);
    (exit, container_logs(&entry), all_logs())
}

#[test]
fn scripts_run_with_their_interpreters_across_partitions() {
    require_root();
    let pid = std::process::id();
    let d = Daemon::start();

    let image = format!("cimplifier-e2e/scripts-src{pid}:latest");
    let mut cleanup = PlanCleanup {
        daemon: &d,
        plans: Vec::new(),
        images: vec![image.clone()],
    };
    let setup = format!(
        "printf '%s' '{GREET}' > /usr/local/bin/greet && printf '%s' '{ORDER}' > /usr/local/bin/order \
         && chmod 755 /usr/local/bin/greet /usr/local/bin/order"
    );
    let base = Container::create("scripts-base", &[BASE_IMAGE, "sh", "-c", &setup]);
    docker(&["start", "-a", &base.0]);
    docker(&[
        "commit",
        "--change",
        r#"CMD ["/bin/sh", "-c", "/usr/local/bin/greet world; /usr/local/bin/order; /usr/bin/perl -e 1"]"#,
        &base.0,
        &image,
    ]);
    let c = Container::create("scripts", &[&image]);
    stdout_of(&d.ctl(&["observe", &c.0]));
    assert_eq!(
        container_logs(&c.0),
        EXPECTED,
        "the source container's own run"
    );

    // Every script apart from its interpreter, and from its caller; then
    // the script with its interpreter, called from another partition.
    let policies = [
        ("one", "kind = \"one-one\"\n"),
        (
            "together",
            "kind = \"disjoint-subsets\"\n[partitions]\nshell = [\"/bin/sh\"]\n\
             greeter = [\"/usr/local/bin/greet\", \"/usr/bin/perl\"]\n\
             orderer = [\"/usr/local/bin/order\", \"/usr/bin/sort\"]\n",
        ),
    ];
    let mut failed = Vec::new();
    for (name, policy) in policies {
        let (exit, out, all) = run_partitioned(&d, &mut cleanup, &c.0, name, policy);
        if (exit.as_str(), out.as_str()) != ("0", EXPECTED) {
            failed.push(format!("{name}: exit {exit}, output {out:?}\n{all}"));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));

    // The shell runs perl in another partition, so perl is a stub in the
    // shell's partition, where the perl script also is: emit refuses.
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "kind = \"disjoint-subsets\"\n[partitions]\n\
         shell = [\"/bin/sh\", \"/usr/local/bin/greet\"]\nperl = [\"/usr/bin/perl\"]\n",
    )
    .unwrap();
    let out = d.ctl(&[
        "emit",
        &c.0,
        "--policy",
        policy.to_str().unwrap(),
        "--tag",
        &format!("cimplifier-e2e/scripts-stubbed{pid}"),
        "--out",
        dir.path().join("split").to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("/usr/local/bin/greet runs /usr/bin/perl as its #! interpreter"),
        "emit must refuse a script whose interpreter is a stub: {err}"
    );
}
