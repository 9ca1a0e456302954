//! The command line: clap types, and the checks on arguments that clap
//! cannot express.

use std::path::PathBuf;
use std::time::Duration;

use cimplifier::trace::ContainerPath;
use clap::{ArgGroup, Args, Parser, Subcommand};

/// The heading the global flags that reach the daemon are listed under, so
/// that each command's own options come first in its help.
const DAEMON: &str = "Reaching the daemon (every command)";

#[derive(Parser)]
#[command(
    name = "cimplifierctl",
    version,
    about = "cimplifier's admin CLI: observe a container, then emit its least-privilege image",
    after_help = "Exit codes: 0 success; 1 failure; 2 usage error; 3 the daemon cannot be reached; \
                  4 no such container or session; 5 refused as asked (e.g. a session that lost events); \
                  6 an event stream was cut off for falling behind (events); \
                  7 verify found the output worse than the original; \
                  8 permission denied: your role does not allow the call (the message names \
                  the setting that grants it). \
                  observe --exec exits with the workload's status once it has run."
)]
pub struct Cli {
    /// The daemon's socket (`cimplifierd serve`); `analyze` works without it.
    #[arg(long, global = true, env = "CIMPLIFIER_SOCKET", default_value = cimplifier::api::DEFAULT_SOCKET,
          help_heading = DAEMON)]
    pub socket: PathBuf,
    /// Reach the daemon on TCP instead (`cimplifierd serve --listen-tcp`),
    /// with mutual TLS: needs --tls-ca, --tls-cert and --tls-key, or
    /// --insecure for a daemon serving plaintext.
    #[arg(
        long,
        global = true,
        help_heading = DAEMON,
        env = "CIMPLIFIER_ADDR",
        value_name = "HOST:PORT",
        conflicts_with = "socket"
    )]
    pub addr: Option<String>,
    /// With --addr: the CA certificate (PEM) that signed the daemon's
    /// certificate; that certificate must name the host of --addr.
    #[arg(long, global = true, help_heading = DAEMON, env = "CIMPLIFIER_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// With --addr: this client's certificate (PEM), signed by the CA the
    /// daemon trusts (its --tls-client-ca).
    #[arg(
        long,
        global = true,
        help_heading = DAEMON,
        env = "CIMPLIFIER_TLS_CLIENT_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// With --addr: the private key (PEM) of --tls-cert.
    #[arg(
        long,
        global = true,
        help_heading = DAEMON,
        env = "CIMPLIFIER_TLS_CLIENT_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// With --addr: talk plaintext TCP, to a daemon serving --insecure.
    #[arg(long, global = true, help_heading = DAEMON, conflicts_with_all = ["tls_ca", "tls_cert", "tls_key"])]
    pub insecure: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Observe a Docker or containerd container with eBPF while it serves its workload.
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
    Observe(ObserveArgs),
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
    #[command(group(ArgGroup::new("output").required(true).multiple(true).args(["tag", "oci_dir", "push"])))]
    Emit(EmitArgs),
    /// The daemon's version and API.
    Version {
        /// Print both versions and the APIs as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script, e.g. `cimplifierctl completions bash > /etc/bash_completion.d/cimplifierctl`.
    Completions { shell: clap_complete::Shell },
    /// Write the man pages: cimplifierctl(1) and one per command
    /// (cimplifierctl-emit(1), ...), e.g. `cimplifierctl man /usr/local/share/man/man1`.
    Man {
        /// The directory to write them to (made if missing).
        dir: PathBuf,
    },
    /// The daemon's sessions: observing, closed or failed.
    Sessions {
        /// Print them as JSON.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        action: Option<SessionsAction>,
    },
    /// Stop the daemon's observation of a container; the session is kept.
    /// With --label: forget a label selector `observe --label` gave, so
    /// containers created with the label are no longer observed (sessions
    /// it started go on).
    #[command(group(clap::ArgGroup::new("what").required(true).args(["container", "label"])))]
    Stop {
        container: Option<String>,
        /// The label selector (`key=value`) to forget.
        #[arg(long, value_name = "KEY=VALUE")]
        label: Option<String>,
        /// Print the closed session as JSON (as `sessions --json`).
        #[arg(long)]
        json: bool,
    },
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
    /// All or nothing: if a step fails or a partition exits as it starts,
    /// what this `up` created is removed and the error names the partition
    /// that exited, with its last log lines. A plan emitted into containerd
    /// (x-cimplifier-containerd-namespace) starts in that namespace through
    /// containerd's API ($CONTAINERD_ADDRESS, else
    /// /run/containerd/containerd.sock): its volumes are directories under
    /// /var/lib/cimplifier/containerd/NAMESPACE/, its tasks have only
    /// loopback (no CNI), so ports are not published.
    Up {
        /// The run plan: a directory holding docker-compose.yml, or the file.
        plan: PathBuf,
        /// Publish a port of the system on the host, as `docker run -p`:
        /// [HOST_IP:]HOST_PORT:CONTAINER_PORT[/PROTOCOL] (repeatable). It
        /// replaces what the plan publishes for that container port; by
        /// default the plan publishes what the observed container did.
        #[arg(long, value_name = "[IP:]HOST:CONTAINER")]
        publish: Vec<String>,
        /// Print what was started as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Prove an emitted output against the session it was made from.
    ///
    /// Starts the output (a slim image, or a run plan's partitions) under
    /// observation, runs the workload against it as `observe --exec` does
    /// (CIMPLIFIER_TARGET is the output's IP address), puts it through the
    /// lifecycle steps (restart, kill and start, SIGHUP) with the workload
    /// after each, then compares what it did with the original session.
    /// Every call that succeeded in the original and fails in the output
    /// (ENOENT, EACCES, EADDRINUSE, ...) is reported with the executable,
    /// the path or address, the partition and a fix; so is every program
    /// the output could not run. Exits 7 when anything regressed or the
    /// workload failed on the output, 0 when the output did as well.
    Verify(VerifyArgs),
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
        /// Print what was written as JSON (not with `-o -`).
        #[arg(long)]
        json: bool,
    },
    /// Store a bundle written by `export` as a session of this daemon.
    Import {
        /// The bundle file; `-` for stdin.
        bundle: PathBuf,
        /// Store it under this name instead of the bundle's own.
        #[arg(long = "as", value_name = "NAME")]
        name: Option<String>,
        /// Replace a closed session of that name (its events are deleted);
        /// without it an existing name is refused.
        #[arg(long)]
        replace: bool,
        /// Print the imported session as JSON (as `sessions --json`).
        #[arg(long)]
        json: bool,
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
        /// Replace a closed session named NAME (its events are deleted);
        /// without it an existing name is refused.
        #[arg(long)]
        replace: bool,
        /// Print the new session as JSON (as `sessions --json`).
        #[arg(long)]
        json: bool,
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

/// What `sessions` does besides listing.
#[derive(Subcommand)]
pub enum SessionsAction {
    /// Delete closed sessions and their events from the daemon's store
    /// (export them first to keep them). An observing session is refused.
    Rm {
        /// The sessions to delete.
        #[arg(required = true)]
        sessions: Vec<String>,
        /// Print what was deleted as JSON.
        #[arg(long)]
        json: bool,
    },
}

// The arguments of `observe` (its help is the variant's doc comment).
#[derive(Args)]
pub struct ObserveArgs {
    /// Docker container name or id; or a containerd container as
    /// containerd://NAMESPACE/ID (any namespace, k8s.io included; the
    /// daemon reaches containerd at $CONTAINERD_ADDRESS, else
    /// /run/containerd/containerd.sock). A containerd container without a
    /// running task has its task created and started by the daemon, under
    /// observation (one with a running task needs --restart or --attach).
    /// Its session is named from the CRI labels
    /// (POD-NAMESPACE_POD_CONTAINER) when it has them, else by its id.
    pub container: Option<String>,
    /// Instead of one container: observe every container created from
    /// now on with this label (KEY=VALUE), from its first exec. The
    /// daemon always does so for io.cimplifier.observe=true.
    #[arg(long, value_name = "KEY=VALUE", conflicts_with_all = ["duration", "restart", "attach"])]
    pub label: Option<String>,
    /// Stop after this long, e.g. 30s or 5m.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Restart a running container so its start-up is observed.
    #[arg(long, conflicts_with = "attach")]
    pub restart: bool,
    /// Observe a running container from now on; its start-up is missed,
    /// so `emit` needs --allow-incomplete for the session.
    #[arg(long)]
    pub attach: bool,
    /// Run this workload once the container runs, through `sh -c` as
    /// you, with CIMPLIFIER_TARGET set to the container's IP address
    /// (127.0.0.1 on the host's network) and CIMPLIFIER_CONTAINER to its
    /// name; first waits (see --ready-timeout) until the TCP ports it
    /// exposes accept connections. When CMD exits the session is closed and
    /// cimplifierctl exits with CMD's status. Ctrl-C or SIGTERM stops
    /// CMD and closes the session. CMD's stdin is empty; with --json its
    /// stdout goes to stderr.
    #[arg(long, value_name = "CMD", conflicts_with = "duration")]
    pub exec: Option<String>,
    /// With --exec: how long to wait for the exposed TCP ports before
    /// running CMD anyway (with a warning naming them); 0 runs it at once.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration,
          default_value = "30s", requires = "exec")]
    pub ready_timeout: Duration,
    /// After the workload, put the container through its lifecycle inside
    /// the same session: a graceful restart, a crash (SIGKILL) and start,
    /// and a reload (SIGHUP), with CMD run again after each. These run code
    /// that requests alone never reach (shutdown, crash recovery, reload),
    /// and a second pass takes paths the first cannot. The default with
    /// --exec for a server (a container that exposes TCP ports). Without
    /// --exec the steps run after Ctrl-C, before the session closes.
    #[arg(long, conflicts_with_all = ["no_lifecycle", "duration", "label"])]
    pub lifecycle: bool,
    /// Do not run the lifecycle steps, even for a server.
    #[arg(long)]
    pub no_lifecycle: bool,
    /// A closed session of the container's name is continued (a new
    /// segment) when the container runs the same image, and refused for
    /// another image; --replace deletes it and begins a new session.
    #[arg(long)]
    pub replace: bool,
    /// Print the session summary (with --label: the selector) as JSON.
    #[arg(long)]
    pub json: bool,
}

