//! cimplifierctl: the admin CLI, a gRPC client of cimplifierd; `analyze`
//! works offline on recorded traces.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use cimplifier::emit::compose;
use cimplifier::emit::partitioned::PartitionEmitReport;
use cimplifier::emit::slim::EmitReport;
use cimplifier::model::report::{Input, analyze};
use cimplifier::place::slim::{SafetySet, SlimOptions};
use cimplifier::trace::ContainerPath;
use clap::{ArgGroup, Parser, Subcommand};
use tokio_stream::StreamExt;

#[derive(Parser)]
#[command(
    version,
    about = "cimplifier's admin CLI: observe a container, then emit its least-privilege image",
    after_help = "Exit codes: 0 success; 1 failure; 2 usage error; 3 the daemon cannot be reached; \
                  4 no such container or session; 5 refused as asked (e.g. a session that lost events). \
                  observe --exec exits with the workload's status once it has run."
)]
struct Cli {
    /// The daemon's socket (`cimplifierd serve`); `analyze` works without it.
    #[arg(long, global = true, env = "CIMPLIFIER_SOCKET", default_value = cimplifier::api::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Reach the daemon on TCP instead (`cimplifierd serve --listen-tcp`),
    /// with mutual TLS: needs --tls-ca, --tls-cert and --tls-key, or
    /// --insecure for a daemon serving plaintext.
    #[arg(
        long,
        global = true,
        env = "CIMPLIFIER_ADDR",
        value_name = "HOST:PORT",
        conflicts_with = "socket"
    )]
    addr: Option<String>,
    /// With --addr: the CA certificate (PEM) that signed the daemon's
    /// certificate; that certificate must name the host of --addr.
    #[arg(long, global = true, env = "CIMPLIFIER_TLS_CA", value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// With --addr: this client's certificate (PEM), signed by the CA the
    /// daemon trusts (its --tls-client-ca).
    #[arg(
        long,
        global = true,
        env = "CIMPLIFIER_TLS_CLIENT_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// With --addr: the private key (PEM) of --tls-cert.
    #[arg(
        long,
        global = true,
        env = "CIMPLIFIER_TLS_CLIENT_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// With --addr: talk plaintext TCP, to a daemon serving --insecure.
    #[arg(long, global = true, conflicts_with_all = ["tls_ca", "tls_cert", "tls_key"])]
    insecure: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Observe a Docker container with eBPF while it serves its workload.
    ///
    /// The daemon does the observing. A container that is created but not
    /// running is started under observation, so its first exec and all of
    /// its start-up are seen. A running container needs --restart
    /// (recommended) or --attach. Run the workload meanwhile; stop with
    /// Ctrl-C (the session is kept), --duration, or by stopping the
    /// container. Or give the workload as --exec CMD: the session closes
    /// when CMD exits, with CMD's exit status, and no terminal is needed.
    /// The daemon keeps the session (event log and summary) for `emit`,
    /// `report` and `sessions`.
    #[command(group(ArgGroup::new("what").required(true).args(["container", "label"])))]
    Observe {
        /// Container name or id.
        container: Option<String>,
        /// Instead of one container: observe every container created from
        /// now on with this label (KEY=VALUE), from its first exec. The
        /// daemon always does so for io.cimplifier.observe=true.
        #[arg(long, value_name = "KEY=VALUE", conflicts_with_all = ["duration", "restart", "attach"])]
        label: Option<String>,
        /// Stop after this long, e.g. 30s or 5m.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Restart a running container so its start-up is observed.
        #[arg(long, conflicts_with = "attach")]
        restart: bool,
        /// Observe a running container from now on; its start-up is missed,
        /// so `emit` needs --allow-incomplete for the session.
        #[arg(long)]
        attach: bool,
        /// Run this workload once the container runs, through `sh -c` as
        /// you, with CIMPLIFIER_TARGET set to the container's IP address
        /// (127.0.0.1 on the host's network) and CIMPLIFIER_CONTAINER to its
        /// name; first waits (see --ready-timeout) until the TCP ports it
        /// exposes accept connections. When CMD exits the session is closed and
        /// cimplifierctl exits with CMD's status. Ctrl-C or SIGTERM stops
        /// CMD and closes the session. CMD's stdin is empty; with --json its
        /// stdout goes to stderr.
        #[arg(long, value_name = "CMD", conflicts_with = "duration")]
        exec: Option<String>,
        /// With --exec: how long to wait for the exposed TCP ports before
        /// running CMD anyway (with a warning naming them); 0 runs it at once.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration,
              default_value = "30s", requires = "exec")]
        ready_timeout: Duration,
        /// Print the session summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Emit the slim image of an observed container, or with --policy its
    /// partitions (one image each) and the run plan `up` starts.
    ///
    /// Keeps every file the observed executables used, with every directory
    /// and symlink on the way to it, the ELF libraries of every binary kept,
    /// the safety sets (nss, ca-certificates, timezone, locales) and --include paths;
    /// copies the source image's configuration; the daemon keeps an audit
    /// report of every kept path and why (emit-reports/SESSION.json in its
    /// state directory; --json prints it). Refuses a session that lost events,
    /// has a gap or missed the container's start-up (--attach) unless
    /// --allow-incomplete. The OCI directory is written by the
    /// daemon, on its host. With --policy (docs/partitioning.md), a stub of
    /// the RPE glue stands at each program that runs in another partition,
    /// the RPE server is the entrypoint of every partition that runs
    /// programs for others, and --out gets docker-compose.yml and
    /// partition-report.json.
    #[command(group(ArgGroup::new("output").required(true).multiple(true).args(["tag", "oci_dir"])))]
    Emit {
        /// The observed container's name.
        container: String,
        /// Load the image into Docker under this tag, e.g. myapp:slim.
        #[arg(long)]
        tag: Option<String>,
        /// Write an OCI image layout to this directory.
        #[arg(long, value_name = "DIR")]
        oci_dir: Option<PathBuf>,
        /// Keep this path and everything below it (repeatable).
        #[arg(long, value_name = "PATH")]
        include: Vec<String>,
        /// Drop this path and everything below it (repeatable).
        #[arg(long, value_name = "PATH")]
        exclude: Vec<String>,
        /// Leave out one safety set: nss, ca-certificates, timezone or locales (repeatable).
        #[arg(long, value_name = "SET")]
        no_safety_set: Vec<String>,
        /// Leave out every safety set.
        #[arg(long)]
        no_safety_sets: bool,
        /// Emit even if the session lost events; the report says so.
        #[arg(long)]
        allow_incomplete: bool,
        /// List every removed path in the report.
        #[arg(long)]
        list_removed: bool,
        /// Keep only what the run used (and what that needs): not the whole
        /// of each state directory, nor interpreters' whole code trees, nor
        /// every entry of a listed directory (the report names those).
        #[arg(long)]
        strict: bool,
        /// Say why PATH is kept or removed (repeatable).
        #[arg(long, value_name = "PATH")]
        explain: Vec<String>,
        /// Partition by this policy (TOML, docs/policy.md) instead: one
        /// image per partition, named REPOSITORY-<partition>:TAG after
        /// --tag, with RPE stubs and servers, and a run plan in --out.
        #[arg(long, value_name = "FILE", requires_all = ["tag", "out"], conflicts_with = "oci_dir")]
        policy: Option<PathBuf>,
        /// With --policy: the directory the daemon writes the run plan
        /// (docker-compose.yml) and partition-report.json to.
        #[arg(long, value_name = "DIR", requires = "policy")]
        out: Option<PathBuf>,
        /// Print the audit report as JSON instead of the summary.
        #[arg(long)]
        json: bool,
    },
    /// The daemon's version and API.
    Version,
    /// Print a shell completion script, e.g. `cimplifierctl completions bash > /etc/bash_completion.d/cimplifierctl`.
    Completions { shell: clap_complete::Shell },
    /// The daemon's sessions: observing, closed or failed.
    Sessions {
        /// Print them as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop the daemon's observation of a container; the session is kept.
    Stop { container: String },
    /// The model of a session the daemon holds: a table of each
    /// executable's reads, writes and failed lookups, the call graph and
    /// the sockets; --json for the whole model (docs/model-json.md), --dot
    /// for the call graph.
    Report {
        /// The session (the container's name, or a merge's).
        container: String,
        /// Print the whole model as JSON.
        #[arg(long, conflicts_with = "dot")]
        json: bool,
        /// Print the call graph as Graphviz DOT.
        #[arg(long)]
        dot: bool,
    },
    /// Dry-run a partitioning policy on a session: which executables go
    /// where, what each partition copies and shares (with the evidence for
    /// every shared volume), and which calls cross partitions by RPE.
    ///
    /// The policy is a TOML file (docs/policy.md), e.g.
    /// `kind = "one-one"`. Nothing is built.
    Plan {
        /// The session (a container's name, or a merge's).
        session: String,
        /// The policy file.
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
        /// Print the plan as JSON (format cimplifier-partition-plan).
        #[arg(long)]
        json: bool,
    },
    /// Start a partitioned system that `emit --policy` wrote.
    ///
    /// Reads the run plan (the --out directory of `emit --policy`, or its
    /// docker-compose.yml), creates its volumes and starts one container
    /// per partition through the Docker API, servers first, all in one
    /// network namespace. Containers are named PROJECT-PARTITION-1 and
    /// labelled as Compose labels them, so `docker compose` sees them too.
    Up {
        /// The run plan: a directory holding docker-compose.yml, or the file.
        plan: PathBuf,
        /// Print what was started as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop and remove a partitioned system that `up` started.
    Down {
        /// The run plan `up` was given.
        plan: PathBuf,
        /// Also remove its volumes (the data the partitions shared).
        #[arg(long)]
        volumes: bool,
        /// Print what was removed as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Tail the events of observing sessions live, until Ctrl-C.
    ///
    /// Filters combine: --session, --exe and --kind each may repeat. A
    /// stream that falls more than --buffer events behind is cut off by the
    /// daemon (exit code 6) so that it never slows the observation.
    Events {
        /// Only this session (repeatable).
        #[arg(long, value_name = "NAME")]
        session: Vec<String>,
        /// Only processes running this executable (repeatable), e.g. /usr/sbin/nginx.
        #[arg(long, value_name = "PATH")]
        exe: Vec<String>,
        /// Only this kind: fork, exit, running, syscall, or a syscall name
        /// such as openat (repeatable).
        #[arg(long, value_name = "KIND")]
        kind: Vec<String>,
        /// Events the daemon may buffer for this stream [default: 4096].
        #[arg(long)]
        buffer: Option<u32>,
        /// Print each event as one JSON line (docs/event-log.md) with its session and executable.
        #[arg(long)]
        json: bool,
    },
    /// Write a closed session (record and events) to a bundle file, to
    /// import it into another daemon (e.g. to merge sessions of one image
    /// observed on several nodes).
    Export {
        session: String,
        /// The bundle file to write; `-` for stdout.
        #[arg(long, short)]
        output: PathBuf,
    },
    /// Store a bundle written by `export` as a session of this daemon.
    Import {
        bundle: PathBuf,
        /// Store it under this name instead of the bundle's own.
        #[arg(long = "as", value_name = "NAME")]
        name: Option<String>,
    },
    /// Merge closed sessions of one image into a new session, whose model
    /// is the union of theirs; emit it to get one image that serves every
    /// workload that was observed.
    Merge {
        /// The new session's name.
        #[arg(long, value_name = "NAME")]
        into: String,
        /// The sessions to merge (two or more).
        #[arg(num_args = 2.., required = true)]
        sessions: Vec<String>,
    },
    /// Build the resource model of a recorded trace and report it.
    ///
    /// Prints each executable with the sizes of its read set R (what must
    /// exist for it to run as observed), its write set W (what it creates,
    /// changes, removes or connects to) and its failed lookups, then the exec
    /// call graph and the sockets. --json prints the whole model (format:
    /// docs/model-json.md); --dot prints the call graph for Graphviz
    /// (`cimplifierctl analyze --events t.jsonl --dot | dot -Tsvg > calls.svg`).
    #[command(group(ArgGroup::new("input").required(true).args(["events", "strace"])))]
    Analyze {
        /// Event log written by `cimplifierd trace --output FILE`.
        #[arg(long, value_name = "FILE")]
        events: Option<PathBuf>,
        /// strace log(s): one `strace -f -y -yy -s 4096 -o FILE` log, or
        /// all the FILE.PID files of `strace -ff`.
        #[arg(long, value_name = "FILE", num_args = 1..)]
        strace: Vec<PathBuf>,
        /// The container's file system (an unpacked image, or
        /// /proc/PID/root of a running container), to follow symlinks along
        /// each name and read `#!` lines. Without it only the names used
        /// and their directories are known.
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
        /// Print the whole model as JSON.
        #[arg(long, conflicts_with = "dot")]
        json: bool,
        /// Print the exec call graph as Graphviz DOT.
        #[arg(long)]
        dot: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cimplifierctl: error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// A gRPC status from the daemon.
#[derive(Debug, thiserror::Error)]
#[error("{message} ({code:?})")]
struct DaemonStatus {
    code: tonic::Code,
    message: String,
}

/// The daemon could not be reached.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
struct Unreachable(anyhow::Error);

fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::Error::new(DaemonStatus {
        code: s.code(),
        message: s.message().to_owned(),
    })
}

fn session_json(s: &cimplifier::api::pb::Session) -> serde_json::Value {
    serde_json::json!({
        "container": s.container, "container_id": s.container_id,
        "image_ref": s.image_ref, "image_id": s.image_id,
        "state": state_name(s.state), "end": s.end, "error": s.error,
        "from_first_exec": s.from_first_exec,
        "started_unix_ms": s.started_unix_ms, "duration_ms": s.duration_ms,
        "events": s.events, "aggregated_events": s.aggregated_events,
        "lost_events": s.lost_events, "unreadable_names": s.unreadable_names,
        "complete": s.complete,
        "executables": s.executables, "resources": s.resources,
        "gaps": s.gaps.iter().map(|g| serde_json::json!({
            "from_unix_ms": g.from_unix_ms, "to_unix_ms": g.to_unix_ms, "reason": g.reason,
        })).collect::<Vec<_>>(),
        "segments": s.segments.iter().map(|g| serde_json::json!({
            "first_event": g.first_event, "started_unix_ms": g.started_unix_ms,
            "from_first_exec": g.from_first_exec, "origin": g.origin,
        })).collect::<Vec<_>>(),
    })
}

impl Cli {
    /// Where the daemon is: --socket, or --addr with TLS (or --insecure).
    /// --addr without either is a usage error (exit 2).
    fn address(&self) -> cimplifier::api::Address {
        use cimplifier::api::{Address, ClientSecurity, ClientTls};
        let Some(addr) = &self.addr else {
            if self.tls_ca.is_some() || self.tls_cert.is_some() || self.insecure {
                usage_error(
                    "--tls-ca, --tls-cert, --tls-key and --insecure apply to --addr only; \
                     the unix socket (--socket) needs none",
                );
            }
            return Address::Unix(self.socket.clone());
        };
        let security = match (&self.tls_ca, self.insecure) {
            (_, true) => ClientSecurity::Insecure,
            (Some(ca), false) => ClientSecurity::Tls(ClientTls {
                ca: ca.clone(),
                identity: self.tls_cert.clone().zip(self.tls_key.clone()),
            }),
            (None, false) => usage_error(&format!(
                "--addr {addr} needs TLS: pass --tls-ca FILE (the CA of the daemon's \
                 certificate) with --tls-cert FILE and --tls-key FILE (this client's \
                 certificate, which the daemon requires), or --insecure if the daemon \
                 serves plaintext TCP (`cimplifierd serve --insecure`)"
            )),
        };
        Address::Tcp {
            addr: addr.clone(),
            security,
        }
    }
}

fn usage_error(message: &str) -> ! {
    use clap::CommandFactory;
    Cli::command()
        .bin_name("cimplifierctl")
        .error(clap::error::ErrorKind::MissingRequiredArgument, message)
        .exit()
}

/// The workload of `observe --exec` failed or was stopped: cimplifierctl
/// exits with its status.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct WorkloadFailed {
    code: u8,
    message: String,
}

fn exit_code(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<Unreachable>().is_some() {
        return 3;
    }
    if let Some(w) = e.downcast_ref::<WorkloadFailed>() {
        return w.code;
    }
    match e.downcast_ref::<DaemonStatus>().map(|s| s.code) {
        Some(tonic::Code::NotFound) => 4,
        Some(tonic::Code::FailedPrecondition | tonic::Code::AlreadyExists) => 5,
        Some(tonic::Code::InvalidArgument) => 2,
        Some(tonic::Code::ResourceExhausted) => 6,
        _ => 1,
    }
}

fn print(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) is not an error worth reporting.
    match out.write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn path_arg(s: &str, flag: &str) -> anyhow::Result<ContainerPath> {
    ContainerPath::new(s)
        .with_context(|| format!("{flag} {s:?}: give an absolute path inside the container"))
}

async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn state_name(state: i32) -> &'static str {
    use cimplifier::api::pb::session::State;
    match State::try_from(state) {
        Ok(State::Observing) => "observing",
        Ok(State::Closed) => "closed",
        Ok(State::Failed) => "failed",
        _ => "unknown",
    }
}

/// The names or address an event is about, for the table of `events`.
fn event_detail(json: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        return String::new();
    };
    let mut parts: Vec<String> = v["paths"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["path"].as_str().map(str::to_owned))
        .collect();
    for key in ["socket", "fd_path", "exe"] {
        if let Some(s) = v.get(key).filter(|s| !s.is_null()) {
            parts.push(s.as_str().map_or_else(|| s.to_string(), str::to_owned));
        }
    }
    if let Some(errno) = v["errno"].as_str() {
        parts.push(format!("= {errno}"));
    }
    parts.join(" ")
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// `emit --policy`: the daemon writes the partitions' images and run plan.
fn emit_partitioned(
    socket: &cimplifier::api::Address,
    request: cimplifier::api::pb::EmitRequest,
    explain: &[ContainerPath],
    json: bool,
) -> anyhow::Result<()> {
    use cimplifier::api::pb;
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(Duration::from_millis(120));
    let report = runtime()?.block_on(async {
        let mut api = cimplifier::api::connect(socket)
            .await
            .map_err(Unreachable)?;
        let mut stream = api.emit(request).await.map_err(status)?.into_inner();
        let mut report = None;
        while let Some(item) = stream.next().await {
            match item.map_err(status)?.update {
                Some(pb::emit_progress::Update::Step(step)) => bar.set_message(step),
                Some(pb::emit_progress::Update::ReportJson(json)) => {
                    report = Some(serde_json::from_str::<PartitionEmitReport>(&json)?)
                }
                None => {}
            }
        }
        report.context("the daemon ended the emit without a report")
    });
    bar.finish_and_clear();
    let report = report?;
    if json {
        return print(&(serde_json::to_string_pretty(&report)? + "\n"));
    }
    let mut text = report.render_text();
    for p in explain {
        text += &format!("  {p}: {}\n", report.explain(p));
    }
    print(&format!(
        "{text}  start it: cimplifierctl up {}\n",
        report
            .compose_file
            .parent()
            .unwrap_or(Path::new("."))
            .display()
    ))
}

fn summary(r: &EmitReport) -> String {
    let mut s = String::new();
    let target = r
        .tag
        .clone()
        .or_else(|| r.oci_dir.as_ref().map(|d| d.display().to_string()))
        .unwrap_or_default();
    s += &format!(
        "slim image {target} ({}) from {}\n",
        r.image_id, r.source_ref
    );
    s += &format!(
        "  kept {} of {} files: {} of {} ({:.1}% smaller)\n",
        r.kept_files,
        r.source_files,
        mb(r.slim_image_bytes),
        mb(r.source_image_bytes),
        r.reduction_percent
    );
    s += &format!(
        "  removed {} files, {}\n",
        r.removed_files,
        mb(r.removed_bytes)
    );
    s += &format!(
        "  session: {} events, {}, {}\n",
        r.events,
        if r.complete {
            "complete".to_owned()
        } else if r.lost_events > 0 {
            format!(
                "INCOMPLETE ({} events lost; emitted with --allow-incomplete)",
                r.lost_events
            )
        } else {
            "INCOMPLETE (emitted with --allow-incomplete)".to_owned()
        },
        if r.from_first_exec {
            "observed from the first exec"
        } else {
            "start-up NOT observed"
        }
    );
    s += "  run settings (the image's config):\n";
    s += &r.run.render_text("    ");
    if !r.docker_run.is_empty() {
        s += &format!("  run it as the container ran: {}\n", r.docker_run);
    }
    for d in &r.state_directories {
        s += &format!(
            "  state directory {}{}, written by {}: kept whole\n",
            d.dir,
            if d.in_image {
                ""
            } else {
                " (not in the image)"
            },
            d.written_by
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for t in &r.code_trees {
        s += &format!(
            "  code tree of {} under {}: loaded {} of {} {} files, kept all\n",
            t.exe,
            t.dir,
            t.loaded,
            t.files,
            t.kind.name()
        );
    }
    for d in &r.listed_directories {
        let by = d
            .listed_by
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        match d.why_missing {
            None => {
                s += &format!(
                    "  listed directory {} (by {by}): all {} entries kept\n",
                    d.dir, d.entries
                )
            }
            Some(why) => {
                s += &format!(
                    "  WARNING: listed directory {} (by {by}): {} of {} entries NOT kept ({} bytes; {}), \
                 a listing shows fewer names; --include {} keeps them\n",
                    d.dir,
                    d.missing,
                    d.entries,
                    d.missing_bytes,
                    why.describe(),
                    d.dir
                )
            }
        }
    }
    if r.unnamed_listings > 0 {
        s += &format!(
            "  WARNING: {} directory listings on descriptors the tracer could not name \
             (opened before the watch began): their entries may be missing; observe from \
             the first exec (not --attach)\n",
            r.unnamed_listings
        );
    }
    if r.strict {
        s += "  --strict: only what was observed (no state directories, code trees or listed directories kept whole)\n";
    }
    let t = &r.timings;
    s += &format!(
        "  time: read image {} ms, plan {} ms, write {} ms, load {} ms\n",
        t.read_image_ms, t.plan_ms, t.write_ms, t.load_ms
    );
    s
}

/// The summary of an observed session; an error for a failed one.
fn print_observed(session: &cimplifier::api::pb::Session) -> anyhow::Result<()> {
    if session.state == cimplifier::api::pb::session::State::Failed as i32 {
        anyhow::bail!("observing {} failed: {}", session.container, session.error);
    }
    print(&format!(
        "observed {} for {:.1} s: {} executables used {} resources; {} events stored, {} repeats counted; {}; ended: {}\n",
        session.container,
        session.duration_ms as f64 / 1000.0,
        session.executables.len(),
        session.resources,
        session.events,
        session.aggregated_events,
        if session.complete {
            "no events lost".to_owned()
        } else {
            let mut why = Vec::new();
            if session.lost_events > 0 {
                why.push(format!("{} events LOST", session.lost_events));
            }
            if session.unreadable_names > 0 {
                why.push(format!("{} names unreadable", session.unreadable_names));
            }
            if !session.gaps.is_empty() {
                why.push(format!("{} gaps", session.gaps.len()));
            }
            if !session.from_first_exec {
                why.push("start-up NOT observed".to_owned());
            }
            format!(
                "INCOMPLETE: {} (emit will refuse without --allow-incomplete)",
                why.join(", ")
            )
        },
        session.end,
    ))
}

/// How long a stopped workload has between SIGTERM and SIGKILL.
const WORKLOAD_GRACE: Duration = Duration::from_secs(5);

/// How the workload of `observe --exec` ended.
enum Ended {
    Exited(std::process::ExitStatus),
    /// By a signal to cimplifierctl; the status is the workload's, if it
    /// had started.
    Interrupted(nix::sys::signal::Signal, Option<std::process::ExitStatus>),
}

/// Ctrl-C or SIGTERM, listened for from now on (so one that comes while
/// the daemon is still starting the container is not lost).
fn interruption() -> anyhow::Result<impl Future<Output = nix::sys::signal::Signal>> {
    use nix::sys::signal::Signal;
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => Signal::SIGINT,
            _ = term.recv() => Signal::SIGTERM,
        }
    })
}

