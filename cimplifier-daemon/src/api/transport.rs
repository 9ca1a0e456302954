//! How the daemon is reached: its unix socket, or (optionally) TCP, which
//! needs mutual TLS unless plaintext is asked for explicitly with
//! `--insecure`. The server side builds the TCP listener and its TLS
//! config; the client side builds a channel to either.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig,
};

/// How long a TCP connection or a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

// ---- server ----

/// The daemon's optional TCP listener, served beside its unix socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpListen {
    pub addr: SocketAddr,
    pub security: TcpSecurity,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TcpSecurity {
    /// TLS, and every client must present a certificate that chains to
    /// `client_ca`.
    MutualTls(ServerTls),
    /// Plaintext, without any authentication (`--insecure`).
    Insecure,
}

/// The PEM files of the TCP listener's mutual TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTls {
    /// The server's certificate (chain), PEM (`--tls-cert`).
    pub cert: PathBuf,
    /// Its private key, PEM (`--tls-key`).
    pub key: PathBuf,
    /// The CA that client certificates must chain to, PEM (`--tls-client-ca`).
    pub client_ca: PathBuf,
}

/// What `cimplifierd serve` was told about TCP, by flags, the environment
/// or the config file.
#[derive(Clone, Debug, Default)]
pub struct TcpFlags {
    pub listen_tcp: Option<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_client_ca: Option<PathBuf>,
    pub insecure: bool,
}

impl TcpFlags {
    /// The TCP listener these flags ask for, if any. TCP needs all three
    /// TLS files, or `--insecure`; the error names what is missing.
    pub fn listener(self) -> anyhow::Result<Option<TcpListen>> {
        let tls_given: Vec<&str> = [
            (self.tls_cert.is_some(), "--tls-cert"),
            (self.tls_key.is_some(), "--tls-key"),
            (self.tls_client_ca.is_some(), "--tls-client-ca"),
        ]
        .into_iter()
        .filter_map(|(given, flag)| given.then_some(flag))
        .collect();
        let Some(addr) = self.listen_tcp else {
            if self.insecure || !tls_given.is_empty() {
                let given = if self.insecure {
                    "--insecure".to_owned()
                } else {
                    tls_given.join(", ")
                };
                anyhow::bail!(
                    "{given} given without a TCP listener: add --listen-tcp ADDR \
                     (or listen_tcp in the config file), or leave {given} out"
                );
            }
            return Ok(None);
        };
        if self.insecure {
            if !tls_given.is_empty() {
                anyhow::bail!(
                    "--insecure serves plaintext TCP, but {} ask(s) for TLS: \
                     leave out --insecure to serve mutual TLS, or the TLS files to serve plaintext",
                    tls_given.join(", ")
                );
            }
            return Ok(Some(TcpListen {
                addr,
                security: TcpSecurity::Insecure,
            }));
        }
        match (self.tls_cert, self.tls_key, self.tls_client_ca) {
            (Some(cert), Some(key), Some(client_ca)) => Ok(Some(TcpListen {
                addr,
                security: TcpSecurity::MutualTls(ServerTls {
                    cert,
                    key,
                    client_ca,
                }),
            })),
            (cert, key, ca) => {
                let missing: Vec<&str> = [
                    (cert.is_none(), "--tls-cert"),
                    (key.is_none(), "--tls-key"),
                    (ca.is_none(), "--tls-client-ca"),
                ]
                .into_iter()
                .filter_map(|(missing, flag)| missing.then_some(flag))
                .collect();
                anyhow::bail!(
                    "refusing to serve TCP on {addr} without mutual TLS: missing {}. \
                     Give the server's certificate (--tls-cert FILE), its private key \
                     (--tls-key FILE) and the CA that client certificates must chain to \
                     (--tls-client-ca FILE), all PEM, as flags, environment \
                     (CIMPLIFIER_TLS_CERT, CIMPLIFIER_TLS_KEY, CIMPLIFIER_TLS_CLIENT_CA) \
                     or config keys (tls_cert, tls_key, tls_client_ca); \
                     or pass --insecure to serve plaintext TCP that anyone who can reach \
                     {addr} may use to drive this root daemon",
                    missing.join(", ")
                )
            }
        }
    }
}

/// What a PEM file given to a flag must hold.
#[derive(Clone, Copy)]
enum Pem {
    Certificate,
    PrivateKey,
}

/// A PEM file's contents; the error names the flag and the file.
fn read_pem(path: &Path, flag: &str, kind: Pem) -> anyhow::Result<Vec<u8>> {
    let pem = std::fs::read(path).with_context(|| format!("{flag}: reading {}", path.display()))?;
    let text = String::from_utf8_lossy(&pem);
    let (found, what) = match kind {
        Pem::Certificate => (
            text.contains("-----BEGIN CERTIFICATE-----"),
            "a PEM certificate (-----BEGIN CERTIFICATE-----)",
        ),
        Pem::PrivateKey => (
            text.lines().any(|l| {
                l.starts_with("-----BEGIN ") && l.trim_end().ends_with("PRIVATE KEY-----")
            }),
            "a PEM private key (-----BEGIN PRIVATE KEY-----, or an RSA or EC one)",
        ),
    };
    if !found {
        anyhow::bail!("{flag} {}: give {what}", path.display());
    }
    Ok(pem)
}

