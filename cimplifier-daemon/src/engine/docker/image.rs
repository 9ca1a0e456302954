//! Images in the engine: a source image's description and layers read
//! out (`docker image inspect`, `docker image save`), and emitted images
//! loaded in.

use anyhow::{Context, Result};
use bollard::Docker;
pub use bollard::models::ImageInspect;
use futures::StreamExt;

use crate::engine::registry::Credentials;

/// The engine's description of the image `image_id` (`image_ref` names it
/// in errors). An image gone from the engine is pulled by the engine from
/// the registry `image_ref` names, with the caller's credentials `auth`,
/// and taken only when the pull gave the observed image (`image_id`) back:
/// a tag that moved since names another.
pub async fn inspect(
    docker: &Docker,
    image_id: &str,
    image_ref: &str,
    auth: &Credentials,
) -> Result<ImageInspect> {
    match docker.inspect_image(image_id).await {
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) if pullable(image_ref) => {}
        found => {
            return found.with_context(|| {
                format!(
                    "the observed container's image {image_ref} ({image_id}) is gone from the \
                     engine"
                )
            });
        }
    }
    let registry = registry_of(image_ref);
    tracing::info!(image = %image_ref, %registry, credentials = ?auth, "the observed image is not local: pulling it");
    let options = bollard::query_parameters::CreateImageOptions {
        from_image: Some(image_ref.to_owned()),
        ..Default::default()
    };
    let credentials = match auth {
        Credentials::Anonymous => None,
        Credentials::Basic { username, password } => Some(bollard::auth::DockerCredentials {
            username: Some(username.clone()),
            password: Some(password.clone()),
            serveraddress: Some(registry.clone()),
            ..Default::default()
        }),
    };
    let mut pull = docker.create_image(Some(options), None, credentials);
    while let Some(step) = pull.next().await {
        if let Err(e) = step {
            return Err(
                anyhow::Error::new(e).context(pull_failed(image_ref, image_id, &registry, auth))
            );
        }
    }
    docker.inspect_image(image_id).await.with_context(|| {
        format!(
            "pulled {image_ref}, but it is no longer the observed image {image_id}: the tag \
             moved since the observation; pull the observed image by its digest, or observe \
             the new one"
        )
    })
}

/// The registry `image_ref` names, as `docker login` takes it
/// (`docker.io` for a bare name).
fn registry_of(image_ref: &str) -> String {
    image_ref
        .parse::<oci_client::Reference>()
        .map_or_else(|_| image_ref.to_owned(), |r| r.registry().to_owned())
}

/// What a failed pull of the observed image says: which registry, and how
/// to give emit the credentials it may want.
fn pull_failed(image_ref: &str, image_id: &str, registry: &str, auth: &Credentials) -> String {
    let login = match auth {
        Credentials::Anonymous => format!(
            "no credentials were given for {registry}: if it asks for them, `docker login \
             {registry}` as the user running cimplifierctl (whose docker config gives them to \
             emit) and emit again"
        ),
        Credentials::Basic { username, .. } => format!(
            "the credentials of {username} for {registry} came from the caller's docker config: \
             if the registry refused them, `docker login {registry}` again as the user running \
             cimplifierctl and emit again"
        ),
    };
    format!(
        "the observed image {image_ref} ({image_id}) is gone from the engine, and pulling it \
         from registry {registry} failed; {login}, or load the image (`docker pull`) and emit \
         again"
    )
}

/// Whether `image_ref` names an image in a registry (`name[:tag]`,
/// `name@digest`), not an image id.
fn pullable(image_ref: &str) -> bool {
    let bare_id = image_ref.len() == 64 && image_ref.bytes().all(|b| b.is_ascii_hexdigit());
    !(image_ref.is_empty() || image_ref.starts_with("sha256:") || bare_id)
}

/// The labels of the image `name` names, or None when it names none.
pub async fn labels_of(
    docker: &Docker,
    name: &str,
) -> Result<Option<std::collections::HashMap<String, String>>> {
    match docker.inspect_image(name).await {
        Ok(image) => Ok(Some(
            image.config.and_then(|c| c.labels).unwrap_or_default(),
        )),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("inspecting image {name}")),
    }
}

/// The image's layers, as `docker image save` gives them, in an unnamed
/// file in `dir` (gone when closed, even if the daemon dies), so no image is
/// held in memory whatever its size. `read` is told the bytes read so far
/// after each chunk.
pub async fn save_to_spool(
    docker: &Docker,
    image: &str,
    dir: &std::path::Path,
    read: &(dyn Fn(u64) + Send + Sync),
) -> Result<std::fs::File> {
    use tokio::io::AsyncWriteExt;
    let spool = tempfile::tempfile_in(dir).with_context(|| {
        format!(
            "making a spool file for image {image} in the state directory {}: is it writable, \
             with room for the image?",
            dir.display()
        )
    })?;
    let mut out = tokio::fs::File::from_std(spool);
    let mut stream = docker.export_image(image);
    let mut done = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.with_context(|| format!("reading the layers of {image}"))?;
        out.write_all(&chunk).await.with_context(|| {
            format!(
                "spooling image {image} into {} (is the disk full?)",
                dir.display()
            )
        })?;
        done += chunk.len() as u64;
        read(done);
    }
    out.flush().await?;
    Ok(out.into_std().await)
}

/// Loads an image archive (`docker image load`'s format) into the engine.
pub async fn load(docker: &Docker, archive: Vec<u8>) -> Result<()> {
    let mut progress = docker.import_image(
        bollard::query_parameters::ImportImageOptions {
            quiet: true,
            ..Default::default()
        },
        bollard::body_full(archive.into()),
        None,
    );
    while let Some(item) = progress.next().await {
        item.context("loading the image into the Docker engine")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_failed_pull_names_the_registry_and_how_to_log_in() {
        use super::{Credentials, pull_failed, registry_of};
        assert_eq!(registry_of("127.0.0.1:5000/web:1"), "127.0.0.1:5000");
        assert_eq!(registry_of("nginx"), "docker.io");
        assert_eq!(registry_of("localhost/web:1"), "localhost");
        let anonymous = pull_failed(
            "127.0.0.1:5000/web:1",
            "sha256:ab",
            "127.0.0.1:5000",
            &Credentials::Anonymous,
        );
        assert!(anonymous.contains("registry 127.0.0.1:5000"), "{anonymous}");
        assert!(
            anonymous.contains("no credentials were given"),
            "{anonymous}"
        );
        assert!(
            anonymous.contains("`docker login 127.0.0.1:5000`"),
            "{anonymous}"
        );
        let basic = Credentials::Basic {
            username: "ci".into(),
            password: "s3cret".into(),
        };
        let refused = pull_failed(
            "127.0.0.1:5000/web:1",
            "sha256:ab",
            "127.0.0.1:5000",
            &basic,
        );
        assert!(
            refused.contains("credentials of ci for 127.0.0.1:5000"),
            "{refused}"
        );
        assert!(
            refused.contains("`docker login 127.0.0.1:5000` again"),
            "{refused}"
        );
        assert!(!refused.contains("s3cret"), "{refused}");
    }

    #[test]
    fn a_registry_reference_is_pulled_an_id_is_not() {
        assert!(super::pullable("127.0.0.1:5000/web:1"));
        assert!(super::pullable("nginx"));
        assert!(super::pullable("registry.example/web@sha256:abcd"));
        assert!(!super::pullable("sha256:0123"));
        assert!(!super::pullable(&"a".repeat(64)));
        assert!(!super::pullable(""));
    }
}