// The arguments of `verify` (its help is the variant's doc comment).
#[derive(Args)]
#[command(group(ArgGroup::new("output").required(true).args(["image", "plan"])))]
pub struct VerifyArgs {
    /// The original session (the observed container's name).
    pub session: String,
    /// The workload, run through `sh -c` with CIMPLIFIER_TARGET set to the
    /// output's IP address: the same command that drove the observation.
    #[arg(long, value_name = "CMD")]
    pub workload: String,
    /// The slim image to verify, e.g. myapp:slim (`emit --tag`).
    #[arg(long, value_name = "TAG")]
    pub image: Option<String>,
    /// The run plan to verify: the --out directory of `emit --policy`, or
    /// its docker-compose.yml. Its project must not be up. A plan emitted
    /// into containerd runs there, the workload inside its network
    /// namespace (CIMPLIFIER_TARGET=127.0.0.1).
    #[arg(long, value_name = "DIR")]
    pub plan: Option<PathBuf>,
    /// How long to wait for the output's TCP ports before each pass.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration,
          default_value = "30s")]
    pub ready_timeout: Duration,
    /// Skip the lifecycle steps: run the workload once. By default the
    /// output goes through the steps the original went through while
    /// observed (`observe --exec` runs them for servers).
    #[arg(long)]
    pub no_lifecycle: bool,
    /// Leave the output running afterwards (its sessions are kept anyway).
    #[arg(long)]
    pub keep: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