/// The TLS config of the TCP listener: the server's identity, and client
/// certificates required, chaining to the client CA.
fn server_tls_config(tls: &ServerTls) -> anyhow::Result<ServerTlsConfig> {
    let cert = read_pem(&tls.cert, "--tls-cert", Pem::Certificate)?;
    let key = read_pem(&tls.key, "--tls-key", Pem::PrivateKey)?;
    let client_ca = read_pem(&tls.client_ca, "--tls-client-ca", Pem::Certificate)?;
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(cert, key))
        .client_ca_root(Certificate::from_pem(client_ca))
        .client_auth_optional(false)
        .timeout(HANDSHAKE_TIMEOUT))
}

/// The server builder and the bound listener for `tcp`: TLS files are read
/// and checked, and the address bound, before anything is served.
pub(super) fn bind_tcp(
    tcp: &TcpListen,
) -> anyhow::Result<(Server, tonic::transport::server::TcpIncoming)> {
    let builder = match &tcp.security {
        TcpSecurity::MutualTls(tls) => Server::builder()
            .tls_config(server_tls_config(tls)?)
            .map_err(|e| {
                anyhow::anyhow!(
                    "the TLS files do not make a server identity: {} (--tls-cert), {} \
                     (--tls-key), {} (--tls-client-ca): {}",
                    tls.cert.display(),
                    tls.key.display(),
                    tls.client_ca.display(),
                    error_chain(&e)
                )
            })?,
        TcpSecurity::Insecure => Server::builder(),
    };
    let incoming = tonic::transport::server::TcpIncoming::bind(tcp.addr)
        .with_context(|| format!("listening on TCP {} (--listen-tcp)", tcp.addr))?
        .with_nodelay(Some(true));
    Ok((builder, incoming))
}

/// An error and its sources, `: `-separated (tonic's errors often say
/// little without their sources).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !s.contains(&text) {
            s += ": ";
            s += &text;
        }
        source = inner.source();
    }
    s
}

// ---- client ----

/// Where a client finds the daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// The daemon's unix socket.
    Unix(PathBuf),
    /// `HOST:PORT` of the daemon's TCP listener.
    Tcp {
        addr: String,
        security: ClientSecurity,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientSecurity {
    Tls(ClientTls),
    /// Plaintext, to a daemon serving `--insecure`.
    Insecure,
}

/// The PEM files a client uses for TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientTls {
    /// The CA that signed the daemon's certificate (`--tls-ca`).
    pub ca: PathBuf,
    /// The client's certificate and key (`--tls-cert`, `--tls-key`): the
    /// daemon refuses clients without one.
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl From<&Path> for Address {
    fn from(socket: &Path) -> Self {
        Self::Unix(socket.to_owned())
    }
}

impl From<&PathBuf> for Address {
    fn from(socket: &PathBuf) -> Self {
        Self::Unix(socket.clone())
    }
}

impl From<PathBuf> for Address {
    fn from(socket: PathBuf) -> Self {
        Self::Unix(socket)
    }
}

impl From<&Address> for Address {
    fn from(a: &Address) -> Self {
        a.clone()
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(socket) => write!(f, "{}", socket.display()),
            Self::Tcp {
                addr,
                security: ClientSecurity::Tls(_),
            } => write!(f, "https://{addr}"),
            Self::Tcp {
                addr,
                security: ClientSecurity::Insecure,
            } => write!(f, "http://{addr}"),
        }
    }
}

