//! cimplifierd: the privileged host daemon. `serve` runs the gRPC API on a
//! unix socket (and optionally on TCP with mutual TLS); `trace` records one
//! target to an event log.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use cimplifier::cli::shutdown_signal;
use cimplifier::trace::TracerConfig;
use cimplifier::trace::loader::HookMode;
use cimplifier::trace::record::{RecordOptions, TraceTarget, record};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cimplifierd",
    version,
    about = "cimplifier's host daemon: observes containers with eBPF"
)]
struct Cli {
    /// How log lines are written to stderr: text for people, or json (one
    /// object a line) for a log collector.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "CIMPLIFIER_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: cimplifier::cli::LogFormat,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
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
        /// Record every repeat: by default the kernel folds a stat or
        /// access of an absolute path, or an open of one, that the same
        /// process made before with the same result (a repeated open's
        /// descriptor is reported only when a later call uses it).
        #[arg(long)]
        no_kernel_fold: bool,
        /// Where the syscall programs attach: `per-syscall` hooks each
        /// syscall's own tracepoint but those that act only on memory, the
        /// clock, the process or a descriptor it holds (read, write, epoll,
        /// futex...: they run no program, and seccomp profiles allow them
        /// unseen); `every-syscall` runs a program on every syscall of the
        /// host, and sees every one a watched process makes.
        #[arg(long, value_enum, default_value_t = HookMode::PerSyscall)]
        hooks: HookMode,
    },
    /// Serve the gRPC API (proto/cimplifier/v1) on a unix socket (and TCP).
    ///
    /// The socket is created with mode 0660, owned by root and by
    /// --socket-group when given: members of that group are admin and may
    /// drive the daemon. Members of --read-only-group may look (sessions,
    /// reports, events); the socket is then mode 0666, and a call is let
    /// in by the caller's role, from its uid and gid. The standard gRPC health service is served beside it.
    /// --listen-tcp also serves both on TCP, with mutual TLS: --tls-cert,
    /// --tls-key and --tls-client-ca are required (clients must present a
    /// certificate signed by that CA), unless --insecure explicitly asks for
    /// plaintext TCP without any authentication. SIGTERM or Ctrl-C stops every observation, writes each session, and
    /// removes the socket. Settings come from the config file, then the
    /// environment, then these flags, each overriding the one before.
    /// Needs root.
    Serve {
        /// TOML config file (keys: socket, socket_group, read_only_group,
        /// state_dir, ring_buffer_mib, metrics_addr, listen_tcp, tls_cert,
        /// tls_key, tls_client_ca, tls_admin_identities,
        /// tls_read_only_identities, retain_sessions, max_heavy_calls,
        /// watch_labels, kernel_fold, kernel_log, hooks). Read if it
        /// exists; a file named
        /// explicitly must exist.
        #[arg(long, env = "CIMPLIFIER_CONFIG")]
        config: Option<PathBuf>,
        /// Unix socket to listen on [default: /run/cimplifier/cimplifier.sock].
        #[arg(long, env = "CIMPLIFIER_SOCKET")]
        socket: Option<PathBuf>,
        /// Members of this group are admin on the socket: they may call
        /// every RPC, as root may.
        #[arg(long, env = "CIMPLIFIER_SOCKET_GROUP")]
        socket_group: Option<String>,
        /// Members of this group are read-only on the socket: sessions,
        /// reports, events, version, health. The socket is then mode 0666
        /// and every call is let in by the caller's uid and gid.
        #[arg(long, env = "CIMPLIFIER_READ_ONLY_GROUP", value_name = "GROUP")]
        read_only_group: Option<String>,
        /// A TCP client certificate with this name is admin: CN=NAME,
        /// DNS:NAME, URI:URI, email:ADDRESS or IP:ADDRESS. Repeat, or
        /// comma-separate in the variable. Certificates named nowhere are
        /// refused every call.
        #[arg(
            long = "tls-admin-identity",
            env = "CIMPLIFIER_TLS_ADMIN_IDENTITIES",
            value_name = "NAME",
            value_delimiter = ','
        )]
        tls_admin_identities: Vec<cimplifier::api::authz::TlsIdentity>,
        /// A TCP client certificate with this name is read-only (forms as
        /// --tls-admin-identity).
        #[arg(
            long = "tls-read-only-identity",
            env = "CIMPLIFIER_TLS_READ_ONLY_IDENTITIES",
            value_name = "NAME",
            value_delimiter = ','
        )]
        tls_read_only_identities: Vec<cimplifier::api::authz::TlsIdentity>,
        /// Where observation sessions are kept [default: /var/lib/cimplifier].
        #[arg(long, env = "CIMPLIFIER_STATE_DIR")]
        state_dir: Option<PathBuf>,
        /// Kernel ring-buffer size in MiB, a power of two [default: 64].
        #[arg(long, env = "CIMPLIFIER_RING_BUFFER_MIB")]
        ring_buffer_mib: Option<u32>,
        /// Serve Prometheus metrics on this TCP address, e.g. 127.0.0.1:9464.
        #[arg(long, env = "CIMPLIFIER_METRICS_ADDR")]
        metrics_addr: Option<std::net::SocketAddr>,
        /// Also serve the API on this TCP address, e.g. 0.0.0.0:7443; needs
        /// --tls-cert, --tls-key and --tls-client-ca, or --insecure.
        #[arg(long, env = "CIMPLIFIER_LISTEN_TCP", value_name = "ADDR")]
        listen_tcp: Option<std::net::SocketAddr>,
        /// The TCP listener's certificate (chain), PEM; its names (SAN) must
        /// match the host clients dial.
        #[arg(long, env = "CIMPLIFIER_TLS_CERT", value_name = "FILE")]
        tls_cert: Option<PathBuf>,
        /// The private key of --tls-cert, PEM.
        #[arg(long, env = "CIMPLIFIER_TLS_KEY", value_name = "FILE")]
        tls_key: Option<PathBuf>,
        /// The CA certificate(s), PEM, that client certificates must chain
        /// to: TCP clients without such a certificate are refused.
        #[arg(long, env = "CIMPLIFIER_TLS_CLIENT_CA", value_name = "FILE")]
        tls_client_ca: Option<PathBuf>,
        /// Serve --listen-tcp in plaintext, without TLS or any
        /// authentication: anyone who can reach it controls the daemon.
        /// For a trusted network or a test only; warned about at start-up.
        #[arg(long, conflicts_with_all = ["tls_cert", "tls_key", "tls_client_ca"])]
        insecure: bool,
        /// Delete closed sessions (and their events) not written for this
        /// long, e.g. 30d, checked at start and hourly; kept forever when
        /// unset. Export a session to keep it elsewhere.
        #[arg(long, env = "CIMPLIFIER_RETAIN_SESSIONS", value_name = "DURATION",
              value_parser = humantime::parse_duration)]
        retain_sessions: Option<Duration>,
        /// Heavy calls (emit, plan, import, export, merge, verify) run at
        /// once; more wait (up to 5 minutes, then RESOURCE_EXHAUSTED)
        /// [default: 2].
        #[arg(long, env = "CIMPLIFIER_MAX_HEAVY_CALLS", value_name = "N")]
        max_heavy_calls: Option<usize>,
        /// Observe containers labelled io.cimplifier.observe=true from their
        /// first exec, from the daemon's start. It watches Docker's parent
        /// cgroup, so every container's syscalls pass through the tracer's
        /// hooks while the daemon runs; without it the hooks are attached
        /// only while a session observes (`observe --label` turns label
        /// watching on at run time).
        #[arg(long, env = "CIMPLIFIER_WATCH_LABELS")]
        watch_labels: bool,
        /// Send every repeat of a call to user space. By default the kernel
        /// folds a stat or access of an absolute path, or an open of one,
        /// that the same process made before with the same result: it adds
        /// nothing to the model, and is counted (`kernel_folded_events`)
        /// instead (a repeated open's descriptor is reported only when a
        /// later call uses it). For comparing the two, or a full event stream.
        #[arg(long, env = "CIMPLIFIER_NO_KERNEL_FOLD")]
        no_kernel_fold: bool,
        /// Where the syscall programs attach [default: per-syscall]: see
        /// `cimplifierd trace --help`.
        #[arg(long, value_enum, env = "CIMPLIFIER_HOOKS")]
        hooks: Option<HookMode>,
        /// Log the kernel programs' anomalies (a lost record, an exit that
        /// met another call's entry...) through aya-log, target
        /// cimplifier::kernel. Off by default; off, it costs nothing.
        #[arg(long, env = "CIMPLIFIER_KERNEL_LOG")]
        kernel_log: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    cimplifier::cli::init_logging_as(cli.log_format);
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Both commands load eBPF programs host-wide and read every process's
/// memory: say so first, rather than fail later on what root would have.
fn require_root(command: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        nix::unistd::Uid::effective().is_root(),
        "`cimplifierd {command}` needs root: it loads eBPF programs, reads kernel trace points and the \
         processes it watches, and drives Docker; run it with sudo, or as the systemd unit in \
         deploy/ (clients need no root: `cimplifierd serve --socket-group GROUP` lets a group \
         use cimplifierctl)"
    );
    Ok(())
}