/// Resolves when the session is no longer observing (its container died,
/// say), with how it ended.
async fn session_ended(
    mut api: cimplifier::api::pb::cimplifier_client::CimplifierClient<tonic::transport::Channel>,
    name: &str,
) -> String {
    use cimplifier::api::pb;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Ok(list) = api.list_sessions(pb::ListSessionsRequest {}).await else {
            continue;
        };
        match list
            .into_inner()
            .sessions
            .into_iter()
            .find(|s| s.container == name)
        {
            Some(s) if s.state == pb::session::State::Observing as i32 => {}
            Some(s) if !s.end.is_empty() => return s.end,
            Some(s) if !s.error.is_empty() => return s.error,
            _ => return "closed".into(),
        }
    }
}

/// `observe CONTAINER --exec CMD`: observes, runs CMD against the
/// container, closes the session when CMD exits and exits with its status.
fn observe_exec(
    socket: &cimplifier::api::Address,
    request: cimplifier::api::pb::ObserveRequest,
    cmd: &str,
    ready_timeout: Duration,
    json: bool,
) -> anyhow::Result<()> {
    use cimplifier::api::{pb, workload};
    let (session, ended) = runtime()?.block_on(async {
        let stop = interruption()?;
        let mut api = cimplifier::api::connect(socket)
            .await
            .map_err(Unreachable)?;
        let started = api.observe(request).await.map_err(status)?.into_inner();
        let name = started.container.clone();
        let ended = drive(api.clone(), &started, cmd, ready_timeout, json, stop).await;
        // Whatever happened, the session is closed, as `stop` closes it.
        let closed = api
            .stop_observing(pb::StopObservingRequest {
                container: name.clone(),
            })
            .await
            .map_err(status);
        let session = match closed {
            Ok(_) => api
                .get_session(pb::GetSessionRequest { container: name })
                .await
                .map(tonic::Response::into_inner)
                .map_err(status),
            Err(e) => Err(e),
        };
        Ok::<_, anyhow::Error>((session, ended))
    })?;
    // A workload that could not run says why before anything else.
    let ended = ended?;
    let session = session.context("closing the session after the workload")?;
    let (code, what) = match &ended {
        Ended::Exited(s) => (workload::exit_code(*s), workload::describe(*s)),
        Ended::Interrupted(sig, s) => (
            128 + *sig as u8,
            match s {
                Some(s) => format!("was stopped on {sig} ({})", workload::describe(*s)),
                None => format!("did not start: {sig} came first"),
            },
        ),
    };
    if json {
        let mut v = session_json(&session);
        v["workload"] = serde_json::json!({
            "command": cmd, "exit_code": code, "status": what,
        });
        print(&(serde_json::to_string_pretty(&v)? + "\n"))?;
    } else {
        print_observed(&session)?;
    }
    if session.end != "stopped" && !session.end.is_empty() {
        eprintln!(
            "cimplifierctl: warning: the session of {} ended before the workload did ({}): \
             what the workload did afterwards was not observed",
            session.container, session.end
        );
    }
    if code == 0 {
        return Ok(());
    }
    Err(WorkloadFailed {
        code,
        message: format!(
            "the workload `{cmd}` {what}; the session {} is closed and kept",
            session.container
        ),
    }
    .into())
}

