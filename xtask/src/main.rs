//! `cargo xtask`: developer tasks for cimplifier.
//!
//! Everything here assumes the project's reference machine: Debian 12, run as
//! root, no container registry (test images are built locally from Debian
//! packages), Docker from Debian's `docker.io`.

mod bench;
mod demo;
mod demo_partition;
mod ebpf;
mod images;
mod licenses;
mod setup;
mod soak;
mod test;
mod util;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Developer tasks for cimplifier (run as root on Debian 12)",
    long_about = "Developer tasks for cimplifier.\n\n\
        Start with `cargo xtask demo` (trace an nginx container) or \
        `cargo xtask test` (what CI runs). Both run `setup` first, which \
        installs and starts everything they need and is safe to rerun."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install and start everything the project needs (idempotent, safe to rerun).
    ///
    /// Installs missing Debian packages (LLVM 22, Debian's rustc-web/cargo-web/
    /// rust-web-src for the eBPF build, docker.io, debootstrap, test tools),
    /// bpf-linker 0.13.0, mounts tracefs, starts dockerd if it is not answering
    /// (log: /var/log/cimplifier-dockerd.log) and builds the test images.
    /// Each step is skipped when already done. Needs root.
    Setup,
    /// Build the kernel programs (cimplifier-ebpf) with Debian's rustc-web and bpf-linker.
    ///
    /// Runs `/usr/bin/cargo build` in cimplifier-ebpf/ (its own workspace,
    /// target bpfel-unknown-none with build-std) with RUSTC=/usr/bin/rustc and
    /// RUSTC_BOOTSTRAP=1. Output:
    /// <target-dir>/bpfel-unknown-none/{release,debug}/cimplifier-ebpf.
    BuildEbpf {
        /// Build with the release profile (what the daemon embeds).
        #[arg(long)]
        release: bool,
        /// Cargo target directory for the eBPF build [default: cimplifier-ebpf/target].
        #[arg(long, value_name = "DIR")]
        target_dir: Option<std::path::PathBuf>,
    },
    /// Check that every crate both workspaces build has a licence usable in
    /// an MIT OR Apache-2.0 project (run by `test` before clippy).
    ///
    /// Evaluates each package's SPDX expression from `cargo metadata
    /// --locked` against the allow-list in xtask/src/licenses.rs; names
    /// every package that fails.
    Licenses,
    /// Build the local Docker test images (cached by recipe hash).
    ///
    /// cimplifier-test/base:bookworm is made with `debootstrap --variant=minbase`
    /// from the Debian mirror apt is configured with, then `docker import`ed.
    /// cimplifier-test/<name>:latest is built from tests/images/<name>/Dockerfile
    /// with `docker build --network host`. Each image carries the label
    /// io.cimplifier.recipe-hash; an image whose label matches its recipe is
    /// not rebuilt. Needs root and a running dockerd (see `setup`).
    Images {
        /// Rebuild every image even when its recipe hash matches.
        #[arg(long)]
        force: bool,
    },
    /// Run the whole test suite as CI does: setup, eBPF build, clippy, cargo test.
    ///
    /// Runs `setup`, `build-ebpf --release`, `cargo clippy --workspace
    /// --all-targets -- -D warnings` and `cargo test --workspace ARGS...`.
    /// Fails if any step fails. Needs root (the tests load eBPF programs and
    /// start Docker containers). Example: `cargo xtask test -- -p cimplifier-daemon -- --nocapture`.
    Test {
        /// Extra arguments for `cargo test --workspace` (after `--`).
        #[arg(last = true, value_name = "ARGS")]
        args: Vec<String>,
    },
    /// The main flow on an nginx test container: observe, emit a slim image, run it.
    ///
    /// Runs `setup`, starts `cimplifierd serve` on target/demo-state, creates
    /// cimplifier-demo-nginx from cimplifier-test/nginx on 127.0.0.1:8088,
    /// runs `cimplifierctl observe` (the daemon starts it under
    /// observation), requests a few pages, stops observing, runs
    /// `cimplifierctl emit --tag cimplifier-demo/nginx:slim`, starts the slim
    /// image on 127.0.0.1:8089, checks it answers the same requests the same
    /// way, and prints both sizes. Removes the containers. Needs root.
    Demo,
    /// The paper's WordPress case study: observe, partition, run it split.
    ///
    /// Runs `setup`, builds the daemon (which embeds the static RPE glue), starts
    /// `cimplifierd serve` on target/demo-partition-state, observes
    /// cimplifier-test/wordpress (nginx, php-fpm, mariadb, supervisord)
    /// while tests/workloads/wordpress.sh runs against it, shows
    /// `cimplifierctl plan` for tests/workloads/wordpress-policy.toml,
    /// emits the four partitions as cimplifier-demo/wp-*:latest with their
    /// run plan in target/demo-wp-split, starts them with `cimplifierctl up`,
    /// runs the workload again, and stops them. Needs root.
    DemoPartition,
    /// Measure the tracer's overhead; prints figures, asserts nothing.
    ///
    /// In one run: a stat/open/close loop and redis-benchmark against a redis
    /// container, each untraced, as an unwatched bystander, under bpftrace
    /// floors (empty programs on the raw and the per-syscall tracepoints,
    /// one counting opens), traced by cimplifier (the loop: first pass and
    /// steady state) and under `strace -f`. Prints wall times or
    /// requests/s as ratios to the untraced baseline, the events/s ingested,
    /// the events lost and the programs' jited sizes with the kernel log off
    /// and on. Runs `setup` first. Needs root. Record the figures in
    /// docs/benchmarks.md.
    BenchTrace,
    /// Measure the model stage; prints figures, asserts nothing.
    ///
    /// Records a >= 1M-event trace of a file-walking workload and replays it:
    /// events/s through the decoder and into the model, and peak heap per
    /// million events. Then records nginx and redis containers (start-up and
    /// workload) and times computing every executable's R and W sets. Runs
    /// `setup` first. Needs root. Record the figures in docs/benchmarks.md.
    BenchModel,
    /// Measure emit: the time from the request to a runnable slim image.
    ///
    /// Observes an nginx test container under a few requests, then emits
    /// its slim image five times and prints the median of each phase (read
    /// the image, plan, write, load) against `docker image save` measured in
    /// the same run. Runs `setup` first. Needs root. Record the figures in
    /// docs/benchmarks.md.
    BenchEmit,
    /// Measure the daemon's checkpoint lag and event-stream rates; prints
    /// figures, asserts nothing.
    ///
    /// Kills a daemon observing a busy container with SIGKILL ten times and
    /// prints how long before each kill its last checkpoint was; then streams
    /// 5 observed containers' events to 19 clients for 6 s and prints the
    /// events/s each got. Runs `setup` first. Needs root. Record the figures
    /// in docs/benchmarks.md.
    BenchDaemon,
    /// Watch the daemon's memory over a long observation; prints figures.
    ///
    /// A release daemon observes a redis test container from its first
    /// exec while redis-benchmark runs back to back,
    /// and prints the daemon's resident memory, the session's events and
    /// the store's size each minute. Runs `setup` first. Needs root. Record
    /// the figures in docs/benchmarks.md.
    Soak {
        /// How long to observe.
        #[arg(long, default_value_t = 60)]
        minutes: u64,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Setup => setup::run(),
        Command::BuildEbpf {
            release,
            target_dir,
        } => ebpf::build(release, target_dir.as_deref()).map(|_| ()),
        Command::Images { force } => images::run(force),
        Command::Test { args } => test::run(&args),
        Command::Licenses => licenses::run(),
        Command::Demo => demo::run(),
        Command::DemoPartition => demo_partition::run(),
        Command::BenchTrace => bench::trace(),
        Command::BenchModel => bench::model(),
        Command::BenchEmit => bench::emit(),
        Command::BenchDaemon => bench::daemon(),
        Command::Soak { minutes } => soak::run(minutes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn test_passes_trailing_args() {
        let cli =
            Cli::try_parse_from(["cargo xtask", "test", "--", "-p", "x", "--", "--nocapture"])
                .unwrap();
        match cli.command {
            Command::Test { args } => assert_eq!(args, ["-p", "x", "--", "--nocapture"]),
            _ => panic!("wrong subcommand"),
        }
    }
}
