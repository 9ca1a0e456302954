//! The workload of `cimplifierctl observe --exec CMD`: a shell command run
//! by the client, as its user, against the observed container. It runs in
//! its own process group so that stopping it stops everything it started.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::time::Instant;

/// The variable that tells CMD the container's IP address.
pub const TARGET_VAR: &str = "CIMPLIFIER_TARGET";
/// The variable that tells CMD the container's name.
pub const CONTAINER_VAR: &str = "CIMPLIFIER_CONTAINER";

/// A running workload command.
pub struct Workload {
    child: tokio::process::Child,
    group: Pid,
}

impl Workload {
    /// Starts `sh -c command` with the target in its environment. Its stdin
    /// is empty (no terminal is needed); its stdout is ours, or our stderr
    /// when ours must hold only JSON.
    pub fn spawn(
        command: &str,
        target: IpAddr,
        container: &str,
        stdout_to_stderr: bool,
    ) -> Result<Self> {
        Self::spawn_in(command, target, container, stdout_to_stderr, None)
    }

    /// [`Self::spawn`], inside the network namespace `netns` (a
    /// `/proc/PID/ns/net`) when given: how a workload reaches a container
    /// that has only loopback (a containerd task without CNI).
    pub fn spawn_in(
        command: &str,
        target: IpAddr,
        container: &str,
        stdout_to_stderr: bool,
        netns: Option<&std::path::Path>,
    ) -> Result<Self> {
        let stdout = if stdout_to_stderr {
            Stdio::from(std::io::stderr())
        } else {
            Stdio::inherit()
        };
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(command)
            .env(TARGET_VAR, target.to_string())
            .env(CONTAINER_VAR, container)
            .stdin(Stdio::null())
            .stdout(stdout)
            .process_group(0);
        if let Some(netns) = netns {
            let ns = std::fs::File::open(netns).with_context(|| {
                format!(
                    "opening the network namespace {} to run the workload in (is the \
                     container still running?)",
                    netns.display()
                )
            })?;
            // SAFETY: setns is async-signal-safe, and the closure only
            // calls it on a file opened before the fork.
            unsafe {
                cmd.pre_exec(move || {
                    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(std::io::Error::from)
                });
            }
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting the workload `{command}` with /bin/sh"))?;
        let pid = child
            .id()
            .context("the workload exited before its pid was known")?;
        Ok(Self {
            child,
            group: Pid::from_raw(pid as i32),
        })
    }

    /// Waits until the shell exits.
    pub async fn wait(&mut self) -> Result<ExitStatus> {
        self.child.wait().await.context("waiting for the workload")
    }

    /// Stops the whole process group: SIGTERM, then SIGKILL after `grace`.
    pub async fn stop(&mut self, grace: Duration) -> Result<ExitStatus> {
        // ESRCH: the group is gone already.
        let _ = killpg(self.group, Signal::SIGTERM);
        if let Ok(status) = tokio::time::timeout(grace, self.child.wait()).await {
            // What the shell started may outlive it.
            let _ = killpg(self.group, Signal::SIGKILL);
            return status.context("waiting for the workload");
        }
        let _ = killpg(self.group, Signal::SIGKILL);
        self.wait().await
    }
}

/// The exit code a shell would give for `status`: the code, or 128 plus
/// the signal that killed it.
pub fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(sig)) => 128u8.saturating_add(sig as u8),
        (None, None) => 1,
    }
}

/// "exited with status 3", "was killed by SIGKILL".
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => match Signal::try_from(sig) {
            Ok(s) => format!("was killed by {s}"),
            Err(_) => format!("was killed by signal {sig}"),
        },
        (None, None) => format!("ended ({status})"),
    }
}

