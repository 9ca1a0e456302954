//! Containers of an emitted output that `verify` starts: created from the
//! slim image with what the original was run with that an image cannot
//! hold (`-i`, `-t`, `--init`), and removed afterwards.

use anyhow::{Context, Result};
use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptions, RemoveContainerOptions};

use super::run::{RunSettings, RuntimeSettings};
use crate::engine::hardening::Hardening;

/// How the original container was run, when the engine still has it.
pub async fn original_runtime(docker: &Docker, container_id: &str) -> Option<RuntimeSettings> {
    let details = docker.inspect_container(container_id, None).await.ok()?;
    Some(RunSettings::from_inspect(&details).runtime)
}

/// Creates (does not start) container `name` from `image`, confined by
/// `hardening` (the caller read and checked the image's label). Ports are
/// not published: the workload reaches the container at its own address.
pub async fn create(
    docker: &Docker,
    name: &str,
    image: &str,
    runtime: &RuntimeSettings,
    hardening: Option<&Hardening>,
) -> Result<String> {
    let podman = super::CgroupLayout::of(docker).await == super::CgroupLayout::Podman;
    // Docker's API takes a seccomp profile inline; Podman's takes a path,
    // read when the container is created.
    let mut profiles = Vec::new();
    let security_opt = match hardening {
        Some(h) if podman => {
            let mut opts = Vec::new();
            for opt in &h.security_opt {
                match opt.strip_prefix("seccomp=") {
                    Some(json) => {
                        let mut file = tempfile::Builder::new()
                            .prefix("cimplifier-seccomp-")
                            .suffix(".json")
                            .tempfile()
                            .context("writing the seccomp profile for Podman")?;
                        std::io::Write::write_all(&mut file, json.as_bytes())
                            .context("writing the seccomp profile for Podman")?;
                        opts.push(format!("seccomp={}", file.path().display()));
                        profiles.push(file);
                    }
                    None => opts.push(opt.clone()),
                }
            }
            Some(opts)
        }
        Some(h) => Some(h.security_opt.clone()),
        None => None,
    };
    let body = ContainerCreateBody {
        image: Some(image.to_owned()),
        tty: runtime.tty.then_some(true),
        open_stdin: runtime.stdin_open.then_some(true),
        volumes: hardening.map(|h| h.volumes.iter().map(|v| v.to_string()).collect()),
        host_config: Some(HostConfig {
            init: runtime.init.then_some(true),
            cap_drop: hardening.map(|_| vec!["ALL".to_owned()]),
            cap_add: hardening.map(|h| h.cap_add.clone()),
            security_opt,
            readonly_rootfs: hardening.map(|h| h.read_only),
            tmpfs: hardening
                .map(|h| tmpfs_options(&h.tmpfs, podman))
                .transpose()?,
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
    drop(profiles);
    Ok(created.id)
}

/// The tmpfs mounts as the engine takes them. Podman 4 knows no `uid=`
/// or `gid=` option: root's are left out (its tmpfs is root's anyway);
/// another owner is refused, naming the directory.
pub(crate) fn tmpfs_options(
    tmpfs: &std::collections::BTreeMap<String, String>,
    podman: bool,
) -> Result<std::collections::HashMap<String, String>> {
    let mut out = std::collections::HashMap::new();
    for (dir, options) in tmpfs {
        if !podman {
            out.insert(dir.clone(), options.clone());
            continue;
        }
        let mut kept = Vec::new();
        for option in options.split(',') {
            match option.split_once('=') {
                Some(("uid" | "gid", "0")) => {}
                Some((id @ ("uid" | "gid"), value)) => anyhow::bail!(
                    "the tmpfs at {dir} belongs to {id} {value}, which Podman cannot give a \
                     tmpfs: run the output on Docker, or make {dir} a volume"
                ),
                _ => kept.push(option),
            }
        }
        out.insert(dir.clone(), kept.join(","));
    }
    Ok(out)
}

/// Label `label` of `image`; None when the image has no such label.
pub async fn image_label(docker: &Docker, image: &str, label: &str) -> Result<Option<String>> {
    let inspect = docker
        .inspect_image(image)
        .await
        .with_context(|| format!("inspecting {image} (was it emitted with --tag {image}?)"))?;
    Ok(inspect
        .config
        .and_then(|c| c.labels)
        .and_then(|mut l| l.remove(label)))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn podman_tmpfs_leave_out_roots_ids_and_refuse_another_owner() {
        let mut tmpfs = std::collections::BTreeMap::new();
        tmpfs.insert("/run".to_owned(), "mode=755,uid=0,gid=0".to_owned());
        assert_eq!(
            tmpfs_options(&tmpfs, false).unwrap()["/run"],
            "mode=755,uid=0,gid=0"
        );
        assert_eq!(tmpfs_options(&tmpfs, true).unwrap()["/run"], "mode=755");
        tmpfs.insert(
            "/run/dovecot".to_owned(),
            "mode=755,uid=97,gid=0".to_owned(),
        );
        let refused = tmpfs_options(&tmpfs, true).unwrap_err().to_string();
        assert!(
            refused.contains("/run/dovecot") && refused.contains("uid 97"),
            "{refused}"
        );
    }
}
