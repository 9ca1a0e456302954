//! What every case's output must survive after its first pass (issue 14):
//! a second pass of the workload, a `docker restart` (`down` and `up` for a
//! run plan), and a SIGKILL with a start, each followed by the workload.
//! The same steps run against the original container after its observed
//! pass, so each answer of the output is compared with the original's for
//! the same step: a workload whose answers depend on what earlier passes
//! left (a guestbook, a database) compares like with like.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cimplifier::docker::compose::ComposeFile;
use cimplifier::emit::partitioned::seed::SEED_SERVICE;

use super::{Daemon, container_logs, docker, stdout_of};

/// The steps after the observed first pass, in the order they run.
pub const STEPS: [&str; 3] = [
    "second pass",
    "after docker restart",
    "after SIGKILL and start",
];

/// The answers a workload printed at one step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answers {
    pub step: String,
    pub lines: Vec<String>,
}

/// What is restarted and killed: one container, or a run plan's.
pub trait Target {
    /// What the workload is given in `CIMPLIFIER_TARGET`.
    fn address(&self) -> String;
    /// A graceful stop and start.
    fn restart(&mut self);
    /// SIGKILL to every container, then a start.
    fn kill_and_start(&mut self);
    /// The logs, for a failure's message.
    fn logs(&self) -> String;
}

/// One container, by name.
pub struct Single(pub String);

impl Target for Single {
    fn address(&self) -> String {
        docker(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", &self.0])
    }

    fn restart(&mut self) {
        docker(&["restart", "-t", "20", &self.0]);
    }

    fn kill_and_start(&mut self) {
        docker(&["kill", "-s", "KILL", &self.0]);
        wait_stopped(&self.0);
        docker(&["start", &self.0]);
    }

    fn logs(&self) -> String {
        container_logs(&self.0)
    }
}

/// A run plan that `cimplifierctl up` started.
pub struct Plan<'a> {
    pub daemon: &'a Daemon,
    pub dir: PathBuf,
    pub address: String,
}

impl Plan<'_> {
    /// `cimplifierctl up DIR --json`; panics with its stderr if it fails.
    pub fn up<'d>(daemon: &'d Daemon, dir: &Path) -> Plan<'d> {
        let mut plan = Plan {
            daemon,
            dir: dir.to_path_buf(),
            address: String::new(),
        };
        plan.ctl_up();
        plan
    }

    fn ctl_up(&mut self) {
        let up: serde_json::Value = serde_json::from_str(&stdout_of(&self.daemon.ctl(&[
            "up",
            self.dir.to_str().unwrap(),
            "--json",
        ])))
        .unwrap();
        self.address = up["ip_address"]
            .as_str()
            .unwrap_or_else(|| panic!("up gave no address: {up}"))
            .to_owned();
    }

    fn compose(&self) -> ComposeFile {
        ComposeFile::load(&self.dir).unwrap().1
    }

    /// The partitions' containers in the order `up` starts them.
    pub fn containers(&self) -> Vec<String> {
        let compose = self.compose();
        compose
            .start_order()
            .unwrap()
            .into_iter()
            .filter(|s| *s != SEED_SERVICE)
            .map(|s| compose.container_name(s))
            .collect()
    }
}

impl Target for Plan<'_> {
    fn address(&self) -> String {
        self.address.clone()
    }

    fn restart(&mut self) {
        stdout_of(&self.daemon.ctl(&["down", self.dir.to_str().unwrap()]));
        self.ctl_up();
    }

    fn kill_and_start(&mut self) {
        let containers = self.containers();
        for c in containers.iter().rev() {
            // A partition may end by itself once another is killed (an RPE
            // server whose caller went away): what counts is that none runs.
            let _ = Command::new("docker")
                .args(["kill", "-s", "KILL", c])
                .output();
        }
        for c in &containers {
            wait_stopped(c);
        }
        // As an operator (or a restart policy) would: each again, in the
        // plan's order, with what the crash left in the volumes.
        for c in &containers {
            docker(&["start", c]);
        }
        // The partitions share the network namespace of the one that owns it.
        let owner = containers
            .iter()
            .find(|c| {
                !docker(&["inspect", "-f", "{{.HostConfig.NetworkMode}}", c])
                    .starts_with("container:")
            })
            .expect("a partition owns the network namespace");
        self.address = docker(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", owner]);
    }

    fn logs(&self) -> String {
        self.containers()
            .iter()
            .map(|c| format!("--- {c}\n{}", container_logs(c)))
            .collect()
    }
}

fn wait_stopped(container: &str) {
    super::wait_until(30, &format!("{container} to stop"), || {
        docker(&["inspect", "-f", "{{.State.Running}}", container]) == "false"
    });
}

/// Waits until `address:port` accepts a TCP connection (up to 90 s).
pub fn wait_tcp(address: &str, port: u16) {
    let addr: SocketAddr = format!("{address}:{port}")
        .parse()
        .unwrap_or_else(|e| panic!("{address}:{port}: {e}"));
    super::wait_until(90, &format!("{addr} to accept connections"), || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
    });
}

