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
