//! `cimplifier-rpe-server --config FILE -- ENTRYPOINT...`: the server of a
//! partition that also holds the original entrypoint runs it, serves calls
//! meanwhile, and leaves with its status.

mod common;

use common::{Fixture, static_bins};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// Writes the configs and starts the server with `entry` after `--`.
fn server_with_entry(f: &Fixture, entry: &[&str]) -> Child {
    let cfg = f.root.join("server.toml");
    std::fs::write(&cfg, toml::to_string(&f.server_config()).unwrap()).unwrap();
    std::fs::write(
        f.root
            .join("bin")
            .join(cimplifier_rpe::config::STUB_CONFIG_NAME),
        toml::to_string(&cimplifier_rpe::config::StubConfig::single(f.socket())).unwrap(),
    )
    .unwrap();
    Command::new(&static_bins().server)
        .arg("--config")
        .arg(&cfg)
        .arg("--")
        .args(entry)
        .spawn()
        .unwrap()
}

fn wait_for(child: &mut Child, secs: u64) -> ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server did not exit within {secs} s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_entrypoint_calls_through_the_server_and_its_exit_code_is_the_servers() {
    let mut f = Fixture::new("entry-code");
    let answer = f.callee("answer", "echo from-the-callee");
    let out = f.root.join("work/out");
    let script = format!("{} > {} && exit 7", answer.display(), out.display());
    let mut server = server_with_entry(&f, &["/bin/sh", "-c", &script]);
    let st = wait_for(&mut server, 30);
    assert_eq!(st.code(), Some(7), "{st:?}");
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "from-the-callee\n",
        "the entrypoint's call went through the server it runs under"
    );
}

#[test]
fn an_entrypoint_killed_by_a_signal_gives_128_plus_the_signal() {
    let f = Fixture::new("entry-signal");
    let mut server = server_with_entry(&f, &["/bin/sh", "-c", "kill -KILL $$"]);
    let st = wait_for(&mut server, 30);
    assert_eq!(st.code(), Some(128 + libc::SIGKILL), "{st:?}");
}

#[test]
fn sigterm_to_the_server_reaches_the_entrypoint() {
    let f = Fixture::new("entry-term");
    let marker = f.root.join("work/term");
    let script = format!(
        "trap 'echo term > {}; exit 3' TERM; while :; do sleep 0.05; done",
        marker.display()
    );
    let mut server = server_with_entry(&f, &["/bin/sh", "-c", &script]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f.socket().exists() {
        assert!(Instant::now() < deadline, "no socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    let st = wait_for(&mut server, 30);
    assert_eq!(st.code(), Some(3), "{st:?} (signal {:?})", st.signal());
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "term\n");
}

#[test]
fn a_stub_waits_for_a_server_that_is_still_starting() {
    let mut f = Fixture::new("entry-wait");
    let hello = f.callee("hello", "echo hello");
    let mut cfg = cimplifier_rpe::config::StubConfig::single(f.socket());
    cfg.connect_timeout_ms = 20_000;
    let stub_cfg = f
        .root
        .join("bin")
        .join(cimplifier_rpe::config::STUB_CONFIG_NAME);
    std::fs::write(&stub_cfg, toml::to_string(&cfg).unwrap()).unwrap();
    let caller = std::thread::spawn(move || Command::new(hello).output().unwrap());
    // The partitions start in any order: the caller's stub is already
    // waiting when the server comes up.
    std::thread::sleep(Duration::from_millis(500));
    let server_cfg = f.root.join("server.toml");
    std::fs::write(&server_cfg, toml::to_string(&f.server_config()).unwrap()).unwrap();
    let mut server = Command::new(&static_bins().server)
        .arg("--config")
        .arg(&server_cfg)
        .spawn()
        .unwrap();
    let out = caller.join().unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"hello\n");
}
