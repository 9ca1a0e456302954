//! The tracer on a real Docker container: nginx built from Debian packages
//! (`cargo xtask images`), a page fetched with curl. Needs root and dockerd.

mod common;

use std::process::Command;
use std::time::Duration;

use cimplifier::docker;
use cimplifier::trace::cgroup::{cgroup_id, cgroup2_mount};
use cimplifier::trace::{PathRole, Tracer, TracerConfig};
use common::*;

const IMAGE: &str = "cimplifier-test/nginx:latest";

fn curl(url: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "--retry",
            "20",
            "--retry-connrefused",
            "--retry-delay",
            "0",
            url,
        ])
        .output()
        .expect("running curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_container_serving_a_page_is_recorded_from_its_first_exec() {
    require_root();
    let inspect = Command::new("docker")
        .args(["image", "inspect", IMAGE])
        .output()
        .expect("docker CLI");
    assert!(
        inspect.status.success(),
        "image {IMAGE} is missing: run `cargo xtask images`"
    );

    let mut tracer = Tracer::load(TracerConfig::default()).expect("loading the tracer");
    let mut events = tracer.events().unwrap();
    // Watching the parent of every container's cgroup covers a container
    // from its first exec: its own cgroup is created below a watched one.
    let parent = cgroup2_mount().unwrap().join("docker");
    std::fs::create_dir_all(&parent).unwrap();
    tracer.watch_cgroup(&parent).unwrap();

    let name = format!("cimplifier-test-nginx-{}", std::process::id());
    let _ = Command::new("docker").args(["rm", "-f", &name]).output();
    docker(&["run", "-d", "--name", &name, "-p", "127.0.0.1::80", IMAGE]);
    let _guard = Container(name.clone());
    let info = docker::resolve_container(&docker::connect().unwrap(), &name)
        .await
        .unwrap();
    let container_cgroup = cgroup_id(&info.cgroup_path).unwrap();
    let port = docker(&["port", &name, "80/tcp"]);
    let addr = port.lines().next().unwrap().to_owned();

    let (status, body) = curl(&format!("http://{addr}/"));
    assert_eq!(status, 200, "GET / answered {status}: {body}");
    let (missing, _) = curl(&format!("http://{addr}/no-such-page.html"));
    assert_eq!(missing, 404);

    let events: Vec<_> = drain(&mut events, Duration::from_millis(500))
        .await
        .into_iter()
        .filter(|e| e.cgroup == container_cgroup)
        .collect();
    assert_eq!(tracer.counters().unwrap().loss.lost(), 0);
    assert!(!events.is_empty(), "nothing recorded for container {name}");

    let execs: Vec<_> = syscalls(&events, "execve")
        .into_iter()
        .filter(|(_, s)| {
            s.succeeded() && path_of(s, PathRole::Target).is_some_and(|p| p.ends_with("/nginx"))
        })
        .collect();
    assert!(
        !execs.is_empty(),
        "the nginx exec was not seen:\n{}",
        dump(&events, 40)
    );
    assert_eq!(execs[0].1.argv.as_ref().unwrap()[0], "nginx");

    let served = find(
        &events,
        &["openat", "open"],
        PathRole::Target,
        "/var/www/html/index.html",
    );
    assert!(
        served
            .iter()
            .any(|(e, s)| s.succeeded() && e.comm == "nginx"),
        "nginx opening the served file /var/www/html/index.html was not seen:\n{}",
        dump(&events, 80)
    );
    let probed_missing = events.iter().filter_map(|e| e.syscall()).any(|s| {
        !s.succeeded()
            && s.paths.iter().any(|p| {
                p.path
                    .as_ref()
                    .is_some_and(|p| p.as_str() == "/var/www/html/no-such-page.html")
            })
    });
    assert!(
        probed_missing,
        "the failed lookup of the missing page was not seen"
    );
}