/// A workload script of cimplifier-daemon/tests/workloads.
pub struct Script {
    pub path: PathBuf,
    /// The TCP ports it needs open before it starts.
    pub ports: &'static [u16],
}

impl Script {
    pub fn new(name: &str, ports: &'static [u16]) -> Self {
        Self {
            path: Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/workloads")
                .join(name),
            ports,
        }
    }

    /// The command `observe --exec` runs: the script, its answers to `out`.
    pub fn exec_line(&self, out: &Path) -> String {
        format!("{} > {}", self.path.display(), out.display())
    }

    /// Runs the script against `address` (its ports open first); its
    /// printed answers, one per line. Panics with its output and the
    /// target's logs if it fails.
    pub fn run(&self, target: &dyn Target, against: &str) -> Vec<String> {
        let address = target.address();
        for port in self.ports {
            wait_tcp(&address, *port);
        }
        let start = Instant::now();
        let out = Command::new(&self.path)
            .env("CIMPLIFIER_TARGET", &address)
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", self.path.display()));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{} failed against {against} ({}):\n{stdout}{stderr}\n--- its logs:\n{}",
            self.path.display(),
            out.status,
            target.logs()
        );
        println!(
            "{} against {against}: passed in {:.1} s",
            self.path.file_name().unwrap().to_string_lossy(),
            start.elapsed().as_secs_f64()
        );
        stdout.lines().map(str::to_owned).collect()
    }
}

/// Hooks around the SIGKILL: write before it, check after the start.
pub trait CrashCheck {
    fn before_kill(&mut self, target: &dyn Target, against: &str);
    fn after_start(&mut self, target: &dyn Target, against: &str);
}

/// Runs the steps of [`STEPS`] against `target`, `pass` after each.
pub fn run_steps(
    target: &mut dyn Target,
    against: &str,
    crash: Option<&mut dyn CrashCheck>,
    pass: &mut dyn FnMut(&dyn Target, &str) -> Vec<String>,
) -> Vec<Answers> {
    let mut out = Vec::new();
    let mut record = |target: &dyn Target, step: &str| {
        println!("{against}: {step}");
        out.push(Answers {
            step: step.to_owned(),
            lines: pass(target, &format!("{against}, {step}")),
        });
    };
    record(target, STEPS[0]);
    target.restart();
    record(target, STEPS[1]);
    match crash {
        Some(crash) => {
            crash.before_kill(target, against);
            target.kill_and_start();
            crash.after_start(target, against);
        }
        None => target.kill_and_start(),
    }
    record(target, STEPS[2]);
    out
}

/// Requires the output's answers at every step to be the original's.
pub fn assert_same(case: &str, original: &[Answers], output: &[Answers]) {
    assert_eq!(
        original.iter().map(|a| &a.step).collect::<Vec<_>>(),
        output.iter().map(|a| &a.step).collect::<Vec<_>>(),
        "{case}: not the same steps"
    );
    for (o, x) in original.iter().zip(output) {
        assert!(!o.lines.is_empty(), "{case}, {}: no answers at all", o.step);
        if o.lines != x.lines {
            let first = o
                .lines
                .iter()
                .zip(&x.lines)
                .position(|(a, b)| a != b)
                .unwrap_or(o.lines.len().min(x.lines.len()));
            panic!(
                "{case}, {}: the output answers differently from the original, from answer {first} on\n\
                 original: {:?}\noutput:   {:?}",
                o.step,
                &o.lines[first.min(o.lines.len())..],
                &x.lines[first.min(x.lines.len())..],
            );
        }
    }
    println!(
        "{case}: the output gave the original's answers ({} in all) at each of {} steps",
        original.iter().map(|a| a.lines.len()).sum::<usize>(),
        original.len()
    );
}

/// `cimplifierctl verify SESSION OUTPUT --workload SCRIPT --json`, where
/// `output` is `["--image", TAG]` or `["--plan", DIR]`: the output must run
/// the workload (after each lifecycle step, for an image) with no call
/// failing that succeeded in the original. Returns verify's report.
pub fn verify(d: &Daemon, session: &str, output: &[&str], script: &Script) -> serde_json::Value {
    let workload = script.path.to_str().unwrap();
    let mut args = vec!["verify", session];
    args.extend_from_slice(output);
    args.extend(["--workload", workload, "--json"]);
    let out = d.ctl(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("verify of {session} printed no report ({e}): {stderr}"));
    assert_eq!(
        (out.status.code(), &report["regressions"]),
        (Some(0), &serde_json::json!([])),
        "verify of {session} against {output:?}: {report:#}\n{stderr}"
    );
    println!(
        "verify {session}: {} passes, {} failed calls compared, no regression",
        report["workload"]["passes"].as_array().map_or(0, Vec::len),
        report["failed_calls_compared"]
    );
    report
}
