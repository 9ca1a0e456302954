//! Who may call what. Every RPC needs a role ([`RPCS`]); a caller's role
//! comes from who it is: on the unix socket its peer credentials
//! (SO_PEERCRED), on TCP its client certificate's names. A call the caller's
//! role does not cover is refused with PERMISSION_DENIED before its request
//! is read, and the refusal is written to the audit log.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::Context as _;
use tonic::Status;
use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo, UdsConnectInfo};

/// The `tracing` target of the audit log: one line per mutating call and
/// per refused call.
pub const AUDIT_TARGET: &str = "cimplifier::audit";

/// What a caller may do. Admin includes everything read-only may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Look: sessions, reports, events, version, health.
    ReadOnly,
    /// Act: observe and restart containers, emit and load images, start
    /// containers (verify), import, export, merge and delete sessions.
    Admin,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ReadOnly => "read-only",
            Self::Admin => "admin",
        })
    }
}

/// Every RPC the daemon serves, by path, and the role it needs. A path not
/// listed is refused to everyone (`rpc_table_covers_every_rpc_of_proto`
/// fails when an RPC is added to proto/ without a line here).
pub const RPCS: &[(&str, Role)] = &[
    ("/cimplifier.v1.Cimplifier/Version", Role::ReadOnly),
    ("/cimplifier.v1.Cimplifier/ListSessions", Role::ReadOnly),
    ("/cimplifier.v1.Cimplifier/GetSession", Role::ReadOnly),
    ("/cimplifier.v1.Cimplifier/GetReport", Role::ReadOnly),
    ("/cimplifier.v1.Cimplifier/StreamEvents", Role::ReadOnly),
    // Starts or restarts containers' observation, or a label watch.
    ("/cimplifier.v1.Cimplifier/Observe", Role::Admin),
    ("/cimplifier.v1.Cimplifier/StopObserving", Role::Admin),
    // Builds images and loads them into Docker.
    ("/cimplifier.v1.Cimplifier/Emit", Role::Admin),
    // Reads the whole image and takes a heavy-call permit.
    ("/cimplifier.v1.Cimplifier/Plan", Role::Admin),
    // A bundle holds every event: every file name the workload touched.
    ("/cimplifier.v1.Cimplifier/ExportSession", Role::Admin),
    ("/cimplifier.v1.Cimplifier/ImportSession", Role::Admin),
    ("/cimplifier.v1.Cimplifier/MergeSessions", Role::Admin),
    ("/cimplifier.v1.Cimplifier/DeleteSession", Role::Admin),
    // Restarts or signals a container.
    ("/cimplifier.v1.Cimplifier/Lifecycle", Role::Admin),
    // Reads sessions and takes a heavy-call permit; cimplifierctl's verify
    // also starts containers, through Observe and Lifecycle.
    ("/cimplifier.v1.Cimplifier/Verify", Role::Admin),
    ("/grpc.health.v1.Health/Check", Role::ReadOnly),
    ("/grpc.health.v1.Health/Watch", Role::ReadOnly),
];

/// The role `path` needs; None for a path not in [`RPCS`].
pub fn required_role(path: &str) -> Option<Role> {
    RPCS.iter().find(|(p, _)| *p == path).map(|(_, r)| *r)
}

/// The method of a gRPC path (`Emit` of `/cimplifier.v1.Cimplifier/Emit`).
pub fn method(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// A name of a client certificate, as the config lists it: `CN=NAME` (the
/// subject's common name), `DNS:NAME`, `URI:URI`, `email:ADDRESS` or
/// `IP:ADDRESS` (subject alternative names).
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum TlsIdentity {
    CommonName(String),
    Dns(String),
    Uri(String),
    Email(String),
    Ip(IpAddr),
}

impl std::str::FromStr for TlsIdentity {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{s:?}: name a client certificate as CN=NAME (its subject's common name), \
                 DNS:NAME, URI:URI, email:ADDRESS or IP:ADDRESS (a subject alternative name)"
            )
        };
        let (kind, value) = if let Some(v) = s.strip_prefix("CN=") {
            ("CN", v)
        } else {
            s.split_once(':').ok_or_else(bad)?
        };
        if value.is_empty() {
            return Err(bad());
        }
        Ok(match kind {
            "CN" => Self::CommonName(value.to_owned()),
            "DNS" => Self::Dns(value.to_ascii_lowercase()),
            "URI" => Self::Uri(value.to_owned()),
            "email" => Self::Email(value.to_owned()),
            "IP" => Self::Ip(value.parse().map_err(|_| bad())?),
            _ => return Err(bad()),
        })
    }
}

