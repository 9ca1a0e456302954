//! An idle daemon costs the host nothing: the syscall hooks run on the
//! host's syscalls, watched or not, so they are attached only while some
//! cgroup is watched. Counted from the daemon's descriptors: BPF links for
//! the three scheduler tracepoints and `signal_generate` (which runs only
//! when a signal is generated) always; the perf events that hold the
//! per-syscall hooks (the default, `--hooks per-syscall`) only while a
//! session observes, and a watch that begins while they are being closed
//! (slow in the kernel) gets the same set again. Real daemon, real
//! container. Needs root and dockerd.

mod common;

use common::{BASE_IMAGE, Container, Daemon, docker, require_root};

/// The daemon's BPF links and perf events.
fn hooks(pid: u32) -> (usize, usize) {
    let targets: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|t| t.to_string_lossy().into_owned())
        .collect();
    let count = |kind: &str| targets.iter().filter(|t| *t == kind).count();
    (
        count("anon_inode:bpf_link"),
        count("anon_inode:[perf_event]"),
    )
}

/// Links held for good: the three scheduler tracepoints, `exec_abi` and
/// `signal_generate`.
const IDLE_LINKS: usize = 5;

/// Syscalls with a per-syscall hook: every syscall but the unhooked ones
/// at entry, and the traced ones at exit too.
fn hooked_enough((links, perf_events): (usize, usize)) -> bool {
    let traced = cimplifier_common::syscalls::TRACED.len();
    links == IDLE_LINKS && perf_events > 200 + traced && perf_events < 400 + traced
}

/// Stops `c`, which `observing` observes, and checks that the session saw
/// its first exec: the hooks were in place.
fn stop_and_check_first_exec(c: &Container, observing: std::process::Child) {
    docker(&["stop", "-t", "1", &c.0]);
    let out = observing.wait_with_output().unwrap();
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["from_first_exec"], true, "{info}");
    assert!(
        info["executables"].to_string().contains("/usr/bin/sleep"),
        "the hooks were in place for the first exec of {}: {info}",
        c.0
    );
}

#[test]
fn the_syscall_hooks_are_attached_only_while_a_session_observes() {
    require_root();
    let d = Daemon::start();
    let pid = d.child.id();
    assert_eq!(
        hooks(pid),
        (IDLE_LINKS, 0),
        "idle: the scheduler tracepoints, exec_abi and signal_generate only"
    );

    let first = Container::create("idle-hooks", &[BASE_IMAGE, "sleep", "600"]);
    let observing = common::observe_until_stopped(&d, &first.0);
    common::wait_until(30, "the syscall hooks attached", || {
        hooked_enough(hooks(pid))
    });
    let attached = hooks(pid);

    stop_and_check_first_exec(&first, observing);

    // The hooks are being closed (the kernel takes a grace period per
    // tracepoint); a watch that begins meanwhile keeps those still open and
    // attaches the others again: the same set, none twice, none missing.
    let closing = hooks(pid);
    assert!(
        closing.1 > 0,
        "the hooks are still being closed as the next watch begins: {closing:?}"
    );
    let second = Container::create("idle-hooks-again", &[BASE_IMAGE, "sleep", "600"]);
    let observing = common::observe_until_stopped(&d, &second.0);
    common::wait_until(30, "the whole set of hooks attached again", || {
        hooks(pid) == attached
    });
    stop_and_check_first_exec(&second, observing);

    // ~370 tracepoints, about 70 ms each on these machines: one closer,
    // which leaves other tracers room to attach meanwhile.
    common::wait_until(120, "the syscall hooks detached", || {
        hooks(pid) == (IDLE_LINKS, 0)
    });
}