/// Waits until every port accepts a TCP connection at `address`, or until
/// `limit` has passed; returns the ports that never did, ascending. The
/// probes are connections the container sees (accepted, then closed).
pub async fn wait_for_ports(address: IpAddr, ports: &[u16], limit: Duration) -> Vec<u16> {
    let deadline = Instant::now() + limit;
    let mut waiting: Vec<u16> = ports.to_vec();
    loop {
        let mut still = Vec::new();
        for &port in &waiting {
            let probe = tokio::net::TcpStream::connect(SocketAddr::new(address, port));
            let left = deadline.saturating_duration_since(Instant::now());
            let timeout = left.clamp(Duration::from_millis(10), Duration::from_secs(1));
            if !matches!(tokio::time::timeout(timeout, probe).await, Ok(Ok(_))) {
                still.push(port);
            }
        }
        waiting = still;
        if waiting.is_empty() || Instant::now() >= deadline {
            return waiting;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// [`wait_for_ports`] from inside the network namespace `netns` (a
/// `/proc/PID/ns/net`): a thread of its own joins it, since a namespace
/// is per thread and the runtime's threads must stay in ours.
pub async fn wait_for_ports_in(
    netns: &std::path::Path,
    address: IpAddr,
    ports: &[u16],
    limit: Duration,
) -> Result<Vec<u16>> {
    let ns = std::fs::File::open(netns)
        .with_context(|| format!("opening the network namespace {}", netns.display()))?;
    let ports = ports.to_vec();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("ports-in-netns".into())
        .spawn(move || {
            let waited = nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| anyhow::anyhow!("joining the network namespace: {e}"))
                .and_then(|()| {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    Ok(rt.block_on(wait_for_ports(address, &ports, limit)))
                });
            let _ = tx.send(waited);
        })
        .context("starting a thread to probe the ports")?;
    rx.await
        .context("the thread probing the ports ended without an answer")?
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[tokio::test]
    async fn the_status_is_the_commands_and_the_target_is_in_its_environment() {
        let mut ok = Workload::spawn(
            r#"test "$CIMPLIFIER_TARGET" = 10.0.0.7 && test "$CIMPLIFIER_CONTAINER" = web"#,
            "10.0.0.7".parse().unwrap(),
            "web",
            true,
        )
        .unwrap();
        let status = ok.wait().await.unwrap();
        assert_eq!(exit_code(status), 0, "{}", describe(status));

        let mut failing = Workload::spawn("exit 3", LOCAL, "web", true).unwrap();
        let status = failing.wait().await.unwrap();
        assert_eq!(exit_code(status), 3);
        assert_eq!(describe(status), "exited with status 3");

        let mut killed = Workload::spawn("kill -9 $$", LOCAL, "web", true).unwrap();
        let status = killed.wait().await.unwrap();
        assert_eq!(exit_code(status), 137);
        assert_eq!(describe(status), "was killed by SIGKILL");
    }

    #[tokio::test]
    async fn stopping_stops_what_the_command_started() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        // A child that ignores nothing, and a shell that waits for it.
        let command = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
        let mut w = Workload::spawn(&command, LOCAL, "web", true).unwrap();
        let grandchild = loop {
            if let Ok(s) = std::fs::read_to_string(&pidfile)
                && let Ok(pid) = s.trim().parse::<i32>()
            {
                break pid;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let status = w.stop(Duration::from_secs(5)).await.unwrap();
        assert_ne!(exit_code(status), 0, "{}", describe(status));
        // Gone, or a zombie waiting for init to reap it.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let state = std::fs::read_to_string(format!("/proc/{grandchild}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.chars().next()));
            if matches!(state, None | Some(Some('Z')) | Some(Some('X'))) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the workload's child {grandchild} outlived the stop ({state:?})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn ports_that_never_accept_are_named() {
        let open = tokio::net::TcpListener::bind((LOCAL, 0)).await.unwrap();
        let open_port = open.local_addr().unwrap().port();
        let closed_port = {
            let l = std::net::TcpListener::bind((LOCAL, 0)).unwrap();
            l.local_addr().unwrap().port()
        };
        let never =
            wait_for_ports(LOCAL, &[open_port, closed_port], Duration::from_millis(500)).await;
        assert_eq!(never, vec![closed_port]);
        assert!(
            wait_for_ports(LOCAL, &[], Duration::from_secs(5))
                .await
                .is_empty()
        );
    }

    #[tokio::test]
    async fn ports_are_probed_and_the_workload_runs_inside_a_network_namespace() {
        // Our own namespace stands in for a container's: what matters is
        // that the probe and the command run in the one named.
        let ns = std::path::Path::new("/proc/self/ns/net");
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let never = wait_for_ports_in(ns, LOCAL, &[port], Duration::from_secs(5))
            .await
            .unwrap();
        assert!(never.is_empty(), "{never:?}");
        let ours = std::fs::read_link(ns).unwrap();
        let cmd = format!(
            "test \"$(readlink /proc/self/ns/net)\" = {:?}",
            ours.display().to_string()
        );
        let mut w = Workload::spawn_in(&cmd, LOCAL, "web", true, Some(ns)).unwrap();
        assert_eq!(exit_code(w.wait().await.unwrap()), 0);
        let e = wait_for_ports_in(
            std::path::Path::new("/nonexistent/ns"),
            LOCAL,
            &[port],
            Duration::ZERO,
        )
        .await
        .unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent/ns"), "{e:#}");
    }
}
