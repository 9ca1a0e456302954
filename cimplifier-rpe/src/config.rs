//! Configuration files of the server and the stub (TOML; see docs/rpe.md).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// File name of the stub's configuration, looked up next to the stub binary.
pub const STUB_CONFIG_NAME: &str = ".cimplifier-rpe-stub.toml";
/// Fallback location of the stub's configuration.
pub const STUB_CONFIG_DEFAULT: &str = "/etc/cimplifier-rpe/stub.toml";

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(rename = "partition")]
    pub partitions: Vec<PartitionConfig>,
}

/// One caller partition: its socket and what it may execute here.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PartitionConfig {
    pub name: String,
    pub socket: PathBuf,
    /// Absolute paths the caller partition may execute in this partition.
    pub allow: Vec<PathBuf>,
    /// Optional: requested path -> path actually executed here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub map: BTreeMap<PathBuf, PathBuf>,
    /// Optional: what this caller may pass beyond the defaults, which
    /// treat every caller as hostile (docs/rpe.md, "Hostile callers").
    #[serde(default, skip_serializing_if = "Permit::is_default")]
    pub permit: Permit,
}

/// Exceptions to the server's defences, per caller partition. Absent, a
/// caller gets none: old configurations keep the strict defaults.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct Permit {
    /// Environment variables passed although the server drops them by
    /// default (glibc's unsecure list, interpreter hooks). A name ending
    /// in `*` permits every name with that prefix (`LD_*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Allowed path -> further argv[0] values it may be run with, besides
    /// its own file name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub argv0: BTreeMap<PathBuf, Vec<String>>,
    /// Kinds of file descriptor the caller may pass besides plain ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fds: Vec<FdKind>,
}

impl Permit {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// File descriptors the server refuses unless permitted: each lets a
/// caller reach further into the callee than its open files do.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum FdKind {
    /// Anonymous memory (`memfd_create`): code that exists in no file
    /// of either partition (`LD_PRELOAD=/proc/self/fd/N`).
    Memfd,
    /// `O_PATH`: a handle on a file of the caller, not an open file.
    OPath,
    /// A directory: `openat` relative to it walks the caller's tree.
    Directory,
}

impl std::fmt::Display for FdKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FdKind::Memfd => "memfd",
            FdKind::OPath => "o-path",
            FdKind::Directory => "directory",
        })
    }
}

/// Where a stub sends its call: the server socket of the callee's
/// partition. One caller partition may call into several others, so its
/// stubs can be routed by the path they run as.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct StubConfig {
    /// The socket for a stub that no route names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    /// Stub path (as run, or the file it resolves to) -> socket.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub routes: BTreeMap<PathBuf, PathBuf>,
    /// How long to keep retrying a socket that is not there yet or refuses
    /// (a partition's server still starting), in milliseconds.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub connect_timeout_ms: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

impl ServerConfig {
    pub fn load(path: &Path) -> Result<Self, String> {
        Self::parse(&read(path)?, path)
    }

    /// Parses and checks the configuration read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Self, String> {
        let cfg: Self = toml::from_str(text)
            .map_err(|e| format!("{}: not a valid server configuration: {e}", path.display()))?;
        cfg.check()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), String> {
        if self.partitions.is_empty() {
            return Err("no [[partition]] tables: the server would serve nobody".into());
        }
        let mut sockets = std::collections::HashSet::new();
        for p in &self.partitions {
            if !sockets.insert(&p.socket) {
                return Err(format!(
                    "socket {} is given to two partitions; each caller partition needs its own",
                    p.socket.display()
                ));
            }
            for a in p
                .allow
                .iter()
                .chain(p.map.keys())
                .chain(p.map.values())
                .chain(p.permit.argv0.keys())
            {
                if !a.is_absolute() {
                    return Err(format!(
                        "partition {}: {} is not an absolute path",
                        p.name,
                        a.display()
                    ));
                }
            }
        }
        Ok(())
    }
}