impl TryFrom<String> for TlsIdentity {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl fmt::Display for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CommonName(v) => write!(f, "CN={v}"),
            Self::Dns(v) => write!(f, "DNS:{v}"),
            Self::Uri(v) => write!(f, "URI:{v}"),
            Self::Email(v) => write!(f, "email:{v}"),
            Self::Ip(v) => write!(f, "IP:{v}"),
        }
    }
}

/// The subject and the names of a DER client certificate; the error says
/// why it could not be read.
fn certificate_names(der: &[u8]) -> Result<(String, Vec<TlsIdentity>), String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let subject = cert.subject().to_string();
    let mut names: Vec<TlsIdentity> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .map(|cn| TlsIdentity::CommonName(cn.to_owned()))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            names.extend(match name {
                GeneralName::DNSName(n) => Some(TlsIdentity::Dns(n.to_ascii_lowercase())),
                GeneralName::URI(u) => Some(TlsIdentity::Uri((*u).to_owned())),
                GeneralName::RFC822Name(e) => Some(TlsIdentity::Email((*e).to_owned())),
                GeneralName::IPAddress(ip) => match ip.len() {
                    4 => <[u8; 4]>::try_from(*ip).ok().map(IpAddr::from),
                    16 => <[u8; 16]>::try_from(*ip).ok().map(IpAddr::from),
                    _ => None,
                }
                .map(TlsIdentity::Ip),
                _ => None,
            });
        }
    }
    Ok((subject, names))
}

/// Who made a call, as far as the transport can tell.
#[derive(Clone, Debug)]
pub enum Caller {
    /// A process on the unix socket, by its credentials at connect time.
    Unix {
        uid: u32,
        gid: u32,
        pid: Option<i32>,
        /// The user name of `uid`, when the user database has one.
        user: Option<String>,
    },
    /// A TCP client that presented this certificate (mutual TLS).
    Certificate {
        subject: String,
        names: Vec<TlsIdentity>,
        addr: Option<SocketAddr>,
    },
    /// A plaintext TCP peer (`--insecure`): no identity at all.
    Insecure { addr: Option<SocketAddr> },
    /// The transport told nothing (no peer credentials, an unreadable
    /// certificate): refused.
    Unknown { why: String },
}

impl Caller {
    pub fn uid(&self) -> Option<u32> {
        match self {
            Self::Unix { uid, .. } => Some(*uid),
            _ => None,
        }
    }

    pub fn gid(&self) -> Option<u32> {
        match self {
            Self::Unix { gid, .. } => Some(*gid),
            _ => None,
        }
    }

    pub fn subject(&self) -> Option<&str> {
        match self {
            Self::Certificate { subject, .. } => Some(subject),
            _ => None,
        }
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix {
                uid,
                gid,
                pid,
                user,
            } => {
                write!(f, "uid {uid}")?;
                if let Some(user) = user {
                    write!(f, " ({user})")?;
                }
                write!(f, " gid {gid}")?;
                if let Some(pid) = pid {
                    write!(f, " pid {pid}")?;
                }
                f.write_str(" on the unix socket")
            }
            Self::Certificate {
                subject,
                names,
                addr,
            } => {
                write!(f, "the client certificate {subject:?}")?;
                let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
                if !names.is_empty() {
                    write!(f, " (names {})", names.join(", "))?;
                }
                if let Some(addr) = addr {
                    write!(f, " from {addr}")?;
                }
                Ok(())
            }
            Self::Insecure { addr: Some(addr) } => write!(f, "plaintext TCP peer {addr}"),
            Self::Insecure { addr: None } => f.write_str("a plaintext TCP peer"),
            Self::Unknown { why } => write!(f, "an unidentified caller ({why})"),
        }
    }
}

/// How a listener's callers are identified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Unix,
    MutualTls,
    /// `--insecure`: every peer is admin, as the start-up warning says.
    Insecure,
}

