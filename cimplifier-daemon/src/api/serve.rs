//! Running the daemon: its config, its listeners, and shutdown.

use std::path::PathBuf;
use std::sync::Arc;

use super::{Service, pb};
use crate::trace::TracerConfig;

/// Where the daemon listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/cimplifier/cimplifier.sock";

/// Where the daemon reads its config unless told otherwise.
pub const DEFAULT_CONFIG: &str = "/etc/cimplifier/cimplifierd.toml";

/// The daemon's config file: every key optional; flags and the environment
/// override it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    pub socket: Option<PathBuf>,
    pub socket_group: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub ring_buffer_mib: Option<u32>,
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Also serve the API on this TCP address (mutual TLS, see
    /// [`super::TcpFlags`]).
    pub listen_tcp: Option<std::net::SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_client_ca: Option<PathBuf>,
    /// Delete closed sessions not written for this long, e.g. "30d".
    #[serde(default, deserialize_with = "human_duration")]
    pub retain_sessions: Option<std::time::Duration>,
    /// Heavy calls (emit, plan, import, export, merge, verify) at once.
    pub max_heavy_calls: Option<usize>,
    /// Observe labelled containers from the daemon's start (see
    /// [`ServeOptions::watch_labels`]).
    pub watch_labels: Option<bool>,
    /// False sends every repeat to user space (`--no-kernel-fold`).
    pub kernel_fold: Option<bool>,
    /// Where the syscall programs attach (`--hooks`).
    pub hooks: Option<crate::trace::loader::HookMode>,
    /// Log the kernel programs' anomalies through aya-log (`--kernel-log`).
    pub kernel_log: Option<bool>,
    /// Members of this group may call the read-only RPCs on the socket
    /// (docs/security.md); the socket is then open to every local user
    /// and each call is let in by the caller's credentials.
    pub read_only_group: Option<String>,
    /// Client certificates with one of these names are admin on TCP.
    #[serde(default)]
    pub tls_admin_identities: Vec<super::authz::TlsIdentity>,
    /// Client certificates with one of these names are read-only on TCP.
    #[serde(default)]
    pub tls_read_only_identities: Vec<super::authz::TlsIdentity>,
}

/// A duration written as a person would ("30d", "12h").
fn human_duration<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<std::time::Duration>, D::Error> {
    let text = <String as serde::Deserialize>::deserialize(d)?;
    humantime::parse_duration(&text)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("{text:?}: {e} (write e.g. 30d or 12h)")))
}

impl DaemonConfig {
    /// Reads `path`, or the default file when it exists. Errors name the
    /// file and, for bad TOML, the line.
    pub fn load(path: Option<&std::path::Path>) -> anyhow::Result<Self> {
        use anyhow::Context;
        let (path, must_exist) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => {
                return Ok(Self::default());
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("reading the config file {}", path.display()));
            }
        };
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))
    }
}

#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub socket: PathBuf,
    /// Group allowed on the socket (mode 0660); root's group otherwise.
    pub socket_group: Option<String>,
    pub state_dir: PathBuf,
    /// Serve Prometheus metrics here.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Also serve the API on TCP, with mutual TLS or (`--insecure`) without.
    pub tcp: Option<super::TcpListen>,
    pub tracer: TracerConfig,
    /// Delete closed sessions not written for this long; None keeps them.
    pub retain_sessions: Option<std::time::Duration>,
    /// Heavy calls (emit, plan, import, export, merge, verify) at once.
    pub max_heavy_calls: usize,
    /// Observe containers labelled `io.cimplifier.observe=true` from the
    /// start. This watches Docker's parent cgroup, so the syscall hooks stay
    /// attached and every container's syscalls pass through them; without
    /// it they are attached only while a session observes (or once
    /// `observe --label` asks for label watching).
    pub watch_labels: bool,
    /// Who has which role besides root and socket_group (whose
    /// `admin_group` is ignored here: `socket_group` is used).
    pub grants: super::authz::GrantConfig,
}

/// Calls one connection may have in flight at once.
const CALLS_PER_CONNECTION: usize = 32;
/// How long a call may take to answer (a streamed answer's stream may run
/// on: emit's progress, a live event tail).
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);
/// HTTP/2 pings find peers that went away without closing.
const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The limits every listener serves with, so no client can hold the
/// daemon's workers or connections without bound.
fn with_limits(builder: tonic::transport::Server) -> tonic::transport::Server {
    builder
        .concurrency_limit_per_connection(CALLS_PER_CONNECTION)
        .timeout(CALL_TIMEOUT)
        .http2_keepalive_interval(Some(KEEPALIVE))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
}

