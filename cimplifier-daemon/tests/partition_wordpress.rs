//! The paper's case study (§5): WordPress with nginx, php-fpm, mariadb and
//! supervisord in one container (cimplifier-test/wordpress, from Debian
//! packages), split into four partitions. The workload
//! (tests/workloads/wordpress.sh: install, log in, posts, a comment, the
//! profile, log out, all over HTTP with curl) runs against the observed
//! container, and again against the partitioned system, where supervisord
//! starts the other three through RPE. The system is first started in
//! the reverse of its dependency order (the volumes start with the source
//! image's content all the same), then taken down and up again: the
//! database keeps its data. The original, and then the partitioned system,
//! go through a second pass, a restart (`down` and `up` for the system)
//! and a SIGKILL with a start, the workload after each; the system's
//! answers (status codes and the pages' text) must be the original's at
//! every step. Needs root and dockerd.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use cimplifier::docker::compose::{StartOrder, up_in_order};
use cimplifier::emit::partitioned::{PartitionEmitReport, Role};
use cimplifier::trace::ContainerPath;
use common::lifecycle::{Answers, Plan, Single, Target, assert_same, run_steps};
use common::{Container, Daemon, docker, emit_partitioned, require_root, stdout_of, wait_until};

const IMAGE: &str = "cimplifier-test/wordpress:latest";
const POLICY: &str = include_str!("../../tests/workloads/wordpress-policy.toml");

fn workload() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/workloads/wordpress.sh")
}

/// Runs the workload against `ip`; panics with its output if it fails.
/// Its answers, the lines it marks as such.
fn run_workload(ip: &str, against: &str) -> Vec<String> {
    let out = Command::new("bash")
        .arg(workload())
        .arg(format!("http://{ip}"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("workload against {against}:\n{text}");
    assert!(
        out.status.success(),
        "the workload failed against {against}:\n{text}"
    );
    assert!(text.contains("workload: passed"), "{text}");
    text.lines()
        .filter_map(|l| l.strip_prefix("answer: "))
        .map(str::to_owned)
        .collect()
}

/// The workload once the site at the target's address answers.
fn pass(target: &dyn Target, against: &str) -> Vec<String> {
    let ip = target.address();
    wait_http(&ip);
    run_workload(&ip, against)
}

/// Waits until WordPress answers at `ip` (its installer redirects).
fn wait_http(ip: &str) {
    wait_until(90, &format!("WordPress at {ip}"), || {
        Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "5",
            ])
            .arg(format!("http://{ip}/wp-admin/install.php"))
            .output()
            .is_ok_and(|o| o.stdout == b"200")
    });
}

/// Stops the partitioned system however the test ends.
struct Up<'a>(&'a Daemon, String);

impl Drop for Up<'_> {
    fn drop(&mut self) {
        let _ = self.0.ctl(&["down", &self.1, "--volumes"]);
    }
}

