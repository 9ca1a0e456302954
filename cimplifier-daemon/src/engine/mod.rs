//! The container engines: every call to an engine goes through here.
//! [`docker`]: the Docker engine, through bollard; [`containerd`]:
//! containerd, through its gRPC API.

pub mod containerd;
pub mod docker;

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
    /// The engine of a session's container: containerd's when the session
    /// records a namespace, else the engine behind the Docker API.
    pub async fn of(record: &crate::store::SessionRecord) -> Self {
        if record.containerd.is_some() {
            return Engine::Containerd;
        }
        match docker::connect() {
            Ok(d) => match docker::CgroupLayout::of(&d).await {
                docker::CgroupLayout::Podman => Engine::Podman,
                docker::CgroupLayout::Docker => Engine::Docker,
            },
            Err(_) => Engine::Docker,
        }
    }

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
