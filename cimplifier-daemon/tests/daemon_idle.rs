//! An idle daemon costs the host nothing: `sys_enter` and `sys_exit` run on
//! every syscall of the host, so they are attached only while some cgroup
//! is watched. Counted from the daemon's BPF link descriptors: the three
//! scheduler tracepoints and `signal_generate` (which runs only when a
//! signal is generated) always, the two syscall hooks only while a session
//! observes. Real daemon, real container. Needs root and dockerd.

mod common;

use common::{BASE_IMAGE, Container, Daemon, docker, require_root};

fn bpf_links(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy() == "anon_inode:bpf_link")
        .count()
}

#[test]
fn the_syscall_hooks_are_attached_only_while_a_session_observes() {
    require_root();
    let d = Daemon::start();
    let pid = d.child.id();
    assert_eq!(
        bpf_links(pid),
        4,
        "idle: the scheduler tracepoints and signal_generate only"
    );

    let c = Container::create("idle-hooks", &[BASE_IMAGE, "sleep", "600"]);
    let observing = common::cimplifierctl()
        .arg("--socket")
        .arg(&d.socket)
        .args(["observe", &c.0, "--no-lifecycle", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_until(30, "the syscall hooks attached", || bpf_links(pid) == 6);

    docker(&["stop", "-t", "1", &c.0]);
    let out = observing.wait_with_output().unwrap();
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["from_first_exec"], true, "{info}");
    assert!(
        info["executables"].to_string().contains("/usr/bin/sleep"),
        "the hooks were in place for the first exec: {info}"
    );
    common::wait_until(30, "the syscall hooks detached", || bpf_links(pid) == 4);
}