/// Waits until the container can be reached, then runs CMD until it exits
/// or cimplifierctl is told to stop.
async fn drive(
    api: cimplifier::api::pb::cimplifier_client::CimplifierClient<tonic::transport::Channel>,
    started: &cimplifier::api::pb::Session,
    cmd: &str,
    ready_timeout: Duration,
    json: bool,
    stop: impl Future<Output = nix::sys::signal::Signal>,
) -> anyhow::Result<Ended> {
    use cimplifier::api::workload::{self, Workload};
    let name = &started.container;
    let target = started.target.as_ref().with_context(|| {
        format!(
            "the daemon did not say where container {name} is (a cimplifierd older than this \
             cimplifierctl?): update cimplifierd, or observe without --exec"
        )
    })?;
    let address: std::net::IpAddr = match target.ip_address.parse() {
        Ok(a) => a,
        Err(_) if target.network_mode == "none" => anyhow::bail!(
            "container {name} has no network (--network none), so a workload cannot reach it: \
             run it with a network, or observe without --exec and drive it yourself"
        ),
        Err(_) => anyhow::bail!(
            "container {name} (network {}) has no IP address: it is not running any more; \
             `cimplifierctl sessions` shows how its session ended",
            target.network_mode
        ),
    };
    eprintln!(
        "observing {name} ({}){} at {address}",
        started.image_ref,
        if started.from_first_exec {
            " from its first exec"
        } else {
            ""
        }
    );
    tokio::pin!(stop);
    let ports: Vec<u16> = target
        .tcp_ports
        .iter()
        .filter_map(|&p| u16::try_from(p).ok())
        .collect();
    if !ports.is_empty() && !ready_timeout.is_zero() {
        let list = ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        eprintln!("waiting until {name} accepts connections on TCP port(s) {list}");
        let never = tokio::select! {
            never = workload::wait_for_ports(address, &ports, ready_timeout) => never,
            sig = &mut stop => return Ok(Ended::Interrupted(sig, None)),
            end = session_ended(api.clone(), name) => anyhow::bail!(
                "the session of {name} ended ({end}) before its ports accepted connections, \
                 so the workload was not run"
            ),
        };
        if !never.is_empty() {
            eprintln!(
                "cimplifierctl: warning: {name} did not accept connections on port(s) {never:?} \
                 within {}; running the workload anyway",
                humantime::format_duration(ready_timeout)
            );
        }
    }
    // A signal that came while the daemon was starting the container.
    tokio::select! {
        biased;
        sig = &mut stop => return Ok(Ended::Interrupted(sig, None)),
        _ = std::future::ready(()) => {}
    }
    eprintln!(
        "running the workload: sh -c {cmd:?} with {}={address}",
        workload::TARGET_VAR
    );
    let mut w = Workload::spawn(cmd, address, name, json)?;
    tokio::select! {
        status = w.wait() => Ok(Ended::Exited(status?)),
        sig = &mut stop => {
            eprintln!("{sig}: stopping the workload and closing the session");
            let status = w.stop(WORKLOAD_GRACE).await?;
            Ok(Ended::Interrupted(sig, Some(status)))
        }
    }
}

