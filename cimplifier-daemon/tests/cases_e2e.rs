//! Case studies nobody tuned for (issue 14), end to end with real Docker,
//! eBPF, images built from Debian packages (`cargo xtask images`) and
//! real clients: MariaDB alone, slimmed, with a crash-recovery check;
//! Tomcat serving JSPs compiled at their first request, slimmed; a
//! Node.js app behind nginx with a worker, partitioned; Postfix and
//! Dovecot, partitioned. Each workload is a script of tests/workloads
//! that `observe --exec` runs against the original. The original then
//! goes through a second pass, a restart and a SIGKILL with a start, the
//! workload after each; the output goes through the same, and its answers
//! must be the original's at every step. Needs root.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use cimplifier::emit::partitioned::PartitionEmitReport;
use common::lifecycle::{
    Answers, CrashCheck, Plan, STEPS, Script, Single, Target, assert_same, run_steps, verify,
    wait_tcp,
};
use common::{Container, Daemon, PlanCleanup, docker, emit_partitioned, require_root, stdout_of};

/// Observes a new container of `image` while `script` runs against it
/// (`observe --exec`), then runs the steps after the first pass against
/// the same container, unobserved. Returns the original's answers at
/// each step, first pass included.
fn observe_original(
    d: &Daemon,
    tag: &str,
    image: &str,
    script: &Script,
    crash: Option<&mut dyn CrashCheck>,
) -> (Container, Vec<Answers>) {
    let c = Container::create(tag, &[image]);
    let dir = tempfile::tempdir().unwrap();
    let answers = dir.path().join("answers");
    // The test runs the lifecycle itself, after the observed pass, so the
    // answers of each step compare like with like; verify runs it observed.
    let out = d.ctl(&[
        "observe",
        &c.0,
        "--exec",
        &script.exec_line(&answers),
        "--no-lifecycle",
    ]);
    let first = std::fs::read_to_string(&answers).unwrap_or_default();
    assert!(
        out.status.success(),
        "observe --exec failed ({}): {}\n{first}\n--- the container's log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        common::container_logs(&c.0)
    );
    println!("{}", String::from_utf8_lossy(&out.stdout));
    let mut all = vec![Answers {
        step: "first pass".into(),
        lines: first.lines().map(str::to_owned).collect(),
    }];
    let mut target = Single(c.0.clone());
    all.extend(run_steps(
        &mut target,
        "the original",
        crash,
        &mut |t, against| script.run(t, against),
    ));
    (c, all)
}

/// The output's answers: its first pass, then the steps.
fn output_answers(
    target: &mut dyn Target,
    script: &Script,
    crash: Option<&mut dyn CrashCheck>,
) -> Vec<Answers> {
    let mut all = vec![Answers {
        step: "first pass".into(),
        lines: script.run(target, "the output, first pass"),
    }];
    all.extend(run_steps(target, "the output", crash, &mut |t, against| {
        script.run(t, against)
    }));
    all
}

// --- MariaDB alone, slim -------------------------------------------------

const MARIADB: &str = "cimplifier-test/mariadb:latest";

/// `mariadb -e QUERY` as the application's account; stdout, or panics.
fn sql(address: &str, query: &str) -> String {
    let out = Command::new("mariadb")
        .args([
            "--host",
            address,
            "--port=3306",
            "--user=shop",
            "--password=shop-secret",
            "--batch",
            "--skip-column-names",
            "-e",
            query,
        ])
        .output()
        .expect("the mariadb client (`cargo xtask setup` installs mariadb-client)");
    stdout_of(&out).trim().to_owned()
}

/// Commits rows, leaves others uncommitted in an open transaction, and
/// after the SIGKILL and start finds the committed ones only.
#[derive(Default)]
struct MariadbCrash {
    open: Option<Child>,
}

