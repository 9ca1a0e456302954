//! cimplifierd: the privileged host daemon. `serve` runs the gRPC API on a
//! unix socket; `trace` records one target to an event log.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use cimplifier::trace::TracerConfig;
use cimplifier::trace::record::{RecordOptions, TraceTarget, record};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    version,
    about = "cimplifier's host daemon: observes containers with eBPF"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Record what a container or cgroup does into a replayable event log.
    ///
    /// Attaches the eBPF programs host-wide, records only processes in the
    /// target cgroup and the cgroups below it, and stops on Ctrl-C, SIGTERM
    /// or after --duration. The log ends with a summary line; if any event
    /// was lost it says `"complete": false` and this command warns. Needs root.
    Trace {
        /// cgroup v2 directory to trace, e.g. /sys/fs/cgroup/unified/my-job.
        #[arg(
            long,
            conflicts_with = "container",
            required_unless_present = "container"
        )]
        cgroup: Option<PathBuf>,
        /// Running Docker container to trace, by name or id.
        #[arg(long)]
        container: Option<String>,
        /// Where to write the event log (JSON lines, see docs/event-log.md).
        #[arg(long, short)]
        output: PathBuf,
        /// Stop after this long, e.g. 30s or 5m.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Kernel ring-buffer size in MiB (a power of two).
        #[arg(long, default_value_t = 64)]
        ring_buffer_mib: u32,
    },
    /// Serve the gRPC API (proto/cimplifier/v1) on a unix socket.
    ///
    /// The socket is created with mode 0660, owned by root and by
    /// --socket-group when given: members of that group may drive the
    /// daemon. The standard gRPC health service is served beside it.
    /// SIGTERM or Ctrl-C stops every observation, writes each session, and
    /// removes the socket. Needs root.
    Serve {
        /// Unix socket to listen on.
        #[arg(long, env = "CIMPLIFIER_SOCKET", default_value = cimplifier::api::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Group allowed to use the socket.
        #[arg(long)]
        socket_group: Option<String>,
        /// Where observation sessions are kept.
        #[arg(long, env = "CIMPLIFIER_STATE_DIR", default_value = cimplifier::session::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// Kernel ring-buffer size in MiB (a power of two), per observation.
        #[arg(long, default_value_t = 64)]
        ring_buffer_mib: u32,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            socket,
            socket_group,
            state_dir,
            ring_buffer_mib,
        } => {
            if !ring_buffer_mib.is_power_of_two() {
                anyhow::bail!("--ring-buffer-mib {ring_buffer_mib} must be a power of two");
            }
            let opts = cimplifier::api::ServeOptions {
                socket,
                socket_group,
                state_dir,
                tracer: TracerConfig {
                    ring_buffer_bytes: ring_buffer_mib << 20,
                    ..Default::default()
                },
            };
            cimplifier::api::serve(opts, shutdown_signal()).await
        }
        Command::Trace {
            cgroup,
            container,
            output,
            duration,
            ring_buffer_mib,
        } => {
            if !ring_buffer_mib.is_power_of_two() {
                anyhow::bail!("--ring-buffer-mib {ring_buffer_mib} must be a power of two");
            }
            let target = match (cgroup, container) {
                (Some(c), _) => TraceTarget::Cgroup(c),
                (None, Some(c)) => TraceTarget::Container(c),
                (None, None) => unreachable!("clap requires one"),
            };
            let opts = RecordOptions {
                target,
                output,
                duration,
                tracer: TracerConfig {
                    ring_buffer_bytes: ring_buffer_mib << 20,
                    ..Default::default()
                },
                progress_every: Duration::from_secs(5),
            };
            let summary = record(opts, shutdown_signal()).await?;
            println!(
                "{} events recorded in {:.1} s; {}",
                summary.events,
                summary.duration_ms as f64 / 1000.0,
                if summary.complete {
                    "no events lost".to_owned()
                } else {
                    format!(
                        "{} events LOST: the trace is incomplete",
                        summary.loss.lost()
                    )
                }
            );
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