impl StubConfig {
    /// A configuration sending every call to `socket`.
    pub fn single(socket: PathBuf) -> Self {
        Self {
            socket: Some(socket),
            ..Self::default()
        }
    }

    pub fn load(path: &Path) -> Result<Self, String> {
        Self::parse(&read(path)?, path)
    }

    /// Parses and checks the configuration read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Self, String> {
        let cfg: Self = toml::from_str(text)
            .map_err(|e| format!("{}: not a valid stub configuration: {e}", path.display()))?;
        if cfg.socket.is_none() && cfg.routes.is_empty() {
            return Err(format!(
                "{}: names no socket; give `socket = \"...\"` or a [routes] table",
                path.display()
            ));
        }
        Ok(cfg)
    }

    /// The socket for a stub run as `invoked` whose file is `real`.
    pub fn socket_for(&self, invoked: &Path, real: &Path) -> Option<&Path> {
        self.routes
            .get(invoked)
            .or_else(|| self.routes.get(real))
            .or(self.socket.as_ref())
            .map(PathBuf::as_path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_config() {
        let cfg: ServerConfig = toml::from_str(
            r#"
            [[partition]]
            name = "web"
            socket = "/run/cimplifier-rpe/web/rpe.sock"
            allow = ["/usr/bin/convert"]
            [partition.map]
            "/usr/bin/convert" = "/opt/im/convert"
            [partition.permit]
            env = ["PYTHONPATH", "LD_*"]
            fds = ["memfd", "o-path", "directory"]
            [partition.permit.argv0]
            "/usr/bin/convert" = ["magick"]
            "#,
        )
        .unwrap();
        assert_eq!(cfg.partitions[0].name, "web");
        assert_eq!(cfg.partitions[0].permit.fds.len(), 3);
        assert!(cfg.check().is_ok());
        let bad = ServerConfig {
            partitions: vec![PartitionConfig {
                allow: vec!["convert".into()],
                ..cfg.partitions[0].clone()
            }],
        };
        assert!(bad.check().unwrap_err().contains("not an absolute path"));
    }

    #[test]
    fn a_configuration_without_permit_is_valid_and_permits_nothing() {
        let cfg = ServerConfig::parse(
            "[[partition]]\nname = \"web\"\nsocket = \"/run/web.sock\"\nallow = [\"/bin/ls\"]\n",
            Path::new("server.toml"),
        )
        .unwrap();
        assert_eq!(cfg.partitions[0].permit, Permit::default());
        let text = toml::to_string(&cfg).unwrap();
        assert!(!text.contains("permit"), "{text}");
        let bad = "[[partition]]\nname = \"web\"\nsocket = \"/s\"\nallow = []\n\
                   [partition.permit]\nfds = [\"socket\"]\n";
        assert!(ServerConfig::parse(bad, Path::new("server.toml")).is_err());
    }

    #[test]
    fn stub_routes_by_invoked_path_then_real_path_then_default() {
        let cfg: StubConfig = toml::from_str(
            r#"
            socket = "/run/default.sock"
            [routes]
            "/usr/sbin/nginx" = "/run/web.sock"
            "/usr/sbin/mariadbd" = "/run/db.sock"
            "#,
        )
        .unwrap();
        let route = |invoked: &str, real: &str| {
            cfg.socket_for(Path::new(invoked), Path::new(real))
                .map(|p| p.display().to_string())
        };
        assert_eq!(
            route("/usr/sbin/nginx", "/x").as_deref(),
            Some("/run/web.sock")
        );
        assert_eq!(
            route("/sbin/mariadbd", "/usr/sbin/mariadbd").as_deref(),
            Some("/run/db.sock")
        );
        assert_eq!(
            route("/bin/other", "/bin/other").as_deref(),
            Some("/run/default.sock")
        );
        let routes_only = StubConfig {
            socket: None,
            ..cfg
        };
        assert_eq!(
            routes_only.socket_for(Path::new("/bin/other"), Path::new("/bin/other")),
            None
        );
    }
}