impl Caller {
    /// The caller of a request that came in on `transport`, from the
    /// connection info tonic put in its extensions.
    fn of(transport: Transport, extensions: &http::Extensions) -> Self {
        match transport {
            Transport::Unix => match extensions.get::<UdsConnectInfo>().and_then(|i| i.peer_cred) {
                Some(cred) => Self::Unix {
                    uid: cred.uid(),
                    gid: cred.gid(),
                    pid: cred.pid(),
                    user: None,
                },
                None => Self::Unknown {
                    why: "no peer credentials on the unix socket".into(),
                },
            },
            Transport::MutualTls => {
                let info = extensions.get::<TlsConnectInfo<TcpConnectInfo>>();
                let addr = info.and_then(|i| i.get_ref().remote_addr());
                match info
                    .and_then(|i| i.peer_certs())
                    .and_then(|certs| certs.first().cloned())
                {
                    Some(cert) => match certificate_names(&cert) {
                        Ok((subject, names)) => Self::Certificate {
                            subject,
                            names,
                            addr,
                        },
                        Err(e) => Self::Unknown {
                            why: format!("its client certificate cannot be read: {e}"),
                        },
                    },
                    None => Self::Unknown {
                        why: "no client certificate".into(),
                    },
                }
            }
            Transport::Insecure => Self::Insecure {
                addr: extensions
                    .get::<TcpConnectInfo>()
                    .and_then(|i| i.remote_addr()),
            },
        }
    }
}

/// A group named in the config, resolved at start.
#[derive(Clone, Debug)]
struct GroupGrant {
    name: String,
    gid: u32,
}

impl GroupGrant {
    fn resolve(name: &str, key: &str) -> anyhow::Result<Self> {
        let group = nix::unistd::Group::from_name(name)
            .with_context(|| format!("looking up group {name} ({key})"))?
            .with_context(|| {
                format!("{key} {name}: no such group (`groupadd --system {name}` makes it)")
            })?;
        Ok(Self {
            name: name.to_owned(),
            gid: group.gid.as_raw(),
        })
    }

    /// Whether a process of `uid`/`gid` (user name `user`) belongs: its
    /// gid is the group's, or the group database lists the user. Read on
    /// every call, so removing a user from the group takes effect at once.
    fn has(&self, gid: u32, user: Option<&str>) -> bool {
        gid == self.gid
            || user.is_some_and(|user| {
                nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(self.gid))
                    .ok()
                    .flatten()
                    .is_some_and(|g| g.mem.iter().any(|m| m == user))
            })
    }
}

/// Who is granted which role, from the config.
#[derive(Clone, Debug, Default)]
pub struct Grants {
    /// socket_group: its members are admin (root always is).
    admin_group: Option<GroupGrant>,
    /// read_only_group.
    read_only_group: Option<GroupGrant>,
    /// tls_admin_identities.
    tls_admin: Vec<TlsIdentity>,
    /// tls_read_only_identities.
    tls_read_only: Vec<TlsIdentity>,
}

/// What the config says about roles, before groups are looked up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GrantConfig {
    /// `socket_group`: members are admin.
    pub admin_group: Option<String>,
    /// `read_only_group`: members are read-only.
    pub read_only_group: Option<String>,
    /// `tls_admin_identities`.
    pub tls_admin: Vec<TlsIdentity>,
    /// `tls_read_only_identities`.
    pub tls_read_only: Vec<TlsIdentity>,
}

impl Grants {
    /// Looks up the groups; a group that does not exist is an error naming
    /// its config key.
    pub fn resolve(config: &GrantConfig) -> anyhow::Result<Self> {
        Ok(Self {
            admin_group: config
                .admin_group
                .as_deref()
                .map(|g| GroupGrant::resolve(g, "--socket-group"))
                .transpose()?,
            read_only_group: config
                .read_only_group
                .as_deref()
                .map(|g| GroupGrant::resolve(g, "--read-only-group"))
                .transpose()?,
            tls_admin: config.tls_admin.clone(),
            tls_read_only: config.tls_read_only.clone(),
        })
    }

    /// Whether anyone but root can reach the socket in the read-only role,
    /// which then must be open to every local user (mode 0666): each call
    /// is then let in by the caller's credentials alone.
    pub fn socket_open_to_all(&self) -> bool {
        self.read_only_group.is_some()
    }