#[test]
fn wordpress_split_into_four_partitions_still_serves_the_workload() {
    require_root();
    let d = Daemon::start();
    let c = Container::create("wordpress", &[IMAGE]);
    // `observe` starts the container and returns when the session ends.
    let mut observe = common::cimplifierctl()
        .arg("--socket")
        .arg(&d.socket)
        .args(["observe", &c.0])
        .spawn()
        .unwrap();
    wait_until(60, "the container to run", || {
        docker(&["inspect", "-f", "{{.State.Running}}", &c.0]) == "true"
    });
    let ip = docker(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", &c.0]);
    wait_http(&ip);
    let mut original = vec![Answers {
        step: "first pass".into(),
        lines: run_workload(&ip, "the original container"),
    }];
    stdout_of(&d.ctl(&["stop", &c.0]));
    assert!(
        observe.wait().unwrap().success(),
        "observe ends with the session"
    );
    // The same steps as the partitioned system's below, unobserved.
    original.extend(run_steps(
        &mut Single(c.0.clone()),
        "the original",
        None,
        &mut pass,
    ));
    // The first pass installs the site, the passes after it find it.
    assert!(
        original[0].lines.contains(&"install: done".to_owned()),
        "{:?}",
        original[0]
    );
    assert!(
        original[1]
            .lines
            .contains(&"install: installed already".to_owned()),
        "{:?}",
        original[1]
    );
    docker(&["rm", "-f", &c.0]);

    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let out = dir.path().join("wp-split");
    let tag = format!("cimplifier-e2e/wp{}", std::process::id());
    let report = emit_partitioned(&d, &c.0, &policy, &tag, &out);
    // The plan, started by verify with every partition observed, passes
    // the workload with no call failing that succeeded in the original.
    let script = common::lifecycle::Script {
        path: workload(),
        ports: &[80],
    };
    common::lifecycle::verify(&d, &c.0, &["--plan", out.to_str().unwrap()], &script);
    // What the state directory and code tree rules cost per partition
    // (docs/benchmarks.md): the same emit with --strict.
    let strict_tag = format!("cimplifier-e2e/wp{}-strict", std::process::id());
    let strict: PartitionEmitReport = serde_json::from_str(&stdout_of(&d.ctl(&[
        "emit",
        &c.0,
        "--policy",
        policy.to_str().unwrap(),
        "--tag",
        &strict_tag,
        "--out",
        dir.path().join("wp-strict").to_str().unwrap(),
        "--strict",
        "--json",
    ])))
    .unwrap();
    for (p, s) in report.partitions.iter().zip(&strict.partitions) {
        println!(
            "{}: {} bytes, {} with --strict: the rules cost {} bytes",
            p.name,
            p.bytes,
            s.bytes,
            p.bytes as i64 - s.bytes as i64
        );
        for d in &p.listed_directories {
            println!(
                "  listed {} by {:?}: {} entries, {} not kept",
                d.dir, d.listed_by, d.entries, d.missing
            );
        }
        let _ = Command::new("docker").args(["rmi", &s.image]).output();
    }
    if let Some(seed) = &strict.seed {
        let _ = Command::new("docker").args(["rmi", &seed.image]).output();
    }

    let names: Vec<String> = report
        .partitions
        .iter()
        .map(|p| p.name.to_string())
        .collect();
    assert_eq!(names, ["mariadb", "nginx", "php", "supervisord"]);
    let part = |n: &str| {
        report
            .partitions
            .iter()
            .find(|p| p.name.as_str() == n)
            .unwrap()
    };
    assert_eq!(part("supervisord").role, Role::Entrypoint);
    for server in ["mariadb", "nginx", "php"] {
        assert_eq!(part(server).role, Role::Server, "{server}");
        assert!(
            part("supervisord")
                .stubs
                .values()
                .any(|p| p.as_str() == server),
            "supervisord runs {server}'s executable through a stub: {:?}",
            part("supervisord").stubs
        );
    }
    // The sockets force sharing their directories, and nothing more: the
    // database's files stay in mariadb's partition alone, in a volume of
    // its own.
    let volume = |mount: &str| {
        report
            .volumes
            .iter()
            .find(|v| v.mount.as_str() == mount && v.private_to.is_none())
    };
    let mysqld = volume("/run/mysqld").expect("the mariadb socket's directory is shared");
    let sharers: Vec<&str> = mysqld.partitions.iter().map(|p| p.as_str()).collect();
    assert_eq!(sharers, ["mariadb", "php"]);
    assert!(
        mysqld
            .because
            .iter()
            .any(|r| r.as_str() == "/run/mysqld/mysqld.sock"),
        "{:?}",
        mysqld.because
    );
    assert!(
        volume("/run/php").is_some(),
        "php-fpm's socket: {:?}",
        report.volumes
    );
    assert_eq!(
        report
            .volumes
            .iter()
            .filter(|v| v.private_to.is_none())
            .count(),
        2,
        "only the two sockets' directories are shared: {:?}",
        report.volumes
    );
    let db_volume = report
        .volumes
        .iter()
        .find(|v| v.mount.as_str() == "/var/lib/mysql")
        .expect("the database's state directory has a volume");
    assert_eq!(db_volume.private_to.as_ref().unwrap().as_str(), "mariadb");
    assert!(db_volume.seed.entries > 0, "{db_volume:?}");
    let datadir = ContainerPath::new("/var/lib/mysql/ibdata1").unwrap();
    let why = report.explain(&datadir);
    println!("{datadir}: {why}");
    assert!(
        why.contains("private to mariadb") && why.contains("state directory /var/lib/mysql"),
        "{why}"
    );
    assert!(report.seed.is_some());
    assert!(
        report.total_bytes < report.source_image_bytes / 2,
        "{}",
        report.render_text()
    );

    let plan_dir = out.to_str().unwrap().to_owned();
    // In the reverse order: whichever partition mounts a volume first, it
    // starts with the source image's content.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let engine = cimplifier::docker::connect().unwrap();
    let reversed = rt
        .block_on(up_in_order(&engine, &out, StartOrder::Reversed, &|step| {
            println!("up: {step}")
        }))
        .unwrap();
    let _down = Up(&d, plan_dir.clone());
    let started: Vec<&str> = reversed
        .containers
        .iter()
        .map(|c| c.service.as_str())
        .collect();
    assert_eq!(started, ["mariadb", "supervisord", "php", "nginx"]);
    assert_eq!(reversed.seeded.len(), report.volumes.len(), "{reversed:?}");
    let up = serde_json::to_value(&reversed).unwrap();
    assert_eq!(up["containers"].as_array().unwrap().len(), 4, "{up}");
    let ip = up["ip_address"]
        .as_str()
        .expect("the system's address")
        .to_owned();
    wait_http(&ip);
    let mut output = vec![Answers {
        step: "first pass".into(),
        lines: run_workload(&ip, "the partitioned system"),
    }];

    // Each partition holds only its own programs.
    let has = |container: &str, path: &str| {
        Command::new("docker")
            .args(["cp", &format!("{container}:{path}"), "-"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let project = up["project"].as_str().unwrap();
    let db = format!("{project}-mariadb-1");
    let web = format!("{project}-nginx-1");
    assert!(has(&db, "/usr/sbin/mariadbd") && !has(&db, "/usr/sbin/nginx"));
    assert!(has(&web, "/usr/sbin/nginx") && !has(&web, "/usr/sbin/mariadbd"));
    // The directory skeleton may keep the empty /var/lib/mysql entry
    // (docs/slim.md), never what is in it.
    assert!(
        !has(&web, "/var/lib/mysql/ibdata1") && !has(&web, "/var/lib/mysql/mysql"),
        "nginx's partition has no database files"
    );

    // The shared socket directories start as the source image has them
    // (owner, group, mode), whichever partition mounted them first.
    let stat = |args: &[&str], path: &str| {
        let mut cmd = vec!["run", "--rm"];
        cmd.extend_from_slice(args);
        cmd.extend_from_slice(&["--entrypoint", "stat", IMAGE, "-c", "%U:%G %a", path]);
        docker(&cmd)
    };
    for v in report.volumes.iter().filter(|v| v.private_to.is_none()) {
        let mount = format!("{project}_{}:/v:ro", v.name);
        assert_eq!(
            stat(&["-v", &mount], "/v"),
            stat(&[], v.mount.as_str()),
            "volume {} at {}",
            v.name,
            v.mount
        );
    }

    output.extend(run_steps(
        &mut Plan {
            daemon: &d,
            dir: out.clone(),
            address: ip,
        },
        "the partitioned system",
        None,
        &mut pass,
    ));
    assert_same("wordpress", &original, &output);

    // down keeps the volumes: up again, and the site is still installed,
    // with the workload's posts.
    let down = stdout_of(&d.ctl(&["down", &plan_dir]));
    assert!(down.contains(&db), "{down}");
    let again: serde_json::Value =
        serde_json::from_str(&stdout_of(&d.ctl(&["up", &plan_dir, "--json"]))).unwrap();
    assert!(again["seeded"].as_array().unwrap().is_empty(), "{again}");
    for v in &report.volumes {
        assert!(
            again["kept"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k.as_str() == Some(v.name.as_str())),
            "{again}"
        );
    }
    let ip = again["ip_address"].as_str().unwrap().to_owned();
    wait_http(&ip);
    let home = Command::new("curl")
        .args(["-sL", "--max-time", "30"])
        .arg(format!("http://{ip}/"))
        .output()
        .unwrap();
    let home = String::from_utf8_lossy(&home.stdout);
    assert!(
        home.contains("cimplifier case study") && home.contains("Post 3"),
        "after down and up the database lost the site: {}",
        &home[..home.len().min(500)]
    );

    let down = stdout_of(&d.ctl(&["down", &plan_dir, "--volumes"]));
    assert!(down.contains(&db), "{down}");
    assert!(
        down.contains("mariadb-var-lib-mysql"),
        "down --volumes removes the state volumes too: {down}"
    );
    for p in &report.partitions {
        let _ = Command::new("docker").args(["rmi", &p.image]).output();
    }
    if let Some(seed) = &report.seed {
        let _ = Command::new("docker").args(["rmi", &seed.image]).output();
    }
}
