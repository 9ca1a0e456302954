//! The container engines: every call to an engine goes through here.
//! [`docker`]: the Docker engine, through bollard; [`containerd`]:
//! containerd, through its gRPC API; [`hardening`]: what a slim image's
//! container is created with; [`registry`]: credentials for a registry.

pub mod containerd;
pub mod docker;
pub mod hardening;
pub mod registry;

/// The engine a session's container ran on, which its source image is
/// read from and its output goes to: what reports name, so that nothing
/// says Docker of an image in Podman or containerd.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    /// dockerd (reports written before engines were named say nothing:
    /// they were Docker's).
    #[default]
    Docker,
    /// Podman, through its Docker-compatible API.
    Podman,
    Containerd,
}

impl Engine {
    /// As users write it.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Docker => "Docker",
            Engine::Podman => "Podman",
            Engine::Containerd => "containerd",
        }
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