    /// Whether any client certificate can have a role.
    pub fn any_tls_identity(&self) -> bool {
        !self.tls_admin.is_empty() || !self.tls_read_only.is_empty()
    }

    /// The caller's role, or None. Reads the user and group databases for
    /// a unix caller (blocking).
    fn role_of(&self, caller: &mut Caller) -> Option<Role> {
        match caller {
            Caller::Unix { uid, gid, user, .. } => {
                if *uid == 0 {
                    return Some(Role::Admin);
                }
                *user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(*uid))
                    .ok()
                    .flatten()
                    .map(|u| u.name);
                let member = |g: &Option<GroupGrant>| {
                    g.as_ref().is_some_and(|g| g.has(*gid, user.as_deref()))
                };
                if member(&self.admin_group) {
                    Some(Role::Admin)
                } else if member(&self.read_only_group) {
                    Some(Role::ReadOnly)
                } else {
                    None
                }
            }
            Caller::Certificate { names, .. } => {
                let listed = |list: &[TlsIdentity]| names.iter().any(|n| list.contains(n));
                if listed(&self.tls_admin) {
                    Some(Role::Admin)
                } else if listed(&self.tls_read_only) {
                    Some(Role::ReadOnly)
                } else {
                    None
                }
            }
            Caller::Insecure { .. } => Some(Role::Admin),
            Caller::Unknown { .. } => None,
        }
    }

    /// What grants `needs` to a caller like this one, naming the config key,
    /// its flag and its variable.
    fn how_to_grant(&self, caller: &Caller, needs: Role) -> String {
        let group = |g: &Option<GroupGrant>| match g {
            Some(g) => format!("now {}", g.name),
            None => "now unset".to_owned(),
        };
        let admin = format!(
            "root and members of socket_group (--socket-group, CIMPLIFIER_SOCKET_GROUP; {}) are admin",
            group(&self.admin_group)
        );
        let read_only = format!(
            "members of read_only_group (--read-only-group, CIMPLIFIER_READ_ONLY_GROUP; {}) are read-only",
            group(&self.read_only_group)
        );
        let tls_admin = "a client certificate is admin when one of its names is listed in \
                         tls_admin_identities (--tls-admin-identity, CIMPLIFIER_TLS_ADMIN_IDENTITIES)";
        let tls_read_only = "read-only when listed in tls_read_only_identities \
                             (--tls-read-only-identity, CIMPLIFIER_TLS_READ_ONLY_IDENTITIES)";
        match (caller, needs) {
            (Caller::Unix { .. }, Role::Admin) => admin,
            (Caller::Unix { .. }, Role::ReadOnly) => format!("{read_only}; {admin}"),
            (Caller::Certificate { .. }, Role::Admin) => tls_admin.to_owned(),
            (Caller::Certificate { .. }, Role::ReadOnly) => {
                format!("{tls_admin}, {tls_read_only}")
            }
            (Caller::Insecure { .. } | Caller::Unknown { .. }, _) => {
                "callers are identified by their peer credentials on the unix socket, or their \
                 client certificate on TCP with mutual TLS"
                    .to_owned()
            }
        }
    }

    /// Lets the call at `path` through, or the PERMISSION_DENIED status
    /// naming the caller, the call, the role it needs and what grants it.
    pub fn authorize(&self, caller: &mut Caller, path: &str) -> Result<Role, Status> {
        let role = self.role_of(caller);
        let Some(needs) = required_role(path) else {
            return Err(Status::permission_denied(format!(
                "permission denied: {path} is not in the daemon's role table, so no one may call it"
            )));
        };
        match role {
            Some(role) if role >= needs => Ok(role),
            _ => {
                let has = match role {
                    Some(role) => format!("has the {role} role"),
                    None => "has no role".to_owned(),
                };
                Err(Status::permission_denied(format!(
                    "permission denied: {caller} {has}, and {} needs the {needs} role: {}",
                    method(path),
                    self.how_to_grant(caller, needs)
                )))
            }
        }
    }
}

/// Checks every call on one listener against the grants, before the
/// request is read; a caller let in is put in the request's extensions for
/// the audit log ([`super::audit`]).
#[derive(Clone)]
pub struct AuthzLayer {
    grants: Arc<Grants>,
    transport: Transport,
}

