//! `cargo xtask setup`: install and start what the project needs. Idempotent.

use std::fs::OpenOptions;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::util::{self, Step, cmd};

/// Debian packages the project needs: LLVM 22 and Debian's rustc-web toolchain
/// (eBPF build, bpf-linker), the Docker engine and debootstrap (test images),
/// and tools used by tests and the demo (openssl makes the TLS tests'
/// certificates; systemd brings `systemd-analyze`, which checks
/// deploy/systemd/ without systemd running; mariadb-client is the MariaDB
/// case study's client; skopeo writes the OCI image formats the image
/// reader is tested on; docker-registry is the local registry `emit
/// --push` is tested against, with apache2-utils' htpasswd for its users;
/// kubectl decodes the Kubernetes run plan; protobuf-compiler is the protoc
/// the containerd-client crate's build runs, and containerd (with `ctr`) is
/// the engine the containerd backend is tested on, dockerd's own; podman is
/// tested through its Docker-compatible API; bpftrace gives bench-trace its
/// floors: what the cheapest eBPF tool costs on the same workloads;
/// binutils assembles the 32-bit program the tracer must flag).
pub const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "docker.io",
    "debootstrap",
    "iptables",
    "strace",
    "bpftrace",
    "redis-tools",
    "mariadb-client",
    "curl",
    "openssl",
    "python3",
    "ca-certificates",
    "systemd",
    "skopeo",
    "docker-registry",
    "apache2-utils",
    "kubectl",
    "protobuf-compiler",
    "containerd",
    "podman",
    "binutils",
];

pub const BPF_LINKER_VERSION: &str = "0.13.0";
pub const DOCKERD_LOG: &str = "/var/log/cimplifier-dockerd.log";
const DOCKERD_WAIT: Duration = Duration::from_secs(60);
const TRACEFS: &str = "/sys/kernel/tracing";

pub fn run() -> Result<()> {
    util::ensure_root("setup")?;
    let _all = Step::new("setup");
    apt_packages()?;
    bpf_linker()?;
    tracefs()?;
    dockerd()?;
    crate::images::run(false)
}

/// The packages of [`APT_PACKAGES`] that are not installed.
fn missing_packages() -> Result<Vec<&'static str>> {
    // One query for all; unknown packages make dpkg-query exit non-zero but
    // it still prints the known ones.
    let out =
        util::probe(cmd("dpkg-query", ["-W", "-f=${Package} ${Status}\\n"]).args(APT_PACKAGES))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    Ok(APT_PACKAGES
        .iter()
        .copied()
        .filter(|pkg| {
            !stdout.lines().any(|line| {
                line.split_once(' ').is_some_and(|(name, status)| {
                    // "install ok installed" (or "hold ok installed").
                    name.split(':').next() == Some(*pkg) && status.ends_with("ok installed")
                })
            })
        })
        .collect())
}

fn apt_packages() -> Result<()> {
    let missing = missing_packages()?;
    if missing.is_empty() {
        println!("apt: all {} packages installed", APT_PACKAGES.len());
        return Ok(());
    }
    let _step = Step::new(format!("apt: installing {}", missing.join(" ")));
    util::run(cmd("apt-get", ["update"]).env("DEBIAN_FRONTEND", "noninteractive"))?;
    util::run(
        cmd("apt-get", ["install", "-y", "--no-install-recommends"])
            .args(APT_PACKAGES)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    let still = missing_packages()?;
    if !still.is_empty() {
        bail!(
            "apt-get install finished but these packages are still missing: {}",
            still.join(" ")
        );
    }
    Ok(())
}

/// The installed bpf-linker's version line, if it runs at all.
pub fn bpf_linker_version() -> Option<String> {
    let out = Command::new("bpf-linker")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn bpf_linker() -> Result<()> {
    match bpf_linker_version() {
        Some(v) if v.split_whitespace().any(|w| w == BPF_LINKER_VERSION) => {
            println!("bpf-linker: {v}");
            return Ok(());
        }
        Some(v) => println!("bpf-linker: found `{v}`, want {BPF_LINKER_VERSION}"),
        None => println!("bpf-linker: not found on PATH"),
    }
    let _step = Step::new(format!(
        "bpf-linker: cargo install bpf-linker@{BPF_LINKER_VERSION} (a few minutes)"
    ));
    util::run(
        Command::new(util::cargo())
            .args([
                "install",
                "--locked",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            ])
            .args(["--no-default-features", "--features", "llvm-22"])
            // Without it the build finds Debian's default llvm-config (LLVM 14).
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
    )?;
    if bpf_linker_version().is_none() {
        bail!("bpf-linker was installed but is not on PATH: add ~/.cargo/bin to PATH");
    }
    Ok(())
}

fn tracefs() -> Result<()> {
    if Path::new(TRACEFS).join("events").is_dir() {
        println!("tracefs: mounted at {TRACEFS}");
        return Ok(());
    }
    util::run(&mut cmd("mount", ["-t", "tracefs", "nodev", TRACEFS]))
}

fn docker_answers() -> bool {
    Command::new("docker")
        .arg("info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn dockerd() -> Result<()> {
    if docker_answers() {
        println!("dockerd: running");
        return Ok(());
    }
    let _step = Step::new(format!(
        "dockerd: starting `dockerd --iptables=false` (log: {DOCKERD_LOG})"
    ));
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(DOCKERD_LOG)
        .with_context(|| format!("opening {DOCKERD_LOG}"))?;
    let log2 = log
        .try_clone()
        .with_context(|| format!("duplicating {DOCKERD_LOG}"))?;
    // setsid: its own session, so it outlives xtask and the terminal.
    // --iptables=false: the engine must not rewrite the host firewall; builds
    // use --network host and published ports use docker-proxy.
    let mut child = cmd("setsid", ["dockerd", "--iptables=false"])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .context("could not start `setsid dockerd --iptables=false`")?;
    let start = Instant::now();
    while start.elapsed() < DOCKERD_WAIT {
        std::thread::sleep(Duration::from_millis(500));
        if let Some(status) = child.try_wait().context("waiting for dockerd")? {
            bail!("dockerd exited at once ({status}); see {DOCKERD_LOG}");
        }
        if docker_answers() {
            println!(
                "dockerd: answering after {:.1} s",
                start.elapsed().as_secs_f64()
            );
            return Ok(());
        }
    }
    bail!(
        "dockerd did not answer `docker info` within {} s; see {DOCKERD_LOG}",
        DOCKERD_WAIT.as_secs()
    )
}