/// A gRPC channel to the daemon at `address`, connected. Over TCP, one
/// health check makes sure the daemon answers: with TLS 1.3 the server
/// checks the client's certificate only after the client thinks the
/// handshake is done, so a refused client learns it on its first call.
/// Errors say what to check.
pub async fn connect_channel(address: &Address) -> anyhow::Result<Channel> {
    match address {
        Address::Unix(socket) => unix_channel(socket).await,
        Address::Tcp { addr, security } => {
            let (endpoint, what, hint) = match security {
                ClientSecurity::Tls(tls) => (
                    Endpoint::from_shared(format!("https://{addr}"))
                        .with_context(|| format!("--addr {addr}: give HOST:PORT"))?
                        .tls_config(client_tls_config(tls)?)
                        .map_err(|e| {
                            anyhow::anyhow!(
                                "setting up TLS with --tls-ca, --tls-cert and --tls-key: {}",
                                error_chain(&e)
                            )
                        })?,
                    "over mutual TLS",
                    "check the address, that the daemon serves TCP there \
                     (`cimplifierd serve --listen-tcp`), that --tls-ca is the CA that signed \
                     its certificate and that certificate names the host of --addr, and that \
                     --tls-cert/--tls-key are a client certificate signed by the daemon's \
                     --tls-client-ca",
                ),
                ClientSecurity::Insecure => (
                    Endpoint::from_shared(format!("http://{addr}"))
                        .with_context(|| format!("--addr {addr}: give HOST:PORT"))?,
                    "in plaintext (--insecure)",
                    "check the address, and that the daemon serves plaintext TCP there \
                     (`cimplifierd serve --listen-tcp ADDR --insecure`); a daemon serving \
                     mutual TLS needs --tls-ca, --tls-cert and --tls-key instead",
                ),
            };
            let no_identity = match security {
                ClientSecurity::Tls(ClientTls { identity: None, .. }) => {
                    "; no client certificate was given, and the daemon requires one: \
                     pass --tls-cert and --tls-key"
                }
                _ => "",
            };
            let failed = |why: String| {
                anyhow::anyhow!(
                    "connecting to cimplifierd at {addr} {what}: {why} ({hint}{no_identity})"
                )
            };
            let channel = endpoint
                .connect_timeout(HANDSHAKE_TIMEOUT)
                .connect()
                .await
                .map_err(|e| failed(error_chain(&e)))?;
            let mut probe = tonic::Request::new(tonic_health::pb::HealthCheckRequest::default());
            probe.set_timeout(HANDSHAKE_TIMEOUT);
            let probed = tonic_health::pb::health_client::HealthClient::new(channel.clone())
                .check(probe)
                .await;
            // A caller without a role is refused even the probe, but it did
            // reach the daemon: its call will say why it is refused.
            if let Err(status) = &probed
                && status.code() == tonic::Code::PermissionDenied
            {
                return Ok(channel);
            }
            probed.map_err(|status| {
                failed(match std::error::Error::source(&status) {
                    Some(source) => error_chain(source),
                    None => format!("{} ({:?})", status.message(), status.code()),
                })
            })?;
            Ok(channel)
        }
    }
}

fn client_tls_config(tls: &ClientTls) -> anyhow::Result<ClientTlsConfig> {
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read_pem(
        &tls.ca,
        "--tls-ca",
        Pem::Certificate,
    )?));
    if let Some((cert, key)) = &tls.identity {
        config = config.identity(Identity::from_pem(
            read_pem(cert, "--tls-cert", Pem::Certificate)?,
            read_pem(key, "--tls-key", Pem::PrivateKey)?,
        ));
    }
    Ok(config.timeout(HANDSHAKE_TIMEOUT))
}

/// The kind of the I/O error somewhere in `e`'s chain of sources.
fn io_kind(e: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        next = e.source();
    }
    None
}

async fn unix_channel(socket: &Path) -> anyhow::Result<Channel> {
    let path = socket.to_owned();
    let channel = Endpoint::try_from("http://cimplifierd.invalid")?
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .map_err(|e| {
            let hint = match io_kind(&e) {
                Some(std::io::ErrorKind::PermissionDenied) => {
                    "permission denied: the socket is for root and the daemon's --socket-group \
                     (and, when set, --read-only-group); run as root (sudo) or as a member of \
                     one of them"
                }
                _ => {
                    "is it running? `cimplifierd serve` starts it; --socket picks another, \
                     --addr a TCP listener"
                }
            };
            anyhow::Error::new(e).context(format!(
                "connecting to cimplifierd on {} ({hint})",
                socket.display()
            ))
        })?;
    Ok(channel)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(tcp: bool, cert: bool, key: bool, ca: bool, insecure: bool) -> TcpFlags {
        TcpFlags {
            listen_tcp: tcp.then(|| "127.0.0.1:7443".parse().unwrap()),
            tls_cert: cert.then(|| "c.pem".into()),
            tls_key: key.then(|| "k.pem".into()),
            tls_client_ca: ca.then(|| "ca.pem".into()),
            insecure,
        }
    }

    #[test]
    fn tcp_needs_all_three_tls_files_or_insecure() {
        assert_eq!(
            flags(false, false, false, false, false).listener().unwrap(),
            None
        );
        let e = flags(true, false, false, false, false)
            .listener()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("missing --tls-cert, --tls-key, --tls-client-ca")
                && e.contains("--insecure"),
            "{e}"
        );
        let e = flags(true, true, false, true, false)
            .listener()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("missing --tls-key.") && !e.contains("--tls-cert,"),
            "{e}"
        );
        let mtls = flags(true, true, true, true, false)
            .listener()
            .unwrap()
            .unwrap();
        assert!(matches!(mtls.security, TcpSecurity::MutualTls(_)));
        let plain = flags(true, false, false, false, true)
            .listener()
            .unwrap()
            .unwrap();
        assert_eq!(plain.security, TcpSecurity::Insecure);
    }

    #[test]
    fn tls_or_insecure_without_tcp_and_both_together_are_refused() {
        let e = flags(false, true, false, false, false)
            .listener()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--tls-cert given without a TCP listener") && e.contains("--listen-tcp"),
            "{e}"
        );
        let e = flags(false, false, false, false, true)
            .listener()
            .unwrap_err()
            .to_string();
        assert!(e.contains("--insecure given without"), "{e}");
        let e = flags(true, true, true, true, true)
            .listener()
            .unwrap_err()
            .to_string();
        assert!(e.contains("--insecure serves plaintext"), "{e}");
    }
}