impl CrashCheck for MariadbCrash {
    fn before_kill(&mut self, target: &dyn Target, _: &str) {
        let address = target.address();
        wait_tcp(&address, 3306);
        sql(
            &address,
            "CREATE DATABASE IF NOT EXISTS shop; \
             CREATE TABLE shop.ledger (n INT PRIMARY KEY) ENGINE=InnoDB; \
             INSERT INTO shop.ledger WITH RECURSIVE s(n) AS \
               (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 100) SELECT n FROM s",
        );
        // Still open when the server is killed: never committed.
        let open = Command::new("mariadb")
            .args([
                "--host",
                &address,
                "--user=shop",
                "--password=shop-secret",
                "-e",
                "START TRANSACTION; INSERT INTO shop.ledger VALUES (1001), (1002); SELECT SLEEP(120)",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.open = Some(open);
        common::wait_until(30, "the open transaction's insert", || {
            sql(&address, "SHOW PROCESSLIST").contains("SLEEP(120)")
        });
    }

    fn after_start(&mut self, target: &dyn Target, against: &str) {
        if let Some(mut open) = self.open.take() {
            let _ = open.kill();
            let _ = open.wait();
        }
        let address = target.address();
        wait_tcp(&address, 3306);
        // The positive control: what was committed came back.
        assert_eq!(
            sql(&address, "SELECT COUNT(*), SUM(n) FROM shop.ledger"),
            "100\t5050",
            "{against}: the committed rows after the crash"
        );
        // The negative check: what was not committed did not.
        assert_eq!(
            sql(&address, "SELECT COUNT(*) FROM shop.ledger WHERE n > 1000"),
            "0",
            "{against}: uncommitted rows survived the crash"
        );
        sql(&address, "DROP TABLE shop.ledger");
        println!("{against}: crash recovery kept the 100 committed rows, not the 2 uncommitted");
    }
}

/// Observes the original, emits its slim image, runs it, and compares its
/// answers with the original's at every step. Returns the emit report.
fn slim_case<C: CrashCheck>(
    case: &str,
    image: &str,
    script: &Script,
    mut crash: impl FnMut() -> Option<C>,
) -> serde_json::Value {
    require_root();
    let d = Daemon::start();
    let mut original_crash = crash();
    let (original, original_answers) = observe_original(
        &d,
        &format!("cases-{case}"),
        image,
        script,
        original_crash.as_mut().map(|c| c as &mut dyn CrashCheck),
    );
    docker(&["stop", &original.0]);

    let tag = format!("cimplifier-e2e/{case}{}:slim", std::process::id());
    let _image = PlanCleanup {
        daemon: &d,
        plans: vec![],
        images: vec![tag.clone()],
    };
    // --out gets the seccomp profile the report's docker run line names.
    let out = tempfile::tempdir().unwrap();
    let report: serde_json::Value = serde_json::from_str(&stdout_of(&d.ctl(&[
        "emit",
        &original.0,
        "--tag",
        &tag,
        "--out",
        out.path().to_str().unwrap(),
        "--json",
    ])))
    .unwrap();
    println!(
        "{case}: {} -> {} bytes, {:.1}% smaller; kept {} of {} files",
        report["source_image_bytes"],
        report["slim_image_bytes"],
        report["reduction_percent"].as_f64().unwrap(),
        report["kept_files"],
        report["source_files"]
    );
    verify(&d, &original.0, &["--image", &tag], script);
    // Hardened as the report's docker run line says: capabilities,
    // no-new-privileges, read-only root, seccomp profile.
    let line = report["docker_run"].as_str().unwrap();
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words[..3], ["docker", "run", "-d"], "{line}");
    assert!(line.contains(" --security-opt seccomp="), "{line}");
    println!(
        "{case}: {line}; {}",
        report["privileges"]["seccomp"]["allowed"]
            .as_object()
            .map_or(0, |a| a.len())
    );
    let mut args: Vec<&str> = words[3..words.len() - 1].to_vec();
    args.push(&tag);
    let slim = Container::create(&format!("cases-{case}-slim"), &args);
    docker(&["start", &slim.0]);
    let mut target = Single(slim.0.clone());
    let mut output_crash = crash();
    let output = output_answers(
        &mut target,
        script,
        output_crash.as_mut().map(|c| c as &mut dyn CrashCheck),
    );
    assert_same(case, &original_answers, &output);
    report
}

#[test]
fn mariadb_alone_slim_survives_restart_and_crash_recovery() {
    let report = slim_case(
        "mariadb",
        MARIADB,
        &Script::new("mariadb.sh", &[3306]),
        || Some(MariadbCrash::default()),
    );
    assert!(
        report["reduction_percent"].as_f64().unwrap() > 50.0,
        "{}",
        report["reduction_percent"]
    );
}

#[test]
fn tomcat_jsp_guestbook_slim() {
    let report = slim_case(
        "tomcat",
        "cimplifier-test/tomcat:latest",
        &Script::new("tomcat.py", &[8080]),
        || None::<MariadbCrash>,
    );
    // The JVM's code came from jars and its module image: kept whole.
    let trees = report["code_trees"].as_array().unwrap();
    println!("tomcat code trees: {trees:?}");
}

// --- Partitioned cases ---------------------------------------------------

fn policy(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/workloads")
            .join(name),
        &path,
    )
    .unwrap();
    path
}