/// Serves the API and the standard gRPC health service on a unix socket,
/// and on TCP when asked, until `shutdown` resolves; then stops every
/// observation, writing each session, and removes the socket.
pub async fn serve(
    opts: ServeOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::os::unix::fs::PermissionsExt;
    let socket = &opts.socket;
    // TLS files and the TCP address are checked before the socket is made.
    let tcp = opts
        .tcp
        .as_ref()
        .map(|tcp| super::transport::bind_tcp(tcp).map(|bound| (tcp, bound)))
        .transpose()?;
    let grants = Arc::new(super::authz::Grants::resolve(&super::authz::GrantConfig {
        admin_group: opts.socket_group.clone(),
        ..opts.grants.clone()
    })?);
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the socket directory {}", dir.display()))?;
    }
    if socket.exists() {
        if tokio::net::UnixStream::connect(socket).await.is_ok() {
            anyhow::bail!(
                "another cimplifierd is serving on {}: stop it, or pass another --socket",
                socket.display()
            );
        }
        std::fs::remove_file(socket)
            .with_context(|| format!("removing the stale socket {}", socket.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(socket)
        .with_context(|| format!("listening on {}", socket.display()))?;
    // From here on the socket is ours: removed however serve ends, so a
    // start that fails below leaves no stale socket.
    let _remove = RemoveOnDrop(socket.clone());
    // Without a read-only group only root and socket_group may connect at
    // all; with one, anyone may, and the role of each call decides.
    let mode = if grants.socket_open_to_all() {
        0o666
    } else {
        0o660
    };
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", socket.display()))?;
    if let Some(group) = &opts.socket_group {
        let gid = nix::unistd::Group::from_name(group)
            .with_context(|| format!("looking up group {group}"))?
            .with_context(|| format!("--socket-group {group}: no such group"))?
            .gid;
        nix::unistd::chown(socket, None, Some(gid))
            .with_context(|| format!("giving {} to group {group}", socket.display()))?;
    }
    let store = Arc::new(crate::store::Store::open(&opts.state_dir)?);
    let observer = crate::session::Observer::start(opts.tracer.clone())?;
    if std::env::var_os(TEST_HOOKS).is_some_and(|v| v == "1") {
        test_hooks(&observer)?;
    }
    let mut tracing_state = observer.tracing();
    let manager = crate::session::Manager::new(observer, store)?;
    manager.recover().await?;
    if let Some(retain) = opts.retain_sessions {
        tokio::spawn(prune_every(manager.store().clone(), retain));
    }
    // Selectors given to `observe --label` before a restart still ask for it.
    if opts.watch_labels || !manager.store().selectors()?.is_empty() {
        manager.start_watching_labels();
    }
    let service = Arc::new(Service::new(
        manager,
        opts.state_dir.clone(),
        opts.max_heavy_calls,
    ));
    let (health, health_service) = tonic_health::server::health_reporter();
    // Set before the first call is answered; kept true after.
    set_health(&health, *tracing_state.borrow_and_update()).await;
    let following = tokio::spawn(follow_tracing(health.clone(), tracing_state));
    if let Some(addr) = opts.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening for metrics on {addr}"))?;
        let service = service.clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let service = service.clone();
                async move { service.metrics() }
            }),
        );
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("the metrics endpoint stopped: {e}");
            }
        });
        tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    }
    tracing::info!(socket = %socket.display(), state_dir = %opts.state_dir.display(), "serving");
    // The socket is bound and the sessions recovered: calls are answered
    // from here on (they queue until the server below polls them).
    notify_systemd("READY=1\nSTATUS=serving");
    let shutdown = futures::FutureExt::shared(shutdown);
    // After the signal, calls in flight get SHUTDOWN_GRACE to end; a call
    // that never ends on its own (a health Watch, a client that holds its
    // stream) would otherwise keep the daemon up until systemd kills it.
    let grace_over = {
        let shutdown = shutdown.clone();
        async move {
            shutdown.await;
            following.abort();
            set_health(&health, false).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        }
    };
    let api = pb::cimplifier_server::CimplifierServer::new(super::audit::Audited(service.clone()));
    use super::authz::{AuthzLayer, Transport};
    let on_socket = with_limits(tonic::transport::Server::builder())
        .layer(AuthzLayer::new(grants.clone(), Transport::Unix))
        .add_service(health_service.clone())
        .add_service(api.clone())
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            shutdown.clone(),
        );
    let on_tcp = async {
        let Some((tcp, (builder, incoming))) = tcp else {
            return Ok(());
        };
        let transport = match &tcp.security {
            super::TcpSecurity::MutualTls(_) => Transport::MutualTls,
            super::TcpSecurity::Insecure => Transport::Insecure,
        };
        let mut builder = with_limits(builder).layer(AuthzLayer::new(grants.clone(), transport));
        match &tcp.security {
            super::TcpSecurity::MutualTls(_) if !grants.any_tls_identity() => tracing::warn!(
                addr = %tcp.addr,
                "serving on TCP with mutual TLS, but no client certificate has a role: every \
                 TCP call will be refused. List client names in tls_admin_identities or \
                 tls_read_only_identities (--tls-admin-identity, --tls-read-only-identity)"
            ),
            super::TcpSecurity::MutualTls(_) => {
                tracing::info!(addr = %tcp.addr, "serving on TCP with mutual TLS")
            }
            super::TcpSecurity::Insecure => tracing::warn!(
                addr = %tcp.addr,
                "INSECURE: serving on plaintext TCP (--insecure), without TLS or any \
                 authentication: anyone who can reach this address controls this root daemon \
                 (starts containers, reads their files, writes images). Use --tls-cert, \
                 --tls-key and --tls-client-ca instead"
            ),
        }
        builder
            .add_service(health_service)
            .add_service(api)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
    };
    let result = tokio::select! {
        served = async { tokio::try_join!(on_socket, on_tcp) } => served.map(|_| ()),
        () = grace_over => {
            tracing::warn!(
                "shutting down: calls still open {} s after the signal (a health watch, a \
                 stream held open): their connections are closed",
                SHUTDOWN_GRACE.as_secs()
            );
            Ok(())
        }
    };
    notify_systemd("STOPPING=1\nSTATUS=closing every session");
    tracing::info!("shutting down: closing every session");
    service.manager().shutdown().await;
    // Closed now, the hooks go several at a time; left to the exit, one by one.
    let observer = Arc::clone(service.manager().observer());
    if let Ok(waited) = tokio::task::spawn_blocking(move || observer.wait_unhooked()).await {
        tracing::info!(
            millis = waited.as_millis() as u64,
            "shutting down: the syscall hooks are closed"
        );
    }
    result.context("serving the API")
}

