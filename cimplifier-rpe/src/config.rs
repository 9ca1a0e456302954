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
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StubConfig {
    pub socket: PathBuf,
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

impl ServerConfig {
    pub fn load(path: &Path) -> Result<Self, String> {
        let cfg: Self = toml::from_str(&read(path)?)
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
            for a in p.allow.iter().chain(p.map.keys()).chain(p.map.values()) {
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
    pub fn load(path: &Path) -> Result<Self, String> {
        toml::from_str(&read(path)?)
            .map_err(|e| format!("{}: not a valid stub configuration: {e}", path.display()))
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
            "#,
        )
        .unwrap();
        assert_eq!(cfg.partitions[0].name, "web");
        assert!(cfg.check().is_ok());
        let bad = ServerConfig {
            partitions: vec![PartitionConfig {
                allow: vec!["convert".into()],
                ..cfg.partitions[0].clone()
            }],
        };
        assert!(bad.check().unwrap_err().contains("not an absolute path"));
    }
}