/// Whether `path` exists in `container`.
fn has(container: &str, path: &str) -> bool {
    Command::new("docker")
        .args(["cp", &format!("{container}:{path}"), "-"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn print_sizes(case: &str, report: &PartitionEmitReport) {
    println!(
        "{case}: {} bytes -> {} bytes in {} partitions ({:.1}% smaller), seed {} bytes",
        report.source_image_bytes,
        report.total_bytes,
        report.partitions.len(),
        report.reduction_percent,
        report.seed.as_ref().map_or(0, |s| s.bytes)
    );
    for p in &report.partitions {
        println!("  {}: {} bytes", p.name, p.bytes);
    }
}

/// Observes the original, emits with `policy`, starts the plan, and
/// compares the output's answers with the original's at every step.
fn partitioned_case(
    case: &str,
    image: &str,
    script: &Script,
    policy_file: &str,
    check: impl FnOnce(&PartitionEmitReport, &Plan),
) {
    require_root();
    let d = Daemon::start();
    let (original, original_answers) =
        observe_original(&d, &format!("cases-{case}"), image, script, None);
    docker(&["stop", &original.0]);

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join(format!("{case}-split"));
    let tag = format!("cimplifier-e2e/{case}{}", std::process::id());
    let report = emit_partitioned(
        &d,
        &original.0,
        &policy(dir.path(), policy_file),
        &tag,
        &out,
    );
    print_sizes(case, &report);
    let _cleanup = PlanCleanup {
        daemon: &d,
        plans: vec![out.to_str().unwrap().to_owned()],
        images: report
            .partitions
            .iter()
            .map(|p| p.image.clone())
            .chain(report.seed.iter().map(|s| s.image.clone()))
            .collect(),
    };
    verify(&d, &original.0, &["--plan", out.to_str().unwrap()], script);
    let mut plan = Plan::up(&d, &out);
    let output = output_answers(&mut plan, script, None);
    check(&report, &plan);
    assert_same(case, &original_answers, &output);
    assert_eq!(output.len(), 1 + STEPS.len());
}

#[test]
fn notes_node_app_behind_nginx_with_a_worker_partitioned() {
    partitioned_case(
        "notes",
        "cimplifier-test/notes:latest",
        &Script::new("notes.py", &[80]),
        "notes-policy.toml",
        |report, plan| {
            let names: Vec<&str> = report.partitions.iter().map(|p| p.name.as_str()).collect();
            for want in ["app", "init", "web", "worker"] {
                assert!(names.contains(&want), "{names:?}");
            }
            // The queue is the one thing the app and the worker share.
            let spool = report
                .volumes
                .iter()
                .find(|v| v.mount.as_str().starts_with("/var/spool/notes"))
                .unwrap_or_else(|| panic!("no volume for the queue: {:?}", report.volumes));
            let sharers: Vec<&str> = spool.partitions.iter().map(|p| p.as_str()).collect();
            assert!(
                sharers.contains(&"app") && sharers.contains(&"worker"),
                "{spool:?}"
            );
            let container = |p: &str| {
                plan.containers()
                    .into_iter()
                    .find(|c| c.ends_with(&format!("-{p}-1")))
                    .unwrap()
            };
            // Each holds its own program (the control) and not the others'.
            let (web, worker) = (container("web"), container("worker"));
            assert!(has(&web, "/usr/sbin/nginx") && has(&worker, "/srv/notes/worker.js"));
            assert!(!has(&web, "/srv/notes/worker.js") && !has(&worker, "/usr/sbin/nginx"));
        },
    );
}

#[test]
fn mail_postfix_and_dovecot_partitioned() {
    partitioned_case(
        "mail",
        "cimplifier-test/mail:latest",
        &Script::new("mail.py", &[25, 143]),
        "mail-policy.toml",
        |report, plan| {
            let names: Vec<&str> = report.partitions.iter().map(|p| p.name.as_str()).collect();
            assert_eq!(names, ["imap", "smtp"]);
            // Postfix delivers into the Maildirs that Dovecot serves.
            let shared: Vec<&str> = report
                .volumes
                .iter()
                .filter(|v| v.partitions.len() > 1)
                .map(|v| v.mount.as_str())
                .collect();
            assert!(
                shared.iter().any(|m| m.starts_with("/home")),
                "{:?}",
                report.volumes
            );
            let container = |p: &str| {
                plan.containers()
                    .into_iter()
                    .find(|c| c.ends_with(&format!("-{p}-1")))
                    .unwrap()
            };
            let (smtp, imap) = (container("smtp"), container("imap"));
            assert!(has(&smtp, "/usr/lib/postfix/sbin/master") && has(&imap, "/usr/sbin/dovecot"));
            assert!(
                !has(&smtp, "/usr/lib/dovecot/imap") && !has(&imap, "/usr/lib/postfix/sbin/smtpd")
            );
        },
    );
}

/// The control of every comparison above: a different answer at any step
/// fails it, and names the step and the answers.
#[test]
fn assert_same_catches_one_different_answer() {
    let steps = |last: &str| -> Vec<Answers> {
        ["first pass", STEPS[0], STEPS[1], STEPS[2]]
            .iter()
            .map(|s| Answers {
                step: (*s).to_owned(),
                lines: vec!["GET / -> 200".to_owned(), last.to_owned()],
            })
            .collect()
    };
    assert_same("control", &steps("ok"), &steps("ok"));
    let mut broken = steps("ok");
    broken[3].lines[1] = "GET /api/health -> 502".to_owned();
    let why = std::panic::catch_unwind(|| assert_same("control", &steps("ok"), &broken))
        .expect_err("a different answer after the SIGKILL must fail");
    let why = why.downcast_ref::<String>().unwrap();
    assert!(
        why.contains("after SIGKILL and start") && why.contains("GET /api/health -> 502"),
        "{why}"
    );
    let mut fewer = steps("ok");
    fewer[1].lines.pop();
    assert!(std::panic::catch_unwind(|| assert_same("control", &steps("ok"), &fewer)).is_err());
}