/// How long calls in flight may go on after the shutdown signal.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// The environment variable that enables the test hooks (value `1`):
/// only the daemons the integration tests start set it.
pub const TEST_HOOKS: &str = "CIMPLIFIER_TEST_HOOKS";

/// Test hooks, for daemons started with [`TEST_HOOKS`]=1 only: SIGUSR2
/// makes the ring reader panic at its next batch of events, SIGUSR1 the
/// dispatcher at the next event it routes, as a bug would, so that the
/// tests see the supervisor restart them. Signals, not an RPC: no API
/// client, whatever its role, can reach them; only root (or the daemon's
/// own user) can signal the daemon.
fn test_hooks(observer: &Arc<crate::session::Observer>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    let observer = Arc::downgrade(observer);
    tracing::warn!(
        "{TEST_HOOKS}=1: test hooks are on (SIGUSR2 kills the ring reader, SIGUSR1 the \
         dispatcher); never in production"
    );
    tokio::spawn(async move {
        loop {
            let reader = tokio::select! {
                Some(()) = usr2.recv() => true,
                Some(()) = usr1.recv() => false,
                else => return,
            };
            let Some(observer) = observer.upgrade() else {
                return;
            };
            if reader {
                tracing::warn!("test hook: killing the ring reader at its next batch of events");
                observer.kill_reader();
            } else {
                tracing::warn!("test hook: killing the dispatcher at the next event it routes");
                observer.kill_dispatcher();
            }
        }
    });
    Ok(())
}

/// Keeps the health service true to the tracer: SERVING while the ring
/// reader and the dispatcher run, NOT_SERVING while the supervisor
/// restarts them (for the API's service and the server as a whole, "").
async fn follow_tracing(
    health: tonic_health::server::HealthReporter,
    mut tracing_state: tokio::sync::watch::Receiver<bool>,
) {
    while tracing_state.changed().await.is_ok() {
        let running = *tracing_state.borrow_and_update();
        set_health(&health, running).await;
    }
}

async fn set_health(health: &tonic_health::server::HealthReporter, tracing: bool) {
    use tonic_health::ServingStatus;
    let status = if tracing {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    let api =
        <pb::cimplifier_server::CimplifierServer<Service> as tonic::server::NamedService>::NAME;
    health.set_service_status(api, status).await;
    health.set_service_status("", status).await;
}

/// Tells systemd the daemon's state (`Type=notify`, sd_notify(3)): one
/// datagram to $NOTIFY_SOCKET, a path or, with a leading `@`, an abstract
/// socket. Not under systemd (no variable), nothing; a failure is logged.
fn notify_systemd(state: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = (|| {
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None => SocketAddr::from_pathname(&path)?,
        };
        UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr)
    })();
    if let Err(e) = sent {
        tracing::warn!("telling systemd {state:?} on NOTIFY_SOCKET {path:?}: {e}");
    }
}

/// Removes a file when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Deletes closed sessions older than `retain` now, then every
/// `retain` (at most hourly), so the store does not grow forever.
async fn prune_every(store: Arc<crate::store::Store>, retain: std::time::Duration) {
    let every = retain.min(std::time::Duration::from_secs(3600));
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let before = now.saturating_sub(retain).as_millis() as u64;
        let pruning = store.clone();
        match tokio::task::spawn_blocking(move || pruning.prune(before)).await {
            Ok(Ok(pruned)) if !pruned.is_empty() => tracing::info!(
                sessions = %pruned.join(", "),
                retain = %humantime::format_duration(retain),
                "deleted closed sessions older than the retention"
            ),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("pruning old sessions: {e:#}"),
            Err(e) => tracing::warn!("pruning old sessions: {e}"),
        }
        tokio::time::sleep(every).await;
    }
}