/// A list from flags or the environment, else the config file's.
fn or_file<T>(given: Vec<T>, file: Vec<T>) -> Vec<T> {
    if given.is_empty() { file } else { given }
}

/// The cgroup of the running container `name_or_id`, asked of the engine.
async fn container_target(name_or_id: &str) -> anyhow::Result<TraceTarget> {
    let docker = cimplifier::docker::connect()?;
    let info = cimplifier::docker::resolve_container(&docker, name_or_id).await?;
    tracing::info!(container = %info.name, id = %info.id, cgroup = %info.cgroup_path.display(), "resolved container");
    Ok(TraceTarget {
        cgroup: info.cgroup_path,
        name: format!("container {} ({})", info.name, info.id),
    })
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // First, so that a SIGTERM during start-up ends it cleanly.
    let stop = shutdown_signal();
    require_root(match cli.command {
        Command::Serve { .. } => "serve",
        Command::Trace { .. } => "trace",
    })?;
    match cli.command {
        Command::Serve {
            config,
            socket,
            socket_group,
            read_only_group,
            tls_admin_identities,
            tls_read_only_identities,
            state_dir,
            ring_buffer_mib,
            metrics_addr,
            listen_tcp,
            tls_cert,
            tls_key,
            tls_client_ca,
            insecure,
            retain_sessions,
            max_heavy_calls,
            watch_labels,
            no_kernel_fold,
            kernel_log,
            hooks,
        } => {
            let file = cimplifier::api::DaemonConfig::load(config.as_deref())?;
            let tcp = cimplifier::api::TcpFlags {
                listen_tcp: listen_tcp.or(file.listen_tcp),
                tls_cert: tls_cert.or(file.tls_cert),
                tls_key: tls_key.or(file.tls_key),
                tls_client_ca: tls_client_ca.or(file.tls_client_ca),
                insecure,
            }
            .listener()?;
            let ring_buffer_mib = ring_buffer_mib.or(file.ring_buffer_mib).unwrap_or(64);
            if !ring_buffer_mib.is_power_of_two() {
                anyhow::bail!("ring_buffer_mib {ring_buffer_mib} must be a power of two");
            }
            let opts = cimplifier::api::ServeOptions {
                socket: socket
                    .or(file.socket)
                    .unwrap_or_else(|| cimplifier::api::DEFAULT_SOCKET.into()),
                socket_group: socket_group.or(file.socket_group),
                state_dir: state_dir
                    .or(file.state_dir)
                    .unwrap_or_else(|| cimplifier::session::DEFAULT_STATE_DIR.into()),
                metrics_addr: metrics_addr.or(file.metrics_addr),
                tcp,
                tracer: TracerConfig {
                    ring_buffer_bytes: ring_buffer_mib << 20,
                    fold_repeats: !no_kernel_fold && file.kernel_fold.unwrap_or(true),
                    kernel_log: kernel_log || file.kernel_log.unwrap_or(false),
                    hooks: hooks.or(file.hooks).unwrap_or_default(),
                    ..Default::default()
                },
                retain_sessions: retain_sessions.or(file.retain_sessions),
                max_heavy_calls: max_heavy_calls
                    .or(file.max_heavy_calls)
                    .unwrap_or(cimplifier::api::HEAVY_CALLS),
                watch_labels: watch_labels || file.watch_labels.unwrap_or(false),
                grants: cimplifier::api::authz::GrantConfig {
                    admin_group: None,
                    read_only_group: read_only_group.or(file.read_only_group),
                    tls_admin: or_file(tls_admin_identities, file.tls_admin_identities),
                    tls_read_only: or_file(tls_read_only_identities, file.tls_read_only_identities),
                },
            };
            cimplifier::api::serve(opts, stop).await
        }
        Command::Trace {
            cgroup,
            container,
            output,
            duration,
            ring_buffer_mib,
            no_kernel_fold,
            hooks,
        } => {
            if !ring_buffer_mib.is_power_of_two() {
                anyhow::bail!("--ring-buffer-mib {ring_buffer_mib} must be a power of two");
            }
            let target = match (cgroup, container) {
                (Some(c), _) => TraceTarget::cgroup(c),
                (None, Some(c)) => container_target(&c).await?,
                (None, None) => unreachable!("clap requires one"),
            };
            let opts = RecordOptions {
                target,
                output,
                duration,
                tracer: TracerConfig {
                    ring_buffer_bytes: ring_buffer_mib << 20,
                    fold_repeats: !no_kernel_fold,
                    hooks,
                    ..Default::default()
                },
                progress_every: Duration::from_secs(5),
            };
            let summary = record(opts, stop).await?;
            println!(
                "{} events recorded in {:.1} s; {}",
                summary.events,
                summary.duration_ms as f64 / 1000.0,
                if summary.complete {
                    "no events lost".to_owned()
                } else {
                    format!(
                        "{} events LOST, {} names UNREADABLE: the trace is incomplete",
                        summary.loss.lost(),
                        summary.loss.unreadable_names
                    )
                }
            );
            Ok(())
        }
    }
}