// The arguments of `emit` (its help is the variant's doc comment).
#[derive(Args)]
pub struct EmitArgs {
    /// The observed container's name.
    pub container: String,
    /// Load the image into Docker under this tag, e.g. myapp:slim.
    #[arg(long)]
    pub tag: Option<String>,
    /// Move --tag (or the partitions' tags) even when it names an image
    /// cimplifier did not make; without it such a tag is refused (exit 5).
    #[arg(long)]
    pub force: bool,
    /// Write the OCI image layout to this new (or empty) directory, as
    /// you: the daemon sends it back and writes no path a client names.
    #[arg(long, value_name = "DIR")]
    pub oci_dir: Option<PathBuf>,
    /// Keep this path and everything below it (repeatable).
    #[arg(long, value_name = "PATH")]
    pub include: Vec<String>,
    /// Drop this path and everything below it (repeatable).
    #[arg(long, value_name = "PATH")]
    pub exclude: Vec<String>,
    /// Leave out one safety set: nss, ca-certificates, timezone or locales (repeatable).
    #[arg(long, value_name = "SET")]
    pub no_safety_set: Vec<String>,
    /// Leave out every safety set.
    #[arg(long)]
    pub no_safety_sets: bool,
    /// Emit even if the session lost events; the report says so.
    #[arg(long)]
    pub allow_incomplete: bool,
    /// List every removed path in the report.
    #[arg(long)]
    pub list_removed: bool,
    /// Keep only what the run used (and what that needs): not the whole
    /// of each state directory, nor interpreters' whole code trees, nor
    /// every entry of a listed directory (the report names those).
    #[arg(long)]
    pub strict: bool,
    /// Say why PATH is kept or removed, with cap:NAME why a capability
    /// is granted or dropped, with syscall:NAME which executable made the
    /// syscall or that it is refused (repeatable).
    #[arg(long, value_name = "PATH|cap:NAME|syscall:NAME")]
    pub explain: Vec<String>,
    /// Partition by this policy (TOML, docs/policy.md) instead: one
    /// image per partition, named REPOSITORY-<partition>:TAG after
    /// --tag, with RPE stubs and servers, and a run plan in --out.
    #[arg(long, value_name = "FILE", requires_all = ["tag", "out"], conflicts_with = "oci_dir")]
    pub policy: Option<PathBuf>,
    /// The directory cimplifierctl writes, as you (the daemon sends them;
    /// it writes no path a client names): with --policy the run plan
    /// (docker-compose.yml, partition-report.json, a seccomp-PARTITION.json
    /// each); for a slim image its seccomp.json, which its `docker run`
    /// line names.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// With --policy: also write the run plan for Kubernetes (a
    /// Deployment: one container per partition, emptyDir volumes, the
    /// seed as an init container) to FILE, as you.
    #[arg(long, value_name = "FILE", requires = "policy")]
    pub k8s: Option<PathBuf>,
    /// Push the image to a registry, REGISTRY/REPOSITORY[:TAG], with
    /// gzip-compressed layers (with --policy, each partition's image and
    /// the seed's, named REPOSITORY-<partition>:TAG). Credentials come from
    /// your docker config (`docker login`), else none; plain HTTP only
    /// for localhost and 127.0.0.1.
    #[arg(long, value_name = "REF")]
    pub push: Option<String>,
    /// With --push: plain HTTP to a registry that is not on this host.
    #[arg(long, requires = "push")]
    pub insecure_registry: bool,
    /// The seccomp profile: enforce (refuse every syscall no executable
    /// was seen making, with EPERM) or log (a trial run: allow them, and
    /// the kernel logs each).
    #[arg(long, value_name = "MODE", value_parser = ["enforce", "log"], default_value = "enforce")]
    pub seccomp: String,
    /// No seccomp profile of ours: Docker's default applies.
    #[arg(long, conflicts_with = "seccomp")]
    pub no_seccomp: bool,
    /// Print the audit report as JSON instead of the summary.
    #[arg(long)]
    pub json: bool,
}

impl Cli {
    /// Where the daemon is: --socket, or --addr with TLS (or --insecure).
    /// --addr without either is a usage error (exit 2).
    pub fn address(&self) -> cimplifier::api::Address {
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

pub fn usage_error(message: &str) -> ! {
    use clap::CommandFactory;
    Cli::command()
        .bin_name("cimplifierctl")
        .error(clap::error::ErrorKind::MissingRequiredArgument, message)
        .exit()
}

/// An absolute path inside the container; anything else is a usage error
/// (exit 2) naming the flag.
pub fn path_arg(s: &str, flag: &str) -> anyhow::Result<ContainerPath> {
    ContainerPath::new(s).ok_or_else(|| {
        crate::daemon::usage(format!(
            "{flag} {}: give an absolute path inside the container",
            cimplifier::cli::quote_capped(s, 200)
        ))
    })
}