/// One call to the daemon; a gRPC status becomes an error naming it.
fn daemon<T>(
    socket: &cimplifier::api::Address,
    call: impl AsyncFnOnce(
        cimplifier::api::pb::cimplifier_client::CimplifierClient<tonic::transport::Channel>,
    ) -> Result<tonic::Response<T>, tonic::Status>,
) -> anyhow::Result<T> {
    runtime()?.block_on(async {
        let client = cimplifier::api::connect(socket)
            .await
            .map_err(Unreachable)?;
        call(client)
            .await
            .map(tonic::Response::into_inner)
            .map_err(status)
    })
}

fn run(cli: Cli) -> anyhow::Result<()> {
    use cimplifier::api::pb;
    let socket = match cli.command {
        Command::Completions { .. } | Command::Analyze { .. } => {
            cimplifier::api::Address::Unix(cli.socket.clone())
        }
        _ => cli.address(),
    };
    match cli.command {
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "cimplifierctl", &mut out);
            print(&String::from_utf8_lossy(&out))
        }
        Command::Version => {
            let v = daemon(&socket, async |mut c| {
                c.version(pb::VersionRequest {}).await
            })?;
            print(&format!(
                "cimplifierctl {}\ncimplifierd {} (APIs: {})\n",
                env!("CARGO_PKG_VERSION"),
                v.version,
                v.apis.join(", ")
            ))
        }
        Command::Sessions { json } => {
            let list = daemon(&socket, async |mut c| {
                c.list_sessions(pb::ListSessionsRequest {}).await
            })?;
            if json {
                let rows: Vec<serde_json::Value> = list.sessions.iter().map(session_json).collect();
                return print(&(serde_json::to_string_pretty(&rows)? + "\n"));
            }
            let mut text = format!(
                "{:<32} {:<10} {:>9} {:>6} {:>10} {:>9}  {}\n",
                "CONTAINER", "STATE", "EVENTS", "LOST", "UNREADABLE", "SECONDS", "IMAGE"
            );
            for s in &list.sessions {
                text += &format!(
                    "{:<32} {:<10} {:>9} {:>6} {:>10} {:>9.1}  {}{}\n",
                    s.container,
                    state_name(s.state),
                    s.events,
                    s.lost_events,
                    s.unreadable_names,
                    s.duration_ms as f64 / 1000.0,
                    s.image_ref,
                    if s.error.is_empty() {
                        String::new()
                    } else {
                        format!("  error: {}", s.error)
                    }
                );
            }
            print(&text)
        }
        Command::Stop { container } => {
            let s = daemon(&socket, async |mut c| {
                c.stop_observing(pb::StopObservingRequest { container })
                    .await
            })?;
            print(&format!(
                "{}: {} events, {} lost; ended: {}\n",
                s.container, s.events, s.lost_events, s.end
            ))
        }
        Command::Report {
            container,
            json,
            dot,
        } => {
            let format = if dot {
                pb::get_report_request::Format::Dot
            } else {
                pb::get_report_request::Format::Json
            };
            let r = daemon(&socket, async |mut c| {
                c.get_report(pb::GetReportRequest {
                    container,
                    format: format as i32,
                })
                .await
            })?;
            if dot {
                return print(&r.body);
            }
            if json {
                return print(&(r.body + "\n"));
            }
            let report: cimplifier::model::report::Report = serde_json::from_str(&r.body)
                .context("the daemon's report is not the model JSON this cimplifierctl reads")?;
            print(&report.table())
        }
        Command::Up { plan, json } => {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.enable_steady_tick(Duration::from_millis(120));
            let report = runtime()?.block_on(async {
                let docker = cimplifier::docker::connect()?;
                compose::up(&docker, &plan, &|step| bar.set_message(step.to_owned())).await
            });
            bar.finish_and_clear();
            let report = report?;
            if json {
                return print(&(serde_json::to_string_pretty(&report)? + "\n"));
            }
            let mut text = format!(
                "project {} is up ({})\n",
                report.project,
                report.compose_file.display()
            );
            for c in &report.containers {
                text += &format!("  {:<12} {}\n", c.service, c.container);
            }
            if !report.seeded.is_empty() {
                text += &format!(
                    "  new volumes, seeded from the source image: {}\n",
                    report.seeded.join(", ")
                );
            }
            if !report.kept.is_empty() {
                text += &format!(
                    "  volumes kept with their data: {}\n",
                    report.kept.join(", ")
                );
            }
            if let Some(ip) = &report.ip_address {
                text += &format!("  reachable at {ip} (the shared network namespace)\n");
            }
            print(&text)
        }
        Command::Down {
            plan,
            volumes,
            json,
        } => {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.enable_steady_tick(Duration::from_millis(120));
            let removed = runtime()?.block_on(async {
                let docker = cimplifier::docker::connect()?;
                compose::down(&docker, &plan, volumes, &|step| {
                    bar.set_message(step.to_owned())
                })
                .await
            });
            bar.finish_and_clear();
            let removed = removed?;
            if json {
                return print(&(serde_json::to_string_pretty(&removed)? + "\n"));
            }
            if removed.is_empty() {
                return print("nothing was running\n");
            }
            print(&format!("removed {}\n", removed.join(", ")))
        }
        Command::Plan {
            session,
            policy,
            json,
        } => {
            let policy_toml = std::fs::read_to_string(&policy)
                .with_context(|| format!("reading the policy file {}", policy.display()))?;
            let plan = daemon(&socket, async |mut c| {
                c.plan(pb::PlanRequest {
                    session,
                    policy_toml,
                })
                .await
            })?;
            print(&if json {
                plan.plan_json + "\n"
            } else {
                plan.text
            })
        }
        Command::Events {
            session,
            exe,
            kind,
            buffer,
            json,
        } => {
            for p in &exe {
                path_arg(p, "--exe")?;
            }
            let request = pb::StreamEventsRequest {
                sessions: session,
                executables: exe,
                kinds: kind,
                buffer: buffer.unwrap_or(0),
            };
            runtime()?.block_on(async {
                let mut api = cimplifier::api::connect(&socket)
                    .await
                    .map_err(Unreachable)?;
                let mut stream = api
                    .stream_events(request)
                    .await
                    .map_err(status)?
                    .into_inner();
                let stop = stop_signal();
                tokio::pin!(stop);
                loop {
                    let item = tokio::select! {
                        _ = &mut stop => return Ok(()),
                        item = stream.next() => item,
                    };
                    let Some(item) = item else { return Ok(()) };
                    let e = item.map_err(status)?;
                    let line = if json {
                        let mut v: serde_json::Value = serde_json::from_str(&e.json)?;
                        v["session"] = e.session.into();
                        v["executable"] = e.executable.into();
                        v.to_string() + "\n"
                    } else {
                        format!(
                            "{:<16} {:>7} {:<24} {:<10} {}\n",
                            e.session,
                            e.pid,
                            if e.executable.is_empty() {
                                e.comm
                            } else {
                                e.executable
                            },
                            if e.syscall.is_empty() {
                                e.kind
                            } else {
                                e.syscall
                            },
                            event_detail(&e.json)
                        )
                    };
                    print(&line)?;
                }
            })
        }
        Command::Export { session, output } => {
            let bundle = runtime()?.block_on(async {
                let mut api = cimplifier::api::connect(&socket)
                    .await
                    .map_err(Unreachable)?;
                let mut stream = api
                    .export_session(pb::ExportSessionRequest { session })
                    .await
                    .map_err(status)?
                    .into_inner();
                let mut bundle = Vec::new();
                while let Some(chunk) = stream.next().await {
                    bundle.extend_from_slice(&chunk.map_err(status)?.data);
                }
                Ok::<_, anyhow::Error>(bundle)
            })?;
            if output.as_os_str() == "-" {
                std::io::stdout().lock().write_all(&bundle)?;
                return Ok(());
            }
            std::fs::write(&output, &bundle)
                .with_context(|| format!("writing the bundle {}", output.display()))?;
            eprintln!("wrote {} ({})", output.display(), mb(bundle.len() as u64));
            Ok(())
        }
        Command::Import { bundle, name } => {
            let bytes = std::fs::read(&bundle)
                .with_context(|| format!("reading the bundle {}", bundle.display()))?;
            let mut chunks: Vec<pb::ImportChunk> = bytes
                .chunks(1 << 20)
                .map(|c| pb::ImportChunk {
                    name: String::new(),
                    data: c.to_vec(),
                })
                .collect();
            match chunks.first_mut() {
                Some(first) => first.name = name.unwrap_or_default(),
                None => anyhow::bail!("{} is empty: not a session bundle", bundle.display()),
            }
            let s = daemon(&socket, async |mut c| {
                c.import_session(tokio_stream::iter(chunks)).await
            })?;
            print(&format!(
                "imported session {} ({}): {} events\n",
                s.container, s.image_ref, s.events
            ))
        }
        Command::Merge { into, sessions } => {
            let s = daemon(&socket, async |mut c| {
                c.merge_sessions(pb::MergeSessionsRequest { into, sessions })
                    .await
            })?;
            print(&format!(
                "merged {} segments into session {} ({}): {} events{}\n",
                s.segments.len(),
                s.container,
                s.image_ref,
                s.events,
                if s.complete {
                    ""
                } else {
                    "; INCOMPLETE: a source lost events, has a gap or missed its start-up"
                }
            ))
        }
        Command::Observe {
            container: None,
            label: Some(label),
            exec,
            ..
        } => {
            if exec.is_some() {
                usage_error(
                    "--exec runs one workload against one container, and --label names \
                     containers not created yet, so there is no single target: observe by \
                     label, then drive each container with its own workload",
                );
            }
            let s = daemon(&socket, async |mut c| {
                c.observe(pb::ObserveRequest {
                    label_selector: label,
                    ..Default::default()
                })
                .await
            })?;
            print(&format!(
                "containers created with label {} will be observed from their first exec\n",
                s.label_selector
            ))
        }
        Command::Observe {
            container,
            duration,
            restart,
            attach,
            exec,
            ready_timeout,
            json,
            ..
        } => {
            let container = container.context("give a container or --label")?;
            if let Some(cmd) = exec {
                let request = pb::ObserveRequest {
                    container,
                    restart,
                    attach,
                    ..Default::default()
                };
                return observe_exec(&socket, request, &cmd, ready_timeout, json);
            }
            let session = runtime()?.block_on(async {
                let mut api = cimplifier::api::connect(&socket).await.map_err(Unreachable)?;
                let started = api
                    .observe(pb::ObserveRequest {
                        container: container.clone(),
                        restart,
                        attach,
                        duration_seconds: duration.map_or(0, |d| d.as_secs().max(1) as u32),
                        ..Default::default()
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                eprintln!(
                    "observing {} ({}){}; stop with Ctrl-C",
                    started.container,
                    started.image_ref,
                    if started.from_first_exec { " from its first exec" } else { "" }
                );
                let stop = stop_signal();
                tokio::pin!(stop);
                loop {
                    tokio::select! {
                        _ = &mut stop => {
                            let req = pb::StopObservingRequest { container: started.container.clone() };
                            break api.stop_observing(req).await.map_err(status).map(|_| ());
                        }
                        // The list is cheap; GetSession builds the model.
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {
                            let list = api.list_sessions(pb::ListSessionsRequest {}).await.map_err(status)?.into_inner();
                            let now = list.sessions.into_iter().find(|s| s.container == started.container);
                            if now.is_none_or(|s| s.state != pb::session::State::Observing as i32) {
                                break Ok(());
                            }
                        }
                    }
                }?;
                let req = pb::GetSessionRequest { container: started.container.clone() };
                api.get_session(req).await.map_err(status).map(|r| r.into_inner())
            })?;
            if json {
                return print(&(serde_json::to_string_pretty(&session_json(&session))? + "\n"));
            }
            print_observed(&session)
        }
        Command::Emit {
            container,
            tag,
            oci_dir,
            include,
            exclude,
            no_safety_set,
            no_safety_sets,
            allow_incomplete,
            list_removed,
            strict,
            explain,
            policy,
            out,
            json,
        } => {
            let mut slim = SlimOptions::with_safety_sets();
            slim.strict = strict;
            if no_safety_sets {
                slim.safety_sets.clear();
            }
            for name in &no_safety_set {
                let set = SafetySet::from_name(name).with_context(|| {
                    format!(
                        "--no-safety-set {name:?}: the sets are nss, ca-certificates, timezone and locales"
                    )
                })?;
                slim.safety_sets.remove(&set);
            }
            slim.include = include
                .iter()
                .map(|s| path_arg(s, "--include"))
                .collect::<Result<_, _>>()?;
            slim.exclude = exclude
                .iter()
                .map(|s| path_arg(s, "--exclude"))
                .collect::<Result<_, _>>()?;
            let explain: Vec<ContainerPath> = explain
                .iter()
                .map(|s| path_arg(s, "--explain"))
                .collect::<Result<_, _>>()?;
            let request = pb::EmitRequest {
                container: container.clone(),
                tag: tag.unwrap_or_default(),
                oci_dir: oci_dir
                    .map(|d| {
                        std::path::absolute(&d)
                            .unwrap_or(d)
                            .to_string_lossy()
                            .into_owned()
                    })
                    .unwrap_or_default(),
                include: slim.include.iter().map(|p| p.to_string()).collect(),
                exclude: slim.exclude.iter().map(|p| p.to_string()).collect(),
                no_safety_sets: SafetySet::ALL
                    .into_iter()
                    .filter(|s| !slim.safety_sets.contains(s))
                    .map(|s| s.name().to_owned())
                    .collect(),
                allow_incomplete,
                list_removed,
                strict: slim.strict,
                policy_toml: match &policy {
                    Some(p) => std::fs::read_to_string(p)
                        .with_context(|| format!("reading the policy file {}", p.display()))?,
                    None => String::new(),
                },
                out_dir: out
                    .map(|d| {
                        std::path::absolute(&d)
                            .unwrap_or(d)
                            .to_string_lossy()
                            .into_owned()
                    })
                    .unwrap_or_default(),
            };
            if policy.is_some() {
                return emit_partitioned(&socket, request, &explain, json);
            }
            let bar = indicatif::ProgressBar::new_spinner();
            bar.enable_steady_tick(Duration::from_millis(120));
            let report = runtime()?.block_on(async {
                let mut api = cimplifier::api::connect(&socket)
                    .await
                    .map_err(Unreachable)?;
                let mut stream = api.emit(request).await.map_err(status)?.into_inner();
                let mut report = None;
                while let Some(item) = stream.next().await {
                    match item.map_err(status)?.update {
                        Some(pb::emit_progress::Update::Step(step)) => bar.set_message(step),
                        Some(pb::emit_progress::Update::ReportJson(json)) => {
                            report = Some(serde_json::from_str::<EmitReport>(&json)?)
                        }
                        None => {}
                    }
                }
                report.context("the daemon ended the emit without a report")
            });
            bar.finish_and_clear();
            let report = report?;
            if json {
                return print(&(serde_json::to_string_pretty(&report)? + "\n"));
            }
            let mut text = summary(&report);
            text += "  audit report: emit-reports/SESSION.json in the daemon's state directory (or emit --json)\n";
            for p in &explain {
                text += &format!("  {p}: {}\n", report.explain(p));
            }
            print(&text)
        }
        Command::Analyze {
            events,
            strace,
            root,
            json,
            dot,
        } => {
            let input = match events {
                Some(path) => Input::Events(path),
                None => Input::Strace(strace),
            };
            let report = analyze(&input, root.as_deref())?;
            let text = if json {
                serde_json::to_string_pretty(&report)? + "\n"
            } else if dot {
                report.dot()
            } else {
                report.table()
            };
            if !report.source.complete {
                eprintln!(
                    "cimplifierctl: warning: the trace is incomplete ({} events lost, the log was cut off, or the start-up was not observed): the model may miss uses",
                    report.source.lost_events
                );
            }
            print(&text)
        }
    }
}