impl AuthzLayer {
    pub fn new(grants: Arc<Grants>, transport: Transport) -> Self {
        Self { grants, transport }
    }
}

impl<S> tower::Layer<S> for AuthzLayer {
    type Service = Authz<S>;

    fn layer(&self, inner: S) -> Authz<S> {
        Authz {
            inner,
            grants: self.grants.clone(),
            transport: self.transport,
        }
    }
}

#[derive(Clone)]
pub struct Authz<S> {
    inner: S,
    grants: Arc<Grants>,
    transport: Transport,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Authz<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone that was not made ready waits for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let grants = self.grants.clone();
        let mut caller = Caller::of(self.transport, request.extensions());
        let path = request.uri().path().to_owned();
        Box::pin(async move {
            // The user and group databases may be NSS lookups that block.
            let decided = tokio::task::spawn_blocking(move || {
                let allowed = grants.authorize(&mut caller, &path);
                (caller, path, allowed)
            })
            .await;
            let (caller, path, allowed) = match decided {
                Ok(decided) => decided,
                Err(e) => {
                    return Ok(
                        Status::internal(format!("checking the caller's role: {e}")).into_http()
                    );
                }
            };
            match allowed {
                Ok(_) => {
                    request.extensions_mut().insert(caller);
                    inner.call(request).await
                }
                Err(status) => {
                    tracing::warn!(
                        target: AUDIT_TARGET,
                        caller = %caller,
                        uid = caller.uid(),
                        gid = caller.gid(),
                        subject = caller.subject(),
                        rpc = method(&path),
                        outcome = "denied",
                        "{}",
                        status.message()
                    );
                    Ok(status.into_http())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    mod generated {
        include!(concat!(env!("OUT_DIR"), "/proto_rpcs.rs"));
    }

    /// The paths of every method of a service in a file descriptor set.
    fn paths_in(fds: &prost_types::FileDescriptorSet) -> Vec<String> {
        fds.file
            .iter()
            .flat_map(|file| {
                file.service.iter().flat_map(move |service| {
                    service.method.iter().map(move |m| {
                        format!("/{}.{}/{}", file.package(), service.name(), m.name())
                    })
                })
            })
            .collect()
    }

    #[test]
    fn rpc_table_covers_every_rpc_of_proto() {
        use prost::Message;
        let health = prost_types::FileDescriptorSet::decode(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .expect("tonic-health's descriptors");
        let served: Vec<String> = generated::PROTO_RPCS
            .iter()
            .map(|p| p.to_string())
            .chain(paths_in(&health))
            .collect();
        assert!(served.len() >= 17, "{served:?}");
        for path in &served {
            assert!(
                required_role(path).is_some(),
                "{path} has no role: add it to api::authz::RPCS (and to docs/security.md)"
            );
        }
        for (path, _) in RPCS {
            assert!(
                served.iter().any(|s| s == path),
                "{path} is in RPCS but not served: remove it"
            );
        }
    }

    #[test]
    fn mutating_calls_need_admin_and_looking_does_not() {
        for rpc in [
            "Observe",
            "StopObserving",
            "Emit",
            "Plan",
            "ExportSession",
            "ImportSession",
            "MergeSessions",
            "DeleteSession",
            "Lifecycle",
            "Verify",
        ] {
            let path = format!("/cimplifier.v1.Cimplifier/{rpc}");
            assert_eq!(required_role(&path), Some(Role::Admin), "{rpc}");
        }
        for rpc in [
            "Version",
            "ListSessions",
            "GetSession",
            "GetReport",
            "StreamEvents",
        ] {
            let path = format!("/cimplifier.v1.Cimplifier/{rpc}");
            assert_eq!(required_role(&path), Some(Role::ReadOnly), "{rpc}");
        }
        assert_eq!(required_role("/cimplifier.v1.Cimplifier/Nope"), None);
    }

    #[test]
    fn tls_identities_parse_and_print_as_written() {
        for s in [
            "CN=cimplifier admin",
            "DNS:node-1.example",
            "URI:spiffe://example/ops",
            "email:ops@example.org",
            "IP:10.0.0.7",
        ] {
            assert_eq!(s.parse::<TlsIdentity>().unwrap().to_string(), s);
        }
        assert_eq!(
            "DNS:Node-1".parse::<TlsIdentity>().unwrap(),
            TlsIdentity::Dns("node-1".into())
        );
        for bad in ["admin", "CN=", "OU=ops", "IP:nope", "dns:x"] {
            let e = bad.parse::<TlsIdentity>().unwrap_err();
            assert!(e.contains("CN=NAME") && e.contains("DNS:NAME"), "{e}");
        }
    }

    fn unix(uid: u32, gid: u32) -> Caller {
        Caller::Unix {
            uid,
            gid,
            pid: Some(42),
            user: None,
        }
    }

    fn grants() -> Grants {
        Grants {
            admin_group: Some(GroupGrant {
                name: "cimplifier".into(),
                gid: 4000,
            }),
            read_only_group: Some(GroupGrant {
                name: "cimplifier-ro".into(),
                gid: 4001,
            }),
            tls_admin: vec!["CN=ops".parse().unwrap()],
            tls_read_only: vec!["DNS:dashboard.example".parse().unwrap()],
        }
    }

    const EMIT: &str = "/cimplifier.v1.Cimplifier/Emit";
    const LIST: &str = "/cimplifier.v1.Cimplifier/ListSessions";

    #[test]
    fn unix_callers_get_the_role_of_their_group() {
        let g = grants();
        // uids no test host has, so only the gid decides.
        assert_eq!(g.authorize(&mut unix(0, 0), EMIT).unwrap(), Role::Admin);
        assert_eq!(
            g.authorize(&mut unix(3_999_001, 4000), EMIT).unwrap(),
            Role::Admin
        );
        assert_eq!(
            g.authorize(&mut unix(3_999_001, 4001), LIST).unwrap(),
            Role::ReadOnly
        );
        let refused = g.authorize(&mut unix(3_999_001, 4001), EMIT).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        let m = refused.message();
        assert!(
            m.contains("uid 3999001")
                && m.contains("has the read-only role")
                && m.contains("Emit needs the admin role")
                && m.contains(
                    "socket_group (--socket-group, CIMPLIFIER_SOCKET_GROUP; now cimplifier)"
                ),
            "{m}"
        );
        let nobody = g.authorize(&mut unix(3_999_001, 4002), LIST).unwrap_err();
        let m = nobody.message();
        assert!(
            m.contains("has no role")
                && m.contains("ListSessions needs the read-only role")
                && m.contains("read_only_group"),
            "{m}"
        );
        // Without a read-only group, looking is for admins only.
        let admin_only = Grants {
            read_only_group: None,
            ..grants()
        };
        assert!(
            admin_only
                .authorize(&mut unix(3_999_001, 4001), LIST)
                .is_err()
        );
        assert!(!admin_only.socket_open_to_all());
        assert!(g.socket_open_to_all());
    }

    #[test]
    fn certificates_get_the_role_their_names_are_listed_for() {
        let g = grants();
        let cert = |names: &[&str]| Caller::Certificate {
            subject: "CN=x".into(),
            names: names.iter().map(|n| n.parse().unwrap()).collect(),
            addr: None,
        };
        assert_eq!(
            g.authorize(&mut cert(&["CN=ops"]), EMIT).unwrap(),
            Role::Admin
        );
        assert_eq!(
            g.authorize(&mut cert(&["CN=x", "DNS:dashboard.example"]), LIST)
                .unwrap(),
            Role::ReadOnly
        );
        let m = g
            .authorize(&mut cert(&["DNS:dashboard.example"]), EMIT)
            .unwrap_err();
        assert!(m.message().contains("tls_admin_identities"), "{m}");
        let m = g.authorize(&mut cert(&["CN=stranger"]), LIST).unwrap_err();
        assert!(
            m.message().contains("has no role") && m.message().contains("tls_read_only_identities"),
            "{m}"
        );
        // Names are compared whole: a common name is not a DNS name.
        assert!(g.authorize(&mut cert(&["DNS:ops"]), EMIT).is_err());
        let unknown = Caller::Unknown {
            why: "no client certificate".into(),
        };
        assert!(g.authorize(&mut unknown.clone(), LIST).is_err());
        assert!(
            g.authorize(&mut unix(0, 0), "/cimplifier.v1.Cimplifier/Nope")
                .is_err(),
            "a path not in the table is refused even to root"
        );
    }
}
