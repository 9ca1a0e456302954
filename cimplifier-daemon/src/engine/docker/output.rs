//! Containers of an emitted output that `verify` starts: created from the
//! slim image with what the original was run with that an image cannot
//! hold (`-i`, `-t`, `--init`), and removed afterwards.

use anyhow::{Context, Result};
use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptions, RemoveContainerOptions};

use super::run::{RunSettings, RuntimeSettings};
use crate::place::privileges::{HARDENING_LABEL, Hardening};

/// How the original container was run, when the engine still has it.
pub async fn original_runtime(docker: &Docker, container_id: &str) -> Option<RuntimeSettings> {
    let details = docker.inspect_container(container_id, None).await.ok()?;
    Some(RunSettings::from_inspect(&details).runtime)
}

/// Creates (does not start) container `name` from `image`. Ports are not
/// published: the workload reaches the container at its own address.
pub async fn create(
    docker: &Docker,
    name: &str,
    image: &str,
    runtime: &RuntimeSettings,
) -> Result<String> {
    let hardening = hardening_of(docker, image).await?;
    let body = ContainerCreateBody {
        image: Some(image.to_owned()),
        tty: runtime.tty.then_some(true),
        open_stdin: runtime.stdin_open.then_some(true),
        volumes: hardening
            .as_ref()
            .map(|h| h.volumes.iter().map(|v| v.to_string()).collect()),
        host_config: Some(HostConfig {
            init: runtime.init.then_some(true),
            cap_drop: hardening.as_ref().map(|_| vec!["ALL".to_owned()]),
            cap_add: hardening.as_ref().map(|h| h.cap_add.clone()),
            security_opt: hardening.as_ref().map(|h| h.security_opt.clone()),
            readonly_rootfs: hardening.as_ref().map(|h| h.read_only),
            tmpfs: hardening
                .as_ref()
                .map(|h| h.tmpfs.clone().into_iter().collect()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let created = docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(name.to_owned()),
                ..Default::default()
            }),
            body,
        )
        .await
        .with_context(|| {
            format!("creating container {name} from {image} (was it emitted with --tag {image}?)")
        })?;
    Ok(created.id)
}

/// The privileges a slim image carries in its label (emit put them
/// there); None for an image without it (made by an older emit).
async fn hardening_of(docker: &Docker, image: &str) -> Result<Option<Hardening>> {
    let inspect = docker
        .inspect_image(image)
        .await
        .with_context(|| format!("inspecting {image} (was it emitted with --tag {image}?)"))?;
    let Some(json) = inspect
        .config
        .and_then(|c| c.labels)
        .and_then(|mut l| l.remove(HARDENING_LABEL))
    else {
        return Ok(None);
    };
    let hardening: Hardening = serde_json::from_str(&json)
        .with_context(|| format!("{image}: its label {HARDENING_LABEL} is not what emit writes"))?;
    hardening.check().map_err(|why| {
        anyhow::anyhow!(
            "{image}: its label {HARDENING_LABEL} asks for more than emit grants: {why}"
        )
    })?;
    Ok(Some(hardening))
}

/// Removes container `name`, running or not; one already gone is fine.
pub async fn remove(docker: &Docker, name: &str) -> Result<()> {
    match docker
        .remove_container(
            name,
            Some(RemoveContainerOptions {
                force: true,
                v: true,
                ..Default::default()
            }),
        )
        .await
    {
        Ok(()) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing container {name}")),
    }
}

/// Removes volume `name`; one already gone is fine.
pub async fn remove_volume(docker: &Docker, name: &str) -> Result<()> {
    match docker
        .remove_volume(name, None::<bollard::query_parameters::RemoveVolumeOptions>)
        .await
    {
        Ok(()) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing volume {name}")),
    }
}

/// Whether volume `name` exists.
pub async fn volume_exists(docker: &Docker, name: &str) -> Result<bool> {
    match docker.inspect_volume(name).await {
        Ok(_) => Ok(true),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("inspecting volume {name}")),
    }
}
