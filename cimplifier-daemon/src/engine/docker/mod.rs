//! The Docker engine, through bollard: every call to the engine goes
//! through here. Containers ([`container`]: described, started, stopped,
//! their events, their names as users write them), which cgroup a running
//! one is in, how it was run ([`run`]) and where it is reached
//! ([`target`]); images read out and loaded in ([`image`]); the run plan's
//! Compose file, and `up` and `down` ([`compose`]).

pub mod compose;
pub mod container;
pub mod image;
pub mod output;
pub mod run;
pub mod tag;
pub mod target;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
pub use bollard::Docker;

use crate::trace::cgroup::cgroup_of_pid;

/// A running container, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub image: String,
    pub pid: u32,
    /// Its cgroup v2 directory on this host.
    pub cgroup_path: PathBuf,
}

/// Connects to the local engine (DOCKER_HOST or /var/run/docker.sock).
pub fn connect() -> Result<Docker> {
    Docker::connect_with_local_defaults().context(
        "connecting to the Docker engine (is dockerd running? `cargo xtask setup` starts it)",
    )
}

/// Where an engine that speaks Docker's API makes a container's cgroup with
/// its cgroupfs driver: dockerd below `docker/` as the container's id,
/// Podman (`podman system service`) below `libpod_parent/` as
/// `libpod-<id>`. The daemon makes it ahead, to watch a container from its
/// first exec; a container found elsewhere is still observed, its
/// start-up marked as missed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupLayout {
    Docker,
    Podman,
}

impl CgroupLayout {
    /// The engine's, from the components its version lists.
    pub async fn of(docker: &Docker) -> Self {
        let podman = docker.version().await.is_ok_and(|v| {
            v.components
                .iter()
                .flatten()
                .any(|c| c.name == "Podman Engine")
        });
        if podman {
            CgroupLayout::Podman
        } else {
            CgroupLayout::Docker
        }
    }

    /// The parent cgroup when the container names none (`--cgroup-parent`).
    pub fn default_parent(self) -> &'static str {
        match self {
            CgroupLayout::Docker => "docker",
            CgroupLayout::Podman => "libpod_parent",
        }
    }

    /// The container's cgroup's name below its parent.
    pub fn dir_name(self, id: &str) -> String {
        match self {
            CgroupLayout::Docker => id.to_owned(),
            CgroupLayout::Podman => format!("libpod-{id}"),
        }
    }

    /// The container id a cgroup named `dir` below the parent belongs to
    /// ([`CgroupLayout::dir_name`] read back); `None` for a cgroup that is
    /// no container's (Podman's `conmon`, a builder's).
    pub fn id_of_dir(self, dir: &str) -> Option<&str> {
        let id = match self {
            CgroupLayout::Docker => dir,
            CgroupLayout::Podman => dir.strip_prefix("libpod-")?,
        };
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
    }
}

/// Resolves a container name or id to its process and cgroup.
pub async fn resolve_container(docker: &Docker, name_or_id: &str) -> Result<ContainerInfo> {
    let details = docker
        .inspect_container(name_or_id, None)
        .await
        .with_context(|| {
            format!("container {name_or_id:?} not found by the Docker engine (see `docker ps -a`)")
        })?;
    let name = container::name_of(&details);
    let state = details.state.unwrap_or_default();
    let pid = state.pid.unwrap_or(0);
    if state.running != Some(true) || pid <= 0 {
        bail!(
            "container {name_or_id:?} is not running (state: {:?}); start it first",
            state.status
        );
    }
    let pid = pid as u32;
    Ok(ContainerInfo {
        id: details.id.unwrap_or_default(),
        name,
        image: details.config.and_then(|c| c.image).unwrap_or_default(),
        pid,
        cgroup_path: cgroup_of_pid(pid)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_containers_cgroup_name_gives_its_id_back_by_layout() {
        let id = "ab".repeat(32);
        for layout in [CgroupLayout::Docker, CgroupLayout::Podman] {
            assert_eq!(layout.id_of_dir(&layout.dir_name(&id)), Some(id.as_str()));
        }
        // Podman's cgroups are `libpod-<id>`: a bare id is not its, nor
        // its monitor's `conmon`.
        assert_eq!(CgroupLayout::Podman.id_of_dir(&id), None);
        assert_eq!(CgroupLayout::Podman.id_of_dir("conmon"), None);
        assert_eq!(
            CgroupLayout::Docker.id_of_dir(&format!("libpod-{id}")),
            None
        );
        assert_eq!(CgroupLayout::Docker.id_of_dir("buildkit"), None);
    }
}
